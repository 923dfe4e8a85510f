"""Shrinks a BERT model folder for the GPU bundle (scripts/cuda/gpu-check.sh): weights stored as f16,
and the vocabulary cut to the tokens that the given texts use (plus every special token), with
the tokenizer, the word embedding table and config.json's vocab_size remapped together.

WordPiece is greedy longest-match-first, so a vocabulary that still holds every piece chosen
under the full vocabulary tokenizes those texts exactly as before: on them the trimmed model is
the real model, with f16 weights. Needs only the `tokenizers` package (no numpy, no torch).

usage: trim_model.py SRC_DIR DST_DIR TEXTS.json [PAIRS.json ...]
"""
import json
import os
import shutil
import struct
import sys

from tokenizers import Tokenizer


def texts_of(path):
    items = json.load(open(path))
    for item in items:
        if isinstance(item, str):
            yield item
        else:
            yield from (t for t in item if isinstance(t, str))


def main(src, dst, *text_files):
    tok_json = json.load(open(os.path.join(src, "tokenizer.json")))
    tokenizer = Tokenizer.from_str(json.dumps(tok_json))
    tokenizer.no_truncation()  # every token of a long text, whatever max length ember uses
    tokenizer.no_padding()
    used = set()
    for f in text_files:
        for text in texts_of(f):
            used.update(tokenizer.encode(text).ids)
    vocab = tok_json["model"]["vocab"]
    used.update(a["id"] for a in tok_json.get("added_tokens", []))
    used.add(vocab[tok_json["model"]["unk_token"]])
    keep = sorted(used)
    new_id = {old: new for new, old in enumerate(keep)}

    tok_json["model"]["vocab"] = {t: new_id[i] for t, i in vocab.items() if i in new_id}
    for a in tok_json.get("added_tokens", []):
        a["id"] = new_id[a["id"]]
    post = tok_json.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        for v in post["special_tokens"].values():
            v["ids"] = [new_id[i] for i in v["ids"]]
    elif post.get("type") in ("BertProcessing", "RobertaProcessing"):
        for k in ("sep", "cls"):
            post[k][1] = new_id[post[k][1]]
    if tok_json.get("padding"):
        tok_json["padding"]["pad_id"] = new_id[tok_json["padding"]["pad_id"]]

    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name in ("model.safetensors", "tokenizer.json", "vocab.txt", "config.json", "README.md"):
            continue
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(dst, name), dirs_exist_ok=True)
        else:
            shutil.copy(path, dst)
    json.dump(tok_json, open(os.path.join(dst, "tokenizer.json"), "w"), ensure_ascii=False)
    config = json.load(open(os.path.join(src, "config.json")))
    config["vocab_size"] = len(keep)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)

    # safetensors: u64 header size, JSON header, then the raw little-endian data.
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    tensors, blobs, offset = {}, [], 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        raw = data[begin:end]
        if meta["dtype"] != "F32":  # e.g. the position_ids buffer (I64): not a weight
            continue
        shape = list(meta["shape"])
        values = struct.unpack(f"<{len(raw) // 4}f", raw)
        if name.endswith("word_embeddings.weight"):
            cols = shape[1]
            values = [v for r in keep for v in values[r * cols:(r + 1) * cols]]
            shape[0] = len(keep)
        blob = struct.pack(f"<{len(values)}e", *values)
        tensors[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(tensors).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    print(f"trim_model: {dst}: {len(keep)} of {len(vocab)} tokens kept, {offset / 2**20:.1f} MiB of f16 weights")


if __name__ == "__main__":
    main(*sys.argv[1:])
