#!/usr/bin/env bash
# CPU throughput of `ember encode` on the real all-MiniLM-L6-v2 next to PyTorch fp32
# (sentence-transformers) on the same corpus, same machine, same threads, same run.
# Not run in CI: it needs torch. Prints a table for BENCHMARKS.md.
#
#   scripts/bench/bench-cpu.sh [LINES]        (default 1024 lines, log-normal lengths, median 40 words)
#
# Python packages come from $EMBER_BENCH_VENV (default .cache/bench-venv), created when absent.
set -euo pipefail
cd "$(dirname "$0")/../.."
lines=${1:-1024}
threads=${EMBER_THREADS:-$(nproc)}
venv=${EMBER_BENCH_VENV:-.cache/bench-venv}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
work=.cache/bench
mkdir -p "$work"

scripts/fetch-test-model.sh >/dev/null
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r scripts/bench/requirements.txt
fi
cargo build --release --quiet
python3 scripts/bench/bench_corpus.py "$work/corpus.txt" --lines "$lines"

# ember: the whole command (model load, tokenization, forward, .npy write), median of 3 runs.
ember_runs=()
for _ in 1 2 3; do
  start=$(date +%s.%N)
  RAYON_NUM_THREADS=$threads target/release/ember encode --model "$model" --input "$work/corpus.txt" \
    --output "$work/ember.npy" 2>"$work/ember.log"
  end=$(date +%s.%N)
  ember_runs+=("$(echo "$end - $start" | bc -l)")
done
ember_seconds=$(printf '%s\n' "${ember_runs[@]}" | sort -g | sed -n 2p)
ember_tokens=$(sed -n 's/.* \([0-9]*\) tokens,.*/\1/p' "$work/ember.log")

torch_json=$("$venv/bin/python" scripts/bench/bench_torch.py "$model" "$work/corpus.txt" --threads "$threads" 2>"$work/torch.log")
torch_tokens=$(echo "$torch_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])')
torch_seconds=$(echo "$torch_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
torch_name=$(echo "$torch_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["engine"])')
[[ $ember_tokens == "$torch_tokens" ]] || echo "warning: token counts differ: ember $ember_tokens, torch $torch_tokens" >&2

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
ember_tps=$(echo "$ember_tokens / $ember_seconds" | bc -l)
torch_tps=$(echo "$torch_tokens / $torch_seconds" | bc -l)
echo
echo "all-MiniLM-L6-v2, $lines lines ($ember_tokens tokens), $threads threads, $cpu, $(date -u +%F)"
printf '| engine | seconds | tokens/s | vs PyTorch |\n| --- | ---: | ---: | ---: |\n'
printf '| ember f32 (`ember encode`, end to end incl. load) | %.2f | %.0f | %.2fx |\n' "$ember_seconds" "$ember_tps" "$(echo "$ember_tps / $torch_tps" | bc -l)"
printf '| %s (encode only) | %.2f | %.0f | 1.00x |\n' "$torch_name" "$torch_seconds" "$torch_tps"
