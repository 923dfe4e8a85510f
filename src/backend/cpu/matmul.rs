//! The f32 matrix multiply behind every linear layer and both products of attention:
//! `C[m, n] = A[m, k] · Wᵀ (+ bias)`, with `W` given as `[n, k]` (PyTorch's `nn.Linear` layout).
//!
//! BLIS-style blocking around the register micro-kernels of `microkernel`:
//! - `W` is packed once (at load, for weights) into panels of `NR` = 32 output columns, each
//!   panel k-major (`panel[p * NR + j] = W[panel_start + j][p]`, zero-padded past `n`), the
//!   storage aligned to 64 bytes so that every 16-lane load of the kernel is one cache line;
//! - K is cut into blocks of [`KC`] = 384: a W micro-panel of one block (`KC x NR`, 48 KiB) and
//!   the A micro-panel (`MR x KC`, 18 KiB) are what one kernel call streams, from L1 and L2;
//! - M is cut into blocks of [`MC`] rows whose A block (`MC x KC`, 144 KiB) stays in L2 while
//!   every panel of W passes over it. The AVX-512 kernel reads its twelve rows of A where they
//!   lie; for the other kernels, and for a last tile of fewer than `MR` rows, the block is packed
//!   into `MR`-row micro-panels (`pack[p * MR + i]`, zero rows past `m`).
//!
//! Loop order: M block, then K block and panel of W in the order of `LoopOrder` (panel first
//! for products of depth up to 4,096, K block first for deeper ones), then micro-tile of A. A
//! tile starts from the bias (first K block) or the partial sums already in `C` (later K
//! blocks). Full tiles are computed in place in `C`; edge tiles go through a 64-byte aligned
//! buffer, so rows and columns past the edge of `C` need no special kernel: they are computed on
//! zero padding and never stored. Every element of `C` sees the same sequence of operations
//! whatever `m`, the row's place in its tile and the loop order (batching invariance).
//!
//! Rows of A or C a multiple of 4 KiB apart would share their L1 sets (`row_stride`): the
//! driver then reads A from a copy of each M block at another stride, and builds each panel's
//! tiles of C in a contiguous block, with the same operations, so the same bits.
//!
//! The parallel split over row blocks (and over panels for short batches), for the weights of
//! every dtype, is [`gemm_parallel`] in `matmul_parallel.rs`.

use std::cell::RefCell;

pub use super::microkernel::Isa;
use super::microkernel::{self, Tile, MR, NR};

#[path = "matmul_parallel.rs"]
mod parallel;
pub use parallel::{gemm_parallel, PanelWeights};
pub(super) use parallel::{row_blocks, split_rows, splits_rows};

/// Reduction steps per K block.
pub const KC: usize = 384;
/// Rows of A per M block, and per parallel task. A multiple of `MR`.
pub const MC: usize = 96;
/// Rows of `A` per parallel task (the M block).
pub const ROW_BLOCK: usize = MC;

/// Floats per 64-byte line: the alignment of packed storage.
const LINE: usize = 16;

/// The row stride for a buffer of `cols`-wide f32 rows that the GEMMs read as A or write as C:
/// `cols`, or one cache line more where rows of `cols` values would lie a multiple of 4 KiB
/// apart. Addresses 4 KiB apart share an L1 set (64 sets of 64-byte lines on every x86 core ember
/// runs on), and a register tile reads or writes 12 rows at once: at such a stride its 12 rows'
/// lines all fall into one or two sets of 8 to 12 ways, evicting each other and W's lines. At
/// bge-base's FFN width (3,072 values, 12 KiB) and every width of bge-large (1,024, 3,072 and
/// 4,096 values), one-thread GEMMs ran 1-30 % faster with A's and C's rows one line further
/// apart (`BENCHMARKS.md`, Zen 5, 2026-12-02 night).
pub(super) fn row_stride(cols: usize) -> usize {
    if sets_alias(cols) {
        cols + LINE
    } else {
        cols
    }
}

/// Whether f32 rows `stride` values apart lie a multiple of 4 KiB apart, in the same L1 sets
/// (see [`row_stride`]). Where a caller's A or C has such a stride, [`drive`] copies A's rows
/// to another stride and builds C's tiles in a contiguous block.
fn sets_alias(stride: usize) -> bool {
    const SET_PERIOD_BYTES: usize = 4096;
    stride > 0 && (stride * std::mem::size_of::<f32>()).is_multiple_of(SET_PERIOD_BYTES)
}

