//! A whole offline run as a value: `ember encode` and Python's `ember.encode_file` describe an
//! [`EncodeJob`] and [`EncodeJob::run`] it, so that both validate, fingerprint, resume and shard
//! the same way; `ember rerank` shares the parts ([`line_range`], [`fingerprint`], [`finish`]).
//! Nothing here prints: the caller reports the [`Outcome`] in its own way.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::input::{self, Format, LineRange, Shard};
use super::output::{Checkpoint, Dtype, Output, OutputFormat, RowKind};
use super::pipeline::{self, EmbedEngine, Engine, Failure, Plan, Stats};
use crate::backend::Pooling;
use crate::embedder::{BGE_QUERY_INSTRUCTION_EN, BGE_QUERY_INSTRUCTION_ZH};
use crate::{Device, Embedder, EmbedderOptions, Error, Result};

/// How a run reads, checkpoints and can be stopped: what `ember encode` and `ember rerank`
/// share beyond the model.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Only this slice of the input's lines (their outputs concatenate to the whole).
    pub shard: Option<Shard>,
    /// Continue an earlier run of the same job from its journal (a fresh start when none).
    pub resume: bool,
    /// Skip lines that are not valid UTF-8 (or bad JSONL) instead of stopping.
    pub skip_invalid: bool,
    /// Time between checkpoints (fsync of the output and its journal).
    pub checkpoint: Duration,
    /// Texts per length-sorted window.
    pub window: usize,
    /// The most tokens in one forward pass (`None`: the device's default).
    pub batch_tokens: Option<usize>,
    /// A progress bar on standard error.
    pub progress: bool,
    /// Set from another thread to stop the run as Ctrl-C does: finished rows are written and
    /// kept for `resume`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            shard: None,
            resume: false,
            skip_invalid: false,
            checkpoint: Duration::from_secs(2),
            window: 4096,
            batch_tokens: None,
            progress: false,
            cancel: None,
        }
    }
}

/// `ember encode`: the texts of an input file (one per line, or JSONL) into embeddings in a
/// .npy or JSONL file, in input order.
#[derive(Debug, Clone)]
pub struct EncodeJob {
    /// Model folder or hub id, as given (it is part of the job's fingerprint).
    pub model: String,
    /// Input file; `-` is standard input.
    pub input: PathBuf,
    /// The .npy or JSONL file to write (through a partial file renamed at the end).
    pub output: PathBuf,
    /// [`Format::Text`] or [`Format::Jsonl`].
    pub format: Format,
    /// `None`: from the output's extension.
    pub output_format: Option<OutputFormat>,
    /// The element type of the output's values.
    pub output_dtype: Dtype,
    /// Float32 embeddings whose per-dimension range sets the int8 / uint8 buckets.
    pub calibration: Option<PathBuf>,
    /// Keep the first N dimensions, renormalized (Matryoshka models).
    pub dimensions: Option<usize>,
    /// CLS or mean pooling (`None`: the model's own).
    pub pooling: Option<Pooling>,
    /// L2-normalize the rows (`None`: the model's own choice).
    pub normalize: Option<bool>,
    /// Longest sequence in tokens, special tokens included (`None`: the model's).
    pub max_length: Option<usize>,
    /// Put in front of every text; with `queries` and none given, bge's own instruction.
    pub query_instruction: Option<String>,
    /// The lines are retrieval queries: put the query instruction in front.
    pub queries: bool,
    /// One engine per device (several only as GPUs).
    pub devices: Vec<Device>,
    /// Weights and matrix arithmetic (f32, bf16, int8).
    pub dtype: crate::Dtype,
    /// Reading, checkpoints, resume, shards.
    pub run: RunOptions,
}

/// How a run ended, with what it did.
pub struct Outcome {
    /// What the run did.
    pub stats: Stats,
    /// Rows that an earlier run had written (`resume`).
    pub resumed_rows: u64,
    /// How it ended.
    pub end: End,
}

/// The end of a run.
pub enum End {
    /// Every row is written and the output renamed into place.
    Finished,
    /// Stopped by Ctrl-C, SIGTERM or [`RunOptions::cancel`]; finished rows are kept.
    Interrupted(Kept),
    /// A bad input line (rows before it are kept) or an engine or output failure.
    Failed {
        /// What went wrong.
        error: Error,
        /// The error is a bad input line (fix it, or skip such lines, and resume).
        bad_input: bool,
        /// Rows finished before it.
        kept: Kept,
    },
}

/// Finished rows kept in the partial output, for a later `resume`.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// Rows in the partial file.
    pub rows: u64,
    /// The partial file (`None` for a run without output).
    pub partial: Option<PathBuf>,
}

impl Kept {
    /// "; N finished rows are kept in FILE: ..." (empty when nothing is kept), for messages.
    pub fn note(&self, resume_hint: &str) -> String {
        match &self.partial {
            Some(partial) if self.rows > 0 => format!(
                "; {} finished rows are kept in {}: run again with {resume_hint} to continue",
                self.rows,
                partial.display()
            ),
            _ => String::new(),
        }
    }
}

