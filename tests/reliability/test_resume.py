"""Real runs killed from outside (INT, TERM, KILL) after their first checkpoint, then rerun as the
one-line hint says: the resumed run ends with exactly the numbers of an uninterrupted one (issue 18).

Distillation and prune's recovery fine-tuning through ``run.py`` on tiny models, with few training
documents so the resumed run crosses epochs (the drift the issue found came from there), GPT-2 for
recovery so dropout draws from the restored RNG state. Slow (about 10 subprocess runs): ``make test-full``.
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

pytestmark = pytest.mark.slow

COMMON = ["eval=quick", "bench=none", "logger=none", "skip_baseline=true"]
# 10 training documents: 39 blocks of 64 tokens, 9 batches of 4 an epoch; 20 steps cross two epochs.
DISTILL = [
    "model=tiny_llama", "technique=distill", "technique.train.max_steps=20", "technique.train.checkpoint_every=5",
    "technique.train.val_every=5", "technique.train.seq_len=64", "technique.data.train_docs=10",
    "technique.save_student=false", *COMMON,
]  # fmt: skip
# 70 documents: the last 30 held out, 30 for calibration, 10 to fine-tune on.
RECOVER = [
    "model=tiny_gpt2", "technique=prune", "technique.method=magnitude", "technique.sparsity=0.5",
    "technique.recover.enabled=true", "technique.recover.max_steps=20", "technique.recover.checkpoint_every=5",
    "technique.recover.val_every=5", "technique.recover.seq_len=64", "technique.recover.lr=1e-3",
    "data.max_docs=70", *COMMON,
]  # fmt: skip


def _env() -> dict[str, str]:
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    for key in ("HYDRA_FULL_ERROR", "INFOPT_FAULT_KILL_AT_STEP", "INFOPT_FAULT_KILL_AT_JOB", "INFOPT_FAULT_SIGNAL"):
        env.pop(key, None)
    return env


def _cli(args: list[str], run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "run.py", *args, f"hydra.run.dir={run_dir}"], cwd=REPO, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored even in a background job
    )  # fmt: skip


def run_to_end(args: list[str], run_dir: Path) -> dict:
    proc = _cli(args, run_dir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-3000:]
    return json.loads((run_dir / "results.json").read_text())


def kill_after_first_checkpoint(args: list[str], run_dir: Path, sig: signal.Signals, ckpt: str) -> tuple[int, str]:
    """Start the run, send ``sig`` as soon as ``run_dir/ckpt`` exists; (exit status, stderr)."""
    proc = _cli(args, run_dir)
    deadline = time.monotonic() + 600
    while not (run_dir / ckpt).is_file():
        assert proc.poll() is None, "the run ended before its first checkpoint: " + proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    return {"distill": run_to_end(DISTILL, root / "distill"), "recover": run_to_end(RECOVER, root / "recover")}


def _check_interrupted(returncode: int, stderr: str, sig: signal.Signals, run_dir: Path, ckpt: str) -> None:
    assert not (run_dir / "results.json").exists(), "an interrupted run must not leave a record"
    if sig == signal.SIGKILL:  # nothing runs: the status is the signal's
        assert returncode == -signal.SIGKILL
        return
    assert returncode == 128 + sig, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("infopt: interrupted")]
    assert f"by {sig.name}" in line and f"rerun the same command with hydra.run.dir={run_dir}" in line, line
    assert f"training continues from {ckpt}" in line, line
    assert json.loads((run_dir / "incomplete.json").read_text())["exit_code"] == 128 + sig


def _same_numbers(resumed: dict, straight: dict, keys: tuple[str, ...]) -> None:
    assert resumed["config_hash"] == straight["config_hash"]
    assert resumed["result"]["eval"] == straight["result"]["eval"]  # held-out perplexity etc., exactly
    metrics, want = resumed["technique"]["metrics"], straight["technique"]["metrics"]
    for key in keys:
        assert metrics[key] == want[key], key


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_distill_killed_and_resumed_matches_an_uninterrupted_run(straight, tmp_path, sig):
    run_dir, ckpt = tmp_path / "run", "checkpoints/last.ckpt"
    returncode, stderr = kill_after_first_checkpoint(DISTILL, run_dir, sig, ckpt)
    _check_interrupted(returncode, stderr, sig, run_dir, ckpt)
    resumed = run_to_end(DISTILL, run_dir)
    assert resumed["run"]["resumed_from"] == [str(run_dir / ckpt)] and resumed["technique"]["metrics"]["resumed"] == 1
    _same_numbers(resumed, straight["distill"], ("val_loss", "train_loss", "train_ce", "train_forward_kl", "train_steps"))


def test_prune_recovery_killed_and_resumed_matches_an_uninterrupted_run(straight, tmp_path):
    run_dir, ckpt = tmp_path / "run", "recover/checkpoints/last.ckpt"
    returncode, stderr = kill_after_first_checkpoint(RECOVER, run_dir, signal.SIGTERM, ckpt)
    _check_interrupted(returncode, stderr, signal.SIGTERM, run_dir, ckpt)
    resumed = run_to_end(RECOVER, run_dir)
    assert resumed["run"]["resumed_from"] == [str(run_dir / ckpt)]
    _same_numbers(resumed, straight["recover"], ("recover_val_loss", "recover_steps", "sparsity_after_recovery"))
