#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a GPU machine with no network (docs/gpu.md):
#   .whl/                 wheels of the packages that machine lacks (x86-64, CPython 3.12)
#   .cache/infopt-gpu/    SmolLM2's tokenizer (3.4 MB, read from the embedded GGUF once) and the
#                         Lee corpus as a text file (the machine has no gensim; same documents, same order)
# Both are git-ignored; a device call carries them: carry=[".whl", ".cache/infopt-gpu"].
#
#   bash scripts/gpu_prepare.sh          # profile "check": what the GPU suite and benchmark import
#   bash scripts/gpu_prepare.sh evals    # "check" without bitsandbytes, plus lm-eval and its needs, gguf,
#                                        # compressed-tensors (lm-eval tasks and exports on the GPU)
#   bash scripts/gpu_prepare.sh full     # both: measured at 65 MiB, over the 64 MiB a call carries (exits 1)
#
# Ends with the size of everything a device call sends (64 MiB at most) and writes the wheel list
# to .cache/infopt-gpu/kit.json, which the check copies into its records.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-check}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
KIT=.cache/infopt-gpu
LIMIT_MB=64

case "$PROFILE" in check|evals|full) ;; *) echo "usage: $0 [check|evals|full]" >&2; exit 2;; esac

# The versions this checkout is tested with (its .venv), where it has them.
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || echo "$2"; }

# Not on the GPU machine (docs/device KINDS.md lists what is): its config system and the
# quantization kernels. bitsandbytes (43 MB, CUDA 11.8-13.2 builds) is the largest.
CHECK=(
  "hydra-core==$(ver hydra-core 1.3.8)"
  "omegaconf==$(ver omegaconf 2.3.0)"
  "torchao==$(ver torchao 0.18.0)"
  "bitsandbytes==0.50.2"
)
# Published only as source: built into wheels here (pure Python).
CHECK_SDIST=("antlr4-python3-runtime==$(ver antlr4-python3-runtime 4.9.3)")
FULL=(
  "lm-eval==$(ver lm-eval 0.4.13)" "datasets==$(ver datasets 5.2.0)" "evaluate==$(ver evaluate 0.4.6)"
  "dill==$(ver dill 0.4.1)" "multiprocess==$(ver multiprocess 0.70.19)" "more-itertools==$(ver more-itertools 10.8.0)"
  "pytablewriter==$(ver pytablewriter 1.2.1)" "DataProperty==$(ver DataProperty 1.1.0)"
  "mbstrdecoder==$(ver mbstrdecoder 1.1.4)" "pathvalidate==$(ver pathvalidate 3.3.1)"
  "tabledata==$(ver tabledata 1.3.4)" "tcolorpy==$(ver tcolorpy 0.1.7)" "typepy==$(ver typepy 1.3.4)"
  "chardet==$(ver chardet 5.2.0)" "nltk==$(ver nltk 3.9.2)"
  "gguf==$(ver gguf 0.19.0)"
  "compressed-tensors==$(ver compressed-tensors 0.20.1)" "pydantic==$(ver pydantic 2.12.5)"
  "pydantic-core==$(ver pydantic-core 2.41.5)" "annotated-types==$(ver annotated-types 0.7.0)"
  "typing-inspection==$(ver typing-inspection 0.4.2)" "loguru==$(ver loguru 0.7.3)"
)
FULL_SDIST=("rouge-score==$(ver rouge-score 0.1.2)" "sqlitedict==$(ver sqlitedict 2.1.0)" "word2number==$(ver word2number 1.1)")

WANT=("${CHECK[@]}")
SDIST=("${CHECK_SDIST[@]}")
if [ "$PROFILE" != check ]; then WANT+=("${FULL[@]}"); SDIST+=("${FULL_SDIST[@]}"); fi
if [ "$PROFILE" = evals ]; then WANT=("${WANT[@]/bitsandbytes==*/}"); fi

rm -rf .whl && mkdir -p .whl
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done
failed=()
for spec in "${WANT[@]}"; do
  [ -z "$spec" ] && continue
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl "$spec" 2>/tmp/gpu_prepare_pip.log; then
    failed+=("$spec")
    tail -n 2 /tmp/gpu_prepare_pip.log >&2
  fi
done
for spec in "${SDIST[@]}"; do
  "$PY" -m pip wheel -q --no-deps -w .whl "$spec" 2>/tmp/gpu_prepare_pip.log || { failed+=("$spec"); tail -n 2 /tmp/gpu_prepare_pip.log >&2; }
done

# Tokenizer and text: through the framework, so they are exactly what data=lee_news and the
# embedded tokenizer give on this machine.
mkdir -p "$KIT/data"
"$PY" - "$KIT" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "src")
from infopt.config.schema import DataConfig
from infopt.data.corpus import load_documents
from infopt.models.load import embedded_tokenizer_dir

kit = Path(sys.argv[1])
print("tokenizer:", embedded_tokenizer_dir(kit))
docs = load_documents(DataConfig(name="lee_news", source="lee_news"))
assert all("\n\n" not in d for d in docs)
(kit / "data" / "lee_news.txt").write_text("\n\n".join(docs) + "\n")
print(f"text: {len(docs)} documents -> {kit / 'data' / 'lee_news.txt'}")
EOF

# What a device call sends: the tree (tracked and untracked-not-ignored files) plus the carried paths.
"$PY" - "$PROFILE" "$LIMIT_MB" "${failed[@]+"${failed[@]}"}" <<'EOF'
import json
import subprocess
import sys
from pathlib import Path

profile, limit_mb, failed = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(Path(f).stat().st_size for f in files.decode().split("\0") if f and Path(f).is_file())
wheels = sorted(Path(".whl").glob("*.whl"))
kit = [p for p in Path(".cache/infopt-gpu").rglob("*") if p.is_file() and p.name != "kit.json"]
MB = 2**20
total = tree + sum(w.stat().st_size for w in wheels) + sum(p.stat().st_size for p in kit)
report = {
    "profile": profile,
    "wheels": {w.name: round(w.stat().st_size / MB, 2) for w in wheels},
    "wheels_mb": round(sum(w.stat().st_size for w in wheels) / MB, 2),
    "tokenizer_and_text_mb": round(sum(p.stat().st_size for p in kit) / MB, 2),
    "tree_mb": round(tree / MB, 2),
    "total_mb": round(total / MB, 2),
    "limit_mb": limit_mb,
    "not_downloaded": failed,
}
Path(".cache/infopt-gpu/kit.json").write_text(json.dumps(report, indent=1) + "\n")
for name, mb in report["wheels"].items():
    print(f"  {mb:7.2f} MB  {name}")
print(f"wheels {report['wheels_mb']} MB + tokenizer/text {report['tokenizer_and_text_mb']} MB + tree {report['tree_mb']} MB "
      f"= {report['total_mb']} MB of {limit_mb:g} MiB ({profile})")
if failed:
    print("NOT DOWNLOADED:", ", ".join(failed))
if total > limit_mb * MB:
    print(f"TOO LARGE for one device call: {report['total_mb']} MB > {limit_mb:g} MiB")
    sys.exit(1)
EOF
