#!/usr/bin/env bash
# The SmolLM2-135M measurements of docs/distillation.md, run back to back under one hold of the
# shared heavy-job lock (so the runs see the same machine load as far as possible).
#   bash scripts/distill_measure.sh [outdir]             stride-2 student: CE, cache build, KD online, KD cached, overhead
#   SET=ends bash scripts/distill_measure.sh [outdir]    first 7 + last 8 layers: KD online, KD cached, CE
set -u
OUT=${1:-outputs/distill_measure}
mkdir -p "$OUT"
export INFOPT_CACHE_DIR=${INFOPT_CACHE_DIR:-$HOME/.cache/infopt} WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-30}
SET=${SET:-stride}
COMMON=(experiment=kd_student hydra.mode=RUN model=smollm2_135m eval=quick bench=quick 'bench.batch_sizes=[1]' bench.new_tokens=32
        bench.prompt_tokens=64 bench.repeats=3 logger=csv hardware.num_threads=2 technique.data.train_docs=60
        technique.train.max_steps=$STEPS technique.train.checkpoint_every=0 technique.train.val_every=$STEPS technique.save_student=true)
ENDS='technique.student.layers=[0,1,2,3,4,5,6,22,23,24,25,26,27,28,29]'
run() {  # name, overrides...
  local name=$1; shift
  echo "== $name $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"
  nice "$PY" run.py "${COMMON[@]}" "$@" hydra.run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "   exit $? $(date -u +%T)" | tee -a "$OUT/log.txt"
}
body() {
  if [ "$SET" = ends ]; then
    run kd_online_ends technique.data.mode=online "$ENDS"
    run kd_cached_ends technique.data.mode=cached "$ENDS"
    run ce_only_ends technique.loss.forward_kl=0 technique.loss.ce=1 technique.data.mode=online "$ENDS"
    return
  fi
  run ce_only technique.loss.forward_kl=0 technique.loss.ce=1 technique.data.mode=online
  # Builds the teacher's top-k cache (2 steps only; its training is not what is compared).
  run kd_cache_build technique.data.mode=cached technique.train.max_steps=2 technique.train.val_every=2 skip_baseline=true bench=none eval.limit=1
  run kd_online technique.data.mode=online
  run kd_cached technique.data.mode=cached
  echo "== overhead $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"
  nice "$PY" scripts/distill_overhead.py --model smollm2_135m --steps 6 --skip 1 --rounds 2 --out "$OUT/overhead.json" > "$OUT/overhead.log" 2>&1
  echo "   exit $? $(date -u +%T)" | tee -a "$OUT/log.txt"
}
export OUT PY STEPS SET ENDS
flock /tmp/infopt-heavy.lock bash -c "$(declare -p COMMON); $(declare -f run body); body"
