"""Security: no secret in any record or log, no pickle loading, no remote code unless asked."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CACHE_DIR, CONF_DIR, REPO, compose_config
from infopt.secrets import REDACTED, install_log_redaction, redact, redact_file, redact_text

SRC = REPO / "src" / "infopt"
# Fake credentials in the formats the real ones have.
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex, like a W&B API key
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
OPENAI_KEY = "sk-proj-ZYXWVUTSRQPONMLKJIHGFEDCBA"
GITHUB_TOKEN = "ghp_ZZZZabcdefghijklmnopqrstuvwxyz0123"
SECRETS = (WANDB_KEY, HF_TOKEN, OPENAI_KEY, GITHUB_TOKEN)


@pytest.mark.parametrize(
    "key,value,secret",
    [
        ("token", "abc", True),
        ("hf_token", "abc", True),
        ("HF_TOKEN", "abc", True),
        ("wandb.api_key", "abc", True),
        ("api-key", "abc", True),
        ("password", "hunter2", True),
        ("client_secret", "abc", True),
        ("use_auth_token", "abc", True),
        ("tokenizer", "embedded", False),  # the bug this replaces: "token" in "tokenizer"
        ("num_tokens", "5", False),
        ("prompt_tokens", "128", False),
        ("max_new_tokens", "32", False),
        ("pad_token", "<|endoftext|>", False),
        ("act_granularity", "per_token", False),
        ("tokens_per_s", "12.5", False),
        ("revision", WANDB_KEY, False),  # a 40-hex commit is a revision, not a W&B key
        ("git_commit", WANDB_KEY, False),
        ("name", WANDB_KEY, True),  # a bare 40-hex value anywhere else looks like a W&B key
        ("name", HF_TOKEN, True),
        ("tags", f"x-{OPENAI_KEY}", True),
        ("name_or_path", "HuggingFaceTB/SmolLM2-135M", False),
    ],
)
def test_redaction_is_precise(key, value, secret):
    out = redact({key: value})[key]
    if secret:
        assert REDACTED in out and value not in out
    else:
        assert out == value


def test_composed_configs_lose_nothing_to_redaction():
    """No false positive anywhere in the shipped configs: each option's config survives unchanged."""
    from omegaconf import OmegaConf

    for group in ("model", "technique", "eval", "bench", "data", "hardware", "logger"):
        for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
            cfg = compose_config([f"{group}={option}"], Path("/out"))
            container = OmegaConf.to_container(cfg, resolve=False)
            assert redact(container) == container, f"{group}={option}"


def test_environment_secrets_and_assignments_are_redacted_in_text(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "shortish-but-real-key")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct horse battery")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a flag, not a credential
    text = "key shortish-but-real-key pw correct horse battery hf_token=abc123 num_tokens=5 tok=false"
    out = redact_text(text)
    assert "shortish-but-real-key" not in out and "correct horse battery" not in out
    assert "hf_token=***redacted***" in out and "num_tokens=5" in out and "tok=false" in out


