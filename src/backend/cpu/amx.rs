//! The bf16 GEMM on AMX, the tile unit of Intel Sapphire Rapids and later: `C = A · Wᵀ + bias`
//! with `W` the [`PackedBf16`] weights of the AVX512-BF16 path and A rounded to bf16 as it is
//! packed; products accumulate in f32.
//!
//! One `tdpbf16ps` multiplies a 16 x 32 bf16 tile of A by a 32 x 16 bf16 tile of W into a
//! 16 x 16 f32 tile of C: 16,384 FLOPs, issued once per 16 cycles, 16 times the f32 FMA rate
//! of the two AVX-512 units. Eight tile registers: C as a 2 x 2 block of tiles (`tmm0..3`, 32
//! rows x 32 columns, one W panel of `NR`), two A tiles (`tmm4, 5`) and two W tiles
//! (`tmm6, 7`): per step of 32 k, four 1 KiB loads feed four multiplies.
//!
//! Layouts:
//! - W: the [`PackedBf16`] panel, `(pair q, column j)` at `(q * NR + j) * 2`: the 16 pairs of a
//!   k step are 16 rows of 128 bytes, the left W tile is their first 64 bytes and the right tile
//!   their last 64 (a `tileloadd` with a stride of 128). Pairs are stored up to a multiple of 16
//!   with zeros, so every k step is whole.
//! - A: packed per block of [`MC`] rows into tiles of 16 rows x 32 k, each tile 1 KiB contiguous
//!   (`tileloadd` with a stride of 64), tiles of one 16-row strip in k order; rows past `m` and
//!   k past `k` are zeros.
//!
//! Loop order: M block of [`MC`] rows (pack A, all of K), chunk of W panels (about
//! `CHUNK_BYTES`, kept in L2), 32-row pair of strips, W panel (streamed, the next k step
//! prefetched); every C block sums all of K in its tiles from zero, goes to a 4 KiB buffer, and
//! its rows inside C are copied out with the bias added.
//!
//! AMX needs the operating system's permission to use the tile registers (Linux 5.16+,
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), asked once per process by
//! [`is_available`]. Stable Rust has no AMX intrinsics, so the tile instructions are inline
//! assembly; the tile configuration is loaded at the start of each call on its thread and released
//! at the end, so no thread keeps 8 KiB of tile state across context switches.

use std::cell::RefCell;
use std::sync::OnceLock;

use super::bf16::PackedBf16;
use super::matmul::{check_operands, MC};
use super::microkernel::NR;

/// Rows of a tile.
const TILE_ROWS: usize = 16;
/// bf16 values of A per tile row: one k step (64 bytes).
const TILE_K: usize = 32;
/// Rows of C per register block: two tiles.
const BLOCK_ROWS: usize = 2 * TILE_ROWS;
/// Bytes of packed weights per chunk of panels (see `gemm_panels`): a fraction of the 2 MiB L2
/// of a Sapphire Rapids core, leaving room for the packed A block and the output.
const CHUNK_BYTES: usize = 512 << 10;

/// Whether this CPU has AMX-TILE and AMX-BF16 and the operating system lets this process use
/// them. Asks for the permission on the first call; the answer is cached.
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

