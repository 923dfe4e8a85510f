#!/usr/bin/env bash
# ember's CPU path against the two engines a user would otherwise pick, on all-MiniLM-L6-v2:
# PyTorch fp32 through sentence-transformers (scripts/bench_torch.py) and ONNX Runtime fp32 on the
# transformer-optimized graph (scripts/bench_ort.py). Same corpus (scripts/bench_corpus.py), same
# thread count, same run; every engine is timed on encode only (model loaded, warmed up). The
# engines take turns, one timed pass each per round, for EMBER_COMPARE_ROUNDS rounds (default 3),
# and each engine's median pass is kept: on a shared machine the load drifts, and turns spread
# that drift over every engine instead of favouring whichever ran in the quiet minute. ember runs
# in f32 and, where the CPU has AVX512-BF16, in bf16. Prints a ratio table for BENCHMARKS.md.
# Not run in CI (it needs torch and onnxruntime).
#
#   scripts/compare-cpu.sh [LINES]          (default 1024 lines, log-normal lengths, median 40 words)
#
# Environment: EMBER_THREADS (default: every core), EMBER_TEST_MODEL (default
# .cache/models/all-MiniLM-L6-v2, fetched when absent), EMBER_COMPARE_VENV: the throwaway Python
# environment (default .cache/compare-venv), created with pip's default index when absent and
# left in place for the next run (delete the folder to drop it).
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1024}
threads=${EMBER_THREADS:-$(nproc)}
rounds=${EMBER_COMPARE_ROUNDS:-3}
venv=${EMBER_COMPARE_VENV:-.cache/compare-venv}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
work=.cache/bench
mkdir -p "$work"

EMBER_TEST_MODEL=$model scripts/fetch-test-model.sh >/dev/null
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch sentence-transformers onnxruntime onnx
fi
cargo bench --quiet --bench encode --no-run 2>/dev/null
python3 scripts/bench_corpus.py "$work/corpus.txt" --lines "$lines"

results=$work/compare-results.jsonl
: >"$results"
run() { # NAME COMMAND...: one timed pass of one engine, its JSON line appended to $results
  local name=$1 out
  shift
  if out=$("$@" 2>"$work/$name.log" | tail -1) && [[ $out == \{* ]]; then
    echo "$out" >>"$results"
  else
    echo "skipped: $name (see $work/$name.log)" >&2
  fi
}
ember_bench() { cargo bench --quiet --bench encode -- --model "$model" --corpus "$work/corpus.txt" --threads "$threads" --repeat 1 "$@"; }
has_bf16=$(grep -c avx512_bf16 /proc/cpuinfo 2>/dev/null || true)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  run ember-f32 ember_bench --dtype f32
  if [[ $has_bf16 != 0 ]]; then
    run ember-bf16 ember_bench --dtype bf16
  fi
  run torch "$venv/bin/python" scripts/bench_torch.py "$model" "$work/corpus.txt" --threads "$threads" --repeat 1
  run ort "$venv/bin/python" scripts/bench_ort.py "$model" "$work/corpus.txt" --threads "$threads" --work "$work" --repeat 1
done

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo
echo "all-MiniLM-L6-v2, $lines lines, $threads threads, $cpu, $(date -u +%F), encode only, median of $rounds interleaved rounds"
python3 scripts/compare_table.py <"$results"
