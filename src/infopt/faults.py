"""Fault injection for the reliability tests: SIGKILL this process at a known point.

Set in the environment of a run (never in a config, so it cannot leak into a record):

- ``INFOPT_FAULT_KILL_AT_STEP=N``: killed when training step ``N`` is about to start, i.e. after
  ``N`` optimizer steps and after any checkpoint of step ``N`` was written.
- ``INFOPT_FAULT_KILL_AT_JOB=K``: killed when multirun job number ``K`` starts.
- ``INFOPT_FAULT_KILL_DELAY_S=S``: wait ``S`` seconds at that point before the kill (the process
  stays alive but does nothing, so what it logged before is ``S`` seconds old when it dies).

A SIGKILL cannot be caught: nothing is flushed, no ``finally`` runs, exactly like the OOM killer
or a pre-empted node. Unset, these hooks cost one environment lookup.
"""

from __future__ import annotations

import os
import signal
import sys

STEP_ENV = "INFOPT_FAULT_KILL_AT_STEP"
JOB_ENV = "INFOPT_FAULT_KILL_AT_JOB"
DELAY_ENV = "INFOPT_FAULT_KILL_DELAY_S"


def _kill(where: str) -> None:
    import time

    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    print(f"infopt: fault injection: SIGKILL at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def at_job_start(job_num: int | None) -> None:
    want = os.environ.get(JOB_ENV)
    if want is not None and job_num is not None and int(want) == job_num:
        _kill(f"job {job_num}")


def step_callback():
    """A Lightning callback that kills at ``INFOPT_FAULT_KILL_AT_STEP``, or None when unset."""
    want = os.environ.get(STEP_ENV)
    if want is None:
        return None
    import lightning as L

    step = int(want)

    class KillAtStep(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == step:
                _kill(f"training step {step}")

    return KillAtStep()
