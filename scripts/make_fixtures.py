#!/usr/bin/env python3
"""Generates ember's reference fixtures (fixtures/): texts, pairs, the float64 Hugging Face reference
for the real all-MiniLM-L6-v2, and nine tiny random-weight models with their references.

    python scripts/make_fixtures.py --minilm .cache/models/all-MiniLM-L6-v2 --out fixtures

(scripts/make-fixtures.sh builds a throwaway venv and runs this.) Deterministic: fixed seeds, one thread
for the tokenizer trainers. Reference math: transformers with eager attention, float64, every input
alone (batch of one, no padding anywhere). Tokenization follows ember's rules (src/tokenize.rs):

- single text: specials kept, content cut from the right to max_length;
- pair: budget = max_length - pair specials; fits -> as is; len(q) < budget -> only_second; else
  longest_first;
- a query instruction is a plain prefix of the text;
- default max length: sentence_bert_config.json max_seq_length, else 512, clipped to
  max_position_embeddings - position offset (pad_token_id + 1 for xlm-roberta, 0 for bert);
- XLM-R (type_vocab_size 1): all type ids 0.

The ids come from the `tokenizers` library (the crate ember uses) and are cross-checked against
transformers' tokenizer call with the matching truncation strategy and against a plain-Python splice.
"""

import argparse
import collections
import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

# Before tokenizers / torch load: one thread for the trainers (determinism), no hub access.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import (  # noqa: E402
    Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers)
from transformers import (  # noqa: E402
    BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast,
    XLMRobertaConfig, XLMRobertaForSequenceClassification)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture_numpy_bert  # noqa: E402
from fixture_texts import EXTRA_CORPUS, base_pairs, base_texts  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))
transformers.logging.set_verbosity_error()

INSTRUCTION = "Represent this sentence for searching relevant passages: "


# ---------------------------------------------------------------------------------------------
# JSON: dicts one key a line, strings one a line, lists of numbers on one line (readable diffs,
# compact files).
# Floats are Python floats (float64), written by json with full round-trip precision.

