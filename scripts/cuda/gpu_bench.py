"""ember against PyTorch on the GPU machine; run by scripts/cuda/gpu-run.sh from the bundle.

This file runs ember's processes (the gpu_bench binary, benches/gpu_bench.rs) and writes the tables; every torch
measurement is in gpu_torch.py beside it, imported only when a table needs it. Each ember
process runs under a timeout (within --deadline, the step's end), and each measurement is
appended to OUT/*-rows.jsonl the moment it is read, the markdown table (OUT/*.md) rewritten
from those rows after each one: a step killed at its deadline keeps every row it measured.

--gemm: the GEMM table. For every BERT (N, K) of bge-small/base/large (fused QKV, output, FFN
up, FFN down) and M in {1024, 8192, 16384}: ember's `linear` (bias, no activation) on the sm80
path, then torch.matmul (cuBLAS, f16 in and out), then each sm90 tile forced, each tile in a
process of its own, cooperative tiles first and ping-pong last (a trap in one tile kernel leaves
the others' figures; a tile that failed its test is not timed, --skip-tiles). The sm80 figure
of every shape is on disk before any sm90 tile runs. "ember's pick" is the kernel `linear`
takes in this run: the device's decision (`gpu_bench gemm-status`: the self-check on Hopper, or
EMBER_GEMM), then the tile table's choice for the shape. TFLOP/s of each, the pick's ratio to
torch, and each one's relative Frobenius error against float64 on 64 sampled rows of its own
random inputs. Issue 5's bar: ember >= 0.9x torch for M >= 8192, and >= 600 TFLOP/s at
M=16384, N=4096, K=1024. Errors over 2e-3 and processes that failed decide the exit status;
the speed bar is reported, not enforced.

Default: the models table. The card's measured FP16 matmul rate; attention alone at seq 512,
head dim 64 (ember's kernel, `gpu_bench attention`, against torch sdpa); then, for random-weight
BertModels shaped like bge-small, bge-base and bge-large (saved as f16 safetensors under --work,
deleted after use) and three corpora of random token ids (a log-normal length mix, median 60
tokens, clipped to [8, 512]; fixed 128; fixed 512): tokens per second of ember (batches of <=
--batch-tokens real tokens, no padding, one batch in flight while the next is queued) and of
torch fp16 with sdpa (length-sorted padded batches at the best budget of a short sweep), the
ratio, ember's useful TFLOP/s (matrix FLOPs of the real tokens only) as % of the matmul rate,
the GPU's busy share of ember's wall time, the host's queueing time against the GPU's, launches
per batch, ember's peak device memory after the warm-up and at the end, the GEMM ember ran on,
and the cosine of ember's and torch fp16's CLS embeddings (L2-normalized) against torch fp32.
The exit status is nonzero when a cosine is below 0.9995 or ember failed; the issue's speed
targets are printed as MET / MISSED lines.

--compare-npy A B: the worst row cosine of two .npy files (float32, 2-D), no numpy needed;
exit status 1 below --min-cosine.

Each mode writes OUT/key.txt, one line for scripts/cuda/gpu-run.sh's summary, and OUT/*-short.txt, the
table as gpu-run.sh prints it last.
"""
import argparse
import json
import math
import os
import random
import selectors
import struct
import subprocess
import sys
import time

