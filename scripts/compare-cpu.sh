#!/usr/bin/env bash
# ember's CPU path against the two engines a user would otherwise pick, on all-MiniLM-L6-v2:
# PyTorch fp32 through sentence-transformers (scripts/bench_torch.py) and ONNX Runtime fp32 on the
# transformer-optimized graph (scripts/bench_ort.py). Same corpus (scripts/bench_corpus.py), same
# thread count, same run; every engine is timed on encode only (model loaded, warmed up), median
# of 3. ember runs in f32 and, where the CPU has AVX512-BF16, in bf16. Prints a ratio table for
# BENCHMARKS.md. Not run in CI (it needs torch and onnxruntime).
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
venv=${EMBER_COMPARE_VENV:-.cache/compare-venv}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
work=.cache/bench
mkdir -p "$work"

EMBER_TEST_MODEL=$model scripts/fetch-test-model.sh >/dev/null
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch sentence-transformers onnxruntime onnx
fi
cargo build --release --quiet --bench encode
python3 scripts/bench_corpus.py "$work/corpus.txt" --lines "$lines"

json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
results=()
run() { # NAME COMMAND...: runs one engine, keeps its JSON line
  local out
  if out=$("$@" 2>"$work/$1.log" | tail -1) && [[ $out == \{* ]]; then
    results+=("$out")
  else
    echo "skipped: $* (see $work/$1.log)" >&2
  fi
}
ember_bench() { cargo bench --quiet --bench encode -- --model "$model" --corpus "$work/corpus.txt" --threads "$threads" "$@"; }
run ember-f32 ember_bench --dtype f32
if grep -q avx512_bf16 /proc/cpuinfo 2>/dev/null; then
  run ember-bf16 ember_bench --dtype bf16
fi
run torch "$venv/bin/python" scripts/bench_torch.py "$model" "$work/corpus.txt" --threads "$threads"
run ort "$venv/bin/python" scripts/bench_ort.py "$model" "$work/corpus.txt" --threads "$threads" --work "$work"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo
echo "all-MiniLM-L6-v2, $lines lines, $threads threads, $cpu, $(date -u +%F), encode only, median of 3"
printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin if line.strip()]
ember = [r for r in rows if r["engine"].startswith("ember")]
peers = [r for r in rows if not r["engine"].startswith("ember")]
if len({r["tokens"] for r in rows}) > 1:
    print("warning: engines counted different token totals:", [r["tokens"] for r in rows], file=sys.stderr)
head = "| engine | tokens | seconds | tokens/s |" + "".join(f" {e[\"engine\"].split(\" (\")[0]} vs it |" for e in ember)
print(head)
print("| --- | ---: | ---: | ---: |" + " ---: |" * len(ember))
for r in ember + peers:
    ratios = "".join(f" {e[\"tokens_per_s\"] / r[\"tokens_per_s\"]:.2f}x |" for e in ember)
    print(f"| {r[\"engine\"]} | {r[\"tokens\"]} | {r[\"seconds\"]:.2f} | {r[\"tokens_per_s\"]:,.0f} |{ratios}")
'
