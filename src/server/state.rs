//! What every route shares: the loaded models, the batcher, admission control and the request
//! steps common to the TEI and OpenAI routes (count checks, prompts, tokenization, the wait for
//! the forward pass).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::batcher::{Batcher, Job, Loaded, Task};
use super::errors::{ApiError, ApiResult, Kind};
use super::metrics::Metrics;
use crate::{HostMatrix, Sequence};

/// One input of an embedding request: a text, or token ids used as they are.
#[derive(Debug, Clone)]
pub enum Text {
    Str(String),
    Ids(Vec<u32>),
}

/// The limits and names a request is checked against.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_client_batch_size: usize,
    pub auto_truncate: bool,
    /// The prompt put in front of texts that name none.
    pub default_prompt: Option<String>,
    /// `prompt_name` → text, from the model's sentence-transformers config and
    /// `--query-instruction` (as "query").
    pub prompts: HashMap<String, String>,
}

pub struct State {
    pub models: Arc<Vec<Loaded>>,
    pub batcher: Arc<Batcher>,
    pub admission: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub served_model_name: String,
    /// `/info`'s fixed part, computed at start.
    pub info: serde_json::Value,
    /// The classifier's label names (`/predict`).
    pub labels: Vec<String>,
    pub body_limits: super::body::BodyLimits,
    pub api_key: Option<String>,
    /// int8 / uint8 buckets (`--calibration`).
    pub calibration: Option<crate::quantize::Ranges>,
}

