//! The `ember` command line: `ember encode` (texts → .npy embeddings) and `ember rerank`
//! (query/passage pairs → scores). Outputs are written to a temporary file beside the target and
//! renamed into place when complete, so a partial output can never be mistaken for a finished one.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use ember::{Device, Embedder, EmbedderOptions, Error, Pooling, Reranker, RerankerOptions, Result, Sequence};

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
    /// Embed one text per input line into a float32 .npy of shape (texts, dim), in input order.
    Encode(EncodeArgs),
    /// Score {"query": ..., "passage": ...} lines with a cross-encoder; one {"score": x} per line.
    Rerank(RerankArgs),
}

#[derive(clap::Args)]
struct EncodeArgs {
    /// Model folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Input text file, one text per line; `-` reads standard input.
    #[arg(long)]
    input: PathBuf,
    /// Output .npy file.
    #[arg(long)]
    output: PathBuf,
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
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RerankArgs {
    /// Cross-encoder model folder.
    #[arg(long)]
    model: PathBuf,
    /// JSONL input, one {"query": ..., "passage": ...} per line; `-` reads standard input.
    #[arg(long)]
    input: PathBuf,
    /// JSONL output, one {"score": x} per input line.
    #[arg(long)]
    output: PathBuf,
    /// Map scores to (0, 1) with a sigmoid.
    #[arg(long)]
    sigmoid: bool,
    /// Longest pair in tokens, special tokens included; passages are cut first.
    #[arg(long)]
    max_length: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The most tokens in one forward pass.
    #[arg(long, default_value_t = ember::embedder::DEFAULT_BATCH_TOKENS)]
    batch_tokens: usize,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    Cls,
    Mean,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Encode(args) => encode(args),
        Command::Rerank(args) => rerank(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn encode(args: EncodeArgs) -> Result<()> {
    let started = Instant::now();
    let output = AtomicOutput::create(&args.output)?;
    let texts = read_lines(&args.input)?;
    let embedder = Embedder::load(
        &args.model,
        EmbedderOptions {
            pooling: args.pooling.map(|p| match p {
                PoolingArg::Cls => Pooling::Cls,
                PoolingArg::Mean => Pooling::Mean,
            }),
            normalize: args.no_normalize.then_some(false),
            max_length: args.max_length,
            query_instruction: args.query_instruction.clone(),
            device: args.run.device.parse::<Device>()?,
            batch_tokens: args.run.batch_tokens,
        },
    )?;
    let sequences = embedder.tokenize(&texts, args.query_instruction.is_some())?;
    let embeddings = embedder.embed_sequences(&sequences)?;
    output.finish(|w| ember::npy::write_f32(w, embeddings.rows, embeddings.cols, &embeddings.data))?;
    summary(args.run.quiet, &sequences, started);
    Ok(())
}

fn rerank(args: RerankArgs) -> Result<()> {
    let started = Instant::now();
    let output = AtomicOutput::create(&args.output)?;
    let pairs = read_lines(&args.input)?
        .iter()
        .enumerate()
        .map(|(i, line)| parse_pair(line, i + 1, &args.input))
        .collect::<Result<Vec<_>>>()?;
    let reranker = Reranker::load(
        &args.model,
        RerankerOptions {
            max_length: args.max_length,
            device: args.run.device.parse::<Device>()?,
            batch_tokens: args.run.batch_tokens,
        },
    )?;
    let sequences = reranker.tokenize(&pairs)?;
    let scores = reranker.scores_of(&sequences, args.sigmoid)?;
    output.finish(|w| {
        for score in &scores {
            writeln!(w, "{}", serde_json::json!({ "score": score }))?;
        }
        Ok(())
    })?;
    summary(args.run.quiet, &sequences, started);
    Ok(())
}

fn parse_pair(line: &str, number: usize, input: &Path) -> Result<(String, String)> {
    let location = || format!("{} line {number}", input.display());
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::input(location(), format!("not JSON: {e}")))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::input(location(), format!("needs a string field `{name}`")))
    };
    Ok((field("query")?, field("passage")?))
}

/// One text per line; `\r\n` endings are accepted, and a final newline does not add an empty
/// text. Invalid UTF-8 is an error that names the line.
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("<stdin>", e))?;
    } else {
        bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    }
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            String::from_utf8(line.to_vec()).map_err(|e| {
                Error::input(
                    format!("{} line {}", path.display(), i + 1),
                    format!("invalid UTF-8: {e}"),
                )
            })
        })
        .collect()
}

fn summary(quiet: bool, sequences: &[Sequence], started: Instant) {
    if quiet {
        return;
    }
    let tokens: usize = sequences.iter().map(Sequence::len).sum();
    let truncated = sequences.iter().filter(|s| s.truncated).count();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "ember: {} texts, {tokens} tokens, {seconds:.2} s, {:.0} tokens/s, {truncated} truncated",
        sequences.len(),
        tokens as f64 / seconds.max(1e-9)
    );
}

/// An output written beside its final path and renamed into place only when complete. The
/// temporary file is created first, so an unwritable output fails before any compute.
struct AtomicOutput {
    target: PathBuf,
    partial: PathBuf,
    file: File,
}

impl AtomicOutput {
    fn create(target: &Path) -> Result<AtomicOutput> {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = target.with_file_name(name);
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(AtomicOutput {
            target: target.to_path_buf(),
            partial,
            file,
        })
    }

    fn finish(self, write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>) -> Result<()> {
        let io = |e| Error::io(&self.partial, e);
        let mut writer = BufWriter::new(&self.file);
        write(&mut writer).map_err(io)?;
        writer.flush().map_err(io)?;
        drop(writer);
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.partial, &self.target).map_err(|e| Error::io(&self.target, e))
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        // After a successful rename the partial path no longer exists; after a failure the
        // partial file is removed so that nothing half-written is left behind.
        let _ = std::fs::remove_file(&self.partial);
    }
}
