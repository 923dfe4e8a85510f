#!/usr/bin/env bash
# Two builds of the `ember` binary taking turns at `ember encode` on the same input, ROUNDS
# times, the order swapped every round; prints each round's wall times and speed ratio
# (old time / new time), then the median. Unlike scripts/bench/alternate-encode.sh (the encode
# bench, which runs inside `pool.install`), this times the CLI a user runs: model loading,
# the streaming pipeline and its threads included.
#
#   scripts/bench/alternate-cli.sh ROUNDS OLD NEW -- ENCODE-ARGS...
#
# ENCODE-ARGS are `ember encode`'s own (--model DIR --input FILE --output FILE --dtype ...
# --threads N). Runs at nice -10 (root) where allowed.
set -euo pipefail
if [ $# -lt 4 ] || [ "$4" != "--" ]; then
  sed -n 2,11p "$0"
  exit 2
fi
rounds=$1 old=$2 new=$3
shift 4
source "$(dirname "$0")/alternate-lib.sh"
seconds() {
  local start end
  start=$(date +%s.%N)
  "${priority[@]}" "$1" encode "${@:2}" >/dev/null 2>&1
  end=$(date +%s.%N)
  python3 -c "print(f'{$end - $start:.3f}')"
}
alternate "$rounds" "$old" "$new" seconds s lower "$@"
