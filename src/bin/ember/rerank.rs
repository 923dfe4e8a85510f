//! `ember rerank`: query/passage pairs in, scores out (and the best K), through the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use ember::stream::job::{self, fingerprint};
use ember::stream::output::{self, Dtype, Output, OutputFormat, RowKind};
use ember::stream::pipeline::{self, Engine};
use ember::{Error, Reranker, RerankerOptions, Result};

use crate::*;

#[derive(clap::Args)]
pub struct RerankArgs {
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

pub fn rerank(args: RerankArgs) -> Result<ExitCode> {
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
    let input_format = input_format(&args.io, args.query.is_none());
    let (range, total) = line_range(&args.input, args.io.shard)?;
    let mut checkpoint = output::Checkpoint::default();
    let output = match &args.output {
        Some(path) => {
            let format = OutputFormat::of(path, args.io.output_format)?;
            let options = serde_json::json!({
                "query": args.query, "sigmoid": args.sigmoid, "max_length": args.max_length, "format": format,
                "compute_dtype": args.run.dtype,
            });
            let print = fingerprint(
                "rerank",
                &args.model,
                &args.input,
                &input_format,
                args.io.shard,
                options,
            );
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
    let run = run_options(&args.io, &args.run);
    let plan = job::plan(
        &args.input,
        input_format,
        &run,
        &engines,
        range,
        total,
        checkpoint,
        args.top_k,
    );
    announce_resume(checkpoint.rows, args.run.quiet);
    report(
        job::finish(&plan, &engines, output, checkpoint.rows),
        args.run.quiet,
    )
}
