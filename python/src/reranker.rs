//! `ember._ember.Reranker`: (query, passage) pairs in, a float32 `[pairs, labels]` numpy array
//! of raw logits out (the Python layer applies sigmoid or softmax as each interface does).

use ember::{Reranker, RerankerOptions};
use numpy::PyArray2;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{call_max_length, interruptible, load_model};

#[pyclass(frozen, name = "Reranker", module = "ember._ember")]
pub struct PyReranker {
    inner: Reranker,
}

#[pymethods]
impl PyReranker {
    /// Loads a `*ForSequenceClassification` model folder (or a cached hub id).
    #[new]
    #[pyo3(signature = (model, *, max_length=None, device="cpu", dtype="f32", batch_tokens=None))]
    fn new(
        py: Python<'_>,
        model: &str,
        max_length: Option<usize>,
        device: &str,
        dtype: &str,
        batch_tokens: Option<usize>,
    ) -> PyResult<Self> {
        let inner = load_model(py, model, device, dtype, |dir, device, dtype| {
            let options = RerankerOptions {
                max_length,
                device,
                batch_tokens,
            };
            Reranker::load_with_dtype(dir, options, dtype)
        })?;
        Ok(PyReranker { inner })
    }

    /// Every label's logit for each pair `(queries[i], passages[i])`. `max_length` overrides
    /// the loaded one for this call, clipped to the model's positions; passages are cut first.
    /// `progress(pairs_done)` is called as the work goes on.
    #[pyo3(signature = (queries, passages, max_length=None, progress=None))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        queries: Vec<String>,
        passages: Vec<String>,
        max_length: Option<usize>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        if queries.len() != passages.len() {
            return Err(PyValueError::new_err(format!(
                "{} queries but {} passages",
                queries.len(),
                passages.len()
            )));
        }
        let reranker = &self.inner;
        let max_length = call_max_length(
            reranker.encoder(),
            reranker.tokenizer(),
            max_length,
            reranker.max_length(),
        )?;
        let pairs: Vec<(String, String)> = queries.into_iter().zip(passages).collect();
        let sequences = interruptible::tokenize(py, &pairs, |i, (query, passage)| {
            reranker
                .tokenizer()
                .encode_pair(query, passage, max_length)
                .map_err(|e| ember::Error::input(format!("pair {i}"), e.to_string()))
        })?;
        interruptible::run(
            py,
            progress.as_ref(),
            sequences,
            reranker.batch_tokens(),
            reranker.num_labels(),
            |chunk| reranker.logits_of(chunk),
        )
    }

    #[getter]
    fn num_labels(&self) -> usize {
        self.inner.num_labels()
    }

    #[getter]
    fn max_length(&self) -> usize {
        self.inner.max_length()
    }
}