/// A request's place among the admitted; counts in `te_queue_size` while held.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    pub fn model(&self) -> &Loaded {
        &self.models[0]
    }

    pub fn is_embedder(&self) -> bool {
        matches!(self.model(), Loaded::Embedder(_))
    }

    /// A place for one request, or 429 at once when `--max-concurrent-requests` are in.
    pub fn admit(&self) -> ApiResult<Admitted> {
        let permit = Arc::clone(&self.admission).try_acquire_owned().map_err(|_| {
            ApiError::new(
                Kind::Overloaded,
                "Model is overloaded: the queue is full (--max-concurrent-requests); retry later",
            )
        })?;
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Empty batches are 400, batches over `--max-client-batch-size` 413 (as TEI).
    pub fn check_count(&self, count: usize) -> ApiResult<()> {
        if count == 0 {
            return Err(ApiError::new(Kind::Empty, "`inputs` cannot be empty"));
        }
        let max = self.limits.max_client_batch_size;
        if count > max {
            return Err(ApiError::new(
                Kind::Validation,
                format!("batch size {count} > maximum allowed batch size {max}"),
            ));
        }
        Ok(())
    }

    pub fn needs_embedder(&self) -> ApiResult<()> {
        if self.is_embedder() {
            Ok(())
        } else {
            Err(ApiError::new(
                Kind::Shape,
                "this server runs a cross-encoder: use /rerank or /predict",
            ))
        }
    }

    pub fn needs_classifier(&self) -> ApiResult<()> {
        if self.is_embedder() {
            Err(ApiError::new(
                Kind::Shape,
                "this server runs an embedding model: use /embed or /v1/embeddings",
            ))
        } else {
            Ok(())
        }
    }

    /// The prompt text for `prompt_name` (or the default prompt when none is named).
    pub fn prompt(&self, prompt_name: Option<&str>) -> ApiResult<String> {
        match prompt_name {
            None => Ok(self.limits.default_prompt.clone().unwrap_or_default()),
            Some(name) => self.limits.prompts.get(name).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = self.limits.prompts.keys().map(String::as_str).collect();
                known.sort();
                ApiError::new(
                    Kind::Tokenizer,
                    format!("prompt name `{name}` is not known (known: {known:?})"),
                )
            }),
        }
    }

    /// Tokenizes texts (with a prompt in front) on a blocking thread; a text over the max
    /// length is 413 unless truncation is on.
    pub async fn tokenize_texts(
        &self,
        texts: Vec<Text>,
        prompt: String,
        truncate: Option<bool>,
    ) -> ApiResult<Vec<Sequence>> {
        self.tokenize_each(texts, truncate, move |model, text| match text {
            Text::Str(s) if prompt.is_empty() => Ok(model.tokenizer().encode(s, model.max_length())),
            Text::Str(s) => Ok(model
                .tokenizer()
                .encode(&format!("{prompt}{s}"), model.max_length())),
            Text::Ids(ids) => {
                ids_sequence(ids, model.max_length(), model.encoder().config().vocab_size).map(Ok)
            }
        })
        .await
    }

    /// Tokenizes (query, passage) pairs, or single texts, for the classifier.
    pub async fn tokenize_pairs(
        &self,
        pairs: Vec<(String, Option<String>)>,
        truncate: Option<bool>,
    ) -> ApiResult<Vec<Sequence>> {
        self.tokenize_each(pairs, truncate, |model, (a, b)| {
            Ok(match b {
                Some(b) => model.tokenizer().encode_pair(a, b, model.max_length()),
                None => model.tokenizer().encode(a, model.max_length()),
            })
        })
        .await
    }

    /// Runs `tokenize` on each item on a blocking thread, naming the input in errors. It
    /// answers the tokenizer's own result (a 422 when it fails) or an error of its own.
    async fn tokenize_each<T: Send + 'static>(
        &self,
        items: Vec<T>,
        truncate: Option<bool>,
        tokenize: impl Fn(&Loaded, &T) -> ApiResult<crate::Result<Sequence>> + Send + 'static,
    ) -> ApiResult<Vec<Sequence>> {
        let truncate = truncate.unwrap_or(self.limits.auto_truncate);
        let models = Arc::clone(&self.models);
        self.timed_tokenize(move || {
            let model = &models[0];
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = |e: ApiError| ApiError::new(e.kind, format!("input {i}: {}", e.message));
                    let sequence = tokenize(model, item)
                        .map_err(at)?
                        .map_err(|e| ApiError::new(Kind::Tokenizer, format!("input {i}: {e}")))?;
                    if sequence.truncated && !truncate {
                        return Err(ApiError::new(
                            Kind::Validation,
                            format!(
                                "input {i} is longer than the maximum of {} tokens; send `truncate: true` \
                                 (or start the server with --auto-truncate) to cut it",
                                model.max_length()
                            ),
                        ));
                    }
                    Ok(sequence)
                })
                .collect()
        })
        .await
    }

    async fn timed_tokenize(
        &self,
        work: impl FnOnce() -> ApiResult<Vec<Sequence>> + Send + 'static,
    ) -> ApiResult<Vec<Sequence>> {
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::new(Kind::Backend, format!("tokenization stopped: {e}")))?;
        self.metrics
            .tokenization_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Queues the sequences and waits for their rows. Dropping this future (the client went
    /// away) drops the reply receiver, and the worker drops the job.
    pub async fn run(&self, sequences: Vec<Sequence>, task: Task) -> ApiResult<HostMatrix> {
        let tokens: usize = sequences.iter().map(Sequence::len).sum();
        self.metrics
            .input_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.batcher.submit(Job {
            sequences,
            task,
            enqueued: Instant::now(),
            reply,
        });
        match answer.await {
            Ok(Ok(matrix)) => Ok(matrix),
            Ok(Err(message)) => Err(ApiError::new(Kind::Backend, message)),
            Err(_) => Err(ApiError::new(Kind::Unhealthy, "the server is shutting down")),
        }
    }
}

/// Token ids taken as they are (no special tokens added), checked against the vocabulary; cut
/// to `max` (marked truncated) when longer.
fn ids_sequence(ids: &[u32], max: usize, vocab: usize) -> ApiResult<Sequence> {
    if ids.is_empty() {
        return Err(ApiError::new(Kind::Tokenizer, "no token ids"));
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::new(
            Kind::Tokenizer,
            format!("token id {bad} is outside the vocabulary (size {vocab})"),
        ));
    }
    let keep = ids.len().min(max);
    Ok(Sequence {
        token_ids: ids[..keep].to_vec(),
        type_ids: vec![0; keep],
        truncated: keep < ids.len(),
    })
}
