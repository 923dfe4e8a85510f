"""A plain numpy float64 BERT / XLM-R forward pass, written from the safetensors files alone.

make_fixtures.py checks transformers' outputs against it, so the fixtures provably hold the textbook
math that ember implements (src/model.rs): post-LayerNorm encoder, exact erf GELU unless the
config says gelu_new / gelu_pytorch_tanh, XLM-R positions from pad_token_id + 1, BERT classifier on
tanh(pooler(CLS)), XLM-R classifier dense -> tanh -> out_proj on <s>.
"""

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

_erf = np.vectorize(math.erf)


def load_tensors(model_dir):
    """Every tensor of the model's safetensors file(s), as float64 (bf16 read through torch)."""
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update({k: v.to(torch.float64).numpy() for k, v in load_file(str(f)).items()})
    return out


def _gelu(x, act):
    if act in ("gelu_new", "gelu_pytorch_tanh"):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert act == "gelu", act
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def forward(model_dir, ids, types, tensors=None):
    """Returns (last hidden state [tokens, hidden], logits or None) for one unpadded sequence."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    t = tensors if tensors is not None else load_tensors(model_dir)
    prefix = {"bert": "bert.", "xlm-roberta": "roberta."}[cfg["model_type"]]
    if not any(k.startswith(prefix) for k in t):
        prefix = ""
    W = lambda name: t[prefix + name]  # noqa: E731
    eps, act = cfg["layer_norm_eps"], cfg["hidden_act"]
    heads = cfg["num_attention_heads"]
    n = len(ids)
    start = cfg["pad_token_id"] + 1 if cfg["model_type"] == "xlm-roberta" else 0
    x = (W("embeddings.word_embeddings.weight")[ids]
         + W("embeddings.position_embeddings.weight")[start:start + n]
         + W("embeddings.token_type_embeddings.weight")[types])
    x = _ln(x, W("embeddings.LayerNorm.weight"), W("embeddings.LayerNorm.bias"), eps)
    lin = lambda x, name: x @ W(name + ".weight").T + W(name + ".bias")  # noqa: E731
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + "attention.self." + s) for s in ("query", "key", "value"))
        dh = q.shape[1] // heads
        ctx = np.zeros_like(q)
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            s = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx[:, sl] = (s / s.sum(-1, keepdims=True)) @ v[:, sl]
        x = _ln(lin(ctx, p + "attention.output.dense") + x,
                W(p + "attention.output.LayerNorm.weight"), W(p + "attention.output.LayerNorm.bias"),
                eps)
        f = lin(_gelu(lin(x, p + "intermediate.dense"), act), p + "output.dense")
        x = _ln(f + x, W(p + "output.LayerNorm.weight"), W(p + "output.LayerNorm.bias"), eps)
    logits = None
    if "classifier.weight" in t:  # BERT: classifier(tanh(pooler(CLS)))
        pooled = np.tanh(lin(x[0], "pooler.dense"))
        logits = pooled @ t["classifier.weight"].T + t["classifier.bias"]
    elif "classifier.out_proj.weight" in t:  # XLM-R: out_proj(tanh(dense(<s>)))
        hmid = np.tanh(x[0] @ t["classifier.dense.weight"].T + t["classifier.dense.bias"])
        logits = hmid @ t["classifier.out_proj.weight"].T + t["classifier.out_proj.bias"]
    return x, logits
