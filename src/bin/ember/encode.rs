//! `ember encode`: texts in, embeddings out, through the streaming pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use ember::stream::output::Dtype;
use ember::stream::EncodeJob;
use ember::{Pooling, Result};

use crate::*;

#[derive(clap::Args)]
pub struct EncodeArgs {
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

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

pub fn encode(args: EncodeArgs) -> Result<ExitCode> {
    set_threads(args.run.threads)?;
    let job = EncodeJob {
        model: args.model,
        format: input_format(&args.io, false),
        input: args.input,
        output: args.output,
        output_format: args.io.output_format,
        output_dtype: args.output_dtype,
        calibration: args.calibration,
        dimensions: args.dimensions,
        pooling: args.pooling.map(|p| match p {
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::Mean => Pooling::Mean,
        }),
        normalize: args.no_normalize.then_some(false),
        max_length: args.max_length,
        query_instruction: args.query_instruction,
        queries: args.queries,
        devices: parse_devices(&args.run.device)?,
        dtype: args.run.dtype.parse()?,
        run: run_options(&args.io, &args.run),
    };
    let started = job.start()?;
    announce_resume(started.resumed_rows(), args.run.quiet);
    report(started.run(), args.run.quiet)
}
