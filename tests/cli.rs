//! The `ember` binary end to end on the fixture models: outputs against the reference, and bad
//! input answered with an error that names the line, leaving no output behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{assert_failed_cleanly, ember, encode, rerank, scratch, stderr};
use common::*;
use serde_json::Value;

fn run_named<'a>(expected: &'a Value, name: &str) -> &'a Value {
    expected["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap()
}

/// Writes the run's texts (those that fit on one line) to a file; returns their rows.
fn write_texts(dir: &Path, run: &Value) -> (PathBuf, Vec<usize>) {
    let texts = texts();
    let rows: Vec<usize> = (0..indices(&run["texts"]).len())
        .filter(|&k| !texts[indices(&run["texts"])[k]].contains(['\n', '\r']))
        .collect();
    let body: String = rows
        .iter()
        .map(|&k| format!("{}\n", texts[indices(&run["texts"])[k]]))
        .collect();
    let path = dir.join("texts.txt");
    std::fs::write(&path, body).unwrap();
    (path, rows)
}

fn check_encode(run_name: &str, extra: &[&str]) {
    let model = fixtures().join("tiny-bert-embed-f32");
    let expected = read_json(&model.join("expected.json"));
    let run = run_named(&expected, run_name);
    let dir = scratch(run_name);
    let (input, lines) = write_texts(&dir, run);
    let output = dir.join("out.npy");
    let out = encode(&model, &input, &output, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tokens/s"),
        "no summary line: {}",
        stderr(&out)
    );
    let (n, dim, data) = ember::npy::read_f32(&mut std::fs::File::open(&output).unwrap(), "out").unwrap();
    assert_eq!((n, dim), (lines.len(), 64));
    let want = rows(&run["embeddings"]);
    for (line, &k) in lines.iter().enumerate() {
        assert_close(
            &format!("{run_name} line {line}"),
            &data[line * dim..(line + 1) * dim],
            &want[k],
        );
    }
}

#[test]
fn encode_uses_the_model_defaults() {
    check_encode("defaults", &[]);
}

#[test]
fn encode_overrides_pooling_and_max_length() {
    check_encode("cls_64", &["--pooling", "cls", "--max-length", "64"]);
}

#[test]
fn encode_without_normalization() {
    check_encode(
        "mean_raw",
        &["--pooling", "mean", "--no-normalize", "--max-length", "64"],
    );
}

#[test]
fn encode_with_a_query_instruction() {
    let instruction = ember::embedder::BGE_QUERY_INSTRUCTION_EN;
    check_encode(
        "queries_instruction",
        &[
            "--pooling",
            "cls",
            "--max-length",
            "64",
            "--query-instruction",
            instruction,
        ],
    );
}

fn write_pairs(dir: &Path, chosen: &[(String, String)]) -> PathBuf {
    let body: String = chosen
        .iter()
        .map(|(q, p)| format!("{}\n", serde_json::json!({"query": q, "passage": p})))
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn rerank_scores_match_the_reference() {
    for model in ["tiny-xlmr-rerank-f32", "tiny-bert-rerank-bf16"] {
        let model = fixtures().join(model);
        let expected = read_json(&model.join("expected.json"));
        let all = pairs();
        let chosen: Vec<_> = indices(&expected["pairs"])
            .iter()
            .map(|&i| all[i].clone())
            .collect();
        let dir = scratch("rerank");
        let input = write_pairs(&dir, &chosen);
        let want = rows(&expected["logits"]);
        for sigmoid in [false, true] {
            let output = dir.join("scores.jsonl");
            let extra: &[&str] = if sigmoid { &["--sigmoid"] } else { &[] };
            let out = rerank(&model, &input, &output, extra);
            assert!(out.status.success(), "{}", stderr(&out));
            let text = std::fs::read_to_string(&output).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), chosen.len());
            for (i, line) in lines.iter().enumerate() {
                let score = serde_json::from_str::<Value>(line).unwrap()["score"]
                    .as_f64()
                    .unwrap();
                let logit = want[i][0];
                let expect = if sigmoid {
                    1.0 / (1.0 + (-logit).exp())
                } else {
                    logit
                };
                assert!(
                    (score - expect).abs() <= 1e-4,
                    "{} pair {i}: {score} vs {expect}",
                    model.display()
                );
            }
        }
    }
}

#[test]
fn bad_jsonl_line_is_named_and_leaves_no_output() {
    let dir = scratch("bad-jsonl");
    let input = dir.join("pairs.jsonl");
    std::fs::write(
        &input,
        "{\"query\": \"a\", \"passage\": \"b\"}\n{\"query\": \"a\"}\n",
    )
    .unwrap();
    let output = dir.join("scores.jsonl");
    let model = fixtures().join("tiny-xlmr-rerank-f32");
    let out = rerank(&model, &input, &output, &[]);
    assert_failed_cleanly(&out, "line 2", &output);
    assert!(stderr(&out).contains("passage"));

    std::fs::write(&input, "not json\n").unwrap();
    let out = rerank(&model, &input, &output, &[]);
    assert_failed_cleanly(&out, "line 1", &output);
}

#[test]
fn invalid_utf8_is_named_by_line() {
    let dir = scratch("utf8");
    let input = dir.join("texts.txt");
    std::fs::write(&input, b"fine\nalso fine\nbroken \xff here\n").unwrap();
    let output = dir.join("out.npy");
    let model = fixtures().join("tiny-bert-embed-f32");
    let out = encode(&model, &input, &output, &[]);
    assert_failed_cleanly(&out, "line 3", &output);
}

