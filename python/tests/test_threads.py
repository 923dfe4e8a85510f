"""Several Python threads on one model at once, and the GIL released while ember works."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from conftest import texts

import ember


def test_threads_sharing_a_model_get_the_sequential_results(tiny_embed, tiny_rerank):
    model = ember.FlagModel(tiny_embed)
    reranker = ember.FlagReranker(tiny_rerank)
    corpus = texts()
    subsets = [corpus[i:] + corpus[:i] for i in range(0, len(corpus), 3)]
    want = [model.encode(s) for s in subsets]
    pairs = [[corpus[i], corpus[-1 - i]] for i in range(len(corpus))]
    want_scores = reranker.compute_score(pairs)

    def work(k):
        return model.encode(subsets[k % len(subsets)]), reranker.compute_score(pairs)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(4 * len(subsets))))
    for k, (embeddings, scores) in enumerate(results):
        np.testing.assert_array_equal(embeddings, want[k % len(subsets)])
        assert scores == want_scores


def test_the_gil_is_released_while_encoding(minilm):
    model = ember.SentenceTransformer(minilm)
    corpus = [" ".join(["river museum data bridge"] * 30)] * 600
    model.encode(corpus[:8])
    done = threading.Event()
    elapsed = []

    def encode():
        start = time.perf_counter()
        model.encode(corpus)
        elapsed.append(time.perf_counter() - start)
        done.set()

    thread = threading.Thread(target=encode)
    thread.start()
    # Python code keeps running in this thread while the other one encodes: with the GIL held
    # by the encode, this loop would stall for the whole call.
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    thread.join()
    assert elapsed[0] > 0.2, "the encode was too short to tell"
    assert ticks > 0.2 * elapsed[0] / 0.001 / 4, f"{ticks} ticks in {elapsed[0]:.2f} s"
