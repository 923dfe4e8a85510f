#!/usr/bin/env bash
# Two builds of the encode bench (`cargo bench --bench encode --no-run`, each
# target/release/deps/encode-* binary copied aside) taking turns on the same texts, ROUNDS
# times, the order swapped every round; prints each round's tokens/s ratio NEW / OLD, then the
# median (the loop is alternate-lib.sh's).
#
#   scripts/bench/alternate-encode.sh ROUNDS OLD NEW -- ENCODE-ARGS...
#
# ENCODE-ARGS are the bench's own (--model DIR --corpus FILE --threads N --dtype f32|bf16|int8
# ...). Benchmarks run at nice -10 (root) where allowed.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  sed -n 2,10p "$0"
  exit 2
fi
rounds=$1 old=$2 new=$3
shift 4
source "$(dirname "$0")/alternate-lib.sh"
tokens_per_s() {
  "${priority[@]}" "$1" "${@:2}" 2>/dev/null | last_tokens_per_s
}
alternate "$rounds" "$old" "$new" tokens_per_s tokens/s higher "$@"
