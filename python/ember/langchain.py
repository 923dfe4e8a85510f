"""``EmberEmbeddings``: LangChain's ``Embeddings`` interface (``embed_documents``,
``embed_query``, and through the base class their async forms) on ember's engine, with the
arguments of LangChain's ``HuggingFaceBgeEmbeddings``. langchain-core is optional: without it
the class is a plain object with the same methods, so code that only calls them still works.
"""

from ._sentence_transformers import SentenceTransformer

try:
    from langchain_core.embeddings import Embeddings as _Base
except ImportError:  # langchain-core is optional
    _Base = object

#: LangChain's default query instruction for English bge models.
DEFAULT_QUERY_BGE_INSTRUCTION_EN = "Represent this question for searching relevant passages: "


class EmberEmbeddings(_Base):
    """Embeddings of documents and queries; a query gets ``query_instruction`` in front, a
    document ``embed_instruction``. Newlines become spaces, as in LangChain's Hugging Face
    classes. ``model_kwargs`` go to ``ember.SentenceTransformer`` (``device``, ``dtype``...),
    ``encode_kwargs`` to its ``encode`` (``normalize_embeddings=True`` for bge models)."""

    def __init__(
        self,
        model_name,
        model_kwargs=None,
        encode_kwargs=None,
        query_instruction=DEFAULT_QUERY_BGE_INSTRUCTION_EN,
        embed_instruction="",
    ):
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        self.encode_kwargs = dict(encode_kwargs or {})
        self.query_instruction = query_instruction
        self.embed_instruction = embed_instruction
        self.client = SentenceTransformer(model_name, **self.model_kwargs)

    def embed_documents(self, texts):
        texts = [self.embed_instruction + t.replace("\n", " ") for t in texts]
        return self.client.encode(texts, **self.encode_kwargs).tolist()

    def embed_query(self, text):
        text = self.query_instruction + text.replace("\n", " ")
        return self.client.encode(text, **self.encode_kwargs).tolist()