def test_log_records_are_redacted_for_every_logger_and_handler(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    install_log_redaction()
    install_log_redaction()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("infopt.test.secrets")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("hub login with %s", HF_TOKEN)
        logger.info("wandb key %s, openai %s", WANDB_KEY, OPENAI_KEY)
        logger.info("password=%s and tokenizer=%s", "hunter2", "embedded")
    finally:
        logger.removeHandler(handler)
    logged = stream.getvalue()
    assert HF_TOKEN not in logged and OPENAI_KEY not in logged and "hunter2" not in logged
    assert "tokenizer=embedded" in logged and logged.count(REDACTED) == 3


def test_yaml_files_are_redacted_in_place(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        f"model:\n  tokenizer: embedded\n  hub_token: {HF_TOKEN}\n  revision: {WANDB_KEY}\nlogger:\n  tags:\n  - {GITHUB_TOKEN}\n  api_key: null\n"
    )
    assert redact_file(path)
    text = path.read_text()
    assert HF_TOKEN not in text and GITHUB_TOKEN not in text
    assert "tokenizer: embedded" in text and f"revision: {WANDB_KEY}" in text and "api_key: null" in text
    assert not redact_file(path)  # nothing left to redact


def _files_under(root: Path):
    for path in root.rglob("*"):
        if path.is_file():  # follows W&B's debug-core.log symlink out of the run dir too
            yield path


def test_no_secret_reaches_any_file_of_a_run(tmp_path):
    """A whole CLI run with secrets in the environment and in config values, W&B on: grep everything."""
    run_dir = tmp_path / "run"
    env = {
        **os.environ,
        "INFOPT_CACHE_DIR": str(CACHE_DIR),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_API_KEY": WANDB_KEY,
        "HF_TOKEN": HF_TOKEN,
    }
    env.pop("HYDRA_FULL_ERROR", None)
    args = [
        "model=tiny_llama",
        "eval=quick",
        "eval.tasks=[]",
        "eval.token_perplexity_window=64",
        "bench=none",
        "skip_baseline=true",
        "logger=wandb",
        f"run_name={OPENAI_KEY}",
        f"logger.tags=[{GITHUB_TOKEN}]",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = []
    for path in [*_files_under(run_dir)]:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret[:6]}... leaked into {path}"
        checked.append(path.relative_to(run_dir).as_posix())
    for secret in SECRETS:
        assert secret not in proc.stdout + proc.stderr
    # What was checked: the record, Hydra's saved config, its job log, the W&B run and its logs.
    for expected in ("results.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"):
        assert expected in checked
    assert any(c.endswith(".wandb") for c in checked) and any("debug" in c for c in checked)

    record = json.loads((run_dir / "results.json").read_text())
    assert record["config"]["model"]["tokenizer"] == "embedded"  # not a secret
    assert record["config"]["run_name"] == REDACTED and record["run"]["name"] == REDACTED
    from support.wandb_offline import read_run

    logged = read_run(next((run_dir / "wandb").glob("offline-run-*")))
    assert logged["config"]["model"]["tokenizer"] == "embedded"
    assert logged["config"]["logger"]["tags"] == [REDACTED] and REDACTED in logged["tags"]


def test_a_failing_job_prints_no_secret_on_stderr_or_in_its_log(tmp_path):
    """A library-style exception (not an infopt error) naming a user path with a token in it: Hydra's
    "Error executing job with overrides" line and the traceback reach stderr redacted; cli.log keeps
    the traceback, redacted too."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1", "HF_TOKEN": HF_TOKEN}
    env.pop("HYDRA_FULL_ERROR", None)
    args = ["model=tiny_llama", "technique=toy_crash", f"technique.path=/data/{HF_TOKEN}/w.bin",
            f"run_name={GITHUB_TOKEN}", "eval=quick", "eval.tasks=[]", "bench=none", "skip_baseline=true",
            "logger=none", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "tests/support/run_with_toys.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Error executing job with overrides" in proc.stderr and "OSError" in proc.stderr
    assert f"/data/{REDACTED}/w.bin" in proc.stderr
    log_text = "".join(p.read_text() for p in run_dir.glob("*.log"))
    assert "OSError" in log_text and "Traceback" in log_text  # the traceback is kept, not lost
    for secret in (HF_TOKEN, GITHUB_TOKEN):
        assert secret not in proc.stdout + proc.stderr
        assert secret not in log_text
        for path in _files_under(run_dir):
            assert secret.encode() not in path.read_bytes(), f"{secret[:6]}... leaked into {path}"


def test_a_secret_in_the_run_dir_path_stays_out_of_the_record_and_logs(tmp_path):
    """A token in ``hydra.run.dir`` (W&B stores its own directory, so this is for the file loggers):
    ``run.output_dir`` in results.json, the CSV logs and cli.log are redacted."""
    run_dir = tmp_path / f"run-{HF_TOKEN}"
    env = {**os.environ, "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1"}
    args = ["model=tiny_llama", "technique=toy_scale", "eval=quick", "eval.tasks=[]", "bench=none",
            "skip_baseline=true", "logger=csv", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "tests/support/run_with_toys.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["run"]["output_dir"] == str(tmp_path / f"run-{REDACTED}")
    assert HF_TOKEN not in proc.stdout + proc.stderr
    for path in _files_under(run_dir):
        assert HF_TOKEN.encode() not in path.read_bytes(), f"leaked into {path}"


def test_the_console_stream_redacts_whole_lines_across_writes():
    from infopt.secrets import RedactingStream

    out = io.StringIO()
    stream = RedactingStream(out)
    stream.write("path /x/" + HF_TOKEN[:10])
    assert out.getvalue() == ""  # a partial line waits: the secret may continue in the next write
    stream.write(HF_TOKEN[10:] + "/y\nnext ")
    stream.flush()
    assert out.getvalue() == f"path /x/{REDACTED}/y\nnext "


# ---- static checks over the source tree -------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def _sources():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        yield path.relative_to(REPO).as_posix(), ast.parse(path.read_text(), str(path))


def _unsafe(rel: str, tree: ast.AST) -> list[str]:
    """torch.load without weights_only=True, pickle modules, allow_pickle, safetensors opt-outs, torch.save."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(
                n and n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal")
                for n in names
            ):
                problems.append(f"{rel}:{node.lineno}: imports a pickle module")
    for call in _calls(tree):
        name = _name(call.func)
        if name.endswith("torch.load") and _kw(call, "weights_only") is not True:
            problems.append(f"{rel}:{call.lineno}: {name} without weights_only=True")
        if name.endswith(("joblib.load", "read_pickle")):
            problems.append(f"{rel}:{call.lineno}: {name} unpickles")
        if _kw(call, "allow_pickle") is True:
            problems.append(f"{rel}:{call.lineno}: allow_pickle=True")
        if _kw(call, "safe_serialization") is False or _kw(call, "use_safetensors") is False:
            problems.append(f"{rel}:{call.lineno}: weights saved/loaded without safetensors")
        if name.endswith("torch.save") and rel != "src/infopt/training/trainer.py":
            # Lightning checkpoints (always loaded weights_only) are the one torch.save file.
            problems.append(f"{rel}:{call.lineno}: torch.save writes a pickle; use safetensors")
    return problems


