//! The CPU bf16 path (`Dtype::Bf16`: bf16 weights, f32 accumulation) on the real MiniLM against
//! the float64 sentence-transformers fixtures and against ember's own f32 path: the target
//! (`Dtype::Bf16`'s doc) is cosine >= 0.999. On a CPU without AVX-512 the load must fail with a
//! clear error instead (never a silent f32 fallback).

mod common;

use common::*;
use ember::{Device, Dtype, Embedder, EmbedderOptions, Encoder};

fn supported() -> bool {
    ember::backend::cpu::bf16::is_supported()
}

#[test]
fn bf16_minilm_is_within_cosine_0999_of_the_reference() {
    let dir = minilm_dir();
    let loaded = Embedder::load_with_dtype(&dir, EmbedderOptions::default(), Dtype::Bf16);
    if !supported() {
        let message = loaded
            .err()
            .expect("bf16 must be refused without AVX-512")
            .to_string();
        assert!(message.contains("AVX-512"), "unclear refusal: {message}");
        return;
    }
    let bf16 = loaded.unwrap();
    let f32 = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    let expected = read_json(&fixtures().join("minilm/expected.json"));
    let texts = texts();
    let mut worst = (1.0f64, 1.0f64);
    for run in expected["runs"].as_array().unwrap() {
        if !run["uses_defaults"].as_bool().unwrap() || !run["query_instruction"].is_null() {
            continue;
        }
        let run_texts: Vec<&str> = indices(&run["texts"])
            .iter()
            .map(|&i| texts[i].as_str())
            .collect();
        let got = bf16.encode(&run_texts).unwrap();
        let ours = f32.encode(&run_texts).unwrap();
        for (i, want) in rows(&run["embeddings"]).iter().enumerate() {
            let vs_reference = cosine(got.row(i), want);
            let ours64: Vec<f64> = ours.row(i).iter().map(|&v| v as f64).collect();
            let vs_f32 = cosine(got.row(i), &ours64);
            worst = (worst.0.min(vs_reference), worst.1.min(vs_f32));
            assert!(
                vs_reference >= 0.999,
                "text {i}: bf16 cosine {vs_reference:.6} vs reference"
            );
        }
    }
    assert!(worst.0 < 1.0, "no fixture run was checked");
    eprintln!(
        "bf16 MiniLM: worst cosine {:.6} vs float64 reference, {:.6} vs ember f32",
        worst.0, worst.1
    );
}

#[test]
fn bf16_is_refused_off_the_cpu() {
    let err = Encoder::load_with_dtype(minilm_dir(), Device::Cuda(0), Dtype::Bf16)
        .err()
        .unwrap();
    assert!(err.to_string().contains("bf16"), "{err}");
}
