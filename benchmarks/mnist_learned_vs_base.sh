#!/usr/bin/env bash
# Learned vs base solver on a bundled MNIST model, one process at a time, 10k samples per cell.
#
#   benchmarks/mnist_learned_vs_base.sh OUT_DIR NFE [NFE ...]
#
# For every NFE: `s4s learn` S4S and S4S-Alt (default preset), then `s4s eval` of the base solver the
# learner started from (on its grid), of S4S and of S4S-Alt, each with --json into OUT_DIR; finally
# `s4s bench-report` merges everything into OUT_DIR/bench.md, results.json and fd_vs_nfe.png.
# Environment: S4S (the s4s command, default .venv/bin/s4s), MODEL (a model folder; default the
# bundled eps UNet), DEVICE (default cpu), SAMPLES (default 10000), LEARN_ARGS (extra learn flags).
# Learning and evaluation time and peak memory go to OUT_DIR/*.err (GNU time -v when present).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR NFE [NFE ...]}; shift
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR NFE [NFE ...]" >&2; exit 2; }
S4S=${S4S:-.venv/bin/s4s}
DEVICE=${DEVICE:-cpu}
SAMPLES=${SAMPLES:-10000}
model_args=()
[ -n "${MODEL:-}" ] && model_args=(--model "$MODEL")
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
mkdir -p "$out"

evaluate() {  # NAME SOLVER [eval flags]
  local name=$1; shift
  "${timer[@]}" "$S4S" eval "${model_args[@]}" --solver "$@" --num-samples "$SAMPLES" --device "$DEVICE" \
    --json > "$out/eval_$name.json" 2> "$out/eval_$name.err"
  echo "$name: FD $(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['fd'], 2))" "$out/eval_$name.json")"
}

files=()
for nfe in "$@"; do
  for method in s4s s4s-alt; do
    # shellcheck disable=SC2086
    "${timer[@]}" "$S4S" learn "${model_args[@]}" --nfe "$nfe" --method "$method" --device "$DEVICE" --force \
      --out "$out/$method-nfe$nfe.json" ${LEARN_ARGS:-} > "$out/learn_$method-nfe$nfe.out" 2> "$out/learn_$method-nfe$nfe.err"
    tail -n 2 "$out/learn_$method-nfe$nfe.out"
  done
  read -r base grid < <(python3 -c "import json,sys; m = json.load(open(sys.argv[1]))['metadata']; print(m['base'], m['grid_init'])" \
    "$out/s4s-nfe$nfe.json")
  evaluate "base-nfe$nfe" "$base" --nfe "$nfe" --grid "$grid"
  evaluate "s4s-nfe$nfe" "$out/s4s-nfe$nfe.json"
  evaluate "s4s-alt-nfe$nfe" "$out/s4s-alt-nfe$nfe.json"
  files+=("$out/eval_base-nfe$nfe.json" "$out/eval_s4s-nfe$nfe.json" "$out/eval_s4s-alt-nfe$nfe.json")
done
"$S4S" bench-report "${files[@]}" --out "$out" --title "Learned vs base solver, $SAMPLES samples, $DEVICE" > /dev/null
echo "wrote $out/bench.md"
