//! `ember serve`: an HTTP server for embedding and rerank models, wire-compatible with
//! text-embeddings-inference (TEI) and with OpenAI's embeddings API, on tokio + axum.
//!
//! ```text
//! clients ──HTTP──▶ axum handlers (parse, admit or 429, tokenize on a blocking thread)
//!         ──Job──▶ batcher queue ──▶ one worker thread per device (packs requests under the
//!         token budget, runs the forward pass) ──rows──▶ each handler, as soon as its own are done
//! ```
//!
//! Admission is bounded (`--max-concurrent-requests`), bodies are bounded in size and time, so
//! memory does not grow with the load: past the bound a request is answered 429 at once.
//! SIGTERM / SIGINT stop accepting connections, answer what was admitted, then return.

mod batcher;
mod body;
mod encoding;
mod errors;
mod listen;
mod metrics;
mod openai;
mod state;
mod tei;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State as Shared};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::config::Head;
use crate::error::{Error, Result};
use crate::{Device, Dtype, Embedder, EmbedderOptions, Reranker, RerankerOptions};
use batcher::{Batcher, Loaded};
use body::BodyLimits;
use errors::{ApiError, Kind};
use metrics::Metrics;
use state::{Limits, State};

/// Everything `ember serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model's folder.
    pub model_dir: PathBuf,
    /// The name /info and /v1 answers give the model.
    pub served_model_name: String,
    /// The address to listen on.
    pub host: String,
    /// 0 picks a free port (the tests do).
    pub port: u16,
    /// One worker per device.
    pub devices: Vec<Device>,
    /// Weights and matrix arithmetic (f32, bf16, int8).
    pub dtype: Dtype,
    /// Longest sequence in tokens (`None`: the model's).
    pub max_length: Option<usize>,
    /// Tokens per forward pass (default: the device's, as `ember encode`).
    pub max_batch_tokens: Option<usize>,
    /// Inputs per request.
    pub max_client_batch_size: usize,
    /// Requests admitted at once (queued or running); more are 429.
    pub max_concurrent_requests: usize,
    /// Bytes per request body; more is 413.
    pub payload_limit: usize,
    /// Seconds a request body may take to arrive (more is 408), and its head (a connection
    /// whose request line and headers take longer is closed).
    pub body_timeout: Duration,
    /// Required as `Authorization: Bearer KEY` on every route but /health and /metrics.
    pub api_key: Option<String>,
    /// Truncate texts over the max length instead of refusing them (a request's `truncate`
    /// overrides it).
    pub auto_truncate: bool,
    /// The "query" prompt (e.g. bge's retrieval instruction).
    pub query_instruction: Option<String>,
    /// A prompt put in front of every text whose request names none.
    pub default_prompt: Option<String>,
    /// A float32 .npy of calibration embeddings for int8 / uint8 output.
    pub calibration: Option<PathBuf>,
}

impl ServeOptions {
    /// TEI's defaults for the limits.
    pub fn new(model_dir: PathBuf) -> ServeOptions {
        ServeOptions {
            served_model_name: model_dir
                .file_name()
                .map_or_else(|| "ember".into(), |n| n.to_string_lossy().into_owned()),
            model_dir,
            host: "127.0.0.1".into(),
            port: 8080,
            devices: vec![Device::Cpu],
            dtype: Dtype::F32,
            max_length: None,
            max_batch_tokens: None,
            max_client_batch_size: 32,
            max_concurrent_requests: 512,
            payload_limit: 2_000_000,
            body_timeout: Duration::from_secs(30),
            api_key: None,
            auto_truncate: false,
            query_instruction: None,
            default_prompt: None,
            calibration: None,
        }
    }
}

