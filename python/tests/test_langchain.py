"""ember.langchain.EmberEmbeddings against langchain-core's Embeddings interface."""

import asyncio

import numpy as np
import pytest

import ember
from ember.langchain import DEFAULT_QUERY_BGE_INSTRUCTION_EN, EmberEmbeddings

embeddings_module = pytest.importorskip(
    "langchain_core.embeddings", reason="langchain-core is not installed (pip install langchain-core)"
)


def test_implements_langchains_interface(tiny_embed):
    emb = EmberEmbeddings(model_name=tiny_embed, encode_kwargs={"normalize_embeddings": True})
    assert isinstance(emb, embeddings_module.Embeddings)
    st = ember.SentenceTransformer(tiny_embed)
    docs = ["A river runs\nto the sea.", "Quantum data."]
    got = emb.embed_documents(docs)
    assert isinstance(got, list) and all(isinstance(row, list) and isinstance(row[0], float) for row in got)
    np.testing.assert_allclose(got, st.encode([d.replace("\n", " ") for d in docs], normalize_embeddings=True), atol=1e-6)
    query = emb.embed_query("what is a river")
    np.testing.assert_allclose(query, st.encode(DEFAULT_QUERY_BGE_INSTRUCTION_EN + "what is a river"), atol=1e-6)
    # The async forms come from langchain-core's base class.
    np.testing.assert_allclose(asyncio.run(emb.aembed_query("what is a river")), query, atol=1e-6)
    np.testing.assert_allclose(asyncio.run(emb.aembed_documents(docs)), got, atol=1e-6)


def test_instructions_are_configurable(tiny_embed):
    emb = EmberEmbeddings(model_name=tiny_embed, query_instruction="q: ", embed_instruction="p: ")
    st = ember.SentenceTransformer(tiny_embed)
    np.testing.assert_allclose(emb.embed_query("x"), st.encode("q: x"), atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents(["x"]), st.encode(["p: x"]), atol=1e-6)
