//! The streaming `ember encode` / `ember rerank` pipeline end to end, on the tiny fixture models:
//! input order, formats, sharding, resume after kill -9 and Ctrl-C, hub ids, info and bench.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::*;
use serde_json::Value;

fn library_rows(texts: &[String]) -> ember::Embeddings {
    let embedder = ember::Embedder::load(embed_model(), ember::EmbedderOptions::default()).unwrap();
    embedder.encode(texts).unwrap()
}

#[test]
fn streaming_keeps_input_order_across_windows_and_batches() {
    let dir = scratch("order");
    let texts = mixed_corpus(700);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let output = dir.join("out.npy");
    let out = ok(encode(
        &embed_model(),
        &input,
        &output,
        &["--window", "97", "--batch-tokens", "300", "--threads", "2"],
    ));
    let err = stderr(&out);
    assert!(
        err.contains("700 texts") && err.contains("tokens/s") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains('\r'), "a progress bar was drawn on a pipe: {err}");
    let (rows, cols, data) = npy(&output);
    let want = library_rows(&texts);
    assert_eq!((rows, cols), (700, want.cols));
    // Bit-identical: the engine's rows do not depend on batch composition.
    assert_eq!(data, want.data);
    assert!(!dir.join("out.npy.partial").exists() && !dir.join("out.npy.journal").exists());
}

