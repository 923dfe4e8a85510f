//! The int8 GEMM's activations: each row quantized per group of [`GROUP`] values, asymmetric,
//! to unsigned codes (the rules are in the `int8` module header), laid out for the kernel.
//!
//! Apart from the GEMM so that a row can be quantized once, where it is produced or before its
//! products, and the GEMM timed on its integer work alone (`gemm_codes_panels`); `gemm_panels`
//! quantizes each block of rows of an f32 A just before multiplying it.

use super::{round_even, GROUP, KC_INT8};
use crate::backend::cpu::buffers::grow;
use crate::backend::cpu::matmul::prefetch_line;
use crate::backend::cpu::microkernel::{Isa, MR};

/// The quantization of one group of a row of activations: `x ~ (q - zero) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    /// The width of one code step.
    pub scale: f32,
    /// The code of the value 0.
    pub zero: i32,
}

impl Quantization {
    /// The scale and zero point of `values` (see the module header); all zeros get scale 1.
    pub fn of(values: &[f32]) -> Self {
        let min = values.iter().copied().fold(0.0f32, f32::min);
        let max = values.iter().copied().fold(0.0f32, f32::max);
        Self::of_range(min, max)
    }

    /// The scale and zero point for values in `[min, max]`, a range that holds 0.
    fn of_range(min: f32, max: f32) -> Self {
        let scale = (max - min) / 255.0;
        if !(scale > 0.0 && scale.is_finite()) {
            return Self { scale: 1.0, zero: 0 };
        }
        Self {
            scale,
            zero: round_even(-min / scale).clamp(0.0, 255.0) as i32,
        }
    }

    /// The code of `value`: `round(value / scale) + zero`, clamped to [0, 255].
    pub fn code(&self, value: f32) -> u8 {
        (round_even(value * (1.0 / self.scale)) + self.zero as f32).clamp(0.0, 255.0) as u8
    }
}

/// Quantizes a row, group by group of [`GROUP`] values, into `out` (as long as `values`), and
/// each group's scale and zero point into `quantizations` (one per group): the vectorized
/// [`Quantization::of`] and [`Quantization::code`], with the same results.
///
/// One call per row, in two passes: first every group's range and quantization (independent
/// reductions and divisions, free to overlap), then the codes, from L1 by then, 64 at a time:
/// four vectors of codes saturated to bytes by two packing steps and one permutation, one
/// 64-byte store. Only the row's last partial vector is masked. At n = 384 (MiniLM's attention
/// output and FFN down projections) the quantization is a large part of the GEMM: 17 % of a
/// one-thread 1365 x 384 x 384 product when every vector computed its mask and narrowed its 16
/// codes on its own.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VL present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_row(values: &[f32], out: &mut [u8], quantizations: &mut [Quantization]) {
    use std::arch::x86_64::*;
    assert!(out.len() == values.len() && quantizations.len() == values.len().div_ceil(GROUP));
    let (len, src, dst) = (values.len(), values.as_ptr(), out.as_mut_ptr());
    // The lanes of the vector at `start` that lie inside the row (all 16 but in the last one).
    let mask = |start: usize| crate::backend::cpu::math::lanes_before(len, start);
    // The 16 values at `start < len`; lanes at or past `len` (in the last vector only, the one
    // branch that computes a mask) load 0, which the range holds anyway.
    let load = |start: usize| {
        // SAFETY: `start < len`: a full vector when 16 values remain, else masked to those left.
        unsafe {
            if start + 16 <= len {
                _mm512_loadu_ps(src.add(start))
            } else {
                _mm512_maskz_loadu_ps(mask(start), src.add(start))
            }
        }
    };
    for (g, quantization) in quantizations.iter_mut().enumerate() {
        let (mut low, mut high) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let end = ((g + 1) * GROUP).min(len);
        for start in (g * GROUP..end).step_by(16) {
            let x = load(start);
            low = _mm512_min_ps(low, x);
            high = _mm512_max_ps(high, x);
        }
        *quantization = Quantization::of_range(_mm512_reduce_min_ps(low), _mm512_reduce_max_ps(high));
    }
    // The codes of the 16 values at `start`, as i32 lanes: the conversion rounds to nearest,
    // ties to even (the default MXCSR mode), as `round_even`; adding the zero point is exact.
    let codes = |start: usize, inverse: __m512, zero: __m512i| {
        _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(load(start), inverse)), zero)
    };
    // Where the 32-bit word `t` of the packed bytes belongs: packing works within 128-bit lanes,
    // leaving word `4 l + s` with values `4 l..4 l + 4` of source vector `s`.
    let order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    let byte_max = _mm512_set1_epi16(255);
    for (g, quantization) in quantizations.iter().enumerate() {
        let inverse = _mm512_set1_ps(1.0 / quantization.scale);
        let zero = _mm512_set1_epi32(quantization.zero);
        let (mut start, end) = (g * GROUP, ((g + 1) * GROUP).min(len));
        while start + 64 <= end {
            let [a, b, c, d] = [0, 16, 32, 48].map(|offset| codes(start + offset, inverse, zero));
            // Signed 32 -> unsigned 16 bits saturates below at 0; the minimum clamps at 255 (and
            // leaves the next step's signed 16-bit reading nothing negative); 16 -> 8 bits.
            let ab = _mm512_min_epu16(_mm512_packus_epi32(a, b), byte_max);
            let cd = _mm512_min_epu16(_mm512_packus_epi32(c, d), byte_max);
            let bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(ab, cd));
            // SAFETY: `start + 64 <= len`: the 64 bytes lie inside `out`.
            unsafe { _mm512_storeu_si512(dst.add(start).cast(), bytes) };
            start += 64;
        }
        for start in (start..end).step_by(16) {
            let clamped = _mm512_max_epi32(codes(start, inverse, zero), _mm512_setzero_si512());
            // SAFETY: the mask is the load's: no byte at or past `len` is written.
            unsafe {
                _mm_mask_storeu_epi8(
                    dst.add(start).cast(),
                    mask(start),
                    _mm512_cvtusepi32_epi8(clamped),
                )
            };
        }
    }
}

