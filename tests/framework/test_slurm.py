"""Sweeps on a real SLURM cluster (issue 19): `hydra/launcher=slurm_cpu` through submitit.

Needs a running cluster: `make test-slurm` starts a one-node one with `scripts/slurm_cluster.sh`
(root; apt-get installs slurm-wlm and munge) and runs these; without one they skip, saying why.
Jobs get one CPU each, so two run at once on a 2-core node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CACHE_DIR, REPO

pytestmark = pytest.mark.slurm

SLURM = ["-m", "hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]
# A distillation job: 40 steps, a checkpoint every 4; 4 training documents (27 blocks of 32
# tokens, 6 batches an epoch), so a resumed run crosses epochs.
DISTILL = [
    "model=tiny_llama", "technique=distill", "technique.train.max_steps=40", "technique.train.checkpoint_every=4",
    "technique.train.val_every=8", "technique.train.seq_len=32", "technique.data.train_docs=4",
    "technique.save_student=false", "eval=quick", "bench=none", "logger=none", "skip_baseline=true",
]  # fmt: skip
SLOW_STEPS = {"INFOPT_FAULT_STEP_SLEEP_S": "2"}  # >= 80 s of training: still running at a 1-minute limit


@pytest.fixture(scope="module", autouse=True)
def cluster():
    script = REPO / "scripts" / "slurm_cluster.sh"
    proc = subprocess.run([str(script), "status"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        reason = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"no SLURM cluster ({reason[0]}); start one with `make slurm-up` (root)")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", **(extra or {})}  # fmt: skip
    for key in ("HYDRA_FULL_ERROR", "INFOPT_FAULT_KILL_AT_STEP", "INFOPT_FAULT_KILL_AT_JOB", "INFOPT_FAULT_SIGNAL"):
        env.pop(key, None)
    if extra is None or "INFOPT_FAULT_STEP_SLEEP_S" not in extra:
        env.pop("INFOPT_FAULT_STEP_SLEEP_S", None)
    return env


def sweep(args: list[str], sweep_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run.py", *SLURM, *args, f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=_env(env),
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finish(proc: subprocess.Popen, returncode: int = 0) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == returncode, out[-4000:]
    assert "Bypassing sacct error" not in out  # accounting is off on this cluster: states come from scontrol
    return out


def _record(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def _same_numbers(resumed: dict, straight: dict) -> None:
    assert resumed["config_hash"] == straight["config_hash"]
    assert resumed["result"]["eval"] == straight["result"]["eval"]
    for key in ("val_loss", "train_loss", "train_ce", "train_forward_kl", "train_steps"):
        assert resumed["technique"]["metrics"][key] == straight["technique"]["metrics"][key], key


def test_sweep_writes_every_record_and_wandb_run_and_a_rerun_skips_them(tmp_path):
    from support.wandb_offline import read_run

    sweep_dir = tmp_path / "sweep"
    args = ["model=tiny_llama", "technique=baseline,quantize", "eval=quick", "bench=quick", "logger=wandb"]
    t = time.monotonic()
    out = finish(sweep(args, sweep_dir))
    first_s = time.monotonic() - t
    assert f"infopt sweep {sweep_dir}: 2 job(s) ran, 0 skipped" in out, out[-3000:]
    records = {}
    for job in ("0", "1"):
        record = _record(sweep_dir / job)
        assert record["run"]["status"] == "complete" and record["run"]["group"] == sweep_dir.name
        (wandb_run,) = (sweep_dir / job / "wandb").glob("offline-run-*")
        logged = read_run(wandb_run)
        assert logged["config"]["technique"]["name"] == record["config"]["technique"]["name"]
        records[job] = (sweep_dir / job / "results.json").read_bytes()
    assert {json.loads(r)["technique"]["name"] for r in records.values()} == {"baseline", "quantize"}

    out = finish(sweep(args, sweep_dir))
    assert f"infopt sweep {sweep_dir}: 0 job(s) ran, 2 skipped" in out, out[-3000:]
    for job, data in records.items():
        assert (sweep_dir / job / "results.json").read_bytes() == data
        assert len(list((sweep_dir / job / "wandb").glob("offline-run-*"))) == 1  # a skipped job opens no W&B run
    print(f"2-job sweep: {first_s:.0f} s")


def test_a_job_failing_on_a_bad_value_shows_its_one_line_error_in_the_sweep_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    # How many training documents the data group has is only known once it is loaded, in the job.
    args = ["model=tiny_llama", "technique=distill", "technique.data.train_docs=2,100000", "technique.train.max_steps=2",
            "technique.train.seq_len=32", "technique.save_student=false", "eval=quick", "bench=none", "logger=none",
            "skip_baseline=true"]  # fmt: skip
    out = finish(sweep(args, sweep_dir), returncode=1)
    assert f"infopt sweep {sweep_dir}: 1 job(s) ran, 0 skipped (results.json already held the same config), 1 failed" in out
    (line,) = [x for x in out.splitlines() if x.startswith("  job 1 (")]
    assert "technique.data.train_docs=100000" in line
    assert "error: technique.data.train_docs=100000 but the data group has 240 training documents" in line, line
    assert line.endswith("FAILED)"), line  # SLURM's own record says the job failed
    print(f"\nfailed job's summary line:\n{line}")
    assert "Traceback" not in out, out[-3000:]
    assert _record(sweep_dir / "0")["run"]["status"] == "complete" and not (sweep_dir / "1" / "results.json").exists()
    assert json.loads((sweep_dir / "1" / "incomplete.json").read_text())["status"] == "failed"

    # An unexpected exception (here transformers', on a checkpoint that passes infopt's file checks but
    # whose tokenizer cannot be built): its first line, and SLURM records a failure (submitit alone would
    # have stored it as a result: COMPLETED).
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no_such_arch"}')
    (model / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # a valid, empty safetensors
    (model / "vocab.json").write_text("{}")
    out = finish(sweep(["model=hf", f"model.name_or_path={model}", "technique=baseline", "eval=quick", "bench=none",
                        "logger=none"], tmp_path / "sweep2"), returncode=1)  # fmt: skip
    (line,) = [x for x in out.splitlines() if x.startswith("  job 0 (")]
    assert "ValueError: Couldn't instantiate the backend tokenizer" in line and line.endswith("FAILED)"), line


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The distillation job run straight through, through SLURM like the others."""
    sweep_dir = tmp_path_factory.mktemp("reference") / "sweep"
    return sweep(DISTILL, sweep_dir), sweep_dir