/// A job ready to run: its output open (resumed where a journal said), the model loaded on
/// each device.
pub struct Started {
    plan: Plan,
    engines: Vec<Box<dyn Engine>>,
    output: Output,
    resumed_rows: u64,
}

impl Started {
    /// Rows an earlier run of the same job had written (`resume`); the run starts after them.
    pub fn resumed_rows(&self) -> u64 {
        self.resumed_rows
    }

    /// Runs the pipeline to its end.
    pub fn run(self) -> Outcome {
        finish(&self.plan, &self.engines, Some(self.output), self.resumed_rows)
    }
}

impl EncodeJob {
    /// [`EncodeJob::start`], then [`Started::run`].
    pub fn run(&self) -> Result<Outcome> {
        Ok(self.start()?.run())
    }

    /// Checks the options, opens the output and loads the model on each device. Bad options,
    /// an output journal of another job and model errors are `Err` here, before any work;
    /// what happens after the work starts is in the run's [`Outcome`].
    pub fn start(&self) -> Result<Started> {
        let format = OutputFormat::of(&self.output, self.output_format)?;
        self.check_output(format)?;
        let options = json!({
            "dimensions": self.dimensions,
            "calibration": self.calibration,
            "pooling": self.pooling.map(pooling_name),
            "normalize": self.normalize,
            "max_length": self.max_length,
            "query_instruction": self.query_instruction,
            "queries": self.queries,
            "format": format,
            "dtype": self.output_dtype,
            "compute_dtype": self.dtype.to_string(),
        });
        let print = fingerprint(
            "encode",
            &self.model,
            &self.input,
            &self.format,
            self.run.shard,
            options,
        );
        let (range, total) = line_range(&self.input, self.run.shard)?;
        // The output is opened before the model is resolved (perhaps downloaded) and loaded,
        // so that a clash with another job's journal is told at once.
        let (mut output, checkpoint) = Output::open(
            &self.output,
            format,
            self.output_dtype,
            RowKind::Embedding,
            &print,
            self.run.resume,
        )?;
        let model = crate::hub::resolve(&self.model)?;
        let instruction = match (&self.query_instruction, self.queries) {
            (Some(text), _) => Some(text.clone()),
            (None, true) => Some(default_query_instruction(&self.model, &model)?),
            (None, false) => None,
        };
        let mut engines: Vec<Box<dyn Engine>> = Vec::new();
        for &device in &self.devices {
            let options = EmbedderOptions {
                pooling: self.pooling,
                normalize: self.normalize,
                max_length: self.max_length,
                query_instruction: instruction.clone(),
                device,
                batch_tokens: self.run.batch_tokens,
            };
            let embedder = Embedder::load_with_dtype(&model, options, self.dtype)?;
            if let Some(d) = self.dimensions {
                crate::dims::check(d, embedder.dim())?;
            }
            engines.push(Box::new(EmbedEngine {
                embedder,
                queries: instruction.is_some(),
                dimensions: self.dimensions,
            }));
        }
        if let Some(path) = &self.calibration {
            output.set_ranges(crate::quantize::Ranges::from_npy(path, engines[0].cols())?);
        }
        let plan = plan(
            &self.input,
            self.format.clone(),
            &self.run,
            &engines,
            range,
            total,
            checkpoint,
            None,
        );
        Ok(Started {
            plan,
            engines,
            output,
            resumed_rows: checkpoint.rows,
        })
    }

    /// The output options that do not go together.
    fn check_output(&self, format: OutputFormat) -> Result<()> {
        if format == OutputFormat::Jsonl && self.output_dtype == Dtype::F16 {
            return Err(option("output-dtype", "f16 applies to .npy output only"));
        }
        if self.devices.is_empty() {
            return Err(option("device", "no device to run on"));
        }
        let ranged = self.output_dtype.precision().is_some_and(|p| p.needs_ranges());
        match (ranged, &self.calibration) {
            (true, None) => Err(option(
                "calibration",
                "int8 and uint8 need --calibration CAL.npy (`calibration=` from Python): float32 embeddings whose per-dimension range sets the buckets",
            )),
            (false, Some(_)) => Err(option("calibration", "applies to output dtype int8 or uint8 only")),
            _ => Ok(()),
        }
    }
}

fn option(name: &str, message: &str) -> Error {
    Error::Option {
        option: name.into(),
        message: message.into(),
    }
}

/// The pooling's name as the fingerprint and the options spell it.
pub fn pooling_name(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::Cls => "cls",
        Pooling::Mean => "mean",
    }
}

