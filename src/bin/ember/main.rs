//! The `ember` command line: `ember encode` (texts → embeddings), `ember rerank` (query/passage
//! pairs → scores), `ember info` and `ember bench`. Encoding and reranking stream through
//! [`pipeline`]; outputs are written beside the target and renamed into place when complete.

mod bench;
#[cfg(feature = "server")]
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ember::{Device, Embedder, EmbedderOptions, Error, Pooling, Reranker, RerankerOptions, Result};

use ember::stream::input::{self, Format, LineRange, Shard};
use ember::stream::output::{self, Dtype, Output, OutputFormat, RowKind};
use ember::stream::pipeline::{self, Engine, Failure, Plan, Stats};

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "Fast, exact inference for BERT-family text encoders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed one text per input line (or JSONL) into .npy or JSONL embeddings, in input order.
    Encode(EncodeArgs),
    /// Score query/passage pairs with a cross-encoder: pairs JSONL, or --query with passages.
    Rerank(RerankArgs),
    /// Describe a model: architecture, sizes, parameters, dtype, defaults, usable devices.
    Info(InfoArgs),
    /// Time tokenize / forward / write and the whole pipeline on a synthetic corpus.
    Bench(bench::BenchArgs),
    /// An HTTP server: TEI's routes (/embed, /rerank, ...) and OpenAI's /v1/embeddings.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// Model folder (config.json, tokenizer.json, model.safetensors) or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Input file, one text per line (or JSONL with --input-format jsonl); `-` reads standard input.
    #[arg(long)]
    input: PathBuf,
    /// Output file: .npy (float32 rows) or .jsonl ({"id"?, "embedding": [...]} per line).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    io: IoArgs,
    /// Element type: f32, f16 (.npy only), or quantized as sentence-transformers'
    /// quantize_embeddings: int8 and uint8 (per-dimension ranges from --calibration), binary and
    /// ubinary (one bit per dimension, packed; binary offset by -128 into int8).
    #[arg(long, value_enum, default_value = "f32")]
    output_dtype: Dtype,
    /// A float32 .npy of calibration embeddings (e.g. an earlier `ember encode` of a sample):
    /// its per-dimension minimum and maximum set the int8 / uint8 buckets.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Keep the first N dimensions of each embedding, renormalized (Matryoshka models).
    #[arg(long)]
    dimensions: Option<usize>,
    /// Pooling; defaults to the model's own (sentence-transformers files) or cls.
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// Do not L2-normalize the embeddings (the model's default is kept otherwise).
    #[arg(long)]
    no_normalize: bool,
    /// Longest sequence in tokens, special tokens included; longer texts are truncated.
    #[arg(long)]
    max_length: Option<usize>,
    /// Text put in front of every input line (e.g. bge's retrieval query instruction).
    #[arg(long)]
    query_instruction: Option<String>,
    /// The lines are retrieval queries: put the query instruction in front (--query-instruction,
    /// or bge's own for a bge model).
    #[arg(long)]
    queries: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RerankArgs {
    /// Cross-encoder model folder or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// JSONL of {"query": ..., "passage": ...}; with --query, passages (one per line, or JSONL
    /// with --input-format jsonl); `-` reads standard input.
    #[arg(long)]
    input: PathBuf,
    /// Output: .jsonl ({"id"?, "score": x} per line) or .npy (float32, shape (pairs,)).
    /// Optional with --top-k.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Score every input line as a passage for this query.
    #[arg(long)]
    query: Option<String>,
    #[command(flatten)]
    io: IoArgs,
    /// Map scores to (0, 1) with a sigmoid.
    #[arg(long)]
    sigmoid: bool,
    /// Print the best K passages with their scores (JSON lines on standard output).
    #[arg(long)]
    top_k: Option<usize>,
    /// Longest pair in tokens, special tokens included; passages are cut first.
    #[arg(long)]
    max_length: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

/// Input and output shape, shared by encode and rerank.
#[derive(clap::Args)]
struct IoArgs {
    /// How input lines are read.
    #[arg(long, value_enum, default_value = "text")]
    input_format: InputFormatArg,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// JSONL field holding an id (string or number), copied into JSONL output.
    #[arg(long)]
    id_field: Option<String>,
    /// Output format; by default taken from the output's extension.
    #[arg(long, value_enum)]
    output_format: Option<OutputFormat>,
    /// Skip lines that are not valid UTF-8 (or bad JSONL) instead of stopping; the summary lists them.
    #[arg(long)]
    skip_invalid: bool,
    /// Continue an interrupted run of the same job from its OUT.journal (starts afresh when none).
    #[arg(long)]
    resume: bool,
    /// Process only shard I of N (0-based): a contiguous slice of the lines, so that the
    /// outputs of shards 0..N concatenate to the output of the whole input.
    #[arg(long)]
    shard: Option<Shard>,
    /// Seconds between checkpoints (fsync of the output and its journal).
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    checkpoint_secs: f64,
    /// Texts per length-sorted window.
    #[arg(long, default_value_t = 4096)]
    window: usize,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// cpu, cuda, cuda:N, or cuda:0,1,... for one engine per GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights and matrix arithmetic: f32 (exact), or bf16 (CPU with AMX or AVX512-BF16; f32
    /// accumulation, cosine >= 0.999 against f32).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The most tokens in one forward pass (default: 16,384 on a GPU; on the CPU, a batch whose
    /// widest activation is about 6 MiB, 1,024 tokens for MiniLM, so that it stays in cache).
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Worker threads for tokenization and the CPU forward pass (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct InfoArgs {
    /// Model folder or Hugging Face hub id.
    #[arg(long)]
    model: String,
    /// Also open these GPUs (cuda, cuda:N or cuda:0,1) and describe each: name, driver, which
    /// GEMM runs there and why, and how long opening took. An unusable one is an error.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InputFormatArg {
    Text,
    Jsonl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server handles its own signals (stop accepting, answer what is admitted, exit).
    #[cfg(feature = "server")]
    let serving = matches!(cli.command, Command::Serve(_));
    #[cfg(not(feature = "server"))]
    let serving = false;
    if !serving {
        install_interrupt_handler();
    }
    let result = match cli.command {
        Command::Encode(args) => encode(args),
        Command::Rerank(args) => rerank(args),
        Command::Info(args) => info(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::bench(args).map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "server")]
        Command::Serve(args) => serve::serve(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ember: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM ask the pipeline to stop reading; finished rows are written and
/// checkpointed, and the run exits cleanly. A second signal ends the process at once.
fn install_interrupt_handler() {
    extern "C" fn on_signal(signal: libc::c_int) {
        pipeline::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: signal() is async-signal-safe; restoring the default action makes a second
        // signal terminate the process.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    // SAFETY: the handler only stores to an atomic and calls signal(), both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| Error::Option {
                option: "threads".into(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// `cpu`, `cuda`, `cuda:N`, `cuda:0,1` or `cuda:0,cuda:1`: one engine per listed device.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let mut devices = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let device = if !devices.is_empty() && part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            format!("cuda:{part}").parse::<Device>()?
        } else {
            part.parse::<Device>()?
        };
        if devices.contains(&device) {
            return Err(Error::Option {
                option: "device".into(),
                message: format!("{device} is listed twice"),
            });
        }
        devices.push(device);
    }
    if devices.len() > 1 && devices.contains(&Device::Cpu) {
        return Err(Error::Option {
            option: "device".into(),
            message: "cpu runs one engine on all cores; list several devices only as cuda:0,1,...".into(),
        });
    }
    Ok(devices)
}

/// A model folder, or a hub id resolved through the local Hugging Face cache.
pub fn model_dir(spec: &str) -> Result<PathBuf> {
    ember::hub::resolve(spec)
}

fn input_format(io: &IoArgs, pairs: bool) -> Format {
    match (io.input_format, pairs) {
        (_, true) => Format::Pairs {
            id_field: io.id_field.clone(),
        },
        (InputFormatArg::Text, false) => Format::Text,
        (InputFormatArg::Jsonl, false) => Format::Jsonl {
            text_field: io.text_field.clone(),
            id_field: io.id_field.clone(),
        },
    }
}

/// The lines of this run, and how many there are when the input is a file.
fn line_range(input: &Path, shard: Option<Shard>) -> Result<(LineRange, Option<u64>)> {
    let full = LineRange { start: 0, end: None };
    if input == Path::new("-") {
        return match shard {
            Some(_) => Err(Error::Option {
                option: "shard".into(),
                message: "needs an input file (its lines are counted to cut the shards)".into(),
            }),
            None => Ok((full, None)),
        };
    }
    let lines = input::count_lines(input)?;
    Ok(match shard {
        Some(shard) => {
            let range = shard.range(lines);
            (range, Some(range.end.unwrap_or(lines) - range.start))
        }
        None => (full, Some(lines)),
    })
}

/// What identifies a job for `--resume`: an output journal from another job is refused. The
/// input's content is not part of it, so that a bad line can be fixed (or `--skip-invalid`
/// added) before resuming; the lines before the checkpoint must stay as they were.
fn fingerprint(command: &str, model: &str, input: &Path, io: &IoArgs, options: serde_json::Value) -> String {
    serde_json::json!({
        "ember": env!("CARGO_PKG_VERSION"),
        "command": command,
        "model": model,
        "input": input,
        "input_format": format!("{:?}", io.input_format as u8),
        "text_field": io.text_field,
        "id_field": io.id_field,
        "shard": io.shard.map(|s| format!("{}/{}", s.index, s.count)),
        "options": options,
    })
    .to_string()
}

fn encode(args: EncodeArgs) -> Result<ExitCode> {
    let format = OutputFormat::of(&args.output, args.io.output_format)?;
    if format == OutputFormat::Jsonl && args.output_dtype == Dtype::F16 {
        return Err(Error::Option {
            option: "output-dtype".into(),
            message: "f16 applies to .npy output only".into(),
        });
    }
    let quantized = args.output_dtype.precision();
    match (quantized.is_some_and(|p| p.needs_ranges()), &args.calibration) {
        (true, None) => {
            return Err(Error::Option {
                option: "calibration".into(),
                message: "int8 and uint8 need --calibration CAL.npy (float32 embeddings whose per-dimension range sets the buckets)".into(),
            })
        }
        (false, Some(_)) => {
            return Err(Error::Option {
                option: "calibration".into(),
                message: "applies to --output-dtype int8 or uint8 only".into(),
            })
        }
        _ => {}
    }
    let devices = parse_devices(&args.run.device)?;
    let options = serde_json::json!({
        "dimensions": args.dimensions,
        "calibration": args.calibration,
        "pooling": args.pooling.map(|p| p as u8),
        "no_normalize": args.no_normalize,
        "max_length": args.max_length,
        "query_instruction": args.query_instruction,
        "queries": args.queries,
        "format": format,
        "dtype": args.output_dtype,
    });
    let print = fingerprint("encode", &args.model, &args.input, &args.io, options);
    let (range, total) = line_range(&args.input, args.io.shard)?;
    // The output is opened before the model is resolved (perhaps downloaded) and loaded.
    let (mut output, checkpoint) = Output::open(
        &args.output,
        format,
        args.output_dtype,
        RowKind::Embedding,
        &print,
        args.io.resume,
    )?;
    let model = model_dir(&args.model)?;
    let instruction = match (&args.query_instruction, args.queries) {
        (Some(text), _) => Some(text.clone()),
        (None, true) => Some(default_query_instruction(&args.model, &model)?),
        (None, false) => None,
    };
    set_threads(args.run.threads)?;
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    for device in devices {
        let embedder = Embedder::load_with_dtype(
            &model,
            EmbedderOptions {
                pooling: args.pooling.map(|p| match p {
                    PoolingArg::Cls => Pooling::Cls,
                    PoolingArg::Mean => Pooling::Mean,
                }),
                normalize: args.no_normalize.then_some(false),
                max_length: args.max_length,
                query_instruction: instruction.clone(),
                device,
                batch_tokens: args.run.batch_tokens,
            },
            args.run.dtype.parse()?,
        )?;
        if let Some(d) = args.dimensions {
            ember::dims::check(d, embedder.dim())?;
        }
        engines.push(Box::new(pipeline::EmbedEngine {
            embedder,
            queries: instruction.is_some(),
            dimensions: args.dimensions,
        }));
    }
    if let Some(path) = &args.calibration {
        output.set_ranges(ember::quantize::Ranges::from_npy(path, engines[0].cols())?);
    }
    let default_batch_tokens = engines[0].encoder().default_batch_tokens();
    let plan = plan(
        default_batch_tokens,
        &args.input,
        input_format(&args.io, false),
        &args.io,
        &args.run,
        range,
        total,
        checkpoint.lines,
        None,
    );
    finish_run(&plan, &engines, Some(output), checkpoint.rows, args.run.quiet)
}

/// bge's retrieval instruction, for `--queries` with a bge model.
pub fn default_query_instruction(spec: &str, dir: &Path) -> Result<String> {
    let name = format!("{spec} {}", dir.display()).to_lowercase();
    if name.contains("bge") && name.contains("-zh") {
        Ok(ember::embedder::BGE_QUERY_INSTRUCTION_ZH.to_string())
    } else if name.contains("bge") {
        Ok(ember::embedder::BGE_QUERY_INSTRUCTION_EN.to_string())
    } else {
        Err(Error::Option {
            option: "queries".into(),
            message: format!("{spec} has no known query instruction: pass --query-instruction TEXT"),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn plan(
    default_batch_tokens: usize,
    input: &Path,
    format: Format,
    io: &IoArgs,
    run: &RunArgs,
    range: LineRange,
    total: Option<u64>,
    done_lines: u64,
    top_k: Option<usize>,
) -> Plan {
    Plan {
        input: input.to_path_buf(),
        format,
        range,
        done_lines,
        skip_invalid: io.skip_invalid,
        batch_tokens: run.batch_tokens.unwrap_or(default_batch_tokens),
        window: io.window.max(1),
        checkpoint: Duration::from_secs_f64(io.checkpoint_secs),
        total_lines: total,
        progress: !run.quiet && pipeline::stderr_is_terminal(),
        top_k,
    }
}

/// Runs the pipeline, then finishes the output, or keeps what is done for `--resume`.
fn finish_run(
    plan: &Plan,
    engines: &[Box<dyn Engine>],
    mut output: Option<Output>,
    resumed_rows: u64,
    quiet: bool,
) -> Result<ExitCode> {
    if resumed_rows > 0 && !quiet {
        eprintln!("ember: resuming after {resumed_rows} rows");
    }
    let (stats, failure) = pipeline::run(plan, engines, &mut output);
    let kept = |output: Option<Output>| -> Result<String> {
        match output {
            Some(out) => {
                let partial = out.partial().to_path_buf();
                let rows = out.abandon()?;
                Ok(if rows > 0 {
                    format!(
                        "; {rows} finished rows are kept in {}: run again with --resume to continue",
                        partial.display()
                    )
                } else {
                    String::new()
                })
            }
            None => Ok(String::new()),
        }
    };
    match failure {
        Some(Failure::Fatal(e)) => {
            let note = kept(output)?;
            if !note.is_empty() {
                eprintln!("ember: {}", &note[2..]);
            }
            Err(e)
        }
        Some(Failure::Input(e)) => {
            let note = kept(output)?;
            match e {
                Error::Input { location, message } => Err(Error::Input {
                    location,
                    message: format!("{message}{note}"),
                }),
                other => {
                    if !note.is_empty() {
                        eprintln!("ember: {}", &note[2..]);
                    }
                    Err(other)
                }
            }
        }
        None if stats.interrupted => {
            let note = kept(output)?;
            if !quiet {
                summary(&stats);
                eprintln!("ember: interrupted{note}");
            }
            Ok(ExitCode::from(130))
        }
        None => {
            if let Some(out) = output {
                out.finish(engines[0].cols())?;
            }
            for (rank, (score, line, id, passage)) in stats.top.iter().enumerate() {
                let mut row = serde_json::json!({"rank": rank + 1, "line": line, "score": shortest(*score), "passage": passage});
                if let Some(id) = id {
                    row["id"] = id.clone();
                }
                println!("{row}");
            }
            if !quiet {
                summary(&stats);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A number of seconds from 0 to a year (a Duration cannot hold infinity or NaN).
pub fn seconds(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|e| format!("`{text}` is not a number: {e}"))?;
    if (0.0..=365.0 * 86_400.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{text}` is not between 0 and 31536000 seconds"))
    }
}

/// An f32 as JSON in its shortest exact form (not widened to f64's digits).
fn shortest(x: f32) -> serde_json::Value {
    serde_json::from_str(&serde_json::to_string(&x).expect("a float")).unwrap_or(serde_json::Value::Null)
}

fn summary(stats: &Stats) {
    let seconds = stats.wall_s;
    let mut line = format!(
        "ember: {} texts, {} tokens, {seconds:.2} s, {:.0} tokens/s, {} truncated",
        stats.texts,
        stats.tokens,
        stats.tokens as f64 / seconds.max(1e-9),
        stats.truncated
    );
    if !stats.skipped.is_empty() {
        let shown: Vec<String> = stats.skipped.iter().take(20).map(u64::to_string).collect();
        let more = stats.skipped.len().saturating_sub(20);
        line += &format!(", {} skipped (lines {}", stats.skipped.len(), shown.join(", "));
        line += &if more > 0 {
            format!(" and {more} more)")
        } else {
            ")".into()
        };
    }
    if let Some(bytes) = stats.peak_device_bytes {
        line += &format!(", peak GPU memory {:.1} MiB", bytes as f64 / (1 << 20) as f64);
    }
    if let Some(budget) = stats.token_budget {
        line += &format!(
            "; out of device memory on larger batches: they were cut to {budget} tokens (lower --batch-tokens to start there)"
        );
    }
    eprintln!("{line}");
}

fn rerank(args: RerankArgs) -> Result<ExitCode> {
    if args.output.is_none() && args.top_k.is_none() {
        return Err(Error::Option {
            option: "output".into(),
            message: "rerank needs --output, --top-k or both".into(),
        });
    }
    if args.top_k.is_some() && args.io.resume {
        return Err(Error::Option {
            option: "top-k".into(),
            message: "--top-k ranks the rows of one run; it cannot be combined with --resume".into(),
        });
    }
    let devices = parse_devices(&args.run.device)?;
    let (range, total) = line_range(&args.input, args.io.shard)?;
    let mut checkpoint = output::Checkpoint::default();
    let output = match &args.output {
        Some(path) => {
            let format = OutputFormat::of(path, args.io.output_format)?;
            let options = serde_json::json!({
                "query": args.query, "sigmoid": args.sigmoid, "max_length": args.max_length, "format": format,
            });
            let print = fingerprint("rerank", &args.model, &args.input, &args.io, options);
            let (out, at) = Output::open(path, format, Dtype::F32, RowKind::Score, &print, args.io.resume)?;
            checkpoint = at;
            Some(out)
        }
        None => None,
    };
    let model = model_dir(&args.model)?;
    set_threads(args.run.threads)?;
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    for device in devices {
        let reranker = Reranker::load_with_dtype(
            &model,
            RerankerOptions {
                max_length: args.max_length,
                device,
                batch_tokens: args.run.batch_tokens,
            },
            args.run.dtype.parse()?,
        )?;
        if reranker.num_labels() != 1 {
            return Err(Error::Option {
                option: "model".into(),
                message: format!(
                    "scores need a single-label model; this one has {} labels",
                    reranker.num_labels()
                ),
            });
        }
        engines.push(Box::new(pipeline::RerankEngine {
            reranker,
            sigmoid: args.sigmoid,
            query: args.query.clone(),
        }));
    }
    let format = input_format(&args.io, args.query.is_none());
    let default_batch_tokens = engines[0].encoder().default_batch_tokens();
    let plan = plan(
        default_batch_tokens,
        &args.input,
        format,
        &args.io,
        &args.run,
        range,
        total,
        checkpoint.lines,
        args.top_k,
    );
    finish_run(&plan, &engines, output, checkpoint.rows, args.run.quiet)
}

fn info(args: InfoArgs) -> Result<()> {
    let dir = model_dir(&args.model)?;
    let encoder = ember::Encoder::load(&dir, Device::Cpu)?;
    let c = encoder.config();
    let arch = match (c.family, c.head) {
        (ember::config::Family::Bert, ember::config::Head::None) => "BertModel".to_string(),
        (ember::config::Family::XlmRoberta, ember::config::Head::None) => "XLMRobertaModel".to_string(),
        (family, ember::config::Head::Classifier { num_labels }) => {
            format!("{family:?}ForSequenceClassification ({num_labels} labels)")
        }
    };
    let pooling = match c.defaults.pooling {
        Pooling::Cls => "cls",
        Pooling::Mean => "mean",
    };
    let params = c.parameter_count();
    println!("model          {}", dir.display());
    println!("architecture   {arch}");
    println!("layers         {}", c.num_layers);
    println!("hidden size    {}", c.hidden_size);
    println!("heads          {} (head dim {})", c.num_heads, c.head_dim());
    println!("intermediate   {}", c.intermediate_size);
    println!("vocabulary     {}", c.vocab_size);
    println!("parameters     {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "stored dtype   {}",
        encoder.stored_dtype().map_or("mixed", |d| d.name())
    );
    println!(
        "pooling        {pooling}{} (from {})",
        if c.defaults.normalize {
            ", L2-normalized"
        } else {
            ""
        },
        c.defaults.source
    );
    println!(
        "max length     {} (positions for {})",
        c.defaults.max_length,
        c.max_supported_length()
    );
    println!("devices        {}", ember::encoder::compiled_devices().join(", "));
    for device in parse_devices(args.device.as_deref().unwrap_or("cpu"))? {
        let Device::Cuda(ordinal) = device else {
            continue; // the CPU: nothing to open
        };
        for (key, value) in ember::encoder::describe_gpu(ordinal)? {
            let key = if key == "gpu" {
                device.to_string()
            } else {
                format!("  {key}")
            };
            println!("{key:<15}{value}");
        }
    }
    Ok(())
}