#[test]
fn jsonl_in_and_out_with_ids_from_stdin() {
    let dir = scratch("jsonl");
    let texts = mixed_corpus(20);
    let body: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{}\n",
                serde_json::json!({"doc": t, "key": format!("d{i}"), "other": 1})
            )
        })
        .collect();
    let output = dir.join("out.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "encode",
            "--model",
            s(&embed_model()),
            "--input",
            "-",
            "--output",
            s(&output),
        ])
        .args([
            "--input-format",
            "jsonl",
            "--text-field",
            "doc",
            "--id-field",
            "key",
            "--quiet",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert!(out.stderr.is_empty(), "--quiet printed: {}", stderr(&out));
    let want = library_rows(&texts);
    let lines: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], format!("d{i}"));
        let got: Vec<f32> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        // JSON carries each f32 in its shortest exact form: the round trip is exact.
        assert_eq!(got, want.row(i), "row {i}");
    }

    // A JSONL line without the field is named, and nothing is left behind.
    let input = dir.join("bad.jsonl");
    std::fs::write(&input, "{\"text\": \"a\"}\n{\"doc\": \"b\"}\n").unwrap();
    let out = encode(&embed_model(), &input, &output, &["--input-format", "jsonl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 2") && stderr(&out).contains("`text`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn f16_output_and_format_by_flag() {
    let dir = scratch("f16");
    let texts = mixed_corpus(9);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let output = dir.join("out.bin");
    let out = encode(&embed_model(), &input, &output, &[]);
    assert!(stderr(&out).contains("--output-format"), "{}", stderr(&out));
    ok(encode(
        &embed_model(),
        &input,
        &output,
        &["--output-format", "npy", "--output-dtype", "f16"],
    ));
    let bytes = std::fs::read(&output).unwrap();
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(
        header.contains("'descr': '<f2'") && header.contains("'shape': (9, 64)"),
        "{header}"
    );
    let want = library_rows(&texts);
    let got: Vec<f32> = bytes[128..]
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(got.len(), want.data.len());
    for (g, w) in got.iter().zip(&want.data) {
        assert_eq!(*g, half::f16::from_f32(*w).to_f32());
    }
}

#[test]
fn shards_concatenate_to_the_whole_run() {
    let dir = scratch("shard");
    let texts = mixed_corpus(101);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let whole = dir.join("whole.jsonl");
    let model = embed_model();
    let base = ["encode", "--model", s(&model), "--input", s(&input)];
    ok(ember(&[&base[..], &["--output", s(&whole)]].concat()));
    let mut joined = Vec::new();
    for i in 0..3 {
        let part = dir.join(format!("part{i}.jsonl"));
        let shard = format!("{i}/3");
        ok(ember(
            &[&base[..], &["--output", s(&part), "--shard", &shard]].concat(),
        ));
        joined.extend(std::fs::read(&part).unwrap());
    }
    assert_eq!(joined, std::fs::read(&whole).unwrap());
    let out = ember(&[&base[..], &["--output", s(&whole), "--shard", "3/3"]].concat());
    assert!(stderr(&out).contains("shard"), "{}", stderr(&out));
}

/// Starts a long run, waits for `records` checkpoints, then stops it with `signal`.
fn interrupt_after_checkpoints(args: &[&str], journal: &Path, records: usize, signal: &str) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while journal_records(journal) < records {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint was written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

#[test]
fn kill_9_then_resume_is_byte_identical() {
    let dir = scratch("resume");
    let texts = mixed_corpus(6000);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let whole = dir.join("whole.npy");
    let model = embed_model();
    let base = [
        "encode",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--window",
        "128",
        "--threads",
        "1",
    ];
    ok(ember(&[&base[..], &["--output", s(&whole)]].concat()));

    let output = dir.join("out.npy");
    let (partial, journal) = (dir.join("out.npy.partial"), dir.join("out.npy.journal"));
    let args = [&base[..], &["--output", s(&output), "--checkpoint-secs", "0"]].concat();
    let out = interrupt_after_checkpoints(&args, &journal, 3, "-9");
    assert!(!out.status.success());
    assert!(!output.exists(), "a killed run left a complete-looking output");
    let bytes = std::fs::read(&partial).unwrap();
    assert!(
        !bytes.starts_with(b"\x93NUMPY"),
        "a partial .npy must not load as NumPy"
    );
    let done = journal_records(&journal);
    assert!(done >= 3 && bytes.len() < std::fs::read(&whole).unwrap().len());

    // Without --resume an unfinished run is not overwritten.
    let out = ember(&args);
    assert!(
        !out.status.success() && stderr(&out).contains("--resume"),
        "{}",
        stderr(&out)
    );

    let out = ok(ember(&[&args[..], &["--resume"]].concat()));
    assert!(stderr(&out).contains("resuming after"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), std::fs::read(&whole).unwrap());
    assert!(!partial.exists() && !journal.exists());
}

#[test]
fn ctrl_c_keeps_finished_rows_and_resume_completes() {
    let dir = scratch("sigint");
    let texts = mixed_corpus(6000);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let model = rerank_model();
    let base = [
        "rerank",
        "--model",
        s(&model),
        "--query",
        "museum data",
        "--input",
        s(&input),
        "--window",
        "128",
        "--threads",
        "1",
    ];
    let whole = dir.join("whole.jsonl");
    ok(ember(&[&base[..], &["--output", s(&whole)]].concat()));

    let output = dir.join("out.jsonl");
    let journal = dir.join("out.jsonl.journal");
    let args = [&base[..], &["--output", s(&output), "--checkpoint-secs", "0"]].concat();
    let out = interrupt_after_checkpoints(&args, &journal, 2, "-INT");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted") && stderr(&out).contains("--resume"),
        "{}",
        stderr(&out)
    );
    // Everything finished before the signal was written and recorded: the partial file is a
    // prefix of the whole output, cut at a row boundary.
    let partial = std::fs::read(dir.join("out.jsonl.partial")).unwrap();
    let full = std::fs::read(&whole).unwrap();
    assert!(!partial.is_empty() && partial.len() < full.len() && full.starts_with(&partial));
    assert!(partial.ends_with(b"\n"));

    // Another precision is another job: resuming in it would mix rows of two precisions. The
    // refusal leaves the partial file as it was.
    let other = ember(&[&args[..], &["--resume", "--dtype", "int8"]].concat());
    assert!(
        !other.status.success() && stderr(&other).contains("different job"),
        "{}",
        stderr(&other)
    );
    assert_eq!(std::fs::read(dir.join("out.jsonl.partial")).unwrap(), partial);

    ok(ember(&[&args[..], &["--resume"]].concat()));
    assert_eq!(std::fs::read(&output).unwrap(), full);
}

#[test]
fn bad_line_keeps_earlier_rows_and_skip_invalid_lists_lines() {
    let dir = scratch("skip");
    let mut body: Vec<u8> = Vec::new();
    let texts = mixed_corpus(3000);
    for t in &texts[..2990] {
        body.extend_from_slice(t.as_bytes());
        body.push(b'\n');
    }
    body.extend_from_slice(b"broken \xff here\n");
    for t in &texts[2990..] {
        body.extend_from_slice(t.as_bytes());
        body.push(b'\n');
    }
    let input = dir.join("in.txt");
    std::fs::write(&input, &body).unwrap();
    let output = dir.join("out.npy");
    let model = embed_model();
    let base = [&encode_base(&model, &input)[..], &["--output", s(&output)]].concat();
    let small = ["--window", "64", "--checkpoint-secs", "0"];
    let out = ember(&[&base[..], &small[..]].concat());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("line 2991") && err.contains("UTF-8") && err.contains("--resume"),
        "{err}"
    );
    assert!(dir.join("out.npy.partial").exists() && !output.exists());

    // A journal of an older ember, which wrote choices as enum numbers ("input_format":"0"),
    // is refused as another job's, never read as this one's; the partial file is untouched.
    let journal = dir.join("out.npy.journal");
    let recorded = std::fs::read_to_string(&journal).unwrap();
    assert!(recorded.contains(r#""input_format":"text""#), "{recorded}");
    std::fs::write(
        &journal,
        recorded.replace(r#""input_format":"text""#, r#""input_format":"0""#),
    )
    .unwrap();
    let partial = std::fs::read(dir.join("out.npy.partial")).unwrap();
    let old = ember(&[&base[..], &small[..], &["--resume", "--skip-invalid"]].concat());
    assert!(
        !old.status.success() && stderr(&old).contains("different job"),
        "{}",
        stderr(&old)
    );
    assert_eq!(std::fs::read(dir.join("out.npy.partial")).unwrap(), partial);
    std::fs::write(&journal, recorded).unwrap();

    let out = ok(ember(
        &[&base[..], &small[..], &["--resume", "--skip-invalid"]].concat(),
    ));
    assert!(
        stderr(&out).contains("1 skipped (lines 2991)"),
        "{}",
        stderr(&out)
    );
    let (rows, _, data) = npy(&output);
    assert_eq!(rows, 3000);
    assert_eq!(data, library_rows(&texts).data);
}

#[test]
fn rerank_query_with_passages_top_k_and_sigmoid() {
    let dir = scratch("rerank");
    let passages = mixed_corpus(40);
    let input = dir.join("passages.txt");
    write_lines(&input, &passages);
    let query = "quantum museum";
    let reranker = ember::Reranker::load(rerank_model(), ember::RerankerOptions::default()).unwrap();
    let pairs: Vec<(&str, &str)> = passages.iter().map(|p| (query, p.as_str())).collect();
    let want = reranker.compute_score(&pairs, true).unwrap();

    let output = dir.join("scores.jsonl");
    let out = ok(rerank(
        &rerank_model(),
        &input,
        &output,
        &["--query", query, "--sigmoid", "--top-k", "3"],
    ));
    let scores: Vec<f32> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap() as f32
        })
        .collect();
    assert_eq!(scores, want);
    let mut order: Vec<usize> = (0..want.len()).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
    let top: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(top.len(), 3);
    for (rank, row) in top.iter().enumerate() {
        assert_eq!(row["rank"], rank + 1);
        assert_eq!(row["line"], order[rank] + 1);
        assert_eq!(row["passage"], passages[order[rank]]);
        assert_eq!(row["score"].as_f64().unwrap() as f32, want[order[rank]]);
    }
}

#[test]
fn devices_parse_and_fail_clearly_without_cuda() {
    let dir = scratch("devices");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(3));
    let output = dir.join("out.npy");
    let model = embed_model();
    let base = [&encode_base(&model, &input)[..], &["--output", s(&output)]].concat();
    for device in ["cuda", "cuda:1", "cuda:0,1", "cuda:0,cuda:1"] {
        let out = ember(&[&base[..], &["--device", device]].concat());
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("device cuda:") && !err.contains("panicked"),
            "{device}: {err}"
        );
        // Nothing is left behind: no output, no partial file, no journal.
        assert!(!output.exists() && !dir.join("out.npy.partial").exists());
        assert!(
            !dir.join("out.npy.journal").exists(),
            "{device}: a journal was left"
        );
    }
    for device in ["cuda:0,0", "cpu,cuda:0", "gpu"] {
        let out = ember(&[&base[..], &["--device", device]].concat());
        assert!(
            stderr(&out).contains("invalid option device"),
            "{device}: {}",
            stderr(&out)
        );
    }
    let out = ember(&[&base[..], &["--queries"]].concat());
    assert!(stderr(&out).contains("--query-instruction"), "{}", stderr(&out));
}

