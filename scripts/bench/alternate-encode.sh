#!/usr/bin/env bash
# Two builds of the encode bench (`cargo bench --bench encode --no-run`, each
# target/release/deps/encode-* binary copied aside) taking turns on the same texts, ROUNDS
# times, the order swapped every round; prints each round's tokens/s ratio NEW / OLD, then the
# median. On a shared VM the machine's speed drifts by 10-25 % over minutes; runs taken side by
# side cancel most of the drift, so their ratio is what a change can be judged by.
#
#   scripts/bench/alternate-encode.sh ROUNDS OLD NEW -- ENCODE-ARGS...
#
# ENCODE-ARGS are the bench's own (--model DIR --corpus FILE --threads N --dtype f32|bf16|int8
# ...). Benchmarks run at nice -10 (root) where allowed.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  sed -n 2,11p "$0"
  exit 2
fi
rounds=$1 old=$2 new=$3
shift 4
priority=(nice -n -10)
"${priority[@]}" true 2>/dev/null || priority=()
tokens_per_s() {
  "${priority[@]}" "$1" "${@:2}" 2>/dev/null | tail -1 |
    python3 -c 'import json, sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))'
}
ratios=()
for round in $(seq "$rounds"); do
  if ((round % 2)); then
    b=$(tokens_per_s "$new" "$@")
    a=$(tokens_per_s "$old" "$@")
  else
    a=$(tokens_per_s "$old" "$@")
    b=$(tokens_per_s "$new" "$@")
  fi
  ratio=$(python3 -c "print(f'{$b / $a:.3f}')")
  echo "round $round: old $a, new $b tokens/s, new/old $ratio"
  ratios+=("$ratio")
done
printf '%s\n' "${ratios[@]}" | sort -n | python3 -c '
import statistics, sys
values = [float(line) for line in sys.stdin]
print(f"median new/old over {len(values)} rounds: {statistics.median(values):.3f} (spread {values[0]:.3f}-{values[-1]:.3f})")'
