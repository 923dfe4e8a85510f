//! Broken model folders: each gives a typed error that names the file and the tensor or field
//! at fault, and none panics. Each test copies a tiny fixture model into a scratch folder and
//! breaks one thing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ember::{Embedder, EmbedderOptions, Error};
use serde_json::Value;

fn scratch_copy(name: &str, model: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures().join(model), &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_error(dir: &Path) -> Error {
    match Embedder::load(dir, EmbedderOptions::default()) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e,
    }
}

fn assert_names(error: &Error, needles: &[&str]) {
    let message = error.to_string();
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} missing from: {message}");
    }
}

/// The safetensors file split into its header (as JSON) and its data bytes.
fn read_safetensors(path: &Path) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn write_safetensors(path: &Path, header: &serde_json::Map<String, Value>, data: &[u8]) {
    let text = serde_json::to_string(header).unwrap();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites one tensor's header entry with `edit`.
fn edit_tensor(dir: &Path, tensor: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let path = dir.join("model.safetensors");
    let (mut header, data) = read_safetensors(&path);
    edit(header.get_mut(tensor).unwrap());
    write_safetensors(&path, &header, &data);
    path
}

const LN: &str = "embeddings.LayerNorm.weight";

#[test]
fn truncated_weights_file() {
    let dir = scratch_copy("truncated", "tiny-bert-embed-f32");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert_names(&load_error(&dir), &["model.safetensors", "outside"]);
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_names(&load_error(&dir), &["model.safetensors", "too short"]);
}

#[test]
fn header_length_that_lies() {
    let dir = scratch_copy("huge-header", "tiny-bert-embed-f32");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for huge in [u64::MAX, 1 << 40, bytes.len() as u64] {
        bytes[..8].copy_from_slice(&huge.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_names(&load_error(&dir), &["model.safetensors", "header length"]);
    }
}

#[test]
fn offsets_past_the_end() {
    let dir = scratch_copy("past-end", "tiny-bert-embed-f32");
    edit_tensor(&dir, LN, |t| t["data_offsets"][1] = Value::from(u64::MAX / 2));
    assert_names(&load_error(&dir), &["model.safetensors", LN, "outside"]);
}

#[test]
fn overlapping_tensors() {
    let dir = scratch_copy("overlap", "tiny-bert-embed-f32");
    let path = dir.join("model.safetensors");
    let (mut header, data) = read_safetensors(&path);
    let bias = header["embeddings.LayerNorm.bias"]["data_offsets"].clone();
    header.get_mut(LN).unwrap()["data_offsets"] = bias;
    write_safetensors(&path, &header, &data);
    assert_names(&load_error(&dir), &["model.safetensors", "overlaps"]);
}

#[test]
fn size_that_does_not_match_dtype_and_shape() {
    let dir = scratch_copy("size", "tiny-bert-embed-f32");
    edit_tensor(&dir, LN, |t| t["shape"] = serde_json::json!([65]));
    assert_names(&load_error(&dir), &["model.safetensors", LN, "needs"]);
    let dir = scratch_copy("dtype-size", "tiny-bert-embed-f32");
    edit_tensor(&dir, LN, |t| t["dtype"] = Value::from("F16"));
    assert_names(&load_error(&dir), &["model.safetensors", LN, "needs"]);
}

#[test]
fn unsupported_dtype_of_a_needed_tensor() {
    let dir = scratch_copy("dtype", "tiny-bert-embed-f32");
    edit_tensor(&dir, LN, |t| t["dtype"] = Value::from("I32"));
    assert_names(&load_error(&dir), &["model.safetensors", LN, "I32"]);
}

#[test]
fn header_that_is_not_json() {
    let dir = scratch_copy("garbage-header", "tiny-bert-embed-f32");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..20].copy_from_slice(b"not json at ");
    std::fs::write(&path, &bytes).unwrap();
    assert_names(&load_error(&dir), &["model.safetensors", "JSON"]);
}

#[test]
fn missing_tensor() {
    let dir = scratch_copy("missing", "tiny-bert-embed-f32");
    let path = dir.join("model.safetensors");
    let (mut header, data) = read_safetensors(&path);
    let tensor = "encoder.layer.1.output.dense.bias";
    header.remove(tensor).unwrap();
    write_safetensors(&path, &header, &data);
    assert_names(&load_error(&dir), &[tensor, "not found"]);
}

#[test]
fn missing_shard_and_weights() {
    let dir = scratch_copy("shard", "tiny-bert-embed-bf16");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    assert_names(&load_error(&dir), &["model-00002-of-00003.safetensors"]);
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    assert_names(&load_error(&dir), &["no model.safetensors"]);
}

fn edit_config(dir: &Path, file: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut json = read_json(&path);
    edit(&mut json);
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

#[test]
fn shape_that_disagrees_with_config() {
    let dir = scratch_copy("config-shape", "tiny-bert-embed-f32");
    edit_config(&dir, "config.json", |c| c["intermediate_size"] = Value::from(97));
    assert_names(
        &load_error(&dir),
        &[
            "encoder.layer.0.intermediate.dense.weight",
            "[96, 64]",
            "[97, 64]",
        ],
    );
}

#[test]
fn unknown_model_type_activation_and_bad_fields() {
    let cases: [(&str, Value, &str); 5] = [
        ("model_type", Value::from("gpt2"), "gpt2"),
        ("hidden_act", Value::from("swish"), "swish"),
        ("num_attention_heads", Value::from(3), "num_attention_heads"),
        ("hidden_size", Value::from(-1), "hidden_size"),
        (
            "architectures",
            serde_json::json!(["BertForMaskedLM"]),
            "BertForMaskedLM",
        ),
    ];
    for (field, value, needle) in cases {
        let dir = scratch_copy(&format!("config-{field}"), "tiny-bert-embed-f32");
        edit_config(&dir, "config.json", |c| c[field] = value);
        assert_names(&load_error(&dir), &["config.json", field, needle]);
    }
    let dir = scratch_copy("config-missing", "tiny-bert-embed-f32");
    edit_config(&dir, "config.json", |c| {
        c.as_object_mut().unwrap().remove("vocab_size");
    });
    assert_names(&load_error(&dir), &["config.json", "vocab_size", "missing"]);
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert_names(&load_error(&dir), &["config.json", "invalid JSON"]);
}

#[test]
fn unsupported_sentence_transformers_pooling() {
    let dir = scratch_copy("pooling", "tiny-bert-embed-f32");
    edit_config(&dir, "1_Pooling/config.json", |c| {
        c["pooling_mode_max_tokens"] = Value::from(true)
    });
    assert_names(&load_error(&dir), &["1_Pooling", "pooling_mode_max_tokens"]);
}

#[test]
fn missing_or_corrupt_tokenizer() {
    let dir = scratch_copy("tokenizer", "tiny-bert-embed-f32");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 42}").unwrap();
    assert_names(&load_error(&dir), &["tokenizer.json", "tokenizer"]);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_names(&load_error(&dir), &["tokenizer.json", "not found"]);
}

#[test]
fn tokenizer_ids_past_the_embedding_table() {
    let dir = scratch_copy("ids", "tiny-bert-embed-f32");
    edit_config(&dir, "tokenizer.json", |t| {
        let added = t["added_tokens"].as_array_mut().unwrap();
        let mut token = added[0].clone();
        token["id"] = Value::from(99_999);
        token["content"] = Value::from("[HUGE]");
        added.push(token);
    });
    // The tokenizers crate gives the added token the next free id, one past the table.
    let vocab = read_json(&dir.join("config.json"))["vocab_size"]
        .as_u64()
        .unwrap();
    let embedder = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    let error = embedder.encode(&["fine text", "a [HUGE] token"]).unwrap_err();
    let table = format!("only {vocab} word embeddings");
    assert_names(&error, &["text 1", "tokenizer.json", "produced token id", &table]);
}
