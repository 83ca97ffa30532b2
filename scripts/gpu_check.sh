#!/usr/bin/env bash
# The GPU check in one call: the GPU test suite, then the GPU benchmark, in under 8 minutes on one
# H200, every record packed into $OUT (docs/gpu.md). Prepare first, on a machine with PyPI:
#   bash scripts/gpu_prepare.sh          # .whl/ and .cache/infopt-gpu/ (git-ignored, carried)
# On the GPU machine (python3 there has torch, transformers, lightning, peft, pytest; no network):
#   bash scripts/gpu_check.sh            # device call: carry=[".whl", ".cache/infopt-gpu"], timeout_s=540
# Here, without a GPU, the same flow as a rehearsal (gpu tests run as far as a CPU takes them):
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh --cpu
#
# Knobs: GPU_CHECK_PARTS=suite,bench (or one of them), GPU_CHECK_BUDGET_S=460 (whole script),
# GPU_CHECK_SUITE_S=260 (suite's share), GPU_CHECK_ONLY=item,item (benchmark items), OUT=dir.
# Writes to $OUT (at most 8 files come back from a device call): gpu_check.tgz (all records and
# logs), summary.md, summary.json, pytest.log, junit.xml, check.log, environment.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
PY=${PYTHON:-python3}
PARTS=${GPU_CHECK_PARTS:-suite,bench}
BUDGET=${GPU_CHECK_BUDGET_S:-460}
SUITE_S=${GPU_CHECK_SUITE_S:-260}
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)/gpu_check
mkdir -p "$WORK"
START=$SECONDS
status=0
log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$WORK/check.log"; }

export INFOPT_CACHE_DIR="$PWD/.cache/infopt-gpu" HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false \
  PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
[ "$MODE" = cpu ] && export INFOPT_GPU_SUITE_ON_CPU=1
log "mode=$MODE parts=$PARTS budget=${BUDGET}s python=$PY"
[ -f "$INFOPT_CACHE_DIR/tokenizers/smollm2-135m-instruct/tokenizer.json" ] \
  || log "WARNING: no tokenizer in $INFOPT_CACHE_DIR: run scripts/gpu_prepare.sh and carry .cache/infopt-gpu"

# 1. Wheels of what the machine lacks (hydra, omegaconf, torchao, bitsandbytes, ...), into a target dir.
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${TMPDIR:-/tmp}/infopt-site
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      >"$WORK/pip.log" 2>&1; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    log "installed $(ls .whl/*.whl | wc -l) wheels into $SITE"
  else
    log "wheel install FAILED (pip.log)"; status=1
  fi
else
  log "no .whl/: using what $PY has (run scripts/gpu_prepare.sh to carry the missing packages)"
fi

# 2. What ran where: GPU, driver, versions.
{
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for p in ("transformers", "lightning", "peft", "accelerate", "hydra-core", "omegaconf", "torchao", "bitsandbytes",
          "lm-eval", "pytest", "pytest-timeout"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "not installed")
EOF
} >"$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt" | tail -n 14

# 3. The GPU suite: every test marked gpu, with a per-test limit (a hang must not eat the budget).
if [[ ",$PARTS," == *",suite,"* ]]; then
  log "suite: pytest -m gpu (at most ${SUITE_S}s)"
  # Files in priority order (pytest keeps it); SIGINT at the limit lets pytest write its report.
  timeout --signal=INT --kill-after=20 "$SUITE_S" "$PY" -m pytest -m gpu tests/gpu/test_gpu_quantize.py \
    tests/gpu/test_gpu_sparse.py tests/gpu/test_gpu_training.py tests/gpu/test_gpu_bench.py tests/gpu/test_gpu_decode.py \
    tests/techniques/test_prune.py -p no:cacheprovider \
    -q -rfEs --durations=15 --timeout=150 --junitxml="$WORK/junit.xml" >"$WORK/pytest.log" 2>&1
  rc=$?
  tail -n 40 "$WORK/pytest.log"
  log "suite: exit $rc"
  [ $rc -ne 0 ] && status=1
fi

# 4. The benchmark: items in priority order until the deadline, records written as they finish.
if [[ ",$PARTS," == *",bench,"* ]]; then
  left=$((BUDGET - (SECONDS - START)))
  deadline=$((left - 75))  # the last item started must still finish and be packed
  if [ "$deadline" -lt 20 ]; then
    log "bench: no time left (${left}s)"
  else
    args=(--out "$WORK/bench" --deadline-s "$deadline")
    [ "$MODE" = cpu ] && args+=(--cpu)
    [ -n "${GPU_CHECK_ONLY:-}" ] && args+=(--only "$GPU_CHECK_ONLY")
    log "bench: items until +${deadline}s of ${left}s left"
    timeout --kill-after=10 "$((left - 15))" "$PY" benchmarks/gpu_bench.py "${args[@]}" >"$WORK/bench.log" 2>&1
    rc=$?
    log "bench: exit $rc"
    [ $rc -ne 0 ] && status=1
  fi
fi

# 5. Pack: one archive with everything, plus the small files a reader wants first.
log "done in $((SECONDS - START))s, status $status"
cp "$WORK/check.log" "$WORK/environment.txt" "$OUT/" 2>/dev/null
for f in pytest.log junit.xml; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"; done
for f in summary.md summary.json; do [ -f "$WORK/bench/$f" ] && cp "$WORK/bench/$f" "$OUT/"; done
# Records and logs only: no checkpoints, exported weights or tokenizer copies (files back are 16 MiB at most).
(cd "$(dirname "$WORK")" && find gpu_check -path gpu_check/inductor -prune -o -type f -size -4M \
  \( -name '*.json' -o -name '*.md' -o -name '*.log' -o -name '*.txt' -o -name '*.yaml' -o -name '*.xml' -o -name '*.csv' \) \
  ! -name 'tokenizer*.json' -print | tar czf "$OUT/gpu_check.tgz" -T -)
echo "records: $OUT/gpu_check.tgz ($(du -h "$OUT/gpu_check.tgz" | cut -f1))"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
grep -E "^(FAILED|ERROR)|passed|failed" "$WORK/pytest.log" 2>/dev/null | tail -n 12
exit $status
