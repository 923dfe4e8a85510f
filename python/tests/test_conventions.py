"""The argument and return conventions of the interfaces: a single string or a list, one pair
or a list, shapes and dtypes, sentence-transformers' precisions, truncation and prompts, and
numpy arrays that take over ember's buffer instead of copying it."""

import numpy as np
import pytest
from conftest import texts

import ember

SENTENCES = ["The river runs to the sea.", "Quantum data museum.", "", "数据 model bridge"]


@pytest.fixture(scope="module")
def flag(tiny_embed):
    return ember.FlagModel(tiny_embed)


@pytest.fixture(scope="module")
def st(tiny_embed):
    return ember.SentenceTransformer(tiny_embed)


def test_flag_model_single_string_and_list(flag):
    many = flag.encode(SENTENCES)
    assert many.shape == (len(SENTENCES), 64) and many.dtype == np.float32
    one = flag.encode(SENTENCES[1])
    assert one.shape == (64,)
    np.testing.assert_array_equal(one, many[1])
    assert flag.encode(SENTENCES[:1]).shape == (1, 64)
    assert flag.encode([]).shape == (0, 64)
    # normalize_embeddings=True (the default) gives unit rows
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1, atol=1e-5)


def test_results_own_embers_buffer_without_a_copy(flag):
    out = flag.encode(SENTENCES)
    # numpy did not allocate these rows: they are ember's Vec, handed over as they are.
    assert not out.flags["OWNDATA"] and out.flags["C_CONTIGUOUS"] and out.base is not None


def test_encode_queries_prepends_the_instruction(tiny_embed):
    instruction = "Represent this sentence for searching relevant passages: "
    model = ember.FlagModel(tiny_embed, query_instruction_for_retrieval=instruction)
    np.testing.assert_array_equal(model.encode_queries(SENTENCES), model.encode([instruction + s for s in SENTENCES]))
    np.testing.assert_array_equal(model.encode_corpus(SENTENCES), model.encode(SENTENCES))
    plain = ember.FlagModel(tiny_embed)
    np.testing.assert_array_equal(plain.encode_queries(SENTENCES), plain.encode(SENTENCES))


def test_rows_do_not_depend_on_the_other_texts(flag):
    corpus = texts()
    together = flag.encode(corpus)
    alone = np.stack([flag.encode(t) for t in corpus])
    np.testing.assert_array_equal(together, alone)


def test_sentence_transformer_shapes_and_truncation(st):
    out = st.encode(SENTENCES)
    assert out.shape == (4, 64) and out.dtype == np.float32
    assert st.encode(SENTENCES[0]).shape == (64,)
    assert st.get_sentence_embedding_dimension() == 64
    cut = st.encode(SENTENCES, truncate_dim=16)
    np.testing.assert_array_equal(cut, out[:, :16])
    cut_normalized = st.encode(SENTENCES, truncate_dim=16, normalize_embeddings=True)
    np.testing.assert_allclose(cut_normalized, out[:, :16] / np.linalg.norm(out[:, :16], axis=1, keepdims=True), atol=1e-6)


def test_sentence_transformer_truncate_dim_at_load(tiny_embed):
    model = ember.SentenceTransformer(tiny_embed, truncate_dim=8)
    assert model.get_sentence_embedding_dimension() == 8
    assert model.encode(SENTENCES).shape == (4, 8)


def test_prompts(tiny_embed):
    model = ember.SentenceTransformer(tiny_embed, prompts={"query": "query: "})
    with_prompt = model.encode(SENTENCES, prompt_name="query")
    np.testing.assert_array_equal(with_prompt, model.encode(["query: " + s for s in SENTENCES]))
    np.testing.assert_array_equal(model.encode(SENTENCES, prompt="query: "), with_prompt)
    with pytest.raises(ValueError, match="not found in the configured prompts"):
        model.encode(SENTENCES, prompt_name="passage")
    defaulted = ember.SentenceTransformer(tiny_embed, prompts={"query": "query: "}, default_prompt_name="query")
    np.testing.assert_array_equal(defaulted.encode(SENTENCES), with_prompt)


