//! Helpers for the tests that run the `ember` binary: running it, scratch folders, corpora.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fixtures;

/// The `ember` binary cargo built for these tests.
pub fn ember_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

pub fn ember(args: &[&str]) -> Output {
    ember_command().args(args).output().unwrap()
}

/// `ember encode --model MODEL --input INPUT --output OUTPUT` plus `extra`.
pub fn encode(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    run("encode", model, input, output, extra)
}

/// `ember rerank --model MODEL --input INPUT --output OUTPUT` plus `extra`.
pub fn rerank(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    run("rerank", model, input, output, extra)
}

fn run(command: &str, model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let base = [
        command,
        "--model",
        s(model),
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    ember(&[&base[..], extra].concat())
}

/// `encode --model MODEL --input INPUT`, for argument lists that go on.
pub fn encode_base<'a>(model: &'a Path, input: &'a Path) -> [&'a str; 5] {
    ["encode", "--model", s(model), "--input", s(input)]
}

/// `out`, after asserting that it succeeded.
pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "ember failed: {}", stderr(&out));
    out
}

/// No complete-looking output at `target`: it is absent, and its `.partial` (which a run that
/// can be resumed keeps) does not load as NumPy.
pub fn assert_nothing_complete(target: &Path) {
    assert!(!target.exists(), "{} exists after a failed run", target.display());
    let mut partial = target.as_os_str().to_owned();
    partial.push(".partial");
    if let Ok(bytes) = std::fs::read(&partial) {
        assert!(!bytes.starts_with(b"\x93NUMPY"), "a partial .npy loads as NumPy");
    }
}

/// A run that failed cleanly: a nonzero status, an error that contains `needle` and is no
/// panic, and nothing left at `output`, not even a partial.
pub fn assert_failed_cleanly(out: &Output, needle: &str, output: &Path) {
    let err = stderr(out);
    assert!(!out.status.success(), "ember succeeded: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_nothing_complete(output);
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    assert!(!Path::new(&partial).exists(), "a partial output was left behind");
}

/// What the run wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An empty folder of its own for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn embed_model() -> PathBuf {
    fixtures().join("tiny-bert-embed-f32")
}

pub fn rerank_model() -> PathBuf {
    fixtures().join("tiny-xlmr-rerank-f32")
}

/// `n` deterministic texts of varied length (some truncated at the tiny model's 64 tokens),
/// with empty texts among them.
pub fn mixed_corpus(n: usize) -> Vec<String> {
    let words = [
        "river", "data", "the", "museum", "of", "quantum", "bridge", "é", "数据", "model",
    ];
    (0..n)
        .map(|i| {
            let len = (i * 7919) % 97;
            if i % 13 == 5 {
                return String::new();
            }
            (0..len)
                .map(|j| words[(i + j * 3) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, body).unwrap();
}

/// A .npy file's (rows, cols, values).
pub fn npy(path: &Path) -> (usize, usize, Vec<f32>) {
    ember::npy::read_f32(&mut std::fs::File::open(path).unwrap(), "out").unwrap()
}

/// Lines a run's journal records as finished (its first line is the job's fingerprint).
pub fn journal_records(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// The `score` of each line of a rerank JSONL output.
pub fn jsonl_scores(path: &Path) -> Vec<f32> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap() as f32
        })
        .collect()
}

/// Runs ember with `args`, asserts that it fails with `needle` in its error.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = ember(args);
    assert!(!out.status.success(), "ember {args:?} succeeded");
    assert!(
        stderr(&out).contains(needle),
        "ember {args:?}: no `{needle}` in: {}",
        stderr(&out)
    );
}
