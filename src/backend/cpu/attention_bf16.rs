//! One head of attention with `vdpbf16ps` (AVX512-BF16), for the bf16 and int8 paths on CPUs
//! where that instruction outruns the f32 FMA (AMD's: twice the multiply-adds on Zen 4 and Zen
//! 5; `bf16::Kernel::Dot`), head dimensions that are multiples of 32. Q, K, V and the
//! probabilities are rounded to bf16 (as on AMX, `attention_amx`); products accumulate in f32,
//! the softmax runs in f32 on the f32 scores, the row sums come from the unrounded
//! probabilities.
//!
//! Per head, once (vectorized conversions, round to nearest even):
//! - K as the W of the scores: per panel of 32 keys, `keys[(panel * pairs + q) * NR + j]` is the
//!   u32 holding `bf16(K[j][2q])` low and `bf16(K[j][2q + 1])` high: K's rows converted to bf16
//!   pairs, then transposed in 16 x 16 blocks of u32 (`matmul::transpose_16x16`, which moves 32-bit
//!   lanes whatever they hold); zero for keys past the end;
//! - V as the W of the context: per 32 columns of the head, `values[(panel * key_pairs + q) * NR
//!   + c]` holds `bf16(V[2q][c])` low and `bf16(V[2q + 1][c])` high, zero past the end.
//!
//! Per block of [`MR`] = 12 queries: the queries as bf16 pairs, row by row (the last block padded
//! with its last query: computed, never stored); one 12 x 32 tile of scores per key panel into a
//! 12 x L slab (never L x L); the f32 softmax of each real row; the probabilities as bf16 pairs,
//! zero past the end; one 12 x 32 context tile per 32 columns, scaled by the inverse row sums on
//! the way out. A query's context depends on its row, K and V only: batching invariance holds.
//!
//! Measured on a Zen 5 (`cargo bench --bench cpu_ops -- layer_parts`, 64 sequences of 56 tokens,
//! with the next head's prefetch of `attention.rs`): bf16 attention 2.5 -> 1.7 ms against the f32
//! register-tile kernel's 2.2-2.8. Fidelity (`cargo test --test bf16 --test int8`): bf16 MiniLM
//! worst cosine 0.999967 against the reference; int8 0.997886 against f32, retrieval top-10
//! overlap 97.2 %.

use super::attention::{softmax_numerators, HeadColumns, SOFTMAX_LANES};
use super::bf16::dot_pairs;
use super::buffers::grow;
use super::matmul::transpose_16x16;
use super::microkernel::{MR, NR};

/// Whether [`attend_head`] runs on this CPU at this head dimension.
pub(super) fn supports(head_dim: usize) -> bool {
    super::bf16::Kernel::detected() == Some(super::bf16::Kernel::Dot)
        && head_dim > 0
        && head_dim.is_multiple_of(NR)
}

/// Buffers reused from head to head (u32: a pair of bf16).
#[derive(Default)]
pub(super) struct Scratch {
    /// K's rows as bf16 pairs, `[key][pair]`, before the transpose.
    key_rows: Vec<u32>,
    keys: Vec<u32>,
    values: Vec<u32>,
    /// A block's queries as bf16 pairs, `[row][pair]`.
    queries: Vec<u32>,
    /// `MR` rows of f32 scores, then probabilities, `stride` apart.
    scores: Vec<f32>,
    /// The same rows as bf16 pairs, `stride / 2` apart.
    probabilities: Vec<u32>,
    /// One `MR x NR` context tile before its scaling.
    context: Vec<f32>,
}

/// The context of `head` for its `len` tokens, written to `out[i * ldo..i * ldo + head_dim]`
/// for token `i` (`out` holds them: `attention::attend_head` checks).
///
/// # Panics
/// If this CPU does not run the kernel ([`supports`]).
pub(super) fn attend_head(head: HeadColumns, scratch: &mut Scratch, out: &mut [f32], ldo: usize) {
    assert!(
        supports(head.head_dim),
        "bf16 attention: head dimension {} on this CPU",
        head.head_dim
    );
    if head.len == 0 {
        return;
    }
    // Whole key panels per slab row: whole softmax vectors, and whole pairs.
    let head = Head {
        columns: head,
        stride: head.len.next_multiple_of(NR),
    };
    debug_assert!(head.stride.is_multiple_of(SOFTMAX_LANES));
    // SAFETY: AVX512-BF16 is present (`supports`: the dot kernel is chosen only where it is);
    // `rows` holds `len` rows of `ld` floats, each with the head's columns
    // (`HeadColumns::new`), and `out` `len` rows of `head_dim` at stride `ldo`.
    unsafe { head.run(scratch, out, ldo) };
}

/// One head of one sequence, with its slab rows' stride (`len` rounded up to whole key panels).
struct Head<'a> {
    columns: HeadColumns<'a>,
    stride: usize,
}

