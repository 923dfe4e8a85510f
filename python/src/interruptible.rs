//! Long work from Python: the GIL is released while ember tokenizes and runs the model, and taken
//! back between steps to check for Ctrl-C, so that a long encode answers it with
//! `KeyboardInterrupt` within a step. Steps follow ember's own batching: the sequences are laid
//! out in the order `plan_batches` gives them (longest first) and run a few of its batches at a
//! time, so every batch is the one a single call of the library would run, and rows (which do
//! not depend on batching anyway) come back in input order.

use std::cmp::Reverse;

use ember::batch::plan_batches;
use ember::{HostMatrix, Sequence};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::to_py_err;

/// Texts tokenized between two checks for Ctrl-C (a fraction of a second of tokenizing).
const TOKENIZE_WINDOW: usize = 4096;
/// Forward-pass batches run between two checks for Ctrl-C: on the CPU a batch takes about a
/// tenth of a second, so an interrupt is answered within about a second, and the check (a few
/// microseconds with the GIL) is lost in the work.
const BATCHES_PER_CHECK: usize = 8;

/// Tokenizes `items` on all cores, a window at a time; `tokenize_one` gets each item's index in
/// `items`, for its error message.
pub fn tokenize<T: Sync>(
    py: Python<'_>,
    items: &[T],
    tokenize_one: impl Fn(usize, &T) -> ember::Result<Sequence> + Sync,
) -> PyResult<Vec<Sequence>> {
    let mut sequences = Vec::with_capacity(items.len());
    for (w, window) in items.chunks(TOKENIZE_WINDOW).enumerate() {
        let offset = w * TOKENIZE_WINDOW;
        let done: ember::Result<Vec<Sequence>> = py.detach(|| {
            window
                .par_iter()
                .enumerate()
                .map(|(i, item)| tokenize_one(offset + i, item))
                .collect()
        });
        sequences.extend(done.map_err(to_py_err)?);
        py.check_signals()?;
    }
    Ok(sequences)
}

/// Runs `sequences` through `run` (an embedder's or a reranker's, which batches by
/// `batch_tokens` itself) and returns `[sequences, cols]` as a numpy array that owns the rows
/// ember wrote (no copy). `progress`, a Python callable, is called with the rows done after
/// each step (a progress bar's update; an exception it raises ends the call).
pub fn run<'py>(
    py: Python<'py>,
    progress: Option<&Bound<'py, PyAny>>,
    sequences: Vec<Sequence>,
    batch_tokens: usize,
    cols: usize,
    run: impl Fn(&[Sequence]) -> ember::Result<HostMatrix> + Sync,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let lengths: Vec<usize> = sequences.iter().map(Sequence::len).collect();
    let batch_sizes: Vec<usize> = plan_batches(&lengths, batch_tokens.max(1), usize::MAX)
        .iter()
        .map(Vec::len)
        .collect();
    // plan_batches' own order: longest first, ties in input order (a stable sort).
    let mut indexed: Vec<(usize, Sequence)> = sequences.into_iter().enumerate().collect();
    indexed.sort_by_key(|(_, s)| Reverse(s.len()));
    let (order, sorted): (Vec<usize>, Vec<Sequence>) = indexed.into_iter().unzip();

    let mut out = vec![0.0f32; order.len() * cols];
    let mut start = 0;
    for step in batch_sizes.chunks(BATCHES_PER_CHECK) {
        let end = start + step.iter().sum::<usize>();
        let rows = py.detach(|| run(&sorted[start..end])).map_err(to_py_err)?;
        for (j, &i) in order[start..end].iter().enumerate() {
            out[i * cols..(i + 1) * cols].copy_from_slice(rows.row(j));
        }
        start = end;
        py.check_signals()?;
        if let Some(progress) = progress {
            progress.call1((end,))?;
        }
    }
    let array = Array2::from_shape_vec((order.len(), cols), out)
        .map_err(|e| crate::EmberError::new_err(format!("result rows: {e}")))?;
    Ok(array.into_pyarray(py))
}
