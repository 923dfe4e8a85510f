"""ember against PyTorch fp16 (sdpa) on the GPU machine; run by scripts/gpu-run.sh from the bundle.

For each of three random-weight BertModels shaped like bge-small, bge-base and bge-large (built
here with transformers, saved as f16 safetensors for ember), on one log-normal length mix of
random token ids (median 56 tokens, as the design's anchor corpus, clipped to [8, 512]):
  - cosine of ember's and torch fp16's CLS embeddings (L2-normalized) against torch fp32 on a
    subset, worst and mean;
  - tokens per second of both (best of a few passes, real tokens only: padding is torch's cost),
    both fed batches of at most the same number of tokens, torch's sorted by length and padded.
Prints one short table last and writes it (markdown) to OUT/benchmarks.md with the card's name.
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


def corpus(n, seed):
    rng = random.Random(seed)
    seqs = []
    for _ in range(n):
        length = int(min(512, max(8, round(rng.lognormvariate(math.log(56), 0.7)))))
        seqs.append([101] + [rng.randrange(1000, 30000) for _ in range(length - 2)] + [102])
    return seqs


def read_npy(path):
    raw = open(path, "rb").read()
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = raw[10:10 + header_len].decode()
    rows, cols = [int(v) for v in header.split("(")[1].split(")")[0].split(",") if v.strip()]
    return torch.frombuffer(bytearray(raw[10 + header_len:]), dtype=torch.float32).reshape(rows, cols)


def torch_batches(seqs, budget):
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
        out.append((b, ids, mask))
    return out


@torch.inference_mode()
def torch_embed(model, batches, n, dim, dtype):
    result = torch.empty(n, dim, dtype=torch.float32, device="cuda")
    for b, ids, mask in batches:
        hidden = model(input_ids=ids.cuda(non_blocking=True), attention_mask=mask.cuda(non_blocking=True)).last_hidden_state
        result[torch.tensor(b, device="cuda")] = F.normalize(hidden[:, 0].float(), dim=-1)
    torch.cuda.synchronize()
    return result


def timed(fn, passes):
    fn()  # warm-up
    best = float("inf")
    for _ in range(passes):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember-bench", required=True, help="the gpu_bench test binary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sequences", type=int, default=2048)
    ap.add_argument("--check", type=int, default=256, help="sequences compared against fp32")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--models", default=",".join(SHAPES))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    card = torch.cuda.get_device_name()
    seqs = corpus(args.sequences, seed=2026)
    tokens = sum(map(len, seqs))
    ids_path = os.path.join(args.out, "ids.json")
    json.dump(seqs, open(ids_path, "w"))
    print(f"{card}: {len(seqs)} sequences, {tokens} tokens (median {sorted(map(len, seqs))[len(seqs) // 2]})", flush=True)

    rows = []
    for name in args.models.split(","):
        hidden, layers, heads, inter = SHAPES[name]
        torch.manual_seed(0)
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, vocab_size=30522, max_position_embeddings=512)
        try:
            config._attn_implementation = "sdpa"  # the default on recent transformers anyway
        except Exception as e:  # noqa: BLE001 - older or newer transformers spell it differently
            print(f"note: could not ask for sdpa explicitly ({e})", flush=True)
        model = BertModel(config, add_pooling_layer=False).eval().cuda()
        print(f"{name}: torch attention = {getattr(model.config, '_attn_implementation', '?')}", flush=True)
        # Weights a trained model would have rather than init noise: LayerNorm not exactly 1 / 0.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    m.weight.uniform_(0.8, 1.2)
                    m.bias.uniform_(-0.1, 0.1)
        check = seqs[:args.check]
        ref = torch_embed(model, torch_batches(check, args.batch_tokens), len(check), hidden, torch.float32)
        model = model.half()
        model_dir = os.path.join(args.out, name)
        model.save_pretrained(model_dir, safe_serialization=True)

        batches = torch_batches(seqs, args.batch_tokens)
        torch_s = timed(lambda: torch_embed(model, batches, len(seqs), hidden, torch.float16), args.passes)
        torch16 = torch_embed(model, torch_batches(check, args.batch_tokens), len(check), hidden, torch.float16)
        del model
        torch.cuda.empty_cache()

        npy = os.path.join(args.out, f"{name}.npy")
        run = subprocess.run([args.ember_bench, model_dir, ids_path, npy, str(args.passes), str(args.batch_tokens)],
                             capture_output=True, text=True)
        sys.stderr.write(run.stderr[-4000:])
        if run.returncode != 0:
            print(f"{name}: ember failed (exit {run.returncode})", flush=True)
            rows.append((name, float("nan"), tokens / torch_s, float("nan"), float("nan"), float("nan")))
            continue
        timing = json.loads(run.stdout.strip().splitlines()[-1])
        # ember returns f16-rounded unit vectors; renormalize in f32 so that the cosine measures
        # direction only.
        ember = F.normalize(read_npy(npy)[:len(check)].cuda(), dim=-1)
        cos_ember = (ember * ref).sum(-1)
        cos_torch = (torch16 * ref).sum(-1)
        rows.append((name, timing["tokens_per_s"], tokens / torch_s, cos_ember.min().item(),
                     cos_ember.mean().item(), cos_torch.min().item()))
        print(f"{name}: ember {timing['tokens_per_s']:.0f} tok/s, torch fp16 {tokens / torch_s:.0f} tok/s, "
              f"cosine vs fp32 ember min {cos_ember.min().item():.6f} torch fp16 min {cos_torch.min().item():.6f}",
              flush=True)

    lines = [
        f"GPU: {card}; {len(seqs)} sequences, {tokens} tokens, log-normal lengths (median 56, 8..512); "
        f"batches of <= {args.batch_tokens} tokens; random-weight BertModels; CLS + L2 normalize.",
        "",
        "| model | ember tok/s | torch fp16 sdpa tok/s | ember / torch | cos ember vs fp32 (min / mean) | cos torch fp16 vs fp32 (min) |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, e, t, cmin, cmean, tmin in rows:
        lines.append(f"| {name} | {e:,.0f} | {t:,.0f} | {e / t:.2f} | {cmin:.6f} / {cmean:.6f} | {tmin:.6f} |")
    table = "\n".join(lines)
    open(os.path.join(args.out, "benchmarks.md"), "w").write(table + "\n")
    print("\n" + table)
    ok = all(r[3] >= 0.9995 for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
