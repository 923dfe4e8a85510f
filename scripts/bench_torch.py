"""PyTorch fp32 baseline through sentence-transformers, on the same corpus and threads as ember.
Prints one line of JSON: texts, tokens (as ember counts them: special tokens included, after
truncation to the model's max length), seconds (encode only, model already loaded), tokens/s.

usage: python3 scripts/bench_torch.py MODEL_DIR CORPUS.txt --threads 2 [--batch-size 32] [--repeat 3]
"""
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
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    with open(args.corpus, encoding="utf-8") as f:
        texts = f.read().split("\n")[:-1]
    model = SentenceTransformer(args.model, device="cpu")
    tok = model.tokenizer
    max_len = model.max_seq_length
    tokens = sum(len(tok(t, truncation=True, max_length=max_len)["input_ids"]) for t in texts)
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]
    print(json.dumps({"engine": f"pytorch {torch.__version__} fp32 (sentence-transformers)", "texts": len(texts),
                      "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best}))


if __name__ == "__main__":
    main()
