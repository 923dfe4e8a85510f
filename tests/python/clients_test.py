"""Python clients against `ember serve` (scripts/python/test-python-clients.sh starts the servers).

The openai package's embeddings.create (floats, base64, dimensions), and requests against
TEI's /embed and /rerank, each compared with `ember encode` on the same texts; quantized
output checked against sentence-transformers' rule written out in NumPy.
"""

import os
import sys
import traceback

import numpy as np
import openai
import requests

EMBED = os.environ["EMBED_URL"]
RERANK = os.environ["RERANK_URL"]
EXPECTED = np.load(os.environ["EXPECTED"])
TEXTS = ["What is Deep Learning?", "The food was delicious and the waiter..."]
KEY = {"Authorization": "Bearer sesame"}


def test_openai_embeddings_create():
    client = openai.OpenAI(base_url=EMBED + "/v1", api_key="sesame")
    # The client asks for base64 by default and decodes it to floats itself.
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert np.array_equal(got, EXPECTED), "openai client rows differ from ember encode"
    assert response.usage.prompt_tokens == response.usage.total_tokens > 4
    floats = client.embeddings.create(model="m", input=TEXTS[0], encoding_format="float")
    assert np.array_equal(np.array(floats.data[0].embedding, dtype=np.float32), EXPECTED[0])
    short = client.embeddings.create(model="m", input=TEXTS[1], dimensions=128)
    head = EXPECTED[1][:128].astype(np.float64)
    assert np.allclose(short.data[0].embedding, head / np.linalg.norm(head), atol=1e-6)


def test_openai_errors_are_exceptions():
    bad_key = openai.OpenAI(base_url=EMBED + "/v1", api_key="wrong", max_retries=0)
    try:
        bad_key.embeddings.create(model="m", input="x")
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    client = openai.OpenAI(base_url=EMBED + "/v1", api_key="sesame", max_retries=0)
    try:
        client.embeddings.create(model="m", input="x", dimensions=10_000)
        raise AssertionError("dimensions beyond the model were accepted")
    except openai.UnprocessableEntityError as e:
        assert "dimensions" in str(e)


def test_requests_embed():
    r = requests.post(EMBED + "/embed", json={"inputs": TEXTS}, headers=KEY, timeout=60)
    assert r.status_code == 200, r.text
    assert np.array_equal(np.array(r.json(), dtype=np.float32), EXPECTED)
    r = requests.post(EMBED + "/embed", json={"inputs": TEXTS}, timeout=60)
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"


def test_requests_embed_quantized_follows_sentence_transformers():
    for precision in ["ubinary", "binary", "int8", "uint8"]:
        r = requests.post(EMBED + "/embed", json={"inputs": TEXTS, "encoding_format": precision}, headers=KEY, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array(r.json())
        # sentence_transformers.quantization.quantize_embeddings, calibration = the rows themselves
        if precision == "ubinary":
            want = np.packbits(EXPECTED > 0).reshape(EXPECTED.shape[0], -1)
        elif precision == "binary":
            want = (np.packbits(EXPECTED > 0).reshape(EXPECTED.shape[0], -1) - 128).astype(np.int8)
        else:
            ranges = np.vstack((np.min(EXPECTED, axis=0), np.max(EXPECTED, axis=0)))
            starts, steps = ranges[0, :], (ranges[1, :] - ranges[0, :]) / 255
            if precision == "uint8":
                want = ((EXPECTED - starts) / steps).astype(np.uint8)
            else:
                want = ((EXPECTED - starts) / steps - 128).astype(np.int8)
        assert np.array_equal(got, want.astype(np.int64)), precision


def test_requests_rerank():
    passages = ["Deep Learning is not...", "Deep learning is..."]
    r = requests.post(RERANK + "/rerank", json={"query": "What is Deep Learning?", "texts": passages, "return_text": True}, timeout=60)
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert sorted(x["index"] for x in ranks) == [0, 1]
    assert ranks[0]["score"] >= ranks[1]["score"]
    assert all(0 < x["score"] < 1 and x["text"] == passages[x["index"]] for x in ranks)
    r = requests.post(RERANK + "/v1/rerank", json={"query": "q", "documents": passages, "top_n": 1}, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 1, r.text


def main():
    tests = [(name, f) for name, f in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for name, f in tests:
        try:
            f()
            print(f"{name} ... ok")
        except Exception:
            failed += 1
            print(f"{name} ... FAILED")
            traceback.print_exc()
    print(f"python clients: {len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