/// `W [n, k]` repacked into k-major panels of `NR` columns (see the module header).
#[derive(Debug, Clone, Default)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    /// Packed values start at `data[offset]`, the first 64-byte boundary of the allocation (a
    /// clone may land elsewhere: then only the speed of its loads suffers, not the results).
    offset: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `W[r][p] = src[r * ld + p]` for `r < n`, `p < k` (rows of W are strided rows of `src`).
    ///
    /// # Panics
    /// If `src` is too short for that layout (callers check shapes first).
    pub fn from_rows(src: &[f32], n: usize, k: usize, ld: usize) -> Self {
        let mut packed = Self::default();
        packed.repack_rows(src, n, k, ld);
        packed
    }

    /// Packs `W[r][p] = src[p * ld + r]`, i.e. `W` is the transpose of the `[k, n]` matrix in
    /// `src` (attention uses this for `V`: `context = P · V = P · (Vᵀ)ᵀ`).
    ///
    /// # Panics
    /// If `src` is too short for that layout.
    pub fn from_columns(src: &[f32], n: usize, k: usize, ld: usize) -> Self {
        let mut packed = Self::default();
        packed.repack_columns(src, n, k, ld);
        packed
    }

    /// [`Self::from_rows`] into this matrix's storage, reusing its allocation.
    pub fn repack_rows(&mut self, src: &[f32], n: usize, k: usize, ld: usize) {
        self.reset(n, k);
        if n == 0 || k == 0 {
            return;
        }
        assert!(src.len() >= (n - 1) * ld + k, "from_rows: source too short");
        let offset = self.offset;
        // A transpose: with AVX-512, whole 16 x 16 blocks go through registers (attention packs
        // K this way for every head, where scalar strided stores cost as much as the softmax).
        let blocks = microkernel::Isa::detected().f32_kernels() == microkernel::Isa::Avx512;
        for (panel_index, panel) in self.data[offset..].chunks_exact_mut(k * NR).enumerate() {
            let width = NR.min(n - panel_index * NR);
            let rows = &src[panel_index * NR * ld..];
            let (full_j, full_p) = if blocks {
                (width / 16 * 16, k / 16 * 16)
            } else {
                (0, 0)
            };
            #[cfg(target_arch = "x86_64")]
            for j0 in (0..full_j).step_by(16) {
                for p0 in (0..full_p).step_by(16) {
                    assert!(
                        rows.len() >= (j0 + 15) * ld + p0 + 16 && panel.len() >= (p0 + 15) * NR + j0 + 16
                    );
                    // SAFETY: AVX-512 is present (`blocks`); both 16 x 16 blocks are in bounds
                    // (asserted just above).
                    unsafe {
                        transpose_16x16(
                            rows.as_ptr().add(j0 * ld + p0),
                            ld,
                            panel.as_mut_ptr().add(p0 * NR + j0),
                            NR,
                        )
                    };
                }
            }
            for j in 0..width {
                let first_p = if j < full_j { full_p } else { 0 };
                let row = &rows[j * ld..][..k];
                for (p, &value) in row.iter().enumerate().skip(first_p) {
                    panel[p * NR + j] = value;
                }
            }
        }
    }

    /// [`Self::from_columns`] into this matrix's storage, reusing its allocation.
    pub fn repack_columns(&mut self, src: &[f32], n: usize, k: usize, ld: usize) {
        self.reset(n, k);
        if n == 0 || k == 0 {
            return;
        }
        assert!(src.len() >= (k - 1) * ld + n, "from_columns: source too short");
        let offset = self.offset;
        for (panel_index, panel) in self.data[offset..].chunks_exact_mut(k * NR).enumerate() {
            let first = panel_index * NR;
            let width = NR.min(n - first);
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                if width == NR {
                    // Constant length: register moves instead of a memcpy call.
                    dst.copy_from_slice(&src[p * ld + first..][..NR]);
                } else {
                    dst[..width].copy_from_slice(&src[p * ld + first..][..width]);
                }
            }
        }
    }

    fn reset(&mut self, n: usize, k: usize) {
        self.n = n;
        self.k = k;
        let len = n.div_ceil(NR) * NR * k;
        // Zero padding past `n` makes the last panel's extra columns compute zeros that are
        // never stored. `LINE` spare floats leave room to start on a 64-byte boundary.
        self.data.clear();
        self.data.resize(len + LINE, 0.0);
        let misalignment = (self.data.as_ptr() as usize / 4) % LINE;
        self.offset = (LINE - misalignment) % LINE;
    }

    /// Output columns (`n`, the rows of W).
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

    /// Panel `index`: `k` rows of `NR` floats, zero past `n`.
    pub(super) fn panel(&self, index: usize) -> &[f32] {
        &self.data[self.offset + index * self.k * NR..][..self.k * NR]
    }
}

