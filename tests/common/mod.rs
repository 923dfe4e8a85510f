//! Shared helpers for the integration tests: fixture paths, JSON access and the comparison that
//! every reference test uses.
#![allow(dead_code)]

pub mod cli;
pub mod reference;
pub mod testutil;

use std::path::{Path, PathBuf};

// What reference.rs and testutil.rs take from their includer (the library's unit tests include
// them too, with the crate's own types).
use ember::backend::{Activation, HostMatrix, Pooling};
use ember::Batch;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixtures folder: `EMBER_FIXTURES` where set (the GPU bundle carries a copy), else the
/// repository's.
pub fn fixtures() -> PathBuf {
    std::env::var_os("EMBER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("fixtures"))
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

/// The cosine of the angle between `a` and `b` (f32 or f64 values), in f64.
pub fn cosine<T: Copy + Into<f64>>(a: &[f32], b: &[T]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y.into()).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&y| y.into().powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// What `open` gives when a GPU is usable; otherwise `None`, after printing why `test` does
/// nothing. With EMBER_REQUIRE_GPU set (scripts/cuda/gpu-run.sh sets it) a failure to open panics
/// instead: on the GPU machine a skip would hide a failure.
pub fn usable_gpu<T>(test: &str, open: impl FnOnce() -> ember::Result<T>) -> Option<T> {
    match open() {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var_os("EMBER_REQUIRE_GPU").is_some() => {
            panic!("{test}: EMBER_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            eprintln!("{test}: skipped, no usable GPU: {e}");
            None
        }
    }
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

/// The numerics contract for the f32 CPU path against the float64 Hugging Face reference:
/// cosine >= 0.99999 and max abs diff <= 1e-4, row by row.
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

/// Set in the environment of a child test process; a child test without it returns at once.
pub const CHILD: &str = "EMBER_TEST_CHILD";

pub fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs this test binary again with only the `#[ignore]`d test `test`, `env` added to a clean
/// fault environment. For faults that are per process (a limit read once, a sticky GPU error).
pub fn child(test: &str, env: &[(&str, String)]) -> std::process::Output {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("EMBER_FAULT_ALLOC_LIMIT")
        .env_remove("EMBER_CUDA_CHECKED");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// A process's exit status and output, for assertion messages.
pub fn report(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// 400 texts of 1 to about 60 tokens for the tiny fixture models (64 positions).
pub fn short_corpus() -> Vec<String> {
    let words = [
        "river", "data", "museum", "quantum", "bridge", "é", "数据", "model",
    ];
    (0..400)
        .map(|i| {
            let n = (i * 37) % 50;
            (0..n)
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The out-of-memory scenario on `device`, run in the parent test: rows computed without a
/// limit go to a file, then two children run under allocation limits (see the two functions
/// below, which each test binary wraps in `#[ignore]`d child tests named
/// `child_encodes_under_an_allocation_limit` and `child_reports_a_sequence_that_cannot_fit`).
pub fn out_of_memory_scenario(device: ember::Device) {
    let want = tiny_embedder(device).encode(&short_corpus()).unwrap();
    let path = std::env::temp_dir().join(format!("ember-oom-rows-{}.bin", std::process::id()));
    let bytes: Vec<u8> = want.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    // The tiny model's widest activation (QKV, 192 values per token) takes 384 bytes per token
    // on a GPU (f16) and 768 on the CPU (f32): 64 KiB holds one 64-token sequence either way,
    // not a batch of hundreds of tokens.
    let out = child(
        "child_encodes_under_an_allocation_limit",
        &[
            ("EMBER_FAULT_ALLOC_LIMIT", "65536".into()),
            ("EMBER_OOM_ROWS", path.display().to_string()),
        ],
    );
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", report(&out));
    let out = child(
        "child_reports_a_sequence_that_cannot_fit",
        &[("EMBER_FAULT_ALLOC_LIMIT", "1024".into())],
    );
    assert!(out.status.success(), "{}", report(&out));
}

pub fn tiny_embedder(device: ember::Device) -> ember::Embedder {
    let options = ember::EmbedderOptions {
        device,
        ..ember::EmbedderOptions::default()
    };
    ember::Embedder::load(fixtures().join("tiny-bert-embed-f32"), options).unwrap()
}

/// Child: under the limit, batches are halved, the budget drops, and the rows keep their bits.
pub fn encode_under_an_allocation_limit(device: ember::Device) {
    let embedder = tiny_embedder(device);
    let got = embedder.encode(&short_corpus()).unwrap();
    let budget = embedder.encoder().token_budget();
    println!("token budget after running out of memory: {budget:?}");
    assert!(budget.is_some(), "the limit never bit: no batch was halved");
    let want: Vec<f32> = std::fs::read(std::env::var("EMBER_OOM_ROWS").unwrap())
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got.data, want, "rows changed when batches were halved");
}

/// Child: a limit under one sequence's activations is a clear error naming the device.
pub fn report_a_sequence_that_cannot_fit(device: ember::Device) {
    let err = tiny_embedder(device).encode(&short_corpus()).unwrap_err();
    println!("error: {err}");
    assert!(matches!(err, ember::Error::OutOfMemory { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&device.to_string()) && text.contains("single sequence"),
        "{text}"
    );
}
