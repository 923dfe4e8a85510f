"""Writes a BertModel folder with random weights in the shape of a bge model, for CPU benchmarks
of models larger than the real test model: config.json, model.safetensors, and the tokenizer
files of another model folder (bge and MiniLM share bert-base-uncased's 30,522-token WordPiece
vocabulary). No sentence-transformers files: engines fall back to their defaults, and the
benchmarks pass the max length explicitly.

LayerNorm weights are drawn around 1 and 0, as a trained model's are, rather than left at
exactly 1 and 0; linear weights keep transformers' initialization (std 0.02).

usage: python3 scripts/bench/make_random_bert.py OUT_DIR --shape bge-small|bge-base|bge-large
       [--tokenizer-from DIR]   (default .cache/models/all-MiniLM-L6-v2)
"""
import argparse
import os
import shutil

SHAPES = {  # hidden, layers, heads, intermediate
    "bge-small": (384, 12, 12, 1536),
    "bge-base": (768, 12, 12, 3072),
    "bge-large": (1024, 24, 16, 4096),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bge-base")
    parser.add_argument("--tokenizer-from", default=".cache/models/all-MiniLM-L6-v2")
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.out, "model.safetensors")):
        print(f"{args.out}: already there")
        return
    import torch
    from transformers import BertConfig, BertModel

    hidden, layers, heads, inter = SHAPES[args.shape]
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inter, vocab_size=30522, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = os.path.join(args.tokenizer_from, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    print(f"{args.out}: random {args.shape} ({hidden} hidden, {layers} layers, {heads} heads, {inter} FFN)")


if __name__ == "__main__":
    main()
