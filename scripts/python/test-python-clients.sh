#!/usr/bin/env bash
# The Python clients against `ember serve` (run by scripts/test.sh after cargo test): the
# openai package's embeddings.create and requests against /embed and /rerank, on loopback.
# Usage: scripts/python/test-python-clients.sh [EMBER_BINARY]   (default target/debug/ember)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
ember=${1:-target/debug/ember}
[[ -x $ember ]] || { echo "error: $ember not built (cargo build first)" >&2; exit 1; }
python=$(scripts/python/install-python-clients.sh)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `ember serve` on a free port; sets $url once it listens. (Not in a $(...): the
# server would hold the substitution's pipe open.)
start() {
  local log=$1; shift
  "$ember" serve --port 0 --threads 2 "$@" >/dev/null 2>"$log" &
  pids+=($!)
  for _ in $(seq 1 600); do
    if grep -q "listening on" "$log"; then
      url=$(sed -n 's/^ember: listening on //p' "$log" | head -1)
      return
    fi
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: ember serve did not start" >&2; cat "$log" >&2; exit 1
}

model=.cache/models/all-MiniLM-L6-v2
printf '%s\n' "What is Deep Learning?" "The food was delicious and the waiter..." > "$work/texts.txt"
"$ember" encode --model "$model" --input "$work/texts.txt" --output "$work/expected.npy" --quiet
start "$work/embed.log" --model "$model" --api-key sesame
embed_url=$url
start "$work/rerank.log" --model fixtures/tiny-bert-rerank-f32
rerank_url=$url
EMBED_URL=$embed_url RERANK_URL=$rerank_url EXPECTED="$work/expected.npy" \
  "$python" tests/python/clients_test.py
