"""Checks one scenario of scripts/cuda/gpu-dry-run.sh: what gpu-run.sh left in OUT, printed and
exited with, against what the issue asks of the one GPU run (see gpu-dry-run.sh's header)."""
import argparse
import io
import json
import os
import re
import sys
import tarfile

STEPS = ["preflight", "tests", "sm90", "models-tests", "faults", "cli", "gemm", "models"]
TAIL = 12000  # characters of output the device tool brings back
ALLOWED = {"summary.txt", "results.tgz", "benchmarks.md"}


class Check:
    def __init__(self, scenario):
        self.scenario, self.failures = scenario, []

    def that(self, ok, what):
        if not ok:
            self.failures.append(what)
        return ok


def main():
    ap = argparse.ArgumentParser()
    for name in ["scenario", "out", "stdout", "stderr", "files", "scratch"]:
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--rc", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--deadline", type=float, required=True)
    a = ap.parse_args()
    c = Check(a.scenario)

    # The run ends before its deadline; OUT never holds more than the three files.
    c.that(a.seconds < a.deadline, f"the run took {a.seconds:.1f} s, past its deadline of {a.deadline:.0f} s")
    seen = [line.split() for line in open(a.files)]
    most = max((len(s) for s in seen), default=0)
    strays = {f for s in seen for f in s} - ALLOWED
    c.that(most <= 3, f"OUT held {most} files at once")
    c.that(not strays, f"OUT held other files: {sorted(strays)}")
    c.that(set(os.listdir(a.out)) == ALLOWED, f"OUT at the end: {sorted(os.listdir(a.out))}")
    c.that(not [d for d in os.listdir(a.scratch) if d.startswith("ember-gpu.")], "the scratch folder was left behind")

    stdout = open(a.stdout).read()
    c.that(len(stdout) <= TAIL, f"{len(stdout)} characters of output, over the {TAIL} that come back")
    summary = open(os.path.join(a.out, "summary.txt")).read()
    c.that(stdout.rstrip().endswith(summary.rstrip()), "the output does not end with the summary")
    lines = {}
    for line in summary.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP) +(\S+) +(\d+) s  (.*)$", line)
        if m:
            lines[m.group(2)] = (m.group(1), m.group(4))
    c.that(list(lines) == STEPS, f"summary steps {list(lines)}, expected {STEPS}")
    status = {step: lines.get(step, ("missing", ""))[0] for step in STEPS}
    key = {step: lines.get(step, ("", ""))[1] for step in STEPS}

    with tarfile.open(os.path.join(a.out, "results.tgz")) as tgz:
        names = tgz.getnames()
        read = lambda name: tgz.extractfile(name).read().decode()  # noqa: E731
        records = lambda name: [json.loads(l) for l in read(name).splitlines()] if name in names else []  # noqa: E731
        gemm = records("results/gemm/gemm-rows.jsonl")
        models = records("results/models/models-rows.jsonl")
    for step in STEPS:
        if status[step] in ("PASS", "FAIL"):
            c.that(any(n.startswith(f"results/{step}/") for n in names), f"no logs of step {step} in results.tgz")

    # Each GPU test in a process of its own, each run once; the sm90 ping-pong tiles last.
    invocations = [l.split() for l in open(os.path.join(a.scratch, "invocations.log"))]
    for program in ["gpu-tests", "gpu-faults"]:
        listed = set(open(os.path.join(a.scratch, f"{program}.list")).read().split()) - \
            set(open(os.path.join(a.scratch, f"{program}.ignored")).read().split())
        # (name, EMBER_GEMM): the model tests run twice, on sm80 and on the device's GEMM.
        starts = [(i[2], i[1]) for i in invocations if i[0] == program and len(i) > 3 and i[3] == "--exact"]
        twice = [s for s in set(starts) if starts.count(s) > 1]
        c.that(not twice, f"{program}: ran more than once in one step: {twice}")
        runs = [name for name, _ in starts]
        if a.scenario != "tight":
            c.that(set(runs) == listed, f"{program}: ran {sorted(set(runs))}, listed {sorted(listed)}")
    sm90 = [i[2] for i in invocations if i[0] == "gpu-tests" and i[2].startswith("sm90::")]
    pp = [i for i, name in enumerate(sm90) if "::tile_pp_" in name]
    c.that(not pp or pp == list(range(len(sm90) - len(pp), len(sm90))), f"ping-pong tiles not last: {sm90}")

    models_rows = [r for r in models if r["kind"] == "ember"]
    sm80_processes = {r["path"]: r for r in gemm if r["kind"] == "process"}
    shapes = lambda path: {(r["m"], r["n"], r["k"]) for r in gemm if r["kind"] == "ember" and r["path"] == path}  # noqa

    if a.scenario == "faults":
        c.that(a.rc != 0, "exit status 0 despite failures")
        c.that(status["preflight"] == "FAIL", "a hung nvidia-smi did not fail the pre-flight")
        c.that("preflight: nvidia-smi timed out" in summary, "the summary does not say nvidia-smi timed out")
        for step in ["tests", "sm90", "faults", "cli", "gemm", "models"]:
            c.that(status[step] in ("PASS", "FAIL"), f"step {step} did not run after the hang: {status[step]}")
        c.that("ops::flash_attention_matches_f64_reference_on_awkward_length_mixes (timed out)" in key["tests"],
               f"tests: the hung test is not named: {key['tests']}")
        c.that("ops::linear_matches_reference_on_awkward_shapes (exit 101)" in key["tests"],
               f"tests: the failed test is not named: {key['tests']}")
        c.that(status["sm90"] == "FAIL" and "sm90::tile_128x192" in key["sm90"], f"sm90: {key['sm90']}")
        c.that("GEMM for the steps after that: EMBER_GEMM=sm80 (the sm90 group did not pass: 1 failed" in summary,
               "the summary does not say sm80 took over, and why")
        c.that(status["models-tests"] == "SKIP", "the model tests ran again on the device's GEMM")
        gemm_env = {i[1] for i in invocations if i[0] in ("gpu-faults", "ember") and len(i) > 2 and i[2] != "info"}
        c.that(gemm_env == {"EMBER_GEMM=sm80"}, f"steps after the sm90 group ran with {gemm_env}")
        c.that("gemm_sm90_128x192" in summary and "ILLEGAL_INSTRUCTION" in summary,
               "the trap's own words are not among the failure lines")
        # The GEMM table: sm80 everywhere, before any tile; the trap and the hang cost only their
        # own tiles; the tile that failed its test is not timed.
        all_shapes = shapes("sm80")
        c.that(len(all_shapes) == 36, f"sm80 measured on {len(all_shapes)} shapes")
        order = [r.get("path") for r in gemm if r["kind"] in ("ember", "process")]
        c.that(order.index("sm80") < min(order.index(t) for t in order if t != "sm80"), "a tile ran before sm80")
        for tile in ["128x256", "128x128", "pp_64x192"]:
            c.that(shapes(tile) == all_shapes, f"tile {tile}: {len(shapes(tile))} shapes")
        c.that(len(shapes("pp_64x256")) == 5 and sm80_processes["pp_64x256"]["status"] == "exit 101",
               f"the trapping tile: {sm80_processes.get('pp_64x256')}")
        c.that(sm80_processes["64x128"]["status"].startswith("timeout"), f"the hung tile: {sm80_processes.get('64x128')}")
        c.that(sm80_processes["128x192"]["status"] == "skipped: failed its test", "the tile that failed its test was timed")
        status_record = next(r for r in gemm if r["kind"] == "status")
        c.that(status_record["gemm"] == "sm80", "the GEMM table did not run on the sm80 fallback")
        c.that(len(models_rows) == 9 and all(r["gemm"] == "sm80" for r in models_rows),
               f"model rows: {[(r['model'], r['corpus'], r['gemm']) for r in models_rows]}")
        md = open(os.path.join(a.out, "benchmarks.md")).read()
        c.that("| bge-large | fixed 512 |" in md and "| 16384 | 4096 | 1024 |" in md, "benchmarks.md lacks rows")
    elif a.scenario == "pass":
        c.that(a.rc == 0, f"exit status {a.rc}")
        c.that(all(status[s] == "PASS" for s in STEPS), f"not all PASS: {status}")
        c.that("first failure lines" not in summary, "failure lines in a clean run")
        c.that("GEMM sm90: fake decision" in key["preflight"] and "0 B spill stores" in key["preflight"],
               f"preflight key: {key['preflight']}")
        c.that(len(models_rows) == 9 and all(r["gemm"] == "sm90" for r in models_rows), "model rows not on sm90")
        c.that("36/36 shapes" in key["gemm"], f"gemm key: {key['gemm']}")
        md = open(os.path.join(a.out, "benchmarks.md")).read()
        c.that("| 16384 | 4096 | 1024 |" in md and "gemm_sm90_128x256" in md, "the GEMM table lacks ember's sm90 pick")
    elif a.scenario == "tight":
        c.that(a.rc != 0, "exit status 0 with steps skipped")
        skipped = [s for s in STEPS if status[s] == "SKIP" and "no time left" in key[s]]
        c.that(len(skipped) >= 3, f"steps skipped for lack of time: {skipped}")
        c.that(status["preflight"] == "PASS", f"preflight: {status['preflight']}")
        c.that("not started (no time left)" in key["tests"], f"tests: {key['tests']}")

    if c.failures:
        for f in c.failures:
            print(f"gpu-dry-run {a.scenario}: {f}")
        sys.exit(1)
    print(f"gpu-dry-run {a.scenario}: ok ({a.seconds:.0f} s of {a.deadline:.0f}, rc {a.rc}, {len(stdout)} characters "
          f"of output, at most {most} files in OUT)")


if __name__ == "__main__":
    main()
