"""ember's Python package timed as a user calls it: ember.SentenceTransformer(MODEL).encode(texts)
on a corpus (one text per line), the model loaded and warmed up before the clock starts, as
scripts/bench/bench_torch.py times sentence-transformers and benches/encode.rs times the Rust library.
Prints one line of JSON in their format (texts, tokens, seconds, tokens/s) for
scripts/bench/compare_table.py.

usage: python scripts/bench/bench_python.py MODEL_DIR CORPUS.txt --threads 2 [--repeat 3] [--dtype f32|bf16]
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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = parser.parse_args()
    # ember's thread pool is rayon's global one: its size is read once, at the first parallel call.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    import ember

    with open(args.corpus, encoding="utf-8") as f:
        texts = f.read().split("\n")[:-1]
    model = ember.SentenceTransformer(args.model, dtype=args.dtype)
    # Tokens as ember and the other scripts count them: special tokens included, after truncation.
    tokens = sum(map(len, model.embedder.tokenize(texts, model.max_seq_length)))
    model.encode(texts[:64])  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        model.encode(texts)
        times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]
    print(json.dumps({"engine": f"ember {args.dtype} python {ember.__version__} (SentenceTransformer.encode)",
                      "texts": len(texts), "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best}))


if __name__ == "__main__":
    main()
