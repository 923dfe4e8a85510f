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

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ember::{Error, Result};

use ember::stream::input::{Format, Shard};
pub use ember::stream::job::{default_query_instruction, line_range, parse_devices};
use ember::stream::output::OutputFormat;
use ember::stream::pipeline::{self, Stats};
use ember::stream::{End, Outcome, RunOptions};

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

/// Device, precision, batching and threads, shared by encode and rerank.
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
    /// widest activation is about 6 MiB, 1,365 tokens for MiniLM and 682 for bge-base, so that
    /// it stays in cache).
    #[arg(long)]
    batch_tokens: Option<usize>,
    /// Worker threads for tokenization and the CPU forward pass (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

/// `--input-format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormatArg {
    /// One text per line.
    Text,
    /// One JSON object per line (see --text-field, --id-field).
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

/// `--threads`: the size of the global rayon pool (tokenization and the CPU forward pass).
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

/// A model folder, or a hub id resolved through the local Hugging Face cache.
pub fn model_dir(spec: &str) -> Result<PathBuf> {
    ember::hub::resolve(spec)
}

/// How lines are read: pairs (rerank without --query), or text / JSONL by `--input-format`.
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

/// The run options of the shared flags; a progress bar when standard error is a terminal.
pub fn run_options(io: &IoArgs, run: &RunArgs) -> RunOptions {
    RunOptions {
        shard: io.shard,
        resume: io.resume,
        skip_invalid: io.skip_invalid,
        checkpoint: Duration::from_secs_f64(io.checkpoint_secs),
        window: io.window,
        batch_tokens: run.batch_tokens,
        progress: !run.quiet && pipeline::stderr_is_terminal(),
        cancel: None,
    }
}

/// Says, before the work starts, that a run continues an earlier one.
pub fn announce_resume(resumed_rows: u64, quiet: bool) {
    if resumed_rows > 0 && !quiet {
        eprintln!("ember: resuming after {resumed_rows} rows");
    }
}

/// Tells how a run ended: the summary and the best rows (rerank `--top-k`) when it finished,
/// what is kept for `--resume` when it did not. Interrupted runs exit with 130, as a shell
/// reports Ctrl-C.
pub fn report(outcome: Outcome, quiet: bool) -> Result<ExitCode> {
    let stats = &outcome.stats;
    match outcome.end {
        End::Failed {
            error,
            bad_input,
            kept,
        } => {
            let note = kept.note("--resume");
            match error {
                // A bad line's message says where the finished rows are, so that the user
                // fixes the line and resumes.
                Error::Input { location, message } if bad_input => Err(Error::Input {
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
        End::Interrupted(kept) => {
            if !quiet {
                summary(stats);
                eprintln!("ember: interrupted{}", kept.note("--resume"));
            }
            Ok(ExitCode::from(130))
        }
        End::Finished => {
            for (rank, (score, line, id, passage)) in stats.top.iter().enumerate() {
                let mut row = serde_json::json!({"rank": rank + 1, "line": line, "score": shortest(*score), "passage": passage});
                if let Some(id) = id {
                    row["id"] = id.clone();
                }
                println!("{row}");
            }
            if !quiet {
                summary(stats);
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

/// The one-line summary of a run on standard error: texts, tokens, time, rate, what was
/// truncated or skipped, GPU memory and any cut of the token budget.
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
