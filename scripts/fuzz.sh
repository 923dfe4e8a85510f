#!/usr/bin/env bash
# Builds ember's fuzz targets (fuzz/) on stable Rust and runs each for a while with libFuzzer.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]   (default: 60 s, every target)
#   scripts/fuzz.sh seeds                               (CI: build, run the committed seeds once)
#
# cargo-fuzz needs a nightly toolchain only for its sanitizers; the coverage instrumentation
# libFuzzer steers by (SanitizerCoverage) is reachable on stable through -Cpasses and
# -Cllvm-args, which is what this script passes. Debug assertions and overflow checks are on,
# so an arithmetic overflow is a crash too. The seeds are in fuzz/corpus/TARGET (they
# are committed; what the fuzzer adds goes to fuzz/work/TARGET, git-ignored); a crash is saved
# in fuzz/artifacts/TARGET and fails the script. The last line per target, with the number of
# executions, goes to fuzz/runs.log for FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors config input tokenize)

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# With an explicit --target, RUSTFLAGS reach only the target code, not build scripts and proc
# macros (which would fail to link without libFuzzer).
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --bins --target "$triple"
status=0
if [ "$seconds" = seeds ]; then
    for target in "${targets[@]}"; do
        ./target/"$triple"/release/"$target" -runs=0 "corpus/$target" 2>&1 | grep -E "^(Done|INFO: seed corpus)" | sed "s/^/$target: /" ||
            { echo "fuzz: $target fails on its committed seeds" >&2; status=1; }
    done
    exit $status
fi
for target in "${targets[@]}"; do
    # New inputs go to the first folder (work/, git-ignored, kept between runs); the committed
    # seeds are read from the second.
    seeds="corpus/$target" grown="work/$target"
    mkdir -p "$seeds" "$grown" "artifacts/$target"
    log=$(mktemp)
    echo "== fuzzing $target for ${seconds}s ($(ls "$seeds" | wc -l) seeds, $(ls "$grown" | wc -l) grown)"
    rc=0
    if ! ./target/"$triple"/release/"$target" "$grown" "$seeds" -max_total_time="$seconds" -rss_limit_mb=4096 \
        -timeout=20 -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED: the crashing input is in fuzz/artifacts/$target/" >&2
        status=1
        rc=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    line="$(date -u +%Y-%m-%dT%H:%MZ) $target ${seconds}s runs=${runs:-?} cov=${cov:-?} corpus=$(ls "$grown" | wc -l) result=$([ $rc -eq 0 ] && echo ok || echo CRASH) commit=$(git rev-parse --short HEAD)"
    echo "$line" | tee -a runs.log
    rm -f "$log"
done
exit $status
