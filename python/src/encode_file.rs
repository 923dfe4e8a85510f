//! `ember.encode_file`: the offline corpus encoder (`ember encode`) from Python. The job runs
//! on a thread of its own while the calling thread, the GIL released, waits for it and looks
//! for Ctrl-C every tenth of a second; Ctrl-C asks the job to stop as the CLI's does (finished
//! rows written and kept for `resume=True`), then raises `KeyboardInterrupt`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use ember::stream::input::{Format, Shard};
use ember::stream::job::parse_devices;
use ember::stream::output::{Dtype, OutputFormat};
use ember::stream::{EncodeJob, End, Outcome, RunOptions};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{to_py_err, EmberError};

/// How often the waiting thread looks for Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Encodes every line of `input` (plain text, or JSONL with `input_format="jsonl"`) into
/// `output` (.npy: one float32 row per line; .jsonl: `{"id"?, "embedding": [...]}` per line), in
/// input order, as `ember encode` does: bounded memory, checkpoints every `checkpoint_secs`,
/// `resume=True` continues an interrupted run of the same job, `shard=(i, n)` (or "i/n") takes
/// a contiguous slice whose outputs concatenate to the whole. `output_dtype` is f32, f16,
/// int8, uint8 (with `calibration`, a float32 .npy), binary or ubinary; `dimensions` keeps the
/// first N, renormalized. `pooling`, `normalize`, `max_length` default to the model's own.
/// `progress` (default: when standard error is a terminal) draws a progress bar there.
/// Returns the run's figures as a dict; Ctrl-C keeps the finished rows and raises
/// `KeyboardInterrupt`.
#[pyfunction]
// One Rust argument per Python keyword argument: the signature is the Python one.
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (
    model, input, output, *, input_format="text", text_field="text", id_field=None,
    output_format=None, output_dtype="f32", calibration=None, dimensions=None, pooling=None,
    normalize=None, max_length=None, query_instruction=None, queries=false, device="cpu",
    dtype="f32", batch_tokens=None, shard=None, resume=false, skip_invalid=false,
    checkpoint_secs=2.0, window=4096, progress=None
))]
pub fn encode_file<'py>(
    py: Python<'py>,
    model: &str,
    input: PathBuf,
    output: PathBuf,
    input_format: &str,
    text_field: &str,
    id_field: Option<String>,
    output_format: Option<&str>,
    output_dtype: &str,
    calibration: Option<PathBuf>,
    dimensions: Option<usize>,
    pooling: Option<&str>,
    normalize: Option<bool>,
    max_length: Option<usize>,
    query_instruction: Option<String>,
    queries: bool,
    device: &str,
    dtype: &str,
    batch_tokens: Option<usize>,
    shard: Option<&Bound<'py, PyAny>>,
    resume: bool,
    skip_invalid: bool,
    checkpoint_secs: f64,
    window: usize,
    progress: Option<bool>,
) -> PyResult<Bound<'py, PyDict>> {
    let format = match input_format {
        "text" => Format::Text,
        "jsonl" => Format::Jsonl {
            text_field: text_field.to_string(),
            id_field,
        },
        other => return Err(value_error("input_format", other, "\"text\" or \"jsonl\"")),
    };
    if !(0.0..=31_536_000.0).contains(&checkpoint_secs) {
        return Err(PyValueError::new_err(format!(
            "checkpoint_secs {checkpoint_secs} is not between 0 and a year of seconds"
        )));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let job = EncodeJob {
        model: model.to_string(),
        input,
        output: output.clone(),
        format,
        output_format: output_format.map(parse_output_format).transpose()?,
        output_dtype: parse_output_dtype(output_dtype)?,
        calibration,
        dimensions,
        pooling: pooling.map(crate::embedder::parse_pooling).transpose()?,
        normalize,
        max_length,
        query_instruction,
        queries,
        devices: parse_devices(device).map_err(to_py_err)?,
        dtype: dtype.parse().map_err(to_py_err)?,
        run: RunOptions {
            shard: shard.map(parse_shard).transpose()?,
            resume,
            skip_invalid,
            checkpoint: Duration::from_secs_f64(checkpoint_secs),
            window,
            batch_tokens,
            progress: progress.unwrap_or_else(ember::stream::pipeline::stderr_is_terminal),
            cancel: Some(Arc::clone(&cancel)),
        },
    };
    let (outcome, interrupt) = run_interruptibly(py, job, &cancel)?;
    let outcome = outcome.map_err(to_py_err)?;
    let stats = &outcome.stats;
    match outcome.end {
        End::Finished if interrupt.is_none() => {}
        // Ctrl-C after the last row: the output is complete, and the interrupt still stops
        // the Python program.
        End::Finished => return Err(interrupt.expect("checked above")),
        End::Interrupted(kept) => {
            return Err(PyKeyboardInterrupt::new_err(format!(
                "encode_file interrupted after {} texts{}",
                stats.texts,
                kept.note("resume=True")
            )))
        }
        End::Failed { error, kept, .. } => {
            let py_error = to_py_err(error);
            let note = kept.note("resume=True");
            return Err(if note.is_empty() {
                py_error
            } else {
                EmberError::new_err(format!("{}{note}", py_error.value(py)))
            });
        }
    }
    let report = PyDict::new(py);
    report.set_item("output", output)?;
    report.set_item("texts", stats.texts)?;
    report.set_item("tokens", stats.tokens)?;
    report.set_item("truncated", stats.truncated)?;
    report.set_item("skipped_lines", stats.skipped.clone())?;
    report.set_item("resumed_rows", outcome.resumed_rows)?;
    report.set_item("seconds", stats.wall_s)?;
    report.set_item("tokens_per_second", stats.tokens as f64 / stats.wall_s.max(1e-9))?;
    Ok(report)
}

