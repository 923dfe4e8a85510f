//! The pipeline (src/backend/cuda/transfer.rs): batches in through the slots and the copy
//! stream, results out asynchronously.

use crate::common::testutil::SplitMix64;
use ember::backend::{Backend, Pooling};

use super::*;

/// Batches copied in through the slots and the copy stream, with several batches in flight and
/// several slots leased at once, give the same bits as the plain synchronous path; repeating the
/// same batches does not raise the peak of device memory (the buffer pool is reused).
#[test]
fn overlapped_uploads_match_synchronous_ones_bit_for_bit_and_memory_stays_flat() {
    let Some(gpu) = gpu("overlapped uploads") else {
        return;
    };
    // Checked mode synchronizes after every launch, which would hide ordering bugs between the
    // two streams: run the way production does.
    gpu.set_checked(false);
    let dir = common::fixtures().join("tiny-bert-embed-f32");
    let config = ember::config::ModelConfig::load(&dir).unwrap();
    let weights = ember::weights::Weights::open(&dir).unwrap();
    let (vocab, types, max_len) = (
        config.vocab_size,
        config.type_vocab_size,
        config.max_position_embeddings,
    );
    let model = ember::model::Model::load(&gpu, config, &weights).unwrap();
    let mut rng = SplitMix64::new(0x0e71);
    let batches: Vec<ember::Batch> = (0..12)
        .map(|i| {
            let n = 1 + rng.below(40);
            let lengths: Vec<usize> = (0..n).map(|_| 1 + rng.below(max_len)).collect();
            // Every third batch much larger: the slots must grow (or be replaced) mid-stream.
            let lengths = if i % 3 == 2 { lengths.repeat(8) } else { lengths };
            rng.batch(&lengths, vocab, types)
        })
        .collect();
    let run_async = || -> Vec<HostMatrix> {
        // Three batches uploaded before any runs (three slots leased at once), then all queued
        // with their downloads in flight together, waited for at the end.
        let mut pending = Vec::new();
        for chunk in batches.chunks(3) {
            let uploaded: Vec<_> = chunk.iter().map(|b| gpu.upload_batch(b).unwrap()).collect();
            for b in uploaded.iter().rev() {
                let out = model.embed(&gpu, b, Pooling::Mean, true).unwrap();
                pending.push(gpu.download_start(&out).unwrap());
            }
        }
        let mut rows: Vec<HostMatrix> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        // Undo the reversal within each chunk of three.
        for chunk in rows.chunks_mut(3) {
            chunk.reverse();
        }
        rows
    };
    let overlapped = run_async();
    let peak = gpu
        .peak_device_bytes()
        .expect("a GPU reports its peak device memory");
    for round in 0..3 {
        let again = run_async();
        assert_eq!(
            again, overlapped,
            "round {round}: results changed between identical runs"
        );
        assert_eq!(
            gpu.peak_device_bytes(),
            Some(peak),
            "round {round}: peak device memory grew over repeated batches"
        );
    }
    gpu.set_synchronous_uploads(true);
    let synchronous: Vec<HostMatrix> = batches
        .iter()
        .map(|b| {
            let device_batch = gpu.upload_batch(b).unwrap();
            gpu.download(&model.embed(&gpu, &device_batch, Pooling::Mean, true).unwrap())
                .unwrap()
        })
        .collect();
    gpu.set_synchronous_uploads(false);
    for (i, (a, s)) in overlapped.iter().zip(&synchronous).enumerate() {
        assert!(a.data.iter().all(|v| v.is_finite()), "batch {i}: non-finite");
        assert_eq!(a, s, "batch {i}: overlapped and synchronous uploads differ");
    }
    eprintln!(
        "overlapped uploads: {} batches bit-identical; peak device memory {} bytes, now {}",
        batches.len(),
        peak,
        gpu.device_bytes()
    );
}