def _reference_record(reference) -> dict:
    proc, sweep_dir = reference
    if proc.returncode is None:
        finish(proc)
    return _record(sweep_dir / "0")


def _interrupted_then_resumed(sweep_dir: Path, out: str, reference) -> None:
    """The interrupted job has no record and a summary line; rerunning the sweep resumes it."""
    (line,) = [x for x in out.splitlines() if x.startswith("  job 0 (")]
    assert not (sweep_dir / "0" / "results.json").exists(), line
    assert (sweep_dir / "0" / "checkpoints" / "last.ckpt").is_file(), line
    out = finish(sweep([*DISTILL, "hydra.launcher.timeout_min=10"], sweep_dir))
    assert f"infopt sweep {sweep_dir}: 1 job(s) ran, 0 skipped" in out, out[-3000:]
    resumed = _record(sweep_dir / "0")
    assert resumed["run"]["resumed_from"] == [str(sweep_dir / "0" / "checkpoints" / "last.ckpt")]
    _same_numbers(resumed, _reference_record(reference))


def test_a_job_hitting_its_time_limit_is_not_a_success_and_a_rerun_resumes_it(tmp_path, reference):
    sweep_dir = tmp_path / "sweep"
    t = time.monotonic()
    out = finish(sweep([*DISTILL, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30"], sweep_dir,
                       env=SLOW_STEPS), returncode=1)  # fmt: skip
    limited_s = time.monotonic() - t
    (line,) = [x for x in out.splitlines() if x.startswith("  job 0 (")]
    # SLURM's SIGUSR2 (signal_delay_s before the limit) makes training save a checkpoint and go on; the
    # SIGTERM at the limit stops the run, which says so; SLURM records a timeout, not a completed job.
    assert "interrupted by SIGTERM" in line and "rerun the same sweep with hydra.sweep.dir=" in line, line
    assert line.endswith("TIMEOUT)"), line
    print(f"\ntime-limited job's summary line:\n{line}")
    _interrupted_then_resumed(sweep_dir, out, reference)
    print(f"time-limited job: stopped after {limited_s:.0f} s")


def test_a_cancelled_job_is_not_a_success_and_a_rerun_resumes_it(tmp_path, reference):
    sweep_dir = tmp_path / "sweep"
    proc = sweep([*DISTILL, "hydra.launcher.timeout_min=10"], sweep_dir, env=SLOW_STEPS)
    _wait_for(proc, sweep_dir / "0" / "checkpoints" / "last.ckpt")
    (job_id,) = _job_ids(sweep_dir)
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    out = finish(proc, returncode=1)
    (line,) = [x for x in out.splitlines() if x.startswith("  job 0 (")]
    # scancel: SIGTERM, then SIGKILL after KillWait; the run stops at the SIGTERM and says so.
    assert "interrupted by SIGTERM" in line and "CANCELLED" in line, line
    print(f"\ncancelled job's summary line:\n{line}")
    _interrupted_then_resumed(sweep_dir, out, reference)


def test_ctrl_c_while_waiting_says_the_jobs_keep_running(tmp_path):
    """The process that waits for the jobs is interrupted, not the jobs: exit 130 and how to stop them."""
    sweep_dir = tmp_path / "sweep"
    proc = sweep(DISTILL, sweep_dir, env=SLOW_STEPS)
    _wait_for(proc, sweep_dir / "0" / "cli.log")  # the job has started
    proc.send_signal(signal.SIGINT)
    out = finish(proc, returncode=128 + signal.SIGINT)
    (job_id,) = _job_ids(sweep_dir)
    (line,) = [x for x in out.splitlines() if "keep running" in x]
    assert f"scancel {job_id}" in line and f"hydra.sweep.dir={sweep_dir}" in line, line
    assert "Traceback" not in out, out[-3000:]
    state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    assert state.strip() in ("RUNNING", "PENDING", "COMPLETING"), state
    subprocess.run(["scancel", job_id], check=True, timeout=30)


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared: " + proc.communicate()[0][-3000:])
        time.sleep(0.2)


def _job_ids(sweep_dir: Path) -> list[str]:
    """SLURM ids of the sweep's jobs: submitit's folder of each job (or array task) holds its pickle."""
    return sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and any(p.glob("*_submitted.pkl")))
