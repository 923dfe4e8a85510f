//! The int8 linear layers (`Dtype::Int8`): weights quantized once at load, activations at run
//! time, both in groups of [`GROUP`] consecutive k; products summed exactly in i32 by `vpdpbusd`
//! (AVX512-VNNI), each group's sum scaled into an f32 accumulator; everything else f32.
//!
//! Quantization (both kinds round to nearest, ties to even), per group `g` of k:
//! - weights, symmetric per output channel and group: `s_w[j,g] = max |W[j][p in g]| / 127`,
//!   `q_w = round(W / s_w)` in [-127, 127];
//! - activations, asymmetric per row (token) and group: the range widened to hold 0,
//!   `s_a[i,g] = (max - min) / 255`, zero point `z[i,g] = round(-min / s_a)`,
//!   `q_a = round(x / s_a) + z` clamped to [0, 255]; 0 is exact.
//!
//! Unsigned activations because `vpdpbusd` multiplies unsigned bytes of A by signed bytes of W;
//! asymmetric because the inputs of the second FFN matrix (after GELU) are nearly all positive,
//! where a symmetric scale would waste half the codes. Groups because BERT's hidden states have
//! a few channels far larger than the rest (largest on `[CLS]`, `[SEP]` and short texts), and some
//! weight rows a few large inputs: with one scale per row or channel those outliers coarsen every
//! other value (per-row scales gave cosine 0.9935 against f32 on the empty text with MiniLM).
//!
//! Then `y[i][j] = bias[j] + sum_g s_a[i,g] s_w[j,g] (S[i,j,g] - z[i,g] colsum[j,g])`, with
//! `S` the group's integer sum of `q_a q_w` and `colsum[j,g] = sum_(p in g) q_w[j][p]` stored
//! beside the weights. `S` and `z colsum` are integers below 2^23 (255 * 127 * [`GROUP`]), exact
//! in f32, so per group the only rounding is that of `s_a s_w` and of one fused multiply-add, in
//! the same order for every row whatever its neighbours (batching invariance).
//!
//! Layouts (quads of consecutive k, as `vpdpbusd` sums four byte products per 32-bit lane):
//! - W: panels of `NR` = 32 columns, `panel[(q * NR + j) * 4 + e] = q_w[first + j][4q + e]`,
//!   zero past `n` and past `k`, up to whole AMX k steps of 64; 64-byte aligned, so each k quad
//!   of a panel is two cache lines.
//!   Beside it, per panel and group, the 32 scales and the 32 column sums (as f32).
//! - A ([`QuantizedRows`]): every K block of [`KC_INT8`] of a row quantized at once, row by
//!   row: in block `b`, row `i`'s codes at `codes[b][i * KC_INT8..]`, so that quantizing a row
//!   writes its codes in place, with no transpose; the kernel broadcasts the u32 holding
//!   `q_a[i][4q..4q + 4]` from each of a 12-row tile's rows, all at offsets known when it is
//!   compiled. Beside the codes, per 12-row tile and group, the rows' scales and zero points.
//!   [`gemm_panels`] quantizes an f32 A one M block of rows at a time, just before multiplying
//!   it; [`gemm_codes_panels`] takes rows quantized beforehand.
//!
//! Two kernels multiply, with the same bits: `vpdpbusd` (AVX512-VNNI) on 12 x 32 register tiles
//! (here), and `tdpbusd` on AMX tiles (`int8_amx.rs`) where the level of [`Isa::detected`] is
//! AMX and the CPU has AMX-INT8. A CPU without AVX512-VNNI (or a level below AVX-512 forced by
//! `EMBER_CPU_ISA`) gets a clear error from [`check_supported`].

use std::cell::RefCell;
use std::ops::Range;

use super::matmul::{
    check_operands, check_output, next_block, part_of, prefetch_line, store_tile, LoopOrder, MC,
};
use super::microkernel::{Isa, Tile, MR, NR};

