"""Sweep bookkeeping: skip jobs that already finished with the same config, and say how many.

A job is skipped when its output dir holds a complete ``results.json`` whose ``config_hash`` is
this job's (the whole composed config except paths, logger and this switch). That needs a sweep
dir that is the same on the rerun: pass ``hydra.sweep.dir=...`` (named experiments default to
``outputs/sweeps/<experiment>``). ``SweepSummary`` (a Hydra callback in conf/config.yaml) prints
how many jobs ran and how many were skipped when the multirun ends. On SLURM a failed or
interrupted job does not end the sweep early: ``infopt.studies.slurm.SlurmLauncher`` waits for every
job and prints the same line with each failure's one-line reason. Two identical sweeps started
together do not both run a job: the first to reach its dir locks it, the other waits and then skips
it here (``infopt.studies.joblock``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from infopt.io import atomic_write_json, read_json

log = logging.getLogger(__name__)
SKIP_MARKER = "skipped.json"


def completed_record(output_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The stored record if ``output_dir`` already holds a complete run of this config, else None."""
    record = read_json(output_dir / "results.json")
    if (
        not record
        or record.get("config_hash") != config_hash
        or (record.get("run") or {}).get("status") != "complete"
    ):
        return None
    atomic_write_json(
        output_dir / SKIP_MARKER,
        {"at": datetime.now(timezone.utc).isoformat(), "config_hash": config_hash},
    )
    message = (
        f"skipped: {output_dir}/results.json already holds this config (config_hash {config_hash}); "
        "skip_completed=false runs it again"
    )
    log.info(message)
    return {**record, "skipped": True}


def _stamps(sweep_dir: Path, name: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sweep_dir.rglob(name)} if sweep_dir.is_dir() else {}


def snapshot(sweep_dir: Path) -> dict[str, dict[Path, int]]:
    """The records and skip markers under ``sweep_dir`` now, to count what a sweep changed."""
    return {name: _stamps(sweep_dir, name) for name in ("results.json", SKIP_MARKER)}


def summary_line(sweep_dir: Path, before: dict[str, dict[Path, int]], failed: int = 0) -> str:
    ran, skipped = count_jobs(sweep_dir, before)
    line = f"infopt sweep {sweep_dir}: {ran} job(s) ran, {skipped} skipped (results.json already held the same config)"
    return line + (f", {failed} failed or interrupted" if failed else "")


def count_jobs(sweep_dir: Path, before: dict[str, dict[Path, int]]) -> tuple[int, int]:
    """(jobs that wrote results.json, jobs skipped) under ``sweep_dir`` since the ``before`` snapshot.

    Compares file stamps with a snapshot taken when the sweep started rather than with a start
    time, so a job that finished a moment before a rerun began is not counted as run again.
    """

    def changed(name: str) -> int:
        old = before.get(name, {})
        return sum(1 for p, t in _stamps(sweep_dir, name).items() if old.get(p) != t)

    return changed("results.json"), changed(SKIP_MARKER)


class SweepSummary(Callback):
    """At the end of a multirun: "N jobs ran, M skipped (results.json already held the same config)"."""

    def __init__(self) -> None:
        self.before: dict[str, dict[Path, int]] = {}

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self.before = snapshot(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        log.info(summary_line(sweep_dir, self.before))
