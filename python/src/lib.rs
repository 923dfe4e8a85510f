//! `ember._ember`: ember's embedder and cross-encoder as Python classes. The Python package
//! around it (python/ember/) gives them FlagEmbedding's and sentence-transformers' interfaces;
//! this module only loads models, tokenizes and runs them, with the GIL released while it works
//! and a check for Ctrl-C between steps (`interruptible.rs`), and hands the results to numpy
//! without copying them; `encode_file` runs the CLI's offline corpus encoder (`encode_file.rs`).

mod embedder;
mod encode_file;
mod interruptible;
mod reranker;

use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    ember,
    EmberError,
    PyException,
    "An error from ember's engine; its message names the file, tensor, config field or input at fault."
);

/// The Python exception for an ember error: a missing file is a `FileNotFoundError`, an option
/// out of range (a max length, a device, a dtype) a `ValueError`, anything else an `EmberError`;
/// each carries ember's message.
pub(crate) fn to_py_err(error: ember::Error) -> PyErr {
    let message = error.to_string();
    match error {
        ember::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        ember::Error::Option { .. } => PyValueError::new_err(message),
        _ => EmberError::new_err(message),
    }
}

/// A model folder, or a hub id found in the local Hugging Face cache (ember's own rules, as the
/// CLI's `--model`); a name that is neither is a `FileNotFoundError`.
pub(crate) fn model_folder(py: Python<'_>, model: &str) -> PyResult<PathBuf> {
    let dir = py.detach(|| ember::hub::resolve(model)).map_err(to_py_err)?;
    if !dir.is_dir() {
        return Err(PyFileNotFoundError::new_err(format!(
            "model {model}: no such folder, and not a hub id in the local Hugging Face cache"
        )));
    }
    Ok(dir)
}

/// A call's max length: the requested one clipped to the model's positions (FlagEmbedding's
/// default of 512 must work on models with fewer), or the loaded one; a `ValueError` when it
/// leaves no room for content next to the special tokens.
pub(crate) fn call_max_length(
    encoder: &ember::Encoder,
    tokenizer: &ember::tokenize::TextTokenizer,
    requested: Option<usize>,
    loaded: usize,
) -> PyResult<usize> {
    let max_length = requested.map_or(loaded, |m| m.min(encoder.config().max_supported_length()));
    tokenizer.check_max_length(max_length).map_err(to_py_err)?;
    Ok(max_length)
}

/// Loads a model with `load` (an embedder's or a reranker's), the GIL released: `model` is
/// resolved to a folder, `device` ("cpu", "cuda", "cuda:N") and `dtype` ("f32", "bf16") parsed.
pub(crate) fn load_model<T: Send>(
    py: Python<'_>,
    model: &str,
    device: &str,
    dtype: &str,
    load: impl FnOnce(&Path, ember::Device, ember::Dtype) -> ember::Result<T> + Send,
) -> PyResult<T> {
    let dir = model_folder(py, model)?;
    let device = device.parse().map_err(to_py_err)?;
    let dtype = dtype.parse().map_err(to_py_err)?;
    py.detach(|| load(&dir, device, dtype)).map_err(to_py_err)
}

/// The folder a model name stands for: the folder itself, or a hub id's snapshot in the local
/// Hugging Face cache (downloaded when absent, unless `HF_HUB_OFFLINE=1`).
#[pyfunction]
#[pyo3(name = "model_folder")]
fn py_model_folder(py: Python<'_>, model: &str) -> PyResult<String> {
    Ok(model_folder(py, model)?.display().to_string())
}

#[pymodule]
fn _ember(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("EmberError", m.py().get_type::<EmberError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("compiled_devices", ember::encoder::compiled_devices().to_vec())?;
    m.add_function(wrap_pyfunction!(py_model_folder, m)?)?;
    m.add_function(wrap_pyfunction!(encode_file::encode_file, m)?)?;
    m.add_class::<embedder::PyEmbedder>()?;
    m.add_class::<reranker::PyReranker>()?;
    Ok(())
}
