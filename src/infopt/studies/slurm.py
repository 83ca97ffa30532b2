"""SLURM sweeps: Hydra's submitit launcher with infopt's bookkeeping (``hydra/launcher=slurm``).

The launcher class is ``hydra_plugins.infopt_slurm.InfoptSlurmLauncher`` (Hydra loads launchers only
from that namespace); its ``launch`` is ``launch`` here. What it adds to ``hydra_submitit_launcher``'s
``SlurmLauncher``:

- Jobs import the same ``infopt`` as the sweep that submitted them (its ``src`` goes first on the
  jobs' ``PYTHONPATH``; SLURM exports the submitting environment).
- It waits for every job of the array. The stock launcher collects results in order and raises at
  the first failed job, so later jobs' outcomes are never reported and the summary never prints.
- One line per failed or interrupted job in the sweep's summary: the job's own one-line reason
  (``incomplete.json``, written by the CLI: a config error, or "interrupted by SIGTERM ...; to
  resume, rerun the same sweep with hydra.sweep.dir=..."), or, when the process had no chance to
  write one (SIGKILL, out of memory), SLURM's state and the job's log file. The sweep then exits 1.
- Inside a job, a task that failed with an exception exits non-zero (submitit would otherwise
  record the failed Hydra job as a successful SLURM job).
- Job states come from ``scontrol`` when SLURM accounting is off (``sacct`` then fails, and
  submitit logs "Bypassing sacct error ... accounting storage is disabled" on every poll).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import open_dict
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)

# The longest pause between two state queries while jobs run (submitit polls more often at first).
# scontrol asks slurmctld's memory; sacct asks the accounting database, which sites protect.
WATCH_DELAY_S = {"scontrol": 10, "sacct": 60}


class JobFailed(CompactHydraException):
    """A job of the sweep did not complete (Hydra prints this one line, no traceback)."""


def accounting_on() -> bool:
    """Whether ``sacct`` answers (slurmdbd configured); False on clusters with accounting off."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-j", "1", "-o", "JobID"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _task_ids(spec: str) -> list[str]:
    """``0-3%16`` / ``1,4`` / ``2`` -> the task ids a pending array line stands for."""
    ids: list[str] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi or lo).isdigit():
            ids.extend(str(i) for i in range(int(lo), int(hi or lo) + 1))
    return ids


