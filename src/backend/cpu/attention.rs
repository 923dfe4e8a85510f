//! Multi-head self-attention over a packed batch, within each sequence only:
//! for every sequence `s` (tokens `cu_seqlens[s]..cu_seqlens[s+1]`) and head `h`,
//! `context = softmax(Q Kᵀ / sqrt(head_dim)) V`, with Q, K, V the head's columns of the packed
//! `qkv` rows (`[tokens, 3 * heads * head_dim]`: q, then k, then v, each split into heads).
//!
//! Work split: one rayon task per sequence, owning that sequence's rows of the output (so tasks
//! never touch another sequence's tokens, by construction). When the batch has too few sequences
//! to feed every thread, the heads of each long sequence run as parallel subtasks too, so that a
//! batch of one long text still uses every core; otherwise heads run in a loop and write straight
//! into the output.
//!
//! Per (sequence, head): K is packed as the `W` of a [`gemm`] (`scores = Q Kᵀ`) and V as the `W`
//! of a second one (`context = P V`), both from their strided columns of `qkv` without a copy of
//! Q. Queries go in blocks of `QUERY_BLOCK` rows so that the score block (`QUERY_BLOCK x len`)
//! stays small however long the sequence. Softmax is in f32 with the row maximum subtracted; the
//! division by the row sum is applied to the `head_dim` context values, not the `len` weights.

use rayon::prelude::*;

use super::math;
use super::matmul::{gemm, PackedMatrix};
#[cfg(target_arch = "x86_64")]
use super::{attention_amx, attention_avx512, attention_bf16};

/// How the products of one head are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKernel {
    /// f32 throughout, through the packed f32 GEMM.
    F32,
    /// Q, K, V and the probabilities in bf16 on AMX tiles, f32 accumulation and softmax
    /// (`attention_amx`); for the bf16 path, head dimensions that are multiples of 32.
    Amx,
    /// Q, K, V and the probabilities in bf16 on `vdpbf16ps` register tiles, f32 accumulation
    /// and softmax (`attention_bf16`): the bf16 and int8 paths where that instruction outruns
    /// the f32 FMA (AMD), head dimensions that are multiples of 32.
    Bf16,
    /// f32 on AVX-512 register tiles with Q and V read in place (`attention_avx512`): the
    /// [`HeadKernel::F32`] path's bits without its copies; head dimensions that are multiples of
    /// 32.
    Avx512,
}

impl HeadKernel {
    /// The kernel for a backend of `dtype` on this CPU at this head dimension. bf16 and int8
    /// (whose attention is bf16): AMX where the level is AMX, else `vdpbf16ps` where the bf16
    /// GEMM uses it, if the head dimension fits. Then, and for f32, the AVX-512 kernel where the
    /// f32 kernels are AVX-512 and the head dimension fits, else the GEMM path.
    pub fn choose(dtype: crate::backend::Dtype, head_dim: usize) -> HeadKernel {
        #[cfg(target_arch = "x86_64")]
        {
            let rounded = dtype != crate::backend::Dtype::F32;
            let amx = super::microkernel::Isa::detected() == super::microkernel::Isa::Amx;
            if rounded && amx && attention_amx::supports(head_dim) {
                return HeadKernel::Amx;
            }
            if rounded && attention_bf16::supports(head_dim) {
                return HeadKernel::Bf16;
            }
            if attention_avx512::supports(head_dim) {
                return HeadKernel::Avx512;
            }
        }
        let _ = (dtype, head_dim);
        HeadKernel::F32
    }
}

/// One head of one sequence as the register-tile kernels (`attention_avx512`, `attention_bf16`)
/// read it: the sequence's `len` qkv rows, `ld` = 3 x hidden floats apart (q, then k, then v,
/// each split into heads), and the first column of the head's Q, K and V. Built, and its extents
/// checked, once in `attend_head`.
#[derive(Clone, Copy)]
pub(super) struct HeadColumns<'a> {
    pub(super) rows: &'a [f32],
    pub(super) len: usize,
    pub(super) ld: usize,
    pub(super) head_dim: usize,
    pub(super) q: usize,
    pub(super) k: usize,
    pub(super) v: usize,
}

