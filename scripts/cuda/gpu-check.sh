#!/usr/bin/env bash
# Run HERE (a CPU machine with Rust): builds everything a GPU check needs and packs it into
# gpu-bundle/ (git-ignored, under 40 MiB; scripts/cuda/gpu-pack.sh lists what is in it), for a GPU
# machine that has the driver, Python, PyTorch and transformers but no Rust and no network:
#   ember        the release CLI with the CUDA backend
#   gpu-tests    tests/gpu/: every kernel against the f64 reference, the sm90 GEMM tile by tile,
#                models against the CPU
#   gpu-faults   tests/gpu_faults.rs: out of memory halves batches, a kernel fault names the
#                kernel, each sm90 failure falls back to sm80
#   gpu-bench    benches/gpu_bench.rs: the ember side of the PyTorch comparison
#   minilm/      all-MiniLM-L6-v2 in f16 with its vocabulary cut to the test texts' tokens
#                (scripts/cuda/trim_model.py: identical tokens and embeddings on those texts)
# With nvcc there, a kernel fix can be tried without Rust: nvcc --ptx -arch=compute_80 -o
# ptx/gemm.ptx kernels/gemm.cu, then EMBER_PTX_DIR=ptx makes the binaries load it instead of the
# embedded PTX (the Hopper GEMM: nvcc --ptx -gencode=arch=compute_90a,code=compute_90a
# -o ptx/gemm_sm90.ptx kernels/gemm_sm90.cu).
# Then prints the one call that runs it there.
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle="$PWD/gpu-bundle"
tools=$(scripts/cuda/install-cuda-tools.sh)
export EMBER_CUDA_TOOLS="$tools"

echo "== building (release, --features cuda)"
cargo build --release --features cuda --bin ember
test_out=$(cargo test --release --features cuda --test gpu --test gpu_faults --bench gpu_bench --no-run 2>&1) || { echo "$test_out"; exit 1; }
echo "$test_out" | tail -3
executable() { echo "$test_out" | sed -n "s/.*Executable $1 (\(.*\)).*/\1/p"; }
gpu_tests=$(executable 'tests\/gpu\/main\.rs')
gpu_bench=$(executable 'benches\/gpu_bench\.rs')
gpu_faults=$(executable 'tests\/gpu_faults\.rs')
[ -x "$gpu_tests" ] && [ -x "$gpu_bench" ] && [ -x "$gpu_faults" ] || { echo "gpu-check: test and bench executables not found in cargo's output" >&2; exit 1; }

echo "== checking the PTX"
ptx_dir=$(dirname "$(ls -t target/release/build/ember-*/out/kernels.rs | head -1)")
scripts/cuda/check-ptx.sh "$ptx_dir"

echo "== the test model, trimmed"
model="${EMBER_TEST_MODEL:-$PWD/.cache/models/all-MiniLM-L6-v2}"
[ -f "$model/model.safetensors" ] || scripts/fetch-test-model.sh
pydeps="$PWD/.cache/py"
python3 -c "import tokenizers" 2>/dev/null || [ -d "$pydeps/tokenizers" ] ||
    python3 -m pip install --quiet --disable-pip-version-check --target "$pydeps" -r scripts/cuda/requirements.txt
minilm=$(mktemp -d "${TMPDIR:-/tmp}/ember-minilm.XXXXXX")
trap 'rm -rf "$minilm"' EXIT
PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/cuda/trim_model.py "$model" "$minilm/minilm" fixtures/texts.json fixtures/pairs.json

echo "== bundling into $bundle"
scripts/cuda/gpu-pack.sh "$bundle" target/release/ember "$gpu_tests" "$gpu_faults" "$gpu_bench" "$ptx_dir" "$minilm/minilm"
du -sh "$bundle"/* | sed 's/^/   /'
cat <<MSG

From a session with the device tool, one call (about 8 minutes of its 10; results come back as
summary.txt, results.tgz and benchmarks.md):
    run(command='bash gpu-bundle/gpu-run.sh "\$OUT"', carry=['gpu-bundle'], timeout_s=540)
Elsewhere: copy gpu-bundle/ to the GPU machine and run bash gpu-bundle/gpu-run.sh OUT_DIR.
EMBER_GPU_DEADLINE (480 s) bounds the whole run; EMBER_GPU_STEPS=preflight,sm90,gemm (of
preflight, tests, sm90, models-tests, faults, cli, gemm, models) runs a subset.
MSG
