//! One head of attention in f32 on AVX-512, for head dimensions that are multiples of 32: the
//! products of `attention.rs`'s GEMM path, the same bits, without its copies.
//!
//! The GEMM path packs V into panels (a copy of every value), packs each block of
//! probabilities as a GEMM's A (another), and runs both products through the general driver, with
//! its edge tiles, buffers and zeroing: at the corpus's median of 56 tokens these cost more than
//! the products themselves (perf of `cargo bench --bench cpu_ops -- layer_parts/Int8_attention`
//! on a Zen 5: the two f32 kernels 32 % of attention, V's and P's packing 14 %, the driver,
//! memset and attend_head's own loops 12 %). Here, per block of [`MR`] = 12 queries:
//!
//! - scores: one 12 x 32 register tile per panel of 32 keys (the GEMM's in-place kernel), Q read
//!   where it lies in the qkv rows (a short last block through a padded copy), K transposed once
//!   per head into panels (`PackedMatrix::repack_rows`), stored to a 12 x L slab (never L x L);
//! - softmax of each slab row in f32 (`softmax_numerators`, as the GEMM path);
//! - context: one 12 x 32 tile per 32 columns of the head, the probabilities broadcast from the
//!   slab and V's rows read where they lie (`avx512_rows_strided`), scaled by the inverse row
//!   sums on the way out.
//!
//! Measured (Zen 5, `layer_parts/*_attention`, 64 sequences of 56 tokens, MiniLM's heads): 3.0
//! -> 2.2-2.5 ms; end to end (`scripts/bench/pair-encode.sh`, MiniLM, 1,024 lines) +1.3 % f32,
//! +1.9 % bf16, +1.4 % int8, where attention's products and softmax remain about a fifth of an
//! int8 pass.
//!
//! Each FMA is the GEMM path's, in the same order (scores over the head dimension, context over
//! the keys from the first), so the output is bit for bit the GEMM path's (tested). Queries past
//! the end of the sequence repeat its last query: computed, never stored. A query's context
//! depends on its own row, K and V only, so batching invariance holds.

use super::attention::{softmax_numerators, HeadColumns, SOFTMAX_LANES};
use super::buffers::grow;
use super::matmul::PackedMatrix;
use super::microkernel::x86::{avx512_rows, avx512_rows_strided};
use super::microkernel::{Isa, MR, NR};

/// Whether [`attend_head`] takes this head dimension on this CPU.
pub(super) fn supports(head_dim: usize) -> bool {
    Isa::detected().f32_kernels() == Isa::Avx512 && head_dim > 0 && head_dim.is_multiple_of(NR)
}

/// Buffers reused from head to head.
#[derive(Default)]
pub(super) struct Scratch {
    keys: PackedMatrix,
    /// `MR` rows of scores, then probabilities, `len` rounded up to whole key panels apart.
    scores: Vec<f32>,
    /// A short block's queries, padded to `MR` rows (see `QueryBlock::run`).
    queries: Vec<f32>,
    /// One `MR x NR` tile of context before its scaling.
    context: Vec<f32>,
}

/// The context of `head` for its `len` tokens, written to `out[i * ldo..i * ldo + head_dim]`
/// for token `i` (`out` holds them: `attention::attend_head` checks).
///
/// # Panics
/// If the CPU lacks AVX-512 or the head dimension is not [`supports`]ed.
pub(super) fn attend_head(head: HeadColumns, scratch: &mut Scratch, out: &mut [f32], ldo: usize) {
    let HeadColumns {
        rows,
        len,
        ld,
        head_dim,
        k,
        ..
    } = head;
    assert!(
        supports(head_dim),
        "AVX-512 attention: head dimension {head_dim} on this CPU"
    );
    if len == 0 {
        return;
    }
    scratch.keys.repack_rows(&rows[k..], len, head_dim, ld);
    // Whole key panels per slab row (also whole softmax vectors); the padded keys are zero rows
    // of K, their scores masked by the softmax and never read by the context.
    let stride = len.next_multiple_of(NR);
    debug_assert!(stride.is_multiple_of(SOFTMAX_LANES));
    // Grown, never cleared: every entry read is written first.
    grow(&mut scratch.scores, MR * stride);
    grow(&mut scratch.queries, MR * head_dim);
    grow(&mut scratch.context, MR * NR);
    let scale = 1.0 / (head_dim as f32).sqrt();
    for first in (0..len).step_by(MR) {
        let block = QueryBlock {
            head,
            first,
            valid: MR.min(len - first),
            scale,
        };
        // SAFETY: AVX-512F is present (`supports`); `rows` holds the sequence's `len` rows
        // (`HeadColumns::new`) and `out` its `len` rows of `head_dim`, the slab `MR * stride`
        // floats.
        unsafe { block.run(scratch, stride, &mut out[first * ldo..], ldo) };
    }
}

