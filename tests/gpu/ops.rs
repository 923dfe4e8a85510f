//! Each kernel family against the f64 scalar reference (kernels/gemm.cu through `linear`,
//! kernels/attention.cu, kernels/layernorm.cu). scripts/cuda/gpu-run.sh runs these on the sm80 GEMM.

use crate::common::reference;
use crate::common::testutil::SplitMix64;
use ember::backend::cuda::{AttentionKernel, CudaBackend};
use ember::backend::{Activation, EmbeddingTables, LayerNormWeights, Pooling};

use super::*;

#[test]
fn linear_matches_reference_on_awkward_shapes() {
    let Some(gpu) = gpu("linear") else { return };
    let mut rng = SplitMix64::new(0x6e6d);
    // (M, N, K): K % 8 == 0 takes the tensor-core kernel, otherwise the simple one.
    let shapes = [
        (1, 1, 8),
        (37, 97, 200),
        (130, 65, 72),
        (129, 1152, 384),
        (300, 384, 1536),
        (257, 1, 64),
        (5, 3, 13),
        (70, 33, 100),
    ];
    let activations = [
        Activation::Identity,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu,
        Activation::Tanh,
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for (j, &activation) in activations.iter().enumerate() {
            let with_residual = (i + j) % 2 == 0;
            let scale = 1.0 / (k as f32).sqrt();
            let x = rounded(rng.matrix(m, k, 1.0));
            let w = rounded(rng.matrix(n, k, 2.0 * scale));
            let bias = rng.values(n, 0.5);
            let residual = with_residual.then(|| rounded(rng.matrix(m, n, 1.0)));
            let want = reference::linear(&x, &w, &bias, activation, residual.as_ref());
            let layer = gpu.load_linear(&w.data, &bias, n, k).unwrap();
            let residual_gpu = residual.as_ref().map(|r| up(&gpu, r));
            let out = gpu
                .linear(&up(&gpu, &x), &layer, activation, residual_gpu.as_ref())
                .unwrap();
            let got = gpu.download(&out).unwrap();
            assert_close(
                &format!("linear [{m}x{k}]·[{n}x{k}]ᵀ {activation:?} residual={with_residual}"),
                &got,
                &want,
            );
        }
    }
}

#[test]
fn attention_matches_reference_on_packed_sequences() {
    let Some(gpu) = gpu("attention") else { return };
    let mut rng = SplitMix64::new(0xa77e);
    let cases: [(&[usize], usize, usize); 6] = [
        (&[1], 1, 32),
        (&[7, 33, 1, 64, 65], 3, 32),
        (&[130, 5, 97], 2, 64),
        (&[300, 2], 12, 32),
        (&[31, 200], 4, 24),
        (&[17, 64, 129], 2, 48),
    ];
    for (lengths, heads, head_dim) in cases {
        let batch = rng.batch(lengths, 10, 2);
        let tokens = batch.token_ids.len();
        let qkv = rounded(rng.matrix(tokens, 3 * heads * head_dim, 1.0));
        let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
        let device_batch = gpu.upload_batch(&batch).unwrap();
        let out = gpu
            .attention(&up(&gpu, &qkv), &device_batch, heads, head_dim)
            .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_close(
            &format!("attention lengths {lengths:?} heads {heads} head_dim {head_dim}"),
            &got,
            &want,
        );
    }
}

#[test]
fn layer_norm_embed_pool_normalize_match_reference() {
    let Some(gpu) = gpu("rowwise") else { return };
    let mut rng = SplitMix64::new(0x1a7e);
    for &(rows, cols) in &[(1, 1), (3, 7), (129, 384), (77, 1000), (5, 4096)] {
        // A large common offset checks that the variance is not computed as E[x²] − E[x]².
        let mut x = rng.matrix(rows, cols, 1.0);
        x.data.iter_mut().for_each(|v| *v += 8.0);
        let x = rounded(x);
        let gamma = rounded(rng.matrix(1, cols, 1.5));
        let beta = rounded(rng.matrix(1, cols, 0.5));
        let want = reference::layer_norm(&x, &gamma.data, &beta.data, 1e-12);
        let norm = LayerNormWeights {
            gamma: up(&gpu, &gamma),
            beta: up(&gpu, &beta),
            eps: 1e-12,
        };
        let got = gpu
            .download(&gpu.layer_norm(&up(&gpu, &x), &norm).unwrap())
            .unwrap();
        assert_close(&format!("layer_norm [{rows}x{cols}]"), &got, &want);

        let normalized = gpu.download(&gpu.l2_normalize(&up(&gpu, &x)).unwrap()).unwrap();
        assert_close(
            &format!("l2_normalize [{rows}x{cols}]"),
            &normalized,
            &reference::l2_normalize(&x),
        );
    }

    for &(hidden, lengths) in &[
        (32usize, &[1usize, 5, 40][..]),
        (384, &[3, 1, 77, 2][..]),
        (1000, &[129][..]),
    ] {
        let (vocab, positions, types) = (50, 130, 2);
        let batch = rng.batch(lengths, vocab, types);
        let word = rounded(rng.matrix(vocab, hidden, 1.0));
        let position = rounded(rng.matrix(positions, hidden, 0.5));
        let token_type = rounded(rng.matrix(types, hidden, 0.25));
        let gamma = rounded(rng.matrix(1, hidden, 1.0));
        let beta = rounded(rng.matrix(1, hidden, 0.5));
        let want = reference::embed(
            &batch.token_ids,
            &batch.position_ids,
            &batch.type_ids,
            &word,
            &position,
            &token_type,
            &gamma.data,
            &beta.data,
            1e-12,
        );
        let tables = EmbeddingTables {
            word: up(&gpu, &word),
            position: up(&gpu, &position),
            token_type: up(&gpu, &token_type),
        };
        let norm = LayerNormWeights {
            gamma: up(&gpu, &gamma),
            beta: up(&gpu, &beta),
            eps: 1e-12,
        };
        let device_batch = gpu.upload_batch(&batch).unwrap();
        let got = gpu
            .download(&gpu.embed(&device_batch, &tables, &norm).unwrap())
            .unwrap();
        assert_close(&format!("embed hidden {hidden} lengths {lengths:?}"), &got, &want);

        let hidden_states = rounded(rng.matrix(batch.token_ids.len(), hidden, 1.0));
        for mode in [Pooling::Cls, Pooling::Mean] {
            let want = reference::pool(&hidden_states, &batch.cu_seqlens, mode);
            let got = gpu
                .download(&gpu.pool(&up(&gpu, &hidden_states), &device_batch, mode).unwrap())
                .unwrap();
            assert_close(
                &format!("pool {mode:?} hidden {hidden} lengths {lengths:?}"),
                &got,
                &want,
            );
        }
    }
}

