"""The command line as a user meets it: help, config printing, one-line errors, offline hub."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import CACHE_DIR, REPO


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["--info", "defaults-tree"]])
def test_help_and_config_printing_work(args):
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "model" in proc.stdout


def test_cfg_job_shows_the_composed_distill_config():
    proc = run_cli("technique=distill", "model=gpt2", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "name: distill" in proc.stdout and "openai-community/gpt2" in proc.stdout


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model=nope", "valid model options: gpt2, hf, llama_1b_shape, smollm2_135m, smollm2_shape, tiny_gpt2, tiny_llama"),
        ("model.bitz=3", "Key 'bitz' not in 'ModelConfig' (valid keys: name, source"),
        ("eval.limit=abc", "eval.limit=abc"),
        ("eval.limit=-3", "eval.limit=-3 must be > 0"),
        ("technique=nope", "valid technique options:"),
    ],
)
def test_bad_override_is_one_line_without_traceback(override, needle):
    proc = run_cli(override)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("infopt: error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_value_in_a_sweep_fails_before_any_job():
    proc = run_cli("-m", "model=tiny_llama", "eval.limit=2,-1")
    assert proc.returncode == 2
    assert "eval.limit=-1 must be > 0" in proc.stderr and "sweep combination" in proc.stderr


def test_offline_hub_model_fails_fast_with_alternatives(tmp_path):
    proc = run_cli("model=gpt2", f"hydra.run.dir={tmp_path}/run", env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    assert "not in the local Hugging Face cache" in proc.stderr
    assert "model=smollm2_135m" in proc.stderr and "model.pretrained=false" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_run_console_shows_infopt_lines_only_and_cli_log_keeps_the_rest(tmp_path):
    """Other libraries' warnings and progress bars go to the run's cli.log, never to the console."""
    run_dir = tmp_path / "run"
    proc = run_cli("model=tiny_llama", "technique=quantize", "technique.method=rtn", "eval=quick", "bench=quick",
                   "logger=wandb", f"hydra.run.dir={run_dir}", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    foreign = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("infopt: ")]
    assert foreign == []
    assert "infopt: technique: quantize done" in proc.stderr
    # stdout: the summary table, the notes and where the record is; no progress bar or warning.
    assert "results:" in proc.stdout and "%|" not in proc.stdout and "Warning" not in proc.stdout
    log = (run_dir / "cli.log").read_text()
    assert "[infopt" in log  # infopt's own records are in the file too
