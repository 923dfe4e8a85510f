#!/usr/bin/env bash
# Run on the GPU machine, from the bundle that scripts/cuda/gpu-check.sh made (no Rust, no network;
# Python with torch and transformers, and an NVIDIA driver):
#     bash gpu-bundle/gpu-run.sh OUT_DIR
# Made for one call that must succeed whatever breaks, and say everything:
#   - OUT_DIR gets three files, rewritten after every step: summary.txt (a PASS/FAIL/SKIP line
#     per step with its key figure, then the first 20 failure lines), results.tgz (every log,
#     table and JSON row) and benchmarks.md (the tables so far). Everything else (the unpacked
#     binaries, saved models, scratch) lives in a folder under /tmp, removed at the end.
#   - One deadline for the whole run, EMBER_GPU_DEADLINE seconds (default 480) from the start:
#     each step runs under `timeout -k EMBER_GPU_KILL_GRACE` (10 s) of the smaller of its own
#     budget (a share of the deadline) and what is left, each process of a step likewise; a step
#     that no longer fits is skipped and says so.
#   - Containment: each GPU test runs in a process of its own (listed, then run by exact name),
#     so one fault cannot hide another. The sm90 GEMM's tests run one tile per process,
#     cooperative tiles first, ping-pong last; if any fails, every later step runs with
#     EMBER_GEMM=sm80, and the summary says so.
# Steps (EMBER_GPU_STEPS picks some, comma-separated; default all, in this order):
#   preflight     which libcuda loads, driver and GPU, the JIT cache (CUDA_CACHE_PATH under
#                 /tmp), the device's own ptxas on the bundled PTX, one backend creation timed
#                 cold and warm (`ember info --device cuda`: which GEMM and why)
#   tests         tests/gpu but its sm90 group (ops, models, pipeline) on the sm80 GEMM
#   sm90          the sm90 GEMM's tests (tests/gpu/sm90.rs), one process per test
#   models-tests  the model tests again, on the GEMM the device chooses
#   faults        tests/gpu_faults.rs (out of memory, kernel faults, the sm90 fallback)
#   cli           `ember encode --device cuda` against the CPU on the fixture texts
#   gemm          the GEMM table: ember's sm80 path and each sm90 tile vs torch.matmul
#   models        ember vs PyTorch fp16 on bge-small/base/large-shaped models
# The last lines printed are the short tables and the summary; exit status 0 only if every
# step that was asked for passed. From a session with the device tool, after
# scripts/cuda/gpu-check.sh:
#   run(command='bash gpu-bundle/gpu-run.sh "$OUT"', carry=['gpu-bundle'], timeout_s=540)
# EMBER_GPU_PYTHON (python3) runs the Python parts; EMBER_GPU_WORK sets the scratch folder.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${1:-$here/results}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
deadline=${EMBER_GPU_DEADLINE:-480}
grace=${EMBER_GPU_KILL_GRACE:-10}
python=${EMBER_GPU_PYTHON:-python3}
steps_wanted=",${EMBER_GPU_STEPS:-preflight,tests,sm90,models-tests,faults,cli,gemm,models},"
started=$(date +%s)
work=${EMBER_GPU_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/ember-gpu.XXXXXX")}
mkdir -p "$work/results"
res=$work/results
: > "$res/steps.tsv"
: > "$res/failures.txt"
# Later steps' EMBER_GEMM when the sm90 GEMM misbehaved (empty: the device decides).
gemm_fallback=""
gemm_fallback_why=""
failed_tiles=""

now() { echo $(($(date +%s) - started)); }
# Seconds until the deadline, less what packing the results at the end needs.
left() { echo $((deadline - $(now) - grace - 5)); }
say() { echo "[$(printf '%4d' "$(now)") s] $*"; }

# ---- the three files of OUT_DIR ------------------------------------------------------------------

write_summary() {
    {
        echo "ember GPU run: ${gpu_line:-GPU not read}; bundle $(cut -c1-60 "$here/COMMIT" 2>/dev/null || echo '?')"
        echo "deadline ${deadline} s, $(now) s used; every log in results.tgz"
        awk -F'\t' '{ printf "%-4s %-13s %4s s  %s\n", $1, $2, $3, $4 }' "$res/steps.tsv"
        if [ -n "$gemm_fallback" ]; then
            echo "GEMM for the steps after that: EMBER_GEMM=$gemm_fallback ($gemm_fallback_why)"
        fi
        if [ -s "$res/failures.txt" ]; then
            echo "first failure lines:"
            head -20 "$res/failures.txt" | cut -c1-260
        fi
    } > "$work/summary.txt"
    cp "$work/summary.txt" "$res/summary.txt"
}

# Rewrites OUT_DIR's three files from the work folder, each copied over its own name: OUT_DIR
# never holds anything else, even if the run is killed while copying.
publish() {
    write_summary
    : > "$work/benchmarks.md"
    for table in "$res/gemm/gemm.md" "$res/models/models.md"; do
        [ -s "$table" ] && { cat "$table"; echo; } >> "$work/benchmarks.md"
    done
    tar -czf "$work/results.tgz" -C "$work" results 2>/dev/null
    cp "$work/summary.txt" "$out/summary.txt"
    cp "$work/benchmarks.md" "$out/benchmarks.md"
    cp "$work/results.tgz" "$out/results.tgz"
}

# record STATUS STEP SECONDS KEY: one line of the summary.
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(echo "$4" | cut -c1-320)" >> "$res/steps.tsv"
    say "$1 $2 ($3 s): $4"
}

