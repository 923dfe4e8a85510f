"""ember against PyTorch fp16 (sdpa) on the GPU machine; run by scripts/gpu-run.sh from the bundle.

Everything on the same card in the same run:
  - the card's measured FP16 tensor-core rate: a large torch.matmul (8192^3, f16 in, f32
    accumulate as cuBLAS does by default), the yardstick for "% of peak";
  - attention alone at seq 512, head dim 64 (32 sequences x 16 heads): ember's kernel timed by the
    bench binary (`gpu-bench attention ...`) against torch's scaled_dot_product_attention on the
    same shapes, in TFLOP/s (4 * seq^2 * head_dim per head and sequence, no mask);
  - end to end, for three random-weight BertModels shaped like bge-small, bge-base and bge-large
    (built here with transformers, saved as f16 safetensors for ember) and three corpora of random
    token ids: a log-normal length mix (median 60 tokens, clipped to [8, 512]), fixed 128 and fixed
    512. Tokens per second of ember (batches of <= --batch-tokens real tokens, no padding, one
    batch in flight while the next is queued) and of torch fp16 with sdpa (its batches sorted by
    length and padded; the best padded-token budget of a short sweep), the ratio, ember's useful
    TFLOP/s (matrix FLOPs of the real tokens only: 2 * (4 h^2 + 2 h * inter) per token and layer
    plus 4 * len * h for attention) as % of the measured matmul rate, the GPU's busy share of
    ember's wall time (timed events per batch), the host's queueing time as a share of the GPU
    time (below 100 % the host stays ahead, so launch overhead does not idle the GPU), kernel
    launches per batch, ember's peak
    device memory after the warm-up and at the end (equal: the pool stops growing), and the
    cosine of ember's and torch fp16's CLS embeddings (L2-normalized) against torch fp32.
Prints the tables last and writes them (markdown) to OUT/benchmarks.md with the card's name.
The exit status is nonzero only when a cosine is below 0.9995 or ember fails; the issue's speed
targets are printed as MET / MISSED lines.

With --gemm instead: the GEMM table. For every BERT (N, K) of bge-small/base/large (fused QKV,
output, FFN up, FFN down) and M in {1024, 8192, 16384}: ember's linear (the `gpu_bench gemm`
mode of the ember binary: the path ember picks, sm90 on Hopper, and the sm80 path for A/B) next to
torch.matmul (cuBLAS, f16 in and out) in the same run, TFLOP/s of both, their ratio, and each
one's relative Frobenius error against float64 on 64 sampled rows of its own random inputs. Issue
5's bar: ember >= 0.9x torch for M >= 8192, and >= 600 TFLOP/s at M=16384, N=4096, K=1024. The
error bar (2e-3) decides the exit status; the speed bar is reported, not enforced.
"""
import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

SHAPES = {  # hidden, layers, heads, intermediate
    "bge-small": (384, 12, 12, 1536),
    "bge-base": (768, 12, 12, 3072),
    "bge-large": (1024, 24, 16, 4096),
}
MIN_COSINE = 0.9995


# ---- corpora ----------------------------------------------------------------------------------

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


# ---- the card ----------------------------------------------------------------------------------

def measure_fp16_peak(n=8192, iters=30):
    """TFLOP/s of a large f16 matmul: the card's practical tensor-core rate."""
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / iters
    del a, b
    torch.cuda.empty_cache()
    return 2 * n ** 3 / seconds / 1e12


# ---- attention alone ---------------------------------------------------------------------------

def attention_bench(ember_bench, seq=512, heads=16, head_dim=64, sequences=32, repeats=50):
    flops = 4 * seq * seq * head_dim * heads * sequences
    q, k, v = (torch.randn(sequences, heads, seq, head_dim, device="cuda", dtype=torch.float16) for _ in range(3))
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        F.scaled_dot_product_attention(q, k, v)
    end.record()
    torch.cuda.synchronize()
    torch_tflops = flops / (start.elapsed_time(end) / 1e3 / repeats) / 1e12
    del q, k, v
    torch.cuda.empty_cache()
    run = subprocess.run([ember_bench, "attention", str(seq), str(heads), str(head_dim), str(sequences), str(repeats)],
                         capture_output=True, text=True)
    sys.stderr.write(run.stderr[-2000:])
    ember_tflops = float("nan")
    if run.returncode == 0:
        ember_tflops = json.loads(run.stdout.strip().splitlines()[-1])["attention_tflops"]
    else:
        print(f"ember attention bench failed (exit {run.returncode})", flush=True)
    print(f"attention seq {seq} d {head_dim} x {heads} heads x {sequences}: ember {ember_tflops:.1f} TFLOP/s, "
          f"torch sdpa {torch_tflops:.1f} TFLOP/s", flush=True)
    return {"seq": seq, "heads": heads, "head_dim": head_dim, "sequences": sequences,
            "ember": ember_tflops, "torch": torch_tflops, "ok": run.returncode == 0}


