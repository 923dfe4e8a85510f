#!/usr/bin/env bash
# The GPU run rehearsed on this CPU machine (run by .ci/run): the real gpu-run.sh and
# gpu_bench.py, in a bundle packed by the real gpu-pack.sh, with stand-ins for what needs a GPU
# (tests/gpu_dry_run/: the four programs, nvidia-smi, the device's ptxas, gpu_torch.py). The
# stand-in test binaries list the real tests' names (read from this build's tests/gpu and
# tests/gpu_faults binaries) and misbehave on purpose. Three scenarios, each under a short
# deadline, checked by tests/gpu_dry_run/check.py:
#   faults  nvidia-smi (the pre-flight's first command) hangs ignoring SIGTERM; one GPU test
#           hangs likewise, another fails; the sm90 tile 128x192 traps in its test; in the GEMM
#           table, tile pp_64x256 traps after 5 shapes and tile 64x128 hangs. Every step still
#           reports, later steps run on EMBER_GEMM=sm80, every model row is on sm80.
#   pass    everything answers: every step PASS, exit status 0, the sm90 GEMM picked.
#   tight   every GPU test hangs under a deadline of 24 s: later steps are skipped for lack of
#           time, and say so.
# In each: OUT never holds more than 3 files (polled every 0.1 s), the run ends before its
# deadline, the output fits the device tool's 12,000-character tail, each test ran in a process
# of its own. Needs the CUDA build's test binaries (cargo builds them if absent).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
EMBER_CUDA_TOOLS=${EMBER_CUDA_TOOLS:-$(scripts/cuda/install-cuda-tools.sh)}
export EMBER_CUDA_TOOLS
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ember-dry-run.XXXXXX")
# EMBER_DRY_RUN_KEEP=1 keeps the bundle, each scenario's OUT and output, to read them.
if [ -n "${EMBER_DRY_RUN_KEEP:-}" ]; then
    echo "gpu-dry-run: keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
lists=$tmp/lists
mkdir -p "$lists" "$tmp/programs" "$tmp/path" "$tmp/ptx"

# The real tests' names.
built=$(cargo test --features cuda --test gpu --test gpu_faults --no-run 2>&1) || { echo "$built"; exit 1; }
for pair in "gpu-tests:tests\/gpu\/main\.rs" "gpu-faults:tests\/gpu_faults\.rs"; do
    name=${pair%%:*}
    binary=$(echo "$built" | sed -n "s/.*Executable ${pair#*:} (\(.*\)).*/\1/p")
    [ -x "$binary" ] || { echo "gpu-dry-run: no test binary for $name in cargo's output" >&2; exit 1; }
    "$binary" --list | sed -n 's/: test$//p' > "$lists/$name.list"
    "$binary" --list --ignored | sed -n 's/: test$//p' > "$lists/$name.ignored"
done

# The bundle, packed as the real one is, with the stand-ins.
for program in ember gpu-tests gpu-faults gpu-bench; do
    cp tests/gpu_dry_run/fake-gpu-program "$tmp/programs/$program"
done
cp tests/gpu_dry_run/nvidia-smi tests/gpu_dry_run/ptxas "$tmp/path/"
echo "// stand-in PTX" > "$tmp/ptx/gemm.ptx"
echo "// stand-in PTX" > "$tmp/ptx/gemm_sm90.ptx"
scripts/cuda/gpu-pack.sh "$tmp/bundle" "$tmp/programs/ember" "$tmp/programs/gpu-tests" "$tmp/programs/gpu-faults" \
    "$tmp/programs/gpu-bench" "$tmp/ptx" fixtures/tiny-bert-embed-f16 > /dev/null
cp tests/gpu_dry_run/gpu_torch.py "$tmp/bundle/gpu_torch.py"

summary=""
for run in faults:60 pass:60 tight:24; do
    scenario=${run%%:*} deadline=${run#*:}
    out=$tmp/out-$scenario
    mkdir -p "$out" "$tmp/scratch-$scenario"
    cp "$lists"/* "$tmp/scratch-$scenario/"
    start=$(date +%s.%N)
    (
        cd "$tmp"
        PATH="$tmp/path:$PATH" TMPDIR="$tmp/scratch-$scenario" EMBER_DRY_RUN_DIR="$tmp/scratch-$scenario" \
            EMBER_DRY_RUN_SCENARIO=$scenario EMBER_GPU_DEADLINE=$deadline EMBER_GPU_KILL_GRACE=2 \
            exec bash "$tmp/bundle/gpu-run.sh" "$out" > "$tmp/stdout-$scenario" 2> "$tmp/stderr-$scenario"
    ) &
    pid=$!
    # What OUT holds, every 0.1 s, while the run lasts.
    : > "$tmp/files-$scenario"
    while kill -0 "$pid" 2>/dev/null; do
        ls -A "$out" | tr '\n' ' ' >> "$tmp/files-$scenario"
        echo >> "$tmp/files-$scenario"
        sleep 0.1
    done
    rc=0
    wait "$pid" || rc=$?
    seconds=$(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$start")
    python3 tests/gpu_dry_run/check.py --scenario "$scenario" --out "$out" --stdout "$tmp/stdout-$scenario" \
        --stderr "$tmp/stderr-$scenario" --rc "$rc" --seconds "$seconds" --deadline "$deadline" \
        --files "$tmp/files-$scenario" --scratch "$tmp/scratch-$scenario" || {
        echo "--- gpu-run.sh's output ($scenario)"
        cat "$tmp/stdout-$scenario" "$tmp/stderr-$scenario"
        echo "gpu-dry-run: FAIL in scenario $scenario"
        exit 1
    }
    summary="$summary $scenario $(printf '%.0f' "$seconds") s of $deadline,"
done
echo "gpu-dry-run: PASS:${summary%,}; OUT never held more than 3 files; every test in a process of its own"
