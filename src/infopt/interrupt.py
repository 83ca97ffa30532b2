"""Interrupted runs tell the truth: exit status 128 + signal, no complete record, how to resume.

A scheduler (SLURM's time limit, ``scancel``, preemption), CI or a user stops a run with a signal.
Left to the libraries, SIGTERM during training is swallowed by Lightning (the process exits 0 with
no ``results.json``: a finished job to anyone watching), and under submitit SIGTERM is ignored and
SLURM's pre-timeout SIGUSR2 becomes a "successful" job holding an error. Here every one of
``HANDLED`` raises ``Interrupted`` in the main thread, wherever the run is (loading, training,
evaluating); it is a ``BaseException``, so no ``except Exception`` on the way swallows it. The CLI
turns it into one line on stderr, an ``incomplete.json`` beside where ``results.json`` would be, and
exit status 128 + the signal number (the shell's convention; SIGKILL cannot be caught and shows
as -9 / 137 anyway).

``WARNING`` (SIGUSR2, what SLURM sends ``signal_delay_s`` before a job's time limit under submitit)
does not stop the run: training saves a checkpoint at the end of the step in progress and goes on,
so the SIGTERM at the limit loses at most the steps after it (``infopt.training.trainer``).
``kill -USR2 <pid>`` does the same by hand.

While the run unwinds (W&B's final flush, ``incomplete.json``), a repeated SIGTERM or SIGHUP is
ignored: SLURM delivers SIGTERM twice (slurmstepd and srun both send it) and its SIGKILL follows
after ``KillWait`` anyway. A second Ctrl-C stops the process at once.
Signals ignored when the run started (``nohup`` ignores SIGHUP, shells ignore SIGINT in background
jobs) stay ignored.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WARNING = signal.SIGUSR2  # SLURM's --signal before the time limit (submitit's default): checkpoint now
INCOMPLETE = "incomplete.json"  # why a run dir holds no complete record, and how to resume it

_WHY = {
    signal.SIGTERM: "a scheduler's time limit or scancel, kill, or a CI timeout",
    signal.SIGINT: "Ctrl-C",
    signal.SIGHUP: "the terminal closed",
}
_warned = threading.Event()


def take_warning() -> bool:
    """True once after each ``WARNING`` signal: the caller saves a checkpoint."""
    if _warned.is_set():
        _warned.clear()
        return True
    return False


class Interrupted(BaseException):
    """The run was stopped by a signal (raised from the signal handler)."""

    record_written = False  # set by the run when results.json was already complete

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {self.name}")

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def why(self) -> str:
        return _WHY.get(signal.Signals(self.signum), "a signal")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, ``HANDLED`` signals raise ``Interrupted``; the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if raised:  # already unwinding
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now, the default way
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        raised = True
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in (*HANDLED, WARNING)}
    for s, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(s, handler if s != WARNING else lambda signum, frame: _warned.set())
    try:
        yield
    finally:
        for s, old in previous.items():
            if old is not None:
                signal.signal(s, old)


def resume_hint(output_dir: Path, sweep_dir: Path | None) -> str:
    """How to continue this run: the same command, pointed at the same directory."""
    checkpoints = sorted(output_dir.rglob("checkpoints/last.ckpt")) if output_dir.is_dir() else []
    where = (
        f"training continues from {checkpoints[0].relative_to(output_dir)}"
        if len(checkpoints) == 1
        else f"training continues from {len(checkpoints)} checkpoints"
        if checkpoints
        else "no checkpoint was written yet, it starts over"
    )
    if sweep_dir is not None:
        return f"to resume, rerun the same sweep with hydra.sweep.dir={sweep_dir} (finished jobs are skipped; {where})"
    return f"to resume, rerun the same command with hydra.run.dir={output_dir} ({where})"


def write_incomplete(output_dir: Path, status: str, message: str, exit_code: int, **extra: Any) -> None:
    """``incomplete.json``: this run dir holds no complete record, why, and what to do (best effort)."""
    from infopt.io import atomic_write_json

    try:
        atomic_write_json(
            output_dir / INCOMPLETE,
            {"status": status, "message": message, "exit_code": exit_code,
             "at": datetime.now(timezone.utc).isoformat(), **extra},
        )  # fmt: skip
    except OSError:
        pass  # an unwritable run dir: the one line on stderr still says it


def clear_incomplete(output_dir: Path) -> None:
    (output_dir / INCOMPLETE).unlink(missing_ok=True)
