//! Hostile texts and concurrent callers: huge lines cost bounded time and give the same result
//! as their useful prefix, odd bytes are embedded without error, and eight threads sharing one
//! embedder get exactly the results of one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ember::{Embedder, EmbedderOptions, Encoder, Reranker, RerankerOptions};

fn tiny_embedder() -> Embedder {
    Embedder::load(fixtures().join("tiny-bert-embed-f32"), EmbedderOptions::default()).unwrap()
}

#[test]
fn a_100_mb_line_costs_bounded_time_and_matches_its_prefix() {
    let embedder = tiny_embedder();
    let sentence = "the quick brown fox jumps over the lazy dog and keeps running ";
    let huge = sentence.repeat(100 * 1024 * 1024 / sentence.len());
    let prefix = &huge[..sentence.len() * 1000];

    let started = Instant::now();
    let got = embedder.encode(&[huge.as_str()]).unwrap();
    let elapsed = started.elapsed();
    // Tokenizing all 100 MB takes tens of seconds and gigabytes; the cut takes milliseconds.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    let want = embedder.encode(&[prefix]).unwrap();
    assert_eq!(got.row(0), want.row(0));
    let sequences = embedder.tokenize(&[huge.as_str()], false).unwrap();
    assert!(sequences[0].truncated);
    assert_eq!(sequences[0].len(), embedder.max_length());
}

#[test]
fn a_huge_word_without_whitespace_still_ends() {
    let embedder = tiny_embedder();
    let word = "x".repeat(20 * 1024 * 1024);
    let started = Instant::now();
    let got = embedder.encode(&[word.as_str(), "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // WordPiece turns any word over 100 characters into one [UNK]: both texts are [CLS] [UNK] [SEP].
    assert_eq!(got.row(0), got.row(1));
}

#[test]
fn odd_texts_embed_without_error() {
    let embedder = tiny_embedder();
    let texts = [
        "",
        " ",
        "\t\n\r",
        "nul\0byte",
        "\0\0\0",
        "\u{feff}bom",
        "\u{200b}",
        "a\u{0301}",
        "🏳️‍🌈👨‍👩‍👧",
    ];
    let got = embedder.encode(&texts).unwrap();
    assert_eq!(got.rows, texts.len());
    assert!(got.data.iter().all(|x| x.is_finite()));
    for i in 0..texts.len() {
        let norm: f32 = got.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "text {i}: norm {norm}");
    }
}

#[test]
fn api_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Embedder>();
    assert_send_sync::<Reranker>();
    assert_send_sync::<Encoder>();
}

#[test]
fn eight_threads_get_exactly_the_results_of_one() {
    let embedder = Embedder::load(minilm_dir(), EmbedderOptions::default()).unwrap();
    let texts = texts();
    let alone = embedder.encode(&texts).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (embedder, texts) = (&embedder, &texts);
                // Each thread takes a different slice and order, so batches differ between threads.
                scope.spawn(move || {
                    let mine: Vec<usize> = (0..texts.len()).filter(|i| (i + t) % 3 != 0).rev().collect();
                    let chosen: Vec<&str> = mine.iter().map(|&i| texts[i].as_str()).collect();
                    (mine, embedder.encode(&chosen).unwrap())
                })
            })
            .collect();
        for handle in handles {
            let (mine, got) = handle.join().unwrap();
            for (row, &i) in mine.iter().enumerate() {
                assert_eq!(got.row(row), alone.row(i), "text {i}");
            }
        }
    });

    let reranker = Reranker::load(
        fixtures().join("tiny-xlmr-rerank-f32"),
        RerankerOptions::default(),
    )
    .unwrap();
    let pairs = pairs();
    let alone = reranker.compute_score(&pairs, false).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| reranker.compute_score(&pairs, false).unwrap()))
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), alone);
        }
    });
}