/// Whether [`is_available`] and the CPU also has AMX-INT8 (`tdpbusd`, CPUID leaf 7 EDX bit 25),
/// which the int8 GEMM uses.
pub fn has_int8() -> bool {
    static INT8: OnceLock<bool> = OnceLock::new();
    *INT8.get_or_init(|| is_available() && (std::arch::x86_64::__cpuid_count(7, 0).edx >> 25) & 1 == 1)
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE (std's feature detection
    // of AMX is not stable yet).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let cpu_has = (leaf7.edx >> 22) & 1 == 1 && (leaf7.edx >> 24) & 1 == 1;
    if !cpu_has || !is_x86_feature_detected!("avx512bf16") {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permitted XSAVE features;
    // it reads and writes no memory of ours.
    let granted = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    granted == 0
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// The `ldtilecfg` operand: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = {
    let mut bytes_per_row = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        bytes_per_row[t] = 64;
        rows[t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row,
        rows,
    }
};

/// A packed A block: whole 1 KiB tiles, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct ATile([u16; TILE_ROWS * TILE_K]);

/// A 32 x 32 f32 block of C (row stride 128 bytes).
#[repr(C, align(64))]
struct CBlock([f32; BLOCK_ROWS * NR]);

thread_local! {
    static A_PACK: RefCell<Vec<ATile>> = const { RefCell::new(Vec::new()) };
}

/// Packs rows `0..m` (m <= MC) of A, all `k` columns, as bf16 tiles: strip `s` (rows
/// `16s..16s + 16`), k step `t` is `pack[s * steps + t]`. Strips are padded to an even count
/// (whole 32-row blocks), rows and k past the ends with zeros.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `a` holds `m` rows of stride `lda` with `k` values each.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_a(a: &[f32], lda: usize, m: usize, k: usize, pack: &mut Vec<ATile>) {
    use std::arch::x86_64::*;
    let steps = k.div_ceil(TILE_K);
    let strips = m.div_ceil(BLOCK_ROWS) * 2;
    // Every row below `m` is written whole below (k past the end as zeros), so only the padding
    // rows are cleared: no pass over the whole block.
    pack.resize(strips * steps, ATile([0; TILE_ROWS * TILE_K]));
    for i in m..strips * TILE_ROWS {
        let (strip, r) = (i / TILE_ROWS, i % TILE_ROWS);
        for tile in &mut pack[strip * steps..(strip + 1) * steps] {
            tile.0[r * TILE_K..(r + 1) * TILE_K].fill(0);
        }
    }
    for i in 0..m {
        let row = &a[i * lda..i * lda + k];
        let (strip, r) = (i / TILE_ROWS, i % TILE_ROWS);
        // The row after next, one line per k step: the loads of A stalled this loop in a
        // profile (activations just written by the previous op, often on the other core).
        let ahead = a.as_ptr().wrapping_add((i + 2).min(m - 1) * lda);
        for t in 0..steps {
            let k0 = t * TILE_K;
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k0) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(k0 + 16) as *const i8);
            // SAFETY: AVX-512F and AVX512-BF16 are enabled on this function, as `bf16_pairs`
            // needs; `row[k0..]` is at most TILE_K = 32 values, as it takes.
            let converted = unsafe { bf16_pairs(&row[k0..(k0 + TILE_K).min(k)]) };
            let tile = &mut pack[strip * steps + t];
            // SAFETY: row r < 16 of a 16 x 32 bf16 tile is 64 bytes at `r * TILE_K`, and
            // `ATile` is 64-byte aligned, as the aligned store needs.
            unsafe { _mm512_store_si512(tile.0.as_mut_ptr().add(r * TILE_K) as *mut _, converted) };
        }
    }
}

/// The load masks of the first `count` (at most 32) of two 16-lane vectors.
pub(super) fn lane_masks(count: usize) -> [u16; 2] {
    let ones = |n: usize| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    [ones(count), ones(count.saturating_sub(16))]
}

/// Up to 32 values (zeros past the end of `values`) as 16 bf16 pairs, `values[2q]` in the low
/// half of lane q: rounded to nearest even, as `half::bf16::from_f32`, by `vcvtne2ps2bf16`.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn bf16_pairs(values: &[f32]) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    assert!(values.len() <= 2 * 16, "bf16_pairs: {} values", values.len());
    let [low_mask, high_mask] = lane_masks(values.len());
    // SAFETY: the masks cover the first `values.len()` lanes of the two vectors and no more, so
    // no lane past the end of `values` is read. The transmute turns 512 bits of bf16 pairs into
    // 512 bits of integers: plain vectors of one size, every bit pattern a value of either.
    unsafe {
        let low = _mm512_maskz_loadu_ps(low_mask, values.as_ptr());
        let high = _mm512_maskz_loadu_ps(high_mask, values.as_ptr().wrapping_add(16));
        std::mem::transmute(_mm512_cvtne2ps_pbh(high, low))
    }
}

