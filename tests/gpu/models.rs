//! Whole models on the GPU against the CPU path: the fixture embedders and rerankers, and the real
//! all-MiniLM-L6-v2. Test names end in `_cpu`: scripts/cuda/gpu-run.sh runs them on the sm80 GEMM,
//! then again on the GEMM the device chooses.

use crate::common::cosine;
use crate::common::testutil::deviation;
use ember::{Device, Embedder, EmbedderOptions, Reranker, RerankerOptions};

use super::*;

fn check_rows(what: &str, gpu: &HostMatrix, cpu: &HostMatrix) {
    assert_eq!((gpu.rows, gpu.cols), (cpu.rows, cpu.cols), "{what}: shapes");
    let worst = (0..cpu.rows)
        .map(|r| cosine(gpu.row(r), cpu.row(r)))
        .fold(1.0f64, f64::min);
    eprintln!("{what}: {} rows, worst cosine {worst:.6}", cpu.rows);
    assert!(worst >= MIN_COSINE, "{what}: worst cosine {worst}");
}

fn embedder_matches_cpu(what: &str, dir: std::path::PathBuf) {
    let cuda = Embedder::load(
        &dir,
        EmbedderOptions {
            device: Device::Cuda(0),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let cpu = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    let texts = common::texts();
    let got = cuda.encode(&texts).unwrap();
    check_rows(what, &got, &cpu.encode(&texts).unwrap());

    // Batching must not change a result: each text alone against the whole set in one batch.
    let alone = Embedder::load(
        &dir,
        EmbedderOptions {
            device: Device::Cuda(0),
            batch_tokens: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
    .encode(&texts)
    .unwrap();
    let worst = (0..got.rows)
        .map(|r| cosine(got.row(r), alone.row(r)))
        .fold(1.0f64, f64::min);
    eprintln!("{what}: one text per batch vs one batch, worst cosine {worst:.8}");
    assert!(
        worst >= 0.99999,
        "{what}: batching changed a result (cosine {worst})"
    );
}

#[test]
fn fixture_embedders_match_cpu() {
    if gpu("fixture embedders").is_none() {
        return;
    }
    for name in [
        "tiny-bert-embed-f32",
        "tiny-bert-embed-f16",
        "tiny-bert-embed-bf16",
    ] {
        embedder_matches_cpu(name, common::fixtures().join(name));
    }
}

#[test]
fn minilm_matches_cpu() {
    if gpu("minilm").is_none() {
        return;
    }
    embedder_matches_cpu("all-MiniLM-L6-v2", common::minilm_dir());
}

#[test]
fn fixture_rerankers_match_cpu() {
    if gpu("fixture rerankers").is_none() {
        return;
    }
    let pairs = common::pairs();
    for name in [
        "tiny-bert-rerank-f32",
        "tiny-bert-rerank-f16",
        "tiny-xlmr-rerank-f32",
        "tiny-xlmr-rerank-bf16",
    ] {
        let dir = common::fixtures().join(name);
        let load = |device| {
            Reranker::load(
                &dir,
                RerankerOptions {
                    device,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let got = load(Device::Cuda(0)).logits(&pairs).unwrap();
        let want = load(Device::Cpu).logits(&pairs).unwrap();
        // One logit per pair: compare the whole column of scores as one vector, and each score
        // within 1e-2 of the largest (f16 activations through every layer).
        let cos = cosine(&got.data, &want.data);
        let d = deviation(&got, &want);
        eprintln!("{name}: {} logits, cosine {cos:.6}, {d:?}", got.data.len());
        assert!(
            cos >= MIN_COSINE && d.relative_to_max <= 1e-2,
            "{name}: cosine {cos}, {d:?}"
        );
    }
}
