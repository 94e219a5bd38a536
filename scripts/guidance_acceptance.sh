#!/usr/bin/env bash
# The guidance-family measurement on the bundled class-conditional eps model (docs/guidance.md),
# every process at once on one machine (made for one GPU: the model is small, so a dozen processes
# share it well):
#   * per scale W in SCALES: a solver learned at that one scale (`s4s learn --guidance W`), then
#     evaluated on N samples;
#   * one guidance family learned once for RANGE (`s4s learn --guidance RANGE`) and, when FAMILY2_ARGS
#     is set, a second family with those extra flags (by default twice the steps: the issue allows
#     twice one single-scale run's cost); each evaluated at every W;
#   * per scale W: the best hand-designed solvers (benchmarks/best_hand_designed.py: every baseline on
#     every grid screened on SCREEN_N samples, the TOP best measured on N).
# Every process is stopped BUDGET_S seconds after the start; whatever finished is packed into
# $OUT/guidance.tar.gz (solver files, `--json` outputs, logs, sample grids at the scales in IMAGES).
# Merge with `s4s bench-report` (docs/guidance.md gives the commands).
# Dry run on a CPU: DEVICE=cpu N=100 SCREEN_N=50 TOP=1 BUDGET_S=900 SCALES="1 8" \
#   LEARN_ARGS="--preset fast --steps 3 --teacher-samples 60 --val-every 1 --probe-steps 1" \
#   FAMILY2_ARGS="--steps 6" BASELINE_ARGS="--baselines ddim unipc_bh1 --grids time" OUT=/tmp/out \
#   bash scripts/guidance_acceptance.sh
# Needs the wheels diffusers and importlib_metadata in .whl/ when the machine lacks them.
set -u
DEVICE=${DEVICE:-cuda}
N=${N:-10000}
SCREEN_N=${SCREEN_N:-1000}
TOP=${TOP:-3}
NFE=${NFE:-5}
SCALES=${SCALES:-"1 2 4 6 8"}
RANGE=${RANGE:-1:8}
IMAGES=${IMAGES:-"1 8"}
LEARN_ARGS=${LEARN_ARGS:-}
FAMILY2_ARGS=${FAMILY2_ARGS-"--steps 800"}
BASELINE_ARGS=${BASELINE_ARGS:-}
BUDGET_S=${BUDGET_S:-470}
W=${WORK:-/tmp/s4s-guidance}
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks
else
  export PYTHONPATH=$PWD/src:$PWD/benchmarks
fi
PY=${PY:-python3}
R=$W/results
rm -rf "$W"; mkdir -p "$R" "$OUT"
export S4S_CACHE=$W/cache
log() { echo "[$(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$R/session.log"; }
# run a command with what is left of the budget; 124 when the budget is spent
bounded() { local left=$((DEADLINE - $(date +%s))); [ "$left" -gt 2 ] || return 124; timeout "$left" "$@"; }
s4s() { bounded $PY -m s4s.cli "$@"; }

evaluate() {  # solver-file scale tag
  local images=()
  case " $IMAGES " in *" $2 "*) images=(--save-images "$R/samples_$3.png");; esac
  s4s eval --solver "$1" --guidance "$2" --num-samples "$N" --device "$DEVICE" --json "${images[@]}" \
    > "$R/eval_$3.json" 2> "$R/eval_$3.log"
  log "eval $3 exit $?"
}
single() {  # scale
  # shellcheck disable=SC2086
  s4s learn --guidance "$1" --nfe "$NFE" --device "$DEVICE" $LEARN_ARGS --out "$R/single_w$1.json" \
    --run-dir "$W/run_single_w$1" --json > "$R/learn_single_w$1.json" 2> "$R/learn_single_w$1.log"
  local rc=$?; log "learn single w$1 exit $rc"
  [ $rc = 0 ] && evaluate "$R/single_w$1.json" "$1" "single_w$1"
}
family() {  # tag extra-flags...
  local tag=$1; shift
  # shellcheck disable=SC2086
  s4s learn --guidance "$RANGE" --nfe "$NFE" --device "$DEVICE" $LEARN_ARGS "$@" --out "$R/$tag.json" \
    --run-dir "$W/run_$tag" --json > "$R/learn_$tag.json" 2> "$R/learn_$tag.log"
  local rc=$?; log "learn $tag exit $rc"
  [ $rc = 0 ] || return
  for w in $SCALES; do evaluate "$R/$tag.json" "$w" "${tag}_w$w"; done
}
hand_designed() {  # scale
  # shellcheck disable=SC2086
  bounded $PY benchmarks/best_hand_designed.py --guidance "$1" --nfe "$NFE" --screen-samples "$SCREEN_N" \
    --num-samples "$N" --top "$TOP" --device "$DEVICE" $BASELINE_ARGS --out "$R/baselines" > "$R/baselines_w$1.log" 2>&1
  log "hand-designed w$1 exit $?"
}

log "device $DEVICE; $( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) || echo no GPU); budget ${BUDGET_S}s"
family family &
# shellcheck disable=SC2086
[ -n "$FAMILY2_ARGS" ] && family family2 $FAMILY2_ARGS &
for w in $SCALES; do single "$w" & done
for w in $SCALES; do hand_designed "$w" & done
wait
log "done"
rm -f "$R"/*.pt
tar -czf "$OUT/guidance.tar.gz" -C "$W" results
ls -la "$OUT"