/// Rows of activations quantized for the int8 GEMM, every K block of them (see the module
/// header of `int8`): made by [`QuantizedRows::quantize`] (or
/// [`QuantizedRows::quantize_activated`]), read by `int8::gemm_codes_panels`.
/// Its storage is kept and reused by the next `quantize`.
#[derive(Debug, Default)]
pub struct QuantizedRows {
    /// `[K block][row][k]`, rows `KC_INT8` bytes apart, rows padded to a whole 12-row tile.
    codes: Vec<u8>,
    /// `[K block][tile][group][row of tile]`, K blocks `BLOCK_GROUPS` groups of tiles apart:
    /// `s_a`, then `z` as f32.
    scales: Vec<f32>,
    zeros: Vec<f32>,
    /// Rows quantized.
    rows: usize,
    /// Their length.
    k: usize,
}

/// Groups per K block.
const BLOCK_GROUPS: usize = KC_INT8 / GROUP;

/// Rows of codes stored past the last K block: the AMX kernel reads A in tiles of 32 rows from
/// any row below `rows`, and only the rows below `rows` of its sums are used.
pub(super) const SLACK_ROWS: usize = 32;

impl QuantizedRows {
    /// Empty, no storage yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Their length (`k` of the GEMM that reads them).
    pub fn k(&self) -> usize {
        self.k
    }