/// Runs `job` on its own thread; on Ctrl-C sets `cancel` and waits for the job to keep its
/// rows. Returns the job's result and the interrupt, if one came.
fn run_interruptibly(
    py: Python<'_>,
    job: EncodeJob,
    cancel: &AtomicBool,
) -> PyResult<(ember::Result<Outcome>, Option<PyErr>)> {
    let (tx, rx) = channel();
    let worker = std::thread::Builder::new()
        .name("ember-encode-file".into())
        .spawn(move || {
            let _ = tx.send(job.run());
        })
        .map_err(|e| EmberError::new_err(format!("cannot start the encoding thread: {e}")))?;
    // In a mutex only to be shared with the GIL-free closure (a receiver is not Sync).
    let rx = std::sync::Mutex::new(rx);
    let mut interrupt = None;
    let result = loop {
        match py.detach(|| rx.lock().expect("one user").recv_timeout(SIGNAL_CHECK)) {
            Ok(result) => break result,
            Err(RecvTimeoutError::Timeout) => {
                if interrupt.is_none() {
                    if let Err(e) = py.check_signals() {
                        cancel.store(true, Ordering::SeqCst);
                        interrupt = Some(e);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = worker.join();
                return Err(EmberError::new_err("the encoding thread ended without a result"));
            }
        }
    };
    let _ = worker.join();
    Ok((result, interrupt))
}

fn value_error(argument: &str, value: &str, expected: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{argument}={value:?} is not supported (expected {expected})"
    ))
}

fn parse_output_format(name: &str) -> PyResult<OutputFormat> {
    match name {
        "npy" => Ok(OutputFormat::Npy),
        "jsonl" => Ok(OutputFormat::Jsonl),
        other => Err(value_error("output_format", other, "\"npy\" or \"jsonl\"")),
    }
}

/// ember's names (f32, f16) and sentence-transformers' (float32, float16) alike.
fn parse_output_dtype(name: &str) -> PyResult<Dtype> {
    Ok(match name {
        "f32" | "float32" => Dtype::F32,
        "f16" | "float16" => Dtype::F16,
        "int8" => Dtype::Int8,
        "uint8" => Dtype::Uint8,
        "binary" => Dtype::Binary,
        "ubinary" => Dtype::Ubinary,
        other => {
            return Err(value_error(
                "output_dtype",
                other,
                "f32, f16, int8, uint8, binary or ubinary",
            ))
        }
    })
}

/// `(i, n)` or `"i/n"`.
fn parse_shard(value: &Bound<'_, PyAny>) -> PyResult<Shard> {
    let text = match value.extract::<(u64, u64)>() {
        Ok((index, count)) => format!("{index}/{count}"),
        Err(_) => value.extract::<String>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err("shard must be a tuple (i, n) or a string \"i/n\"")
        })?,
    };
    text.parse::<Shard>().map_err(PyValueError::new_err)
}
