"""Shared paths and checks for the Python package's tests: the repository's reference fixtures
(transformers' float64 outputs, see fixtures/README.md) and the real all-MiniLM-L6-v2."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("EMBER_FIXTURES", REPO / "fixtures"))


def minilm_dir():
    """The real test model (scripts/fetch-test-model.sh; the README's test command runs it). A
    missing model fails: a skipped reference test would pass without checking anything."""
    path = Path(os.environ.get("EMBER_TEST_MODEL", REPO / ".cache/models/all-MiniLM-L6-v2"))
    assert (path / "model.safetensors").exists(), f"the test model is missing at {path}: run scripts/fetch-test-model.sh"
    return str(path)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def texts():
    return load_json(FIXTURES / "texts.json")


def pairs():
    return load_json(FIXTURES / "pairs.json")


def expected(model):
    return load_json(FIXTURES / model / "expected.json")


def run_named(reference, name):
    return next(r for r in reference["runs"] if r["name"] == name)


def assert_close(what, got, want):
    """The numerics contract of the f32 CPU path against the float64 reference (as the Rust
    tests): row by row, cosine >= 0.99999 and max abs diff <= 1e-4."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    for i, (g, w) in enumerate(zip(got.reshape(len(got), -1), want.reshape(len(want), -1))):
        cosine = g @ w / max(np.linalg.norm(g) * np.linalg.norm(w), np.finfo(float).tiny)
        diff = np.abs(g - w).max()
        assert cosine >= 0.99999 and diff <= 1e-4, f"{what}, row {i}: cosine {cosine:.8f}, max abs diff {diff:.3e}"


@pytest.fixture(scope="session")
def minilm():
    return minilm_dir()


@pytest.fixture(scope="session")
def tiny_embed():
    return str(FIXTURES / "tiny-bert-embed-f32")


@pytest.fixture(scope="session")
def tiny_rerank():
    return str(FIXTURES / "tiny-bert-rerank-f32")