// ---- Tensor-core attention (kernels/attention.cu: attention_fa_*, attention_short_*) ----------

/// Runs `kernel` on fresh random q, k, v (never zeros; `scale` sets how peaked the softmax is)
/// and checks it against the f64 reference; returns the GPU output for further comparisons.
fn check_attention_kernel(
    gpu: &CudaBackend,
    rng: &mut SplitMix64,
    lengths: &[usize],
    heads: usize,
    head_dim: usize,
    scale: f32,
    kernels: &[AttentionKernel],
) {
    let batch = rng.batch(lengths, 10, 2);
    let tokens = batch.token_ids.len();
    let qkv = rounded(rng.matrix(tokens, 3 * heads * head_dim, scale));
    let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
    let device_batch = gpu.upload_batch(&batch).unwrap();
    let qkv_gpu = up(gpu, &qkv);
    for &kernel in kernels {
        let out = gpu
            .attention_with(&qkv_gpu, &device_batch, heads, head_dim, kernel)
            .unwrap_or_else(|e| panic!("{kernel:?} lengths {lengths:?}: {e}"));
        let got = gpu.download(&out).unwrap();
        // F16_TOLERANCE: on top of the output's own f16 rounding, P is rounded to f16 before the
        // P·V product (as FlashAttention does); each weight's 2^-11 relative error averages out
        // over the keys, far below 2e-3 of the largest output.
        assert_close(
            &format!("{kernel:?} lengths {lengths:?} heads {heads} head_dim {head_dim} scale {scale}"),
            &got,
            &want,
        );
    }
}

#[test]
fn flash_attention_matches_f64_reference_on_awkward_length_mixes() {
    let Some(gpu) = gpu("flash attention") else { return };
    let mut rng = SplitMix64::new(0xf1a5);
    // Every boundary of the 16-row mma tiles, the 32/64-key chunks, the 128-query blocks and
    // the short path's 128-token limit, mixed in one batch (not sorted: the kernels must not
    // rely on order), plus a lone 1-token sequence and one past BERT's 512 positions.
    let mix: &[usize] = &[129, 1, 512, 33, 2, 255, 64, 511, 31, 128, 65, 127];
    let all = [
        AttentionKernel::Auto,
        AttentionKernel::Tiled,
        AttentionKernel::Reference,
    ];
    for head_dim in [32, 64] {
        for (heads, scale) in [(3, 1.0), (2, 4.0)] {
            check_attention_kernel(&gpu, &mut rng, mix, heads, head_dim, scale, &all);
        }
        check_attention_kernel(&gpu, &mut rng, &[1], 1, head_dim, 1.0, &all);
        check_attention_kernel(&gpu, &mut rng, &[700, 3], 2, head_dim, 2.0, &all);
    }
}

#[test]
fn short_attention_matches_f64_reference_at_one_two_and_four_pairs_per_block() {
    let Some(gpu) = gpu("short attention") else { return };
    let mut rng = SplitMix64::new(0x5407);
    let both = [
        AttentionKernel::Short,
        AttentionKernel::Tiled,
        AttentionKernel::Auto,
    ];
    // max_len <= 32: 4 (sequence, head) pairs per block; <= 64: 2; <= 128: 1. Pair counts that
    // leave the last block partly empty (5 sequences x 3 heads = 15 pairs).
    let mixes: [&[usize]; 4] = [
        &[1, 2, 17, 31, 32],
        &[33, 1, 64, 5, 63],
        &[65, 127, 128, 1, 100],
        &[16, 48, 80, 112, 96, 3, 128],
    ];
    for head_dim in [32, 64] {
        for (i, mix) in mixes.iter().enumerate() {
            let scale = if i % 2 == 0 { 1.0 } else { 4.0 };
            check_attention_kernel(&gpu, &mut rng, mix, 3, head_dim, scale, &both);
        }
        // One sequence, one head: a grid of one block, three of its four warps idle.
        check_attention_kernel(&gpu, &mut rng, &[7], 1, head_dim, 1.0, &both);
    }
    // The short kernel refuses what it cannot hold, and head dims without a tensor-core kernel.
    let batch = gpu.upload_batch(&rng.batch(&[129], 10, 2)).unwrap();
    let qkv = up(&gpu, &rounded(rng.matrix(129, 3 * 64, 1.0)));
    assert!(gpu
        .attention_with(&qkv, &batch, 1, 64, AttentionKernel::Short)
        .is_err());
    let qkv = up(&gpu, &rounded(rng.matrix(129, 3 * 48, 1.0)));
    assert!(gpu
        .attention_with(&qkv, &batch, 1, 48, AttentionKernel::Tiled)
        .is_err());
}