/// bge's retrieval instruction, for `queries` with a bge model (told by its name or folder).
pub fn default_query_instruction(spec: &str, dir: &Path) -> Result<String> {
    let name = format!("{spec} {}", dir.display()).to_lowercase();
    if name.contains("bge") && name.contains("-zh") {
        Ok(BGE_QUERY_INSTRUCTION_ZH.to_string())
    } else if name.contains("bge") {
        Ok(BGE_QUERY_INSTRUCTION_EN.to_string())
    } else {
        Err(option(
            "queries",
            &format!("{spec} has no known query instruction: give one (--query-instruction TEXT)"),
        ))
    }
}

/// `cpu`, `cuda`, `cuda:N`, `cuda:0,1` or `cuda:0,cuda:1`: one engine per listed device.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let mut devices = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let device = if !devices.is_empty() && !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()) {
            format!("cuda:{part}").parse::<Device>()?
        } else {
            part.parse::<Device>()?
        };
        if devices.contains(&device) {
            return Err(option("device", &format!("{device} is listed twice")));
        }
        devices.push(device);
    }
    if devices.len() > 1 && devices.contains(&Device::Cpu) {
        return Err(option(
            "device",
            "cpu runs one engine on all cores; list several devices only as cuda:0,1,...",
        ));
    }
    Ok(devices)
}

/// The lines of this run, and how many there are when the input is a file.
pub fn line_range(input: &Path, shard: Option<Shard>) -> Result<(LineRange, Option<u64>)> {
    let full = LineRange { start: 0, end: None };
    if input == Path::new("-") {
        return match shard {
            Some(_) => Err(option(
                "shard",
                "needs an input file (its lines are counted to cut the shards)",
            )),
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

/// What identifies a job for `resume`: an output journal from another job is refused. Every
/// choice is written by its name (never an enum's number), so that reordering a type does not
/// silently change what a journal means. The input's content is not part of it, so that a bad
/// line can be fixed (or `skip_invalid` added) before resuming; the lines before the
/// checkpoint must stay as they were.
pub fn fingerprint(
    command: &str,
    model: &str,
    input: &Path,
    format: &Format,
    shard: Option<Shard>,
    options: Value,
) -> String {
    let (input_format, text_field, id_field) = match format {
        Format::Text => ("text", None, None),
        Format::Jsonl { text_field, id_field } => ("jsonl", Some(text_field), id_field.as_ref()),
        Format::Pairs { id_field } => ("pairs", None, id_field.as_ref()),
    };
    json!({
        "ember": env!("CARGO_PKG_VERSION"),
        "command": command,
        "model": model,
        "input": input,
        "input_format": input_format,
        "text_field": text_field,
        "id_field": id_field,
        "shard": shard.map(|s| format!("{}/{}", s.index, s.count)),
        "options": options,
    })
    .to_string()
}

/// The pipeline's plan for `engines` over `range`, after what `checkpoint` says is done.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    input: &Path,
    format: Format,
    run: &RunOptions,
    engines: &[Box<dyn Engine>],
    range: LineRange,
    total: Option<u64>,
    checkpoint: Checkpoint,
    top_k: Option<usize>,
) -> Plan {
    Plan {
        input: input.to_path_buf(),
        format,
        range,
        done_lines: checkpoint.lines,
        skip_invalid: run.skip_invalid,
        batch_tokens: run
            .batch_tokens
            .unwrap_or_else(|| engines[0].encoder().default_batch_tokens()),
        window: run.window.max(1),
        checkpoint: run.checkpoint,
        total_lines: total,
        progress: run.progress,
        top_k,
        cancel: run.cancel.clone(),
    }
}

/// Runs the pipeline, then finishes the output, or keeps what is done for a later resume.
pub fn finish(
    plan: &Plan,
    engines: &[Box<dyn Engine>],
    mut output: Option<Output>,
    resumed_rows: u64,
) -> Outcome {
    let (stats, failure) = pipeline::run(plan, engines, &mut output);
    let keep = |output: Option<Output>| -> Result<Kept> {
        match output {
            Some(out) => {
                let partial = out.partial().to_path_buf();
                let rows = out.abandon()?;
                Ok(Kept {
                    rows,
                    partial: Some(partial),
                })
            }
            None => Ok(Kept::default()),
        }
    };
    let end = match failure {
        Some(failure) => {
            let (error, bad_input) = match failure {
                Failure::Fatal(e) => (e, false),
                Failure::Input(e) => (e, true),
            };
            // The run's own error first, even when keeping its rows fails too: it is the cause.
            let kept = keep(output).unwrap_or_default();
            End::Failed {
                error,
                bad_input,
                kept,
            }
        }
        None if stats.interrupted => match keep(output) {
            Ok(kept) => End::Interrupted(kept),
            Err(error) => End::Failed {
                error,
                bad_input: false,
                kept: Kept::default(),
            },
        },
        None => match output.map(|out| out.finish(engines[0].cols())).transpose() {
            Ok(_) => End::Finished,
            Err(error) => End::Failed {
                error,
                bad_input: false,
                kept: Kept::default(),
            },
        },
    };
    Outcome {
        stats,
        resumed_rows,
        end,
    }
}
