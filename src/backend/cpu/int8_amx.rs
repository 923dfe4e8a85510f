//! The int8 GEMM on AMX tiles (`tdpbusd`, Intel Sapphire Rapids and later): the products of the
//! `vpdpbusd` kernel of `int8`, bit for bit, from the same packed weights and the same codes.
//!
//! One `tdpbusd` multiplies a 16 x 64 tile of A's unsigned codes by a 64 x 16 tile of W's signed
//! codes into 16 x 16 i32 sums: 16,384 byte products per instruction, issued once per 16 cycles,
//! 8 times the rate of `vpdpbusd` on a core with two 512-bit units. C is a 2 x 2 block of tiles
//! (`tmm0..3`: 32 rows x one W panel of `NR` = 32 columns), fed by two A tiles (`tmm4, 5`) and
//! two W tiles (`tmm6, 7`) per k step of 64.
//!
//! Layouts, both those of the VNNI kernel:
//! - W: a [`PackedInt8`] panel stores k quad `q` as a row of 128 bytes (32 columns x 4 codes), so
//!   the 16 quads of a k step are a pair of W tiles: the left tile is their first 64 bytes, the
//!   right one their last 64 (a `tileloadd` at a stride of 128). Panels store whole k steps,
//!   zeros past k.
//! - A: [`QuantizedRows`]; within a K block, row `i`'s codes start at `i * KC_INT8`, so an A tile
//!   is 16 rows of 64 bytes at a stride of `KC_INT8`. Its storage has 32 rows of
//!   slack past the last K block, so that the tiles of a block's last rows stay inside it; rows
//!   past `m` give sums that are never read, and codes past `k` in a row meet zero weights.
//!
//! Each group of `GROUP` = 128 k (two steps) sums from zero in the tiles. The sums leave through
//! a 4 KiB buffer and are scaled into C with the VNNI kernel's expression in the same order,
//! `c = source + (S - z colsum) (s_a s_w)`; integer sums are exact in any order of their
//! products, so both kernels give the same bits. A group's scaling is issued after the next
//! group's multiplies, so the vector units scale while the tile unit multiplies.
//!
//! Stable Rust has no AMX intrinsics: the tile instructions are inline assembly behind
//! [`TileUnit`]. The tests run the same driver on a model of the tile unit (the instructions'
//! arithmetic, reading the same addresses at the same strides), so the layouts and the scaling
//! are checked on every CPU with AVX-512, the instructions themselves only where AMX-INT8 is.

use std::ops::Range;

use super::{PackedInt8, QuantizedRows, GROUP, KC_INT8};
use crate::backend::cpu::amx;
use crate::backend::cpu::microkernel::{MR, NR};

/// Rows of a tile.
const TILE_ROWS: usize = 16;
/// Rows of C per block: two tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;
// The A tiles of a block starting at any row below `rows` end inside the codes' storage.
const _: () = assert!(super::activations::SLACK_ROWS >= BLOCK_ROWS - 1);
/// k per tile step: one 64-byte row of an A tile.
const STEP_K: usize = 64;
/// Bytes of a W panel per k step: 16 quads of `NR` columns x 4 codes.
const STEP_BYTES: usize = STEP_K / 4 * NR * 4;

/// The i32 sums of a 32 x 32 block of C, rows `NR` values (128 bytes) apart.
#[repr(C, align(64))]
pub(super) struct BlockSums([i32; BLOCK_ROWS * NR]);

/// The tile work on one 32 x 32 block of C: the AMX unit ([`Tiles`]), or in tests a model of
/// it.
pub(super) trait TileUnit {
    /// Sets the four C tiles to zero.
    fn zero(&mut self);

    /// One k step: adds to the C tiles the products of A's 32 rows of 64 codes at `a` (rows
    /// `KC_INT8` bytes apart) with the 16 W quad rows of 128 bytes at `b`.
    ///
    /// # Safety
    /// `a` readable for 32 rows of 64 bytes at a stride of `KC_INT8`, `b` for `STEP_BYTES`.
    unsafe fn step(&mut self, a: *const u8, b: *const i8);

    /// Copies the C tiles' sums into `sums`.
    fn store(&mut self, sums: &mut BlockSums);
}