/// `C = A · Wᵀ (+ bias)` restricted to the panels `panels` of `w`, on one thread; column 0 of `c`
/// is column `panels.start * NR` of the full product (as `matmul::gemm_panels`).
///
/// # Panics
/// If AMX is not available, or a slice is too short for its stride and extent.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
pub fn gemm_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(is_available(), "AMX GEMM on a CPU or OS without AMX");
    let (n, k) = (w.n(), w.k());
    if m == 0 || panels.is_empty() {
        return;
    }
    let first_column = check_operands("gemm_amx", (a, lda), m, n, k, &panels, bias, (c, ldc));
    A_PACK.with_borrow_mut(|pack| {
        let steps = k.div_ceil(TILE_K);
        let mut block = CBlock([0.0; BLOCK_ROWS * NR]);
        // SAFETY: AMX (with the OS's permission) and AVX512-BF16 are present (asserted above);
        // the configuration is released before returning.
        unsafe { load_tile_config() };
        for m0 in (0..m).step_by(MC) {
            let rows_in_block = MC.min(m - m0);
            // SAFETY: AVX512-BF16 present; A holds `m` rows of `k` at stride `lda` (checked).
            unsafe { pack_a(&a[m0 * lda..], lda, rows_in_block, k, pack) };
            // Panels in chunks of about CHUNK_BYTES of weights, which stay in L2 while every
            // 32-row pair of the block passes over them: a weight larger than L2 is then read
            // from L3 once per block instead of once per pair.
            let panel_bytes = (steps * TILE_ROWS * NR * 2 * 2).max(1);
            let chunk = (CHUNK_BYTES / panel_bytes).max(1);
            for chunk_start in panels.clone().step_by(chunk) {
                let chunk_panels = chunk_start..(chunk_start + chunk).min(panels.end);
                for pair in 0..rows_in_block.div_ceil(BLOCK_ROWS) {
                    let strips = &pack[2 * pair * steps..(2 * pair + 2) * steps];
                    let row = m0 + pair * BLOCK_ROWS;
                    let rows = BLOCK_ROWS.min(m - row);
                    for panel_index in chunk_panels.clone() {
                        let column = panel_index * NR;
                        let width = NR.min(n - column);
                        let b = w.panel_pairs(panel_index, 0, steps * TILE_ROWS);
                        // SAFETY: `strips` holds two strips of `steps` tiles, `b` `steps` k steps of
                        // 16 pairs x NR columns (2 KiB each).
                        unsafe { block_2x2(steps, strips.as_ptr(), b.as_ptr(), &mut block) };
                        let out = &mut c[row * ldc + column - first_column..];
                        let bias = bias.map(|bias| &bias[column..column + width]);
                        // SAFETY: AVX-512F present (implied by AVX512-BF16, asserted above).
                        unsafe { store_block(&block, rows, width, bias, out, ldc) };
                    }
                }
            }
        }
        // SAFETY: the configuration was loaded above.
        unsafe { release_tiles() };
    });
}

/// Loads [`CONFIG`] into this thread's tile configuration: every tile 16 rows of 64 bytes.
///
/// # Safety
/// AMX present and permitted for this process ([`is_available`]); otherwise the instruction
/// faults.
pub(super) unsafe fn load_tile_config() {
    // SAFETY: AMX is usable (the caller's contract); `ldtilecfg` reads the 64 bytes of CONFIG, a
    // static of exactly that size and alignment, and writes only the tile state.
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, preserves_flags, readonly))
    };
}

/// Releases this thread's tiles, so that context switches stop saving 8 KiB of tile state.
///
/// # Safety
/// AMX present and permitted for this process ([`is_available`]).
pub(super) unsafe fn release_tiles() {
    // SAFETY: AMX is usable (the caller's contract); `tilerelease` touches no memory.
    unsafe { std::arch::asm!("tilerelease", options(nostack, preserves_flags, nomem)) };
}

/// One 32 x 32 block of C over `steps` k steps: `strips` is two strips of A tiles (`steps` each,
/// rows 0..16 then 16..32), `b` the W panel from its first pair (2 KiB per step). Stores the sums
/// into `out`.
///
/// The block goes through a contiguous buffer rather than straight into C: stores of C's rows
/// (a stride of 4 n bytes) cost a quarter of the rate at K = 384 in a measurement, the contiguous
/// stores and the copy-out (which the out-of-order core overlaps with the next block's tile work)
/// much less.
///
/// # Safety
/// The tile configuration of [`CONFIG`] is loaded; `strips` readable for `2 * steps` tiles, `b`
/// for `steps * 16 * NR * 2` values.
#[inline]
unsafe fn block_2x2(steps: usize, strips: *const ATile, b: *const u16, out: &mut CBlock) {
    use std::arch::asm;
    // SAFETY: the tile configuration is loaded (the caller's contract).
    unsafe { zero_accumulators() };
    let (a_top, a_bottom) = (strips, strips.wrapping_add(steps));
    for t in 0..steps {
        let next_b = b.wrapping_add((t + 1) * TILE_ROWS * NR * 2) as *const u8;
        prefetch_tile(next_b);
        prefetch_tile(next_b.wrapping_add(1024));
        // SAFETY: t < steps: A tile t of each strip is inside the `2 * steps` tiles of `strips`,
        // and k step t of the panel, 16 rows of 128 bytes from `b + t * 16 * NR * 2`, inside its
        // `steps * 16 * NR * 2` values (the caller's contract); each `tileloadd` reads 16 rows of
        // 64 bytes at the stride given, within those extents.
        unsafe {
            asm!(
            "tileloadd tmm4, [{a0} + {a_stride} * 1]",
            "tileloadd tmm6, [{b} + {b_stride} * 1]",
            "tileloadd tmm7, [{b} + {b_stride} * 1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {a_stride} * 1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a_top.add(t),
                a1 = in(reg) a_bottom.add(t),
                b = in(reg) b.add(t * TILE_ROWS * NR * 2),
                a_stride = in(reg) TILE_K * 2,
                b_stride = in(reg) NR * 2 * 2,
                options(nostack, preserves_flags, readonly)
            )
        };
    }
    // SAFETY: the configuration is loaded, and `out` is a 32 x 32 block of 4-byte values.
    unsafe { store_accumulators_2x2(out.0.as_mut_ptr().cast()) };
}