# ---- end to end ----------------------------------------------------------------------------------

def read_npy(path):
    raw = open(path, "rb").read()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + header_len].decode()
    rows, cols = [int(v) for v in header.split("(")[1].split(")")[0].split(",") if v.strip()]
    return torch.frombuffer(bytearray(raw[10 + header_len:]), dtype=torch.float32).reshape(rows, cols)


def torch_batches(seqs, budget):
    """Length-sorted batches of at most `budget` padded tokens, as tensors on the host."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches, cur = [], []
    for i in order:
        longest = len(seqs[cur[0]]) if cur else len(seqs[i])
        if cur and (len(cur) + 1) * longest > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    out = []
    for b in batches:
        width = max(len(seqs[i]) for i in b)
        ids = torch.zeros(len(b), width, dtype=torch.long)
        mask = torch.zeros(len(b), width, dtype=torch.long)
        for r, i in enumerate(b):
            ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, :len(seqs[i])] = 1
        out.append((b, ids.pin_memory(), mask.pin_memory()))
    return out


@torch.inference_mode()
def torch_embed(model, batches, n, dim):
    result = torch.empty(n, dim, dtype=torch.float32, device="cuda")
    for b, ids, mask in batches:
        hidden = model(input_ids=ids.cuda(non_blocking=True), attention_mask=mask.cuda(non_blocking=True)).last_hidden_state
        result[torch.tensor(b, device="cuda")] = F.normalize(hidden[:, 0].float(), dim=-1)
    torch.cuda.synchronize()
    return result


def torch_best(model, seqs, dim, budgets, passes):
    """torch's tokens/s at its best padded-token budget: one pass per budget, then `passes` more
    at the best one. Returns (seconds, budget)."""
    sweep = {}
    for i, budget in enumerate(budgets):
        batches = torch_batches(seqs, budget)
        if i == 0:
            torch_embed(model, batches, len(seqs), dim)  # warm-up (cuBLAS heuristics, allocator)
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch_embed(model, batches, len(seqs), dim)
        sweep[budget] = time.perf_counter() - start
    budget = min(sweep, key=sweep.get)
    batches = torch_batches(seqs, budget)
    best = sweep[budget]
    for _ in range(max(passes - 1, 0)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch_embed(model, batches, len(seqs), dim)
        best = min(best, time.perf_counter() - start)
    return best, budget


def make_model(shape):
    hidden, layers, heads, inter = shape
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, vocab_size=30522, max_position_embeddings=512)
    try:
        config._attn_implementation = "sdpa"  # the default on recent transformers anyway
    except Exception as e:  # noqa: BLE001 - older or newer transformers spell it differently
        print(f"note: could not ask for sdpa explicitly ({e})", flush=True)
    model = BertModel(config, add_pooling_layer=False).eval().cuda()
    # Weights a trained model would have rather than init noise: LayerNorm not exactly 1 / 0.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    return model


def end_to_end(args, name, shape, texts, peak_tflops):
    """One model on every corpus; returns one row per corpus."""
    hidden = shape[0]
    model = make_model(shape)
    print(f"{name}: torch attention = {getattr(model.config, '_attn_implementation', '?')}", flush=True)
    refs = {}
    for corpus, seqs in texts.items():
        check = seqs[:args.check]
        refs[corpus] = torch_embed(model, torch_batches(check, args.batch_tokens), len(check), hidden)
    model = model.half()
    model_dir = os.path.join(args.out, name)
    model.save_pretrained(model_dir, safe_serialization=True)
    budgets = [int(b) for b in args.torch_budgets.split(",")]
    torch_rows = {}
    for corpus, seqs in texts.items():
        seconds, budget = torch_best(model, seqs, hidden, budgets, args.passes)
        check = seqs[:args.check]
        torch16 = torch_embed(model, torch_batches(check, budget), len(check), hidden)
        torch_rows[corpus] = (seconds, budget, torch16)
    del model
    torch.cuda.empty_cache()

    # gpu_bench MODEL_DIR IDS.json OUT.npy PASSES BATCH_TOKENS [IDS2.json OUT2.npy ...]: the model
    # is loaded once for every corpus.
    files = []
    for i, seqs in enumerate(texts.values()):
        ids = os.path.join(args.out, f"ids-{i}.json")
        json.dump(seqs, open(ids, "w"))
        files.append((ids, os.path.join(args.out, f"{name}-{i}.npy")))
    cmd = [args.ember_bench, model_dir, *files[0], str(args.passes), str(args.batch_tokens)]
    for pair in files[1:]:
        cmd += list(pair)
    run = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(run.stderr[-4000:])
    timings = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or len(timings) != len(texts):
        print(f"{name}: ember failed (exit {run.returncode})", flush=True)
    rows = []
    for i, (corpus, seqs) in enumerate(texts.items()):
        tokens = sum(map(len, seqs))
        torch_s, budget, torch16 = torch_rows[corpus]
        ref = refs[corpus]
        row = {"model": name, "corpus": corpus, "sequences": len(seqs), "tokens": tokens,
               "torch_tps": tokens / torch_s, "torch_budget": budget,
               "cos_torch": (torch16 * ref).sum(-1).min().item(), "ember_ok": False}
        if i < len(timings):
            t = timings[i]
            # ember returns f16-rounded unit vectors; renormalize in f32 so that the cosine
            # measures direction only.
            ember = F.normalize(read_npy(os.path.join(args.out, f"{name}-{i}.npy"))[:len(ref)].cuda(), dim=-1)
            cos = (ember * ref).sum(-1)
            tflops = useful_flops(seqs, shape) / t["seconds"] / 1e12
            row.update({"ember_ok": True, "ember_tps": t["tokens_per_s"], "cos_min": cos.min().item(),
                        "cos_mean": cos.mean().item(), "tflops": tflops, "pct_peak": 100 * tflops / peak_tflops,
                        "busy_pct": 100 * t["gpu_busy_s"] / t["seconds"], "launches": t["launches_per_batch"],
                        "queue_pct": 100 * t["host_queue_s"] / max(t["gpu_busy_s"], 1e-9),
                        "peak_mib": (t["peak_device_bytes_after_warmup"] / 2**20, t["peak_device_bytes"] / 2**20)})
            print(f"{name} {corpus}: ember {row['ember_tps']:.0f} tok/s ({tflops:.0f} TFLOP/s useful, "
                  f"{row['pct_peak']:.0f} % of matmul, GPU busy {row['busy_pct']:.1f} %), torch fp16 "
                  f"{row['torch_tps']:.0f} tok/s (budget {budget}); cosine vs fp32 ember min {row['cos_min']:.6f} "
                  f"torch fp16 min {row['cos_torch']:.6f}", flush=True)
        rows.append(row)
    return rows


# ---- tables ------------------------------------------------------------------------------------------

def tables(card, args, peak, attention, rows):
    lines = [
        f"GPU: {card}. FP16 tensor-core rate measured with torch.matmul 8192^3: {peak:.0f} TFLOP/s.",
        "",
        f"Attention alone (seq {attention['seq']}, head dim {attention['head_dim']}, {attention['heads']} heads x "
        f"{attention['sequences']} sequences, no mask): ember {attention['ember']:.1f} TFLOP/s, "
        f"torch sdpa {attention['torch']:.1f} TFLOP/s.",
        "",
        f"End to end: random-weight BertModels, CLS + L2 normalize; ember batches of <= {args.batch_tokens} real "
        "tokens; torch fp16 sdpa, length-sorted padded batches at its best budget of "
        f"{args.torch_budgets} padded tokens. Useful TFLOP/s count real tokens only.",
        "",
        "| model | corpus | ember tok/s | torch fp16 tok/s (budget) | ember / torch | useful TFLOP/s (% of matmul) "
        "| GPU busy | host queueing / GPU time | launches / batch | peak MiB (warm / end) "
        "| cos ember vs fp32 (min / mean) | cos torch fp16 (min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        if not r["ember_ok"]:
            lines.append(f"| {r['model']} | {r['corpus']} | failed | {r['torch_tps']:,.0f} ({r['torch_budget']}) "
                         f"| | | | | | | | {r['cos_torch']:.6f} |")
            continue
        lines.append(
            f"| {r['model']} | {r['corpus']} | {r['ember_tps']:,.0f} | {r['torch_tps']:,.0f} ({r['torch_budget']}) "
            f"| {r['ember_tps'] / r['torch_tps']:.2f} | {r['tflops']:.0f} ({r['pct_peak']:.0f} %) "
            f"| {r['busy_pct']:.1f} % | {r['queue_pct']:.0f} % | {r['launches']:.0f} "
            f"| {r['peak_mib'][0]:.0f} / {r['peak_mib'][1]:.0f} "
            f"| {r['cos_min']:.6f} / {r['cos_mean']:.6f} | {r['cos_torch']:.6f} |")
    return "\n".join(lines)


def targets(rows, attention):
    """The issue's 'done when' speed targets, as MET / MISSED lines."""
    out = []

    def line(ok, text):
        out.append(f"{'MET   ' if ok else 'MISSED'} {text}")

    for r in rows:
        if r["corpus"] != "log-normal" or not r["ember_ok"]:
            continue
        want = 3.0 if r["model"] == "bge-small" else 2.0
        ratio = r["ember_tps"] / r["torch_tps"]
        line(ratio >= want, f"{r['model']} log-normal: ember / torch {ratio:.2f} (target >= {want})")
        if r["model"] == "bge-large":
            line(r["pct_peak"] >= 50, f"bge-large log-normal: {r['pct_peak']:.0f} % of the matmul rate (target >= 50)")
    line(attention["ember"] >= 250, f"attention seq 512 d 64: {attention['ember']:.0f} TFLOP/s (target >= 250)")
    return "\n".join(out)