def test_precisions_follow_quantize_embeddings(st):
    corpus = texts()
    floats = st.encode(corpus)
    for precision, dtype, width in [("int8", np.int8, 64), ("uint8", np.uint8, 64), ("binary", np.int8, 8), ("ubinary", np.uint8, 8)]:
        got = st.encode(corpus, precision=precision)
        assert got.dtype == dtype and got.shape == (len(corpus), width), precision
        np.testing.assert_array_equal(got, ember.quantize_embeddings(floats, precision))
    # The rules themselves: sign bits packed 8 to a byte; binary is ubinary - 128 as int8.
    ubinary = st.encode(corpus, precision="ubinary")
    np.testing.assert_array_equal(np.unpackbits(ubinary, axis=1), (floats > 0).astype(np.uint8))
    np.testing.assert_array_equal(st.encode(corpus, precision="binary"), (ubinary.astype(np.int16) - 128).astype(np.int8))
    # uint8: each dimension's minimum over the call maps to bucket 0, values climb with the input.
    uint8 = st.encode(corpus, precision="uint8")
    np.testing.assert_array_equal(uint8[floats.argmin(axis=0), np.arange(64)], 0)
    int8 = st.encode(corpus, precision="int8")
    np.testing.assert_array_equal(int8[floats.argmin(axis=0), np.arange(64)], -128)
    column = np.argsort(floats[:, 0])
    assert np.all(np.diff(uint8[column, 0].astype(int)) >= 0)
    assert np.all(np.diff(int8[column, 0].astype(int)) >= 0)
    assert st.encode(corpus[0], precision="ubinary").shape == (8,)


def test_flag_reranker_one_pair_or_a_list(tiny_rerank):
    reranker = ember.FlagReranker(tiny_rerank)
    pair = ["what is a river", "A river runs to the sea."]
    one = reranker.compute_score(pair)
    assert isinstance(one, float)
    assert reranker.compute_score(tuple(pair)) == one
    many = reranker.compute_score([pair, ["q", "p"]])
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    assert reranker.compute_score([pair]) == [one]
    assert 0 < reranker.compute_score(pair, normalize=True) < 1
    assert ember.FlagReranker(tiny_rerank, normalize=True).compute_score(pair) == reranker.compute_score(pair, normalize=True)


def test_cross_encoder_predict(tiny_rerank):
    model = ember.CrossEncoder(tiny_rerank)
    pair = ("what is a river", "A river runs to the sea.")
    one = model.predict(pair)
    assert np.ndim(one) == 0
    many = model.predict([pair, pair])
    assert many.shape == (2,) and many.dtype == np.float32 and many[0] == one
    logits = model.predict([pair], activation_fn=lambda x: x)
    assert logits[0] == pytest.approx(ember.FlagReranker(tiny_rerank).compute_score(pair), abs=1e-6)


def test_a_max_length_beyond_the_positions_is_clipped(tiny_embed):
    # FlagModel's default max_length=512 on a model with 64 positions: texts are cut at 64.
    model = ember.FlagModel(tiny_embed)
    long_text = " ".join(["river"] * 500)
    np.testing.assert_array_equal(model.encode(long_text), model.encode(long_text, max_length=64))


def test_without_torch_tensors_are_a_clear_error(flag):
    pytest.importorskip("numpy")
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed: convert_to_numpy=False returns tensors")
    except ImportError:
        pass
    with pytest.raises(ValueError, match="torch is not installed"):
        flag.encode(SENTENCES, convert_to_numpy=False)


def test_show_progress_bar_draws_and_changes_nothing(st, tiny_rerank, capfd):
    """sentence-transformers' show_progress_bar, in its position after batch_size: a bar of the
    texts done on standard error (tqdm's when installed), the same numbers as without."""
    many = [f"{s} {i}" for i in range(60) for s in SENTENCES[:2]]
    quiet = st.encode(many)
    capfd.readouterr()
    shown = st.encode(many, None, None, 32, True)
    assert np.array_equal(shown, quiet)
    assert "120/120" in capfd.readouterr().err
    assert st.encode(many, show_progress_bar=False).shape == quiet.shape
    assert capfd.readouterr().err == ""
    model = ember.CrossEncoder(tiny_rerank)
    pairs = [("query", s) for s in many]
    scores = model.predict(pairs, 32, True)
    assert np.array_equal(scores, model.predict(pairs))
    assert "120/120" in capfd.readouterr().err
