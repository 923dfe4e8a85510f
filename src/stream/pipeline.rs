//! The streaming pipeline behind `ember encode`, `ember rerank` and `ember bench`:
//!
//! ```text
//! reader thread ──windows of lines──▶ tokenizer thread (rayon, all cores; sorts each window by
//! length and packs it into batches under --batch-tokens) ──batches──▶ one worker per device
//! (the forward pass) ──rows──▶ writer (this thread: restores input order, writes, checkpoints)
//! ```
//!
//! Every channel is bounded, so memory holds a few windows whatever the input size. The reader
//! and the tokenizer run ahead of the forward pass; the writer never waits for more than the
//! window its next row belongs to.

use std::collections::{BTreeMap, BinaryHeap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::PendingMatrix;
use crate::{Batch, Embedder, Encoder, Error, HostMatrix, Reranker, Result, Sequence};
use serde_json::Value;

use super::input::{self, Format, Item, LineRange, Lines, Payload};
use super::output::Output;

/// Set by SIGINT / SIGTERM: the reader stops, what is finished is written and checkpointed.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// One model on one device, as the pipeline drives it.
pub trait Engine: Send + Sync {
    /// The token sequences of parsed lines (texts, or pairs for a cross-encoder).
    fn tokenize(&self, items: &[Item]) -> Result<Vec<Sequence>>;
    /// Packs sequences into one batch for the forward pass.
    fn pack(&self, sequences: &[&Sequence]) -> Result<Batch>;
    /// One row per sequence of the batch, in batch order.
    fn run(&self, batch: &Batch) -> Result<HostMatrix>;
    /// [`Engine::run`] without waiting for the rows: on a GPU the batch is queued and the rows
    /// come back while the next batch is started.
    fn start(&self, batch: &Batch) -> Result<PendingMatrix> {
        self.run(batch).map(PendingMatrix::ready)
    }
    /// Values per row.
    fn cols(&self) -> usize;
    /// The model on its device.
    fn encoder(&self) -> &Encoder;
}

/// Embeddings: one row of `dimensions` (or the model's width) values per text.
pub struct EmbedEngine {
    /// The model, with its pooling, normalization and max length.
    pub embedder: Embedder,
    /// Put the query instruction in front of each text.
    pub queries: bool,
    /// Keep the first N values of each embedding, renormalized (`--dimensions`).
    pub dimensions: Option<usize>,
}

/// The rows cut to `dimensions` (renormalized when `normalize`).
fn cut(matrix: HostMatrix, dimensions: Option<usize>, normalize: bool) -> HostMatrix {
    let Some(d) = dimensions else {
        return matrix;
    };
    let data = (0..matrix.rows)
        .flat_map(|r| crate::dims::truncate(matrix.row(r), d, normalize))
        .collect();
    HostMatrix {
        rows: matrix.rows,
        cols: d,
        data,
    }
}

impl Engine for EmbedEngine {
    fn tokenize(&self, items: &[Item]) -> Result<Vec<Sequence>> {
        let texts: Vec<&str> = items
            .iter()
            .map(|item| match &item.payload {
                Payload::Text(t) => t.as_str(),
                Payload::Pair(..) => unreachable!("the embedder reads texts"),
            })
            .collect();
        self.embedder.tokenize(&texts, self.queries)
    }

    fn pack(&self, sequences: &[&Sequence]) -> Result<Batch> {
        self.embedder.encoder().pack(sequences)
    }

    fn run(&self, batch: &Batch) -> Result<HostMatrix> {
        let e = &self.embedder;
        let rows = e.encoder().embed(batch, e.pooling(), e.normalize())?;
        Ok(cut(rows, self.dimensions, e.normalize()))
    }

    fn start(&self, batch: &Batch) -> Result<PendingMatrix> {
        let e = &self.embedder;
        let pending = e.encoder().embed_start(batch, e.pooling(), e.normalize())?;
        let (dimensions, normalize) = (self.dimensions, e.normalize());
        if dimensions.is_none() {
            return Ok(pending);
        }
        // Cut when the rows are back (a GPU keeps the next batch queued meanwhile).
        Ok(pending.map(move |rows| cut(rows, dimensions, normalize)))
    }

    fn cols(&self) -> usize {
        self.dimensions.unwrap_or(self.embedder.dim())
    }

    fn encoder(&self) -> &Encoder {
        self.embedder.encoder()
    }
}

/// Scores: one relevance score per query/passage pair.
pub struct RerankEngine {
    /// The cross-encoder (one label).
    pub reranker: Reranker,
    /// Map each logit to (0, 1) with a sigmoid.
    pub sigmoid: bool,
    /// `--query`: every line is a passage for this query.
    pub query: Option<String>,
}

impl Engine for RerankEngine {
    fn tokenize(&self, items: &[Item]) -> Result<Vec<Sequence>> {
        let pairs: Vec<(&str, &str)> = items
            .iter()
            .map(|item| match (&item.payload, &self.query) {
                (Payload::Pair(q, p), _) => (q.as_str(), p.as_str()),
                (Payload::Text(p), Some(q)) => (q.as_str(), p.as_str()),
                (Payload::Text(_), None) => unreachable!("passages come with --query"),
            })
            .collect();
        self.reranker.tokenize(&pairs)
    }

    fn pack(&self, sequences: &[&Sequence]) -> Result<Batch> {
        self.reranker.encoder().pack(sequences)
    }

    fn run(&self, batch: &Batch) -> Result<HostMatrix> {
        self.start(batch)?.wait()
    }

    fn start(&self, batch: &Batch) -> Result<PendingMatrix> {
        let logits = self.reranker.encoder().classify_start(batch)?;
        Ok(if self.sigmoid {
            logits.map(|mut m| {
                m.data.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
                m
            })
        } else {
            logits
        })
    }

    fn cols(&self) -> usize {
        1
    }

    fn encoder(&self) -> &Encoder {
        self.reranker.encoder()
    }
}

/// What to read and how to batch it.
pub struct Plan {
    /// The input file; `-` is standard input.
    pub input: PathBuf,
    /// How each line is read.
    pub format: Format,
    /// The lines of this run (all, or a shard).
    pub range: LineRange,
    /// Lines of the range already done by an earlier run (`--resume`).
    pub done_lines: u64,
    /// Skip lines that cannot be read (listed in [`Stats::skipped`]) instead of stopping.
    pub skip_invalid: bool,
    /// The most tokens in one forward pass.
    pub batch_tokens: usize,
    /// Texts per length-sorted window.
    pub window: usize,
    /// Seconds between checkpoints of the output.
    pub checkpoint: Duration,
    /// Lines the progress bar counts to, when known.
    pub total_lines: Option<u64>,
    /// Draw a progress bar on standard error.
    pub progress: bool,
    /// Keep the best K rows by score (rerank `--top-k`).
    pub top_k: Option<usize>,
    /// Set from another thread to stop as [`INTERRUPTED`] does, for this run only.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Plan {
    /// Whether the run is asked to stop (Ctrl-C, SIGTERM, or its own cancel flag).
    fn cancelled(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed) || self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Rows written (in input order, so the first `texts` lines of the range are done).
    pub texts: u64,
    /// Tokens through the forward pass, special tokens included.
    pub tokens: u64,
    /// Texts cut at the max length.
    pub truncated: u64,
    /// Line numbers skipped as unreadable (`skip_invalid`).
    pub skipped: Vec<u64>,
    /// Seconds of tokenizing and packing (overlapped with the forward pass).
    pub tokenize_s: f64,
    /// Seconds of forward passes, summed over the devices.
    ///
    /// Batches run side by side on the CPU count their group's time shared out among them.
    pub forward_s: f64,
    /// Seconds of ordering and writing rows.
    pub write_s: f64,
    /// Seconds from start to end.
    pub wall_s: f64,
    /// Stopped by Ctrl-C, SIGTERM or the plan's cancel flag before the end of the input.
    pub interrupted: bool,
    /// The smallest token budget a device ran out of memory into (batches were cut to it).
    pub token_budget: Option<usize>,
    /// The largest peak of device memory over the devices (GPU runs).
    pub peak_device_bytes: Option<usize>,
    /// Best rows by score: (score, line, id, passage), best first.
    pub top: Vec<(f32, u64, Option<Value>, String)>,
}

/// Per-row facts that travel with a batch to the writer.
struct RowMeta {
    row: u64,
    line: u64,
    id: Option<Value>,
    passage: Option<String>,
}

struct Work {
    rows: Vec<RowMeta>,
    batch: Batch,
    tokens: u64,
    truncated: u64,
}

struct Done {
    rows: Vec<RowMeta>,
    result: Result<HostMatrix>,
    tokens: u64,
    truncated: u64,
    seconds: f64,
}

enum Read {
    Window(Vec<Item>),
    Failed(Error),
}

/// A score with a total order, for the top-k heap (smallest first).
struct Ranked(f32, u64, Option<Value>, String);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the worst kept row; ties keep the earlier line.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

/// How a run ended when it did not finish.
pub enum Failure {
    /// A bad input line (or an I/O error reading the input): rows before it are written.
    Input(Error),
    /// The engine or the output failed.
    Fatal(Error),
}

/// Runs the pipeline, writing rows to `output` (or only ranking them, with no output). The
/// output is neither finished nor abandoned here: the caller decides from the outcome.
pub fn run(
    plan: &Plan,
    engines: &[Box<dyn Engine>],
    output: &mut Option<Output>,
) -> (Stats, Option<Failure>) {
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let input_error: Mutex<Option<Error>> = Mutex::new(None);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let skipped: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let interrupted = AtomicBool::new(false);
    let tokenize_s = Mutex::new(0.0f64);
    let mut stats = Stats::default();
    let keep_passages = plan.top_k.is_some();

    // On the CPU, the batches queued when a worker looks (up to one per thread of the pool)
    // run side by side, one per thread (`Encoder::runs_batches_side_by_side` says why).
    let side_by_side = match engines {
        [engine] if engine.encoder().runs_batches_side_by_side(usize::MAX) => rayon::current_num_threads(),
        _ => 1,
    };
    let queued = 2 * engines.len().max(side_by_side) + 2;
    std::thread::scope(|scope| {
        let (read_tx, read_rx) = sync_channel::<Read>(1);
        let (work_tx, work_rx) = sync_channel::<Work>(queued);
        let (done_tx, done_rx) = sync_channel::<Done>(queued);

        // Reader: lines → parsed items, in windows.
        let (stop_r, skipped_r, interrupted_r) = (&stop, &skipped, &interrupted);
        scope.spawn(move || {
            let result = read_windows(plan, stop_r, skipped_r, interrupted_r, |items| {
                read_tx.send(Read::Window(items)).is_ok()
            });
            if let Err(e) = result {
                let _ = read_tx.send(Read::Failed(e));
            }
        });

        // Tokenizer: windows → length-sorted packed batches.
        let first = &engines[0];
        let (input_error_t, fatal_t, stop_t, tokenize_t) = (&input_error, &fatal, &stop, &tokenize_s);
        scope.spawn(move || {
            let mut next_row = 0u64;
            for message in read_rx {
                let items = match message {
                    Read::Window(items) => items,
                    Read::Failed(e) => {
                        *input_error_t.lock().unwrap() = Some(e);
                        break;
                    }
                };
                let t = Instant::now();
                let sequences = match first.tokenize(&items) {
                    Ok(s) => s,
                    Err(e) => {
                        *fatal_t.lock().unwrap() = Some(e);
                        stop_t.store(true, Ordering::SeqCst);
                        break;
                    }
                };
                let lengths: Vec<usize> = sequences.iter().map(Sequence::len).collect();
                let planned = crate::batch::plan_batches(&lengths, plan.batch_tokens.max(1), usize::MAX);
                let mut items: Vec<Option<Item>> = items.into_iter().map(Some).collect();
                let mut works = Vec::with_capacity(planned.len());
                for members in planned {
                    let refs: Vec<&Sequence> = members.iter().map(|&i| &sequences[i]).collect();
                    let batch = match first.pack(&refs) {
                        Ok(b) => b,
                        Err(e) => {
                            *fatal_t.lock().unwrap() = Some(e);
                            stop_t.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    let rows = members
                        .iter()
                        .map(|&i| {
                            let item = items[i].take().expect("each item in one batch");
                            let passage = match item.payload {
                                Payload::Text(t) | Payload::Pair(_, t) if keep_passages => Some(t),
                                _ => None,
                            };
                            RowMeta {
                                row: next_row + i as u64,
                                line: item.line,
                                id: item.id,
                                passage,
                            }
                        })
                        .collect();
                    works.push(Work {
                        rows,
                        tokens: refs.iter().map(|s| s.len() as u64).sum(),
                        truncated: refs.iter().filter(|s| s.truncated).count() as u64,
                        batch,
                    });
                }
                next_row += items.len() as u64;
                *tokenize_t.lock().unwrap() += t.elapsed().as_secs_f64();
                for work in works {
                    if work_tx.send(work).is_err() {
                        return;
                    }
                }
            }
        });

        // The writer, on its own thread.
        let (stop_w, fatal_w, stats_w) = (&stop, &fatal, &mut stats);
        scope.spawn(move || write_in_order(plan, done_rx, output, stop_w, fatal_w, stats_w));

        // Workers: one per device, sharing the batch queue. The first runs on this thread, the
        // thread that loaded the model (as a bare forward-pass loop would).
        let work_rx = Arc::new(Mutex::new(work_rx));
        for engine in &engines[1..] {
            let (work_rx, done_tx) = (Arc::clone(&work_rx), done_tx.clone());
            scope.spawn(move || forward_loop(plan, engine.as_ref(), &work_rx, done_tx, 1));
        }
        forward_loop(plan, engines[0].as_ref(), &work_rx, done_tx, side_by_side);
        // Workers that stopped early (Ctrl-C) close the queue, so that the tokenizer and the
        // reader blocked on it end too.
        drop(work_rx);
    });

    stats.tokenize_s = *tokenize_s.lock().unwrap();
    stats.skipped = skipped.into_inner().unwrap();
    // A signal that arrived after the reader was done still means rows may be missing.
    stats.interrupted = interrupted.load(Ordering::SeqCst) || plan.cancelled();
    stats.wall_s = started.elapsed().as_secs_f64();
    stats.token_budget = engines.iter().filter_map(|e| e.encoder().token_budget()).min();
    stats.peak_device_bytes = engines
        .iter()
        .filter_map(|e| e.encoder().peak_device_bytes())
        .max();
    let failure = match (fatal.into_inner().unwrap(), input_error.into_inner().unwrap()) {
        (Some(e), _) => Some(Failure::Fatal(e)),
        (None, Some(e)) => Some(Failure::Input(e)),
        (None, None) => None,
    };
    (stats, failure)
}

/// Takes batches off the shared queue and runs them until the queue closes or the writer is
/// gone. One batch stays in flight: batch i + 1 is started before batch i's rows are waited
/// for, so that a GPU has the next batch queued while the rows of the last one come back.
/// With `side_by_side` > 1 (the CPU), the batches already queued, up to that many, run
/// together instead, a batch per thread of the pool.
fn forward_loop(
    plan: &Plan,
    engine: &dyn Engine,
    work_rx: &Mutex<Receiver<Work>>,
    done_tx: std::sync::mpsc::SyncSender<Done>,
    side_by_side: usize,
) {
    let finish = |work: Work, pending: Result<PendingMatrix>, started: Instant| Done {
        rows: work.rows,
        result: pending.and_then(PendingMatrix::wait),
        tokens: work.tokens,
        truncated: work.truncated,
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut in_flight: Option<(Work, Result<PendingMatrix>, Instant)> = None;
    loop {
        let work = match work_rx.lock().unwrap().recv() {
            Ok(w) => w,
            Err(_) => break,
        };
        // After Ctrl-C no new batch starts: the writer keeps the rows that are complete in
        // input order, and the rest is left to --resume.
        if plan.cancelled() {
            break;
        }
        if side_by_side > 1 {
            let mut group = vec![work];
            let queue = work_rx.lock().unwrap();
            while group.len() < side_by_side {
                match queue.try_recv() {
                    Ok(work) => group.push(work),
                    Err(_) => break,
                }
            }
            drop(queue);
            if !run_side_by_side(engine, group, &done_tx) {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let pending = engine.start(&work.batch);
        if let Some((previous, result, t)) = in_flight.replace((work, pending, started)) {
            if done_tx.send(finish(previous, result, t)).is_err() {
                return;
            }
        }
    }
    if let Some((work, result, t)) = in_flight {
        let _ = done_tx.send(finish(work, result, t));
    }
}

/// Runs `group`'s batches as one parallel job on the rayon pool, one task per batch: the pool's
/// threads take a batch each (a task that rayon shares out before the batches' own ops), and
/// a thread left without one helps with the ops of the others. Each batch's rows go to `done`
/// in the group's order; false when the writer is gone.
fn run_side_by_side(engine: &dyn Engine, group: Vec<Work>, done: &std::sync::mpsc::SyncSender<Done>) -> bool {
    use rayon::prelude::*;
    let started = Instant::now();
    let results: Vec<Result<crate::HostMatrix>> = group
        .par_iter()
        .with_max_len(1)
        .map(|work| engine.run(&work.batch))
        .collect();
    let seconds = started.elapsed().as_secs_f64() / group.len() as f64;
    group.into_iter().zip(results).all(|(work, result)| {
        done.send(Done {
            rows: work.rows,
            result,
            tokens: work.tokens,
            truncated: work.truncated,
            seconds,
        })
        .is_ok()
    })
}

/// Reads the plan's lines into windows of items, handing each to `send` (false: stop).
fn read_windows(
    plan: &Plan,
    stop: &AtomicBool,
    skipped: &Mutex<Vec<u64>>,
    interrupted: &AtomicBool,
    mut send: impl FnMut(Vec<Item>) -> bool,
) -> Result<()> {
    let mut lines = Lines::new(input::open(&plan.input)?, &plan.input);
    let first = plan.range.start + plan.done_lines;
    let mut window = Vec::with_capacity(plan.window);
    while let Some((number, bytes)) = lines.next_line()? {
        let index = number - 1;
        if index < first {
            continue;
        }
        if plan.range.end.is_some_and(|end| index >= end) {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if plan.cancelled() {
            interrupted.store(true, Ordering::SeqCst);
            break;
        }
        match input::parse(&plan.format, &plan.input, number, bytes) {
            Ok(item) => window.push(item),
            Err(_) if plan.skip_invalid => skipped.lock().unwrap().push(number),
            // The window of the bad line is dropped: rows of earlier windows are computed and
            // written (and kept for --resume); nothing is computed after the error.
            Err(e) => return Err(e),
        }
        if window.len() >= plan.window
            && !send(std::mem::replace(&mut window, Vec::with_capacity(plan.window)))
        {
            return Ok(());
        }
    }
    if !window.is_empty() {
        send(window);
    }
    Ok(())
}

/// The writer: puts rows back in input order, writes them, checkpoints, ranks, shows progress.
fn write_in_order(
    plan: &Plan,
    done_rx: Receiver<Done>,
    output: &mut Option<Output>,
    stop: &AtomicBool,
    fatal: &Mutex<Option<Error>>,
    stats: &mut Stats,
) {
    let bar = plan.progress.then(|| progress_bar(plan));
    let mut pending: BTreeMap<u64, (RowMeta, Vec<f32>)> = BTreeMap::new();
    let mut next_row = 0u64;
    // Rows out of the forward pass; the bar counts these (rows are written window by window).
    let mut computed = 0u64;
    let mut top: BinaryHeap<Ranked> = BinaryHeap::new();
    let mut last_checkpoint = Instant::now();
    let started = Instant::now();
    let mut failed = false;
    let fail = |e: Error, failed: &mut bool| {
        let mut slot = fatal.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
        stop.store(true, Ordering::SeqCst);
        *failed = true;
    };
    for done in done_rx {
        if failed {
            continue;
        }
        let matrix = match done.result {
            Ok(m) => m,
            Err(e) => {
                fail(e, &mut failed);
                continue;
            }
        };
        stats.forward_s += done.seconds;
        stats.tokens += done.tokens;
        stats.truncated += done.truncated;
        computed += done.rows.len() as u64;
        let t = Instant::now();
        for (j, meta) in done.rows.into_iter().enumerate() {
            pending.insert(meta.row, (meta, matrix.row(j).to_vec()));
        }
        while let Some((meta, values)) = pending.remove(&next_row) {
            next_row += 1;
            if let Some(out) = output.as_mut() {
                let lines = meta.line - plan.range.start;
                if let Err(e) = out.write_row(meta.id.as_ref(), &values, lines) {
                    fail(e, &mut failed);
                    break;
                }
            }
            if let Some(k) = plan.top_k {
                top.push(Ranked(
                    values[0],
                    meta.line,
                    meta.id,
                    meta.passage.unwrap_or_default(),
                ));
                if top.len() > k {
                    top.pop();
                }
            }
        }
        stats.texts = next_row;
        if !failed && last_checkpoint.elapsed() >= plan.checkpoint {
            if let Some(out) = output.as_mut() {
                if let Err(e) = out.commit() {
                    fail(e, &mut failed);
                }
            }
            last_checkpoint = Instant::now();
        }
        stats.write_s += t.elapsed().as_secs_f64();
        if let Some(bar) = &bar {
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(computed);
            bar.set_message(format!(
                "{:.0} texts/s, {:.0} tokens/s",
                computed as f64 / seconds,
                stats.tokens as f64 / seconds
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut top: Vec<Ranked> = top.into_vec();
    top.sort();
    stats.top = top.into_iter().map(|Ranked(s, l, id, p)| (s, l, id, p)).collect();
}

fn progress_bar(plan: &Plan) -> indicatif::ProgressBar {
    let bar = match plan.total_lines {
        Some(total) => indicatif::ProgressBar::new(total.saturating_sub(plan.done_lines)).with_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} texts, {msg}, ETA {eta}")
                .expect("a valid template"),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} texts, {msg}")
                .expect("a valid template"),
        ),
    };
    bar.set_message("starting");
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// Whether a progress bar belongs on standard error.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
