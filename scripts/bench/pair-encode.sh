#!/usr/bin/env bash
# Two builds of the encode bench (see alternate-encode.sh) run at the same time, one thread
# each, pinned to cores 0 and 1 and swapped between them every round; prints each round's
# tokens/s and the ratio NEW / OLD, then the median.
#
#   scripts/bench/pair-encode.sh ROUNDS OLD NEW -- ENCODE-ARGS...
#
# ENCODE-ARGS are the bench's own, without --threads (each build gets one). Taking turns
# (alternate-encode.sh) leaves each build the minutes the other did not have; on this
# project's shared VMs the speed drifts by 10-40 % between them. Run at once, both builds see
# the same minutes: on a two-core VM, rounds of bge-base f32 spread over 0.97-1.07 here
# against 0.79-1.15 taking turns. Needs two cores; what it compares is one core's speed with
# the other core busy, which is what batches side by side run as.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  sed -n 2,13p "$0"
  exit 2
fi
rounds=$1 old=$2 new=$3
shift 4
source "$(dirname "$0")/alternate-lib.sh"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ratios=()
for round in $(seq "$rounds"); do
  if ((round % 2)); then old_core=0 new_core=1; else old_core=1 new_core=0; fi
  "${priority[@]}" taskset -c "$old_core" "$old" "$@" --threads 1 >"$out/old" 2>/dev/null &
  "${priority[@]}" taskset -c "$new_core" "$new" "$@" --threads 1 >"$out/new" 2>/dev/null &
  wait
  a=$(last_tokens_per_s <"$out/old") b=$(last_tokens_per_s <"$out/new")
  ratio=$(quotient "$b" "$a")
  echo "round $round: old $a tokens/s (core $old_core), new $b tokens/s (core $new_core), speed new/old $ratio"
  ratios+=("$ratio")
done
median_speed "${ratios[@]}"