impl<'a> HeadColumns<'a> {
    /// Head `h` of `heads` in the `len` rows `rows`.
    ///
    /// # Panics
    /// If `h` is not below `heads` or `rows` is shorter than `len` rows.
    fn new(rows: &'a [f32], len: usize, heads: usize, head_dim: usize, h: usize) -> Self {
        let hidden = heads * head_dim;
        let ld = 3 * hidden;
        assert!(
            h < heads && rows.len() >= len * ld,
            "attention: qkv rows too short for head {h}"
        );
        Self {
            rows,
            len,
            ld,
            head_dim,
            q: h * head_dim,
            k: hidden + h * head_dim,
            v: 2 * hidden + h * head_dim,
        }
    }
}

/// Query rows per score block: 64 x 512 scores are 128 KiB, within L2.
const QUERY_BLOCK: usize = 64;
/// Sequences at least this long split their heads into parallel subtasks; below it the per-head
/// work (about `len^2 * head_dim * 4` FLOPs) is too small to be worth a task.
const PARALLEL_HEADS_MIN_LEN: usize = 64;

/// Reusable buffers for one (sequence, head) at a time.
#[derive(Default)]
struct Scratch {
    keys: PackedMatrix,
    values: PackedMatrix,
    scores: Vec<f32>,
    #[cfg(target_arch = "x86_64")]
    amx: attention_amx::Scratch,
    #[cfg(target_arch = "x86_64")]
    avx512: attention_avx512::Scratch,
    #[cfg(target_arch = "x86_64")]
    bf16: attention_bf16::Scratch,
}

/// Writes the context for every token into `out` (`[tokens, heads * head_dim]`).
///
/// Callers check: `qkv.len() == tokens * 3 * heads * head_dim`, `out.len() == tokens * heads *
/// head_dim`, `cu_seqlens` starts at 0, never decreases and ends at `tokens`.
pub fn attention(
    qkv: &[f32],
    cu_seqlens: &[u32],
    heads: usize,
    head_dim: usize,
    kernel: HeadKernel,
    out: &mut [f32],
) {
    let hidden = heads * head_dim;
    // Carve `out` into one disjoint slice per sequence.
    let mut parts = Vec::with_capacity(cu_seqlens.len().saturating_sub(1));
    let mut rest = out;
    for window in cu_seqlens.windows(2) {
        let (start, end) = (window[0] as usize, window[1] as usize);
        let (mine, tail) = rest.split_at_mut((end - start) * hidden);
        parts.push((start, end - start, mine));
        rest = tail;
    }
    // With enough sequences to share out, heads in a loop are cheaper than head subtasks (no
    // private blocks to allocate and copy); with few, only head subtasks keep every core busy.
    let split_heads = parts.len() < 4 * rayon::current_num_threads();
    parts.into_par_iter().for_each(|(start, len, out)| {
        attend_sequence(qkv, start, len, heads, head_dim, kernel, split_heads, out);
    });
}

