//! The dynamic batcher: requests from many clients wait in one queue; one worker thread per
//! device takes them in arrival order and packs their sequences together under the token
//! budget. A request's sequences may span several forward passes, and several requests share
//! one; each request is answered as soon as its own rows are done, not when its batch-mates are.
//!
//! Packing counts real tokens, not texts: ember's batches have no padding, so a long text costs
//! its own length and nothing more to the short texts beside it. The length-awareness that a
//! padded engine needs (sorting to limit padding) buys nothing here; arrival order keeps the
//! latency of early requests lowest.
//!
//! A request whose client went away (its reply receiver dropped) is removed before each pass,
//! so it does not take places in later batches.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::{Embedder, Encoder, HostMatrix, Reranker, Sequence};

/// What a request asks of the forward pass. Requests of one kind only share a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Pooled embeddings, L2-normalized or not.
    Embed { normalize: bool },
    /// The classifier head's logits (rerank, predict).
    Classify,
}

/// The model a worker drives, on its device.
pub enum Loaded {
    Embedder(Embedder),
    Reranker(Reranker),
}

impl Loaded {
    pub fn encoder(&self) -> &Encoder {
        match self {
            Loaded::Embedder(e) => e.encoder(),
            Loaded::Reranker(r) => r.encoder(),
        }
    }

    pub fn tokenizer(&self) -> &crate::tokenize::TextTokenizer {
        match self {
            Loaded::Embedder(e) => e.tokenizer(),
            Loaded::Reranker(r) => r.tokenizer(),
        }
    }

    pub fn max_length(&self) -> usize {
        match self {
            Loaded::Embedder(e) => e.max_length(),
            Loaded::Reranker(r) => r.max_length(),
        }
    }

    /// Runs one packed batch: one row per sequence.
    fn run(&self, task: Task, batch: &crate::Batch) -> crate::Result<HostMatrix> {
        match (self, task) {
            (Loaded::Embedder(e), Task::Embed { normalize }) => {
                e.encoder().embed(batch, e.pooling(), normalize)
            }
            (Loaded::Reranker(r), Task::Classify) => r.encoder().classify(batch),
            _ => Err(crate::Error::Option {
                option: "model".into(),
                message: "this route needs the other kind of model (embedder or cross-encoder)".into(),
            }),
        }
    }
}

/// The rows of one request, or why the forward pass failed.
pub type Reply = Result<HostMatrix, String>;

/// One request in the queue.
pub struct Job {
    pub sequences: Vec<Sequence>,
    pub task: Task,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Reply>,
}

/// A job a worker has taken, with the rows computed so far.
struct Active {
    job: Job,
    /// Sequences sent to the forward pass so far.
    next: usize,
    /// Rows received so far, row-major; `cols` known from the first pass.
    rows: Vec<f32>,
    cols: usize,
}

/// The shared queue. Its length is bounded by the server's admission limit
/// (`--max-concurrent-requests`), not here: a request is queued only once admitted.
pub struct Batcher {
    queue: Mutex<Queue>,
    wake: Condvar,
    metrics: Arc<Metrics>,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Batcher {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Batcher> {
        Arc::new(Batcher {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            metrics,
        })
    }

    pub fn submit(&self, job: Job) {
        self.queue.lock().unwrap().jobs.push_back(job);
        self.wake.notify_one();
    }

    /// No more jobs will come: workers finish what is queued, then return.
    pub fn close(&self) {
        self.queue.lock().unwrap().closed = true;
        self.wake.notify_all();
    }

    /// Starts one worker thread per loaded model. Each returns once the queue is closed and
    /// everything it took is answered.
    pub fn start_workers(
        self: &Arc<Self>,
        models: Arc<Vec<Loaded>>,
        budget: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..models.len())
            .map(|i| {
                let (batcher, models) = (Arc::clone(self), Arc::clone(&models));
                std::thread::Builder::new()
                    .name(format!("ember-worker-{i}"))
                    .spawn(move || batcher.work(&models[i], budget.max(1)))
                    .expect("spawning a worker thread")
            })
            .collect()
    }