/// This thread's AMX tiles, configured (every tile 16 rows of 64 bytes) while it lives.
pub(super) struct Tiles {
    /// The tile state belongs to the thread that configured it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// AMX-INT8 present and permitted for this process ([`super::amx_int8_available`]).
    pub(super) unsafe fn configure() -> Self {
        // SAFETY: AMX is usable (the caller's contract).
        unsafe { amx::load_tile_config() };
        Self {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the configuration was loaded by `configure`, on this thread (`Tiles` is not
        // Send).
        unsafe { amx::release_tiles() };
    }
}

impl TileUnit for Tiles {
    fn zero(&mut self) {
        // SAFETY: the tile configuration is loaded while `self` lives.
        unsafe { amx::zero_accumulators() };
    }

    unsafe fn step(&mut self, a: *const u8, b: *const i8) {
        // SAFETY: the configuration is loaded; each `tileloadd` reads 16 rows of 64 bytes at
        // the stride given: A's rows 0..16 at `a` and 16..32 after them, W's 16 quad rows of
        // 128 bytes, left and right halves, all inside what the caller vouched for.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm4, [{a0} + {a_stride} * 1]",
                "tileloadd tmm6, [{b} + {b_stride} * 1]",
                "tileloadd tmm7, [{b} + {b_stride} * 1 + 64]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {a_stride} * 1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a,
                a1 = in(reg) a.wrapping_add(TILE_ROWS * KC_INT8),
                b = in(reg) b,
                a_stride = in(reg) KC_INT8,
                b_stride = in(reg) NR * 4,
                options(nostack, preserves_flags, readonly)
            )
        };
    }

    fn store(&mut self, sums: &mut BlockSums) {
        // SAFETY: the configuration is loaded while `self` lives; `sums` is 32 rows of 32 i32.
        unsafe { amx::store_accumulators_2x2(sums.0.as_mut_ptr().cast()) };
    }
}

/// `super::multiply` on the AMX unit: the products of the rows of `a`'s tiles `tiles` with W's
/// panels `panels`, into `c` (its row 0 is the first tile's first row, its column 0 the first
/// panel's).
///
/// # Panics
/// If AMX-INT8 is not available, or `c` is too short.
pub(super) fn multiply(
    a: &QuantizedRows,
    tiles: Range<usize>,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        super::amx_int8_available(),
        "AMX-INT8 GEMM on a CPU or OS without it"
    );
    // SAFETY: AMX-INT8 is usable (asserted above); the tiles are released when `unit` drops.
    let mut unit = unsafe { Tiles::configure() };
    multiply_on(&mut unit, a, tiles, w, panels, bias, c, ldc);
}

/// [`multiply`] on a given tile unit (tests pass a model of it).
///
/// Loop order: W panel (streamed once per call, an M block at most), K block of `KC_INT8` (the
/// panel's 24 KiB of it stay in L1 while the 32-row blocks pass over them, so that only A's
/// tiles come from L2), 32-row block, then the block's groups of k in order: every element of
/// C adds its groups in the VNNI kernel's order.
#[allow(clippy::too_many_arguments)] // multiply's operands and the unit
pub(super) fn multiply_on(
    unit: &mut impl TileUnit,
    a: &QuantizedRows,
    tiles: Range<usize>,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        crate::backend::cpu::microkernel::Isa::Avx512.is_available(),
        "AMX-INT8 GEMM's scaling needs AVX-512"
    );
    let n = w.n;
    let rows = tiles.start * MR..(tiles.end * MR).min(a.rows());
    let first_column = panels.start * NR;
    let mut sums = BlockSums([0; BLOCK_ROWS * NR]);
    for (panel, kb) in panels.flat_map(|panel| (0..w.k.div_ceil(KC_INT8).max(1)).map(move |kb| (panel, kb))) {
        let column = panel * NR;
        let width = NR.min(n - column);
        let bias = bias.map(|bias| &bias[column..column + width]);
        for row in rows.clone().step_by(BLOCK_ROWS) {
            let height = BLOCK_ROWS.min(rows.end - row);
            let out = &mut c[(row - rows.start) * ldc + column - first_column..];
            assert!(
                out.len() >= (height - 1) * ldc + width,
                "AMX-INT8 GEMM: C too short"
            );
            let block = Block {
                out,
                ldc,
                height,
                width,
            };
            block_sums(unit, a, (row, kb), w, panel, bias, block, &mut sums);
        }
    }
}

