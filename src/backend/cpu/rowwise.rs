//! The row-at-a-time operations: embedding gather + LayerNorm, LayerNorm, pooling and L2
//! normalization. Each output row depends on one input row (or one sequence's rows, for pooling),
//! so the work is split over output rows with rayon and each row is a plain loop.
//!
//! Inputs are checked by the caller (`mod.rs`); these functions index freely.

use rayon::prelude::*;

use super::math;
use crate::backend::Pooling;

/// Rows per rayon task for the cheap elementwise passes: a task of a few hundred KiB amortizes
/// the scheduling cost, and 64k-token batches still give hundreds of tasks.
const ROWS_PER_TASK: usize = 64;

math::multiversion! {
    /// LayerNorm of one row into `out`: `(x - mean) / sqrt(var + eps) * gamma + beta`, with the
    /// biased variance (divided by `n`, as PyTorch), computed in two passes (mean first, then the
    /// squared deviations) so that a large mean does not cancel the variance away.
    pub fn layer_norm_row / layer_norm_row_with(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32])
        => layer_norm_row_inline
}

#[inline(always)]
fn layer_norm_row_inline(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = math::sum(x) / n;
    let variance = math::sum_squared_deviation(x, mean) / n;
    let inverse_std = 1.0 / (variance + eps).sqrt();
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * inverse_std * g + b;
    }
}

/// Row-wise LayerNorm of `x` (`cols` = `gamma.len()`) into `out`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let cols = gamma.len();
    out.par_chunks_mut(ROWS_PER_TASK * cols)
        .zip(x.par_chunks(ROWS_PER_TASK * cols))
        .for_each(|(out_rows, x_rows)| {
            for (o, r) in out_rows.chunks_exact_mut(cols).zip(x_rows.chunks_exact(cols)) {
                layer_norm_row(r, gamma, beta, eps, o);
            }
        });
}

/// Row-wise LayerNorm of `rows` in place (`cols` = `gamma.len()`), on the calling thread: each
/// row goes through a copy, so the result is exactly [`layer_norm`]'s.
pub fn layer_norm_in_place(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let mut row_copy = vec![0.0; gamma.len()];
    for row in rows.chunks_exact_mut(gamma.len()) {
        row_copy.copy_from_slice(row);
        layer_norm_row(&row_copy, gamma, beta, eps, row);
    }
}

/// The three embedding tables, each `[entries, hidden]` row-major, as slices.
pub struct Tables<'a> {
    pub word: &'a [f32],
    pub position: &'a [f32],
    pub token_type: &'a [f32],
}

/// `out[t] = LayerNorm(word[token_ids[t]] + position[position_ids[t]] + token_type[type_ids[t]])`.
/// Ids are checked against the table sizes by the caller.
#[allow(clippy::too_many_arguments)] // three id arrays, three tables, the norm
pub fn embed(
    token_ids: &[u32],
    position_ids: &[u32],
    type_ids: &[u32],
    tables: &Tables<'_>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let hidden = gamma.len();
    out.par_chunks_mut(ROWS_PER_TASK * hidden)
        .enumerate()
        .for_each(|(block, out_rows)| {
            let mut sum = vec![0.0f32; hidden];
            for (i, o) in out_rows.chunks_exact_mut(hidden).enumerate() {
                let t = block * ROWS_PER_TASK + i;
                let word = &tables.word[token_ids[t] as usize * hidden..][..hidden];
                let position = &tables.position[position_ids[t] as usize * hidden..][..hidden];
                let token_type = &tables.token_type[type_ids[t] as usize * hidden..][..hidden];
                for (((s, &w), &p), &y) in sum.iter_mut().zip(word).zip(position).zip(token_type) {
                    // Same order as PyTorch: (word + token_type) + position.
                    *s = (w + y) + p;
                }
                layer_norm_row(&sum, gamma, beta, eps, o);
            }
        });
}

/// One row per sequence: its first token (`Cls`) or the mean of its tokens (`Mean`).
/// `cu_seqlens` is checked by the caller; sequences are never empty there, but an empty one
/// would give a zero row rather than a division by zero.
pub fn pool(hidden: &[f32], cols: usize, cu_seqlens: &[u32], mode: Pooling, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(s, o)| {
        let (start, end) = (cu_seqlens[s] as usize, cu_seqlens[s + 1] as usize);
        match mode {
            Pooling::Cls => {
                if end > start {
                    o.copy_from_slice(&hidden[start * cols..(start + 1) * cols]);
                } else {
                    o.fill(0.0);
                }
            }
            Pooling::Mean => {
                // f64 accumulation: a mean over thousands of tokens must not drift, and the pass
                // is tokens x cols additions, nothing next to the layers.
                let mut acc = vec![0.0f64; cols];
                for row in hidden[start * cols..end * cols].chunks_exact(cols) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
                }
                let count = (end - start).max(1) as f64;
                o.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a / count) as f32);
            }
        }
    });
}

/// Each row divided by `max(||row||, 1e-12)`, as `torch.nn.functional.normalize`.
pub fn l2_normalize(x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * cols)
        .zip(x.par_chunks(ROWS_PER_TASK * cols))
        .for_each(|(out_rows, x_rows)| {
            for (o, r) in out_rows.chunks_exact_mut(cols).zip(x_rows.chunks_exact(cols)) {
                // The norm in f64: cheap here (one pass per pooled row) and exact to f32.
                let norm = r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
                // A division, not a multiply by the inverse, to round as PyTorch does.
                let divisor = norm.max(1e-12) as f32;
                o.iter_mut().zip(r).for_each(|(o, &v)| *o = v / divisor);
            }
        });
}
