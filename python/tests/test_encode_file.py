"""ember.encode_file: the offline corpus encoder of `ember encode`, from Python: rows identical
to the library's, JSONL ids, shards, a bad line kept for resume, Ctrl-C, clear errors."""

import _thread
import json
import threading

import numpy as np
import pytest

import ember


def corpus(n):
    """Texts of awkward, varied lengths (1 to about 60 words), some repeated, none empty."""
    words = "river museum quantum bridge archive lantern orbit meadow cipher harbor".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 13) % 60)) + f" {i}" for i in range(n)]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_rows_equal_the_library_and_the_report_counts_them(tiny_embed, tmp_path):
    texts = corpus(700)
    write_lines(tmp_path / "in.txt", texts)
    report = ember.encode_file(tiny_embed, tmp_path / "in.txt", tmp_path / "out.npy", window=64, progress=False)
    rows = np.load(tmp_path / "out.npy")
    want = ember.Embedder(tiny_embed).encode(texts)
    assert rows.dtype == np.float32 and rows.shape == want.shape
    # Rows do not depend on batching: the file holds exactly the library's numbers.
    assert np.array_equal(rows, want)
    assert report["texts"] == 700 and report["tokens"] > 700 and report["resumed_rows"] == 0
    assert str(report["output"]) == str(tmp_path / "out.npy") and report["skipped_lines"] == []
    assert not (tmp_path / "out.npy.partial").exists() and not (tmp_path / "out.npy.journal").exists()


def test_jsonl_ids_dimensions_and_query_instruction(tiny_embed, tmp_path):
    texts = corpus(50)
    lines = [json.dumps({"body": t, "key": f"doc-{i}"}) for i, t in enumerate(texts)]
    write_lines(tmp_path / "in.jsonl", lines)
    ember.encode_file(
        tiny_embed,
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        input_format="jsonl",
        text_field="body",
        id_field="key",
        dimensions=8,
        query_instruction="query: ",
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(50)]
    full = ember.Embedder(tiny_embed).encode(["query: " + t for t in texts])[:, :8]
    want = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), want, rtol=0, atol=1e-6)


def test_shards_concatenate_to_the_whole(tiny_embed, tmp_path):
    texts = corpus(301)
    write_lines(tmp_path / "in.txt", texts)
    whole = tmp_path / "whole.npy"
    ember.encode_file(tiny_embed, tmp_path / "in.txt", whole, progress=False)
    parts = []
    for shard in [(0, 3), "1/3", (2, 3)]:
        out = tmp_path / f"part{len(parts)}.npy"
        report = ember.encode_file(tiny_embed, tmp_path / "in.txt", out, shard=shard, progress=False)
        assert report["texts"] in (100, 101)
        parts.append(np.load(out))
    assert np.array_equal(np.concatenate(parts), np.load(whole))


def test_a_bad_line_keeps_earlier_rows_for_resume(tiny_embed, tmp_path):
    texts = corpus(400)
    body = "".join(t + "\n" for t in texts[:390]).encode() + b"broken \xff here\n"
    body += "".join(t + "\n" for t in texts[390:]).encode()
    (tmp_path / "in.txt").write_bytes(body)
    out = tmp_path / "out.npy"
    args = dict(window=32, checkpoint_secs=0, progress=False)
    with pytest.raises(ember.EmberError, match=r"line 391.*resume=True"):
        ember.encode_file(tiny_embed, tmp_path / "in.txt", out, **args)
    assert (tmp_path / "out.npy.partial").exists() and not out.exists()
    report = ember.encode_file(tiny_embed, tmp_path / "in.txt", out, resume=True, skip_invalid=True, **args)
    assert report["skipped_lines"] == [391] and report["resumed_rows"] > 0
    assert report["resumed_rows"] + report["texts"] == 400
    assert np.array_equal(np.load(out), ember.Embedder(tiny_embed).encode(texts))


def test_ctrl_c_keeps_finished_rows_and_resume_completes(minilm, tmp_path):
    # About 50,000 tokens: several seconds on two cores; the interrupt comes after one.
    texts = corpus(1600)
    write_lines(tmp_path / "in.txt", texts)
    out = tmp_path / "out.npy"
    args = dict(window=64, checkpoint_secs=0, progress=False)
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt, match="resume=True"):
            ember.encode_file(minilm, tmp_path / "in.txt", out, **args)
    finally:
        timer.cancel()
    assert (tmp_path / "out.npy.partial").exists() and not out.exists()
    report = ember.encode_file(minilm, tmp_path / "in.txt", out, resume=True, **args)
    assert 0 < report["resumed_rows"] < 1600
    assert np.array_equal(np.load(out), ember.Embedder(minilm).encode(texts))


def test_errors_are_python_exceptions(tiny_embed, tmp_path):
    write_lines(tmp_path / "in.txt", corpus(5))
    inp, out = tmp_path / "in.txt", tmp_path / "out.npy"
    with pytest.raises(FileNotFoundError):
        ember.encode_file(tiny_embed, tmp_path / "missing.txt", out)
    with pytest.raises(FileNotFoundError):
        ember.encode_file(str(tmp_path / "no-model"), inp, out)
    with pytest.raises(ValueError, match="output_dtype"):
        ember.encode_file(tiny_embed, inp, out, output_dtype="float64")
    with pytest.raises(ValueError, match="calibration"):
        ember.encode_file(tiny_embed, inp, out, output_dtype="int8")
    with pytest.raises(ValueError, match="shard"):
        ember.encode_file(tiny_embed, inp, out, shard=(3, 2))
    with pytest.raises(TypeError, match="shard"):
        ember.encode_file(tiny_embed, inp, out, shard=[0.5])
    with pytest.raises(ValueError, match="input_format"):
        ember.encode_file(tiny_embed, inp, out, input_format="csv")
    with pytest.raises(ValueError, match="extension"):
        ember.encode_file(tiny_embed, inp, tmp_path / "out.bin")
    with pytest.raises(ValueError, match="dimensions"):
        ember.encode_file(tiny_embed, inp, out, dimensions=10_000)
    assert not out.exists()