#[allow(clippy::too_many_arguments)]
fn attend_sequence(
    qkv: &[f32],
    start: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    kernel: HeadKernel,
    split_heads: bool,
    out: &mut [f32],
) {
    let hidden = heads * head_dim;
    let rows = &qkv[start * 3 * hidden..(start + len) * 3 * hidden];
    if split_heads && len >= PARALLEL_HEADS_MIN_LEN && heads > 1 {
        // The heads' columns interleave in `out`, so each subtask fills a private [len, head_dim]
        // block, copied in afterwards (len * hidden copies against len^2 * hidden * 4 FLOPs).
        let blocks: Vec<Vec<f32>> = (0..heads)
            .into_par_iter()
            .map_init(Scratch::default, |scratch, h| {
                let mut block = vec![0.0; len * head_dim];
                attend_head(
                    rows, len, heads, head_dim, h, kernel, scratch, &mut block, head_dim,
                );
                block
            })
            .collect();
        for (h, block) in blocks.iter().enumerate() {
            for (out_row, block_row) in out.chunks_exact_mut(hidden).zip(block.chunks_exact(head_dim)) {
                out_row[h * head_dim..(h + 1) * head_dim].copy_from_slice(block_row);
            }
        }
    } else {
        let mut scratch = Scratch::default();
        for h in 0..heads {
            if h + 1 < heads {
                prefetch_head(rows, len, hidden, head_dim, h + 1);
            }
            attend_head(
                rows,
                len,
                heads,
                head_dim,
                h,
                kernel,
                &mut scratch,
                &mut out[h * head_dim..],
                hidden,
            );
        }
    }
}