/// A block of up to [`MR`] queries of one head: queries `first..first + valid`.
struct QueryBlock<'a> {
    head: HeadColumns<'a>,
    first: usize,
    valid: usize,
    scale: f32,
}

impl QueryBlock<'_> {
    /// Scores, softmax and context of the block, written to `out`'s first `valid` rows (stride
    /// `ldo`).
    ///
    /// # Safety
    /// AVX-512F present; `rows` holds `len` rows of `ld` floats, with the head's Q and V columns
    /// inside each; `keys` is the head's K packed by `repack_rows` (k = `head_dim`); `scores`
    /// holds `MR * stride` floats with `stride` = `len` rounded up to whole panels; `out` holds
    /// `valid` rows of `head_dim` floats at stride `ldo`.
    #[target_feature(enable = "avx512f")]
    unsafe fn run(&self, scratch: &mut Scratch, stride: usize, out: &mut [f32], ldo: usize) {
        static ZERO_ROW: [f32; NR] = [0.0; NR];
        let Self {
            head,
            first,
            valid,
            scale,
        } = *self;
        let HeadColumns {
            rows,
            len,
            ld,
            head_dim,
            q: q_offset,
            v: v_offset,
            ..
        } = head;
        let Scratch {
            keys,
            scores,
            queries,
            context,
        } = scratch;
        assert!(valid > 0 && first + valid <= len && rows.len() >= len * ld);
        assert!(scores.len() >= MR * stride && stride >= keys.panels() * NR);
        assert!(queries.len() >= MR * head_dim && context.len() >= MR * NR);
        assert!(out.len() >= (valid - 1) * ldo + head_dim);
        // The last block of a sequence has fewer than MR queries: its rows go through a copy
        // padded with the last query (computed, never stored), so that the kernel reads MR rows.
        let (q, ldq) = if valid == MR {
            (rows[first * ld + q_offset..].as_ptr(), ld)
        } else {
            for (i, dst) in queries.chunks_exact_mut(head_dim).take(MR).enumerate() {
                let row = first + i.min(valid - 1);
                dst.copy_from_slice(&rows[row * ld + q_offset..][..head_dim]);
            }
            (queries.as_ptr(), head_dim)
        };
        let slab = scores.as_mut_ptr();
        for panel in 0..keys.panels() {
            // SAFETY: MR query rows of `head_dim` floats at stride `ldq` (in `rows`, or the
            // padded copy); the panel holds `head_dim` rows of NR; the slab's MR rows hold this
            // panel's NR columns (stride >= panels * NR).
            unsafe {
                let w = keys.panel(panel).as_ptr();
                avx512_rows(
                    head_dim,
                    q,
                    ldq,
                    w,
                    slab.add(panel * NR),
                    stride,
                    Some(&ZERO_ROW),
                    &[],
                );
            }
        }
        // Softmax of the block's real rows; the others keep their (finite) raw scores, which
        // only feed context rows that are never stored.
        let mut inverse_sums = [0.0f32; MR];
        for (row, inverse_sum) in scores.chunks_exact_mut(stride).zip(&mut inverse_sums).take(valid) {
            *inverse_sum = 1.0 / softmax_numerators(row, len, scale);
        }
        let probabilities = scores.as_ptr();
        for column in (0..head_dim).step_by(NR) {
            // SAFETY: V's rows j < len, columns `v_offset + column..+ NR` (inside the head's
            // `head_dim`), lie in `rows`; the probabilities P[i][j], i < MR, j < len < stride, in
            // the slab; `context` holds MR rows of NR.
            unsafe {
                let v = rows.as_ptr().add(v_offset + column);
                avx512_rows_strided(
                    len,
                    probabilities,
                    stride,
                    v,
                    ld,
                    context.as_mut_ptr(),
                    NR,
                    Some(&ZERO_ROW),
                );
            }
            for (i, (row, inverse_sum)) in context.chunks_exact(NR).zip(inverse_sums).take(valid).enumerate()
            {
                let dst = &mut out[i * ldo + column..][..NR];
                for (d, &x) in dst.iter_mut().zip(row) {
                    *d = x * inverse_sum;
                }
            }
        }
    }
}
