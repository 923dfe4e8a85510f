#!/usr/bin/env bash
# Two or more builds of the roofline bench (`cargo bench --bench roofline --no-run`, each binary
# copied aside) taking turns, ROUNDS times, and the best GFLOP/s (GOP/s) of each binary per
# kernel and shape over every turn. On a shared VM a single run moves by 10-20 %; the best of
# many alternating runs is what a kernel change can be judged by.
#
#   scripts/bench/alternate-roofline.sh ROUNDS KINDS SHAPES BINARY...
#
# KINDS and SHAPES are the bench's EMBER_BENCH_KINDS (f32,bf16,int8,amx) and EMBER_BENCH_SHAPES
# (minilm, bge-base or MxNxK,...); EMBER_BENCH_RUNS (default 8) runs per turn. Benchmarks run at
# nice -10 (root) where allowed.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n 2,12p "$0"
  exit 2
fi
rounds=$1 kinds=$2 shapes=$3
shift 3
source "$(dirname "$0")/alternate-lib.sh"
for _ in $(seq "$rounds"); do
  for binary in "$@"; do
    EMBER_BENCH_RUNS=${EMBER_BENCH_RUNS:-8} EMBER_BENCH_KINDS=$kinds EMBER_BENCH_SHAPES=$shapes \
      "${priority[@]}" "$binary" 2>&1 |
      awk -v name="$(basename "$binary")" '/^gemm 1 thread/ && !/portable|avx2 / {print name, $4, $5, $6, $7, $8}'
  done
done | awk '{key = $1 " " $2 " " $3 " " $4 " " $5; if ($6 > best[key]) best[key] = $6}
            END {for (k in best) print k, best[k]}' | sort -k3,3 -k4,4 -k5,5 -k1,1
