//! End-to-end checks against outputs of Hugging Face transformers / sentence-transformers in
//! float64 (fixtures/, written by scripts/fixtures/make_fixtures.py): the real all-MiniLM-L6-v2 and tiny
//! random-weight BERT and XLM-R models stored as f32, f16 and bf16 (bf16 sharded).

mod common;

use std::path::Path;

use common::*;
use ember::{Embedder, EmbedderOptions, Encoder, Pooling, Reranker, RerankerOptions, Sequence};
use serde_json::Value;

fn pooling(v: &Value) -> Pooling {
    match v.as_str().unwrap() {
        "cls" => Pooling::Cls,
        "mean" => Pooling::Mean,
        other => panic!("unknown pooling {other}"),
    }
}

/// Every run of an embedder fixture: tokenization identical, embeddings within tolerance.
fn check_embedder(model_dir: &Path, expected: &Value) {
    let texts = texts();
    for run in expected["runs"].as_array().unwrap() {
        let name = format!("{} / {}", model_dir.display(), run["name"].as_str().unwrap());
        let (want_pooling, want_normalize) = (pooling(&run["pooling"]), run["normalize"].as_bool().unwrap());
        let want_max = run["max_length"].as_u64().unwrap() as usize;
        let instruction = run["query_instruction"].as_str().map(str::to_owned);
        let options = if run["uses_defaults"].as_bool().unwrap() {
            EmbedderOptions {
                query_instruction: instruction.clone(),
                ..Default::default()
            }
        } else {
            EmbedderOptions {
                pooling: Some(want_pooling),
                normalize: Some(want_normalize),
                max_length: Some(want_max),
                query_instruction: instruction.clone(),
                ..Default::default()
            }
        };
        let embedder = Embedder::load(model_dir, options).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (embedder.pooling(), embedder.normalize(), embedder.max_length()),
            (want_pooling, want_normalize, want_max),
            "{name}: resolved options"
        );

        let run_texts: Vec<&str> = indices(&run["texts"])
            .iter()
            .map(|&i| texts[i].as_str())
            .collect();
        let queries = instruction.is_some();
        let sequences = embedder.tokenize(&run_texts, queries).unwrap();
        for (i, (seq, want)) in sequences.iter().zip(ids(&run["token_ids"])).enumerate() {
            assert_eq!(
                seq.token_ids, want,
                "{name}: token ids of text {i} {:?}",
                run_texts[i]
            );
        }
        for (i, (seq, want)) in sequences.iter().zip(ids(&run["type_ids"])).enumerate() {
            assert_eq!(seq.type_ids, want, "{name}: type ids of text {i}");
        }

        let got = if queries {
            embedder.encode_queries(&run_texts)
        } else {
            embedder.encode(&run_texts)
        }
        .unwrap();
        let want = rows(&run["embeddings"]);
        assert_eq!(got.rows, want.len(), "{name}: rows");
        for (i, want) in want.iter().enumerate() {
            assert_close(&format!("{name}: text {i} {:?}", run_texts[i]), got.row(i), want);
        }
    }
}

/// The low-level entry: hidden states of hand-packed token ids, token by token.
fn check_hidden_states(model_dir: &Path, expected: &Value) {
    let hs = &expected["hidden_states"];
    let encoder = Encoder::load(model_dir, ember::Device::Cpu).unwrap();
    let sequences: Vec<Sequence> = ids(&hs["token_ids"])
        .into_iter()
        .zip(ids(&hs["type_ids"]))
        .map(|(token_ids, type_ids)| Sequence {
            token_ids,
            type_ids,
            truncated: false,
        })
        .collect();
    let batch = encoder.pack(&sequences.iter().collect::<Vec<_>>()).unwrap();
    let hidden = encoder.hidden_states(&batch).unwrap();
    let mut row = 0;
    for (s, per_text) in hs["last_hidden_state"].as_array().unwrap().iter().enumerate() {
        for (t, want) in rows(per_text).iter().enumerate() {
            assert_close(
                &format!("{}: sequence {s} token {t}", model_dir.display()),
                hidden.row(row),
                want,
            );
            row += 1;
        }
    }
    assert_eq!(row, hidden.rows);
}

