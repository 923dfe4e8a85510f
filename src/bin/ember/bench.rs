//! `ember bench`: throughput on a synthetic corpus, with the time split between tokenize,
//! forward and write, and the whole streaming pipeline measured beside the bare forward pass on
//! the same batches (the pipeline's overhead is what it loses against that pass).

use std::time::{Duration, Instant};

use ember::{Embedder, EmbedderOptions, HostMatrix, Result, Sequence};

use crate::RunArgs;
use ember::stream::input::{self, Format, LineRange};
use ember::stream::output::{Dtype, Output, OutputFormat, RowKind};
use ember::stream::pipeline::{self, EmbedEngine, Engine, Plan};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model folder or Hugging Face hub id (an embedding model).
    #[arg(long)]
    model: String,
    /// Texts in the synthetic corpus.
    #[arg(long, default_value_t = 1024)]
    texts: usize,
    /// Median words per text of the log-normal length mix.
    #[arg(long, default_value_t = 40.0)]
    median_words: f64,
    /// Spread (sigma of the log) of the length mix.
    #[arg(long, default_value_t = 0.7)]
    sigma: f64,
    /// Fixed word counts instead of the log-normal mix, cycled: e.g. 8,32,128.
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Use this file's lines (e.g. the corpus a peer is timed on) instead of a synthetic corpus.
    #[arg(long)]
    corpus: Option<std::path::PathBuf>,
    /// Rounds of (bare forward, whole pipeline), alternated; the best of each is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Texts per length-sorted window (as `ember encode --window`).
    #[arg(long, default_value_t = 4096)]
    window: usize,
    #[command(flatten)]
    run: RunArgs,
}

const WORDS: &str = "the of and to in is was for on that with as by at from his her it an were are which \
this be or has had not first one their its new after but who they have been two she he also other city year \
world time people government university school company music film team season system water history state \
national between during where when while under most many more used known called later several because series \
three north south river church war family energy language research model data network protein cell market \
price early modern ancient village population district region museum library engine vaccine immune computer \
software algorithm theory physics chemistry biology medicine patient hospital climate ocean forest mountain \
island coast harbor railway station airport bridge tower castle temple garden";

/// A small deterministic generator (splitmix64), so that a seed names a corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Texts of log-normal word counts (or the given counts, cycled), words from a fixed list.
pub fn corpus(
    texts: usize,
    median_words: f64,
    sigma: f64,
    lengths: Option<&[usize]>,
    seed: u64,
) -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng(seed);
    (0..texts)
        .map(|i| {
            let n = match lengths {
                Some(l) if !l.is_empty() => l[i % l.len()].max(1),
                _ => ((median_words.ln() + sigma * rng.normal()).exp().round() as usize).clamp(1, 400),
            };
            let mut text: Vec<&str> = (0..n).map(|_| words[rng.next() as usize % words.len()]).collect();
            let first = text[0].to_string();
            let mut s = first[..1].to_uppercase() + &first[1..];
            text[0] = "";
            for w in &text[1..] {
                s.push(' ');
                s.push_str(w);
            }
            s.push('.');
            s
        })
        .collect()
}