#[path = "int8_activations.rs"]
mod activations;
#[cfg(all(test, target_arch = "x86_64"))]
use activations::quantize_row;
use activations::Activations;
pub use activations::{Quantization, QuantizedRows};

#[cfg(target_arch = "x86_64")]
#[path = "int8_amx.rs"]
mod amx_kernel;

/// Consecutive k values that share a quantization scale, a multiple of 4 (whole quads). Small
/// enough that an outlier coarsens few values, large enough that the per-group scaling (8
/// vector operations per row of a tile) stays small beside the group's 24 x 32 `vpdpbusd`.
pub const GROUP: usize = 128;

/// Reduction steps per K block, a multiple of [`GROUP`]: a W micro-panel of one block (768 x 32
/// bytes, 24 KiB) stays in L1 while the 8 A micro-panels of an M block (72 KiB) stream from L2.
pub const KC_INT8: usize = 768;

/// Quads per group.
const GROUP_QUADS: usize = GROUP / 4;

/// Whether the CPU has AVX512-VNNI (the instruction, whatever level is forced).
fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Isa::Avx512.is_available() && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this process runs the int8 kernel: the CPU has AVX512-VNNI and the level of
/// [`Isa::detected`] is AVX-512 or above.
pub fn is_supported() -> bool {
    has_vnni() && Isa::detected().f32_kernels() == Isa::Avx512
}

/// `Ok` when [`is_supported`], else the error message to show.
pub fn check_supported() -> std::result::Result<(), String> {
    if is_supported() {
        return Ok(());
    }
    if has_vnni() {
        return Err(format!(
            "int8 on the CPU needs AVX512-VNNI, which EMBER_CPU_ISA={} rules out",
            Isa::detected().name()
        ));
    }
    Err(
        "int8 on the CPU needs AVX512-VNNI (Intel Cascade Lake / Ice Lake or later, AMD Zen 4 or \
         later); this CPU does not have it. Use f32."
            .into(),
    )
}

/// Quads of k stored per panel: whole AMX k steps of 64 (16 quads), so that the AMX kernel's
/// last tile of W holds zeros past k.
fn stored_quads(k: usize) -> usize {
    k.div_ceil(64) * 16
}

/// Whether the CPU has AMX-INT8 and the OS lets this process use the tiles.
fn amx_int8_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::amx::has_int8()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the int8 GEMMs run on AMX tiles: the level of [`Isa::detected`] is AMX (not forced
/// below it) and the CPU has AMX-INT8.
fn runs_on_amx() -> bool {
    Isa::detected() == Isa::Amx && amx_int8_available()
}

/// The kernel the int8 GEMMs run on this CPU: `amx-int8` (`tdpbusd`) or `avx512-vnni`
/// (`vpdpbusd`).
pub fn kernel_name() -> &'static str {
    if runs_on_amx() {
        "amx-int8"
    } else {
        "avx512-vnni"
    }
}

/// `W [n, k]` quantized to int8 per output channel and group of k, packed in k-quad panels of
/// `NR` columns (see the module header), with each (channel, group)'s scale and sum of codes.
#[derive(Debug, Clone, Default)]
pub struct PackedInt8 {
    n: usize,
    k: usize,
    offset: usize,
    data: Vec<i8>,
    /// `s_w[j,g]` at `[(panel * groups + g) * NR + j % NR]`, zero past `n`.
    scales: Vec<f32>,
    /// `colsum[j,g]`, laid out as `scales`.
    column_sums: Vec<f32>,
}

/// Rounds `value` to the nearest integer, ties to even, as f32 (|value| well below 2^22).
#[inline(always)]
pub(super) fn round_even(value: f32) -> f32 {
    // Adding and removing 1.5 * 2^23 leaves an integer rounded by the FPU's own
    // round-to-nearest-even; unlike `round_ties_even`, LLVM vectorizes it on every level.
    const MAGIC: f32 = 12_582_912.0;
    (value + MAGIC) - MAGIC
}