/// Asks for head `h`'s Q, K and V columns of the sequence's rows to be brought into L2. The
/// rows are a qkv row apart (4.5 KiB for MiniLM), too far for the hardware prefetchers, and
/// every head reads lines of its own: issued a head ahead, the loads of the next head's
/// columns overlap this head's products. perf of `layer_parts/Bf16_attention` had half of the
/// bf16 kernel's own time in the instructions that first read Q and K.
fn prefetch_head(rows: &[f32], len: usize, hidden: usize, head_dim: usize, h: usize) {
    #[cfg(target_arch = "x86_64")]
    for row in rows.chunks_exact(3 * hidden).take(len) {
        for part in 0..3 {
            let columns = &row[part * hidden + h * head_dim..][..head_dim];
            // Every line the columns touch: one address per 16 floats, and the last one.
            for at in (0..head_dim).step_by(16).chain(std::iter::once(head_dim - 1)) {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                // SAFETY: a prefetch is a hint that never faults; the address lies in `row`.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(columns[at..].as_ptr().cast()) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, len, hidden, head_dim, h);
}

/// The context of head `h` for the `len` tokens whose qkv rows are `rows`, written to
/// `out[i * ldo .. i * ldo + head_dim]` for token `i`.
#[allow(clippy::too_many_arguments)] // strides and extents of one head's slice of the batch
fn attend_head(
    rows: &[f32],
    len: usize,
    heads: usize,
    head_dim: usize,
    h: usize,
    kernel: HeadKernel,
    scratch: &mut Scratch,
    out: &mut [f32],
    ldo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel == HeadKernel::Amx {
        attention_amx::attend_head(rows, len, heads, head_dim, h, &mut scratch.amx, out, ldo);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, HeadKernel::Bf16 | HeadKernel::Avx512) {
        let head = HeadColumns::new(rows, len, heads, head_dim, h);
        assert!(
            len == 0 || out.len() >= (len - 1) * ldo + head_dim,
            "attention: output too short"
        );
        match kernel {
            HeadKernel::Bf16 => attention_bf16::attend_head(head, &mut scratch.bf16, out, ldo),
            _ => attention_avx512::attend_head(head, &mut scratch.avx512, out, ldo),
        }
        return;
    }
    let hidden = heads * head_dim;
    let ld = 3 * hidden;
    let (q_offset, k_offset, v_offset) = (h * head_dim, hidden + h * head_dim, 2 * hidden + h * head_dim);
    // Keys: W[j][c] = K[j][c], so Q · Wᵀ gives the scores. Values: W[c][j] = V[j][c], so P · Wᵀ
    // gives the context.
    scratch.keys.repack_rows(&rows[k_offset..], len, head_dim, ld);
    scratch
        .values
        .repack_columns(&rows[v_offset..], head_dim, len, ld);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Score rows padded to whole softmax vectors; the products read and write only `len`.
    let stride = len.next_multiple_of(SOFTMAX_LANES);
    for first in (0..len).step_by(QUERY_BLOCK) {
        let block = QUERY_BLOCK.min(len - first);
        scratch.scores.resize(block * stride, 0.0);
        let scores = &mut scratch.scores[..block * stride];
        gemm(
            &rows[first * ld + q_offset..],
            ld,
            block,
            &scratch.keys,
            None,
            scores,
            stride,
        );
        let mut inverse_sums = [0.0f32; QUERY_BLOCK];
        for (row, inverse_sum) in scores.chunks_exact_mut(stride).zip(&mut inverse_sums) {
            *inverse_sum = 1.0 / softmax_numerators(row, len, scale);
        }
        let out_block = &mut out[first * ldo..];
        gemm(scores, stride, block, &scratch.values, None, out_block, ldo);
        for (i, inverse_sum) in inverse_sums.iter().take(block).enumerate() {
            out_block[i * ldo..i * ldo + head_dim]
                .iter_mut()
                .for_each(|v| *v *= inverse_sum);
        }
    }
}

/// Replaces the raw scores `s` of `row[..len]` by `exp(scale * (s - max s))` and returns their
/// sum. Subtracting the maximum keeps every exponent at most 0, so nothing overflows whatever
/// the scores. `row` is padded to a whole number of [`SOFTMAX_LANES`] (the score blocks' rows
/// are), and its values past `len` are overwritten with meaningless (finite) ones.
///
/// Where the f32 kernels are AVX-512, [`softmax_numerators_avx512`]; elsewhere the portable
/// loop, compiled for the level.
pub(super) fn softmax_numerators(row: &mut [f32], len: usize, scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::microkernel::Isa::detected().f32_kernels() == super::microkernel::Isa::Avx512 {
        // SAFETY: the f32 kernels are AVX-512 only where the CPU has it.
        return unsafe { softmax_numerators_avx512(row, len, scale) };
    }
    softmax_numerators_portable(row, len, scale)
}

math::multiversion! {
    /// [`softmax_numerators`] as a plain loop over [`SOFTMAX_LANES`] that each level's compiler
    /// vectorizes, with the exponential of `math::exp`.
    pub(super) fn softmax_numerators_portable / softmax_numerators_portable_with(row: &mut [f32], len: usize, scale: f32) -> f32
        => softmax_numerators_inline
}

/// [`softmax_numerators`] in AVX-512 instructions, with lanes past `len` set to 0: the
/// exponential in base 2, `2^t` for `t = (s - max) c` (`c = scale log2 e`; 0 at the maximum), as
/// `2^n 2^f` with `n = round(t)` (`vrndscaleps`), `f = t - n` in [-1/2, 1/2] (exact), `2^f` a
/// degree-6 polynomial and `2^n` applied by `vscalefps`, which also takes any `n` below the
/// normal range to 0 with no clamp. Eleven vector operations per 16 scores where `math::exp` in
/// the portable loop compiles to about twenty (clamps, the bit-built `2^n`, degree 7 in `e^r`):
/// softmax was a third of an int8 MiniLM pass's attention (`perf`, 5 % of the pass).
///
/// Accuracy: the polynomial is a relative minimax fit of `2^f` (error 1.9e-9, a Lawson
/// iteration); evaluated in f32, within 1e-7 relative. `t` carries the rounding of the
/// subtraction and the product, as in the portable loop: none at the maximum, a relative error
/// in `exp` of `|t|` times 6e-8 elsewhere (numerators far below 1 where it grows).
///
/// # Safety
/// AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_numerators_avx512(row: &mut [f32], len: usize, scale: f32) -> f32 {
    use std::arch::x86_64::*;
    assert!(row.len().is_multiple_of(SOFTMAX_LANES) && len <= row.len());
    // Highest degree first, for Horner.
    const POLYNOMIAL: [f32; 7] = [
        1.534_581_2e-4,
        1.339_993_1e-3,
        9.618_489e-3,
        5.550_328_6e-2,
        0.240_226_46,
        std::f32::consts::LN_2, // the fit lands on ln 2 itself in f32
        1.0,
    ];
    let ptr = row.as_mut_ptr();
    // The lanes of the vector at `first` that hold scores: all, some (the last), or none (the
    // padding).
    let lanes = |first: usize| math::lanes_before(len, first);
    let mut maxima = _mm512_set1_ps(f32::NEG_INFINITY);
    for first in (0..row.len()).step_by(SOFTMAX_LANES) {
        // SAFETY: `first + 16 <= row.len()`.
        let s = unsafe { _mm512_loadu_ps(ptr.add(first)) };
        maxima = _mm512_mask_max_ps(maxima, lanes(first), maxima, s);
    }
    let max = _mm512_reduce_max_ps(maxima);
    let (multiplier, max) = (
        _mm512_set1_ps(scale * std::f32::consts::LOG2_E),
        _mm512_set1_ps(max),
    );
    let mut sums = _mm512_setzero_ps();
    for first in (0..row.len()).step_by(SOFTMAX_LANES) {
        // SAFETY: as above.
        let s = unsafe { _mm512_loadu_ps(ptr.add(first)) };
        let t = _mm512_mul_ps(_mm512_sub_ps(s, max), multiplier);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm512_sub_ps(t, n);
        let mut p = _mm512_set1_ps(POLYNOMIAL[0]);
        for &coefficient in &POLYNOMIAL[1..] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(coefficient));
        }
        let numerators = _mm512_maskz_scalef_ps(lanes(first), p, n);
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(ptr.add(first), numerators) };
        sums = _mm512_add_ps(sums, numerators);
    }
    _mm512_reduce_add_ps(sums)
}

