#!/usr/bin/env bash
# Packs a bundle for the GPU machine (scripts/cuda/gpu-check.sh builds the real one;
# scripts/cuda/gpu-dry-run.sh packs stand-ins the same way, so that the dry run tests this layout):
#   BUNDLE/bin/{ember,gpu-tests,gpu-faults,gpu-bench}.xz   stripped, xz-compressed (gpu-run.sh
#                                                         unpacks them with Python's lzma)
#   BUNDLE/fixtures/, BUNDLE/minilm/                      the test models and texts
#   BUNDLE/gpu-run.sh, gpu_bench.py, gpu_torch.py         the device side
#   BUNDLE/ptx/*.ptx.xz                                   the embedded PTX (the device's own
#                                                         ptxas reads it in the pre-flight)
#   BUNDLE/kernels/                                       the sources (a fix can be tried there
#                                                         with nvcc and EMBER_PTX_DIR)
#   BUNDLE/COMMIT                                         what was built
# usage: scripts/cuda/gpu-pack.sh BUNDLE EMBER GPU_TESTS GPU_FAULTS GPU_BENCH PTX_DIR MINILM_DIR
set -euo pipefail
[ $# -eq 7 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
cd "$(dirname "$0")/../.."
bundle=$1 ptx_dir=$6 minilm=$7
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/ptx"
cp "$2" "$bundle/bin/ember"
cp "$3" "$bundle/bin/gpu-tests"
cp "$4" "$bundle/bin/gpu-faults"
cp "$5" "$bundle/bin/gpu-bench"
for f in "$bundle"/bin/*; do
    strip "$f" 2>/dev/null || true # stand-in scripts are no ELF files
done
xz -T2 -9 "$bundle"/bin/*  # ~4x smaller
cp -r fixtures "$bundle/fixtures"
cp -r "$minilm" "$bundle/minilm"
cp scripts/cuda/gpu-run.sh scripts/cuda/gpu_bench.py scripts/cuda/gpu_torch.py "$bundle/"
cp "$ptx_dir"/*.ptx "$bundle/ptx/"
xz -T2 -9 "$bundle"/ptx/*.ptx  # 5 MiB of text, a tenth of it compressed
cp -r kernels "$bundle/kernels"
git log -1 --format='%h %s' > "$bundle/COMMIT" 2>/dev/null || echo "not a git checkout" > "$bundle/COMMIT"
size=$(du -sb "$bundle" | cut -f1)
echo "gpu-pack: $bundle: $((size / 1024 / 1024)) MiB"
if [ "$size" -ge $((40 * 1024 * 1024)) ]; then
    du -sh "$bundle"/* >&2
    echo "gpu-pack: the bundle is over 40 MiB (the device tool carries 64 MiB with the working tree)" >&2
    exit 1
fi