impl PackedInt8 {
    /// Quantizes and packs `W[r][p] = src[r * k + p]` (row-major `[n, k]`).
    ///
    /// # Panics
    /// If `src` holds fewer than `n * k` values.
    pub fn from_rows(src: &[f32], n: usize, k: usize) -> Self {
        assert!(src.len() >= n * k, "PackedInt8: source too short");
        let (quads, groups) = (stored_quads(k), k.div_ceil(GROUP));
        let panels = n.div_ceil(NR);
        let len = panels * NR * quads * 4;
        // 64 spare bytes: room to start the panels on a 64-byte boundary.
        let mut data = vec![0i8; len + 64];
        let offset = (64 - data.as_ptr() as usize % 64) % 64;
        let mut scales = vec![0.0f32; panels * groups * NR];
        let mut column_sums = vec![0.0f32; panels * groups * NR];
        for (j, row) in src.chunks_exact(k.max(1)).take(n).enumerate() {
            let (panel, column) = (j / NR, j % NR);
            let panel_data = &mut data[offset + panel * quads * NR * 4..][..quads * NR * 4];
            for (g, values) in row[..k].chunks(GROUP).enumerate() {
                let max = values.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
                // An all-zero group keeps scale 1: its codes are 0 whatever the scale.
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                let mut sum = 0i32;
                for (offset_in_group, &value) in values.iter().enumerate() {
                    let p = g * GROUP + offset_in_group;
                    let code = round_even(value / scale).clamp(-127.0, 127.0) as i8;
                    panel_data[((p / 4) * NR + column) * 4 + p % 4] = code;
                    sum += code as i32;
                }
                scales[(panel * groups + g) * NR + column] = scale;
                column_sums[(panel * groups + g) * NR + column] = sum as f32;
            }
        }
        Self {
            n,
            k,
            offset,
            data,
            scales,
            column_sums,
        }
    }

    /// Output features (`n`, the rows of W).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (`k`, the columns of W).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Panels of `NR` output columns, the last one padded.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The codes of quads `q0..q0 + count` of panel `index`.
    fn panel_quads(&self, index: usize, q0: usize, count: usize) -> &[i8] {
        let quads = stored_quads(self.k);
        &self.data[self.offset + index * quads * NR * 4 + q0 * NR * 4..][..count * NR * 4]
    }

    /// The scales and column sums of groups `g0..g0 + count` of panel `index`.
    fn panel_groups(&self, index: usize, g0: usize, count: usize) -> (&[f32], &[f32]) {
        let start = (index * self.k.div_ceil(GROUP) + g0) * NR;
        (
            &self.scales[start..][..count * NR],
            &self.column_sums[start..][..count * NR],
        )
    }

    /// The code `q_w[j][p]` and its scale `s_w[j, p / GROUP]` (tests rebuild the products from
    /// these).
    pub fn code_and_scale(&self, j: usize, p: usize) -> (i8, f32) {
        let quads = stored_quads(self.k);
        let panel = &self.data[self.offset + (j / NR) * quads * NR * 4..];
        let code = panel[((p / 4) * NR + j % NR) * 4 + p % 4];
        let (scales, _) = self.panel_groups(j / NR, p / GROUP, 1);
        (code, scales[j % NR])
    }
}

thread_local! {
    /// Each thread's quantized block of A, reused across calls.
    static A_BLOCK: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::new());
}

/// `C = A · Wᵀ (+ bias)` restricted to the panels `panels` of `w`, on one thread, with A
/// quantized one M block of rows at a time, just before its products; column 0 of `c` is column
/// `panels.start * NR` of the full product (as `matmul::gemm_panels`).
///
/// # Panics
/// If the CPU has no AVX512-VNNI, or a slice is too short for its stride and extent.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
pub fn gemm_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(has_vnni(), "int8 GEMM on a CPU without AVX512-VNNI");
    if m == 0 || panels.is_empty() {
        return;
    }
    check_operands("gemm_int8", (a, lda), m, w.n, w.k, &panels, bias, (c, ldc));
    block_by_block(m, w, panels, bias, c, ldc, |block, m0, rows| {
        block.quantize(&a[m0 * lda..], lda, rows, w.k)
    });
}

