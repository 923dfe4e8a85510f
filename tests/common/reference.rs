//! Slow, obviously correct implementations of every backend operation: plain nested loops in the
//! order of the definitions, f64 accumulation and f64 transcendental functions, no blocking, no
//! threads. They are the truth that the fast CPU ops (and later the CUDA kernels) are tested
//! against, so clarity wins over speed everywhere in this file.
//!
//! Test code, not API: the library's unit tests include this file (`#[cfg(test)]` in
//! src/backend/cpu/mod.rs) and so do the integration tests and benches, through tests/common.
//! The includer brings `Activation`, `HostMatrix` and `Pooling` into scope.
//!
//! Matrices are [`HostMatrix`] (row-major `[rows, cols]`), vectors are slices. These are test
//! oracles: inconsistent shapes panic with a message instead of returning an error.

use super::{Activation, HostMatrix, Pooling};

fn matrix(rows: usize, cols: usize, data: Vec<f64>) -> HostMatrix {
    HostMatrix {
        rows,
        cols,
        data: data.into_iter().map(|v| v as f32).collect(),
    }
}

fn at(m: &HostMatrix, r: usize, c: usize) -> f64 {
    m.data[r * m.cols + c] as f64
}

/// The activation functions in f64, straight from their definitions.
pub fn activate(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Identity => x,
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        }
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
    }
}

/// `activation(x · Wᵀ + b) [+ residual]` with `weight` `[out, in]` (PyTorch layout).
pub fn linear(
    x: &HostMatrix,
    weight: &HostMatrix,
    bias: &[f32],
    activation: Activation,
    residual: Option<&HostMatrix>,
) -> HostMatrix {
    assert_eq!(x.cols, weight.cols, "linear: x cols vs weight in_features");
    assert_eq!(bias.len(), weight.rows, "linear: bias vs out_features");
    let (m, n, k) = (x.rows, weight.rows, x.cols);
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut dot = bias[j] as f64;
            for p in 0..k {
                dot += at(x, i, p) * at(weight, j, p);
            }
            let mut y = activate(activation, dot);
            if let Some(r) = residual {
                assert_eq!((r.rows, r.cols), (m, n), "linear: residual shape");
                y += at(r, i, j);
            }
            out[i * n + j] = y;
        }
    }
    matrix(m, n, out)
}

/// LayerNorm of each row: biased variance, `eps` inside the square root.
pub fn layer_norm(x: &HostMatrix, gamma: &[f32], beta: &[f32], eps: f32) -> HostMatrix {
    assert_eq!(gamma.len(), x.cols, "layer_norm: gamma");
    assert_eq!(beta.len(), x.cols, "layer_norm: beta");
    let mut out = Vec::with_capacity(x.rows * x.cols);
    for r in 0..x.rows {
        let row: Vec<f64> = (0..x.cols).map(|c| at(x, r, c)).collect();
        out.extend(layer_norm_values(&row, gamma, beta, eps));
    }
    matrix(x.rows, x.cols, out)
}

fn layer_norm_values(row: &[f64], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f64> {
    let n = row.len() as f64;
    let mean = row.iter().sum::<f64>() / n;
    let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let std = (variance + eps as f64).sqrt();
    row.iter()
        .zip(gamma)
        .zip(beta)
        .map(|((v, &g), &b)| (v - mean) / std * g as f64 + b as f64)
        .collect()
}

/// `LayerNorm(word[token] + position[position] + token_type[type])` for each token.
#[allow(clippy::too_many_arguments)] // three id arrays, three tables, the norm
pub fn embed(
    token_ids: &[u32],
    position_ids: &[u32],
    type_ids: &[u32],
    word: &HostMatrix,
    position: &HostMatrix,
    token_type: &HostMatrix,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> HostMatrix {
    let hidden = word.cols;
    assert!(
        position.cols == hidden && token_type.cols == hidden,
        "embed: table widths"
    );
    let mut out = Vec::with_capacity(token_ids.len() * hidden);
    for t in 0..token_ids.len() {
        let row: Vec<f64> = (0..hidden)
            .map(|c| {
                at(word, token_ids[t] as usize, c)
                    + at(position, position_ids[t] as usize, c)
                    + at(token_type, type_ids[t] as usize, c)
            })
            .collect();
        out.extend(layer_norm_values(&row, gamma, beta, eps));
    }
    matrix(token_ids.len(), hidden, out)
}

/// Self-attention within each sequence of `cu_seqlens`: for each sequence, head and query `i`,
/// `softmax_j(q_i · k_j / sqrt(head_dim))` weights the `v_j` of that sequence only.
pub fn attention(qkv: &HostMatrix, cu_seqlens: &[u32], heads: usize, head_dim: usize) -> HostMatrix {
    let hidden = heads * head_dim;
    assert_eq!(qkv.cols, 3 * hidden, "attention: qkv cols");
    assert_eq!(
        *cu_seqlens.last().unwrap() as usize,
        qkv.rows,
        "attention: tokens"
    );
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut out = vec![0.0f64; qkv.rows * hidden];
    for window in cu_seqlens.windows(2) {
        let (start, end) = (window[0] as usize, window[1] as usize);
        for h in 0..heads {
            let (q, k, v) = (h * head_dim, hidden + h * head_dim, 2 * hidden + h * head_dim);
            for i in start..end {
                let scores: Vec<f64> = (start..end)
                    .map(|j| {
                        (0..head_dim)
                            .map(|c| at(qkv, i, q + c) * at(qkv, j, k + c))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..head_dim {
                    let value: f64 = (start..end)
                        .zip(&weights)
                        .map(|(j, w)| w * at(qkv, j, v + c))
                        .sum();
                    out[i * hidden + h * head_dim + c] = value / total;
                }
            }
        }
    }
    matrix(qkv.rows, hidden, out)
}

/// One row per sequence: the first token's row, or the mean of the sequence's rows.
pub fn pool(hidden: &HostMatrix, cu_seqlens: &[u32], mode: Pooling) -> HostMatrix {
    let sequences = cu_seqlens.len() - 1;
    let mut out = Vec::with_capacity(sequences * hidden.cols);
    for window in cu_seqlens.windows(2) {
        let (start, end) = (window[0] as usize, window[1] as usize);
        for c in 0..hidden.cols {
            out.push(match mode {
                Pooling::Cls => at(hidden, start, c),
                Pooling::Mean => (start..end).map(|r| at(hidden, r, c)).sum::<f64>() / (end - start) as f64,
            });
        }
    }
    matrix(sequences, hidden.cols, out)
}

/// Each row divided by `max(||row||_2, 1e-12)`.
pub fn l2_normalize(x: &HostMatrix) -> HostMatrix {
    let mut out = Vec::with_capacity(x.rows * x.cols);
    for r in 0..x.rows {
        let norm = (0..x.cols).map(|c| at(x, r, c).powi(2)).sum::<f64>().sqrt();
        out.extend((0..x.cols).map(|c| at(x, r, c) / norm.max(1e-12)));
    }
    matrix(x.rows, x.cols, out)
}
