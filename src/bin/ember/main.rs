//! The `ember` command line: `ember encode` (texts → embeddings), `ember rerank` (query/passage
//! pairs → scores), `ember info`, `ember bench` and `ember serve`, one file per command; this
//! one holds the flags and the run summary they share. Encoding and reranking stream through
//! [`ember::stream`]; outputs are written beside the target and renamed into place when complete.

mod bench;
mod encode;
mod info;
mod rerank;
#[cfg(feature = "server")]
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ember::{Device, Error, Result};

use ember::stream::input::{self, Format, LineRange, Shard};
use ember::stream::output::{Output, OutputFormat};
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
    Encode(encode::EncodeArgs),
    /// Score query/passage pairs with a cross-encoder: pairs JSONL, or --query with passages.
    Rerank(rerank::RerankArgs),
    /// Describe a model: architecture, sizes, parameters, dtype, defaults, usable devices.
    Info(info::InfoArgs),
    /// Time tokenize / forward / write and the whole pipeline on a synthetic corpus.
    Bench(bench::BenchArgs),
    /// An HTTP server: TEI's routes (/embed, /rerank, ...) and OpenAI's /v1/embeddings.
    #[cfg(feature = "server")]
    Serve(serve::ServeArgs),
}

/// Input and output shape, shared by encode and rerank.
#[derive(clap::Args)]
pub struct IoArgs {
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
    /// Weights and matrix arithmetic: f32 (exact), bf16 (CPU with AMX or AVX512-BF16; f32
    /// accumulation, cosine >= 0.999 against f32) or int8 (CPU with AVX512-VNNI; weights per
    /// channel, activations per token, cosine >= 0.995 against f32).
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormatArg {
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
        Command::Encode(args) => encode::encode(args),
        Command::Rerank(args) => rerank::rerank(args),
        Command::Info(args) => info::info(args).map(|()| ExitCode::SUCCESS),
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

pub fn input_format(io: &IoArgs, pairs: bool) -> Format {
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
pub fn line_range(input: &Path, shard: Option<Shard>) -> Result<(LineRange, Option<u64>)> {
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
pub fn fingerprint(
    command: &str,
    model: &str,
    input: &Path,
    io: &IoArgs,
    options: serde_json::Value,
) -> String {
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

#[allow(clippy::too_many_arguments)]
pub fn plan(
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
pub fn finish_run(
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
pub fn shortest(x: f32) -> serde_json::Value {
    serde_json::from_str(&serde_json::to_string(&x).expect("a float")).unwrap_or(serde_json::Value::Null)
}

pub fn summary(stats: &Stats) {
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
