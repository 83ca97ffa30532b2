"""Fault injection for the reliability tests: SIGKILL this process at a known point.

Set in the environment of a run (never in a config, so it cannot leak into a record):

- ``INFOPT_FAULT_KILL_AT_STEP=N``: killed when training step ``N`` is about to start, i.e. after
  ``N`` optimizer steps and after any checkpoint of step ``N`` was written.
- ``INFOPT_FAULT_KILL_AT_JOB=K``: killed when multirun job number ``K`` starts.
- ``INFOPT_FAULT_KILL_DELAY_S=S``: wait ``S`` seconds at that point before the kill (the process
  stays alive but does nothing, so what it logged before is ``S`` seconds old when it dies).
- ``INFOPT_FAULT_SIGNAL=TERM`` (or INT, HUP, USR2): send that signal instead of SIGKILL, at a known
  point, to test what the run does with it (``infopt.interrupt``).
- ``INFOPT_FAULT_STEP_SLEEP_S=S``: sleep ``S`` seconds before every training step, so a test can
  count on a run still training when a scheduler's time limit or ``scancel`` arrives (the numbers
  do not change).

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
SIGNAL_ENV = "INFOPT_FAULT_SIGNAL"
SLEEP_ENV = "INFOPT_FAULT_STEP_SLEEP_S"


def _kill(where: str) -> None:
    import time

    time.sleep(float(os.environ.get(DELAY_ENV, "0")))
    sig = signal.Signals["SIG" + os.environ.get(SIGNAL_ENV, "KILL").upper().removeprefix("SIG")]
    print(f"infopt: fault injection: {sig.name} at {where}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


def at_job_start(job_num: int | None) -> None:
    want = os.environ.get(JOB_ENV)
    if want is not None and job_num is not None and int(want) == job_num:
        _kill(f"job {job_num}")


def step_callback():
    """A Lightning callback for ``INFOPT_FAULT_KILL_AT_STEP`` / ``INFOPT_FAULT_STEP_SLEEP_S``, or None when unset."""
    want, sleep_s = os.environ.get(STEP_ENV), float(os.environ.get(SLEEP_ENV, "0"))
    if want is None and not sleep_s:
        return None
    import time

    import lightning as L

    class KillAtStep(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if want is not None and trainer.global_step == int(want):
                _kill(f"training step {want}")
            time.sleep(sleep_s)

    return KillAtStep()
