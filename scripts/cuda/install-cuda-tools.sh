#!/usr/bin/env bash
# Installs the CUDA compilers ember's build needs, from PyPI wheels, into .cache/cuda-tools:
# NVRTC (compiles kernels/*.cu to PTX at build time), the CUDA runtime headers (cuda_fp16.h) and
# ptxas (assembles the PTX for sm_80 / sm_90a to read registers and spills), and nvdisasm in disasm/
# (scripts/cuda/check-ptx.sh reads the sm_90a machine code for HGMMA). No CUDA install or GPU needed.
# The compilers are pinned to 12.9: the GPU machines' driver is CUDA 13.0, and PTX newer than the
# driver's ISA would not load there. nvdisasm only reads cubins, never makes what ships: its 13.5
# wheel (the one on PyPI) reads ptxas 12.9's sm_90a cubins (checked), so it is pinned apart, in
# its own folder with its own marker, and adding it never reinstalls the compilers.
# Prints the folder; build.rs finds it there by default (or through EMBER_CUDA_TOOLS).
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${EMBER_CUDA_TOOLS:-$PWD/.cache/cuda-tools}"
marker="$dest/.installed-12.9"
if [ ! -f "$marker" ]; then
    rm -rf "$dest"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
        nvidia-cuda-nvrtc-cu12==12.9.86 \
        nvidia-cuda-runtime-cu12==12.9.79 \
        nvidia-cuda-nvcc-cu12==12.9.86
    touch "$marker"
fi
disasm_marker="$dest/disasm/.installed-13.5.37"
if [ ! -f "$disasm_marker" ]; then
    rm -rf "$dest/disasm"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest/disasm" \
        nvidia-cuda-nvdisasm==13.5.37
    touch "$disasm_marker"
fi
for f in nvidia/cuda_nvrtc/lib/libnvrtc.so.12 nvidia/cuda_runtime/include/cuda_fp16.h nvidia/cuda_nvcc/bin/ptxas \
    disasm/nvidia/cu13/bin/nvdisasm; do
    [ -e "$dest/$f" ] || { echo "install-cuda-tools: $dest/$f missing after install" >&2; exit 1; }
done
chmod +x "$dest/nvidia/cuda_nvcc/bin/ptxas" "$dest/disasm/nvidia/cu13/bin/nvdisasm"
echo "$dest"