/// Where one 32 x 32 block of C goes: `height` rows of `width` values at stride `ldc`.
struct Block<'a> {
    out: &'a mut [f32],
    ldc: usize,
    height: usize,
    width: usize,
}

/// One group's scaling, waiting for its sums: K block, group within it, and whether it starts
/// from the bias (the very first group) or from C.
#[derive(Clone, Copy)]
struct Group {
    kb: usize,
    g: usize,
    groups: usize,
    first: bool,
}

/// K block `kb` of the 32 x 32 block at A's row `row` and W's panel `panel`, scaled into
/// `block` (from the bias on the first K block).
#[allow(clippy::too_many_arguments)] // one block's operands
fn block_sums(
    unit: &mut impl TileUnit,
    a: &QuantizedRows,
    (row, kb): (usize, usize),
    w: &PackedInt8,
    panel: usize,
    bias: Option<&[f32]>,
    mut block: Block,
    sums: &mut BlockSums,
) {
    let k = w.k;
    if k == 0 {
        // No group: C is the bias alone (or zero).
        for i in 0..block.height {
            let out = &mut block.out[i * block.ldc..][..block.width];
            match bias {
                Some(bias) => out.copy_from_slice(bias),
                None => out.fill(0.0),
            }
        }
        return;
    }
    let mut pending: Option<Group> = None;
    let (k0, kc) = (kb * KC_INT8, KC_INT8.min(k - kb * KC_INT8));
    let steps = kc.div_ceil(STEP_K);
    let codes = a.block_codes(kb, row);
    let weights = w.panel_quads(panel, k0 / 4, steps * STEP_K / 4);
    assert!(
        codes.len() >= (BLOCK_ROWS - 1) * KC_INT8 + steps * STEP_K,
        "AMX-INT8: A's slack"
    );
    let groups = kc.div_ceil(GROUP);
    for g in 0..groups {
        unit.zero();
        for s in g * GROUP / STEP_K..((g + 1) * GROUP / STEP_K).min(steps) {
            // The next step's weights (past the K block's last, the next block's first): the
            // first row block reads them from memory, the others from L1.
            let next = weights.as_ptr().wrapping_add((s + 1) * STEP_BYTES).cast::<u8>();
            amx::prefetch_tile(next);
            amx::prefetch_tile(next.wrapping_add(1024));
            // SAFETY: step s < steps: its 64 codes of 32 rows lie inside `codes` (asserted
            // above) and its `STEP_BYTES` of weights inside `weights`.
            unsafe {
                unit.step(
                    codes.as_ptr().add(s * STEP_K),
                    weights.as_ptr().add(s * STEP_BYTES),
                )
            };
        }
        if let Some(previous) = pending.take() {
            scale_group(a, row, w, panel, previous, sums, bias, &mut block);
        }
        unit.store(sums);
        let first = kb == 0 && g == 0;
        pending = Some(Group { kb, g, groups, first });
    }
    if let Some(last) = pending {
        scale_group(a, row, w, panel, last, sums, bias, &mut block);
    }
}

/// Adds one group's `sums` into the block of C: per row `i` and column `j`,
/// `c = source + (S - z colsum) (s_a s_w)`, with `source` the bias (or zero) for the first
/// group and C for the others, as the VNNI kernel.
#[allow(clippy::too_many_arguments)] // one group's operands
fn scale_group(
    a: &QuantizedRows,
    row: usize,
    w: &PackedInt8,
    panel: usize,
    group: Group,
    sums: &BlockSums,
    bias: Option<&[f32]>,
    block: &mut Block,
) {
    let (w_scales, w_sums) = w.panel_groups(panel, group.kb * (KC_INT8 / GROUP) + group.g, 1);
    let source = match (group.first, bias) {
        (true, Some(bias)) => Source::Bias(bias),
        (true, None) => Source::Zero,
        (false, _) => Source::C,
    };
    for i in 0..block.height {
        let (scale, zero) = a.quantization(group.kb, row + i, group.groups, group.g);
        let out = &mut block.out[i * block.ldc..][..block.width];
        let row_sums = &sums.0[i * NR..][..NR];
        // SAFETY: AVX-512F is present (asserted by `multiply_on`).
        unsafe { scale_row(row_sums, (scale, zero), (w_scales, w_sums), source, out) };
    }
}