// A GPU that is not there: tests/pipeline.rs; an unwritable output: tests/faults.rs.
#[test]
fn unknown_device_and_bad_options_are_errors() {
    let dir = scratch("device");
    let input = dir.join("texts.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let output = dir.join("out.npy");
    let model = fixtures().join("tiny-bert-embed-f32");
    let out = encode(&model, &input, &output, &["--device", "tpu"]);
    assert_failed_cleanly(&out, "not a device", &output);
    let out = encode(&model, &input, &output, &["--max-length", "100000"]);
    assert_failed_cleanly(&out, "max_length", &output);
    let missing = dir.join("no-such-model");
    let out = encode(&missing, &input, &output, &[]);
    assert_failed_cleanly(&out, "no-such-model", &output);
}

#[test]
fn minilm_encode_from_stdin_matches_the_library() {
    let dir = scratch("stdin");
    let output = dir.join("out.npy");
    let texts = ["A man is eating food.", "", "Ein Mann isst.", "数据库"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "encode",
            "--model",
            minilm_dir().to_str().unwrap(),
            "--input",
            "-",
            "--output",
            output.to_str().unwrap(),
            "--quiet",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", texts.join("\n")).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "--quiet printed: {}", stderr(&out));
    let (n, dim, data) = ember::npy::read_f32(&mut std::fs::File::open(&output).unwrap(), "out").unwrap();
    assert_eq!((n, dim), (4, 384));
    let lib = ember::Embedder::load(minilm_dir(), Default::default())
        .unwrap()
        .encode(&texts)
        .unwrap();
    assert_eq!(data, lib.data);
}

#[test]
fn dtype_flag_selects_bf16_or_int8_or_refuses_clearly() {
    let dir = scratch("dtype");
    let input = dir.join("texts.txt");
    std::fs::write(
        &input,
        "a first text\nthe second one is a bit longer than the first\n",
    )
    .unwrap();
    let model = fixtures().join("tiny-bert-embed-f32");
    let f32_out = dir.join("f32.npy");
    assert!(encode(&model, &input, &f32_out, &["--dtype", "f32"])
        .status
        .success());
    // (dtype, the instruction a CPU without it lacks, the cosine it keeps against f32)
    for (dtype, needs, bar) in [("bf16", "bf16", 0.999), ("int8", "AVX512-VNNI", 0.995)] {
        let out_path = dir.join(format!("{dtype}.npy"));
        let out = encode(&model, &input, &out_path, &["--dtype", dtype]);
        if !out.status.success() {
            // A CPU without the instructions must say so, not fall back to f32.
            assert_failed_cleanly(&out, needs, &out_path);
            continue;
        }
        let read = |p: &Path| ember::npy::read_f32(&mut std::fs::File::open(p).unwrap(), "out").unwrap();
        let ((_, dim, exact), (_, _, approx)) = (read(&f32_out), read(&out_path));
        for row in 0..2 {
            let want: Vec<f64> = exact[row * dim..(row + 1) * dim]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let got = &approx[row * dim..(row + 1) * dim];
            let cosine: f64 = got.iter().zip(&want).map(|(&a, b)| a as f64 * b).sum();
            assert!(cosine >= bar, "{dtype} row {row}: cosine {cosine}");
        }
    }
    let out = encode(&model, &input, &dir.join("bad.npy"), &["--dtype", "f64"]);
    assert_failed_cleanly(&out, "not a dtype", &dir.join("bad.npy"));
}

#[test]
fn odd_option_values_are_errors_not_panics() {
    let dir = scratch("odd-options");
    let input = dir.join("in.txt");
    std::fs::write(&input, "a\nb\n").unwrap();
    let model = fixtures().join("tiny-bert-embed-f32");
    let odd: [&[&str]; 12] = [
        &["--checkpoint-secs=1e30"],
        &["--checkpoint-secs=inf"],
        &["--checkpoint-secs=nan"],
        &["--checkpoint-secs=-1"],
        &["--shard", "0/0"],
        &["--shard", "5/3"],
        &["--max-length", "0"],
        &["--max-length", "99999999999999999999"],
        &["--batch-tokens=-1"],
        &["--device", "cuda:x"],
        &["--dtype", "f64"],
        &["--window", "99999999999999999999"],
    ];
    for args in odd {
        let out = encode(&model, &input, &dir.join("out.npy"), args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            !err.contains("panicked") && out.status.code().is_some(),
            "{args:?}: {err}"
        );
        assert!(!dir.join("out.npy").exists(), "{args:?}");
    }
}

/// `ember info --device cuda` opens the GPU and says which GEMM runs there and why; where no GPU
/// can be used (no driver, or a build without the CUDA backend) it fails with an error naming
/// the device and the reason, after describing the model.
#[test]
fn info_describes_the_gpu_and_its_gemm_or_says_why_not() {
    let model = common::cli::embed_model();
    let out = ember(&["info", "--model", common::cli::s(&model), "--device", "cuda"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("architecture   BertModel"), "{stdout}");
    if out.status.success() {
        let gemm = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("gemm"))
            .unwrap_or_else(|| panic!("no gemm line: {stdout}"));
        assert!(gemm.contains("sm80: ") || gemm.contains("sm90: "), "{gemm}");
        assert!(stdout.contains("cuda:0 "), "{stdout}");
    } else {
        let err = stderr(&out);
        // The two reasons a GPU-less machine has; on a GPU machine info must succeed.
        assert!(
            err.contains("device cuda:0")
                && (err.contains("no CUDA backend") || err.contains("no CUDA driver")),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // --device cpu adds nothing and opens nothing.
    let out = ember(&["info", "--model", common::cli::s(&model), "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