thread_local! {
    /// Each thread's buffers for A in [`drive`], reused across calls: the packed rows of an M
    /// block, and a copy of an M block whose rows lie a multiple of 4 KiB apart (at a stride
    /// that does not, see [`rows_apart`]).
    static A_BUFFERS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Appends rows `0..m` (m <= MC), columns `k0..k0 + kc` of A to `pack` as `MR`-row
/// micro-panels: `pack[start + (t * kc + p) * MR + i] = a[(t * MR + i) * lda + k0 + p]`, zero
/// for rows past `m`, `start` being the length of `pack` before the call.
fn pack_a(a: &[f32], lda: usize, m: usize, k0: usize, kc: usize, pack: &mut Vec<f32>) {
    let tiles = m.div_ceil(MR);
    let start = pack.len();
    pack.resize(start + tiles * kc * MR, 0.0);
    if kc == 0 {
        return;
    }
    for (t, micro_panel) in pack[start..].chunks_exact_mut(kc * MR).enumerate() {
        let rows = MR.min(m - t * MR);
        if rows == MR {
            // Twelve row streams read in step, each destination written once, contiguously.
            let src: [&[f32]; MR] = std::array::from_fn(|i| &a[(t * MR + i) * lda + k0..][..kc]);
            for (p, dst) in micro_panel.chunks_exact_mut(MR).enumerate() {
                for (d, row) in dst.iter_mut().zip(&src) {
                    *d = row[p];
                }
            }
            continue;
        }
        for i in 0..rows {
            let row = &a[(t * MR + i) * lda + k0..][..kc];
            for (p, &value) in row.iter().enumerate() {
                micro_panel[p * MR + i] = value;
            }
        }
    }
}

/// `C = A · Wᵀ (+ bias)` on one thread, for every row `i < m` and column `j < w.n()`:
/// `c[i * ldc + j] = bias[j] + sum_p a[i * lda + p] * W[j][p]`. `bias`, when given, has
/// `w.n()` entries. Uses the kernels of [`Isa::detected`].
///
/// # Panics
/// If a slice is too short for its stride and extent (callers check shapes first).
pub fn gemm(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_with(Isa::detected(), a, lda, m, w, bias, c, ldc);
}

/// [`gemm`] with the kernels of `isa` (tests run every level the CPU has).
///
/// # Panics
/// As [`gemm`], and if `isa` is not available on this CPU.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
pub fn gemm_with(
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_panels(isa, a, lda, m, w, 0..w.panels(), bias, c, ldc);
}

/// The operand checks every GEMM driver (f32, bf16, int8) makes before it writes: A holds `m` rows
/// of `k`, C holds `m` rows of the panels' columns, the bias covers `n`. Returns the first column
/// of `panels` (column 0 of `c`). Panics name `what`: callers check shapes first, so a failure
/// here is a bug in ember, not bad input.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_operands(
    what: &str,
    (a, lda): (&[f32], usize),
    m: usize,
    n: usize,
    k: usize,
    panels: &std::ops::Range<usize>,
    bias: Option<&[f32]>,
    (c, ldc): (&[f32], usize),
) -> usize {
    assert!(a.len() >= (m - 1) * lda + k, "{what}: A too short");
    check_output(what, m, n, panels, bias, (c, ldc))
}

/// [`check_operands`] without A (for an A that is not f32 rows, such as int8 codes): C holds
/// `m` rows of the panels' columns, the bias covers `n`. Returns the first column of `panels`.
pub(super) fn check_output(
    what: &str,
    m: usize,
    n: usize,
    panels: &std::ops::Range<usize>,
    bias: Option<&[f32]>,
    (c, ldc): (&[f32], usize),
) -> usize {
    let first_column = panels.start * NR;
    let columns = (panels.end * NR).min(n) - first_column;
    assert!(c.len() >= (m - 1) * ldc + columns, "{what}: C too short");
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "{what}: bias too short");
    }
    first_column
}