/// Loads the model (an embedder, or a cross-encoder when the config has a classifier head) on
/// each device, listens, calls `ready` with the bound address, and serves until SIGTERM or
/// SIGINT (or until `stop` resolves, for tests that run the server in process).
pub fn serve(
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = crate::config::ModelConfig::load(&options.model_dir)?;
    let mut models = Vec::new();
    for &device in &options.devices {
        models.push(match config.head {
            Head::None => Loaded::Embedder(Embedder::load_with_dtype(
                &options.model_dir,
                EmbedderOptions {
                    max_length: options.max_length,
                    query_instruction: options.query_instruction.clone(),
                    device,
                    batch_tokens: options.max_batch_tokens,
                    ..Default::default()
                },
                options.dtype,
            )?),
            Head::Classifier { .. } => Loaded::Reranker(Reranker::load_with_dtype(
                &options.model_dir,
                RerankerOptions {
                    max_length: options.max_length,
                    device,
                    batch_tokens: options.max_batch_tokens,
                },
                options.dtype,
            )?),
        });
    }
    let budget = options
        .max_batch_tokens
        .unwrap_or_else(|| models[0].encoder().default_batch_tokens());
    let calibration = match &options.calibration {
        Some(path) => Some(crate::quantize::Ranges::from_npy(
            path,
            models[0].encoder().config().hidden_size,
        )?),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::new(Arc::clone(&metrics));
    let models = Arc::new(models);
    let workers = batcher.start_workers(Arc::clone(&models), budget);
    let state = Arc::new(State {
        info: info(&options, &models[0], budget),
        labels: labels(&options.model_dir),
        limits: Limits {
            max_client_batch_size: options.max_client_batch_size.max(1),
            auto_truncate: options.auto_truncate,
            default_prompt: options.default_prompt.clone(),
            prompts: prompts(&options)?,
        },
        body_limits: BodyLimits {
            payload_limit: options.payload_limit,
            timeout: options.body_timeout,
        },
        models,
        batcher: Arc::clone(&batcher),
        admission: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
        metrics,
        served_model_name: options.served_model_name.clone(),
        api_key: options.api_key.clone(),
        calibration,
    });
    let address = format!("{}:{}", options.host, options.port);
    let server_error = |message: String| Error::Server {
        address: address.clone(),
        message,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| server_error(format!("starting the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| server_error(format!("cannot listen: {e}")))?;
        let bound = listener.local_addr().map_err(|e| server_error(e.to_string()))?;
        ready(bound);
        let app = router(Arc::clone(&state));
        let shutdown_state = Arc::clone(&state);
        let shutdown = async move {
            tokio::select! {
                _ = stop => {}
                _ = termination() => {}
            }
            // /health answers 503 from now on; requests in flight finish.
            shutdown_state.admission.close();
        };
        listen::serve(listener, app, options.body_timeout, shutdown).await;
        Ok(())
    });
    // Every admitted request has been answered; the workers drain and end.
    batcher.close();
    for worker in workers {
        let _ = worker.join();
    }
    result
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/embed", post(tei::embed))
        .route("/rerank", post(tei::rerank))
        .route("/predict", post(tei::predict))
        .route("/similarity", post(tei::similarity))
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/info", get(tei::info))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/rerank", post(openai::rerank))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        // Open without a key, as TEI's.
        .route("/health", get(tei::health))
        .route("/metrics", get(tei::metrics))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), count))
        .with_state(state)
}

/// 401 unless the request carries `Authorization: Bearer KEY` (when a key is set).
async fn authorize(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let error = ApiError::new(
                Kind::Unauthorized,
                "missing or wrong API key (Authorization: Bearer KEY)",
            );
            let error = if request.uri().path().starts_with("/v1/") {
                error.openai()
            } else {
                error
            };
            return error.into_response();
        }
    }
    next.run(request).await
}

/// Counts requests, successes and failures by kind, and times each request.
async fn count(Shared(state): Shared<Arc<State>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let counted = path != "/metrics" && path != "/health";
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    if counted {
        let m = &state.metrics;
        m.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = response.status();
        if status.is_success() {
            m.successes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            let kind = response.extensions().get::<Kind>().copied();
            m.fail(kind.unwrap_or_else(|| errors::kind_of_status(status)).metric());
        }
        m.request_seconds.observe(started.elapsed().as_secs_f64());
    }
    response
}

/// Prompts by name: the model's sentence-transformers `prompts`, and "query" from
/// `--query-instruction` (which wins).
fn prompts(options: &ServeOptions) -> Result<HashMap<String, String>> {
    let path = options.model_dir.join("config_sentence_transformers.json");
    let mut prompts = HashMap::new();
    if path.exists() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if let Some(map) = json.get("prompts").and_then(|p| p.as_object()) {
            for (name, text) in map {
                if let Some(text) = text.as_str() {
                    prompts.insert(name.clone(), text.to_string());
                }
            }
        }
    }
    if let Some(q) = &options.query_instruction {
        prompts.insert("query".into(), q.clone());
    }
    Ok(prompts)
}

/// The classifier's label names from config.json's `id2label` (LABEL_i where absent).
fn labels(dir: &std::path::Path) -> Vec<String> {
    let json: Option<serde_json::Value> = std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(map) = json
        .as_ref()
        .and_then(|j| j.get("id2label"))
        .and_then(|m| m.as_object())
    else {
        return Vec::new();
    };
    let mut labels: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    labels.sort();
    labels.into_iter().map(|(_, l)| l).collect()
}

/// `/info`, in TEI's fields.
fn info(options: &ServeOptions, model: &Loaded, budget: usize) -> serde_json::Value {
    let config = model.encoder().config();
    let model_type = match model {
        Loaded::Embedder(e) => serde_json::json!({"embedding": {"pooling": match e.pooling() {
            crate::Pooling::Cls => "cls",
            crate::Pooling::Mean => "mean",
        }}}),
        Loaded::Reranker(_) => serde_json::json!({"reranker": {"id2label": labels(&options.model_dir)}}),
    };
    serde_json::json!({
        "model_id": options.served_model_name,
        "model_sha": null,
        "model_dtype": options.dtype.to_string(),
        "model_type": model_type,
        "max_concurrent_requests": options.max_concurrent_requests,
        "max_input_length": model.max_length(),
        "max_batch_tokens": budget,
        "max_batch_requests": null,
        "max_client_batch_size": options.max_client_batch_size,
        "auto_truncate": options.auto_truncate,
        "tokenization_workers": rayon::current_num_threads(),
        "version": env!("CARGO_PKG_VERSION"),
        "hidden_size": config.hidden_size,
        "devices": options.devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}