impl Head<'_> {
    /// Packs K and V, then runs every block of queries.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 present; the slices as `attend_head` asserts.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn run(&self, scratch: &mut Scratch, out: &mut [f32], ldo: usize) {
        let Self { columns, stride } = *self;
        let HeadColumns {
            rows,
            ld,
            len,
            head_dim,
            q: q_offset,
            ..
        } = columns;
        let pairs = head_dim / 2;
        let (key_panels, value_panels, key_pairs) = (stride / NR, head_dim / NR, len.div_ceil(2));
        grow(&mut scratch.key_rows, stride * pairs);
        grow(&mut scratch.keys, key_panels * pairs * NR);
        grow(&mut scratch.values, value_panels * key_pairs * NR);
        grow(&mut scratch.queries, MR * pairs);
        grow(&mut scratch.scores, MR * stride);
        grow(&mut scratch.probabilities, MR * stride / 2);
        grow(&mut scratch.context, MR * NR);
        // SAFETY: the buffers were grown to the extents each function reads and writes.
        unsafe {
            self.pack_keys(&mut scratch.key_rows, &mut scratch.keys);
            self.pack_values(&mut scratch.values);
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut inverse_sums = [0.0f32; MR];
        for first in (0..len).step_by(MR) {
            let valid = MR.min(len - first);
            for (i, dst) in scratch.queries.chunks_exact_mut(pairs).take(MR).enumerate() {
                let row = first + i.min(valid - 1);
                // SAFETY: the row's `head_dim` Q values lie in `rows`; `dst` holds `pairs`.
                unsafe { to_bf16_pairs(&rows[row * ld + q_offset..][..head_dim], dst) };
            }
            for panel in 0..key_panels {
                // SAFETY: the queries hold MR rows of `pairs`, the panel `pairs` rows of NR, the
                // slab MR rows of `stride` >= (panel + 1) * NR.
                unsafe {
                    dot_tile(
                        pairs,
                        scratch.queries.as_ptr(),
                        pairs,
                        scratch.keys[panel * pairs * NR..].as_ptr(),
                        scratch.scores[panel * NR..].as_mut_ptr(),
                        stride,
                    )
                };
            }
            let slab = scratch.scores.chunks_exact_mut(stride);
            let bf16_rows = scratch.probabilities.chunks_exact_mut(stride / 2);
            // Rows past `valid` keep earlier contents (finite bf16 pairs): they only feed context
            // rows that are never stored.
            for ((row, pairs_row), inverse_sum) in slab.zip(bf16_rows).zip(&mut inverse_sums).take(valid) {
                *inverse_sum = 1.0 / softmax_numerators(row, len, scale);
                // SAFETY: both rows hold `stride` values (as f32, and as pairs).
                unsafe { probabilities_to_bf16(row, len, pairs_row) };
            }
            for panel in 0..value_panels {
                // SAFETY: the probabilities hold MR rows of `stride / 2` >= key_pairs pairs, the
                // values' panel key_pairs rows of NR, the context tile MR rows of NR.
                unsafe {
                    dot_tile(
                        key_pairs,
                        scratch.probabilities.as_ptr(),
                        stride / 2,
                        scratch.values[panel * key_pairs * NR..].as_ptr(),
                        scratch.context.as_mut_ptr(),
                        NR,
                    )
                };
                let tile = scratch.context.chunks_exact(NR);
                for (i, (context, inverse_sum)) in tile.zip(inverse_sums).take(valid).enumerate() {
                    let dst = &mut out[(first + i) * ldo + panel * NR..][..NR];
                    for (d, &x) in dst.iter_mut().zip(context) {
                        *d = x * inverse_sum;
                    }
                }
            }
        }
    }

    /// K's rows as bf16 pairs (zero rows up to `stride`), transposed into panels of 32 keys.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 present; `key_rows` holds `stride * head_dim / 2` and `keys`
    /// `stride * head_dim / 2` values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_keys(&self, key_rows: &mut [u32], keys: &mut [u32]) {
        let Self { columns, stride } = *self;
        let HeadColumns {
            rows,
            ld,
            len,
            head_dim,
            k: k_offset,
            ..
        } = columns;
        let pairs = head_dim / 2;
        for (j, dst) in key_rows.chunks_exact_mut(pairs).take(stride).enumerate() {
            if j < len {
                // SAFETY: key j's `head_dim` values lie in `rows`; `dst` holds `pairs`.
                unsafe { to_bf16_pairs(&rows[j * ld + k_offset..][..head_dim], dst) };
            } else {
                dst.fill(0);
            }
        }
        // `pairs` is a multiple of 16 (head_dim of 32), `stride` of 32: whole 16 x 16 blocks.
        for j0 in (0..stride).step_by(16) {
            let (panel, column) = (j0 / NR, j0 % NR);
            for q0 in (0..pairs).step_by(16) {
                // SAFETY: rows j0..j0 + 16 < stride of `key_rows`, pairs q0..q0 + 16 <= pairs;
                // panel `panel`'s rows q0..q0 + 16, columns column..column + 16 < NR.
                unsafe {
                    transpose_16x16(
                        key_rows[j0 * pairs + q0..].as_ptr().cast(),
                        pairs,
                        keys[(panel * pairs + q0) * NR + column..].as_mut_ptr().cast(),
                        NR,
                    )
                };
            }
        }
    }

    /// V as pairs of keys per column, in panels of 32 columns, zero past the end.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16 present; `values` holds `head_dim * ceil(len / 2)` values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_values(&self, values: &mut [u32]) {
        use std::arch::x86_64::*;
        let HeadColumns {
            rows,
            ld,
            len,
            head_dim,
            v: v_offset,
            ..
        } = self.columns;
        let key_pairs = len.div_ceil(2);
        for q in 0..key_pairs {
            let even = &rows[2 * q * ld + v_offset..][..head_dim];
            // The odd key past an odd length is zero.
            let odd = (2 * q + 1 < len).then(|| &rows[(2 * q + 1) * ld + v_offset..][..head_dim]);
            for c0 in (0..head_dim).step_by(16) {
                let (panel, column) = (c0 / NR, c0 % NR);
                // SAFETY: 16 values from column c0 < head_dim of each row; 16 pairs at row q,
                // columns column..column + 16 of panel `panel`, inside `values`. The transmutes
                // reinterpret 256 bits of bf16 as 256 bits of integers.
                unsafe {
                    let low: __m256i =
                        std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(even[c0..].as_ptr())));
                    let high = match odd {
                        Some(odd) => std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(
                            _mm512_loadu_ps(odd[c0..].as_ptr()),
                        )),
                        None => _mm256_setzero_si256(),
                    };
                    let pairs = _mm512_or_si512(
                        _mm512_cvtepu16_epi32(low),
                        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(high)),
                    );
                    let dst = values[(panel * key_pairs + q) * NR + column..][..16].as_mut_ptr();
                    _mm512_storeu_si512(dst.cast(), pairs);
                }
            }
        }
    }
}

