# Sourced by the alternate-*.sh and pair-encode.sh scripts: the priority they run benchmarks at,
# the loop that has two builds take turns, and the arithmetic of their rounds.

# nice -10 where allowed (root), else nothing.
priority=(nice -n -10)
"${priority[@]}" true 2>/dev/null || priority=()

# alternate ROUNDS OLD NEW MEASURE UNIT FASTER ARGS...
#
# Runs `MEASURE BINARY ARGS...` (a function that prints one number in UNIT) for OLD and NEW,
# ROUNDS times, the order swapped every round; prints each round's figures and the speed of
# NEW over OLD, then the median. FASTER is `higher` (tokens/s) or `lower` (seconds). On a
# shared VM the machine's speed drifts by 10-25 % over minutes; runs taken side by side cancel
# most of the drift, so their ratio is what a change can be judged by.
alternate() {
  local rounds=$1 old=$2 new=$3 measure=$4 unit=$5 faster=$6
  shift 6
  local ratios=() round a b ratio
  for round in $(seq "$rounds"); do
    if ((round % 2)); then
      b=$("$measure" "$new" "$@")
      a=$("$measure" "$old" "$@")
    else
      a=$("$measure" "$old" "$@")
      b=$("$measure" "$new" "$@")
    fi
    if [ "$faster" = higher ]; then
      ratio=$(quotient "$b" "$a")
    else
      ratio=$(quotient "$a" "$b")
    fi
    echo "round $round: old $a $unit, new $b $unit, speed new/old $ratio"
    ratios+=("$ratio")
  done
  median_speed "${ratios[@]}"
}

# quotient X Y: X / Y to three decimals.
quotient() {
  python3 -c "print(f'{$1 / $2:.3f}')"
}

# last_tokens_per_s: the tokens_per_s of the encode bench's report, the last line of stdin.
last_tokens_per_s() {
  tail -1 | python3 -c 'import json, sys; print(round(json.loads(sys.stdin.read())["tokens_per_s"]))'
}

# median_speed RATIO...: the median of the rounds' speeds new/old, and their spread.
median_speed() {
  printf '%s\n' "$@" | sort -n | python3 -c '
import statistics, sys
values = [float(line) for line in sys.stdin]
print(f"median speed new/old over {len(values)} rounds: {statistics.median(values):.3f} (spread {values[0]:.3f}-{values[-1]:.3f})")'
}
