"""A stand-in for scripts/cuda/gpu_torch.py in scripts/cuda/gpu-dry-run.sh (no torch, no GPU here): the same
functions, answering with fixed figures, so that scripts/cuda/gpu_bench.py runs for real around them.
"""
import json
import os
import struct


def device_name():
    return "fake H100 (dry run)"


def matmul_peak(n=8192, iters=30):
    return 750.0


def sdpa_tflops(seq, heads, head_dim, sequences, repeats):
    return 300.0


def gemm(m, n, k, min_ms):
    return 2 * m * n * k / 700e12, 1.1e-4


class ModelRun:
    def __init__(self, name, shape, corpora, check, batch_tokens):
        self.name, self.shape, self.check = name, shape, check

    def save_f16(self, model_dir):
        os.makedirs(model_dir, exist_ok=True)
        hidden, layers, heads, inter = self.shape
        json.dump({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                   "intermediate_size": inter}, open(os.path.join(model_dir, "config.json"), "w"))

    def time_torch(self, corpus, seqs, budgets, passes):
        return sum(map(len, seqs)) / 1.0e6, budgets[min(1, len(budgets) - 1)], 0.99995

    def release_model(self):
        pass

    def ember_cosines(self, corpus, npy_path):
        raw = open(npy_path, "rb").read()
        assert raw[:6] == b"\x93NUMPY", f"{npy_path}: not a .npy"
        assert struct.unpack("<H", raw[8:10])[0] > 0
        return 0.99990, 0.99996
