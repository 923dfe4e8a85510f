//! The feed-forward half of a BERT layer, `finish(activate(x · Upᵀ + b) · Downᵀ + b)`, one block
//! of rows at a time: each parallel task runs the up projection of its rows into a buffer of its
//! own thread, activates it, and runs the down projection from that buffer while it is still in
//! the core's L2 (96 rows of MiniLM's 1,536 intermediate values are 576 KiB).
//!
//! Run as two linear layers, the `[tokens, intermediate]` activation (6 MiB at the CPU batch) is
//! written by one parallel pass and read back by the next from L3 or memory, the reading side
//! being the down projection's packing or quantization of A: in an int8 MiniLM profile, that
//! quantization held 6 % of the time, most of it waiting for A. Fused, that activation never
//! leaves the core, and a layer has one fork-join fewer.
//!
//! The tasks and their rows are those of [`matmul::gemm_parallel`]'s row split, and a row's
//! arithmetic is the same whatever rows share its block, so the results are those of the two
//! layers run one after the other, bit for bit. Batches too small for the row split (where
//! `gemm_parallel` splits W's columns to keep every thread busy) are not taken: see [`fuses`].

use std::cell::RefCell;

use rayon::prelude::*;

use super::matmul::{self, PanelWeights};

thread_local! {
    /// Each thread's intermediate block, reused across calls (an allocation this size per task
    /// would be a fresh mapping, zero-filled page by page).
    static INTERMEDIATE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether [`feed_forward_parallel`] takes a batch of `m` rows on the current rayon pool: when
/// `gemm_parallel` would split those rows into row blocks only.
pub fn fuses(m: usize) -> bool {
    matmul::splits_rows(m, rayon::current_num_threads())
}

/// `out[m, down.n()] = activate(x · Upᵀ + up_bias) · Downᵀ + down_bias`, then `finish(first_row,
/// rows_of_out)` on each block of finished rows, in one parallel pass over row blocks on the
/// caller's current rayon pool. `x` holds `m * up.k()` values, `out` `m * down.n()`, and
/// `down.k() == up.n()`.
///
/// # Panics
/// If the lengths do not match (callers check shapes first), or if [`fuses`] refuses `m`.
#[allow(clippy::too_many_arguments)] // two layers' weights and biases, and the two passes
pub fn feed_forward_parallel<U: PanelWeights, D: PanelWeights>(
    x: &[f32],
    m: usize,
    (up, up_bias): (&U, &[f32]),
    (down, down_bias): (&D, &[f32]),
    out: &mut [f32],
    activate: impl Fn(&mut [f32]) + Sync,
    finish: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (k, middle, n) = (up.k(), up.n(), down.n());
    assert!(
        fuses(m),
        "feed_forward_parallel: {m} rows are too few for the row split"
    );
    assert_eq!(down.k(), middle, "feed_forward_parallel: down.k() != up.n()");
    assert_eq!(x.len(), m * k, "feed_forward_parallel: x length");
    assert_eq!(out.len(), m * n, "feed_forward_parallel: out length");
    assert_eq!(
        (up_bias.len(), down_bias.len()),
        (middle, n),
        "feed_forward_parallel: biases"
    );
    let blocks = matmul::row_blocks(m, rayon::current_num_threads());
    matmul::split_rows(out, n, &blocks)
        .into_par_iter()
        .zip(blocks.par_iter())
        .for_each(|(out_block, rows)| {
            INTERMEDIATE.with_borrow_mut(|buffer| {
                // Rows `ld` apart: not a multiple of 4 KiB (`matmul::row_stride`).
                let ld = matmul::row_stride(middle);
                let len = rows.len() * ld;
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
                let hidden = &mut buffer[..len];
                let a = &x[rows.start * k..];
                up.gemm_panels(a, k, rows.len(), 0..up.panels(), Some(up_bias), hidden, ld);
                let panels = 0..down.panels();
                let m = rows.len();
                down.activate_then_gemm_panels(
                    hidden,
                    ld,
                    m,
                    &activate,
                    panels,
                    Some(down_bias),
                    out_block,
                    n,
                );
                finish(rows.start, out_block);
            });
        });
}

#[cfg(test)]
#[path = "feed_forward_tests.rs"]
mod tests;