/// [`gemm_with`] restricted to the panels `panels`; column 0 of `c` is column `panels.start * NR`
/// of the full product. `bias` is indexed by full-product column.
#[allow(clippy::too_many_arguments)]
fn gemm_panels(
    isa: Isa,
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let operands = Operands {
        a,
        lda,
        m,
        n: w.n,
        k: w.k,
        panels,
        bias,
    };
    let in_place = microkernel::reads_rows(isa);
    let block = |panel, k0, kc| &w.panel(panel)[k0 * NR..][..kc * NR];
    drive(operands, c, ldc, in_place, block, |tile| {
        let b = block(tile.panel, tile.k0, tile.kc);
        match tile.a {
            TileA::Packed(micro_panel) => {
                microkernel::run(isa, tile.kc, micro_panel, b, tile.c, tile.ldc, tile.init)
            }
            TileA::Rows(rows, lda) => microkernel::run_rows(
                isa,
                tile.kc,
                rows,
                lda,
                b,
                tile.c,
                tile.ldc,
                tile.init,
                tile.prefetch,
            ),
        }
    });
}

/// What a GEMM over f32 activations multiplies: `A` (`m` rows of `k` at stride `lda`) by the
/// panels `panels` of a packed `W [n, k]`, plus `bias` (indexed by full-product column).
pub(super) struct Operands<'a> {
    pub a: &'a [f32],
    pub lda: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub panels: std::ops::Range<usize>,
    pub bias: Option<&'a [f32]>,
}

/// Where a tile's `MR` rows of A are, for `kc` values from column `k0`.
pub(super) enum TileA<'a> {
    /// A packed micro-panel: `A[i][k0 + p]` at `[p * MR + i]` (zero rows past `m`).
    Packed(&'a [f32]),
    /// A's rows, `lda` apart: `A[i][k0 + p]` at `[i * lda + p]`, all `MR` rows real.
    Rows(&'a [f32], usize),
}

/// One call of a register kernel: `C = init + A · W` over one K block of one W panel, on the
/// `MR x NR` tile whose row `i` is `c[i * ldc..i * ldc + NR]` (`init` the bias row, or `None`
/// to accumulate onto C).
pub(super) struct TileCall<'a, T> {
    pub panel: usize,
    pub k0: usize,
    pub kc: usize,
    pub a: TileA<'a>,
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub init: Option<&'a [f32; NR]>,
    /// A slice of the next W block, for the kernel to ask for in L2 as it goes (or empty).
    pub prefetch: &'a [T],
}