/// `activate` on each of rows `0..m` of `a` (`w.k()` values at stride `lda`, in place), then
/// [`gemm_panels`] on them, in one pass along the rows: each row is quantized just after its
/// activation, while it is in L1 (the FFN's GELU and down projection).
///
/// # Panics
/// As [`gemm_panels`].
#[allow(clippy::too_many_arguments)] // gemm_panels' signature and the activation
pub fn activate_then_gemm_panels(
    a: &mut [f32],
    lda: usize,
    m: usize,
    activate: &(dyn Fn(&mut [f32]) + Sync),
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(has_vnni(), "int8 GEMM on a CPU without AVX512-VNNI");
    if m == 0 || panels.is_empty() {
        return;
    }
    check_operands("gemm_int8", (a, lda), m, w.n, w.k, &panels, bias, (c, ldc));
    block_by_block(m, w, panels, bias, c, ldc, |block, m0, rows| {
        block.quantize_activated(&mut a[m0 * lda..], lda, rows, w.k, activate)
    });
}

/// The products of `m` rows of A, one M block of `MC` rows at a time: `quantize(block, m0,
/// rows)` fills this thread's block with rows `m0..m0 + rows`, then they are multiplied.
fn block_by_block(
    m: usize,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    mut quantize: impl FnMut(&mut QuantizedRows, usize, usize),
) {
    A_BLOCK.with_borrow_mut(|block| {
        for m0 in (0..m).step_by(MC) {
            quantize(block, m0, MC.min(m - m0));
            let tiles = 0..block.tiles();
            multiply(block, tiles, w, panels.clone(), bias, &mut c[m0 * ldc..], ldc);
        }
    });
}

/// [`gemm_panels`] with A quantized beforehand (all of `a`'s rows, of length `w.k()`).
///
/// # Panics
/// If the CPU has no AVX512-VNNI, if `a.k() != w.k()`, if `panels` runs past `w`'s panels, or
/// if `c` or `bias` is too short.
pub fn gemm_codes_panels(
    a: &QuantizedRows,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(has_vnni(), "int8 GEMM on a CPU without AVX512-VNNI");
    assert_eq!(a.k(), w.k, "gemm_codes_panels: A's k and W's k");
    let m = a.rows();
    if m == 0 || panels.is_empty() {
        return;
    }
    check_output("gemm_codes_panels", m, w.n, &panels, bias, (c, ldc));
    // M blocks of `MC` rows, as `gemm_panels`: each W panel's K block is read once per M block.
    let tiles_per_block = MC / MR;
    for t0 in (0..a.tiles()).step_by(tiles_per_block) {
        let tiles = t0..(t0 + tiles_per_block).min(a.tiles());
        multiply(a, tiles, w, panels.clone(), bias, &mut c[t0 * MR * ldc..], ldc);
    }
}

/// The products of the rows of `a`'s tiles `tiles` (at most an M block) with W's panels
/// `panels`, into `c` (its row 0 is the first tile's first row, its column 0 the first panel's),
/// on AMX tiles where [`runs_on_amx`], else with `vpdpbusd`.
fn multiply(
    a: &QuantizedRows,
    tiles: Range<usize>,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if runs_on_amx() {
        return amx_kernel::multiply(a, tiles, w, panels, bias, c, ldc);
    }
    multiply_vnni(a, tiles, w, panels, bias, c, ldc)
}

