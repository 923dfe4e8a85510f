"""Ctrl-C during a long encode raises KeyboardInterrupt within a step, not at the end."""

import _thread
import threading
import time

import pytest

import ember


def test_ctrl_c_interrupts_a_long_encode(minilm):
    model = ember.SentenceTransformer(minilm)
    # About 200,000 tokens: tens of seconds on two cores, where a step is about a second.
    corpus = [f"{i} " + " ".join(["river museum quantum bridge"] * 40) for i in range(1200)]
    timer = threading.Timer(0.5, _thread.interrupt_main)
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            model.encode(corpus)
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - start
    assert elapsed < 8, f"the interrupt took {elapsed:.1f} s to be answered"
    # The model is still usable afterwards.
    assert model.encode(["still works"]).shape == (1, 384)
