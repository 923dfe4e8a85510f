//! `ember serve`: flags in, [`ember::server::serve`] run, a line when it listens.

use std::time::Duration;

use ember::server::{serve as run_server, ServeOptions};
use ember::Result;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model folder or Hugging Face hub id: an embedder, or a cross-encoder (then /rerank and
    /// /predict answer, and /embed does not).
    #[arg(long)]
    model: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed when listening).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// cpu, cuda, cuda:N, or cuda:0,1,... for one worker per GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, or bf16 (CPU with AMX or AVX512-BF16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Tokens per forward pass, over all the requests batched together (default: as `ember encode`).
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Inputs per request; more is 413.
    #[arg(long, default_value_t = 32)]
    max_client_batch_size: usize,
    /// Requests admitted at once, queued or running; more are answered 429 at once.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Bytes per request body; more is 413.
    #[arg(long, default_value_t = 2_000_000)]
    payload_limit: usize,
    /// Seconds a request body may take to arrive (longer is 408), and its head (the request
    /// line and headers; a connection whose head is slower is closed).
    #[arg(long, default_value_t = 30.0, value_parser = crate::seconds)]
    body_timeout: f64,
    /// Require `Authorization: Bearer KEY` on every route but /health and /metrics.
    #[arg(long)]
    api_key: Option<String>,
    /// The model name /info and the /v1 routes give (default: the model folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Cut texts over the max length instead of answering 413.
    #[arg(long)]
    auto_truncate: bool,
    /// Longest sequence in tokens (default: the model's).
    #[arg(long)]
    max_length: Option<usize>,
    /// The prompt that `prompt_name: "query"` puts in front of texts.
    #[arg(long)]
    query_instruction: Option<String>,
    /// A prompt put in front of every text of requests that name none.
    #[arg(long)]
    default_prompt: Option<String>,
    /// A float32 .npy of calibration embeddings: its per-dimension range sets the int8 / uint8
    /// buckets (without it, each request's own embeddings do).
    #[arg(long)]
    calibration: Option<std::path::PathBuf>,
    /// Worker threads for tokenization and the CPU forward pass (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    crate::set_threads(args.threads)?;
    let dir = crate::model_dir(&args.model)?;
    // A bge model's "query" prompt is its retrieval instruction, as `encode --queries` uses.
    let query_instruction = args
        .query_instruction
        .or_else(|| crate::default_query_instruction(&args.model, &dir).ok());
    let mut options = ServeOptions::new(dir);
    options.served_model_name = args.served_model_name.unwrap_or_else(|| args.model.clone());
    options.host = args.host;
    options.port = args.port;
    options.devices = crate::parse_devices(&args.device)?;
    options.dtype = args.dtype.parse()?;
    options.max_length = args.max_length;
    options.max_batch_tokens = args.max_batch_tokens;
    options.max_client_batch_size = args.max_client_batch_size;
    options.max_concurrent_requests = args.max_concurrent_requests;
    options.payload_limit = args.payload_limit;
    options.body_timeout = Duration::from_secs_f64(args.body_timeout);
    options.api_key = args.api_key;
    options.auto_truncate = args.auto_truncate;
    options.query_instruction = query_instruction;
    options.default_prompt = args.default_prompt;
    options.calibration = args.calibration;
    run_server(
        options,
        |address| eprintln!("ember: listening on http://{address}"),
        std::future::pending(),
    )
}
