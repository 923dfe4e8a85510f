#!/usr/bin/env bash
# The load test of `ember serve` (BENCHMARKS.md): bounded in time and count, loopback only.
#
#   1. `ember encode` of the corpus, the throughput a server is measured against, taking turns
#      with 2. (EMBER_SERVE_ROUNDS rounds, default 3; the medians are compared);
#   2. ember serve under 64 closed-loop clients for 30 s, requests of 1 to 64 texts
#      (log-normal, median 6) drawn from the same corpus (examples/serve_load.rs): saturated;
#   2b. the same 64 clients open-loop at half the request rate that 2 answered: below
#      saturation, where latency is a request's own and nothing may fail;
#   3. 4x that load (256 clients) against a server that admits 64 requests at once: the rest
#      must be 429, nothing else, and memory must stay bounded;
#   4. the same as 2 against infinity-emb (.cache/venv-infinity, torch on the CPU), when it is
#      installed there (pip install "infinity-emb[server,torch]"); otherwise it says so.
#
# usage: scripts/bench/bench-serve.sh [SECONDS] [MODEL]     results in .cache/bench/serve/
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
seconds=${1:-30}
model=${2:-.cache/models/all-MiniLM-L6-v2}
out=.cache/bench/serve
mkdir -p "$out"
nice -n 15 cargo build --release --quiet --bin ember --example serve_load
ember=target/release/ember
load=target/release/examples/serve_load
python3 scripts/bench/bench_corpus.py "$out/corpus.txt" --lines 4096 --seed 11

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# ember serve with the given flags on a free port: sets $url and $pid.
serve() {
  local log=$out/serve-$1.log; shift
  # Requests carry up to 64 texts: the client batch limit is raised from TEI's 32 to that.
  "$ember" serve --model "$model" --port 0 --auto-truncate --max-client-batch-size 64 "$@" >/dev/null 2>"$log" &
  pid=$!; pids+=("$pid")
  for _ in $(seq 1 600); do
    url=$(sed -n 's/^ember: listening on //p' "$log" | head -1)
    [[ -n $url ]] && return
    kill -0 "$pid" || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "ember serve did not start" >&2; exit 1
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

echo "== lscpu: $(lscpu | sed -n 's/^Model name: *//p'), family $(lscpu | sed -n 's/^CPU family: *//p') model $(lscpu | sed -n 's/^Model: *//p'), $(nproc) cores; $(date -u +%F)"
# `ember encode` and the saturated server take turns, EMBER_SERVE_ROUNDS times (default 3): one
# pass of either moves by about 10 % from one minute to the next on a shared 2-core machine, and
# the medians of interleaved runs are what the fraction compares.
rounds=${EMBER_SERVE_ROUNDS:-3}
: >"$out/encode.txt"
rm -f "$out"/ember-64-round*.json
for round in $(seq "$rounds"); do
  echo "== round $round of $rounds: ember encode (the reference), then ember serve, 64 clients, ${seconds} s"
  "$ember" encode --model "$model" --input "$out/corpus.txt" --output "$out/encode.npy" 2>&1 | tail -1 | tee -a "$out/encode.txt"
  serve normal
  "$load" --url "$url" --corpus "$out/corpus.txt" --clients 64 --seconds "$seconds" --pid "$pid" | tee "$out/ember-64-round$round.json"
  stop "$pid"
done
cp "$out/ember-64-round$rounds.json" "$out/ember-64.json"
python3 - "$out/encode.txt" "$out"/ember-64-round*.json <<'PY'
import json, re, statistics, sys
encode = [float(m) for m in re.findall(r"([0-9.]+) tokens/s", open(sys.argv[1]).read())]
served = [json.load(open(path))["tokens_per_s"] for path in sys.argv[2:]]
print(f"== serve at 64 clients: median {statistics.median(served):.0f} tokens/s = "
      f"{100 * statistics.median(served) / statistics.median(encode):.1f} % of ember encode's median "
      f"{statistics.median(encode):.0f} (serve {', '.join(f'{r:.0f}' for r in served)}; "
      f"encode {', '.join(f'{r:.0f}' for r in encode)})")
PY

rate=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(0.5 * r["answered"] / r["seconds"], 3))' "$out/ember-64.json")
echo "== ember serve, below saturation: 64 clients open-loop at $rate requests/s (half of the above), ${seconds} s"
serve below
"$load" --url "$url" --corpus "$out/corpus.txt" --clients 64 --rate "$rate" --seconds "$seconds" --pid "$pid" | tee "$out/ember-64-half.json"
stop "$pid"

echo "== ember serve, 4x: 256 clients against --max-concurrent-requests 64, ${seconds} s"
serve overload --max-concurrent-requests 64
"$load" --url "$url" --corpus "$out/corpus.txt" --clients 256 --seconds "$seconds" --pid "$pid" | tee "$out/ember-256.json"
curl -s -o /dev/null -w "after the overload: /health %{http_code}\n" "$url/health"
stop "$pid"

infinity=.cache/venv-infinity/bin/infinity_emb
if [[ -x $infinity ]]; then
  echo "== infinity-emb ($(.cache/venv-infinity/bin/pip show infinity-emb | sed -n 's/^Version: //p'), torch CPU), 64 clients, ${seconds} s"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$infinity" v2 --model-id "$model" --served-model-name all-MiniLM-L6-v2 --port "$port" --host 127.0.0.1 \
    --engine torch --device cpu >"$out/infinity.log" 2>&1 &
  pid=$!; pids+=("$pid")
  for _ in $(seq 1 1200); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 "$pid" || { tail -20 "$out/infinity.log" >&2; exit 1; }
    sleep 0.25
  done
  "$load" --url "http://127.0.0.1:$port" --path /embeddings --corpus "$out/corpus.txt" --clients 64 \
    --seconds "$seconds" --pid "$pid" | tee "$out/infinity-64.json"
  stop "$pid"
else
  echo "== infinity-emb: not installed in .cache/venv-infinity (pip install \"infinity-emb[server,torch]\" there to compare)"
fi
