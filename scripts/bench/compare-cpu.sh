#!/usr/bin/env bash
# ember's CPU path against the engines a user would otherwise pick: PyTorch through
# sentence-transformers in fp32 and in bf16 (torch.autocast, oneDNN, AMX where present;
# scripts/bench/bench_torch.py), ONNX Runtime on the transformer-optimized graph in fp32 and int8
# (dynamic quantization, as fastembed and infinity ship; scripts/bench/bench_ort.py). Same corpus
# (scripts/bench/bench_corpus.py), same thread count, same max length, same run; every engine is timed
# on encode only (model loaded, warmed up). The engines take turns, one timed pass each per round,
# for EMBER_COMPARE_ROUNDS rounds (default 3), and each engine's median pass is kept: on a shared
# machine the load drifts, and turns spread that drift over every engine instead of favouring
# whichever ran in the quiet minute. ember runs in f32, where the CPU has AVX512-BF16 or AMX in
# bf16, and where it has AVX512-VNNI in int8. Prints a ratio table for BENCHMARKS.md, headed by the CPU model.
# Not run in CI (it needs torch and onnxruntime).
#
#   scripts/bench/compare-cpu.sh [LINES]          (default 1024 lines, log-normal lengths, median 40 words)
#
# Environment: EMBER_THREADS (default: every core), EMBER_MAX_LENGTH (default 512: longer texts
# are truncated there by every engine), EMBER_TEST_MODEL (default .cache/models/all-MiniLM-L6-v2,
# fetched when absent; EMBER_TEST_MODEL=bge-base makes and uses a random bge-base-shaped model,
# scripts/bench/make_random_bert.py), EMBER_COMPARE_VENV: the throwaway Python environment (default
# .cache/compare-venv), created with pip's default index when absent and left in place for the
# next run (delete the folder to drop it).
set -euo pipefail
cd "$(dirname "$0")/../.."
lines=${1:-1024}
threads=${EMBER_THREADS:-$(nproc)}
rounds=${EMBER_COMPARE_ROUNDS:-3}
max_length=${EMBER_MAX_LENGTH:-512}
venv=${EMBER_COMPARE_VENV:-.cache/compare-venv}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
work=.cache/bench
mkdir -p "$work"

minilm=.cache/models/all-MiniLM-L6-v2
EMBER_TEST_MODEL=$minilm scripts/fetch-test-model.sh >/dev/null
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r scripts/bench/requirements.txt
fi
if [[ $model == bge-base ]]; then
  model=.cache/models/bge-base-random
  "$venv/bin/python" scripts/bench/make_random_bert.py "$model" --shape bge-base --tokenizer-from "$minilm"
fi
cargo bench --quiet --bench encode --no-run 2>/dev/null
python3 scripts/bench/bench_corpus.py "$work/corpus.txt" --lines "$lines"

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
common=(--threads "$threads" --repeat 1 --max-length "$max_length")
ember_bench() { cargo bench --quiet --bench encode -- --model "$model" --corpus "$work/corpus.txt" "${common[@]}" "$@"; }
torch_bench() { "$venv/bin/python" scripts/bench/bench_torch.py "$model" "$work/corpus.txt" "${common[@]}" "$@"; }
ort_bench() { "$venv/bin/python" scripts/bench/bench_ort.py "$model" "$work/corpus.txt" "${common[@]}" --work "$work" "$@"; }
has_bf16=$(grep -c avx512_bf16 /proc/cpuinfo 2>/dev/null || true)
has_vnni=$(grep -c avx512_vnni /proc/cpuinfo 2>/dev/null || true)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  run ember-f32 ember_bench --dtype f32
  if [[ $has_bf16 != 0 ]]; then
    run ember-bf16 ember_bench --dtype bf16
  fi
  if [[ $has_vnni != 0 ]]; then
    run ember-int8 ember_bench --dtype int8
  fi
  run torch-fp32 torch_bench --dtype fp32
  run torch-bf16 torch_bench --dtype bf16
  run ort-fp32 ort_bench --quantize none
  run ort-int8 ort_bench --quantize int8
done

# The marketing name alone ("AMD EPYC" in a VM) does not tell a Zen 4 from a Zen 5: add the
# family and model numbers.
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1), family $(lscpu | sed -n 's/^CPU family: *//p' | head -1) model $(lscpu | sed -n 's/^Model: *//p' | head -1)"
flags=$(grep -o -w -E 'amx_bf16|amx_int8|avx512_bf16|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ' | sed 's/ $//')
echo
echo "$(basename "$model"), $lines lines truncated at $max_length, $threads threads, $cpu ($flags), $(date -u +%F), encode only, median of $rounds interleaved rounds"
python3 scripts/bench/compare_table.py <"$results"