#[test]
fn hub_ids_resolve_through_the_local_cache() {
    let dir = scratch("hub");
    let repo = dir.join("hub").join("models--tiny-org--tiny-embed");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd\n").unwrap();
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::os::unix::fs::symlink(embed_model().join(file), snapshot.join(file)).unwrap();
    }
    let texts = mixed_corpus(5);
    let input = dir.join("in.txt");
    write_lines(&input, &texts);
    let output = dir.join("out.npy");
    let run = |model: &str| {
        Command::new(env!("CARGO_BIN_EXE_ember"))
            .args([
                "encode",
                "--model",
                model,
                "--input",
                s(&input),
                "--output",
                s(&output),
            ])
            .env("HF_HOME", &dir)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    ok(run("tiny-org/tiny-embed"));
    assert_eq!(npy(&output).2, library_rows(&texts).data);
    let out = run("tiny-org/absent-model");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("models--tiny-org--absent-model"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn info_and_bench_describe_the_model() {
    let out = ok(ember(&["info", "--model", s(&embed_model())]));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "BertModel",
        "layers         2",
        "hidden size    64",
        "heads          2",
        "parameters",
        "stored dtype   f32",
        "pooling        mean",
        "max length",
        "devices        cpu",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let out = ok(ember(&[
        "bench",
        "--model",
        s(&embed_model()),
        "--texts",
        "64",
        "--repeat",
        "1",
    ]));
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "tokenize",
        "forward",
        "write",
        "pipeline / bare forward",
        "tokens/s",
        "texts/s",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

/// The progress bar is drawn when standard error is a terminal (here a pseudo-terminal made by
/// util-linux `script`; the test is skipped where that tool is missing).
#[test]
fn progress_bar_on_a_terminal_only() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to make a pseudo-terminal");
        return;
    }
    let dir = scratch("progress");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(3000));
    let output = dir.join("out.npy");
    let command = format!(
        "{} encode --model {} --input {} --output {} --window 200",
        env!("CARGO_BIN_EXE_ember"),
        s(&embed_model()),
        s(&input),
        s(&output)
    );
    let out = ok(Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/3000 texts") && text.contains("tokens/s, ETA"),
        "{text}"
    );
    assert!(text.contains("ember: 3000 texts"), "{text}");
}
