"""sentence-transformers' ``SentenceTransformer.encode`` and ``CrossEncoder.predict``, with their
argument names, defaults and return conventions, on ember's engine."""

import json
import os

import numpy as np

from . import _inputs
from ._ember import Embedder, Reranker, model_folder
from ._quantize import PRECISIONS, quantize_embeddings


def _read_json(path):
    """A JSON file's contents, or None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None


def _pooling_config(folder):
    """The Pooling module's config.json, or None."""
    modules = _read_json(os.path.join(folder, "modules.json")) or []
    for module in modules:
        if str(module.get("type", "")).endswith("models.Pooling"):
            return _read_json(os.path.join(folder, module.get("path", ""), "config.json"))
    return None


def _l2_normalize(x):
    # torch.nn.functional.normalize: x / max(||x||, 1e-12)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SentenceTransformer:
    """An embedder as sentence-transformers loads it: pooling, normalization and max length from
    the model's own files (a folder without them gets mean pooling, as sentence-transformers
    gives it), prompts from ``config_sentence_transformers.json``."""

    def __init__(
        self,
        model_name_or_path,
        device=None,
        prompts=None,
        default_prompt_name=None,
        truncate_dim=None,
        *,
        dtype="f32",
    ):
        device = _inputs.device(device)
        folder = model_folder(model_name_or_path)
        if os.path.exists(os.path.join(folder, "modules.json")):
            self.embedder = Embedder(folder, device=device, dtype=dtype)
        else:
            self.embedder = Embedder(folder, pooling="mean", normalize=False, device=device, dtype=dtype)
        config = _read_json(os.path.join(folder, "config_sentence_transformers.json")) or {}
        self.prompts = dict(config.get("prompts") or {})
        self.prompts.update(prompts or {})
        self.default_prompt_name = default_prompt_name or config.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"Default prompt name {self.default_prompt_name!r} not found in the configured prompts "
                f"dictionary with keys {list(self.prompts)!r}."
            )
        self._include_prompt = (_pooling_config(folder) or {}).get("include_prompt", True)
        self.truncate_dim = _inputs.positive_int("truncate_dim", truncate_dim, allow_none=True)
        self.max_seq_length = self.embedder.max_length
        self.device = device

    def get_sentence_embedding_dimension(self):
        dim = self.embedder.dim
        return min(dim, self.truncate_dim) if self.truncate_dim else dim

    def get_max_seq_length(self):
        return self.max_seq_length

    def _prompt(self, prompt, prompt_name):
        if prompt is None:
            prompt_name = prompt_name or self.default_prompt_name
            if prompt_name is not None:
                if prompt_name not in self.prompts:
                    raise ValueError(
                        f"Prompt name {prompt_name!r} not found in the configured prompts dictionary "
                        f"with keys {list(self.prompts)!r}."
                    )
                prompt = self.prompts[prompt_name]
        if prompt and not self._include_prompt:
            raise ValueError(
                "this model's Pooling module excludes the prompt's tokens (include_prompt: false), "
                "which ember does not support"
            )
        return prompt or ""

    def encode(
        self,
        sentences,
        prompt_name=None,
        prompt=None,
        batch_size=32,
        show_progress_bar=None,
        output_value="sentence_embedding",
        precision="float32",
        convert_to_numpy=True,
        convert_to_tensor=False,
        device=None,
        normalize_embeddings=False,
        truncate_dim=None,
    ):
        """``[n, dim]`` embeddings (``[dim]`` for a single string) in ``precision``: float32, or
        int8 / uint8 / binary / ubinary by ``quantize_embeddings``' rules over this call's
        embeddings. ``truncate_dim`` keeps the first dimensions, before ``normalize_embeddings``.
        ``batch_size`` is checked but does not change results: ember batches by tokens.
        ``show_progress_bar=True`` draws a bar of the texts done (tqdm's when installed)."""
        items, single = _inputs.texts(sentences)
        _inputs.positive_int("batch_size", batch_size)
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value {output_value!r} is not supported (only \"sentence_embedding\")")
        if precision not in PRECISIONS:
            raise ValueError(f"Precision {precision!r} is not supported (one of {', '.join(PRECISIONS)})")
        if device is not None and _inputs.device(device) != self.device:
            raise ValueError(f"this model is loaded on {self.device}; encode(device={device!r}) cannot move it")
        truncate_dim = _inputs.positive_int("truncate_dim", truncate_dim, allow_none=True) or self.truncate_dim
        prefix = self._prompt(prompt, prompt_name)
        if prefix:
            items = [prefix + s for s in items]
        max_length = _inputs.positive_int("max_seq_length", self.max_seq_length)
        with _inputs.progress_bar(show_progress_bar, len(items), "Batches") as progress:
            embeddings = self.embedder.encode(items, max_length, progress)
        if truncate_dim is not None and truncate_dim < embeddings.shape[1]:
            embeddings = embeddings[:, :truncate_dim]
        if normalize_embeddings and (truncate_dim is not None or not self.embedder.normalize):
            embeddings = _l2_normalize(embeddings)
        if precision != "float32":
            embeddings = quantize_embeddings(embeddings, precision)
        if convert_to_tensor:
            embeddings = _inputs.torch_tensor(embeddings, "convert_to_tensor=True")
        elif not convert_to_numpy:
            embeddings = [_inputs.torch_tensor(row, "convert_to_numpy=False") for row in embeddings]
        return embeddings[0] if single else embeddings