# fail_lines WHAT LOG: a failure's headline, then at most two telling lines of its log: the
# first case a test lists as FAILED (the sm90 tests list every failed case), else a panic and
# its message, a Python exception, the first error or FAILED line of gpu_bench.py, or else the
# last lines (where a process that timed out was).
fail_lines() {
    echo "$1" >> "$res/failures.txt"
    [ -f "$2" ] || return 0
    local body telling
    body=$(grep -v -e '^\$ ' -e 'gpu-run.sh: line [0-9]*: ' -e '^not started' -e '^test result: ' -e '^FAILED$' \
        -e '^failures:$' -e '^---- .* stdout ----$' "$2")
    if echo "$body" | grep -q '^Traceback'; then
        telling=$(echo "$body" | grep -v '^ *$' | tail -1)
    else
        telling=$(echo "$body" | grep -m1 ' FAILED: ')
        [ -n "$telling" ] || telling=$(echo "$body" | awk '/panicked at/ { print; if (getline > 0) print; exit }')
        [ -n "$telling" ] || telling=$(echo "$body" | grep -m2 -E "^FAILED |[Ee]rror")
        [ -n "$telling" ] || telling=$(echo "$body" | grep -v '^ *$' | tail -2)
    fi
    [ -z "$telling" ] || echo "$telling" | head -2 | cut -c1-250 | sed 's/^/    /' >> "$res/failures.txt"
}

