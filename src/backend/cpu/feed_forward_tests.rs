//! The fused ops against the ops they fuse, bit for bit: `linear_residual_norm` against
//! `linear` then `layer_norm`, `feed_forward` against its two linear layers; every dtype this
//! CPU runs, both parallel splits of `matmul::gemm_parallel`, seeded random inputs.

use crate::backend::cpu::tests::{tensor, with_threads};
use crate::backend::cpu::testutil::SplitMix64;
use crate::backend::cpu::{CpuBackend, CpuLinear, CpuTensor};
use crate::backend::{Activation, Backend, Dtype, LayerNormWeights};

/// A backend of each dtype this CPU runs.
fn backends_of_every_dtype() -> Vec<(Dtype, CpuBackend)> {
    [Dtype::F32, Dtype::Bf16, Dtype::Int8]
        .into_iter()
        .filter_map(|dtype| Some((dtype, CpuBackend::with_dtype(dtype).ok()?)))
        .collect()
}

/// A random `[n, k]` linear layer on `backend`, its weights scaled to keep outputs near 1.
fn random_linear(backend: &CpuBackend, rng: &mut SplitMix64, n: usize, k: usize) -> CpuLinear {
    let w = rng.matrix(n, k, 1.7 / (k as f32).sqrt());
    backend.load_linear(&w.data, &rng.values(n, 0.5), n, k).unwrap()
}

/// A random LayerNorm of `n` features.
fn random_norm(
    backend: &CpuBackend,
    rng: &mut SplitMix64,
    n: usize,
    eps: f32,
) -> LayerNormWeights<CpuTensor> {
    LayerNormWeights {
        gamma: backend.upload(&rng.values(n, 1.0), 1, n).unwrap(),
        beta: backend.upload(&rng.values(n, 0.5), 1, n).unwrap(),
        eps,
    }
}

#[test]
fn linear_residual_norm_is_linear_then_layer_norm_bit_for_bit() {
    let mut rng = SplitMix64::new(16);
    // Both parallel splits (`matmul::splits_rows`): 1 and 5 rows split columns at any thread
    // count, 130 rows split rows on one thread and columns on three, 577 rows split rows.
    for (dtype, backend) in backends_of_every_dtype() {
        for (m, n, k) in [(1, 383, 384), (5, 768, 383), (130, 384, 1536), (577, 33, 47)] {
            let x = tensor(&rng.matrix(m, k, 1.0));
            let layer = random_linear(&backend, &mut rng, n, k);
            let residual = tensor(&rng.matrix(m, n, 1.0));
            let norm = random_norm(&backend, &mut rng, n, 1e-5);
            for threads in [1, 3] {
                let (fused, apart) = with_threads(threads, || {
                    let fused = backend
                        .linear_residual_norm(&x, &layer, &residual, &norm)
                        .unwrap();
                    let sum = backend
                        .linear(&x, &layer, Activation::Identity, Some(&residual))
                        .unwrap();
                    (fused, backend.layer_norm(&sum, &norm).unwrap())
                });
                assert!(
                    fused.data == apart.data,
                    "{dtype:?} {m}x{n}x{k}, {threads} threads: fused differs"
                );
            }
        }
    }
}

#[test]
fn feed_forward_is_the_two_linear_layers_bit_for_bit() {
    let mut rng = SplitMix64::new(17);
    for (dtype, backend) in backends_of_every_dtype() {
        // (tokens, hidden, intermediate): one row and 130 (unfused with 3 threads, fused with
        // one), 577 and 1,000 (fused with both), awkward widths, MiniLM's, and an intermediate
        // of 4 KiB rows, which the fused path's buffer pads (`matmul::row_stride`).
        let cases = [
            (1, 64, 256),
            (130, 96, 383),
            (577, 47, 130),
            (1000, 384, 1536),
            (300, 72, 1024),
        ];
        for (m, hidden, middle) in cases {
            let x = tensor(&rng.matrix(m, hidden, 1.0));
            let up = random_linear(&backend, &mut rng, middle, hidden);
            let down = random_linear(&backend, &mut rng, hidden, middle);
            let norm = random_norm(&backend, &mut rng, hidden, 1e-12);
            for threads in [1, 3] {
                let (fused, apart) = with_threads(threads, || {
                    let fused = backend
                        .feed_forward(&x, &up, Activation::Gelu, &down, &norm)
                        .unwrap();
                    let hidden = backend.linear(&x, &up, Activation::Gelu, None).unwrap();
                    let apart = backend.linear_residual_norm(&hidden, &down, &x, &norm).unwrap();
                    (fused, apart)
                });
                assert!(
                    fused.data == apart.data,
                    "{dtype:?} {m} x {hidden} x {middle}, {threads} threads: fused differs"
                );
            }
            // A down projection that does not take the up projection's outputs is an error,
            // whichever path runs (one thread fuses from 97 rows on).
            let wrong = random_linear(&backend, &mut rng, hidden, middle + 1);
            let result = with_threads(1, || {
                backend.feed_forward(&x, &up, Activation::Gelu, &wrong, &norm)
            });
            let message = result.unwrap_err().to_string();
            assert!(m < 97 || message.contains("down projection takes"), "{message}");
        }
    }
}