/// Zeroes the accumulator tiles `tmm0..3`.
///
/// # Safety
/// The tile configuration of [`CONFIG`] is loaded.
#[inline]
pub(super) unsafe fn zero_accumulators() {
    // SAFETY: the tile configuration is loaded (the caller's contract); tilezero touches no
    // memory.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, preserves_flags, nomem)
        )
    };
}

/// Stores the accumulator tiles `tmm0..3`, as the 2 x 2 tiles of a block of 32 rows of 32
/// four-byte values (f32 or i32) at `block`: `tmm0` and `tmm1` the top half's left and right
/// columns, `tmm2` and `tmm3` the bottom half's.
///
/// # Safety
/// The tile configuration of [`CONFIG`] is loaded; `block` writable for 32 rows of 128 bytes.
#[inline]
pub(super) unsafe fn store_accumulators_2x2(block: *mut u8) {
    const ROW_BYTES: usize = NR * 4;
    // SAFETY: the configuration is loaded; each tile is 16 rows of 64 bytes at a stride of 128
    // bytes, in its quarter of the 32 x 128-byte block (the caller's contract).
    unsafe {
        std::arch::asm!(
            "tilestored [{c0} + {stride} * 1], tmm0",
            "tilestored [{c0} + {stride} * 1 + 64], tmm1",
            "tilestored [{c1} + {stride} * 1], tmm2",
            "tilestored [{c1} + {stride} * 1 + 64], tmm3",
            c0 = in(reg) block,
            c1 = in(reg) block.wrapping_add(TILE_ROWS * ROW_BYTES),
            stride = in(reg) ROW_BYTES,
            options(nostack, preserves_flags)
        )
    };
}

/// Copies the first `rows` rows and `width` columns of `block` to `out` (row `i` at
/// `out[i * ldc..]`), adding `bias` (`width` values) when given.
///
/// # Safety
/// AVX-512F present. `out` must hold `(rows - 1) * ldc + width` values (checked by the slice
/// indexing of the callers' layout: this function indexes `out` with bounds checks).
#[target_feature(enable = "avx512f")]
unsafe fn store_block(
    block: &CBlock,
    rows: usize,
    width: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    ldc: usize,
) {
    use std::arch::x86_64::*;
    let masks = lane_masks(width);
    let bias_halves = match bias {
        // SAFETY: `bias` holds `width` values and the masks cover the first `width` lanes.
        Some(bias) => unsafe {
            [
                _mm512_maskz_loadu_ps(masks[0], bias.as_ptr()),
                _mm512_maskz_loadu_ps(masks[1], bias.as_ptr().wrapping_add(16)),
            ]
        },
        None => [_mm512_setzero_ps(); 2],
    };
    for (i, block_row) in block.0.chunks_exact(NR).take(rows).enumerate() {
        let out_row = &mut out[i * ldc..i * ldc + width];
        for half in 0..2 {
            // SAFETY: `block_row` is NR = 32 floats, 64-byte aligned at each half (CBlock is
            // aligned to 64 and its rows are 128 bytes); the store's mask covers the first
            // `width` lanes, and `out_row` holds `width` values.
            unsafe {
                let sums = _mm512_add_ps(
                    _mm512_load_ps(block_row.as_ptr().add(16 * half)),
                    bias_halves[half],
                );
                _mm512_mask_storeu_ps(out_row.as_mut_ptr().wrapping_add(16 * half), masks[half], sums);
            }
        }
    }
}

/// Asks for the 16 cache lines of one 1 KiB tile in L1.
#[inline(always)]
pub(super) fn prefetch_tile(tile: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in 0..16 {
        // SAFETY: SSE is part of the x86-64 baseline; a prefetch is a hint that reads nothing
        // and never faults, so an address past the end of the buffer is harmless.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(tile.wrapping_add(line * 64) as *const i8) };
    }
}