/// [`multiply`] with `vpdpbusd`.
fn multiply_vnni(
    a: &QuantizedRows,
    tiles: Range<usize>,
    w: &PackedInt8,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (n, k) = (w.n, w.k);
    let (first_row, first_column) = (tiles.start * MR, panels.start * NR);
    // At least one K block, so that k = 0 still writes the bias.
    for kb in 0..k.div_ceil(KC_INT8).max(1) {
        let (k0, kc) = (kb * KC_INT8, KC_INT8.min(k - kb * KC_INT8));
        let (quads, groups) = (kc.div_ceil(4), kc.div_ceil(GROUP));
        for panel_index in panels.clone() {
            let column = panel_index * NR;
            let width = NR.min(n - column);
            let mut b = Weights {
                codes: w.panel_quads(panel_index, k0 / 4, quads),
                groups: w.panel_groups(panel_index, k0 / GROUP, groups),
                quads,
                prefetch: &[],
            };
            let init = (kb == 0).then(|| bias.map(|bias| &bias[column..column + width]));
            // The next panel's codes (of this K block, else the next one's first) come from L3
            // or memory: a model's int8 weights are tens of megabytes, read once per row
            // block. Each tile asks for a slice of them, so they are in L2 when that panel
            // starts. perf of a bge-base int8 pass had 23 % of the kernel's samples waiting on
            // W loads; 8 % with the prefetch.
            let next = next_block(LoopOrder::KBlockOuter, &panels, panel_index, (k0, kc), k, KC_INT8)
                .map(|(panel, k0, kc)| w.panel_quads(panel, k0 / 4, kc.div_ceil(4)));
            for t in tiles.clone() {
                let row = t * MR;
                let at = (row - first_row) * ldc + column - first_column;
                // The C tile after this one (the next rows of this panel, else the first rows
                // of the next panel), for the kernel to bring into L1 while it runs.
                let next_at = if t + 1 < tiles.end {
                    Some(at + MR * ldc)
                } else {
                    (panel_index + 1 < panels.end).then_some(column + NR - first_column)
                };
                let next_c = next_at.map_or(std::ptr::null(), |at| c.as_ptr().wrapping_add(at));
                let rows = MR.min(a.rows() - row);
                b.prefetch = next.map_or(&[], |next| part_of(next, t - tiles.start, tiles.len()));
                run_tile(
                    &a.tile(kb, t, groups),
                    &b,
                    &mut c[at..],
                    ldc,
                    rows,
                    width,
                    init,
                    next_c,
                );
            }
        }
    }
}

/// One K block of a W panel: codes, and per group the scales and column sums.
struct Weights<'a> {
    codes: &'a [i8],
    groups: (&'a [f32], &'a [f32]),
    quads: usize,
    /// Codes of a later panel to bring into L2 while this block runs, a slice per group.
    prefetch: &'a [i8],
}

/// Adds one K block's products to an `MR x NR` tile of `c` (row `i` at `c[i * ldc..]`), or on
/// the first block (`init` is `Some`) sets it to them plus the bias (or zero for `Some(None)`).
/// Full tiles run in place; edge tiles through an aligned buffer so that nothing outside
/// `rows x width` is touched. `next_c` (null for none) is the next tile's C, to prefetch.
#[allow(clippy::too_many_arguments)] // the tile's operands, its extent and the prefetch hint
fn run_tile(
    a: &Activations,
    b: &Weights,
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    width: usize,
    init: Option<Option<&[f32]>>,
    next_c: *const f32,
) {
    let groups = b.groups.0.len() / NR;
    assert!(a.codes.len() >= MR * KC_INT8 && b.quads * 4 <= KC_INT8 && b.codes.len() >= b.quads * NR * 4);
    assert!(a.scales.len() >= groups * MR && a.zeros.len() >= groups * MR);
    assert!(b.groups.1.len() >= groups * NR);
    // With no quads (k = 0) no group runs, so a tile in place would never be written: the
    // buffer below writes the bias.
    if rows == MR && width == NR && ldc >= NR && b.quads > 0 {
        assert!(c.len() >= (MR - 1) * ldc + NR);
        // The first group starts from the bias (or zero) row, read at stride 0 for every row of
        // the tile, instead of copying it into C first: no pass over C before the products.
        static ZERO_ROW: [f32; NR] = [0.0; NR];
        let first = match init {
            Some(Some(bias)) => Source::Rows(bias.as_ptr(), 0),
            Some(None) => Source::Rows(ZERO_ROW.as_ptr(), 0),
            None => Source::C,
        };
        // SAFETY: C holds MR rows of NR floats at stride `ldc` (checked above); the bias holds
        // `width` = NR floats.
        unsafe { run_groups(a, b, first, c.as_mut_ptr(), ldc, next_c) };
        return;
    }
    // The buffer starts at zero, which is also the start without a bias.
    let mut tile = Tile([0.0; MR * NR]);
    for (i, tile_row) in tile.0.chunks_exact_mut(NR).take(rows).enumerate() {
        match init {
            Some(Some(bias)) => tile_row[..width].copy_from_slice(bias),
            Some(None) => {}
            None => tile_row[..width].copy_from_slice(&c[i * ldc..i * ldc + width]),
        }
    }
    // SAFETY: the tile holds MR rows of NR floats.
    unsafe { run_groups(a, b, Source::C, tile.0.as_mut_ptr(), NR, std::ptr::null()) };
    store_tile(&tile, rows, width, c, ldc);
}