def _activation(name):
    """A numpy function for the activation a cross-encoder's config names (a torch class path)."""
    short = name.rsplit(".", 1)[-1]
    if short == "Sigmoid":
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    if short == "Identity":
        return lambda x: x
    if short == "Tanh":
        return np.tanh
    raise ValueError(f"activation function {name!r} is not supported (Sigmoid, Identity, Tanh)")


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class CrossEncoder:
    """A cross-encoder as sentence-transformers loads it: ``predict`` gives the activation of
    the logits that the model's config names, else sigmoid for one label, identity for more."""

    def __init__(self, model_name_or_path, num_labels=None, max_length=None, device=None, *, dtype="f32"):
        max_length = _inputs.positive_int("max_length", max_length, allow_none=True)
        folder = model_folder(model_name_or_path)
        self.model = Reranker(folder, max_length=max_length, device=_inputs.device(device), dtype=dtype)
        if num_labels is not None and num_labels != self.model.num_labels:
            raise ValueError(f"num_labels={num_labels}, but {model_name_or_path} has {self.model.num_labels} labels")
        self.num_labels = self.model.num_labels
        self.max_length = self.model.max_length
        self.default_activation_function = self._default_activation(folder)

    def _default_activation(self, folder):
        config = _read_json(os.path.join(folder, "config.json")) or {}
        name = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
            "sbert_ce_default_activation_function"
        )
        if name is not None:
            return _activation(name)
        return _activation("Sigmoid" if self.num_labels == 1 else "Identity")

    def predict(
        self,
        sentences,
        batch_size=32,
        show_progress_bar=None,
        activation_fn=None,
        apply_softmax=False,
        convert_to_numpy=True,
        convert_to_tensor=False,
    ):
        """Scores of (query, passage) pairs: ``[n]`` for a one-label model, ``[n, labels]``
        otherwise; a single pair gives its score alone. ``activation_fn`` is any function of a
        numpy array (in place of the model's default)."""
        queries, passages, single = _inputs.pairs(sentences, "sentences")
        _inputs.positive_int("batch_size", batch_size)
        with _inputs.progress_bar(show_progress_bar, len(queries), "Batches") as progress:
            logits = self.model.logits(queries, passages, self.max_length, progress)
        scores = (activation_fn or self.default_activation_function)(logits)
        if apply_softmax and scores.shape[1] > 1:
            scores = _softmax(scores)
        if self.num_labels == 1:
            scores = scores[:, 0]
        scores = np.asarray(scores, dtype=np.float32)
        if convert_to_tensor:
            scores = _inputs.torch_tensor(scores, "convert_to_tensor=True")
        elif not convert_to_numpy:
            scores = [_inputs.torch_tensor(np.asarray(s), "convert_to_numpy=False") for s in scores]
        return scores[0] if single else scores