    /// Takes queued jobs while the tokens this worker holds are under two batches' worth (so
    /// that other devices get work too); waits when it holds none.
    fn take(&self, active: &mut VecDeque<Active>, budget: usize) -> bool {
        let mut queue = self.queue.lock().unwrap();
        loop {
            let mut held: usize = active.iter().map(pending_tokens).sum();
            while held < 2 * budget {
                let Some(job) = queue.jobs.pop_front() else { break };
                self.metrics
                    .queue_seconds
                    .observe(job.enqueued.elapsed().as_secs_f64());
                let active_job = Active {
                    job,
                    next: 0,
                    rows: Vec::new(),
                    cols: 0,
                };
                held += pending_tokens(&active_job);
                active.push_back(active_job);
            }
            if !active.is_empty() {
                return true;
            }
            if queue.closed {
                return false;
            }
            queue = self.wake.wait(queue).unwrap();
        }
    }

    fn work(&self, model: &Loaded, budget: usize) {
        let mut active: VecDeque<Active> = VecDeque::new();
        while self.take(&mut active, budget) {
            // A client that disconnected frees its place.
            active.retain(|a| !a.job.reply.is_closed());
            let Some(task) = active.front().map(|a| a.job.task) else {
                continue;
            };
            // (job index, first sequence, count) per job in this pass, oldest job first.
            let mut picks: Vec<(usize, usize, usize)> = Vec::new();
            let mut tokens = 0usize;
            'fill: for (j, a) in active.iter().enumerate() {
                if a.job.task != task {
                    continue;
                }
                let mut count = 0;
                for s in &a.job.sequences[a.next..] {
                    if tokens + s.len() > budget && (tokens > 0 || count > 0) {
                        if count > 0 {
                            picks.push((j, a.next, count));
                        }
                        break 'fill;
                    }
                    tokens += s.len();
                    count += 1;
                }
                if count > 0 {
                    picks.push((j, a.next, count));
                }
            }
            let refs: Vec<&Sequence> = picks
                .iter()
                .flat_map(|&(j, first, count)| active[j].job.sequences[first..first + count].iter())
                .collect();
            if refs.is_empty() {
                // Only empty jobs: nothing to run, they are answered below.
                drop(refs);
                answer_finished(&mut active);
                continue;
            }
            let started = Instant::now();
            let result = model
                .encoder()
                .pack(&refs)
                .and_then(|batch| model.run(task, &batch));
            self.metrics
                .inference_seconds
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(refs.len() as f64);
            self.metrics.batch_tokens.observe(tokens as f64);
            match result {
                Ok(matrix) => {
                    let mut row = 0;
                    for &(j, _, count) in &picks {
                        let a = &mut active[j];
                        a.cols = matrix.cols;
                        a.rows
                            .extend_from_slice(&matrix.data[row * matrix.cols..(row + count) * matrix.cols]);
                        a.next += count;
                        row += count;
                    }
                }
                Err(e) => {
                    // Every request in the failed pass gets the error; the others go on.
                    let message = e.to_string();
                    let failed: Vec<usize> = picks.iter().map(|p| p.0).collect();
                    for j in failed.into_iter().rev() {
                        if let Some(a) = active.remove(j) {
                            let _ = a.job.reply.send(Err(message.clone()));
                        }
                    }
                    continue;
                }
            }
            answer_finished(&mut active);
        }
    }
}

/// Answers every job whose rows are all here, keeping the others in order.
fn answer_finished(active: &mut VecDeque<Active>) {
    let mut still = VecDeque::with_capacity(active.len());
    for a in active.drain(..) {
        if a.next >= a.job.sequences.len() {
            let rows = a.job.sequences.len();
            let _ = a.job.reply.send(Ok(HostMatrix {
                rows,
                cols: a.cols,
                data: a.rows,
            }));
        } else {
            still.push_back(a);
        }
    }
    *active = still;
}

fn pending_tokens(a: &Active) -> usize {
    a.job
        .sequences
        .get(a.next..)
        .map_or(0, |s| s.iter().map(Sequence::len).sum())
}
