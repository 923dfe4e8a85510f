#!/usr/bin/env bash
# The pipeline figures of BENCHMARKS.md, from one run on one machine:
#   1. `ember encode` end to end against the bare forward pass on the same batches (ember bench,
#      all-MiniLM-L6-v2, the rounds alternated so that machine noise hits both alike);
#   2. ember against PyTorch fp32 (sentence-transformers) on the same corpus (scripts/bench/bench-cpu.sh);
#   3. peak RSS (VmHWM via /usr/bin/time -v) of `ember encode` at 100k and 1M lines, on the tiny
#      fixture model (MiniLM would take hours for 1M lines on 2 cores; memory is bounded by the
#      window and the channels, not by the model's speed).
#
#   scripts/bench/bench-pipeline.sh [LINES]      (default 1024 lines for 1 and 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
lines=${1:-1024}
model=${EMBER_TEST_MODEL:-.cache/models/all-MiniLM-L6-v2}
work=.cache/bench
mkdir -p "$work"
cargo build --release --quiet
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(date -u '+%F %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== 1. end to end vs bare forward (ember bench, $lines lines of scripts/bench/bench_corpus.py)"
python3 scripts/bench/bench_corpus.py "$work/corpus.txt" --lines "$lines"
target/release/ember bench --model "$model" --corpus "$work/corpus.txt" --repeat "${EMBER_BENCH_REPEAT:-4}"

echo "== 2. ember vs PyTorch on the same corpus"
scripts/bench/bench-cpu.sh "$lines" | tail -4

echo "== 3. peak RSS, tiny fixture model, log-normal lines of median 10 words"
python3 scripts/bench/bench_corpus.py "$work/rss-1m.txt" --lines 1000000 --median-words 10
head -n 100000 "$work/rss-1m.txt" >"$work/rss-100k.txt"
printf '| lines | seconds | peak RSS (MiB) |\n| ---: | ---: | ---: |\n'
for n in 100k 1m; do
  rm -f "$work/rss.npy" "$work/rss.npy.partial" "$work/rss.npy.journal"
  /usr/bin/time -v target/release/ember encode --model fixtures/tiny-bert-embed-f32 \
    --input "$work/rss-$n.txt" --output "$work/rss.npy" 2>"$work/rss-$n.log" >/dev/null
  kib=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/rss-$n.log")
  secs=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/rss-$n.log")
  printf '| %s | %s | %.1f |\n' "$n" "$secs" "$(echo "$kib / 1024" | bc -l)"
  grep '^ember:' "$work/rss-$n.log" || true
done