# ---- the GEMM table (--gemm) ------------------------------------------------------------------

GEMM_NK = [(1152, 384), (384, 384), (1536, 384), (384, 1536),
           (2304, 768), (768, 768), (3072, 768), (768, 3072),
           (3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
GEMM_M = (1024, 8192, 16384)
GEMM_MAX_ERROR = 2e-3


def sampled_rows(m):
    return [(i * (m - 1)) // 63 for i in range(64)]


@torch.inference_mode()
def torch_gemm(m, n, k, min_ms):
    """torch.matmul(x, w.T) in f16 on cuBLAS: seconds per call (CUDA events) and error vs f64."""
    g = torch.Generator(device="cuda").manual_seed(m * 131 + n * 7 + k)
    x = (torch.rand(m, k, device="cuda", generator=g) * 2 - 1).half()
    w = ((torch.rand(n, k, device="cuda", generator=g) * 2 - 1) * (2 / math.sqrt(k))).half()
    run = lambda: torch.matmul(x, w.t())  # noqa: E731
    for _ in range(3):
        out = run()
    torch.cuda.synchronize()
    reps, total, batch = 0, 0.0, 10
    while total * 1e3 < min_ms or reps < 10:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            run()
        end.record()
        end.synchronize()
        total += start.elapsed_time(end) / 1e3
        reps += batch
        batch = min(batch * 2, 2000)
    rows = torch.tensor(sampled_rows(m), device="cuda")
    ref = x[rows].double() @ w.double().t()
    err = ((out[rows].double() - ref).norm() / ref.norm()).item()
    del x, w, out
    return total / reps, err


def gemm_table(args, card):
    shapes = [(m, n, k) for (n, k) in GEMM_NK for m in GEMM_M]
    spec = ",".join(f"{m}x{n}x{k}" for m, n, k in shapes)
    start = time.perf_counter()
    try:
        run = subprocess.run([args.ember_bench, "gemm", spec, str(args.gemm_min_ms)], capture_output=True,
                             text=True, timeout=args.gemm_timeout)
        stdout, stderr, rc = run.stdout, run.stderr, run.returncode
    except subprocess.TimeoutExpired as e:  # keep the shapes it finished
        as_text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")  # noqa: E731
        stdout, stderr, rc = as_text(e.stdout), as_text(e.stderr), f"timeout after {args.gemm_timeout:g} s"
    sys.stderr.write(stderr[-4000:])
    ember = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            ember[(r["m"], r["n"], r["k"])] = r
    print(f"ember gemm: {len(ember)} of {len(shapes)} shapes in {time.perf_counter() - start:.0f} s "
          f"(exit {rc})", flush=True)
    lines = [
        f"GPU: {card}. GEMM out[M,N] = x[M,K]·w[N,K]ᵀ, f16 in/out, f32 accumulate; ember `linear` (bias, no "
        f"activation) vs torch.matmul (cuBLAS, no bias); TFLOP/s = 2MNK / time per call (back-to-back calls, "
        f">= {args.gemm_min_ms:g} ms each); error = relative Frobenius vs float64 on 64 sampled rows.",
        "",
        "| M | N | K | ember kernel | ember TFLOP/s | ember sm80 TFLOP/s | torch TFLOP/s | ember / torch | bar | "
        "err ember | err torch | best sm90 tile |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    ok = rc == 0 and len(ember) == len(shapes)
    raw = []
    for m, n, k in shapes:
        t_s, t_err = torch_gemm(m, n, k, args.gemm_min_ms)
        t_tf = 2 * m * n * k / t_s / 1e12
        e = ember.get((m, n, k))
        raw.append((e or {"m": m, "n": n, "k": k}, t_tf, t_err))
        if e is None:
            lines.append(f"| {m} | {n} | {k} | (failed) | | | {t_tf:.0f} | | | | {t_err:.1e} | |")
            continue
        ratio = e["tflops"] / t_tf
        bar = ""
        if m >= 8192:
            bar = "ok" if ratio >= 0.9 else "below 0.9x"
        if (m, n, k) == (16384, 4096, 1024):
            bar += ", " + ("ok" if e["tflops"] >= 600 else "below 600")
        good = e["finite"] and e["rel_err"] <= GEMM_MAX_ERROR
        ok = ok and good
        tiles = e.get("tiles") or {}
        best = max(tiles.items(), key=lambda kv: kv[1], default=None)
        best = f"{best[0]} ({best[1]:.0f})" if best else ""
        lines.append(f"| {m} | {n} | {k} | {e['kernel']} | {e['tflops']:.0f} | {e['sm80_tflops']:.0f} | {t_tf:.0f} | "
                     f"{ratio:.2f} | {bar} | {e['rel_err']:.1e}{'' if good else ' FAIL'} | {t_err:.1e} | {best} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    open(os.path.join(args.out, "benchmarks.md"), "w").write(table + "\n")
    # Every figure, per-tile timings included, for retuning the tile table (gemm.rs).
    json.dump([dict(r, torch_tflops=tt, torch_err=te) for r, tt, te in raw], open(os.path.join(args.out, "gemm.json"), "w"),
              indent=1)
    print("\n" + table)
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember-bench", required=True, help="the gpu_bench test binary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sequences", type=int, default=2048, help="log-normal corpus size")
    ap.add_argument("--fixed-tokens", type=int, default=131072, help="tokens of each fixed-length corpus")
    ap.add_argument("--check", type=int, default=128, help="sequences per corpus compared against fp32")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16384, help="ember's token budget per batch")
    ap.add_argument("--torch-budgets", default="8192,16384,32768,65536", help="torch's padded-token budgets swept")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--gemm", action="store_true", help="the GEMM table instead of the models")
    ap.add_argument("--gemm-min-ms", type=float, default=40.0, help="timed milliseconds per shape and side")
    ap.add_argument("--gemm-timeout", type=float, default=120.0, help="seconds for ember's side of the table")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    card = torch.cuda.get_device_name()
    if args.gemm:
        gemm_table(args, card)
    texts = corpora(args)
    for corpus, seqs in texts.items():
        lengths = sorted(map(len, seqs))
        print(f"{card}: {corpus}: {len(seqs)} sequences, {sum(lengths)} tokens (median {lengths[len(lengths) // 2]}, "
              f"max {lengths[-1]})", flush=True)

    peak = measure_fp16_peak()
    print(f"{card}: torch.matmul f16 8192^3: {peak:.0f} TFLOP/s", flush=True)
    attention = attention_bench(args.ember_bench)
    rows = []
    for name in args.models.split(","):
        rows += end_to_end(args, name, SHAPES[name], texts, peak)

    table = tables(card, args, peak, attention, rows)
    goals = targets(rows, attention)
    open(os.path.join(args.out, "benchmarks.md"), "w").write(table + "\n\n```\n" + goals + "\n```\n")
    print("\n" + table + "\n\n" + goals)
    ok = attention["ok"] and all(r["ember_ok"] and r["cos_min"] >= MIN_COSINE for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