/// `values` (a multiple of 32 long) rounded to bf16, as pairs of consecutive values in `dst`.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `dst` holds `values.len() / 2` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_pairs(values: &[f32], dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(values.len().is_multiple_of(32) && dst.len() >= values.len() / 2);
    for (chunk, out) in values.chunks_exact(32).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 32 floats in, 16 pairs out, both inside the slices. `cvtne2ps_pbh(b, a)` puts
        // `a`'s 16 values in the low half, `b`'s in the high: memory order is the source's.
        unsafe {
            let pairs = _mm512_cvtne2ps_pbh(
                _mm512_loadu_ps(chunk[16..].as_ptr()),
                _mm512_loadu_ps(chunk.as_ptr()),
            );
            _mm512_storeu_si512(
                out.as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(pairs),
            );
        }
    }
}

/// A row of probabilities (`row[..len]`, the rest meaningless) as bf16 pairs, zero from `len`
/// on.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `row` a multiple of 32 long, `dst` half as long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn probabilities_to_bf16(row: &[f32], len: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(row.len().is_multiple_of(32) && dst.len() >= row.len() / 2);
    let mask = |first: usize| super::math::lanes_before(len, first);
    for (v, out) in (0..row.len()).step_by(32).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 32 floats from `v` < row.len(), 16 pairs out. Past `len` the lanes load as
        // zero (the masks), so the padded keys weigh nothing whatever the scores held there.
        unsafe {
            let low = _mm512_maskz_loadu_ps(mask(v), row[v..].as_ptr());
            let high = _mm512_maskz_loadu_ps(mask(v + 16), row[v + 16..].as_ptr());
            let pairs = _mm512_cvtne2ps_pbh(high, low);
            _mm512_storeu_si512(
                out.as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(pairs),
            );
        }
    }
}

/// The 12 x 32 tile `C = A · B` in f32, A's rows in place (`a + i * lda + q`), B packed
/// (`b + q * NR`): [`dot_pairs`] from zero, stored to `c + i * ldc`. A function of its own, not
/// inlined into the block loop, where LLVM may hoist broadcasts and spill them (it did for the
/// f32 kernel's twin).
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `a` readable for `pairs` u32 at each `i * lda`, i < MR;
/// `b` for `pairs * NR` u32; `c` writable for `NR` floats at each `i * ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline(never)]
unsafe fn dot_tile(pairs: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize) {
    use super::microkernel::x86::store_tile;
    let mut acc = [[std::arch::x86_64::_mm512_setzero_ps(); 2]; MR];
    // SAFETY: A[i][q] at `a + i * lda + q` lies in row i's `pairs` values; B and C as the
    // caller vouched for.
    unsafe {
        dot_pairs(&mut acc, pairs, |q, i| a.add(i * lda + q), b);
        store_tile(&acc, c, ldc);
    }
}
