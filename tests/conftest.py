"""Shared fixtures: tiny real-architecture models, the embedded tokenizer, composed configs.

Configs are composed from the real conf/ and then shrunk (lightning-hydra-template style); every
test writes into tmp_path; the model/tokenizer cache is shared across the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep tests offline, quiet and deterministic before any library import reads these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
CACHE_DIR = Path(os.environ.setdefault("INFOPT_CACHE_DIR", str(REPO / ".cache" / "infopt")))

# Fixtures shared by one folder of tests (the real embedded model for tests/embedded).
pytest_plugins = ["support.embedded"]

QUICK = ["eval=quick", "bench=quick", "logger=none"]
# The GPU suite's own rehearsal on CPU (scripts/gpu_check.sh --cpu): gpu tests run, on the CPU,
# as far as a CPU can take each of them; the CUDA-only parts skip one by one.
GPU_SUITE_ON_CPU = os.environ.get("INFOPT_GPU_SUITE_ON_CPU") == "1"


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests skip, with the reason, where no CUDA device is visible."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items or GPU_SUITE_ON_CPU:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="no CUDA device on this machine: the GPU suite runs on a GPU machine through scripts/gpu_check.sh "
        "(docs/gpu.md lists what has not run on a GPU yet)"
    )
    for item in gpu_items:
        item.add_marker(skip)


def compose_config(overrides: list[str], output_dir: Path | None = None):
    """The real config, composed with overrides, paths pointed at test dirs."""
    from infopt.composition import compose

    return compose(overrides, output_dir or "/nonexistent-output-dir", CACHE_DIR)


@pytest.fixture(scope="session")
def tokenizer():
    from infopt.models.load import load_tokenizer

    return load_tokenizer("embedded", CACHE_DIR)


def _tiny(tokenizer, architecture: str):
    from infopt.config.schema import TinyArchConfig
    from infopt.models.tiny import build_tiny

    arch = TinyArchConfig(
        architecture=architecture,
        num_kv_heads=2 if architecture == "llama" else 4,
        intermediate_size=128 if architecture == "llama" else 256,
    )
    return build_tiny(
        arch,
        vocab_size=len(tokenizer),
        seed=0,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


@pytest.fixture
def tiny_llama(tokenizer):
    """2-layer Llama with grouped-query attention (4 query / 2 KV heads), random init."""
    return _tiny(tokenizer, "llama")


@pytest.fixture
def tiny_gpt2(tokenizer):
    """2-layer GPT-2 with Conv1D projections, random init."""
    return _tiny(tokenizer, "gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def tiny_model(request, tokenizer):
    """Both tiny architectures, for technique x architecture matrices."""
    return _tiny(tokenizer, request.param)


@pytest.fixture(scope="session")
def text_data(tokenizer):
    """TextData over the embedded Lee corpus with short blocks."""
    import importlib.util

    from infopt.config.schema import DataConfig
    from infopt.data.text import TextData

    sample = CACHE_DIR / "data" / "lee_news.txt"  # the GPU machine has no gensim: the same text, as a file
    if importlib.util.find_spec("gensim") is None and sample.is_file():
        cfg = DataConfig(name="lee_news", source="text_files", files=[str(sample)], heldout_docs=30,
                         calibration_docs=30, seq_len=64, calibration_samples=8)  # fmt: skip
    else:
        cfg = DataConfig(name="lee_news", source="lee_news", seq_len=64, calibration_samples=8)
    return TextData(cfg, tokenizer)


@pytest.fixture
def run_context(tmp_path, tokenizer, text_data):
    """A RunContext like the one a run builds, on CPU, writing into tmp_path."""
    import torch

    from infopt.composition.validate import validate_config
    from infopt.context import RunContext
    from infopt.tracking import RunLogger

    def make(overrides: list[str] | None = None) -> RunContext:
        cfg = validate_config(
            compose_config(["model=tiny_llama", *QUICK, *(overrides or [])], tmp_path),
            check_technique=False,
        )
        return RunContext(
            cfg=cfg,
            tokenizer=tokenizer,
            data=text_data,
            output_dir=tmp_path,
            cache_dir=CACHE_DIR,
            device=torch.device("cpu"),
            logger=RunLogger(cfg.logger, tmp_path),
        )

    return make


def run_main(overrides: list[str], output_dir: Path) -> dict:
    """A whole run in-process (no subprocess): returns the results.json record."""
    from infopt.experiment import run_experiment

    return run_experiment(compose_config(overrides, output_dir))
