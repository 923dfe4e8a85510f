//! The parallel split of a GEMM over packed weights of any dtype ([`PanelWeights`]): row blocks
//! of at most [`ROW_BLOCK`] rows, one rayon task each, their count a multiple of the threads and
//! the tiles shared out evenly among them; when there are too few rows to feed every thread
//! (short batches, single queries), the panels are split as well and each task writes a private
//! tile that is copied into place afterwards. The FFN (`feed_forward.rs`) runs its two products
//! on the same row blocks.

use rayon::prelude::*;

use super::{gemm_panels, Isa, PackedMatrix, MR, NR, ROW_BLOCK};

/// Packed weights that a GEMM runs over panel by panel: f32 ([`PackedMatrix`], with the kernels
/// of [`Isa::detected`]), bf16 (`crate::backend::cpu::bf16::PackedBf16`) or int8 (`crate::backend::cpu::int8::PackedInt8`). [`gemm_parallel`] splits work over
/// either.
pub trait PanelWeights: Sync {
    /// Output columns.
    fn n(&self) -> usize;
    /// Reduction length.
    fn k(&self) -> usize;
    /// Panels of `NR` columns.
    fn panels(&self) -> usize;
    /// `C = A · Wᵀ (+ bias)` for the columns of `panels` only, on the calling thread; column 0 of
    /// `c` is column `panels.start * NR` of the full product.
    #[allow(clippy::too_many_arguments)]
    fn gemm_panels(
        &self,
        a: &[f32],
        lda: usize,
        m: usize,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        c: &mut [f32],
        ldc: usize,
    );
    /// `activate` on each of rows `0..m` of `a` (`k()` values at stride `lda`, in place), then
    /// [`gemm_panels`](Self::gemm_panels) on them: the FFN's activation and down projection.
    /// The int8 weights do both in one pass along the rows (each row quantized just after its
    /// activation); the others activate every row first. `activate` runs inside the GEMM, on
    /// its thread: it must not start a GEMM itself.
    #[allow(clippy::too_many_arguments)]
    fn activate_then_gemm_panels(
        &self,
        a: &mut [f32],
        lda: usize,
        m: usize,
        activate: &(dyn Fn(&mut [f32]) + Sync),
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        c: &mut [f32],
        ldc: usize,
    ) {
        for i in 0..m {
            activate(&mut a[i * lda..][..self.k()]);
        }
        self.gemm_panels(a, lda, m, panels, bias, c, ldc);
    }
}

impl PanelWeights for PackedMatrix {
    fn n(&self) -> usize {
        self.n
    }
    fn k(&self) -> usize {
        self.k
    }
    fn panels(&self) -> usize {
        PackedMatrix::panels(self)
    }
    fn gemm_panels(
        &self,
        a: &[f32],
        lda: usize,
        m: usize,
        panels: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        c: &mut [f32],
        ldc: usize,
    ) {
        gemm_panels(Isa::detected(), a, lda, m, self, panels, bias, c, ldc);
    }
}

/// The `PanelWeights` of a packed type whose module has `gemm_panels(a, lda, m, &w, panels,
/// bias, c, ldc)` (the bf16 and int8 weights).
macro_rules! panel_weights {
    ($packed:ty, $gemm_panels:path $(, $activate_then_gemm_panels:path)?) => {
        impl PanelWeights for $packed {
            fn n(&self) -> usize {
                <$packed>::n(self)
            }
            fn k(&self) -> usize {
                <$packed>::k(self)
            }
            fn panels(&self) -> usize {
                <$packed>::panels(self)
            }
            fn gemm_panels(
                &self,
                a: &[f32],
                lda: usize,
                m: usize,
                panels: std::ops::Range<usize>,
                bias: Option<&[f32]>,
                c: &mut [f32],
                ldc: usize,
            ) {
                $gemm_panels(a, lda, m, self, panels, bias, c, ldc);
            }
            $(
            fn activate_then_gemm_panels(
                &self,
                a: &mut [f32],
                lda: usize,
                m: usize,
                activate: &(dyn Fn(&mut [f32]) + Sync),
                panels: std::ops::Range<usize>,
                bias: Option<&[f32]>,
                c: &mut [f32],
                ldc: usize,
            ) {
                $activate_then_gemm_panels(a, lda, m, activate, self, panels, bias, c, ldc);
            }
            )?
        }
    };
}
panel_weights!(
    crate::backend::cpu::bf16::PackedBf16,
    crate::backend::cpu::bf16::gemm_panels
);
panel_weights!(
    crate::backend::cpu::int8::PackedInt8,
    crate::backend::cpu::int8::gemm_panels,
    crate::backend::cpu::int8::activate_then_gemm_panels
);