class StateWatcher(SlurmInfoWatcher):
    """submitit's job-state poller: ``sacct`` when accounting is on, else ``scontrol show job``.

    ``scontrol`` knows finished jobs for ``MinJobAge`` seconds (default 300; polls come at least
    every ``WATCH_DELAY_S["scontrol"]``), which is all a waiting sweep needs.
    """

    def __init__(self, use_sacct: bool | None = None) -> None:
        self.use_sacct = accounting_on() if use_sacct is None else use_sacct
        super().__init__(delay_s=WATCH_DELAY_S["sacct" if self.use_sacct else "scontrol"])
        if not self.use_sacct:
            log.info("SLURM accounting is off: job states come from scontrol")

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or self.use_sacct:
            return command
        return ["scontrol", "-o", "show", "job"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self.use_sacct:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            state = {"State": fields.get("JobState", "UNKNOWN"), "NodeList": fields.get("NodeList", "")}
            if "JobId" in fields:
                info[fields["JobId"]] = state
            if "ArrayJobId" in fields and "ArrayTaskId" in fields:
                for task in _task_ids(fields["ArrayTaskId"]):
                    info[f"{fields['ArrayJobId']}_{task}"] = state
        return info


def launch(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Submit the batch as one array job, wait for all of it, and report every job that did not complete."""
    from infopt.studies.sweep import snapshot, summary_line

    assert launcher.config is not None
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    before = snapshot(sweep_dir)
    started = time.time()
    _jobs_import_this_infopt()
    SlurmJob.watcher = StateWatcher()  # a class attribute: submitit shares one poller between all jobs

    jobs = _submit(launcher, job_overrides, initial_job_idx)
    ids = " ".join(j.job_id for j in jobs)
    log.info("submitted %d job(s) to SLURM: %s", len(jobs), ids)
    _wait(jobs, ids, sweep_dir)

    returns: list[JobReturn] = []
    failures: list[str] = []
    for idx, (overrides, job) in enumerate(zip(job_overrides, jobs, strict=True), start=initial_job_idx):
        try:
            returns.append(_result(job))
            continue
        except Exception:  # no result: the process died or exited non-zero
            reason = _reason(launcher, job, list(overrides), idx, started)
        failures.append(f"  job {idx} ({' '.join(filter_overrides(overrides))}): {reason}")
        returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED,
                                 _return_value=JobFailed(f"job {idx}: {reason}")))  # fmt: skip
    if failures:
        log.warning("\n".join([summary_line(sweep_dir, before, len(failures)), *failures]))
        first = next(r for r in returns if r.status == JobStatus.FAILED)
        first._return_value = JobFailed(
            f"infopt sweep {sweep_dir}: {len(failures)} of {len(jobs)} job(s) failed or were interrupted "
            f"(listed above); rerun with hydra.sweep.dir={sweep_dir} (after fixing any error): finished jobs are "
            "skipped, interrupted ones resume from their checkpoints"
        )
    return returns


def _wait(jobs: list, ids: str, sweep_dir: Path) -> None:
    """Wait for every job; a signal to this process stops the waiting, not the jobs, and says so."""
    from infopt.interrupt import Interrupted, signals_interrupt

    try:
        with signals_interrupt():
            for job in jobs:
                job.wait()
    except Interrupted as sig:
        print(
            f"infopt: {sig.name}: stopped waiting; the SLURM job(s) keep running (scancel {ids} stops them); "
            f"rerun the sweep with hydra.sweep.dir={sweep_dir} to collect them: finished jobs are skipped",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        raise SystemExit(sig.exit_code) from None


def _submit(launcher, job_overrides, initial_job_idx: int) -> list:
    """The stock launcher's submission (one array job), without its in-order wait."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params, kind = launcher.params, launcher._EXECUTOR
    executor = submitit.AutoExecutor(
        cluster=kind, folder=params["submitit_folder"], **{f"{kind}_max_num_timeout": params["max_num_timeout"]}
    )
    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{
        k if k in baseparams else f"{kind}_{k}": v for k, v in params.items() if k not in ("submitit_folder", "max_num_timeout")
    })  # fmt: skip
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    job_params = []
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return executor.map_array(launcher, *zip(*job_params, strict=True))


def _result(job) -> JobReturn:
    # A result file exists, or SLURM says the job completed (a slow shared filesystem may still be
    # writing it: results() waits a little); otherwise there is none to wait for.
    if not job.paths.result_pickle.exists() and job.state.upper() not in ("COMPLETED", "UNKNOWN"):
        raise RuntimeError(f"no result (SLURM state {job.state})")
    return job.results()[0]


def _final_state(job, wait_s: float = 20) -> str:
    """SLURM's state once the job has ended (it may still say RUNNING while the process exits)."""
    deadline = time.monotonic() + wait_s
    state = job.watcher.get_state(job.job_id, mode="force")
    while state.upper() in ("RUNNING", "COMPLETING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(1)
        state = job.watcher.get_state(job.job_id, mode="force")
    return state


def _job_dir(launcher, overrides: list[str], idx: int) -> Path:
    """Where job ``idx`` wrote (or would have written) its record: the sweep dir / its subdir."""
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    try:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return sweep_dir / str(cfg.hydra.sweep.subdir)
    except Exception:  # an unusual subdir interpolation: the default layout
        return sweep_dir / str(idx)


def _reason(launcher, job, overrides: list[str], idx: int, started: float) -> str:
    """The job's own one line (incomplete.json), else SLURM's state and where its log is."""
    from infopt.interrupt import INCOMPLETE

    state = _final_state(job)
    marker = _job_dir(launcher, overrides, idx) / INCOMPLETE
    if marker.is_file() and marker.stat().st_mtime >= started:
        try:
            return f"{json.loads(marker.read_text())['message']} (SLURM job {job.job_id}: {state})"
        except (ValueError, KeyError, TypeError):
            pass
    last = _last_infopt_line(job.paths.stderr)
    detail = f"; its last line: {last}" if last else ""
    return f"SLURM job {job.job_id} ended {state} without a record{detail} (log: {job.paths.stderr})"


def _last_infopt_line(path: Path) -> str | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip() for line in reversed(lines) if line.startswith("infopt: ")), None)


def _jobs_import_this_infopt() -> None:
    import infopt

    src = str(Path(infopt.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    if src not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, path) if p)
