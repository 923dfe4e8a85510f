#!/usr/bin/env bash
# Assembles every PTX that build.rs embedded (feature `cuda`) with ptxas for the real targets,
# prints registers / shared memory / spills per kernel, and fails on an assembler error or on any
# spill (a spilled register costs local-memory traffic in the innermost loop).
# Usage: scripts/check-ptx.sh [PTX_DIR]   (default: the newest build's OUT_DIR under target/)
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${EMBER_CUDA_TOOLS:-$PWD/.cache/cuda-tools}"
ptxas="${PTXAS:-$tools/nvidia/cuda_nvcc/bin/ptxas}"
[ -x "$ptxas" ] || { echo "check-ptx: no ptxas at $ptxas: run scripts/install-cuda-tools.sh" >&2; exit 1; }
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
printf '%-8s %-16s %-18s %5s %7s %10s %s\n' arch file kernel regs smem spill stack
for arch in sm_90a sm_80; do
    for ptx in "${files[@]}"; do
        if ! report=$("$ptxas" -arch="$arch" -v -o /dev/null "$ptx" 2>&1); then
            echo "$report" >&2
            echo "check-ptx: ptxas failed on $ptx for $arch" >&2
            status=1
            continue
        fi
        # ptxas prints, per entry: "Compiling entry function 'NAME'", then the stack/spill line,
        # then "Used N registers, ... M bytes smem".
        echo "$report" | awk -v arch="$arch" -v file="$(basename "$ptx")" '
            /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2); smem = 0 }
            /bytes stack frame/ { stack = $1; spill = $5 + $9 }
            /Used [0-9]+ registers/ {
                regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
                printf "%-8s %-16s %-18s %5s %7s %10s %s\n", arch, file, name, regs, smem, spill, stack
                if (spill > 0 || stack > 0) bad = 1
            }
            END { exit bad }' || { echo "check-ptx: spills or a stack frame in $ptx for $arch" >&2; status=1; }
    done
done
[ $status -eq 0 ] && echo "check-ptx: every kernel assembles for sm_90a and sm_80 with no spills"
exit $status