SHAPES = {  # hidden, layers, heads, intermediate
    "bge-small": (384, 12, 12, 1536),
    "bge-base": (768, 12, 12, 3072),
    "bge-large": (1024, 24, 16, 4096),
}
MIN_COSINE = 0.9995
GEMM_NK = [(1152, 384), (384, 384), (1536, 384), (384, 1536),
           (2304, 768), (768, 768), (3072, 768), (768, 3072),
           (3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
GEMM_M = (1024, 8192, 16384)
GEMM_MAX_ERROR = 2e-3
# src/backend/cuda/gemm.rs's TILES: cooperative first, ping-pong last (the unproven ones).
TILES = ["128x256", "128x192", "128x128", "64x128", "pp_64x256", "pp_64x192"]


# ---- processes and rows --------------------------------------------------------------------------

class Deadline:
    """The step's end (epoch seconds) and what one process may take of the time left."""

    def __init__(self, at):
        self.at = at

    def left(self):
        return self.at - time.time()

    def allow(self, cap, margin=3.0):
        """Seconds for a process whose own limit is `cap`; None when less than 5 s (or than half
        the cap, if smaller) is left."""
        seconds = min(cap, self.left() - margin)
        return seconds if seconds >= min(5.0, cap / 2) else None


def run_streaming(cmd, timeout, log_path, on_record=None, env=None):
    """Runs `cmd` for at most `timeout` seconds (then SIGTERM, and SIGKILL 5 s later), its
    output appended to `log_path`; each stdout line that is a JSON object goes to `on_record`
    as soon as it is printed. Returns "exit N" or "timeout after N s"."""
    start = time.time()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(cmd)}   # timeout {timeout:.0f} s\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        pending, timed_out = b"", False
        while True:
            left = start + timeout - time.time()
            if left <= 0:
                timed_out = True
                break
            if not selector.select(min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # the process closed its output: it is ending
            log.write(chunk)
            log.flush()
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if on_record and line.startswith(b"{"):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a crash: the log has it
                    try:
                        on_record(record)
                    except Exception as e:  # noqa: BLE001 - one bad row must not stop the rest
                        log.write(f"# could not use that line: {type(e).__name__}: {e}\n".encode())
        selector.close()
        try:
            proc.wait(timeout=0 if timed_out else max(start + timeout - time.time(), 1))
        except subprocess.TimeoutExpired:
            timed_out = True
        if timed_out:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        status = f"timeout after {time.time() - start:.0f} s" if timed_out else f"exit {proc.returncode}"
        log.write(f"# {status}\n".encode())
    return status


class Rows:
    """Records appended to a JSONL file as they come, and a table rendered from them after
    each one."""

    def __init__(self, path, render):
        self.path, self.render, self.records = path, render, []
        open(path, "w").close()

    def add(self, record):
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.render(self.records)


def last_words(log_path):
    """The line of a process's log that says most about how it ended: its first error or panic,
    else its last line that is not a row."""
    lines = [l.strip() for l in open(log_path, errors="replace")
             if l.strip() and not l.startswith(("$ ", "# ", "{"))]
    for i, line in enumerate(lines):
        if "panicked at" in line:  # Rust puts the message on the next line
            return " ".join(lines[i:i + 2])[:240]
        if "rror" in line:
            return line[:240]
    return (lines[-1:] or ["nothing but rows"])[0][:240]


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def env_with(**values):
    env = dict(os.environ)
    env.update(values)
    return env


# ---- the GEMM table (--gemm) ----------------------------------------------------------------

def gemm_shapes():
    return [(m, n, k) for (n, k) in GEMM_NK for m in GEMM_M]


def render_gemm(args, records):
    """The GEMM table (markdown and short text) and the key line, from the records so far."""
    status = next((r for r in records if r["kind"] in ("status", "status-failed")), None)
    pick_path = status.get("gemm") if status and status["kind"] == "status" else "sm80"
    why = status.get("why") if status and status["kind"] == "status" else (
        status["error"] if status else "not yet known")
    ember = {(r["path"], r["m"], r["n"], r["k"]): r for r in records if r["kind"] == "ember"}
    torch_rows = {(r["m"], r["n"], r["k"]): r for r in records if r["kind"] == "torch"}
    processes = [r for r in records if r["kind"] == "process"]
    device = status.get("device", "?") if status else "?"
    lines = [
        f"GPU: {device}. GEMM out[M,N] = x[M,K]·w[N,K]ᵀ, f16 in/out, f32 accumulate; ember `linear` (bias, no "
        f"activation) vs torch.matmul (cuBLAS, no bias); TFLOP/s = 2MNK / time per call (back-to-back calls, "
        f">= {args.gemm_min_ms:g} ms each; sm90 tiles half that); error = relative Frobenius vs float64 on 64 "
        "sampled rows. Each ember column ran in a process of its own.",
        "",
        f"ember's GEMM in this run: {pick_path} ({why}).",
        "Processes: " + ("; ".join(f"{p['path']}: {p['status']}, {p['shapes']} shapes" for p in processes) or "none yet")
        + ".",
        "",
        "| M | N | K | torch | sm80 | " + " | ".join(TILES) + " | ember's pick | pick TFLOP/s | pick / torch | bar "
        "| err pick | err torch |",
        "| ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in TILES) + " | --- | ---: | ---: | --- "
        "| ---: | ---: |",
    ]
    short = [f"GEMM TFLOP/s, {device}; ember's GEMM: {pick_path} ({why})",
             f"{'M':>6} {'N':>5} {'K':>5} {'torch':>6} {'sm80':>6} {'best sm90 (tile)':>22} {'pick':>7} "
             f"{'/torch':>6} {'err':>8}"]
    wrong, below, picks = [], [], {}

    def figure(r):
        good = r["finite"] and r["rel_err"] <= GEMM_MAX_ERROR
        if not good:
            wrong.append(f"{r['path']} {r['m']}x{r['n']}x{r['k']}")
        return f"{r['tflops']:.0f}" if good else f"{r['tflops']:.0f} WRONG"

    for m, n, k in gemm_shapes():
        t = torch_rows.get((m, n, k))
        cells = [figure(ember[(p, m, n, k)]) if (p, m, n, k) in ember else "" for p in ["sm80"] + TILES]
        measured = [ember[(p, m, n, k)] for p in ["sm80"] + TILES if (p, m, n, k) in ember]
        if not measured and t is None:
            continue
        if pick_path == "sm90":
            auto = next((r.get("auto_tile") for r in measured if r.get("auto_tile")), None)
            pick = auto[len("gemm_sm90_"):] if auto else None
        else:
            pick = "sm80"
        chosen = ember.get((pick, m, n, k)) if pick else None
        ratio, bar = "", ""
        if chosen and t:
            r = chosen["tflops"] / t["tflops"]
            ratio = f"{r:.2f}"
            if m >= 8192:
                bar = "ok" if r >= 0.9 else "below 0.9x"
            if (m, n, k) == (16384, 4096, 1024):
                bar += ", " + ("ok" if chosen["tflops"] >= 600 else "below 600")
            if "below" in bar:
                below.append(f"{m}x{n}x{k}")
            picks[(m, n, k)] = (chosen, r)
        pick_name = (chosen["kernel"] if chosen else f"{pick or '?'} (not measured)")
        lines.append(
            f"| {m} | {n} | {k} | {t['tflops']:.0f} | " if t else f"| {m} | {n} | {k} | | ")
        lines[-1] += " | ".join(cells) + (
            f" | {pick_name} | {chosen['tflops']:.0f} | {ratio} | {bar} | {chosen['rel_err']:.1e} | "
            if chosen else f" | {pick_name} | | | | | ")
        lines[-1] += f"{t['err']:.1e} |" if t else "|"
        sm90 = [(ember[(p, m, n, k)]["tflops"], p) for p in TILES if (p, m, n, k) in ember]
        best = max(sm90, default=None)
        short.append(
            f"{m:>6} {n:>5} {k:>5} {t['tflops'] if t else float('nan'):>6.0f} "
            f"{ember[('sm80', m, n, k)]['tflops'] if ('sm80', m, n, k) in ember else float('nan'):>6.0f} "
            f"{(f'{best[0]:.0f} ({best[1]})' if best else '-'):>22} "
            f"{chosen['tflops'] if chosen else float('nan'):>7.0f} {ratio:>6} "
            f"{chosen['rel_err'] if chosen else float('nan'):>8.1e}")
    failed = [f"{p['path']} ({p['status']})" for p in processes if p["status"] != "exit 0"]
    big = picks.get((16384, 4096, 1024))
    key = f"{len(picks)}/{len(gemm_shapes())} shapes with ember's pick and torch"
    if big:
        key += f"; 16384x4096x1024: {big[0]['tflops']:.0f} TFLOP/s ({big[1]:.2f}x torch)"
    if below:
        key += f"; below the bar: {len(below)}"
    if wrong:
        key += f"; WRONG: {', '.join(wrong[:4])}"
    if failed:
        key += f"; failed: {', '.join(failed)}"
    write(os.path.join(args.out, "gemm.md"), "\n".join(lines) + "\n")
    write(os.path.join(args.out, "gemm-short.txt"), "\n".join(short) + "\n")
    write(os.path.join(args.out, "key.txt"), key + "\n")
    return not wrong and not failed and len(picks) == len(gemm_shapes())


def gemm_table(args, deadline):
    rows = Rows(os.path.join(args.out, "gemm-rows.jsonl"), lambda records: render_gemm(args, records))
    spec = ",".join(f"{m}x{n}x{k}" for m, n, k in gemm_shapes())
    log = lambda name: os.path.join(args.out, f"gemm-{name}.log")  # noqa: E731

    def ember_process(path, env, min_ms):
        seconds = deadline.allow(args.gemm_timeout)
        if seconds is None:
            rows.add({"kind": "process", "path": path, "status": "skipped: no time left", "shapes": 0})
            return
        count = [0]

        def on_record(r):
            count[0] += 1
            rows.add(dict(r, kind="ember", path=path))
        status = run_streaming([args.ember_bench, "gemm", path, spec, f"{min_ms:g}"], seconds, log(path), on_record, env)
        rows.add({"kind": "process", "path": path, "status": status, "shapes": count[0]})
        if status != "exit 0":
            print(f"FAILED {path}: {status} after {count[0]} shapes; {last_words(log(path))}", flush=True)

    # 1. What `linear` takes in this run (the self-check runs in this process, apart).
    got = []
    seconds = deadline.allow(60)
    status = run_streaming([args.ember_bench, "gemm-status"], seconds, log("status"), got.append) \
        if seconds else "skipped: no time left"
    rows.add(dict(got[0], kind="status") if got else {"kind": "status-failed", "error": f"gemm-status {status}"})
    # 2. sm80 on every shape, before any sm90 tile.
    ember_process("sm80", env_with(EMBER_GEMM="sm80"), args.gemm_min_ms)
    # 3. torch on every shape (without torch, the ember columns still come).
    try:
        import gpu_torch
    except Exception as e:  # noqa: BLE001 - any failure to bring torch up
        print(f"FAILED torch: {type(e).__name__}: {e}", flush=True)
        rows.add({"kind": "process", "path": "torch", "status": f"{type(e).__name__}: {e}"[:120], "shapes": 0})
        gpu_torch = None
    for m, n, k in gemm_shapes() if gpu_torch else []:
        if deadline.left() < 10:
            break
        seconds, err = gpu_torch.gemm(m, n, k, args.gemm_min_ms)
        rows.add({"kind": "torch", "m": m, "n": n, "k": k, "tflops": 2 * m * n * k / seconds / 1e12, "err": err})
    # 4. Each sm90 tile in a process of its own, the sm90 path forced (no self-check).
    skip = set(filter(None, args.skip_tiles.split(",")))
    for tile in TILES:
        if tile in skip:
            rows.add({"kind": "process", "path": tile, "status": "skipped: failed its test", "shapes": 0})
            continue
        ember_process(tile, env_with(EMBER_GEMM="sm90"), args.gemm_min_ms / 2)
    return render_gemm(args, rows.records)


# ---- the models table ---------------------------------------------------------------------------------

def lognormal_corpus(n, seed, median=60):
    rng = random.Random(seed)
    seqs = []
    for _ in range(n):
        length = int(min(512, max(8, round(rng.lognormvariate(math.log(median), 0.7)))))
        seqs.append([101] + [rng.randrange(1000, 30000) for _ in range(length - 2)] + [102])
    return seqs


def fixed_corpus(n, length, seed):
    rng = random.Random(seed)
    return [[101] + [rng.randrange(1000, 30000) for _ in range(length - 2)] + [102] for _ in range(n)]


def corpora(args):
    return {
        "log-normal": lognormal_corpus(args.sequences, seed=2026),
        "fixed 128": fixed_corpus(args.fixed_tokens // 128, 128, seed=128),
        "fixed 512": fixed_corpus(args.fixed_tokens // 512, 512, seed=512),
    }


def useful_flops(seqs, shape):
    """Matrix FLOPs of the real tokens (no padding): linear layers and attention, every layer."""
    hidden, layers, _, inter = shape
    total = 0
    for s in seqs:
        n = len(s)
        total += n * 2 * (4 * hidden * hidden + 2 * hidden * inter) + 4 * n * n * hidden
    return layers * total


def render_models(args, records):
    peak = next((r["tflops"] for r in records if r["kind"] == "peak"), float("nan"))
    device = next((r["device"] for r in records if r["kind"] == "device"), "?")
    attention = next((r for r in records if r["kind"] == "attention"), None)
    torch_rows = {(r["model"], r["corpus"]): r for r in records if r["kind"] == "torch"}
    ember_rows = {(r["model"], r["corpus"]): r for r in records if r["kind"] == "ember"}
    failed = [r for r in records if r["kind"] == "model-failed"]
    lines = [f"GPU: {device}. FP16 tensor-core rate measured with torch.matmul 8192^3: {peak:.0f} TFLOP/s.", ""]
    if attention:
        lines += [f"Attention alone (seq {attention['seq']}, head dim {attention['head_dim']}, {attention['heads']} "
                  f"heads x {attention['sequences']} sequences, no mask): ember {attention['ember']:.1f} TFLOP/s "
                  f"({attention['status']}), torch sdpa {attention['torch']:.1f} TFLOP/s.", ""]
    lines += [
        f"End to end: random-weight BertModels, CLS + L2 normalize; ember batches of <= {args.batch_tokens} real "
        "tokens; torch fp16 sdpa, length-sorted padded batches at its best budget of "
        f"{args.torch_budgets} padded tokens. Useful TFLOP/s count real tokens only.",
        "",
        "| model | corpus | ember tok/s | torch fp16 tok/s (budget) | ember / torch | useful TFLOP/s (% of matmul) "
        "| GPU busy | host queueing / GPU time | launches / batch | peak MiB (warm / end) | ember GEMM "
        "| cos ember vs fp32 (min / mean) | cos torch fp16 (min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    short = [f"end to end, {device}: tokens/s   (matmul {peak:.0f} TFLOP/s; attention ember "
             f"{attention['ember'] if attention else float('nan'):.0f} vs sdpa "
             f"{attention['torch'] if attention else float('nan'):.0f} TFLOP/s)",
             f"{'model':<10} {'corpus':<10} {'ember':>9} {'torch':>9} {'x':>5} {'%peak':>5} {'busy':>5} "
             f"{'gemm':>4} {'cos min':>8}"]
    goals, ok_rows = [], 0
    for (model, corpus), t in torch_rows.items():
        r = ember_rows.get((model, corpus))
        if r is None:
            lines.append(f"| {model} | {corpus} | failed | {t['torch_tps']:,.0f} ({t['torch_budget']}) "
                         f"| | | | | | | | | {t['cos_torch']:.6f} |")
            short.append(f"{model:<10} {corpus:<10} {'failed':>9} {t['torch_tps']:>9.0f}")
            continue
        ratio = r["ember_tps"] / t["torch_tps"]
        ok_rows += r["cos_min"] >= MIN_COSINE
        lines.append(
            f"| {model} | {corpus} | {r['ember_tps']:,.0f} | {t['torch_tps']:,.0f} ({t['torch_budget']}) "
            f"| {ratio:.2f} | {r['tflops']:.0f} ({r['pct_peak']:.0f} %) | {r['busy_pct']:.1f} % | {r['queue_pct']:.0f} % "
            f"| {r['launches']:.0f} | {r['peak_mib'][0]:.0f} / {r['peak_mib'][1]:.0f} | {r['gemm']} "
            f"| {r['cos_min']:.6f} / {r['cos_mean']:.6f} | {t['cos_torch']:.6f} |")
        short.append(f"{model:<10} {corpus:<10} {r['ember_tps']:>9.0f} {t['torch_tps']:>9.0f} {ratio:>5.2f} "
                     f"{r['pct_peak']:>5.0f} {r['busy_pct']:>5.1f} {r['gemm']:>4} {r['cos_min']:>8.6f}")
        if corpus == "log-normal":
            want = 3.0 if model == "bge-small" else 2.0
            goals.append(f"{'MET   ' if ratio >= want else 'MISSED'} {model} log-normal: ember / torch {ratio:.2f} "
                         f"(target >= {want})")
            if model == "bge-large":
                goals.append(f"{'MET   ' if r['pct_peak'] >= 50 else 'MISSED'} bge-large log-normal: "
                             f"{r['pct_peak']:.0f} % of the matmul rate (target >= 50)")
    if attention:
        goals.append(f"{'MET   ' if attention['ember'] >= 250 else 'MISSED'} attention seq 512 d 64: "
                     f"{attention['ember']:.0f} TFLOP/s (target >= 250)")
    for f in failed:
        lines.append(f"\n{f['model']}: {f['reason']}")
        short.append(f"{f['model']}: {f['reason']}")
    expected = len(args.models.split(",")) * 3
    write(os.path.join(args.out, "models.md"), "\n".join(lines) + "\n\n```\n" + "\n".join(goals) + "\n```\n")
    write(os.path.join(args.out, "models-short.txt"), "\n".join(short + goals) + "\n")
    worst = min((r["cos_min"] for r in ember_rows.values()), default=float("nan"))
    gemms = sorted({r["gemm"] for r in ember_rows.values()})
    key = f"{len(ember_rows)}/{expected} rows on ember's GEMM {'/'.join(gemms) or '-'}, worst cosine {worst:.6f}"
    for model in SHAPES:
        r, t = ember_rows.get((model, "log-normal")), torch_rows.get((model, "log-normal"))
        if r and t:
            key += f"; {model} {r['ember_tps'] / t['torch_tps']:.2f}x torch"
    if failed:
        key += f"; failed: {', '.join(f['model'] for f in failed)}"
    write(os.path.join(args.out, "key.txt"), key + "\n")
    return (attention is not None and attention["status"] == "exit 0" and not failed
            and ok_rows == len(ember_rows) == expected)


def models_table(args, deadline):
    import gpu_torch

    rows = Rows(os.path.join(args.out, "models-rows.jsonl"), lambda records: render_models(args, records))
    rows.add({"kind": "device", "device": gpu_torch.device_name()})
    texts = corpora(args)
    peak = gpu_torch.matmul_peak()
    rows.add({"kind": "peak", "tflops": peak})
    seq, heads, head_dim, sequences, repeats = 512, 16, 64, 32, 50
    torch_tflops = gpu_torch.sdpa_tflops(seq, heads, head_dim, sequences, repeats)
    got = []
    seconds = deadline.allow(60)
    status = run_streaming([args.ember_bench, "attention", str(seq), str(heads), str(head_dim), str(sequences),
                            str(repeats)], seconds, os.path.join(args.out, "attention.log"), got.append) \
        if seconds else "skipped: no time left"
    rows.add({"kind": "attention", "seq": seq, "heads": heads, "head_dim": head_dim, "sequences": sequences,
              "ember": got[0]["attention_tflops"] if got else float("nan"), "torch": torch_tflops, "status": status})
    budgets = [int(b) for b in args.torch_budgets.split(",")]
    for name in args.models.split(","):
        if deadline.left() < args.model_min_s:
            rows.add({"kind": "model-failed", "model": name, "reason": "skipped: no time left"})
            continue
        shape = SHAPES[name]
        model_dir = os.path.join(args.work, name)
        run = gpu_torch.ModelRun(name, shape, texts, args.check, args.batch_tokens)
        run.save_f16(model_dir)
        for corpus, seqs in texts.items():
            seconds, budget, cos_torch = run.time_torch(corpus, seqs, budgets, args.passes)
            tokens = sum(map(len, seqs))
            rows.add({"kind": "torch", "model": name, "corpus": corpus, "sequences": len(seqs), "tokens": tokens,
                      "torch_tps": tokens / seconds, "torch_budget": budget, "cos_torch": cos_torch})
        run.release_model()
        # gpu_bench MODEL_DIR IDS.json OUT.npy PASSES BATCH_TOKENS [IDS2.json OUT2.npy ...]: the
        # model is loaded once for every corpus; a JSON line per corpus as it finishes.
        files = []
        for i, seqs in enumerate(texts.values()):
            ids = os.path.join(args.work, f"ids-{i}.json")
            json.dump(seqs, open(ids, "w"))
            files.append((ids, os.path.join(args.work, f"{name}-{i}.npy")))
        cmd = [args.ember_bench, model_dir, *files[0], str(args.passes), str(args.batch_tokens)]
        for pair in files[1:]:
            cmd += list(pair)
        corpus_of = {ids: (corpus, npy) for (ids, npy), corpus in zip(files, texts)}

        def on_record(t, name=name, shape=shape, run=run, corpus_of=corpus_of):
            corpus, npy = corpus_of[t["ids"]]
            cos_min, cos_mean = run.ember_cosines(corpus, npy)
            tflops = useful_flops(texts[corpus], shape) / t["seconds"] / 1e12
            rows.add({"kind": "ember", "model": name, "corpus": corpus, "ember_tps": t["tokens_per_s"],
                      "cos_min": cos_min, "cos_mean": cos_mean, "tflops": tflops, "pct_peak": 100 * tflops / peak,
                      "busy_pct": 100 * t["gpu_busy_s"] / t["seconds"], "launches": t["launches_per_batch"],
                      "queue_pct": 100 * t["host_queue_s"] / max(t["gpu_busy_s"], 1e-9),
                      "peak_mib": (t["peak_device_bytes_after_warmup"] / 2**20, t["peak_device_bytes"] / 2**20),
                      "gemm": t.get("gemm", "?"), "gemm_why": t.get("gemm_why", "")})

        seconds = deadline.allow(args.ember_timeout)
        status = run_streaming(cmd, seconds, os.path.join(args.out, f"ember-{name}.log"), on_record) \
            if seconds else "skipped: no time left"
        if status != "exit 0":
            rows.add({"kind": "model-failed", "model": name, "reason": f"ember {status} (see ember-{name}.log)"})
            print(f"FAILED {name}: ember {status}; {last_words(os.path.join(args.out, f'ember-{name}.log'))}", flush=True)
        del run
        for path in [model_dir] + [p for pair in files for p in pair]:
            subprocess.run(["rm", "-rf", path], timeout=60)
    return render_models(args, rows.records)


# ---- the CLI's outputs (--compare-npy) -----------------------------------------------------------------

def read_npy_rows(path):
    raw = open(path, "rb").read()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + header_len].decode()
    if "'<f4'" not in header:
        raise ValueError(f"{path}: not float32 ({header.strip()})")
    rows, cols = [int(v) for v in header.split("(")[1].split(")")[0].split(",") if v.strip()]
    values = struct.unpack(f"<{rows * cols}f", raw[10 + header_len:10 + header_len + 4 * rows * cols])
    return [values[r * cols:(r + 1) * cols] for r in range(rows)]


def compare_npy(a_path, b_path, min_cosine):
    a, b = read_npy_rows(a_path), read_npy_rows(b_path)
    if len(a) != len(b) or not a:
        print(f"CLI: {len(a)} rows vs {len(b)}")
        return False
    worst = 1.0
    for x, y in zip(a, b):
        dot = sum(p * q for p, q in zip(x, y))
        norm = math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
        worst = min(worst, dot / max(norm, 1e-30))
    print(f"CLI: {len(a)} texts, worst cosine cuda vs cpu {worst:.6f}")
    return worst >= min_cosine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember-bench", help="the gpu_bench binary (benches/gpu_bench.rs)")
    ap.add_argument("--out", help="tables, rows, logs and key.txt")
    ap.add_argument("--work", help="scratch for the saved models, ids and embeddings (default: --out)")
    ap.add_argument("--deadline", type=float, help="epoch seconds by which to have finished (default: 1 hour)")
    ap.add_argument("--sequences", type=int, default=2048, help="log-normal corpus size")
    ap.add_argument("--fixed-tokens", type=int, default=131072, help="tokens of each fixed-length corpus")
    ap.add_argument("--check", type=int, default=128, help="sequences per corpus compared against fp32")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16384, help="ember's token budget per batch")
    ap.add_argument("--torch-budgets", default="8192,16384,32768,65536", help="torch's padded-token budgets swept")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--model-min-s", type=float, default=30, help="seconds a model needs to be started")
    ap.add_argument("--ember-timeout", type=float, default=150, help="seconds for ember's process of one model")
    ap.add_argument("--gemm", action="store_true", help="the GEMM table instead of the models")
    ap.add_argument("--gemm-min-ms", type=float, default=40.0, help="timed milliseconds per shape (sm90 tiles: half)")
    ap.add_argument("--gemm-timeout", type=float, default=90.0, help="seconds for each ember process of the table")
    ap.add_argument("--skip-tiles", default="", help="sm90 tiles not to time (they failed their test)")
    ap.add_argument("--compare-npy", nargs=2, metavar=("A", "B"))
    ap.add_argument("--min-cosine", type=float, default=MIN_COSINE)
    args = ap.parse_args()
    if args.compare_npy:
        sys.exit(0 if compare_npy(*args.compare_npy, args.min_cosine) else 1)
    if not args.ember_bench or not args.out:
        ap.error("--ember-bench and --out are required")
    os.makedirs(args.out, exist_ok=True)
    args.work = args.work or args.out
    os.makedirs(args.work, exist_ok=True)
    deadline = Deadline(args.deadline or time.time() + 3600)
    ok = gemm_table(args, deadline) if args.gemm else models_table(args, deadline)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
