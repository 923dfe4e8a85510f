#!/usr/bin/env bash
# Assembles every PTX that build.rs embedded (feature `cuda`) with ptxas for the real targets,
# prints registers / shared memory / spills per kernel, and fails on an assembler error or on any
# spill (a spilled register costs local-memory traffic in the innermost loop).
#   - NAME.ptx (compute_80) is assembled for sm_90a and sm_80;
#   - NAME_sm90.ptx (compute_90a: wgmma, setmaxnreg, TMA) for sm_90a only (sm_80 has none of
#     them), and its machine code is then read back with nvdisasm: every kernel in it must
#     contain HGMMA (the wgmma tensor-core instruction). A Hopper kernel whose SASS shows only
#     HMMA or FFMA would be on a slower path without any error, so this is checked, not assumed.
# Shared memory: the sm90 kernels take theirs dynamically (0 here; see gemm.rs's Tile::smem_bytes).
# Usage: scripts/cuda/check-ptx.sh [PTX_DIR]   (default: the newest build's OUT_DIR under target/)
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="${EMBER_CUDA_TOOLS:-$PWD/.cache/cuda-tools}"
ptxas="${PTXAS:-$tools/nvidia/cuda_nvcc/bin/ptxas}"
nvdisasm="${NVDISASM:-$tools/disasm/nvidia/cu13/bin/nvdisasm}"
[ -x "$ptxas" ] || { echo "check-ptx: no ptxas at $ptxas: run scripts/cuda/install-cuda-tools.sh" >&2; exit 1; }
dir="${1:-}"
if [ -z "$dir" ]; then
    newest=$(ls -t target/*/build/ember-*/out/kernels.rs 2>/dev/null | head -1 || true)
    [ -n "$newest" ] || { echo "check-ptx: no PTX under target/: build with --features cuda first" >&2; exit 1; }
    dir=$(dirname "$newest")
fi
shopt -s nullglob
files=("$dir"/*.ptx)
[ ${#files[@]} -gt 0 ] || { echo "check-ptx: no .ptx in $dir" >&2; exit 1; }
echo "check-ptx: $("$ptxas" --version | tail -1), PTX from $dir"
status=0
scratch=$(mktemp -d "${TMPDIR:-/tmp}/ember-check-ptx.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
printf '%-8s %-16s %-20s %5s %7s %10s %s\n' arch file kernel regs smem spill stack
for arch in sm_90a sm_80; do
    for ptx in "${files[@]}"; do
        name=$(basename "$ptx")
        if [[ "$name" == *_sm90.ptx && "$arch" != sm_90a ]]; then
            continue # compute_90a PTX: Hopper only
        fi
        if ! report=$("$ptxas" -arch="$arch" -v -o "$scratch/${name%.ptx}.$arch.cubin" "$ptx" 2>&1); then
            echo "$report" >&2
            echo "check-ptx: ptxas failed on $ptx for $arch" >&2
            status=1
            continue
        fi
        # setmaxnreg is ignored (warning C7508) when the kernel has no register cap at entry.
        if echo "$report" | grep -q "C7508\|setmaxnreg.*ignored"; then
            echo "$report" | grep "C7508\|setmaxnreg" >&2
            echo "check-ptx: setmaxnreg ignored in $ptx" >&2
            status=1
        fi
        # ptxas prints, per entry: "Compiling entry function 'NAME'", then the stack/spill line,
        # then "Used N registers, ... M bytes smem".
        echo "$report" | awk -v arch="$arch" -v file="$name" '
            /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2); smem = 0 }
            /bytes stack frame/ { stack = $1; spill = $5 + $9 }
            /Used [0-9]+ registers/ {
                regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
                printf "%-8s %-16s %-20s %5s %7s %10s %s\n", arch, file, name, regs, smem, spill, stack
                if (spill > 0 || stack > 0) bad = 1
            }
            END { exit bad }' || { echo "check-ptx: spills or a stack frame in $ptx for $arch" >&2; status=1; }
    done
done

# The sm_90a machine code of the Hopper kernels: HGMMA in every entry.
sm90=("$scratch"/*_sm90.sm_90a.cubin)
if [ ${#sm90[@]} -gt 0 ]; then
    [ -x "$nvdisasm" ] || { echo "check-ptx: no nvdisasm at $nvdisasm: run scripts/cuda/install-cuda-tools.sh" >&2; exit 1; }
    echo "check-ptx: SASS of the sm90 kernels ($("$nvdisasm" --version | tail -1))"
    printf '%-20s %-22s %6s %s\n' file kernel HGMMA shapes
    for cubin in "${sm90[@]}"; do
        # nvdisasm 13.x warns that it reads ptxas 12.9's ELF in the "old format"; the listing is
        # complete all the same.
        if ! "$nvdisasm" -c "$cubin" > "$scratch/sass.txt" 2> "$scratch/sass.err"; then
            cat "$scratch/sass.err" >&2
            echo "check-ptx: nvdisasm failed on $cubin" >&2
            status=1
            continue
        fi
        awk -v file="$(basename "${cubin%.sm_90a.cubin}").ptx" '
            function flush() {
                if (kernel != "") {
                    printf "%-20s %-22s %6d %s\n", file, kernel, n, shapes
                    if (n == 0) bad = 1
                }
            }
            /^\.text\.[A-Za-z0-9_]+:/ { flush(); kernel = substr($1, 7, length($1) - 7); n = 0; shapes = ""; seen_kernels++ }
            /HGMMA\./ {
                n++
                if (match($0, /HGMMA\.[0-9x]+/)) { s = substr($0, RSTART + 6, RLENGTH - 6); if (index(shapes, s) == 0) shapes = shapes s " " }
            }
            END { flush(); if (seen_kernels == 0) bad = 1; exit bad }' "$scratch/sass.txt" ||
            { echo "check-ptx: a kernel of $(basename "$cubin") has no HGMMA in its SASS (or none was found)" >&2; status=1; }
    done
fi
[ $status -eq 0 ] && echo "check-ptx: every kernel assembles (sm_90a and sm_80; *_sm90 for sm_90a only) with no spills, and every sm90 kernel runs HGMMA"
exit $status
