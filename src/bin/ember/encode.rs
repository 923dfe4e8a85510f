//! `ember encode`: texts in, embeddings out, through the streaming pipeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ember::stream::output::{Dtype, Output, OutputFormat, RowKind};
use ember::stream::pipeline::{self, Engine};
use ember::{Embedder, EmbedderOptions, Error, Pooling, Result};

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
        "compute_dtype": args.run.dtype,
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
