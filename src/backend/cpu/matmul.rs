//! The f32 matrix multiply behind every linear layer and both products of attention:
//! `C[m, n] = A[m, k] · Wᵀ (+ bias)`, with `W` given as `[n, k]` (PyTorch's `nn.Linear` layout).
//!
//! This is the seam for the SIMD kernels (AVX-512 / AVX2 / AMX) that will replace the portable
//! microkernel: [`PackedMatrix`] (the weight layout) and [`gemm`] (single-threaded, any strides)
//! are the whole interface, and [`gemm_parallel`] only splits work and calls [`gemm`].
//!
//! Algorithm: `W` is packed once into panels of [`NR`] output columns, each panel stored k-major
//! (`panel[p * NR + j] = W[panel_start + j][p]`, zero-padded past `n`). The microkernel keeps an
//! `MR x NR` tile of `C` in registers and, for each `p`, broadcasts `A[i][p]` and multiplies it
//! by the `NR` contiguous panel values: an outer product, no horizontal sums, and a loop LLVM
//! vectorizes into SIMD multiply-adds over the `NR` lanes. Panels are the outer loop so that one
//! panel (`k * NR` floats, at most 48 KiB for k = 1536) stays in L1/L2 while every row tile of
//! the A block streams past it.
//!
//! Parallel split ([`gemm_parallel`]): blocks of [`ROW_BLOCK`] rows, one rayon task each; when
//! there are too few rows to feed every thread (short batches, single queries), the panels are
//! split as well and each task writes a private tile that is copied into place afterwards.

use rayon::prelude::*;

/// Rows of `C` per register tile.
pub const MR: usize = 4;
/// Columns of `C` per register tile, and the panel width of [`PackedMatrix`]. 4 x 8 needs 8
/// accumulator registers plus 2 for the panel row and 1 broadcast: it fits the 16 registers of
/// SSE2 (the portable baseline) without spilling, and stays good with AVX2 or AVX-512.
pub const NR: usize = 8;
/// Rows of `A` per parallel task. 64 rows of k = 1536 are 384 KiB: the block stays in L2 while
/// every panel passes over it.
pub const ROW_BLOCK: usize = 64;

/// `W [n, k]` repacked into k-major panels of [`NR`] columns (see the module header).
#[derive(Debug, Clone, Default)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
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
        for (panel_index, panel) in self.data.chunks_exact_mut(k * NR).enumerate() {
            for j in 0..NR.min(n - panel_index * NR) {
                let row = &src[(panel_index * NR + j) * ld..][..k];
                for (p, &value) in row.iter().enumerate() {
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
        for (panel_index, panel) in self.data.chunks_exact_mut(k * NR).enumerate() {
            let first = panel_index * NR;
            let width = NR.min(n - first);
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                if width == NR {
                    // Constant length: register moves instead of a memcpy call per 32 bytes.
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
        self.data.clear();
        // Zero padding past `n` makes the last panel's extra columns compute zeros that are
        // never stored.
        self.data.resize(n.div_ceil(NR) * NR * k, 0.0);
    }

    /// Output columns (`n`, the rows of W).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (`k`, the columns of W).
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, index: usize) -> &[f32] {
        &self.data[index * self.k * NR..][..self.k * NR]
    }
}

/// `C = A · Wᵀ (+ bias)` on one thread, for every row `i < m` and column `j < w.n()`:
/// `c[i * ldc + j] = bias[j] + sum_p a[i * lda + p] * W[j][p]`. `bias`, when given, has
/// `w.n()` entries.
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
    gemm_panels(a, lda, m, w, 0..w.panels(), bias, c, ldc);
}

/// [`gemm`] restricted to the panels `panels`; column 0 of `c` is column `panels.start * NR` of
/// the full product. `bias` is indexed by full-product column.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
fn gemm_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedMatrix,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let (n, k) = (w.n, w.k);
    if m == 0 || panels.is_empty() {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "gemm: A too short");
    let first_column = panels.start * NR;
    let columns = (panels.end * NR).min(n) - first_column;
    assert!(c.len() >= (m - 1) * ldc + columns, "gemm: C too short");
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "gemm: bias too short");
    }
    for panel_index in panels {
        let column = panel_index * NR;
        let width = NR.min(n - column);
        let mut init = [0.0f32; NR];
        if let Some(bias) = bias {
            init[..width].copy_from_slice(&bias[column..column + width]);
        }
        let panel = w.panel(panel_index);
        for row in (0..m).step_by(MR) {
            let rows = MR.min(m - row);
            let tile = microkernel(&a[row * lda..], lda, rows, panel, k, &init);
            for (i, tile_row) in tile.iter().take(rows).enumerate() {
                let start = (row + i) * ldc + column - first_column;
                if width == NR {
                    // A constant length compiles to register stores; a variable one to a
                    // memcpy call, which costs as much as the tile when k is a head dim of 32.
                    c[start..start + NR].copy_from_slice(tile_row);
                } else {
                    c[start..start + width].copy_from_slice(&tile_row[..width]);
                }
            }
        }
    }
}

