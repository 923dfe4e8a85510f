"""FlagEmbedding's ``FlagModel`` and ``FlagReranker``, with its argument names and defaults,
on ember's engine."""

import numpy as np

from . import _inputs
from ._ember import Embedder, Reranker


def _flag_device(devices, use_fp16, dtype):
    """(device, dtype) for ember from FlagEmbedding's arguments. FlagEmbedding itself ignores
    ``use_fp16`` on the CPU (it computes in float32 there), and so does ember; ember's CUDA
    backend computes in FP16 only."""
    device = _inputs.device(devices)
    if device.startswith("cuda") and not use_fp16:
        raise ValueError("use_fp16=False: ember's CUDA backend computes in FP16 only")
    return device, dtype


class FlagModel:
    """A bge-style embedder: ``encode``, ``encode_queries`` (with the retrieval instruction) and
    ``encode_corpus``. ``batch_size`` is accepted for compatibility and checked; ember batches
    by tokens (its rows do not depend on batching), so it does not change the result."""

    def __init__(
        self,
        model_name_or_path,
        query_instruction_for_retrieval=None,
        use_fp16=True,
        normalize_embeddings=True,
        pooling_method="cls",
        devices=None,
        query_instruction_format="{}{}",
        batch_size=256,
        query_max_length=512,
        passage_max_length=512,
        convert_to_numpy=True,
        *,
        dtype="f32",
    ):
        if pooling_method not in ("cls", "mean"):
            raise ValueError(f"pooling_method {pooling_method!r} is not supported (\"cls\" or \"mean\")")
        device, dtype = _flag_device(devices, use_fp16, dtype)
        self.model = Embedder(
            model_name_or_path,
            pooling=pooling_method,
            normalize=bool(normalize_embeddings),
            device=device,
            dtype=dtype,
        )
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = query_instruction_format
        self.normalize_embeddings = bool(normalize_embeddings)
        self.pooling_method = pooling_method
        self.batch_size = _inputs.positive_int("batch_size", batch_size)
        self.query_max_length = _inputs.positive_int("query_max_length", query_max_length)
        self.passage_max_length = _inputs.positive_int("passage_max_length", passage_max_length)
        self.convert_to_numpy = convert_to_numpy

    def encode(self, sentences, batch_size=None, max_length=None, convert_to_numpy=None, instruction=None):
        """One embedding per sentence: ``[n, dim]`` float32, or ``[dim]`` for a single string.
        ``instruction`` goes in front of every sentence (through ``query_instruction_format``)."""
        items, single = _inputs.texts(sentences)
        _inputs.positive_int("batch_size", batch_size, allow_none=True)
        max_length = _inputs.positive_int("max_length", max_length, allow_none=True) or self.passage_max_length
        if instruction is not None:
            items = [self.query_instruction_format.format(instruction, s) for s in items]
        embeddings = self.model.encode(items, max_length)
        if single:
            embeddings = embeddings[0]
        if not (self.convert_to_numpy if convert_to_numpy is None else convert_to_numpy):
            return _inputs.torch_tensor(embeddings, "convert_to_numpy=False")
        return embeddings

    def encode_queries(self, queries, batch_size=None, max_length=None, convert_to_numpy=None):
        """Queries, with ``query_instruction_for_retrieval`` in front when one is set."""
        max_length = max_length or self.query_max_length
        return self.encode(queries, batch_size, max_length, convert_to_numpy, self.query_instruction_for_retrieval)

    def encode_corpus(self, corpus, batch_size=None, max_length=None, convert_to_numpy=None):
        """Passages, as they are."""
        return self.encode(corpus, batch_size, max_length, convert_to_numpy)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class FlagReranker:
    """A cross-encoder: ``compute_score`` on one (query, passage) pair (a float) or a list of
    pairs (a list of floats). Scores are the raw logit, or its sigmoid with ``normalize=True``."""

    def __init__(
        self,
        model_name_or_path,
        use_fp16=False,
        devices=None,
        batch_size=128,
        max_length=512,
        normalize=False,
        *,
        dtype="f32",
    ):
        device, dtype = _flag_device(devices, use_fp16, dtype)
        self.model = Reranker(model_name_or_path, device=device, dtype=dtype)
        if self.model.num_labels != 1:
            raise ValueError(
                f"FlagReranker needs a single-label model; {model_name_or_path} has {self.model.num_labels} labels"
            )
        self.batch_size = _inputs.positive_int("batch_size", batch_size)
        self.max_length = _inputs.positive_int("max_length", max_length)
        self.normalize = bool(normalize)

    def compute_score(self, sentence_pairs, batch_size=None, max_length=None, normalize=None):
        queries, passages, single = _inputs.pairs(sentence_pairs)
        _inputs.positive_int("batch_size", batch_size, allow_none=True)
        max_length = _inputs.positive_int("max_length", max_length, allow_none=True) or self.max_length
        scores = self.model.logits(queries, passages, max_length)[:, 0].astype(np.float64)
        if self.normalize if normalize is None else normalize:
            scores = _sigmoid(scores)
        scores = scores.tolist()
        return scores[0] if single else scores
