"""Bad arguments and broken models are Python exceptions with a useful message, never a crash:
TypeError / ValueError for arguments, FileNotFoundError for a missing model, ember.EmberError
(carrying ember's own message, which names the file or field) for the rest."""

import shutil

import pytest

import ember


def test_a_missing_model_is_file_not_found(tmp_path):
    missing = str(tmp_path / "no-such-model")
    for load in (ember.FlagModel, ember.SentenceTransformer, ember.FlagReranker, ember.CrossEncoder):
        with pytest.raises(FileNotFoundError, match="no-such-model"):
            load(missing)


def test_a_folder_without_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ember.FlagModel(str(tmp_path))


def test_a_broken_config_is_an_ember_error_naming_the_file(tmp_path, tiny_embed):
    model = tmp_path / "model"
    shutil.copytree(tiny_embed, model)
    (model / "config.json").write_text("{ not json")
    with pytest.raises(ember.EmberError, match="config.json") as raised:
        ember.FlagModel(str(model))
    assert isinstance(raised.value, Exception)


def test_a_missing_tokenizer_is_an_ember_error(tmp_path, tiny_embed):
    model = tmp_path / "model"
    shutil.copytree(tiny_embed, model)
    (model / "tokenizer.json").unlink()
    with pytest.raises(ember.EmberError, match="tokenizer.json"):
        ember.SentenceTransformer(str(model))


def test_a_reranker_needs_a_classification_model(tiny_embed):
    with pytest.raises(ember.EmberError, match="ForSequenceClassification"):
        ember.FlagReranker(tiny_embed)


def test_sentences_of_the_wrong_type(tiny_embed):
    model = ember.FlagModel(tiny_embed)
    for bad in (5, None, b"bytes", ["ok", 3], [["nested"]]):
        with pytest.raises(TypeError):
            model.encode(bad)
    with pytest.raises(TypeError):
        ember.SentenceTransformer(tiny_embed).encode(["ok", None])


def test_pairs_of_the_wrong_shape(tiny_rerank):
    reranker = ember.FlagReranker(tiny_rerank)
    for bad in ("one string", ["q"], [["q", "p", "extra"]], [("q", 1)], 7):
        with pytest.raises(TypeError):
            reranker.compute_score(bad)


def test_bad_options_are_value_errors(tiny_embed, tiny_rerank):
    st = ember.SentenceTransformer(tiny_embed)
    with pytest.raises(ValueError, match="float16"):
        st.encode(["x"], precision="float16")
    with pytest.raises(ValueError, match="batch_size"):
        st.encode(["x"], batch_size=0)
    with pytest.raises(ValueError, match="output_value"):
        st.encode(["x"], output_value="token_embeddings")
    with pytest.raises(ValueError, match="pooling_method"):
        ember.FlagModel(tiny_embed, pooling_method="last_token")
    with pytest.raises(ValueError, match="device"):
        ember.FlagModel(tiny_embed, devices="tpu")
    with pytest.raises(ValueError, match="dtype"):
        ember.FlagModel(tiny_embed, dtype="f8")
    with pytest.raises(ValueError, match="one device per model"):
        ember.FlagModel(tiny_embed, devices=["cuda:0", "cuda:1"])
    with pytest.raises(ValueError, match="FP16 only"):
        ember.FlagModel(tiny_embed, devices="cuda", use_fp16=False)
    # ember's own check: no room for content next to the special tokens.
    with pytest.raises(ValueError, match="max_length"):
        ember.FlagModel(tiny_embed).encode(["x"], max_length=2)
    with pytest.raises(ValueError, match="max_length"):
        ember.FlagReranker(tiny_rerank).compute_score(["q", "p"], max_length=1)
    with pytest.raises(TypeError, match="max_length"):
        ember.FlagReranker(tiny_rerank).compute_score(["q", "p"], max_length="64")


def test_a_device_this_build_lacks_is_an_ember_error(tiny_embed):
    if "cuda" in ember.compiled_devices:
        pytest.skip("this build has the CUDA backend")
    with pytest.raises(ember.EmberError, match="no CUDA backend"):
        ember.SentenceTransformer(tiny_embed, device="cuda")