    /// 12-row tiles held, the last one padded with zero rows.
    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(MR)
    }

    /// Quantizes rows `0..m` of A (`A[i][p] = a[i * lda + p]`), all `k` columns, per group, each
    /// row's codes written where the kernel reads them; rows up to the next multiple of `MR`
    /// are zero.
    ///
    /// Row by row, every K block of a row before the next: a row of A is one stretch of memory
    /// (often in L3), asked for whole while the row before it is quantized. Packed one K block
    /// at a time, as before, each row was read in short segments and each segment asked for
    /// alone: at n = 384, k = 1,536 (MiniLM's FFN down projection, one thread), quantizing
    /// held 14 % of the GEMM's time and the wait on A most of the rest outside the kernel;
    /// this order took the GEMM from 658 to 710 GOP/s (BENCHMARKS.md).
    ///
    /// # Panics
    /// If `a` is too short for `m` rows of `k` at stride `lda`.
    pub fn quantize(&mut self, a: &[f32], lda: usize, m: usize, k: usize) {
        self.prepare(a.len(), lda, m, k);
        for i in 0..m.next_multiple_of(MR) {
            prefetch_row(a, lda, i + 1, m, k);
            self.store_row(i, (i < m).then(|| &a[i * lda..][..k]));
        }
    }

    /// [`quantize`](Self::quantize) after `activate` on each row in place, in one pass along the
    /// rows: each row is quantized just after its activation, while it is in L1 (the FFN's
    /// GELU before its down projection).
    ///
    /// # Panics
    /// As `quantize`.
    pub fn quantize_activated(
        &mut self,
        a: &mut [f32],
        lda: usize,
        m: usize,
        k: usize,
        activate: impl Fn(&mut [f32]),
    ) {
        self.prepare(a.len(), lda, m, k);
        for i in 0..m.next_multiple_of(MR) {
            prefetch_row(a, lda, i + 1, m, k);
            let row = (i < m).then(|| {
                let row = &mut a[i * lda..][..k];
                activate(row);
                &*row
            });
            self.store_row(i, row);
        }
    }

    /// Sizes the storage for `m` rows of `k`, after checking that an A of `a_len` values holds
    /// them at stride `lda`.
    fn prepare(&mut self, a_len: usize, lda: usize, m: usize, k: usize) {
        assert!(m == 0 || a_len >= (m - 1) * lda + k, "QuantizedRows: A too short");
        let (tiles, blocks) = (m.div_ceil(MR), k.div_ceil(KC_INT8).max(1));
        (self.rows, self.k) = (m, k);
        // No clearing: every entry of rows below `m` is written; those past `m` are zeroed.
        // Codes past `kc` in a row's last quad are left from earlier blocks (or zero from
        // `grow`): they meet zero weights.
        grow(&mut self.codes, (blocks * tiles * MR + SLACK_ROWS) * KC_INT8);
        grow(&mut self.scales, blocks * tiles * BLOCK_GROUPS * MR);
        grow(&mut self.zeros, blocks * tiles * BLOCK_GROUPS * MR);
    }

    /// Row `i`'s codes, scales and zero points from its `k` values, every K block of them, or
    /// zeros for a padding row (`None`).
    fn store_row(&mut self, i: usize, values: Option<&[f32]>) {
        let (tiles, k) = (self.tiles(), self.k);
        let (t, r) = (i / MR, i % MR);
        for kb in 0..k.div_ceil(KC_INT8).max(1) {
            let (k0, kc) = (kb * KC_INT8, KC_INT8.min(k - kb * KC_INT8));
            let groups = kc.div_ceil(GROUP);
            let row_codes = &mut self.codes[(kb * tiles * MR + i) * KC_INT8..][..kc];
            let tile_groups = Self::tile_groups(tiles, kb, t, groups);
            let scales = &mut self.scales[tile_groups..][..groups * MR];
            let zeros = &mut self.zeros[tile_groups..][..groups * MR];
            let Some(values) = values else {
                row_codes.fill(0);
                scales.iter_mut().skip(r).step_by(MR).for_each(|v| *v = 0.0);
                zeros.iter_mut().skip(r).step_by(MR).for_each(|v| *v = 0.0);
                continue;
            };
            let values = &values[k0..][..kc];
            let mut quantizations = [Quantization { scale: 1.0, zero: 0 }; BLOCK_GROUPS];
            let quantizations = &mut quantizations[..groups];
            if Isa::Avx512.is_available() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512 (F, BW, VL) is present: `Isa::Avx512` checks all three.
                unsafe {
                    quantize_row(values, row_codes, quantizations)
                };
            } else {
                quantize_row_scalar(values, row_codes, quantizations);
            }
            for (g, quantization) in quantizations.iter().enumerate() {
                scales[g * MR + r] = quantization.scale;
                zeros[g * MR + r] = quantization.zero as f32;
            }
        }
    }

    /// Where tile `t`'s scales (and zero points) of K block `kb`, of `groups` groups, start in a
    /// pack of `tiles` tiles.
    fn tile_groups(tiles: usize, kb: usize, t: usize, groups: usize) -> usize {
        (kb * tiles * BLOCK_GROUPS + t * groups) * MR
    }

    /// The codes of K block `kb` from row `row` on, to the end of the storage (which holds
    /// [`SLACK_ROWS`] rows past the last block): the AMX kernel's A tiles.
    pub(super) fn block_codes(&self, kb: usize, row: usize) -> &[u8] {
        &self.codes[(kb * self.tiles() * MR + row) * KC_INT8..]
    }

    /// The scale and zero point of row `row`'s group `g`, of the `groups` of K block `kb`.
    pub(super) fn quantization(&self, kb: usize, row: usize, groups: usize, g: usize) -> (f32, f32) {
        let at = Self::tile_groups(self.tiles(), kb, row / MR, groups) + g * MR + row % MR;
        (self.scales[at], self.zeros[at])
    }

    /// Tile `t` of K block `kb`, of `groups` groups.
    pub(super) fn tile(&self, kb: usize, t: usize, groups: usize) -> Activations<'_> {
        let tiles = self.tiles();
        let tile_groups = Self::tile_groups(tiles, kb, t, groups);
        Activations {
            codes: &self.codes[(kb * tiles + t) * MR * KC_INT8..][..MR * KC_INT8],
            scales: &self.scales[tile_groups..][..groups * MR],
            zeros: &self.zeros[tile_groups..][..groups * MR],
        }
    }
}

/// One K block of a 12-row tile of A: codes (rows `KC_INT8` bytes apart), and per group the
/// rows' scales and zero points.
pub(super) struct Activations<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub zeros: &'a [f32],
}

/// Asks for row `i` of A (`k` values at stride `lda`), all of it, in L2, if `i < m`: the next
/// row, while this one is quantized.
fn prefetch_row(a: &[f32], lda: usize, i: usize, m: usize, k: usize) {
    if i < m {
        let row = &a[i * lda..][..k];
        for line in 0..row.len().div_ceil(16) {
            prefetch_line(row, line);
        }
    }
}

/// [`quantize_row`] one value at a time, for a CPU without AVX-512 (the same results for finite
/// values).
fn quantize_row_scalar(values: &[f32], out: &mut [u8], quantizations: &mut [Quantization]) {
    for ((group, codes), quantization) in values.chunks(GROUP).zip(out.chunks_mut(GROUP)).zip(quantizations) {
        *quantization = Quantization::of(group);
        for (code, &value) in codes.iter_mut().zip(group) {
            *code = quantization.code(value);
        }
    }
}