/// What a group's products add to.
#[derive(Clone, Copy)]
enum Source<'a> {
    Bias(&'a [f32]),
    Zero,
    C,
}

/// One row of [`scale_group`]: `out` (up to `NR` values) from the row's `NR` sums, its scale and
/// zero point, and the panel's `NR` weight scales and column sums.
///
/// # Safety
/// AVX-512F present.
#[target_feature(enable = "avx512f")]
unsafe fn scale_row(
    sums: &[i32],
    (scale, zero): (f32, f32),
    (w_scales, w_sums): (&[f32], &[f32]),
    source: Source,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(sums.len() == NR && w_scales.len() == NR && w_sums.len() == NR && out.len() <= NR);
    let masks = amx::lane_masks(out.len());
    let (s_a, z) = (_mm512_set1_ps(scale), _mm512_set1_ps(zero));
    for (h, &mask) in masks.iter().enumerate() {
        // SAFETY: `sums`, `w_scales` and `w_sums` hold NR = 32 values, so lanes 16h..16h + 16
        // are inside them; the masked loads and stores of `out` and the bias touch its first
        // `out.len()` values only (the bias is as long as `out`).
        unsafe {
            let s = _mm512_loadu_si512(sums.as_ptr().add(16 * h).cast());
            let s_w = _mm512_loadu_ps(w_scales.as_ptr().add(16 * h));
            let colsum = _mm512_loadu_ps(w_sums.as_ptr().add(16 * h));
            let centred = _mm512_fnmadd_ps(z, colsum, _mm512_cvtepi32_ps(s));
            let to = out.as_mut_ptr().wrapping_add(16 * h);
            let previous = match source {
                Source::Bias(bias) => _mm512_maskz_loadu_ps(mask, bias.as_ptr().wrapping_add(16 * h)),
                Source::Zero => _mm512_setzero_ps(),
                Source::C => _mm512_maskz_loadu_ps(mask, to),
            };
            let sum = _mm512_fmadd_ps(centred, _mm512_mul_ps(s_a, s_w), previous);
            _mm512_mask_storeu_ps(to, mask, sum);
        }
    }
}

/// A model of the tile unit for tests: the arithmetic of `tilezero`, `tileloadd`, `tdpbusd` and
/// `tilestored` as this kernel configures them, reading the same addresses.
#[cfg(test)]
pub(super) struct TileModel([[i32; NR]; BLOCK_ROWS]);

#[cfg(test)]
impl TileModel {
    pub(super) fn new() -> Self {
        Self([[0; NR]; BLOCK_ROWS])
    }
}

#[cfg(test)]
impl TileUnit for TileModel {
    fn zero(&mut self) {
        self.0 = [[0; NR]; BLOCK_ROWS];
    }

    unsafe fn step(&mut self, a: *const u8, b: *const i8) {
        // SAFETY: the caller's contract: 2 KiB of W at `b`, 64 codes per row at `a`.
        let w = unsafe { std::slice::from_raw_parts(b, STEP_BYTES) };
        for (i, row_sums) in self.0.iter_mut().enumerate() {
            // SAFETY: row i < 32 at a stride of KC_INT8 (the caller's contract).
            let codes = unsafe { std::slice::from_raw_parts(a.add(i * KC_INT8), STEP_K) };
            for (j, sum) in row_sums.iter_mut().enumerate() {
                for (q, quad) in codes.chunks_exact(4).enumerate() {
                    let column = &w[q * NR * 4 + j * 4..][..4];
                    *sum += quad
                        .iter()
                        .zip(column)
                        .map(|(&x, &y)| x as i32 * y as i32)
                        .sum::<i32>();
                }
            }
        }
    }

    fn store(&mut self, sums: &mut BlockSums) {
        for (out, row) in sums.0.chunks_exact_mut(NR).zip(&self.0) {
            out.copy_from_slice(row);
        }
    }
}