def dumps(obj, indent=0):
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k)}: {dumps(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(x, (list, dict, str)) for x in obj):
        items = [f"{pad} {dumps(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, list):
        return "[" + ",".join(dumps(x) for x in obj) + "]"
    if isinstance(obj, float):
        assert math.isfinite(obj), obj
        return json.dumps(obj)
    return json.dumps(obj, ensure_ascii=False)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(obj) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tokenization under ember's rules.

class Tok:
    """tokenizer.json with padding and truncation off; ember's truncation rules on top."""

    def __init__(self, path, single_type_id):
        self.path = str(path)
        self.tk = Tokenizer.from_file(self.path)
        self.tk.no_padding()
        self.tk.no_truncation()
        self.hf = PreTrainedTokenizerFast(tokenizer_file=self.path)
        self.single_type_id = single_type_id
        self.only_second_raised = 0
        self.n_single = self.tk.num_special_tokens_to_add(False)
        self.n_pair = self.tk.num_special_tokens_to_add(True)
        # The specials around the content, read from the post-processor itself.
        empty = self.tk.post_process(self.tk.encode("", add_special_tokens=False))
        self.single_specials = list(empty.ids)
        assert len(self.single_specials) == self.n_single

    def content(self, text):
        return list(self.tk.encode(text, add_special_tokens=False).ids)

    def _encode(self, a, b, max_length, strategy):
        if strategy is None:
            self.tk.no_truncation()
        else:
            self.tk.enable_truncation(max_length, strategy=strategy)
        try:
            enc = self.tk.encode(a, b) if b is not None else self.tk.encode(a)
        finally:
            self.tk.no_truncation()
        ids, types = list(enc.ids), list(enc.type_ids)
        # Cross-check against transformers' own call with the same strategy.
        # Batch form, as sentence-transformers' CrossEncoder calls it: the unbatched call treats an
        # empty text_pair "" as no pair at all and drops the second separator.
        args = ([a],) if b is None else ([a], [b])
        hf = self.hf(*args, add_special_tokens=True, padding=False, return_token_type_ids=True,
                     truncation=strategy if strategy else False,
                     max_length=max_length if strategy else None)
        assert list(hf["input_ids"][0]) == ids, (a[:40], b and b[:40])
        assert list(hf["token_type_ids"][0]) == types
        assert len(ids) <= max_length
        if self.single_type_id:
            types = [0] * len(ids)
        return ids, types

    def single(self, text, max_length):
        ids, types = self._encode(text, None, max_length, "longest_first")
        # Plain splice: specials around the content cut to what fits.
        content = self.content(text)[: max_length - self.n_single]
        first, last = self.single_specials[0], self.single_specials[-1]
        assert ids == [first] + content + [last], text[:40]
        return ids, types

    def pair(self, query, passage, max_length):
        q, p = self.content(query), self.content(passage)
        budget = max_length - self.n_pair
        if len(q) + len(p) <= budget:
            strategy = None
        elif len(q) < budget:
            strategy = "only_second"
        else:
            strategy = "longest_first"
        ids, types = self._encode(query, passage, max_length, strategy)
        if strategy == "longest_first":
            # Why the rule falls back: only_second cannot make room when the query fills the budget.
            try:
                self.hf([query], [passage], truncation="only_second", max_length=max_length)
            except Exception:  # noqa: BLE001 (tokenizers raises a plain Exception)
                self.only_second_raised += 1
            else:
                raise AssertionError("only_second unexpectedly fit a query over the budget")
        if strategy != "longest_first":
            # Plain splice: the query whole, the passage cut to what is left of the budget.
            expect = self.splice_pair(q, p[: budget - len(q)] if strategy else p)
            assert ids == expect, (query[:40], passage[:40])
        return ids, types, strategy

    def splice_pair(self, q, p):
        cls_, sep = self.single_specials[0], self.single_specials[-1]
        if self.n_pair == 3:  # BERT: [CLS] q [SEP] p [SEP]
            return [cls_] + q + [sep] + p + [sep]
        assert self.n_pair == 4  # XLM-R: <s> q </s></s> p </s>
        return [cls_] + q + [sep, sep] + p + [sep]


def default_settings(model_dir):
    """What a model's own files imply: pooling, normalize, max_length (ember's rules)."""
    d = Path(model_dir)
    cfg = json.loads((d / "config.json").read_text())
    offset = cfg["pad_token_id"] + 1 if cfg["model_type"] == "xlm-roberta" else 0
    limit = cfg["max_position_embeddings"] - offset
    max_length = 512
    sbert = d / "sentence_bert_config.json"
    if sbert.exists():
        max_length = json.loads(sbert.read_text()).get("max_seq_length") or 512
    max_length = min(max_length, limit)
    pooling, normalize = "cls", False
    modules = d / "modules.json"
    if modules.exists():
        mods = json.loads(modules.read_text())
        normalize = any(m["type"].endswith(".Normalize") for m in mods)
        for m in mods:
            if m["type"].endswith(".Pooling"):
                pc = json.loads((d / m["path"] / "config.json").read_text())
                pooling = "cls" if pc.get("pooling_mode_cls_token") else "mean"
                assert pc.get("pooling_mode_mean_tokens") == (pooling == "mean")
    return pooling, normalize, max_length


# ---------------------------------------------------------------------------------------------
# Reference forward passes (float64, batch of one, no padding).

def load_f64(cls, model_dir):
    model, info = cls.from_pretrained(str(model_dir), attn_implementation="eager",
                                      output_loading_info=True)
    missing = [k for k in info["missing_keys"]]
    unexpected = [k for k in info["unexpected_keys"]]
    assert not missing and not unexpected, (model_dir, missing, unexpected)
    return model.double().eval()


def hidden(model, ids, types):
    assert ids, "a sequence has at least its special tokens"
    pad = getattr(model.config, "pad_token_id", None)
    if model.config.model_type == "xlm-roberta":
        # HF derives position ids from input_ids != pad; without pad tokens they are pad+1+i.
        assert pad not in ids
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    h = out.last_hidden_state[0]
    assert h.dtype == torch.float64
    return h


def embed(model, ids, types, pooling, normalize):
    h = hidden(model, ids, types)
    v = h[0] if pooling == "cls" else h.mean(dim=0)
    if normalize:
        v = v / v.norm().clamp_min(1e-12)
    return v.tolist()


def logits(model, ids, types):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert out.logits.dtype == torch.float64
    return out.logits[0].tolist()


def embed_run(model, tok, texts, name, indices, pooling, normalize, max_length, instruction=None,
              uses_defaults=False):
    run = {"name": name, "uses_defaults": uses_defaults, "pooling": pooling, "normalize": normalize,
           "max_length": max_length, "query_instruction": instruction, "texts": indices,
           "token_ids": [], "type_ids": [], "embeddings": []}
    for i in indices:
        text = (instruction or "") + texts[i]
        ids, types = tok.single(text, max_length)
        run["token_ids"].append(ids)
        run["type_ids"].append(types)
        run["embeddings"].append(embed(model, ids, types, pooling, normalize))
    check_distinct(run["token_ids"], run["embeddings"], f"{name}")
    return run


def hidden_fixture(model, tok, texts, indices, max_length):
    fx = {"max_length": max_length, "texts": indices, "token_ids": [], "type_ids": [],
          "last_hidden_state": []}
    for i in indices:
        ids, types = tok.single(texts[i], max_length)
        fx["token_ids"].append(ids)
        fx["type_ids"].append(types)
        fx["last_hidden_state"].append(hidden(model, ids, types).tolist())
    return fx


def check_numpy(model_dir, fx, limit=None):
    """transformers' float64 numbers against the plain numpy forward pass (fixture_numpy_bert):
    fx is a run (embeddings), the hidden_states fixture, or a cross-encoder fixture (logits)."""
    tensors = fixture_numpy_bert.load_tensors(model_dir)
    worst = 0.0
    for k, (ids, types) in enumerate(list(zip(fx["token_ids"], fx["type_ids"]))[:limit]):
        h, lg = fixture_numpy_bert.forward(model_dir, ids, types, tensors)
        if "last_hidden_state" in fx:
            got, want = h, fx["last_hidden_state"][k]
        elif "logits" in fx:
            got, want = lg, fx["logits"][k]
        else:
            got = h[0] if fx["pooling"] == "cls" else h.mean(0)
            if fx["normalize"]:
                got = got / max(np.linalg.norm(got), 1e-12)
            want = fx["embeddings"][k]
        worst = max(worst, float(np.abs(got - np.array(want)).max()))
    assert worst < 1e-9, (model_dir, worst)
    return worst


def check_distinct(token_ids, vectors, what):
    """Different token sequences must give clearly different outputs (catches constant models)."""
    arr = np.array(vectors)
    for a in range(len(arr)):
        for b in range(a + 1, len(arr)):
            if token_ids[a] == token_ids[b]:
                assert np.array_equal(arr[a], arr[b]), (what, a, b)
            else:
                assert np.abs(arr[a] - arr[b]).max() > 1e-4, (what, a, b)


def spread_of(vectors):
    return float(np.array(vectors).std(axis=0).mean())


# ---------------------------------------------------------------------------------------------
# Texts

def fill_to(tok_content, base, target, filler=" and"):
    """base + sentences/fillers whose content tokenizes to exactly `target` tokens."""
    text = base
    n = len(tok_content(text))
    assert n <= target, (n, target)
    while n < target:
        nxt = text + filler
        m = len(tok_content(nxt))
        assert m == n + 1, (filler, n, m)
        text, n = nxt, m
    return text


def edge_base(tok_content, sentences, target):
    """Whole sentences while they fit under target - 8 content tokens."""
    text = ""
    for s in sentences:
        cand = (text + " " + s).strip()
        if len(tok_content(cand)) > target - 8:
            break
        text = cand
    return text


# ---------------------------------------------------------------------------------------------
# Tiny tokenizers, trained on the fixture texts and an extra corpus.

def wordpiece_vocab(words, vocab_size, specials, min_char_count=2):
    """A WordPiece vocabulary learned the way the tokenizers library's WordPieceTrainer does (BPE
    merges over "##"-continued symbols), but deterministic: that trainer breaks ties in hash-map
    order, so its vocabulary changes from run to run. Ties here go to the smaller pair."""
    chars = collections.Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
    # Characters seen once stay out: words that hold one become [UNK], as in real vocabularies.
    alphabet = {ch for ch, c in chars.items() if c >= min_char_count}
    seqs = {}
    for w in words:
        if all(ch in alphabet for ch in w):
            seqs[w] = [w[0]] + ["##" + ch for ch in w[1:]]
    vocab = list(specials)
    vocab += sorted({sym for seq in seqs.values() for sym in seq})
    known = set(vocab)
    while len(vocab) < vocab_size:
        pairs = collections.Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b[2:]
        for w, seq in seqs.items():
            i, out = 0, []
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return {tok: i for i, tok in enumerate(vocab)}


def train_wordpiece(corpus, vocab_size):
    """Lowercasing BERT tokenizer (BertNormalizer, BertPreTokenizer, [CLS] $A [SEP] template)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                      strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = collections.Counter()
    for text in corpus:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            words[w] += 1
    vocab = wordpiece_vocab(words, vocab_size, specials)
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = norm
    tk.pre_tokenizer = pre
    tk.add_special_tokens(specials)
    ids = {t: tk.token_to_id(t) for t in specials}
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}, ids
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tk.decoder = decoders.WordPiece(prefix="##")
    return tk


def train_unigram(corpus, vocab_size):
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                          normalizers.Replace(Regex(" {2,}"), " ")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
        max_piece_length=12, shrinking_factor=0.75, n_sub_iterations=2, show_progress=False)
    tk.train_from_iterator(corpus, trainer=trainer)
    # The trainer's piece set is stable, but its scores differ in the last bits from run to run
    # (summation in hash-map order) and equal scores come out in any order: round the scores
    # and sort to make the file reproducible.
    pieces = json.loads(tk.to_str())["model"]["vocab"]
    specials = [p for p in pieces[:4]]
    assert [p for p, _ in specials] == ["<s>", "<pad>", "</s>", "<unk>"], specials
    rest = sorted(((p, round(sc, 4)) for p, sc in pieces[4:]), key=lambda ps: (-ps[1], ps[0]))
    # Characters the trainer had to keep come last, scored min, min - 1e-4, ... in hash-set order:
    # give that run's scores to its characters in code point order.
    k = len(rest)
    while k > 1 and len(rest[k - 1][0]) == 1 and abs(rest[k - 2][1] - rest[k - 1][1] - 1e-4) < 5e-6:
        k -= 1
    if len(rest[k - 1][0]) == 1:
        k -= 1
    tail_chars = sorted(p for p, _ in rest[k:])
    rest = rest[:k] + list(zip(tail_chars, [sc for _, sc in rest[k:]]))
    tk.model = models.Unigram([(p, 0.0) for p, _ in specials] + rest, unk_id=3, byte_fallback=False)
    tk.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    ids = {t: tk.token_to_id(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}
    v = tk.get_vocab_size(with_added_tokens=True)
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": v - 1}, ids
    tk.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tk


# ---------------------------------------------------------------------------------------------
# Tiny models: random weights with spread (an init-like model hides swapped tensors).

def redraw(model, seed):
    """Every parameter re-drawn. Linear weights N(0, 0.08) keep activations O(1); query and key
    weights N(0, 0.2) make attention scores spread (std ~2.5) so that a mistake in the score path
    (scale, mask, transposition) shows, instead of hiding behind near-uniform attention."""
    g = torch.Generator().manual_seed(seed)
    qk = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith(("query.weight", "key.weight")):
                qk += 1
                p.copy_((torch.randn(shape, generator=g) * 0.2).to(p.dtype))
                continue
            if "LayerNorm" in name or "layer_norm" in name:
                lo, hi = (0.6, 1.4) if name.endswith("weight") else (-0.3, 0.3)
                new = torch.empty(shape).uniform_(lo, hi, generator=g)
            elif "embeddings" in name:
                new = torch.randn(shape, generator=g) * 0.6
            elif name.endswith("bias"):
                new = torch.empty(shape).uniform_(-0.2, 0.2, generator=g)
            else:
                new = torch.randn(shape, generator=g) * 0.08
            p.copy_(new.to(p.dtype))
    assert qk == 2 * model.config.num_hidden_layers, qk


def calibrate_head(model, head_weight, head_bias, batches, target_std=2.0):
    """Scales the last linear so logits over `batches` have std target_std and mean 0.4."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = [m(input_ids=torch.tensor([i]), token_type_ids=torch.tensor([t])).logits[0, 0].item()
               for i, t in batches]
    std, mean = float(np.std(out)), float(np.mean(out))
    scale = target_std / std
    with torch.no_grad():
        w = dict(model.named_parameters())[head_weight]
        b = dict(model.named_parameters())[head_bias]
        w.mul_(scale)
        b.copy_((b.double() * scale - mean * scale + 0.4).to(b.dtype))


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def save_variant(model, out_dir, dtype_name):
    """Saves model in the given dtype (bf16 sharded) and returns the saved tensor names."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    m = copy.deepcopy(model).to(DTYPES[dtype_name])
    shard = "100KB" if dtype_name == "bf16" else "50GB"
    m.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=shard)
    names, dtypes = [], set()
    files = sorted(out_dir.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                names.append(k)
                dtypes.add(st.get_tensor(k).dtype)
    assert dtypes == {DTYPES[dtype_name]}, (out_dir, dtypes)
    if dtype_name == "bf16":
        assert (out_dir / "model.safetensors.index.json").exists() and len(files) > 2, files
    else:
        assert [f.name for f in files] == ["model.safetensors"], files
    # The reloaded float64 model must hold exactly the rounded weights.
    ref = {k: v.double() for k, v in m.state_dict().items()}
    return sorted(names), ref


def check_loaded(model64, ref):
    sd = model64.state_dict()
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k


def copy_tokenizer(tk, out_dir):
    tk.save(str(out_dir / "tokenizer.json"))


def write_st_files(out_dir, max_seq_length, hidden_size):
    write_json(out_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}])
    write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(out_dir / "sentence_bert_config.json",
               {"max_seq_length": max_seq_length, "do_lower_case": False})


def st_crosscheck(model_dir, texts, run, min_cos=0.9999):
    """sentence-transformers (float32) must agree with the float64 default run."""
    from sentence_transformers import SentenceTransformer
    # float32 compute even for f16/bf16 files: the rounded weights upcast exactly.
    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    assert st.max_seq_length == run["max_length"], (st.max_seq_length, run["max_length"])
    sel = [texts[i] for i in run["texts"]]
    prep = st.preprocess(sel) if hasattr(st, "preprocess") else st.tokenize(sel)
    for row, (ids, mask) in enumerate(zip(prep["input_ids"].tolist(),
                                          prep["attention_mask"].tolist())):
        assert [t for t, m in zip(ids, mask) if m] == run["token_ids"][row], (model_dir, row)
    got = st.encode(sel, convert_to_numpy=True, batch_size=8).astype(np.float64)
    ref = np.array(run["embeddings"])
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > min_cos, (model_dir, cos.min())
    return float(cos.min())


# ---------------------------------------------------------------------------------------------

def generator_info():
    return {"script": "scripts/make_fixtures.py", "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def make_minilm(minilm_dir, out, texts, short_idx, hidden_idx):
    tok = Tok(Path(minilm_dir) / "tokenizer.json", single_type_id=False)
    model = load_f64(BertModel, minilm_dir)
    pooling, normalize, max_length = default_settings(minilm_dir)
    assert (pooling, normalize, max_length) == ("mean", True, 256)
    all_idx = list(range(len(texts)))
    runs = [
        embed_run(model, tok, texts, "st_defaults", all_idx, pooling, normalize, max_length,
                  uses_defaults=True),
        embed_run(model, tok, texts, "cls_512", all_idx, "cls", True, 512),
        embed_run(model, tok, texts, "queries_instruction", short_idx, "cls", True, 512,
                  instruction=INSTRUCTION),
    ]
    cos = st_crosscheck(minilm_dir, texts, runs[0])
    print(f"minilm: sentence-transformers float32 vs float64 reference: min cosine {cos:.9f}")
    for r in runs:
        print(f"minilm {r['name']}: spread {spread_of(r['embeddings']):.4f}, "
              f"lengths {sorted(len(t) for t in r['token_ids'])[-3:]} (longest)")
    gen = generator_info()
    gen["source_sha256"] = {name: hashlib.sha256((Path(minilm_dir) / name).read_bytes()).hexdigest()
                            for name in ["model.safetensors", "tokenizer.json"]}
    fx = {"model": "all-MiniLM-L6-v2", "kind": "embedder", "stored_dtype": "f32",
          "generator": gen, "runs": runs,
          "hidden_states": hidden_fixture(model, tok, texts, hidden_idx, 256)}
    worst = max([check_numpy(minilm_dir, fx["hidden_states"])]
                + [check_numpy(minilm_dir, r, limit=8) for r in runs])
    print(f"minilm: numpy float64 forward pass agrees to {worst:.1e}")
    write_json(out / "minilm" / "expected.json", fx)


def make_tiny_embed(out, wp, texts, short_idx, hidden_idx):
    vocab = wp.get_vocab_size(with_added_tokens=True)
    cfg = BertConfig(vocab_size=vocab, hidden_size=64, num_attention_heads=2, intermediate_size=96,
                     num_hidden_layers=2, max_position_embeddings=64, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
                     architectures=["BertModel"])
    torch.manual_seed(1)
    model = BertModel(cfg).float()
    redraw(model, seed=101)
    all_idx = list(range(len(texts)))
    for dt in ["f32", "f16", "bf16"]:
        d = out / f"tiny-bert-embed-{dt}"
        names, ref = save_variant(model, d, dt)
        assert all(not n.startswith("bert.") for n in names), names[:3]
        copy_tokenizer(wp, d)
        write_st_files(d, 48, 64)
        tok = Tok(d / "tokenizer.json", single_type_id=False)
        m64 = load_f64(BertModel, d)
        check_loaded(m64, ref)
        pooling, normalize, max_length = default_settings(d)
        assert (pooling, normalize, max_length) == ("mean", True, 48)
        runs = [
            embed_run(m64, tok, texts, "defaults", all_idx, pooling, normalize, max_length,
                      uses_defaults=True),
            embed_run(m64, tok, texts, "cls_64", all_idx, "cls", True, 64),
            embed_run(m64, tok, texts, "mean_raw", all_idx, "mean", False, 64),
            embed_run(m64, tok, texts, "queries_instruction", short_idx, "cls", True, 64,
                      instruction=INSTRUCTION),
        ]
        for r in runs:
            assert max(max(t) for t in r["token_ids"]) < vocab
        # Mean over the last hidden states, unnormalized, should not be tiny nor huge.
        raw = np.array(runs[2]["embeddings"])
        assert 0.05 < raw.std(axis=0).mean() < 5.0, raw.std(axis=0).mean()
        cos = st_crosscheck(d, texts, runs[0])
        fx = {"model": d.name, "kind": "embedder", "stored_dtype": dt,
              "generator": generator_info(), "runs": runs,
              "hidden_states": hidden_fixture(m64, tok, texts, hidden_idx, 48)}
        worst = max(check_numpy(d, r) for r in runs + [fx["hidden_states"]])
        write_json(d / "expected.json", fx)
        print(f"{d.name}: spreads " + ", ".join(f"{r['name']} {spread_of(r['embeddings']):.3f}"
                                                for r in runs)
              + f"; sentence-transformers min cosine {cos:.7f}; numpy agrees to {worst:.1e}")


def make_reranker(out, name, tk, cls, cfg, pairs, seed, prefix, head):
    single_type = cfg.type_vocab_size == 1
    torch.manual_seed(seed)
    model = cls(cfg).float()
    redraw(model, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        tk.save(str(Path(tmp) / "tokenizer.json"))
        tok = Tok(Path(tmp) / "tokenizer.json", single_type_id=single_type)
    offset = cfg.pad_token_id + 1 if cfg.model_type == "xlm-roberta" else 0
    max_length = min(512, cfg.max_position_embeddings - offset)
    encoded = [tok.pair(q, p, max_length) for q, p in pairs]
    calibrate_head(model, head + ".weight", head + ".bias", [(i, t) for i, t, _ in encoded])
    strategies = [s for _, _, s in encoded]
    for dt in ["f32", "f16", "bf16"]:
        d = out / f"{name}-{dt}"
        names, ref = save_variant(model, d, dt)
        assert all(n.startswith(prefix) or n.startswith("classifier.") for n in names), names
        copy_tokenizer(tk, d)
        tok = Tok(d / "tokenizer.json", single_type_id=single_type)
        m64 = load_f64(cls, d)
        check_loaded(m64, ref)
        pooling, normalize, ml = default_settings(d)
        assert ml == max_length
        fx = {"model": d.name, "kind": "cross-encoder", "stored_dtype": dt,
              "generator": generator_info(), "max_length": max_length,
              "pairs": list(range(len(pairs))), "truncation": strategies,
              "token_ids": [], "type_ids": [], "logits": []}
        for q, p in pairs:
            ids, types, _ = tok.pair(q, p, max_length)
            fx["token_ids"].append(ids)
            fx["type_ids"].append(types)
            fx["logits"].append(logits(m64, ids, types))
        assert max(max(t) for t in fx["token_ids"]) < cfg.vocab_size
        lg = np.array(fx["logits"])[:, 0]
        assert lg.std() > 0.3, lg.std()
        assert np.abs(lg).max() < 8, lg
        check_distinct(fx["token_ids"], fx["logits"], d.name)
        worst = check_numpy(d, fx)
        write_json(d / "expected.json", fx)
        print(f"{d.name}: logits std {lg.std():.3f}, range [{lg.min():.3f}, {lg.max():.3f}], "
              f"truncation {dict((s, strategies.count(s)) for s in sorted(set(strategies), key=str))}"
              f" (transformers' only_second raised for {tok.only_second_raised} long queries)"
              f"; numpy agrees to {worst:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minilm", required=True, help="folder of all-MiniLM-L6-v2")
    ap.add_argument("--out", default="fixtures", help="fixtures folder (default: fixtures)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

    texts, short_idx, hidden_idx = base_texts()
    pairs = base_pairs(texts)
    corpus = texts + [s for pr in pairs for s in pr] + EXTRA_CORPUS
    wp = train_wordpiece(corpus, vocab_size=1000)
    ug = train_unigram(corpus, vocab_size=1000)
    print(f"tokenizers: wordpiece vocab {wp.get_vocab_size(True)}, "
          f"unigram vocab {ug.get_vocab_size(True)}")

    # Texts exactly at the truncation edges: MiniLM's 256 (and one over), tiny BERT's 48 and 64.
    sentences = [t for t in texts if 40 < len(t) < 300 and t.isascii()]
    mini = Tok(Path(args.minilm) / "tokenizer.json", single_type_id=False)
    with tempfile.TemporaryDirectory() as tmp:
        wp.save(str(Path(tmp) / "tokenizer.json"))
        tiny = Tok(Path(tmp) / "tokenizer.json", single_type_id=False)
    edges = [(mini, 254, "the MiniLM default 256"), (mini, 255, "the one before plus ' and'"),
             (tiny, 46, "tiny BERT's default 48"), (tiny, 62, "tiny BERT's 64")]
    for n, (tk, target, _) in enumerate(edges):
        if n == 1:  # one token over the edge: at 256 it must give the same ids as the text before
            texts.append(fill_to(tk.content, texts[-1], target))
            continue
        rot = sentences[target % len(sentences):] + sentences[: target % len(sentences)]
        texts.append(fill_to(tk.content, edge_base(tk.content, rot * 4, target), target))
    edge_idx = list(range(len(texts) - len(edges), len(texts)))
    for (tk, target, what), i in zip(edges, edge_idx):
        print(f"text {i}: {target + 2} tokens with specials ({what})")

    assert len(texts) >= 34 and len(pairs) >= 16
    assert len(set(texts)) == len(texts)
    write_json(out / "texts.json", texts)
    write_json(out / "pairs.json", [list(p) for p in pairs])

    make_minilm(args.minilm, out, texts, short_idx, hidden_idx)
    make_tiny_embed(out, wp, texts, short_idx, hidden_idx)

    bert_cfg = BertConfig(vocab_size=wp.get_vocab_size(True), hidden_size=64, num_attention_heads=2,
                          intermediate_size=96, num_hidden_layers=3, max_position_embeddings=64,
                          type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-12,
                          pad_token_id=0, num_labels=1,
                          architectures=["BertForSequenceClassification"])
    make_reranker(out, "tiny-bert-rerank", wp, BertForSequenceClassification, bert_cfg, pairs,
                  seed=202, prefix="bert.", head="classifier")
    xlmr_cfg = XLMRobertaConfig(vocab_size=ug.get_vocab_size(True), hidden_size=64,
                                num_attention_heads=2, intermediate_size=96, num_hidden_layers=2,
                                max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                                bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                                hidden_act="gelu", num_labels=1,
                                architectures=["XLMRobertaForSequenceClassification"])
    make_reranker(out, "tiny-xlmr-rerank", ug, XLMRobertaForSequenceClassification, xlmr_cfg, pairs,
                  seed=303, prefix="roberta.", head="classifier.out_proj")

    total = 0
    print("\nfiles:")
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        size = f.stat().st_size
        total += size
        print(f"  {size:>9}  {f.relative_to(out)}")
    print(f"  {total:>9}  total ({total / 2**20:.2f} MiB)")
    assert total < 6.5 * 2**20, "fixtures grew past the ~6 MB budget"


if __name__ == "__main__":
    main()