def test_no_unsafe_deserialization_in_src():
    problems = [p for rel, tree in _sources() for p in _unsafe(rel, tree)]
    assert not problems, "\n".join(problems)


def test_the_static_check_catches_what_it_claims():
    """The scan flags each pattern it exists to find (a blind check would pass anything)."""
    bad = ast.parse(
        "import torch, pickle\n"
        "torch.load(p)\n"
        "torch.load(p, weights_only=False)\n"
        "torch.load(p, weights_only=True)\n"
        "m.save_pretrained(d, safe_serialization=False)\n"
        "np.load(f, allow_pickle=True)\n"
        "torch.save(obj, f)\n"
    )
    problems = _unsafe("src/infopt/x.py", bad)
    assert [int(p.split(":")[1]) for p in problems] == [1, 2, 3, 5, 6, 7], problems


def test_trust_remote_code_is_off_unless_the_user_sets_it():
    for option in sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")):
        cfg = compose_config([f"model={option}"])
        assert cfg.model.trust_remote_code is False, option
    assert compose_config(
        ["model=hf", "model.name_or_path=x/y", "model.trust_remote_code=true"]
    ).model.trust_remote_code
    # Nowhere in src is it switched on by a literal: it always comes from the model config.
    for rel, tree in _sources():
        for call in _calls(tree):
            assert _kw(call, "trust_remote_code") is not True, f"{rel}:{call.lineno}"


def test_trust_remote_code_reaches_transformers_as_configured(monkeypatch, tmp_path, tokenizer):
    """load_model passes the model config's flag, false by default, to from_pretrained."""
    import transformers

    from infopt.config.schema import ModelConfig
    from infopt.models.load import ResolvedModel, load_model

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    for flag in (False, True):
        cfg = ModelConfig(name="x", source="local", name_or_path=str(tmp_path), trust_remote_code=flag)
        with pytest.raises(RuntimeError, match="stop"):
            load_model(cfg, ResolvedModel(str(tmp_path), str(tmp_path), str(tmp_path)), tokenizer, tmp_path)
        assert seen["trust_remote_code"] is flag
