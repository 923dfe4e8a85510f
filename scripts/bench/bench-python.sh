#!/usr/bin/env bash
# ember's Python package against sentence-transformers itself, and against ember's Rust library on
# the same texts (the cost of the Python layer): ember.SentenceTransformer(MODEL).encode
# (scripts/bench/bench_python.py, the release wheel), SentenceTransformer(MODEL).encode on PyTorch fp32
# (scripts/bench/bench_torch.py) and Embedder::encode (benches/encode.rs), on the log-normal corpus of
# scripts/bench/bench_corpus.py, same threads, the model's own max length. They take turns, one process
# each per round timing the median of EMBER_BENCH_REPEAT passes (default 1) after loading and
# warming up, for EMBER_COMPARE_ROUNDS rounds (default 3); each one's median pass is kept. ember
# runs in f32 and, where the CPU has AVX512-BF16 or AMX, in bf16 (where the Python layer's share
# of the time is largest). Prints the ratio table for BENCHMARKS.md, headed by the CPU model. Not
# run in CI (it needs torch).
#
#   scripts/bench/bench-python.sh [LINES]        (default 4096)
#
# Environment: EMBER_THREADS (default 2), EMBER_TEST_MODEL (default .cache/models/all-MiniLM-L6-v2),
# EMBER_COMPARE_VENV (default .cache/compare-venv, with torch and sentence-transformers, made as
# scripts/bench/compare-cpu.sh makes it), EMBER_PYTHON_VENV (default .cache/python-venv, where the
# release wheel is installed), EMBER_BENCH_DTYPES (e.g. "f32": only these of ember's dtypes).
set -euo pipefail
cd "$(dirname "$0")/../.."
lines=${1:-4096}
threads=${EMBER_THREADS:-2}
rounds=${EMBER_COMPARE_ROUNDS:-3}
repeat=${EMBER_BENCH_REPEAT:-1}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
compare_venv=${EMBER_COMPARE_VENV:-.cache/compare-venv}
python_venv=${EMBER_PYTHON_VENV:-.cache/python-venv}
work=.cache/bench
mkdir -p "$work"

EMBER_TEST_MODEL=$model scripts/fetch-test-model.sh >/dev/null
if [[ ! -x $compare_venv/bin/python ]]; then
  python3 -m venv "$compare_venv"
  "$compare_venv/bin/pip" install --quiet -r scripts/bench/requirements.txt
fi
# The release wheel, as a user builds it, into the Python package's test environment.
scripts/python/python-test.sh -q -k "not interrupt and not gil" >"$work/python-test.log"
cargo bench --quiet --bench encode --no-run 2>/dev/null
python3 scripts/bench/bench_corpus.py "$work/corpus-$lines.txt" --lines "$lines"
corpus=$work/corpus-$lines.txt

results=$work/python-results.jsonl
: >"$results"
run() { # NAME COMMAND...: one process of one engine, its JSON line appended to $results
  local name=$1 out
  shift
  if out=$("$@" 2>"$work/$name.log" | tail -1) && [[ $out == \{* ]]; then
    echo "$out" >>"$results"
  else
    echo "failed: $name (see $work/$name.log)" >&2
    exit 1
  fi
}
if [[ -n ${EMBER_BENCH_DTYPES:-} ]]; then
  read -r -a dtypes <<<"$EMBER_BENCH_DTYPES"
else
  dtypes=(f32)
  if grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo; then dtypes+=(bf16); fi
fi
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for dtype in "${dtypes[@]}"; do
    run "ember-rust-$dtype" cargo bench --quiet --bench encode -- --model "$model" --corpus "$corpus" \
      --threads "$threads" --repeat "$repeat" --dtype "$dtype"
    run "ember-python-$dtype" "$python_venv/bin/python" scripts/bench/bench_python.py "$model" "$corpus" \
      --threads "$threads" --repeat "$repeat" --dtype "$dtype"
  done
  run sentence-transformers "$compare_venv/bin/python" scripts/bench/bench_torch.py "$model" "$corpus" \
    --threads "$threads" --repeat 1
done

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo
echo "$(basename "$model"), $lines lines, the model's max length, $threads threads, $cpu, $(date -u +%F), encode only, median of $rounds interleaved rounds"
python3 scripts/bench/compare_table.py <"$results"
