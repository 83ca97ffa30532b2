"""Faults injected into real subprocesses: SIGKILL mid-training, mid-sweep; then rerun.

The tests that share the ``training_runs`` fixture (three subprocess runs, about a minute) and the
killed sweep run in ``make test-full`` (marked slow); the fast suite keeps the same promises through
cheaper tests: bit-identical resume in-process (tests/framework/test_training.py) and through a killed
distill subprocess (tests/techniques/test_distill.py), same seed same numbers
(tests/framework/test_run.py), a rerun sweep skipping finished jobs (tests/framework/test_sweeps.py,
tests/reliability/test_concurrency.py), and SIGTERM's exit status (below).

The kill comes from ``infopt.faults`` (``INFOPT_FAULT_KILL_AT_STEP`` / ``INFOPT_FAULT_KILL_AT_JOB``):
the process sends itself SIGKILL at a known point, so nothing is flushed and no ``finally`` runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CACHE_DIR, REPO

RUNNER = REPO / "tests" / "support" / "run_with_toys.py"
# A tiny Llama, 8 Lightning steps of toy_finetune (checkpoint every 3), token perplexity only.
TRAIN = [
    "model=tiny_llama",
    "technique=toy_finetune",
    "eval=quick",
    "eval.tasks=[]",
    "eval.token_perplexity_window=64",
    "bench=none",
    "skip_baseline=true",
]
KILL_STEP = 5  # after the step-3 checkpoint: the resumed run redoes steps 4 and 5


def run(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "INFOPT_CACHE_DIR": str(CACHE_DIR),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **(env or {}),
    }
    for key in ("HYDRA_FULL_ERROR", "INFOPT_FAULT_KILL_AT_STEP", "INFOPT_FAULT_KILL_AT_JOB", "INFOPT_FAULT_SIGNAL"):
        if key not in (env or {}):
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(RUNNER), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory):
    """An uninterrupted run, and one killed at step 5 then rerun in the same run dir."""
    root = tmp_path_factory.mktemp("faults")
    ok(run([*TRAIN, "logger=wandb", f"hydra.run.dir={root / 'straight'}"]))
    # The process waits 2 s at the kill point: W&B flushes its offline log every second, so what
    # was logged before the kill must be on disk (docs/reliability.md: a kill loses <= 1 s).
    killed = run(
        [*TRAIN, "logger=wandb", f"hydra.run.dir={root / 'killed'}"],
        env={"INFOPT_FAULT_KILL_AT_STEP": str(KILL_STEP), "INFOPT_FAULT_KILL_DELAY_S": "2"},
    )
    killed_state = {
        "returncode": killed.returncode,
        "stderr": killed.stderr,
        "results_after_kill": (root / "killed" / "results.json").exists(),
        "wandb_runs": sorted((root / "killed" / "wandb").glob("offline-run-*")),
    }
    resumed = ok(run([*TRAIN, "logger=wandb", f"hydra.run.dir={root / 'killed'}"]))
    return root, killed_state, resumed


def _record(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_metrics(training_runs):
    root, killed, _ = training_runs
    assert killed["returncode"] == -signal.SIGKILL, killed["stderr"][-2000:]
    assert f"SIGKILL at training step {KILL_STEP}" in killed["stderr"]
    assert not killed["results_after_kill"], "a killed run must not leave a results.json"
    straight, resumed = _record(root / "straight"), _record(root / "killed")
    assert "resumed from last.ckpt" in resumed["technique"]["notes"]
    assert resumed["run"]["resumed_from"] == [str(root / "killed" / "checkpoints" / "last.ckpt")]
    assert straight["run"]["resumed_from"] == []
    assert resumed["technique"]["metrics"]["steps"] == 8
    # Bit-identical: same weights after step 8, so the same held-out perplexity and losses.
    assert resumed["result"]["eval"] == straight["result"]["eval"]
    assert resumed["technique"]["metrics"] == straight["technique"]["metrics"]
    # The checkpoint was written by rename: no temporary file is left behind.
    assert not list((root / "killed" / "checkpoints").glob(".*.tmp"))


def test_sigterm_in_training_exits_143_with_no_record_and_says_how_to_resume(tmp_path):
    """Lightning's own SIGTERM handler used to end the run with status 0 and no record (issue 18).

    Resuming after SIGTERM is the same as after SIGKILL (the rerun above): both continue from the
    step-3 checkpoint. tests/test_reliability_resume.py (slow) reruns real runs after outside signals.
    """
    run_dir = tmp_path / "terminated"
    args = [*TRAIN, "logger=none", f"hydra.run.dir={run_dir}"]
    killed = run(args, env={"INFOPT_FAULT_KILL_AT_STEP": str(KILL_STEP), "INFOPT_FAULT_SIGNAL": "TERM"})
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-2000:]
    lines = [line for line in killed.stderr.splitlines() if line.startswith("infopt: interrupted")]
    assert lines == [
        f"infopt: interrupted by SIGTERM (a scheduler's time limit or scancel, kill, or a CI timeout): no results.json "
        f"written; to resume, rerun the same command with hydra.run.dir={run_dir} (training continues from "
        "checkpoints/last.ckpt)"
    ], killed.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    incomplete = json.loads((run_dir / "incomplete.json").read_text())
    assert incomplete["status"] == "interrupted" and incomplete["exit_code"] == 143 and incomplete["signal"] == "SIGTERM"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics_in_two_processes(training_runs, tmp_path):
    """The subprocess run, and the same config run again here (another process, other prior state)."""
    import torch

    from conftest import run_main
    from support.toys import register_toys

    register_toys()
    root, _, _ = training_runs
    torch.manual_seed(1234)  # disturb the global RNG: the run must seed everything itself
    again = run_main([*TRAIN, "logger=none"], tmp_path)
    straight = _record(root / "straight")
    assert again["result"]["eval"] == straight["result"]["eval"]
    assert again["technique"]["metrics"] == straight["technique"]["metrics"]
    assert again["config_hash"] == straight["config_hash"]


@pytest.mark.slow
def test_wandb_offline_run_keeps_what_was_logged_before_the_kill(training_runs):
    from support.wandb_offline import read_run

    root, killed, _ = training_runs
    (killed_run,) = killed["wandb_runs"]
    logged = read_run(killed_run)
    assert logged["name"] and logged["config"]["model"]["name"] == "tiny_llama"
    steps = sorted({int(h["trainer/global_step"]) for h in logged["history"] if "train/loss" in h})
    assert steps == list(range(KILL_STEP)), steps  # every step before the kill, nothing after
    # The same losses as the uninterrupted run logged at those steps.
    straight = read_run(next((root / "straight" / "wandb").glob("offline-run-*")))
    want = {int(h["trainer/global_step"]): h["train/loss"] for h in straight["history"] if "train/loss" in h}
    for h in logged["history"]:
        if "train/loss" in h:
            assert h["train/loss"] == pytest.approx(want[int(h["trainer/global_step"])], rel=1e-6)
    # `wandb sync` finds the killed run as something to upload (dry run: no network here).
    sync = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(killed_run)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sync.returncode == 0 and "Would sync 1 run" in sync.stdout + sync.stderr, sync.stderr
    # The rerun is a second W&B run in the same dir; the killed one is left as it was.
    assert len(list((root / "killed" / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow
def test_sweep_killed_midway_completes_on_rerun_without_redoing_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model=tiny_llama",
        "technique=baseline",
        "eval=quick",
        "eval.tasks=[]",
        "eval.token_perplexity_window=64",
        "bench=none",
        "skip_baseline=true",
        "logger=none",
        "seed=1,2,3",
        f"hydra.sweep.dir={sweep}",
    ]
    killed = run(args, env={"INFOPT_FAULT_KILL_AT_JOB": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (sweep / "0" / "results.json").is_file() and not (sweep / "1" / "results.json").exists()
    first = (sweep / "0" / "results.json").read_bytes()
    first_mtime = (sweep / "0" / "results.json").stat().st_mtime_ns

    rerun = ok(run(args))
    out = rerun.stdout + rerun.stderr
    assert out.count("infopt: skipped:") == 1 and "2 job(s) ran, 1 skipped" in out, out[-2000:]
    assert (sweep / "0" / "results.json").read_bytes() == first
    assert (sweep / "0" / "results.json").stat().st_mtime_ns == first_mtime
    seeds = sorted(json.loads((sweep / str(i) / "results.json").read_text())["environment"]["seed"] for i in range(3))
    assert seeds == [1, 2, 3]


def test_truncated_checkpoint_is_set_aside_and_training_starts_over(tmp_path):
    """A last.ckpt cut short (a kill during a non-atomic copy, a full disk) is never loaded."""
    from infopt.training.trainer import last_checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    import torch

    torch.save({"state_dict": {"w": torch.ones(1000)}, "global_step": 3}, ckpt_dir / "last.ckpt")
    assert last_checkpoint(tmp_path) == ckpt_dir / "last.ckpt"
    data = (ckpt_dir / "last.ckpt").read_bytes()
    (ckpt_dir / "last.ckpt").write_bytes(data[: len(data) // 2])
    (ckpt_dir / ".last.ckpt.abc.tmp").write_bytes(b"partial")  # an interrupted atomic save
    assert last_checkpoint(tmp_path) is None
    assert (ckpt_dir / "last.ckpt.corrupt").is_file() and not (ckpt_dir / "last.ckpt").exists()
    assert not (ckpt_dir / ".last.ckpt.abc.tmp").exists()


def test_checkpoint_io_writes_by_rename_and_loads_weights_only(tmp_path):
    import torch

    from infopt.training.trainer import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "c" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "epoch": 1}, target)
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.arange(4.0))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]

    class Evil:  # an arbitrary object: unpickling it would run code
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt", _use_new_zipfile_serialization=True)
    with pytest.raises(Exception, match="[Ww]eights only"):
        io.load_checkpoint(tmp_path / "evil.ckpt", weights_only=False)

    # A failed save (here: an unpicklable object) leaves the previous checkpoint intact.
    before = target.read_bytes()
    with pytest.raises(Exception, match="[Pp]ickle"):
        io.save_checkpoint({"state_dict": {}, "bad": lambda: 0}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
