#!/usr/bin/env bash
# Run HERE (a CPU machine with Rust): builds everything a GPU check needs and packs it into
# gpu-bundle/ (git-ignored, under 40 MiB), for a GPU machine that has the driver, Python, PyTorch
# and transformers but no Rust and no network:
#   bin/*.xz        (stripped, xz-compressed; gpu-run.sh unpacks them)
#   bin/ember       the release CLI with the CUDA backend (stripped)
#   bin/gpu-tests   tests/gpu.rs: every kernel against the f64 reference, models against the CPU
#   bin/gpu-faults  tests/gpu_faults.rs: out of memory halves batches, a kernel fault names the kernel
#   bin/gpu-bench   tests/gpu_bench.rs: the ember side of the PyTorch comparison
#   fixtures/       the tiny reference models and texts
#   minilm/         all-MiniLM-L6-v2 in f16 with its vocabulary cut to the test texts' tokens
#                   (scripts/trim_model.py: identical tokens and embeddings on those texts)
#   gpu-run.sh, gpu_bench.py, ptx-report.txt, kernels/ (the sources: with nvcc there, a fix can be
#                   tried without Rust: nvcc --ptx -arch=compute_80 -o ptx/gemm.ptx kernels/gemm.cu,
#                   then EMBER_PTX_DIR=ptx makes the binaries load it instead of the embedded PTX;
#                   the Hopper GEMM: nvcc --ptx -gencode=arch=compute_90a,code=compute_90a
#                   -o ptx/gemm_sm90.ptx kernels/gemm_sm90.cu)
# Then prints how to run it there.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="$PWD/gpu-bundle"
tools=$(scripts/install-cuda-tools.sh)
export EMBER_CUDA_TOOLS="$tools"

echo "== building (release, --features cuda)"
cargo build --release --features cuda --bin ember
test_out=$(cargo test --release --features cuda --test gpu --test gpu_faults --test gpu_bench --no-run 2>&1) || { echo "$test_out"; exit 1; }
echo "$test_out" | tail -3
gpu_tests=$(echo "$test_out" | sed -n 's/.*Executable tests\/gpu\.rs (\(.*\)).*/\1/p')
gpu_bench=$(echo "$test_out" | sed -n 's/.*Executable tests\/gpu_bench\.rs (\(.*\)).*/\1/p')
gpu_faults=$(echo "$test_out" | sed -n 's/.*Executable tests\/gpu_faults\.rs (\(.*\)).*/\1/p')
[ -x "$gpu_tests" ] && [ -x "$gpu_bench" ] && [ -x "$gpu_faults" ] || { echo "gpu-check: test executables not found in cargo's output" >&2; exit 1; }

echo "== checking the PTX"
ptx_dir=$(dirname "$(ls -t target/release/build/ember-*/out/kernels.rs | head -1)")
scripts/check-ptx.sh "$ptx_dir" | tee /tmp/ember-ptx-report.txt

echo "== bundling into $bundle"
rm -rf "$bundle"
mkdir -p "$bundle/bin"
cp target/release/ember "$bundle/bin/ember"
cp "$gpu_tests" "$bundle/bin/gpu-tests"
cp "$gpu_bench" "$bundle/bin/gpu-bench"
cp "$gpu_faults" "$bundle/bin/gpu-faults"
strip "$bundle"/bin/*
xz -T2 -9 "$bundle"/bin/*  # ~4x smaller; gpu-run.sh unpacks them with Python's lzma
cp -r fixtures "$bundle/fixtures"
model="${EMBER_TEST_MODEL:-$PWD/.cache/models/all-MiniLM-L6-v2}"
[ -f "$model/model.safetensors" ] || scripts/fetch-test-model.sh
pydeps="$PWD/.cache/py"
python3 -c "import tokenizers" 2>/dev/null || [ -d "$pydeps/tokenizers" ] ||
    python3 -m pip install --quiet --disable-pip-version-check --target "$pydeps" "tokenizers==0.22.*"
PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/trim_model.py "$model" "$bundle/minilm" fixtures/texts.json fixtures/pairs.json
cp scripts/gpu-run.sh scripts/gpu_bench.py "$bundle/"
cp -r kernels "$bundle/kernels"  # with EMBER_PTX_DIR, a kernel fix can be tried there with nvcc
cp /tmp/ember-ptx-report.txt "$bundle/ptx-report.txt"
git log -1 --format='%H %s' > "$bundle/COMMIT" 2>/dev/null || true

size=$(du -sb "$bundle" | cut -f1)
echo "== gpu-bundle: $((size / 1024 / 1024)) MiB"
du -sh "$bundle"/* | sed 's/^/   /'
if [ "$size" -ge $((40 * 1024 * 1024)) ]; then
    echo "gpu-check: the bundle is over 40 MiB" >&2
    exit 1
fi
cat <<MSG

Copy gpu-bundle/ to the GPU machine and run there, from anywhere:
    bash gpu-bundle/gpu-run.sh            # results in gpu-bundle/results/, table printed last
It runs every GPU test, an 'ember encode --device cuda' smoke test, the GEMM table (ember's
linear against torch.matmul on BERT shapes), then ember against PyTorch fp16 (sdpa) on
bge-small/base/large-shaped random models, in about 6 to 7 minutes. EMBER_GPU_STEPS=tests,gemm
(of tests, cli, gemm, models) runs a subset.
MSG