finish() {
    publish
    echo
    for short in "$res/gemm/gemm-short.txt" "$res/models/models-short.txt"; do
        [ -s "$short" ] && { cat "$short"; echo; }
    done
    echo "== summary (also $out/summary.txt)"
    cat "$work/summary.txt"
    [ -n "${EMBER_GPU_WORK:-}" ] || rm -rf "$work"
    case $bin in "$work"/*) ;; ?*) rm -rf "$bin" ;; esac
}
# Stopped from outside (the device tool's own limit, Ctrl-C): still leave the files.
trap 'say "interrupted"; record FAIL interrupted "$(now)" "stopped from outside"; finish; exit 1' TERM INT

# ---- running things under the deadline ------------------------------------------------------------

step_end=0
# limited CAP LOG COMMAND...: runs COMMAND under timeout -k GRACE of the smaller of CAP and what
# is left of the step; output to LOG. Returns its status (124/137: timed out), or 125 when no
# time was left to start it.
limited() {
    local cap=$1 log=$2 seconds
    shift 2
    seconds=$((step_end - $(now)))
    [ "$seconds" -gt "$cap" ] && seconds=$cap
    if [ "$seconds" -lt 3 ] && [ "$seconds" -lt "$cap" ]; then
        echo "not started: no time left in the step" > "$log"
        return 125
    fi
    echo "\$ $* # timeout ${seconds} s" > "$log"
    # In a subshell that waits (no exec of its last command), so that the shell's notice of a
    # process killed by SIGKILL goes to the log too, not to the run's output.
    (
        timeout -k "$grace" "$seconds" "$@" >> "$log" 2>&1
        exit $?
    ) 2>> "$log"
}

describe_status() { # RC
    case $1 in
        0) echo "passed" ;;
        124 | 137) echo "timed out" ;;
        125) echo "not started (no time left)" ;;
        *) echo "exit $1" ;;
    esac
}

# run_step NAME BUDGET NEED FUNCTION: BUDGET and NEED in thousandths of the deadline (5 s at
# least: no step does anything useful in less). The step function sets step_status (PASS, FAIL
# or SKIP) and step_key.
run_step() {
    local name=$1 budget=$(($2 * deadline / 1000)) need=$(($3 * deadline / 1000)) fn=$4 begin available
    [ "$budget" -lt 5 ] && budget=5
    [ "$need" -lt 5 ] && need=5
    if [[ "$steps_wanted" != *",$name,"* ]]; then
        return
    fi
    available=$(left)
    if [ "$available" -lt "$need" ]; then
        record SKIP "$name" 0 "no time left (needs ${need} s, ${available} s left)"
        skipped_for_time=1
        publish
        return
    fi
    [ "$budget" -gt "$available" ] && budget=$available
    say "== $name (up to ${budget} s)"
    begin=$(now)
    step_end=$((begin + budget))
    step_status=FAIL
    step_key=""
    mkdir -p "$res/$name"
    "$fn" "$res/$name"
    record "$step_status" "$name" "$(($(now) - begin))" "$step_key"
    [ "$step_status" = FAIL ] && any_failed=1
    publish
}

# ---- the binaries --------------------------------------------------------------------------------

# The binaries travel xz-compressed; Python's lzma unpacks them (no xz tool needed) into the
# first folder where a program may run (/tmp can be mounted noexec).
unpack_binaries() {
    local dir probe
    for dir in "$work/bin" "$here/.run-bin" "/dev/shm/ember-gpu-bin-$$" "${HOME:-/nonexistent}/.ember-gpu-bin"; do
        mkdir -p "$dir" 2>/dev/null || continue
        probe="$dir/probe.sh"
        printf '#!/bin/sh\nexit 0\n' > "$probe" 2>/dev/null && chmod +x "$probe" && "$probe" 2>/dev/null || continue
        rm -f "$probe"
        bin=$dir
        break
    done
    [ -n "${bin:-}" ] || return 1
    local packed
    for packed in "$here"/bin/*.xz; do
        "$python" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
            "$packed" "$bin/$(basename "$packed" .xz)" || return 1
    done
    chmod +x "$bin"/*
}

# ---- the steps -------------------------------------------------------------------------------------

# The tests of BINARY (not the #[ignore]d children) whose names match REGEX and not EXCLUDE,
# one a line, in the binary's order.
list_tests() { # BINARY REGEX DIR [EXCLUDE]
    limited 30 "$3/list.log" "$1" --list || return 1
    limited 30 "$3/list-ignored.log" "$1" --list --ignored || return 1
    local ignored
    ignored=$(sed -n 's/: test$//p' "$3/list-ignored.log")
    sed -n 's/: test$//p' "$3/list.log" | grep -vxF -e "${ignored:-(none)}" | grep -E "$2" |
        grep -vE "${4:-^$}" || true
}

# run_tests DIR BINARY CAP TESTS...: each test in a process of its own; sets passed, failed
# (not_run: not started for lack of time), failed_names, tests_key ("9/10 passed; failed: ...")
# and worst (the lowest "worst cosine" printed).
run_tests() {
    local dir=$1 binary=$2 cap=$3 name log rc
    shift 3
    passed=0 failed=0 not_run=0 failed_names="" worst=""
    for name in "$@"; do
        log="$dir/${name//::/__}.log"
        EMBER_REQUIRE_GPU=1 EMBER_CUDA_CHECKED=1 limited "$cap" "$log" \
            "$binary" "$name" --exact --test-threads=1 --nocapture
        rc=$?
        if [ $rc -eq 0 ]; then
            passed=$((passed + 1))
        elif [ $rc -eq 125 ]; then
            not_run=$((not_run + 1))
        else
            failed=$((failed + 1))
            failed_names="$failed_names ${name} ($(describe_status $rc))"
            fail_lines "$(basename "$dir") $name: $(describe_status $rc)" "$log"
            say "   $name: $(describe_status $rc)"
        fi
    done
    if [ "$not_run" -gt 0 ]; then
        echo "$(basename "$dir"): $not_run tests not started: no time left in the step" >> "$res/failures.txt"
        say "   $not_run tests not started: no time left in the step"
    fi
    tests_key="$passed/$((passed + failed + not_run)) passed"
    [ -z "$failed_names" ] || tests_key="$tests_key; failed:$failed_names"
    [ "$not_run" -eq 0 ] || tests_key="$tests_key; $not_run not started (no time left)"
    worst=$(cat "$dir"/*.log 2>/dev/null | grep -o "worst cosine [0-9.]*" | awk '{print $3}' | sort -g | head -1)
}

# Whether every test of the last run_tests ran and passed.
tests_passed() { [ "$failed" -eq 0 ] && [ "$not_run" -eq 0 ] && [ "$passed" -gt 0 ]; }

per_test_cap() { echo $((deadline * 120 / 1000)); }

step_preflight() {
    local dir=$1 real stubs ptxas ptx rc name loaded
    # The GPU, as the driver's tool sees it.
    limited 15 "$dir/nvidia-smi.log" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
        --format=csv,noheader
    rc=$?
    if [ $rc -eq 0 ]; then
        gpu_line=$(sed -n 2p "$dir/nvidia-smi.log" | cut -c1-120)
    else
        gpu_line="nvidia-smi $(describe_status $rc)"
        fail_lines "preflight: nvidia-smi $(describe_status $rc)" "$dir/nvidia-smi.log"
    fi
    # The driver's libcuda.so.1 first on the library path, ahead of any toolkit stub libcuda.so
    # (cudarc asks for libcuda.so before libcuda.so.1).
    real=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF}'; ls /usr/local/nvidia/lib64/libcuda.so.1 \
        /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null) | grep -v /stubs/ | head -1)
    stubs=$(IFS=:; for d in ${LD_LIBRARY_PATH:-}; do ls "$d"/libcuda.so 2>/dev/null; done | grep /stubs/ | tr '\n' ' ')
    if [ -n "$real" ]; then
        mkdir -p "$work/libcuda"
        ln -sf "$real" "$work/libcuda/libcuda.so"
        export LD_LIBRARY_PATH="$work/libcuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    {
        echo "driver library: ${real:-none found}; stubs on LD_LIBRARY_PATH: ${stubs:-none}"
        echo "CUDA_CACHE_PATH=$CUDA_CACHE_PATH ($(du -sh "$CUDA_CACHE_PATH" 2>/dev/null | cut -f1) before)"
        echo "binaries run from $bin"
    } > "$dir/environment.txt"
    # One backend creation, cold (the driver JIT-compiles every PTX into CUDA_CACHE_PATH, which
    # every later process then reuses), then warm. `ember info` also says which GEMM runs and why.
    local info=(info --model "$here/fixtures/tiny-bert-embed-f16" --device cuda) cold warm gemm
    limited 90 "$dir/ember-info-cold.log" "$bin/ember" "${info[@]}"
    rc=$?
    limited 30 "$dir/ember-info-warm.log" "$bin/ember" "${info[@]}"
    cold=$(grep -o 'opened in *[0-9.]* s' "$dir/ember-info-cold.log" | grep -o '[0-9.]* s')
    warm=$(grep -o 'opened in *[0-9.]* s' "$dir/ember-info-warm.log" | grep -o '[0-9.]* s')
    gemm=$(grep -m1 '^ *gemm ' "$dir/ember-info-cold.log" | sed 's/^ *gemm *//' | cut -c1-110)
    if [ $rc -ne 0 ]; then
        fail_lines "preflight: ember info --device cuda: $(describe_status $rc)" "$dir/ember-info-cold.log"
        # Does the device's own GEMM choice break the backend (the sm90 self-check trapping)?
        if EMBER_GEMM=sm80 limited 60 "$dir/ember-info-sm80.log" "$bin/ember" "${info[@]}"; then
            gemm_fallback=sm80
            gemm_fallback_why="the pre-flight's backend failed with the device's own GEMM choice, not with sm80"
        fi
    fi
    # The device's own ptxas (the driver's JIT is its sibling) on the bundled PTX: whether it
    # takes it, registers and spills. Last: the least needed.
    ptxas=$(command -v ptxas || ls "${CUDA_HOME:-/usr/local/cuda}/bin/ptxas" 2>/dev/null || true)
    local ptxas_key="no ptxas here"
    if [ -n "$ptxas" ] && [ -d "$here/ptx" ]; then
        mkdir -p "$work/ptx"
        # The unproven sm90 GEMM first.
        for ptx in "$here"/ptx/gemm_sm90.ptx.xz $(ls "$here"/ptx/*.ptx.xz | grep -v /gemm_sm90.ptx.xz); do
            [ -f "$ptx" ] || continue
            name=$(basename "$ptx" .ptx.xz)
            "$python" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
                "$ptx" "$work/ptx/$name.ptx" || continue
            ptx=$work/ptx/$name.ptx
            limited 30 "$dir/ptxas-$name.log" "$ptxas" -arch=sm_90a -v -o "$work/ptx/$name.cubin" "$ptx"
            case $? in
                0 | 125) ;;
                *) fail_lines "preflight: the device's ptxas on $name.ptx failed" "$dir/ptxas-$name.log" ;;
            esac
        done
        if grep -q 'Used [0-9]* registers' "$dir"/ptxas-*.log; then
            ptxas_key="ptxas $("$ptxas" --version 2>/dev/null | grep -o 'V[0-9.]*' | head -1): max $(cat "$dir"/ptxas-*.log |
                grep -o 'Used [0-9]* registers' | awk '{print $2}' | sort -n | tail -1) registers, $(cat "$dir"/ptxas-*.log |
                grep -o '[0-9]* bytes spill stores' | awk '{s += $1} END {print s + 0}') B spill stores"
        else
            ptxas_key="the device's ptxas did not report (see results.tgz)"
        fi
    fi
    # The libcuda the backend loaded, as `ember info` read it from /proc/self/maps.
    loaded=$(grep -m1 '^ *driver ' "$dir/ember-info-cold.log" | sed 's/^ *driver *//' | cut -c1-120)
    step_key="backend ${cold:-?} cold, ${warm:-?} warm; GEMM ${gemm:-?}; ${loaded:-libcuda ${real:-not found}}; $ptxas_key"
    [ "$rc" -eq 0 ] && [[ "${gpu_line:-nvidia-smi}" != nvidia-smi* ]] && step_status=PASS
}

step_tests() {
    local dir=$1 tests
    tests=$(list_tests "$bin/gpu-tests" '.' "$dir" '^sm90::') || {
        step_key="could not list the tests"
        fail_lines "tests: listing failed" "$dir/list.log"
        return
    }
    # shellcheck disable=SC2086 # one test name a word
    EMBER_GEMM=sm80 run_tests "$dir" "$bin/gpu-tests" "$(per_test_cap)" $tests
    step_key="on the sm80 GEMM: $tests_key; worst cosine ${worst:-?}"
    tests_passed && step_status=PASS
}

step_sm90() {
    local dir=$1 tests ordered
    tests=$(list_tests "$bin/gpu-tests" '^sm90::' "$dir") || {
        step_key="could not list the tests"
        fail_lines "sm90: listing failed" "$dir/list.log"
        return
    }
    # Cooperative tiles first, the unproven ping-pong ones last.
    ordered="$(echo "$tests" | grep -v '::tile_pp_') $(echo "$tests" | grep '::tile_pp_')"
    # The device decides (each tile test forces its own path); EMBER_GEMM comes back after.
    local saved=${EMBER_GEMM-unset}
    unset EMBER_GEMM
    # shellcheck disable=SC2086
    run_tests "$dir" "$bin/gpu-tests" "$(per_test_cap)" $ordered
    [ "$saved" = unset ] || export EMBER_GEMM=$saved
    local decision
    decision=$(grep -ho 'GEMM sm[0-9]*: [^;]*' "$dir"/*decided*.log 2>/dev/null | head -1 | cut -c1-100)
    step_key="$tests_key; ${decision:-decision not printed}"
    if ! tests_passed; then
        failed_tiles=$(echo "$failed_names" | grep -o 'tile_[a-z0-9_]*' | sed 's/^tile_//' | tr '\n' ',')
        gemm_fallback=sm80
        gemm_fallback_why="the sm90 group did not pass: $failed failed, $not_run not run"
    else
        step_status=PASS
    fi
}

step_models_tests() {
    local dir=$1 tests
    if [ -n "$gemm_fallback" ]; then
        step_status=SKIP
        step_key="the device's GEMM is off ($gemm_fallback_why): the models ran on sm80 in step tests"
        return
    fi
    tests=$(list_tests "$bin/gpu-tests" '^models::' "$dir") || {
        step_key="could not list the tests"
        return
    }
    # shellcheck disable=SC2086
    run_tests "$dir" "$bin/gpu-tests" "$(per_test_cap)" $tests
    step_key="on the device's GEMM: $tests_key; worst cosine ${worst:-?}"
    tests_passed && step_status=PASS
}

step_faults() {
    local dir=$1 tests
    tests=$(list_tests "$bin/gpu-faults" '.' "$dir") || {
        step_key="could not list the tests"
        fail_lines "faults: listing failed" "$dir/list.log"
        return
    }
    # shellcheck disable=SC2086
    run_tests "$dir" "$bin/gpu-faults" "$(per_test_cap)" $tests
    step_key=$tests_key
    tests_passed && step_status=PASS
}

step_cli() {
    local dir=$1 rc
    "$python" -c "import json,sys; [print(t.replace('\n',' ')) for t in json.load(open(sys.argv[1]))]" \
        "$here/fixtures/texts.json" > "$work/texts.txt"
    limited 60 "$dir/encode-cuda.log" "$bin/ember" encode --model "$here/minilm" --input "$work/texts.txt" \
        --output "$work/cli-cuda.npy" --device cuda
    rc=$?
    if [ $rc -ne 0 ]; then
        step_key="ember encode --device cuda: $(describe_status $rc)"
        fail_lines "cli: $step_key" "$dir/encode-cuda.log"
        return
    fi
    limited 60 "$dir/encode-cpu.log" "$bin/ember" encode --model "$here/minilm" --input "$work/texts.txt" \
        --output "$work/cli-cpu.npy" --quiet
    rc=$?
    if [ $rc -ne 0 ]; then
        step_key="ember encode on the CPU: $(describe_status $rc)"
        fail_lines "cli: $step_key" "$dir/encode-cpu.log"
        return
    fi
    limited 30 "$dir/compare.log" "$python" "$here/gpu_bench.py" --compare-npy "$work/cli-cuda.npy" "$work/cli-cpu.npy"
    rc=$?
    step_key=$(grep -m1 '^CLI:' "$dir/compare.log" | cut -c6-)
    [ -n "$step_key" ] || step_key="comparison $(describe_status $rc)"
    if [ $rc -eq 0 ]; then step_status=PASS; else fail_lines "cli: $step_key" "$dir/compare.log"; fi
}

# gpu_bench.py under the step's time; its key line is the step's.
bench_step() { # DIR WHAT ARGS...
    local dir=$1 what=$2 rc seconds
    shift 2
    seconds=$((step_end - $(now)))
    PYTHONUNBUFFERED=1 limited "$seconds" "$dir/$what.log" "$python" "$here/gpu_bench.py" \
        --ember-bench "$bin/gpu-bench" --out "$dir" --deadline "$((started + step_end - 2))" "$@"
    rc=$?
    step_key="$(cat "$dir/key.txt" 2>/dev/null || echo "no table")"
    [ $rc -eq 0 ] || step_key="$step_key; gpu_bench.py $(describe_status $rc)"
    if [ $rc -eq 0 ]; then step_status=PASS; else fail_lines "$what: gpu_bench.py $(describe_status $rc)" "$dir/$what.log"; fi
}

step_gemm() {
    # One GEMM process (36 shapes on one path) takes seconds: 80 thousandths of the deadline
    # leaves room for a cold JIT cache, and a hung tile costs no more than that.
    bench_step "$1" gemm --gemm --skip-tiles "$failed_tiles" --gemm-timeout "$((deadline * 80 / 1000))"
}

step_models() {
    mkdir -p "$work/models"
    bench_step "$1" models --work "$work/models" --ember-timeout "$(per_test_cap)" \
        --model-min-s "$(($(per_test_cap) / 2))"
}

# ---- the run ---------------------------------------------------------------------------------------

say "ember GPU run: deadline ${deadline} s, results in $out, scratch in $work"
export EMBER_FIXTURES="$here/fixtures" EMBER_TEST_MODEL="$here/minilm"
# The driver's JIT cache: the first backend compiles every PTX, the others load the result.
export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-${TMPDIR:-/tmp}/ember-cuda-cache}" CUDA_CACHE_MAXSIZE=4294967296
unset CUDA_CACHE_DISABLE
mkdir -p "$CUDA_CACHE_PATH"
any_failed=0
skipped_for_time=0
bin=""
if ! unpack_binaries; then
    record FAIL unpack 0 "could not unpack the binaries into a folder where programs may run"
    finish
    exit 1
fi
#        name          budget need (thousandths of the deadline)
run_step preflight     100    30  step_preflight
[ -n "$gemm_fallback" ] && export EMBER_GEMM=$gemm_fallback
run_step tests         250    60  step_tests
run_step sm90          220    60  step_sm90
[ -n "$gemm_fallback" ] && export EMBER_GEMM=$gemm_fallback
run_step models-tests  80     30  step_models_tests
run_step faults        80     30  step_faults
run_step cli           60     20  step_cli
run_step gemm          250    80  step_gemm
run_step models        450    150 step_models
finish
[ "$any_failed" -eq 0 ] && [ "$skipped_for_time" -eq 0 ]