/// `out[m, n] = x[m, k] · Wᵀ + bias`, then `epilogue(first_row, rows_of_out)` on each block of
/// finished rows (activation and residual, while the block is still in cache). Runs on the
/// caller's current rayon pool. `out` must hold exactly `m * w.n()` values and `x` `m * w.k()`.
///
/// # Panics
/// If the slices do not have those lengths (callers check shapes first).
pub fn gemm_parallel(
    x: &[f32],
    m: usize,
    w: &impl PanelWeights,
    bias: &[f32],
    out: &mut [f32],
    epilogue: impl Fn(usize, &mut [f32]) + Sync,
) {
    let (n, k) = (w.n(), w.k());
    assert_eq!(x.len(), m * k, "gemm_parallel: x length");
    assert_eq!(out.len(), m * n, "gemm_parallel: out length");
    assert_eq!(bias.len(), n, "gemm_parallel: bias length");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    // Enough tasks to keep every thread busy and let work stealing even out the tail.
    let wanted_tasks = 4 * threads;
    if splits_rows(m, threads) || w.panels() == 1 {
        let blocks = row_blocks(m, threads);
        split_rows(out, n, &blocks)
            .into_par_iter()
            .zip(blocks.par_iter())
            .for_each(|(out_block, rows)| {
                w.gemm_panels(
                    &x[rows.start * k..],
                    k,
                    rows.len(),
                    0..w.panels(),
                    Some(bias),
                    out_block,
                    n,
                );
                epilogue(rows.start, out_block);
            });
        return;
    }
    // Few rows: split the panels too. A task's columns are not contiguous in `out`, so each
    // writes a private tile, copied into place afterwards (m * n copies, small next to m*n*k).
    let blocks = row_blocks(m, 1);
    let column_splits = wanted_tasks.div_ceil(blocks.len()).min(w.panels());
    let panels_per_split = w.panels().div_ceil(column_splits);
    let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..blocks.len())
        .flat_map(|block| {
            (0..w.panels())
                .step_by(panels_per_split)
                .map(move |p| (block, p..(p + panels_per_split).min(w.panels())))
        })
        .collect();
    let tiles: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|(block, panels)| {
            let rows = blocks[*block].clone();
            let columns = (panels.end * NR).min(n) - panels.start * NR;
            let mut tile = vec![0.0; rows.len() * columns];
            let (a, lda) = (&x[rows.start * k..], k);
            w.gemm_panels(a, lda, rows.len(), panels.clone(), Some(bias), &mut tile, columns);
            tile
        })
        .collect();
    // Each row block gathers its tiles and runs its epilogue, in parallel.
    split_rows(out, n, &blocks)
        .into_par_iter()
        .enumerate()
        .for_each(|(block, out_block)| {
            let mine = tasks.iter().zip(&tiles).filter(|((b, _), _)| *b == block);
            for ((_, panels), tile) in mine {
                let first_column = panels.start * NR;
                let columns = (panels.end * NR).min(n) - first_column;
                for (out_row, tile_row) in out_block.chunks_exact_mut(n).zip(tile.chunks_exact(columns)) {
                    out_row[first_column..first_column + columns].copy_from_slice(tile_row);
                }
            }
            epilogue(blocks[block].start, out_block);
        });
}

/// Whether `m` rows over `threads` threads are split into row blocks only ([`row_blocks`]), each
/// task multiplying its rows by all of W. Two row blocks per thread balance well enough:
/// splitting the columns as well costs more (A quantized or packed once per split, private
/// tiles copied into place); measured at 512 tokens of bge-base, int8, 2 threads, where 6 row
/// blocks took the column split.
pub(in crate::backend::cpu) fn splits_rows(m: usize, threads: usize) -> bool {
    m.div_ceil(ROW_BLOCK) >= 2 * threads
}

/// The row ranges of the parallel tasks over `m` rows: whole `MR`-row tiles, at most
/// [`ROW_BLOCK`] rows each, as many as that needs rounded up to a multiple of `threads`, and the
/// tiles shared out evenly. Fixed 96-row blocks left 512 rows as five full blocks and a
/// 32-row one: over 2 threads, 288 rows against 224 (the slower thread sets the time).
pub(in crate::backend::cpu) fn row_blocks(m: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let tiles = m.div_ceil(MR);
    let blocks = m
        .div_ceil(ROW_BLOCK)
        .next_multiple_of(threads.max(1))
        .min(tiles)
        .max(1);
    (0..blocks)
        .map(|b| (tiles * b / blocks * MR).min(m)..(tiles * (b + 1) / blocks * MR).min(m))
        .collect()
}

/// `out` (rows of `n` values) cut at the row ranges `blocks`, which cover it in order.
pub(in crate::backend::cpu) fn split_rows<'a>(
    mut out: &'a mut [f32],
    n: usize,
    blocks: &[std::ops::Range<usize>],
) -> Vec<&'a mut [f32]> {
    blocks
        .iter()
        .map(|rows| {
            let (block, rest) = std::mem::take(&mut out).split_at_mut(rows.len() * n);
            out = rest;
            block
        })
        .collect()
}
