//! The CPU int8 path (`Dtype::Int8`) held to the bars against ember's own f32 path:
//! cosine >= 0.995 on every fixture text, with the real MiniLM and the tiny embedding fixtures,
//! and the same top 10 on a retrieval check (200 queries against 5,000 generated passages,
//! overlap >= 95 %). On a CPU without AVX512-VNNI the load must fail with a clear error instead.

mod common;

use common::*;
use ember::{Device, Dtype, Embedder, EmbedderOptions, Encoder};

fn supported() -> bool {
    ember::backend::cpu::int8::is_supported()
}

/// Loads `dir` in int8 and in f32, or checks the refusal and returns `None`.
fn load_both(dir: &std::path::Path) -> Option<(Embedder, Embedder)> {
    let loaded = Embedder::load_with_dtype(dir, EmbedderOptions::default(), Dtype::Int8);
    if !supported() {
        let message = loaded
            .err()
            .expect("int8 must be refused without VNNI")
            .to_string();
        assert!(message.contains("AVX512-VNNI"), "unclear refusal: {message}");
        return None;
    }
    Some((
        loaded.unwrap(),
        Embedder::load(dir, EmbedderOptions::default()).unwrap(),
    ))
}

/// The worst cosine between the int8 and f32 embeddings of `texts`.
fn worst_cosine(int8: &Embedder, f32: &Embedder, texts: &[String]) -> f64 {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (got, want) = (int8.encode(&texts).unwrap(), f32.encode(&texts).unwrap());
    (0..texts.len())
        .map(|i| {
            let want: Vec<f64> = want.row(i).iter().map(|&v| v as f64).collect();
            cosine(got.row(i), &want)
        })
        .fold(1.0, f64::min)
}

#[test]
fn int8_embeddings_are_within_cosine_0995_of_f32_on_every_fixture_text() {
    let texts = texts();
    for dir in [minilm_dir(), fixtures().join("tiny-bert-embed-f32")] {
        let Some((int8, f32)) = load_both(&dir) else {
            return;
        };
        let worst = worst_cosine(&int8, &f32, &texts);
        eprintln!(
            "int8 {}: worst cosine {worst:.6} vs ember f32 over {} texts",
            dir.display(),
            texts.len()
        );
        assert!(worst >= 0.995, "{}: int8 cosine {worst:.6} vs f32", dir.display());
    }
}

/// A deterministic corpus with topical structure, so that a query has true neighbours: each
/// passage draws most words from one of 50 topics' vocabularies, the rest from shared words.
struct Corpus {
    state: u64,
    topics: Vec<Vec<String>>,
}

const SHARED: &str = "the of and to in is was for on that with as by at from it an were are which this \
     be or has had not one their its new after but who they have been also other most many more";
const STEMS: &str = "river church energy language research protein market village museum engine \
     vaccine computer software algorithm theory physics chemistry biology medicine hospital \
     climate ocean forest mountain island harbor railway airport bridge tower castle temple \
     garden music film season system water history government school company network data \
     model cell price population district region library station";

impl Corpus {
    fn new() -> Self {
        let stems: Vec<&str> = STEMS.split_whitespace().collect();
        let suffixes = ["", "s", "al", "ic", "er", "ing", "ist", "ed"];
        let mut corpus = Corpus {
            state: 0x5eed,
            topics: Vec::new(),
        };
        for _ in 0..50 {
            let words = (0..12)
                .map(|_| {
                    format!(
                        "{}{}",
                        stems[corpus.below(stems.len())],
                        suffixes[corpus.below(suffixes.len())]
                    )
                })
                .collect();
            corpus.topics.push(words);
        }
        corpus
    }

    fn below(&mut self, n: usize) -> usize {
        // SplitMix64, as the library's test inputs.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    /// `words` words: two in three from `topic`, the rest shared.
    fn text(&mut self, topic: usize, words: usize) -> String {
        let shared: Vec<&str> = SHARED.split_whitespace().collect();
        let mut out = Vec::with_capacity(words);
        for _ in 0..words {
            let word = if self.below(3) < 2 {
                let pick = self.below(self.topics[topic].len());
                self.topics[topic][pick].clone()
            } else {
                shared[self.below(shared.len())].to_string()
            };
            out.push(word);
        }
        out.join(" ")
    }
}

/// The indices of the 10 best-scoring passages for each query (dot products of unit vectors).
fn top10(queries: &ember::Embeddings, passages: &ember::Embeddings) -> Vec<Vec<usize>> {
    (0..queries.rows)
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = (0..passages.rows)
                .map(|p| {
                    (
                        queries
                            .row(q)
                            .iter()
                            .zip(passages.row(p))
                            .map(|(a, b)| a * b)
                            .sum(),
                        p,
                    )
                })
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored[..10].iter().map(|&(_, p)| p).collect()
        })
        .collect()
}

#[test]
fn int8_retrieval_keeps_95_percent_of_the_f32_top_10() {
    let Some((int8, f32)) = load_both(&minilm_dir()) else {
        return;
    };
    let mut corpus = Corpus::new();
    let passages: Vec<String> = (0..5000)
        .map(|_| {
            let (topic, words) = (corpus.below(50), 8 + corpus.below(17));
            corpus.text(topic, words)
        })
        .collect();
    let queries: Vec<String> = (0..200)
        .map(|_| {
            let (topic, words) = (corpus.below(50), 3 + corpus.below(5));
            corpus.text(topic, words)
        })
        .collect();
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let (passages, queries) = (as_str(&passages), as_str(&queries));
    let want = top10(&f32.encode(&queries).unwrap(), &f32.encode(&passages).unwrap());
    let got = top10(&int8.encode(&queries).unwrap(), &int8.encode(&passages).unwrap());
    let shared: usize = want
        .iter()
        .zip(&got)
        .map(|(w, g)| g.iter().filter(|p| w.contains(p)).count())
        .sum();
    let overlap = shared as f64 / (10 * queries.len()) as f64;
    eprintln!(
        "int8 retrieval: top-10 overlap with f32 {:.1} % over {} queries",
        100.0 * overlap,
        queries.len()
    );
    assert!(overlap >= 0.95, "top-10 overlap {overlap:.3} < 0.95");
}

#[test]
fn int8_is_refused_off_the_cpu() {
    let err = Encoder::load_with_dtype(minilm_dir(), Device::Cuda(0), Dtype::Int8)
        .err()
        .unwrap();
    assert!(err.to_string().contains("int8"), "{err}");
}
