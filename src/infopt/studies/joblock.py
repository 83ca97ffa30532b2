"""One process at a time per job dir: an identical job started alongside waits, then reuses the record.

Why: two identical sweeps started together (the same command twice, a scheduler resubmitting, a
colleague launching the same study) share their job dirs (``hydra.sweep.dir``), and ``skip_completed``
only looks for a finished ``results.json``: before this lock both ran every job, twice the compute,
two processes writing the same checkpoints and records. Now the first to reach a job dir takes an
advisory lock on ``<dir>/.infopt.lock`` for as long as it runs the job. Another process that reaches
the dir meanwhile prints one line (``waiting for <dir>: another process (pid N) is running this
job``), polls until the lock is free, and then goes through the usual ``skip_completed`` check: if the
holder wrote a complete ``results.json`` of the same ``config_hash``, it is reused and nothing runs
again; if the holder failed or was killed, this process runs the job (resuming from its checkpoints,
as any rerun does).

The lock is ``fcntl.flock`` on an open file, not a pid file: the kernel releases it when the
holder's descriptor closes, however the process ends (SIGKILL, the OOM killer, a node reboot on a
local disk), so a crash never leaves a stale lock that blocks the next run. The file itself stays (it
holds the holder's pid and host, only for the waiting line; deleting it while another process has
it open would let two processes hold two different locks). On Linux NFS clients flock is carried
as a POSIX lock to the server, so the lock holds across the nodes of a cluster; on a filesystem
without locks the job runs unlocked with one warning, as before. Descriptors opened by Python are
not inherited by programs it starts; a forked child (a data-loader worker) shares the lock and it
ends with the job.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".infopt.lock"
POLL_S = 0.5  # how often a waiting job tries the lock again


def holder(lock_path: Path) -> str:
    """Who holds the lock, as the waiting line says it: ``pid N`` (``on host`` when another host)."""
    try:
        pid, _, host = lock_path.read_text().strip().partition(" ")
    except OSError:
        return "pid unknown"
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def job_lock(output_dir: Path, poll_s: float | None = None) -> Iterator[bool]:
    """Hold ``output_dir``'s lock for the ``with`` block, waiting (one line, then polling) while another
    live process holds it; yields whether it waited."""
    path = Path(output_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # O_CLOEXEC: Python's default (PEP 446)
    try:
        try:
            locked = _try_lock(fd)
        except OSError as err:  # ENOLCK, EOPNOTSUPP: a filesystem without locks
            log.warning("cannot lock %s (%s): a concurrent identical job would not be noticed", path,
                        errno.errorcode.get(err.errno, err))  # fmt: skip
            yield False
            return
        if not locked:
            log.info("waiting for %s: another process (%s) is running this job", output_dir, holder(path))
            while not _try_lock(fd):
                time.sleep(POLL_S if poll_s is None else poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield not locked
    finally:
        os.close(fd)  # releases the lock
