"""ember's BERT-family encoder engine behind the interfaces Python users already call.

- ``FlagModel`` and ``FlagReranker``: FlagEmbedding's (bge's model cards);
- ``SentenceTransformer`` and ``CrossEncoder``: sentence-transformers';
- ``ember.langchain.EmberEmbeddings``: LangChain's ``Embeddings`` (langchain-core optional);
- ``Embedder`` and ``Reranker``: ember's own classes underneath (float32 numpy arrays out);
- ``encode_file``: the offline corpus encoder of ``ember encode`` (checkpoints, ``resume``,
  ``shard``, a progress bar), file to file.

Every error is a Python exception: ``ValueError`` / ``TypeError`` for bad arguments,
``FileNotFoundError`` for a missing model, ``EmberError`` (with ember's message, which names the
file, field or input at fault) for anything else. The GIL is released while ember works, so
several Python threads can encode at once, and Ctrl-C interrupts a long call.
"""

from ._ember import EmberError, Embedder, Reranker, __version__, compiled_devices, encode_file
from ._flag import FlagModel, FlagReranker
from ._quantize import quantize_embeddings
from ._sentence_transformers import CrossEncoder, SentenceTransformer

__all__ = [
    "CrossEncoder",
    "EmberError",
    "Embedder",
    "FlagModel",
    "FlagReranker",
    "Reranker",
    "SentenceTransformer",
    "__version__",
    "compiled_devices",
    "encode_file",
    "quantize_embeddings",
]
