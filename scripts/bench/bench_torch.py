"""PyTorch baseline through sentence-transformers, on the same corpus and threads as ember, in
fp32 or in bf16 the way a user gets it on a CPU: fp32 weights under torch.autocast("cpu",
bfloat16), which runs the matrix products through oneDNN (on AMX where the CPU has it).
Prints one line of JSON: texts, tokens (as ember counts them: special tokens included, after
truncation to the max length), seconds (encode only, model already loaded), tokens/s.

usage: python3 scripts/bench/bench_torch.py MODEL_DIR CORPUS.txt --threads 2 [--batch-size 32] [--repeat 3]
       [--dtype fp32|bf16] [--max-length N]   (default: the model's own max_seq_length)
"""
import contextlib
import argparse
import json
import os
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--max-length", type=int)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    with open(args.corpus, encoding="utf-8") as f:
        texts = f.read().split("\n")[:-1]
    model = SentenceTransformer(args.model, device="cpu")
    if args.max_length:
        model.max_seq_length = args.max_length
    tok = model.tokenizer
    max_len = model.max_seq_length
    tokens = sum(len(tok(t, truncation=True, max_length=max_len)["input_ids"]) for t in texts)

    def precision():
        if args.dtype == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    with precision():
        model.encode(texts[:64], batch_size=args.batch_size)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            model.encode(texts, batch_size=args.batch_size)
            times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]
    how = "autocast bf16" if args.dtype == "bf16" else "fp32"
    print(json.dumps({"engine": f"pytorch {torch.__version__} {how} (sentence-transformers)", "texts": len(texts),
                      "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best}))


if __name__ == "__main__":
    main()