/// The blocked loop around a 12 x 32 register kernel on f32 activations (the module header's
/// loop order), shared by the f32 kernels and bf16's widened kernel: packs A where the kernel
/// needs it (every tile, or with `in_place` only a last tile of fewer than `MR` rows), hands
/// `kernel` each tile, full tiles in C itself and edge tiles in an aligned buffer so that nothing
/// outside the product is touched. Column 0 of `c` is column `panels.start * NR`.
pub(super) fn drive<'w, T: 'w>(
    operands: Operands,
    c: &mut [f32],
    ldc: usize,
    in_place: bool,
    w_block: impl Fn(usize, usize, usize) -> &'w [T],
    kernel: impl Fn(TileCall<T>),
) {
    let Operands {
        a,
        lda,
        m,
        n,
        k,
        panels,
        bias,
    } = operands;
    if m == 0 || panels.is_empty() {
        return;
    }
    let first_column = check_operands("gemm", (a, lda), m, n, k, &panels, bias, (c, ldc));
    let order = LoopOrder::for_depth(k);
    // Rows a multiple of 4 KiB apart share their L1 sets (`row_stride`). Where A's are, and
    // the kernel reads them in place, each M block of them is first copied to rows
    // `row_stride(k)` apart; where C's are, C's tiles of one panel (panel first) are built in a
    // contiguous block through the K blocks, each copied into C after its last.
    let copy_rows = in_place && sets_alias(lda);
    let mut panel_block: Vec<Tile> = if order == LoopOrder::PanelOuter && sets_alias(ldc) {
        (0..MC / MR).map(|_| Tile([0.0; MR * NR])).collect()
    } else {
        Vec::new()
    };
    // At least one K block, so that k = 0 still writes the bias.
    let k_blocks = k.div_ceil(KC).max(1);
    let k_block = |kb: usize| (kb * KC, KC.min(k - kb * KC));
    A_BUFFERS.with_borrow_mut(|(pack, a_rows)| {
        for m0 in (0..m).step_by(MC) {
            let rows_in_block = MC.min(m - m0);
            // This M block's rows of A, `lda` apart, from row m0.
            let (a, lda) = rows_apart((a, lda), m0..m0 + rows_in_block, k, copy_rows, a_rows);
            let first_packed = if in_place {
                m0 + rows_in_block / MR * MR
            } else {
                m0
            };
            let packed_rows = m0 + rows_in_block - first_packed;
            // Packs the K blocks `kbs` of the rows that need it, one after the other (see
            // `block_start` for where each starts).
            let pack_blocks = |kbs: std::ops::Range<usize>, pack: &mut Vec<f32>| {
                pack.clear();
                if packed_rows > 0 {
                    for kb in kbs {
                        let (k0, kc) = k_block(kb);
                        pack_a(&a[(first_packed - m0) * lda..], lda, packed_rows, k0, kc, pack);
                    }
                }
            };
            // One W block (a panel's K block) over every tile of the M block; `packed` holds
            // that K block's packed rows.
            let mut run_block = |panel: usize, kb: usize, packed: &[f32]| {
                let (k0, kc) = k_block(kb);
                let column = panel * NR;
                let width = NR.min(n - column);
                // The first K block starts from the bias (zero-padded past `n`), later ones
                // from the partial sums in C.
                let init = (kb == 0).then(|| {
                    let mut init = [0.0f32; NR];
                    if let Some(bias) = bias {
                        init[..width].copy_from_slice(&bias[column..column + width]);
                    }
                    init
                });
                // The next W block, a slice per tile, for the kernel to prefetch.
                let next = next_block(order, &panels, panel, (k0, kc), k, KC)
                    .map_or(&[][..], |(panel, k0, kc)| w_block(panel, k0, kc));
                let tiles = rows_in_block.div_ceil(MR);
                for t in 0..tiles {
                    let prefetch = part_of(next, t, tiles);
                    let row = m0 + t * MR;
                    let rows = MR.min(m - row);
                    let tile_a = || match row.checked_sub(first_packed) {
                        Some(offset) => TileA::Packed(&packed[offset / MR * kc * MR..][..kc * MR]),
                        None => TileA::Rows(&a[(row - m0) * lda + k0..], lda),
                    };
                    // The kernel on this tile, into `c` at row stride `ldc`.
                    let run = |c: &mut [f32], ldc: usize| {
                        let (init, a) = (init.as_ref(), tile_a());
                        kernel(TileCall {
                            panel,
                            k0,
                            kc,
                            a,
                            c,
                            ldc,
                            init,
                            prefetch,
                        })
                    };
                    let c_tile = &mut c[row * ldc + column - first_column..];
                    if let Some(tile) = panel_block.get_mut(t) {
                        run(&mut tile.0, NR);
                        if kb + 1 == k_blocks {
                            store_tile(tile, rows, width, c_tile, ldc);
                        }
                        continue;
                    }
                    if rows == MR && width == NR && ldc >= NR {
                        run(c_tile, ldc);
                        continue;
                    }
                    // An edge tile: through an aligned buffer, so that the kernel never
                    // touches C outside the product (the padding computes and is dropped).
                    let mut tile = Tile([0.0; MR * NR]);
                    if init.is_none() {
                        for (i, tile_row) in tile.0.chunks_exact_mut(NR).take(rows).enumerate() {
                            tile_row[..width].copy_from_slice(&c_tile[i * ldc..i * ldc + width]);
                        }
                    }
                    run(&mut tile.0, NR);
                    store_tile(&tile, rows, width, c_tile, ldc);
                }
            };
            // Where K block kb's packed rows start when every K block is packed: the blocks
            // before it are `KC` wide.
            let block_start = |kb: usize| packed_rows.div_ceil(MR) * MR * kb * KC;
            match order {
                LoopOrder::KBlockOuter => {
                    for kb in 0..k_blocks {
                        pack_blocks(kb..kb + 1, pack);
                        for panel in panels.clone() {
                            run_block(panel, kb, pack);
                        }
                    }
                }
                LoopOrder::PanelOuter => {
                    pack_blocks(0..k_blocks, pack);
                    for panel in panels.clone() {
                        for kb in 0..k_blocks {
                            run_block(panel, kb, &pack[block_start(kb)..]);
                        }
                    }
                }
            }
        }
    });
}

