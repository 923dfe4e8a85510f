//! Shared helpers for the integration tests: fixture paths, JSON access and the comparison that
//! every reference test uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// The real all-MiniLM-L6-v2, fetched by scripts/fetch-test-model.sh (the README's test
/// command runs it first). A missing model fails the test: a skipped reference test would pass
/// without checking anything.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("EMBER_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "the test model is missing at {}: run scripts/fetch-test-model.sh (the README's test command does)",
        dir.display()
    );
    dir
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn texts() -> Vec<String> {
    strings(&read_json(&fixtures().join("texts.json")))
}

pub fn pairs() -> Vec<(String, String)> {
    read_json(&fixtures().join("pairs.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

pub fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

pub fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

/// The numerics contract for the f32 CPU path against the float64 Hugging Face reference
/// (design.md section 3): cosine >= 0.99999 and max abs diff <= 1e-4, row by row.
pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let dot: f64 = got.iter().zip(want).map(|(&a, &b)| a as f64 * b).sum();
    let norm_got: f64 = got.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let norm_want: f64 = want.iter().map(|b| b * b).sum::<f64>().sqrt();
    let cosine = dot / (norm_got * norm_want).max(f64::MIN_POSITIVE);
    let max_diff = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        cosine >= 0.99999 && max_diff <= 1e-4,
        "{what}: cosine {cosine:.8}, max abs diff {max_diff:.3e}"
    );
}
