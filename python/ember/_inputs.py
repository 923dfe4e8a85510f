"""Argument conventions shared by the interfaces: a single string or a list of strings, one pair
or a list of pairs, positive integers, device names, and torch output where asked."""

import contextlib
import sys

import numpy as np


def texts(sentences, what="sentences"):
    """(list of str, whether a single string was given)."""
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"{what} must be a string or a list of strings, not {type(sentences).__name__}")
    items = list(sentences)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{what}[{i}] must be a string, not {type(item).__name__}")
    return items, False


def _is_pair(value):
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(s, str) for s in value)


def pairs(sentence_pairs, what="sentence_pairs"):
    """(queries, passages, whether a single pair was given): one pair is a list or tuple of two
    strings; otherwise a list of such pairs."""
    if isinstance(sentence_pairs, str) or not hasattr(sentence_pairs, "__iter__"):
        raise TypeError(
            f"{what} must be a (query, passage) pair or a list of pairs, not {type(sentence_pairs).__name__}"
        )
    if _is_pair(sentence_pairs):
        return [sentence_pairs[0]], [sentence_pairs[1]], True
    items = list(sentence_pairs)
    for i, pair in enumerate(items):
        if not _is_pair(pair):
            raise TypeError(f"{what}[{i}] must be a pair of two strings, not {pair!r:.80}")
    return [q for q, _ in items], [p for _, p in items], False


def positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return int(value)


def device(value):
    """One device name from what torch-based libraries accept: None (the CPU), "cpu", "cuda",
    "cuda:N", an int N (GPU N), a torch.device, or a list holding one of these."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"ember runs one device per model; got {len(value)} devices: {value!r}")
        value = value[0]
    if value is None:
        return "cpu"
    if isinstance(value, bool):
        raise TypeError(f"device must be a string or an int, not {value!r}")
    if isinstance(value, int):
        return f"cuda:{value}"
    return str(value)


def torch_tensor(array, what):
    """`array` as a torch tensor sharing its memory; an error naming `what` without torch."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{what} returns torch tensors, and torch is not installed (ask for numpy)") from None
    return torch.from_numpy(array)


@contextlib.contextmanager
def progress_bar(show, total, desc):
    """A callable ``update(done)`` for ember's ``progress=``, drawing sentence-transformers'
    ``show_progress_bar``: tqdm's bar when tqdm is installed (as sentence-transformers draws
    it), else one line on standard error redrawn in place; None when not shown."""
    if not show or total == 0:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc=desc)
        try:
            yield lambda done: bar.update(done - bar.n)
        finally:
            bar.close()
        return

    def draw(done):
        sys.stderr.write(f"\r{desc}: {done}/{total} ({100 * done // total}%)")
        sys.stderr.flush()

    try:
        yield draw
    finally:
        sys.stderr.write("\n")