/// Lanes of the softmax loops: one AVX-512 vector.
pub(super) const SOFTMAX_LANES: usize = 16;

/// Whole vectors of [`SOFTMAX_LANES`] over the padded row, the lanes past `len` masked out of
/// the maximum and the sums. Rows are as long as their sequence (56 tokens at the corpus
/// median): a vector loop with a scalar remainder, as LLVM builds for a plain loop over `len`,
/// spent much of its time on up to 15 scalar `exp`s per row.
#[inline(always)]
fn softmax_numerators_inline(row: &mut [f32], len: usize, scale: f32) -> f32 {
    assert!(row.len().is_multiple_of(SOFTMAX_LANES) && len <= row.len());
    let mut maxima = [f32::NEG_INFINITY; SOFTMAX_LANES];
    for (first, chunk) in (0..).step_by(SOFTMAX_LANES).zip(row.chunks_exact(SOFTMAX_LANES)) {
        for (lane, (&s, max)) in chunk.iter().zip(&mut maxima).enumerate() {
            // Selects, not `f32::max` or a conditional store: each is one vector instruction
            // (scores are never NaN).
            let s = if first + lane < len { s } else { f32::NEG_INFINITY };
            *max = if s > *max { s } else { *max };
        }
    }
    let max = halving_reduce(maxima, |a, b| if a > b { a } else { b });
    let mut sums = [0.0f32; SOFTMAX_LANES];
    for (first, chunk) in (0..)
        .step_by(SOFTMAX_LANES)
        .zip(row.chunks_exact_mut(SOFTMAX_LANES))
    {
        for (lane, (s, sum)) in chunk.iter_mut().zip(&mut sums).enumerate() {
            *s = math::exp((*s - max) * scale);
            *sum += if first + lane < len { *s } else { 0.0 };
        }
    }
    halving_reduce(sums, |a, b| a + b)
}

/// Combines the lanes pairwise, halves of the array at a time: four dependent steps for 16
/// lanes where a fold is a chain of 15 (60 cycles of `vaddss` latency per softmax row).
#[inline(always)]
fn halving_reduce(mut lanes: [f32; SOFTMAX_LANES], combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = SOFTMAX_LANES;
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            lanes[lane] = combine(lanes[lane], lanes[lane + width]);
        }
    }
    lanes[0]
}