pub fn bench(args: BenchArgs) -> Result<()> {
    crate::set_threads(args.run.threads)?;
    let devices = crate::parse_devices(&args.run.device)?;
    let model = crate::model_dir(&args.model)?;
    let load = Instant::now();
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    for &device in &devices {
        let embedder = Embedder::load_with_dtype(
            &model,
            EmbedderOptions {
                device,
                batch_tokens: args.run.batch_tokens,
                ..EmbedderOptions::default()
            },
            args.run.dtype.parse()?,
        )?;
        engines.push(Box::new(EmbedEngine {
            embedder,
            queries: false,
            dimensions: None,
        }));
    }
    let load_s = load.elapsed().as_secs_f64();
    let batch_tokens = args
        .run
        .batch_tokens
        .unwrap_or_else(|| engines[0].encoder().default_batch_tokens());
    let texts = match &args.corpus {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| ember::Error::io(path, e))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => corpus(
            args.texts,
            args.median_words,
            args.sigma,
            args.lengths.as_deref(),
            args.seed,
        ),
    };
    let dir = std::env::temp_dir().join(format!("ember-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ember::Error::io(&dir, e))?;
    let corpus_path = dir.join("corpus.txt");
    std::fs::write(
        &corpus_path,
        texts.iter().map(|t| format!("{t}\n")).collect::<String>(),
    )
    .map_err(|e| ember::Error::io(&corpus_path, e))?;
    let engine = &engines[0];
    let items: Vec<input::Item> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| input::Item {
            line: i as u64 + 1,
            id: None,
            payload: input::Payload::Text(t.clone()),
        })
        .collect();

    // Tokenize: every text, on all cores, in the pipeline's windows.
    let t = Instant::now();
    let windows: Vec<Vec<Sequence>> = items
        .chunks(args.window.max(1))
        .map(|w| engine.tokenize(w))
        .collect::<Result<_>>()?;
    let tokenize_s = t.elapsed().as_secs_f64();
    let tokens: usize = windows.iter().flatten().map(Sequence::len).sum();
    let batches: Vec<ember::Batch> = windows
        .iter()
        .flat_map(|w| {
            let lengths: Vec<usize> = w.iter().map(Sequence::len).collect();
            ember::batch::plan_batches(&lengths, batch_tokens.max(1), usize::MAX)
                .into_iter()
                .map(move |members| members.iter().map(|&i| &w[i]).collect::<Vec<_>>())
        })
        .map(|refs| engine.pack(&refs))
        .collect::<Result<_>>()?;

    let mut forward_best = f64::INFINITY;
    let mut pipeline_best: Option<pipeline::Stats> = None;
    let mut rounds: Vec<(f64, f64)> = Vec::new();
    let mut peak_after_first_round = None;
    let mut write_s = 0.0;
    let out_path = dir.join("out.npy");
    for round in 0..args.repeat.max(1) {
        // The bare forward pass over the pipeline's batches, outputs kept as the writer would;
        // then write alone: the same rows into a .npy.
        let mut bare = || -> Result<f64> {
            let t = Instant::now();
            // As the pipeline runs them: side by side, a batch per thread, on the CPU.
            let rows: Vec<HostMatrix> = if engine.encoder().runs_batches_side_by_side(batches.len()) {
                use rayon::prelude::*;
                batches
                    .par_iter()
                    .with_max_len(1)
                    .map(|b| engine.run(b))
                    .collect::<Result<_>>()?
            } else {
                batches.iter().map(|b| engine.run(b)).collect::<Result<_>>()?
            };
            let forward_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let (mut out, _) = Output::open(
                &dir.join("write.npy"),
                OutputFormat::Npy,
                Dtype::F32,
                RowKind::Embedding,
                "bench",
                false,
            )?;
            for m in &rows {
                for r in 0..m.rows {
                    out.write_row(None, m.row(r), 0)?;
                }
            }
            out.finish(engine.cols())?;
            write_s = t.elapsed().as_secs_f64();
            Ok(forward_s)
        };
        // The whole pipeline, file to file.
        let whole = || -> Result<pipeline::Stats> {
            let plan = Plan {
                input: corpus_path.clone(),
                format: Format::Text,
                range: LineRange { start: 0, end: None },
                done_lines: 0,
                skip_invalid: false,
                batch_tokens,
                window: args.window.max(1),
                checkpoint: Duration::from_secs(2),
                total_lines: None,
                progress: false,
                top_k: None,
                cancel: None,
            };
            let (out, _) = Output::open(
                &out_path,
                OutputFormat::Npy,
                Dtype::F32,
                RowKind::Embedding,
                "bench",
                false,
            )?;
            let mut output = Some(out);
            let (stats, failure) = pipeline::run(&plan, &engines, &mut output);
            match failure {
                Some(pipeline::Failure::Fatal(e) | pipeline::Failure::Input(e)) => Err(e),
                None => {
                    output.take().expect("still open").finish(engine.cols())?;
                    Ok(stats)
                }
            }
        };
        // Alternate which goes first, so that a drift in machine load hits both alike.
        let (forward_s, stats) = if round % 2 == 0 {
            let f = bare()?;
            (f, whole()?)
        } else {
            let p = whole()?;
            (bare()?, p)
        };
        eprintln!(
            "round {}: bare forward {forward_s:.3} s, pipeline {:.3} s ({:.1} %)",
            round + 1,
            stats.wall_s,
            100.0 * forward_s / stats.wall_s
        );
        rounds.push((forward_s, stats.wall_s));
        if round == 0 {
            peak_after_first_round = engine.encoder().peak_device_bytes();
        }
        forward_best = forward_best.min(forward_s);
        if pipeline_best.as_ref().is_none_or(|b| stats.wall_s < b.wall_s) {
            pipeline_best = Some(stats);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let p = pipeline_best.expect("at least one round");
    let tps = |s: f64| tokens as f64 / s.max(1e-9);
    if !args.run.quiet {
        println!(
            "ember bench: {} ({}), {} texts, {tokens} tokens ({:.1} per text), batch {} tokens, {} threads, load {load_s:.2} s",
            model.display(),
            devices.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            texts.len(),
            tokens as f64 / texts.len().max(1) as f64,
            batch_tokens,
            rayon::current_num_threads(),
        );
    }
    println!("| stage | seconds | tokens/s | texts/s |");
    println!("| --- | ---: | ---: | ---: |");
    let row = |name: &str, s: f64| {
        println!(
            "| {name} | {s:.3} | {:.0} | {:.0} |",
            tps(s),
            texts.len() as f64 / s.max(1e-9)
        )
    };
    row("tokenize (alone, all cores)", tokenize_s);
    row("forward (bare, same batches)", forward_best);
    row("write (.npy, alone)", write_s);
    row("pipeline (file to file, end to end)", p.wall_s);
    let mut ratios: Vec<f64> = rounds.iter().map(|(f, p)| f / p).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "pipeline / bare forward: {:.1} % best vs best, {:.1} % median of {} alternated rounds \
         (inside the best pipeline run: tokenize {:.3} s, forward {:.3} s, write {:.3} s, overlapped)",
        100.0 * forward_best / p.wall_s,
        100.0 * ratios[ratios.len() / 2],
        ratios.len(),
        p.tokenize_s,
        p.forward_s,
        p.write_s
    );
    if let (Some(first), Some(last)) = (peak_after_first_round, engine.encoder().peak_device_bytes()) {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "peak device memory: {:.1} MiB after the first round, {:.1} MiB after the last",
            mib(first),
            mib(last)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus_is_deterministic_and_log_normal_around_the_median() {
        let a = super::corpus(2001, 40.0, 0.7, None, 7);
        assert_eq!(a, super::corpus(2001, 40.0, 0.7, None, 7));
        let mut words: Vec<usize> = a.iter().map(|t| t.split(' ').count()).collect();
        words.sort();
        assert!((34..=46).contains(&words[1000]), "median {}", words[1000]);
        let fixed = super::corpus(3, 0.0, 0.0, Some(&[2, 5]), 1);
        assert_eq!(
            fixed.iter().map(|t| t.split(' ').count()).collect::<Vec<_>>(),
            [2, 5, 2]
        );
    }
}
