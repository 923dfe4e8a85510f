//! `ember._ember.Embedder`: texts in, a float32 `[texts, dim]` numpy array out.

use ember::{Embedder, EmbedderOptions, Pooling, Sequence};
use numpy::PyArray2;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{call_max_length, interruptible, load_model};

#[pyclass(frozen, name = "Embedder", module = "ember._ember")]
pub struct PyEmbedder {
    inner: Embedder,
}

impl PyEmbedder {
    /// Tokenizes `texts` under `max_length` (clipped to the positions), or the loaded one.
    fn sequences(
        &self,
        py: Python<'_>,
        texts: &[String],
        max_length: Option<usize>,
    ) -> PyResult<Vec<Sequence>> {
        let embedder = &self.inner;
        let max_length = call_max_length(
            embedder.encoder(),
            embedder.tokenizer(),
            max_length,
            embedder.max_length(),
        )?;
        interruptible::tokenize(py, texts, |i, text| {
            embedder
                .tokenizer()
                .encode(text, max_length)
                .map_err(|e| ember::Error::input(format!("text {i}"), e.to_string()))
        })
    }
}

pub(crate) fn parse_pooling(name: &str) -> PyResult<Pooling> {
    match name {
        "cls" => Ok(Pooling::Cls),
        "mean" => Ok(Pooling::Mean),
        _ => Err(PyValueError::new_err(format!(
            "pooling {name:?} is not supported (ember pools with \"cls\" or \"mean\")"
        ))),
    }
}

#[pymethods]
impl PyEmbedder {
    /// Loads a model folder (or a cached hub id). `None` keeps the model's own default, read
    /// from its files as ember's library does.
    #[new]
    // One Rust argument per Python keyword argument: the signature is the Python one.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model, *, pooling=None, normalize=None, max_length=None, device="cpu", dtype="f32", batch_tokens=None))]
    fn new(
        py: Python<'_>,
        model: &str,
        pooling: Option<&str>,
        normalize: Option<bool>,
        max_length: Option<usize>,
        device: &str,
        dtype: &str,
        batch_tokens: Option<usize>,
    ) -> PyResult<Self> {
        let pooling = pooling.map(parse_pooling).transpose()?;
        let inner = load_model(py, model, device, dtype, |dir, device, dtype| {
            let options = EmbedderOptions {
                pooling,
                normalize,
                max_length,
                query_instruction: None,
                device,
                batch_tokens,
            };
            Embedder::load_with_dtype(dir, options, dtype)
        })?;
        Ok(PyEmbedder { inner })
    }

    /// One row per text, in order. `max_length` (tokens, special tokens included) overrides
    /// the loaded one for this call, clipped to the model's positions. `progress(rows_done)`
    /// is called as the work goes on (rows are computed longest text first).
    #[pyo3(signature = (texts, max_length=None, progress=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        max_length: Option<usize>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let embedder = &self.inner;
        let sequences = self.sequences(py, &texts, max_length)?;
        interruptible::run(
            py,
            progress.as_ref(),
            sequences,
            embedder.batch_tokens(),
            embedder.dim(),
            |chunk| embedder.embed_sequences(chunk),
        )
    }

    /// The token ids each text becomes (special tokens included, truncated as `encode` does).
    #[pyo3(signature = (texts, max_length=None))]
    fn tokenize(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        max_length: Option<usize>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let sequences = self.sequences(py, &texts, max_length)?;
        Ok(sequences.into_iter().map(|s| s.token_ids).collect())
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn pooling(&self) -> &'static str {
        match self.inner.pooling() {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
        }
    }

    #[getter]
    fn normalize(&self) -> bool {
        self.inner.normalize()
    }

    /// The max length of a call without one: the option, or the model's default.
    #[getter]
    fn max_length(&self) -> usize {
        self.inner.max_length()
    }

    /// The longest sequence the model's position table holds.
    #[getter]
    fn max_positions(&self) -> usize {
        self.inner.encoder().config().max_supported_length()
    }

    #[getter]
    fn device(&self) -> String {
        self.inner.encoder().device().to_string()
    }

    #[getter]
    fn batch_tokens(&self) -> usize {
        self.inner.batch_tokens()
    }
}