fn check_reranker(model_dir: &Path, expected: &Value) {
    let name = model_dir.display().to_string();
    let all_pairs = pairs();
    let chosen: Vec<(String, String)> = indices(&expected["pairs"])
        .iter()
        .map(|&i| all_pairs[i].clone())
        .collect();
    let reranker = Reranker::load(model_dir, RerankerOptions::default()).unwrap();
    assert_eq!(
        reranker.max_length() as u64,
        expected["max_length"].as_u64().unwrap(),
        "{name}: max length"
    );

    let sequences = reranker.tokenize(&chosen).unwrap();
    for (i, (seq, want)) in sequences.iter().zip(ids(&expected["token_ids"])).enumerate() {
        assert_eq!(seq.token_ids, want, "{name}: token ids of pair {i}");
    }
    for (i, (seq, want)) in sequences.iter().zip(ids(&expected["type_ids"])).enumerate() {
        assert_eq!(seq.type_ids, want, "{name}: type ids of pair {i}");
    }
    let logits = reranker.logits(&chosen).unwrap();
    for (i, want) in rows(&expected["logits"]).iter().enumerate() {
        assert_close(&format!("{name}: pair {i}"), logits.row(i), want);
    }
    // compute_score is the same logit, and the sigmoid of it when asked.
    let raw = reranker.compute_score(&chosen, false).unwrap();
    let squashed = reranker.compute_score(&chosen, true).unwrap();
    for i in 0..chosen.len() {
        assert_eq!(raw[i], logits.row(i)[0]);
        assert!((squashed[i] - 1.0 / (1.0 + (-raw[i]).exp())).abs() < 1e-6);
    }
}

fn tiny(name: &str) -> std::path::PathBuf {
    fixtures().join(name)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let expected = read_json(&fixtures().join("minilm/expected.json"));
    check_embedder(&minilm_dir(), &expected);
}

#[test]
fn minilm_hidden_states_match_transformers() {
    let expected = read_json(&fixtures().join("minilm/expected.json"));
    check_hidden_states(&minilm_dir(), &expected);
}

#[test]
fn tiny_bert_embedder_matches_in_every_stored_dtype() {
    for dtype in ["f32", "f16", "bf16"] {
        let dir = tiny(&format!("tiny-bert-embed-{dtype}"));
        let expected = read_json(&dir.join("expected.json"));
        check_embedder(&dir, &expected);
        check_hidden_states(&dir, &expected);
    }
}

#[test]
fn tiny_bert_reranker_matches_in_every_stored_dtype() {
    for dtype in ["f32", "f16", "bf16"] {
        let dir = tiny(&format!("tiny-bert-rerank-{dtype}"));
        check_reranker(&dir, &read_json(&dir.join("expected.json")));
    }
}

#[test]
fn tiny_xlmr_reranker_matches_in_every_stored_dtype() {
    for dtype in ["f32", "f16", "bf16"] {
        let dir = tiny(&format!("tiny-xlmr-rerank-{dtype}"));
        check_reranker(&dir, &read_json(&dir.join("expected.json")));
    }
}

/// On the CPU, batches run side by side, a batch per thread, when the pool has two threads or
/// more (`Encoder::runs_batches_side_by_side`): the rows must be the ones of the same batches
/// run one after another on one thread, in every dtype this CPU runs, each in its place.
#[test]
fn batches_side_by_side_give_the_rows_of_batches_in_turn() {
    let texts = texts();
    let dtypes = [ember::Dtype::F32, ember::Dtype::Bf16, ember::Dtype::Int8];
    for dtype in dtypes {
        let options = EmbedderOptions {
            batch_tokens: Some(120),
            ..Default::default()
        };
        let embedder = match Embedder::load_with_dtype(minilm_dir(), options, dtype) {
            Ok(embedder) => embedder,
            // bf16 and int8 need CPU features this machine may lack (the load says so).
            Err(e) if dtype != ember::Dtype::F32 => {
                eprintln!("{dtype}: not on this CPU ({e})");
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let batches = embedder.encoder().runs_batches_side_by_side(2);
                (batches, embedder.encode(&texts).unwrap())
            })
        };
        let (side_by_side_on_one, in_turn) = on(1);
        let (side_by_side_on_three, side_by_side) = on(3);
        assert!(!side_by_side_on_one && side_by_side_on_three, "{dtype}: the rule");
        assert_eq!(in_turn.rows, texts.len());
        for i in 0..texts.len() {
            assert_eq!(in_turn.row(i), side_by_side.row(i), "{dtype}: text {i}");
        }
    }
}

/// A text's embedding must not depend on which other texts share its batch, nor on the batch
/// size: every text alone, all texts in one batch, and small mixed batches agree exactly.
#[test]
fn results_do_not_depend_on_batching() {
    let texts = texts();
    let dir = minilm_dir();
    let all_at_once = Embedder::load(&dir, EmbedderOptions::default())
        .unwrap()
        .encode(&texts)
        .unwrap();
    let small_batches = Embedder::load(
        &dir,
        EmbedderOptions {
            batch_tokens: Some(300),
            ..Default::default()
        },
    )
    .unwrap()
    .encode(&texts)
    .unwrap();
    let one_by_one = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    let mut reversed = texts.clone();
    reversed.reverse();
    let reversed = one_by_one.encode(&reversed).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = one_by_one.encode(&[text]).unwrap();
        assert_eq!(
            all_at_once.row(i),
            alone.row(0),
            "text {i}: batch of all vs alone"
        );
        assert_eq!(
            all_at_once.row(i),
            small_batches.row(i),
            "text {i}: small batches"
        );
        assert_eq!(
            all_at_once.row(i),
            reversed.row(texts.len() - 1 - i),
            "text {i}: reversed order"
        );
    }
}