/// Rows `rows` of A (`k` values each, rows `lda` apart) as a slice from the first of them and
/// its row stride: A itself, or with `copy` a copy in `buffer` at [`row_stride`]`(k)`.
fn rows_apart<'a>(
    (a, lda): (&'a [f32], usize),
    rows: std::ops::Range<usize>,
    k: usize,
    copy: bool,
    buffer: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    if !copy {
        return (&a[rows.start * lda..], lda);
    }
    let ld = row_stride(k);
    buffer.resize(rows.len() * ld, 0.0);
    for (row, copy) in rows.zip(buffer.chunks_exact_mut(ld)) {
        copy[..k].copy_from_slice(&a[row * lda..][..k]);
    }
    (&buffer[..], ld)
}

/// Copies the first `rows` rows and `width` columns of `tile` into `c` (row `i` at `c[i * ldc..]`).
pub(super) fn store_tile(tile: &Tile, rows: usize, width: usize, c: &mut [f32], ldc: usize) {
    for (i, tile_row) in tile.0.chunks_exact(NR).take(rows).enumerate() {
        c[i * ldc..i * ldc + width].copy_from_slice(&tile_row[..width]);
    }
}

/// The order in which a blocked GEMM visits the W blocks (a panel's K block) of one M block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LoopOrder {
    /// K block, then panel: one K block of the M block's rows of A (`MC x KC`) stays in L2
    /// while every panel passes over it; the partial sums in C (`MC x n`) are read back once
    /// per later K block. For products deeper than any layer of the models ember runs, whose
    /// M block of A would not stay in L2 whole.
    KBlockOuter,
    /// Panel, then K block: a tile's partial sums are read back at once (from L1), not after
    /// every other panel has passed through L2. With two K blocks and n = 3,072 (bge-base's up
    /// projection) the M block's C is 1.2 MB, evicted by the 9 MB of W between the two K blocks
    /// and read back from L3. The M block's rows of A (`MC x k`) are read once per panel
    /// instead, from L2 while they fit.
    PanelOuter,
}

impl LoopOrder {
    /// Deepest product run panel first: 96 rows of 4,096 floats are 1.5 MiB of a 2 MiB L2.
    /// Measured on the FFN's down projection (`scripts/bench/pair-encode.sh`, model 207 Xeon):
    /// panel first 1.030x as fast at bge-base's k = 3,072 (A, the FFN's own intermediate
    /// block, is in L2 already), 0.990x at MiniLM's 1,536 (noise: its C is 147 KiB, in L2
    /// either way).
    const PANEL_OUTER_MAX_K: usize = 4096;

    /// The order for products of depth `k`.
    pub(super) fn for_depth(k: usize) -> Self {
        if k <= Self::PANEL_OUTER_MAX_K {
            Self::PanelOuter
        } else {
            Self::KBlockOuter
        }
    }
}

/// The W block a blocked GEMM runs after `(panel, (k0, kc))` in `order`, as `(panel, k0, kc)`,
/// K blocks being at most `kc_max` wide; none after the last. What to prefetch while the
/// current one runs: a model's weights (tens of megabytes) come from L3 or memory, once per
/// row block.
pub(super) fn next_block(
    order: LoopOrder,
    panels: &std::ops::Range<usize>,
    panel: usize,
    (k0, kc): (usize, usize),
    k: usize,
    kc_max: usize,
) -> Option<(usize, usize, usize)> {
    let next_k_block = (k0 + kc < k).then(|| (k0 + kc, kc_max.min(k - k0 - kc)));
    let next_panel = (panel + 1 < panels.end).then_some(panel + 1);
    match order {
        LoopOrder::KBlockOuter => match (next_panel, next_k_block) {
            (Some(panel), _) => Some((panel, k0, kc)),
            (None, Some((k0, kc))) => Some((panels.start, k0, kc)),
            (None, None) => None,
        },
        LoopOrder::PanelOuter => match (next_k_block, next_panel) {
            (Some((k0, kc)), _) => Some((panel, k0, kc)),
            (None, Some(panel)) => Some((panel, 0, kc_max.min(k))),
            (None, None) => None,
        },
    }
}