/// One `MR x NR` tile: `init[j] + sum_p a[i * lda + p] * panel[p * NR + j]` for `i < rows`.
/// Rows past `rows` repeat the last valid row (computed and discarded) so that the loop body is
/// always the full, unrolled tile.
#[inline(always)]
fn microkernel(
    a: &[f32],
    lda: usize,
    rows: usize,
    panel: &[f32],
    k: usize,
    init: &[f32; NR],
) -> [[f32; NR]; MR] {
    let a_rows: [&[f32]; MR] = std::array::from_fn(|i| &a[i.min(rows - 1) * lda..][..k]);
    let mut acc = [*init; MR];
    // `chunks_exact` and `zip` let LLVM drop every bounds check in the hot loop.
    for (p, b) in panel[..k * NR].chunks_exact(NR).enumerate() {
        let b: &[f32; NR] = b.try_into().expect("chunks_exact(NR)");
        for i in 0..MR {
            let a_ip = a_rows[i][p];
            for j in 0..NR {
                acc[i][j] += a_ip * b[j];
            }
        }
    }
    acc
}

/// `out[m, n] = x[m, k] · Wᵀ + bias`, then `epilogue(first_row, rows_of_out)` on each block of
/// finished rows (activation and residual, while the block is still in cache). Runs on the
/// caller's current rayon pool. `out` must hold exactly `m * w.n()` values and `x` `m * w.k()`.
///
/// # Panics
/// If the slices do not have those lengths (callers check shapes first).
pub fn gemm_parallel(
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: &[f32],
    out: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "gemm_parallel: x length");
    assert_eq!(out.len(), m * n, "gemm_parallel: out length");
    assert_eq!(bias.len(), n, "gemm_parallel: bias length");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let row_blocks = m.div_ceil(ROW_BLOCK);
    // Enough tasks to keep every thread busy and let work stealing even out the tail.
    let wanted_tasks = 4 * threads;
    if row_blocks >= wanted_tasks || w.panels() == 1 {
        out.par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(|(block, out_block)| {
                let first = block * ROW_BLOCK;
                let rows = out_block.len() / n;
                gemm(&x[first * k..], k, rows, w, Some(bias), out_block, n);
                epilogue(first, out_block);
            });
        return;
    }
    // Few rows: split the panels too. A task's columns are not contiguous in `out`, so each
    // writes a private tile, copied into place afterwards (m * n copies, small next to m*n*k).
    let column_splits = wanted_tasks.div_ceil(row_blocks).min(w.panels());
    let panels_per_split = w.panels().div_ceil(column_splits);
    let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..row_blocks)
        .flat_map(|block| {
            (0..w.panels())
                .step_by(panels_per_split)
                .map(move |p| (block, p..(p + panels_per_split).min(w.panels())))
        })
        .collect();
    let tiles: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(block, panels)| {
            let first = block * ROW_BLOCK;
            let rows = ROW_BLOCK.min(m - first);
            let columns = (panels.end * NR).min(n) - panels.start * NR;
            let mut tile = vec![0.0; rows * columns];
            let (a, lda) = (&x[first * k..], k);
            gemm_panels(a, lda, rows, w, panels.clone(), Some(bias), &mut tile, columns);
            tile
        })
        .collect();
    for ((block, panels), tile) in tasks.iter().zip(&tiles) {
        let first_column = panels.start * NR;
        let columns = (panels.end * NR).min(n) - first_column;
        for (i, tile_row) in tile.chunks_exact(columns).enumerate() {
            let start = (block * ROW_BLOCK + i) * n + first_column;
            out[start..start + columns].copy_from_slice(tile_row);
        }
    }
    out.par_chunks_mut(ROW_BLOCK * n)
        .enumerate()
        .for_each(|(block, out_block)| epilogue(block * ROW_BLOCK, out_block));
}