/// What the first group of a K block adds its products to.
#[derive(Clone, Copy)]
enum Source {
    /// The tile of C itself (a later K block, or an edge tile prepared in a buffer).
    C,
    /// `MR` rows of `NR` floats at this address and stride (0: one row for all, the bias).
    Rows(*const f32, usize),
}

/// The kernel over each group of the K block in turn, the first adding to `first`, the others
/// to C.
///
/// # Safety
/// `c` read/write for `MR` rows of `NR` f32 at stride `ldc`, `first` readable likewise at its
/// own stride; VNNI present (the public entry points assert it); `a` and `b` as `run_tile` asserts.
unsafe fn run_groups(
    a: &Activations,
    b: &Weights,
    first: Source,
    c: *mut f32,
    ldc: usize,
    next_c: *const f32,
) {
    let groups = b.quads.div_ceil(GROUP_QUADS);
    for (g, q0) in (0..b.quads).step_by(GROUP_QUADS).enumerate() {
        let prefetch = part_of(b.prefetch, g, groups);
        let quads = GROUP_QUADS.min(b.quads - q0);
        let (source, ld_source) = match first {
            Source::Rows(rows, ld) if g == 0 => (rows, ld),
            _ => (c.cast_const(), ldc),
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the group's quads, scales and sums lie within the slices (`run_tile`).
        unsafe {
            vnni(
                quads,
                a.codes.as_ptr().add(q0 * 4),
                b.codes.as_ptr().add(q0 * NR * 4),
                a.scales.as_ptr().add(g * MR),
                a.zeros.as_ptr().add(g * MR),
                b.groups.0.as_ptr().add(g * NR),
                b.groups.1.as_ptr().add(g * NR),
                (source, ld_source),
                c,
                ldc,
                (prefetch, if g == 0 { next_c } else { std::ptr::null() }),
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (quads, source, ld_source, c, ldc, prefetch, next_c);
    }
}

/// One group of one `MR x NR` tile: 24 zmm accumulators of i32, per quad of k two 64-byte
/// loads of W (16 columns x 4 codes each), twelve 32-bit broadcasts of A (one per row, rows
/// `KC_INT8` bytes apart) and 24 `vpdpbusd`; then, per row,
/// `c = source + (S - z colsum) * (s_a s_w)`, straight from the registers (`source` is C itself,
/// or the bias on a tile's first group). Along the quads it asks for a line of `prefetch` (a
/// later W panel) in L2 per quad, and where `next_c` is not null, the 24 lines of the `MR x NR`
/// tile there (the tile the driver runs next, rows `ldc` apart) in L1, one per quad.
///
/// # Safety
/// AVX-512F and AVX512-VNNI present; `a` readable for `quads * 4` bytes at each of the `MR` row
/// offsets `i * KC_INT8`, `b` for `quads * NR * 4` bytes, `a_scales` and `a_zeros` for `MR`
/// f32, `w_scales` and `w_sums` for `NR` f32; `c` read/write for `MR` rows of `NR` f32 at stride
/// `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn vnni(
    quads: usize,
    a: *const u8,
    b: *const i8,
    a_scales: *const f32,
    a_zeros: *const f32,
    w_scales: *const f32,
    w_sums: *const f32,
    source: (*const f32, usize),
    c: *mut f32,
    ldc: usize,
    (prefetch, next_c): (&[i8], *const f32),
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    for q in 0..quads {
        // Spread over the quads (a burst per group cost 6 % of a pass in its own right).
        prefetch_line(prefetch, q);
        if q < 2 * MR && !next_c.is_null() {
            // The next tile's C, line by line: where C is larger than the caches (a whole
            // batch's QKV, megabytes), its first stores would otherwise wait on memory.
            let line = next_c.wrapping_add(q / 2 * ldc + q % 2 * (NR / 2));
            _mm_prefetch::<_MM_HINT_T0>(line.cast());
        }
        // SAFETY: q < quads: `b[q * NR * 4..][..128]` and the four bytes at `q * 4` of each row
        // lie inside the `quads * NR * 4` bytes and the row extents the caller vouched for.
        unsafe {
            let b0 = _mm512_loadu_si512(b.add(q * NR * 4).cast());
            let b1 = _mm512_loadu_si512(b.add(q * NR * 4 + 64).cast());
            let a_q = a.add(q * 4);
            for (i, row) in acc.iter_mut().enumerate() {
                let a_iq = _mm512_set1_epi32(a_q.add(i * KC_INT8).cast::<i32>().read_unaligned());
                row[0] = _mm512_dpbusd_epi32(row[0], a_iq, b0);
                row[1] = _mm512_dpbusd_epi32(row[1], a_iq, b1);
            }
        }
    }
    // Unrolled by hand: as a loop, LLVM keeps the accumulators in a stack array (cleared with a
    // memset and stored there) instead of registers, a third of the time of a 128-wide group.
    // SAFETY: `w_scales` and `w_sums` hold `NR` = 32 floats each (the caller's contract).
    let (s_w, colsum) = unsafe {
        (
            [_mm512_loadu_ps(w_scales), _mm512_loadu_ps(w_scales.add(16))],
            [_mm512_loadu_ps(w_sums), _mm512_loadu_ps(w_sums.add(16))],
        )
    };
    let scale_row = |i: usize, sums: [__m512i; 2]| {
        // SAFETY: i < MR (the rows below), and `a_scales`, `a_zeros` hold `MR` floats each.
        let (s_a, z) = unsafe { (_mm512_set1_ps(*a_scales.add(i)), _mm512_set1_ps(*a_zeros.add(i))) };
        for h in 0..2 {
            // Exact: integers below 2^24 (module header).
            let centred = _mm512_fnmadd_ps(z, colsum[h], _mm512_cvtepi32_ps(sums[h]));
            // SAFETY: row i < MR of C, columns `16 * h..16 * h + 16` < NR: inside the `MR` rows
            // of `NR` floats at stride `ldc` that the caller vouched for.
            unsafe {
                let previous = _mm512_loadu_ps(source.0.add(i * source.1 + 16 * h));
                let sum = _mm512_fmadd_ps(centred, _mm512_mul_ps(s_a, s_w[h]), previous);
                _mm512_storeu_ps(c.add(i * ldc + 16 * h), sum);
            }
        }
    };
    macro_rules! scale_rows {
        ($($i:literal)*) => { $( scale_row($i, acc[$i]); )* };
    }
    scale_rows!(0 1 2 3 4 5 6 7 8 9 10 11);
}

#[cfg(test)]
#[path = "int8_tests.rs"]
mod tests;
