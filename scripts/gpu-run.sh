#!/usr/bin/env bash
# Run on the GPU machine, from the bundle that scripts/gpu-check.sh made (no Rust, no network
# needed; Python with torch and transformers, and an NVIDIA driver):
#   1. every GPU test (tests/gpu.rs) in checked mode: outputs poisoned with NaN, each launch synced;
#   2. `ember encode --device cuda` on the fixture texts (the CLI path end to end);
#   3. the GEMM table: ember's linear (sm90 on Hopper, and sm80) vs torch.matmul on BERT shapes
#      (gpu_bench.py --gemm, about a minute and a half);
#   4. ember vs PyTorch fp16 sdpa on bge-small/base/large-shaped random models (gpu_bench.py).
# Results go to RESULTS_DIR (default: results/ beside this script); the tables printed last are
# also in RESULTS_DIR/benchmarks.md, ready for BENCHMARKS.md. Exit status 0 only if all passed.
# EMBER_GPU_STEPS=tests,gemm (any of tests, cli, gemm, models; default all) runs only those, to
# fit a short device slot: e.g. the kernel tests and the GEMM table first, the models next.
# From a session with the device tool, after scripts/gpu-check.sh:
#   run(command='bash gpu-bundle/gpu-run.sh "$OUT/gpu"', carry=['gpu-bundle'], timeout_s=540)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${1:-$here/results}"
mkdir -p "$out"
status=0
# The binaries travel xz-compressed; unpack them (Python's lzma: no xz tool needed) into a
# scratch folder, so that RESULTS_DIR holds only logs and tables.
bin=$(mktemp -d "${TMPDIR:-/tmp}/ember-gpu-bin.XXXXXX")
trap 'rm -rf "$bin"' EXIT
for packed in "$here"/bin/*.xz; do
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
        "$packed" "$bin/$(basename "$packed" .xz)"
done
chmod +x "$bin"/*
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
steps=",${EMBER_GPU_STEPS:-tests,cli,gemm,models},"
step() { [[ "$steps" == *",$1,"* ]]; }
tests_rc=skipped

if step tests; then
echo "== 1. GPU tests"
export EMBER_FIXTURES="$here/fixtures" EMBER_TEST_MODEL="$here/minilm"
# One process per group: a trap (a hung barrier caught by the sm90 GEMM's watchdog, a fault)
# leaves its process's CUDA context unusable, so the sm90 GEMM, not yet proven on hardware, runs
# apart: first every other test on the portable GEMM, then the sm90 GEMM tests, then the models
# again through the GEMM the device picks (sm90 on Hopper).
run_tests() { # LOG [FILTER ARGS...]
    local log="$out/$1"
    shift
    EMBER_REQUIRE_GPU=1 EMBER_CUDA_CHECKED=1 timeout 300 "$bin/gpu-tests" --test-threads=1 --nocapture "$@" > "$log" 2>&1
    local rc=$?
    grep -E "^test |test result|worst cosine|cosine|^gemm_sm90|panicked|error" "$log" | tail -40
    [ $rc -eq 0 ] || { echo "GPU tests FAILED (exit $rc): see $log"; status=1; tests_rc=1; }
}
tests_rc=0
EMBER_GEMM=sm80 run_tests gpu-tests.log --skip gemm_sm90
run_tests gpu-tests-sm90.log gemm_sm90
run_tests gpu-tests-models.log _cpu
# Faults: each fault runs in a child process of this binary (a trap leaves its context unusable).
EMBER_REQUIRE_GPU=1 timeout 120 "$bin/gpu-faults" --test-threads=1 > "$out/gpu-faults.log" 2>&1
faults_rc=$?
grep -E "^test |test result|panicked" "$out/gpu-faults.log" | tail -12
[ $faults_rc -eq 0 ] || { echo "GPU fault tests FAILED (exit $faults_rc): see $out/gpu-faults.log"; status=1; tests_rc=1; }
fi

if step cli; then
echo "== 2. ember encode --device cuda"
python3 -c "import json,sys; [print(t.replace('\n',' ')) for t in json.load(open(sys.argv[1]))]" \
    "$here/fixtures/texts.json" > "$out/texts.txt"
if timeout 60 "$bin/ember" encode --model "$here/minilm" --input "$out/texts.txt" --output "$out/cli-cuda.npy" --device cuda \
    && timeout 60 "$bin/ember" encode --model "$here/minilm" --input "$out/texts.txt" --output "$out/cli-cpu.npy" --quiet; then
    python3 - "$out/cli-cuda.npy" "$out/cli-cpu.npy" <<'PY' || status=1
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(f"CLI: {a.shape[0]} texts, worst cosine cuda vs cpu {cos.min():.6f}")
sys.exit(0 if cos.min() >= 0.9995 else 1)
PY
else
    echo "ember encode --device cuda FAILED"
    status=1
fi
fi

if step gemm; then
echo "== 3. GEMM: ember vs torch.matmul (cuBLAS)"
timeout 200 python3 "$here/gpu_bench.py" --gemm --ember-bench "$bin/gpu-bench" --out "$out/gemm" 2>&1 | tee "$out/gemm.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GEMM table FAILED (an error over 2e-3, or a shape that failed): see $out/gemm.log"; status=1; }
fi

if step models; then
echo "== 4. ember vs PyTorch"
timeout 360 python3 "$here/gpu_bench.py" --ember-bench "$bin/gpu-bench" --out "$out/bench" 2>&1 | tee "$out/bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "benchmark FAILED or below the cosine bar: see $out/bench.log"; status=1; }
# The saved random models (GBs), embeddings and ids; the logs and the table stay.
rm -rf "$out"/bench/bge-*/ "$out"/bench/*.npy "$out"/bench/ids*.json "$out"/*.npy 2>/dev/null
fi
: > "$out/benchmarks.md"
for table in "$out/gemm/benchmarks.md" "$out/bench/benchmarks.md"; do
    [ -f "$table" ] && { cat "$table"; echo; } >> "$out/benchmarks.md"
done

echo
echo "== summary ($(cat "$out/gpu.txt"))"
echo "GPU tests: $(case $tests_rc in 0) echo passed ;; skipped) echo skipped ;; *) echo FAILED ;; esac)"
[ -s "$out/benchmarks.md" ] && cat "$out/benchmarks.md"
exit $status