/// Asks for line `step` of `prefetch` in L2, if it has that many lines. A kernel calls it once
/// per step of its k loop, so that its slice of the next W block (see [`part_of`]) arrives spread
/// over its first steps: a burst would fill the line-fill buffers its own loads need.
#[inline(always)]
pub(super) fn prefetch_line<T>(prefetch: &[T], step: usize) {
    let at = step * per_line::<T>();
    #[cfg(target_arch = "x86_64")]
    if at < prefetch.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // SAFETY: a prefetch is a hint that never faults; the address lies in `prefetch` anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(prefetch.as_ptr().add(at).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (prefetch, at);
}

/// Items of `T` per 64-byte cache line (at least one).
fn per_line<T>() -> usize {
    (64 / std::mem::size_of::<T>()).max(1)
}

/// Part `part` of `parts` of `items`, cut at 64-byte lines.
pub(super) fn part_of<T>(items: &[T], part: usize, parts: usize) -> &[T] {
    let per_line = per_line::<T>();
    let lines = items.len().div_ceil(per_line);
    let (first, last) = (
        lines * part / parts * per_line,
        lines * (part + 1) / parts * per_line,
    );
    &items[first.min(items.len())..last.min(items.len())]
}

/// `dst[c * ldd + r] = src[r * lds + c]` for a 16 x 16 block: 16 row loads, 64 shuffles, 16
/// stores. With rows `r`: 32-bit interleaves of row pairs, then 64-bit interleaves of those,
/// after which 128-bit lane `l` of `u[g][c]` holds column `4l + c` of rows `4g..4g + 4`; then per
/// `c` a 4 x 4 transpose of 128-bit lanes gives the output rows `4l + c`.
///
/// # Safety
/// AVX-512F present; `src` readable for 16 rows of 16 floats at stride `lds`, `dst` writable
/// for 16 rows of 16 floats at stride `ldd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_16x16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    // Plain loops over arrays, no closures: a closure is compiled without this function's
    // target features, so `array::from_fn` here left calls in the loop (and changed LLVM's
    // inlining of the GEMM's tile loads next door).
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, row) in r.iter_mut().enumerate() {
        // SAFETY: row i < 16 of the rows the caller vouched for.
        *row = unsafe { _mm512_loadu_ps(src.add(i * lds)) };
    }
    let (pd, ps) = (_mm512_castps_pd, _mm512_castpd_ps);
    let mut u = [[_mm512_setzero_ps(); 4]; 4];
    for (g, u) in u.iter_mut().enumerate() {
        let r = &r[4 * g..4 * g + 4];
        let (t0, t1) = (_mm512_unpacklo_ps(r[0], r[1]), _mm512_unpackhi_ps(r[0], r[1]));
        let (t2, t3) = (_mm512_unpacklo_ps(r[2], r[3]), _mm512_unpackhi_ps(r[2], r[3]));
        *u = [
            ps(_mm512_unpacklo_pd(pd(t0), pd(t2))),
            ps(_mm512_unpackhi_pd(pd(t0), pd(t2))),
            ps(_mm512_unpacklo_pd(pd(t1), pd(t3))),
            ps(_mm512_unpackhi_pd(pd(t1), pd(t3))),
        ];
    }
    let [u0, u1, u2, u3] = u;
    for (c, (((&u0, &u1), &u2), &u3)) in u0.iter().zip(&u1).zip(&u2).zip(&u3).enumerate() {
        // Lanes (0, 1) and (2, 3) of rows 0-7 and of rows 8-15, then lanes 0-3 in turn.
        let v0 = _mm512_shuffle_f32x4::<0x44>(u0, u1);
        let v1 = _mm512_shuffle_f32x4::<0xEE>(u0, u1);
        let v2 = _mm512_shuffle_f32x4::<0x44>(u2, u3);
        let v3 = _mm512_shuffle_f32x4::<0xEE>(u2, u3);
        let out = [
            _mm512_shuffle_f32x4::<0x88>(v0, v2),
            _mm512_shuffle_f32x4::<0xDD>(v0, v2),
            _mm512_shuffle_f32x4::<0x88>(v1, v3),
            _mm512_shuffle_f32x4::<0xDD>(v1, v3),
        ];
        for (l, row) in out.into_iter().enumerate() {
            // SAFETY: row 4l + c < 16 of the 16 rows the caller vouched for.
            unsafe { _mm512_storeu_ps(dst.add((4 * l + c) * ldd), row) };
        }
    }
}
