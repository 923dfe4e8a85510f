"""ONNX Runtime baseline on the same corpus and threads as ember: the sentence-transformers model
exported with torch.onnx.export, then optimized by onnxruntime.transformers.optimizer (model type
bert: fused attention, LayerNorm, GELU), run in fp32, or with --quantize int8 after
onnxruntime.quantization.quantize_dynamic of that optimized graph (int8 weights, activations
quantized per batch at run time: what fastembed and infinity ship). Mean pooling and L2
normalization as
sentence-transformers does them; texts sorted by length and batched by 32, as
SentenceTransformer.encode does. Timed: tokenization + inference + pooling (encode only, model
loaded and warmed up). Prints one line of JSON like bench_torch.py.

usage: python3 scripts/bench/bench_ort.py MODEL_DIR CORPUS.txt --threads 2 [--batch-size 32] [--repeat 3]
       [--work DIR]   (where the exported .onnx files go; default .cache/bench)
       [--quantize none|int8] [--max-length N]   (default 256, sentence-transformers' MiniLM)
"""
import argparse
import json
import os
import time


def quantized(optimized):
    """The optimized graph with int8 weights (dynamic quantization); returns its path."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = optimized.replace("-opt.onnx", "-opt-int8.onnx")
    if not os.path.exists(out):
        # The fused ops of the optimized graph (com.microsoft domain) defeat shape inference;
        # their outputs are float tensors.
        quantize_dynamic(optimized, out, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def export(model_dir, work):
    """Exports BertModel (last_hidden_state) and optimizes it; returns the optimized path, named
    after the model folder so that several models can share `work`."""
    import torch
    from transformers import AutoModel
    from onnxruntime.transformers import optimizer

    name = os.path.basename(os.path.normpath(model_dir))
    raw = os.path.join(work, f"{name}.onnx")
    optimized = os.path.join(work, f"{name}-opt.onnx")
    if os.path.exists(optimized):
        return optimized
    # Eager attention: the optimizer fuses its pattern into one Attention op (not that of SDPA).
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Wrapper(torch.nn.Module):  # keyword arguments: positional order varies across versions
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), raw,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in
                          ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17, dynamo=False)
    config = model.config
    opt = optimizer.optimize_model(raw, model_type="bert", num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=1)
    opt.save_model_to_file(optimized)
    return optimized


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=".cache/bench")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    os.makedirs(args.work, exist_ok=True)
    path = export(args.model, args.work)
    if args.quantize == "int8":
        path = quantized(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(args.model)
    max_len = min(tok.model_max_length, args.max_length)
    with open(args.corpus, encoding="utf-8") as f:
        texts = f.read().split("\n")[:-1]
    tokens = sum(len(tok(t, truncation=True, max_length=max_len)["input_ids"]) for t in texts)

    def encode(batch_texts):
        order = sorted(range(len(batch_texts)), key=lambda i: -len(batch_texts[i]))
        out = [None] * len(batch_texts)
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            enc = tok([batch_texts[i] for i in idx], padding=True, truncation=True, max_length=max_len,
                      return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}
            hidden = session.run(None, feeds)[0]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            for row, i in zip(pooled, idx):
                out[i] = row
        return np.stack(out)

    encode(texts[:64])  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - start)
    best = sorted(times)[len(times) // 2]
    how = "int8 (dynamic quantization of the optimized graph)" if args.quantize == "int8" else \
        "fp32 (optimized bert graph)"
    print(json.dumps({"engine": f"onnxruntime {ort.__version__} {how}",
                      "texts": len(texts), "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best}))


if __name__ == "__main__":
    main()
