"""The same numbers as sentence-transformers and FlagEmbedding-style reference code: every
interface against transformers' float64 outputs stored in fixtures/ (the real all-MiniLM-L6-v2
and the tiny models, in f32, f16 and bf16 storage)."""

import numpy as np
import pytest
from conftest import FIXTURES, assert_close, expected, pairs, run_named, texts

import ember

EMBEDDERS = ["tiny-bert-embed-f32", "tiny-bert-embed-f16", "tiny-bert-embed-bf16"]
RERANKERS = [f"tiny-{arch}-rerank-{dtype}" for arch in ("bert", "xlmr") for dtype in ("f32", "f16", "bf16")]


def run_texts(run):
    all_texts = texts()
    return [all_texts[i] for i in run["texts"]]


def test_sentence_transformer_matches_minilm_reference(minilm):
    run = run_named(expected("minilm"), "st_defaults")
    got = ember.SentenceTransformer(minilm).encode(run_texts(run))
    assert got.dtype == np.float32
    assert_close("st_defaults", got, run["embeddings"])


def test_flag_model_matches_minilm_cls_reference(minilm):
    run = run_named(expected("minilm"), "cls_512")
    model = ember.FlagModel(minilm, pooling_method="cls", normalize_embeddings=True)
    assert_close("cls_512", model.encode(run_texts(run), max_length=512), run["embeddings"])
    assert_close("cls_512 corpus", model.encode_corpus(run_texts(run)), run["embeddings"])


def test_flag_model_queries_carry_the_instruction(minilm):
    run = run_named(expected("minilm"), "queries_instruction")
    model = ember.FlagModel(minilm, query_instruction_for_retrieval=run["query_instruction"])
    assert_close("queries_instruction", model.encode_queries(run_texts(run)), run["embeddings"])


@pytest.mark.parametrize("name", EMBEDDERS)
def test_tiny_embedders_match_reference(name):
    path = str(FIXTURES / name)
    reference = expected(name)
    defaults = run_named(reference, "defaults")
    assert_close(f"{name} defaults", ember.SentenceTransformer(path).encode(run_texts(defaults)), defaults["embeddings"])
    cls = run_named(reference, "cls_64")
    got = ember.FlagModel(path, pooling_method="cls").encode(run_texts(cls), max_length=64)
    assert_close(f"{name} cls_64", got, cls["embeddings"])
    raw = run_named(reference, "mean_raw")
    got = ember.FlagModel(path, pooling_method="mean", normalize_embeddings=False).encode(run_texts(raw), max_length=64)
    assert_close(f"{name} mean_raw", got, raw["embeddings"])
    queries = run_named(reference, "queries_instruction")
    model = ember.FlagModel(path, query_instruction_for_retrieval=queries["query_instruction"])
    assert_close(f"{name} queries", model.encode_queries(run_texts(queries), max_length=64), queries["embeddings"])


@pytest.mark.parametrize("name", RERANKERS)
def test_rerankers_match_reference(name):
    path = str(FIXTURES / name)
    reference = expected(name)
    all_pairs = pairs()
    chosen = [all_pairs[i] for i in reference["pairs"]]
    logits = np.array(reference["logits"])[:, 0]
    reranker = ember.FlagReranker(path)
    scores = reranker.compute_score(chosen, max_length=reference["max_length"])
    assert isinstance(scores, list) and all(isinstance(s, float) for s in scores)
    np.testing.assert_allclose(scores, logits, rtol=0, atol=1e-4)
    sigmoid = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(reranker.compute_score(chosen, normalize=True), sigmoid, rtol=0, atol=1e-4)
    # sentence-transformers' default for a one-label model without a configured activation:
    # the sigmoid.
    predicted = ember.CrossEncoder(path).predict(chosen)
    assert predicted.dtype == np.float32 and predicted.shape == (len(chosen),)
    np.testing.assert_allclose(predicted, sigmoid, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype,bar", [("bf16", 0.999), ("int8", 0.995)])
def test_reduced_precision_stays_close_to_f32_or_is_refused(minilm, dtype, bar):
    """`dtype=` reaches the engine: bf16 and int8 keep their cosine bars against f32 on every
    fixture text, or, on a CPU without the instructions, loading says why (never a silent f32)."""
    all_texts = texts()
    exact = ember.SentenceTransformer(minilm).encode(all_texts, normalize_embeddings=True)
    try:
        model = ember.SentenceTransformer(minilm, dtype=dtype)
    except (ember.EmberError, ValueError) as err:
        assert "AVX512" in str(err), err
        return
    got = model.encode(all_texts, normalize_embeddings=True)
    cosines = (got * exact).sum(axis=1)
    assert cosines.min() >= bar, (dtype, cosines.min())
