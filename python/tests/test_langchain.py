"""ember.langchain.EmberEmbeddings against langchain-core's Embeddings interface."""

import asyncio
import subprocess
import sys

import numpy as np
import pytest

import ember
from ember.langchain import DEFAULT_QUERY_BGE_INSTRUCTION_EN, EmberEmbeddings


@pytest.fixture
def langchain_embeddings():
    return pytest.importorskip(
        "langchain_core.embeddings", reason="langchain-core is not installed (pip install langchain-core)"
    )


def test_implements_langchains_interface(tiny_embed, langchain_embeddings):
    emb = EmberEmbeddings(model_name=tiny_embed, encode_kwargs={"normalize_embeddings": True})
    assert isinstance(emb, langchain_embeddings.Embeddings)
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


def test_instructions_are_configurable(tiny_embed, langchain_embeddings):
    emb = EmberEmbeddings(model_name=tiny_embed, query_instruction="q: ", embed_instruction="p: ")
    st = ember.SentenceTransformer(tiny_embed)
    np.testing.assert_allclose(emb.embed_query("x"), st.encode("q: x"), atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents(["x"]), st.encode(["p: x"]), atol=1e-6)


def test_works_without_langchain_core(tiny_embed):
    # A fresh interpreter in which langchain_core cannot be imported.
    code = (
        "import sys; sys.modules['langchain_core'] = None; sys.modules['langchain_core.embeddings'] = None\n"
        "from ember.langchain import EmberEmbeddings\n"
        "e = EmberEmbeddings(model_name=sys.argv[1])\n"
        "print(type(e).__mro__[1].__name__, len(e.embed_query('x')), len(e.embed_documents(['a', 'b'])))"
    )
    out = subprocess.run([sys.executable, "-c", code, tiny_embed], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["object", "64", "2"]
