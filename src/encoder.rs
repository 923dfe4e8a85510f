//! The low-level engine: a model on a device, fed packed batches of token ids. `Embedder` and
//! `Reranker` sit on top of it; programs that tokenize for themselves use it directly.
//!
//! The model is generic over the backend; `Encoder` hides which one behind an object-safe trait
//! so that the device is a run-time choice and callers need no generics and no `cfg`.
//!
//! Out of memory: when a batch's activations do not fit on the device, the encoder halves the
//! batch (by sequences) and runs the halves, and lowers its token budget so that later batches
//! are cut before they are tried. Rows do not depend on batch composition, so the results are
//! the same as if the batch had fitted. Only a single sequence that does not fit is an error.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::cpu::CpuBackend;
pub use crate::backend::Dtype;
use crate::backend::{Backend, HostMatrix, PendingMatrix, Pooling};
use crate::batch::{Batch, Sequence};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::weights::{StoredDtype, Weights};

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host's cores, on the caller's rayon pool.
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Device> {
        let bad = || Error::Option {
            option: "device".into(),
            message: format!("`{s}` is not a device (cpu, cuda, cuda:N)"),
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The devices this build of ember can run on.
pub fn compiled_devices() -> &'static [&'static str] {
    if cfg!(feature = "cuda") {
        &["cpu", "cuda"]
    } else {
        &["cpu"]
    }
}

/// What `ember info --device cuda:N` prints about GPU `ordinal`: "key, value" pairs (the GPU,
/// its driver, which GEMM `linear` runs there and why, and how long opening it took, kernel
/// loading and JIT compilation included). Opens the GPU, which decides its GEMM path (on Hopper,
/// the sm90 GEMM's self-check runs). An error when the GPU cannot be used, or in a build without
/// the CUDA backend.
pub fn describe_gpu(ordinal: usize) -> Result<Vec<(&'static str, String)>> {
    #[cfg(feature = "cuda")]
    {
        let start = std::time::Instant::now();
        let backend = crate::backend::cuda::CudaBackend::new(ordinal)?;
        let opened = start.elapsed().as_secs_f64();
        let mut lines = backend.describe()?;
        lines.push((
            "opened in",
            format!("{opened:.2} s (kernels loaded; the driver JIT-compiles what its cache lacks)"),
        ));
        lines.push((
            "decided in",
            format!("{:.2} s (open and GEMM decision)", start.elapsed().as_secs_f64()),
        ));
        Ok(lines)
    }
    #[cfg(not(feature = "cuda"))]
    Err(Error::Device {
        device: Device::Cuda(ordinal).to_string(),
        message: "this build of ember has no CUDA backend (build with `--features cuda`)".into(),
    })
}

/// A model loaded on one device, as a trait object (the backend type erased; the streaming
/// pipeline's [`crate::stream::Engine`] is the job that drives it).
trait DeviceModel: Send + Sync {
    fn hidden_states(&self, batch: &Batch) -> Result<HostMatrix>;
    fn embed(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<HostMatrix>;
    fn embed_start(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<PendingMatrix>;
    fn peak_device_bytes(&self) -> Option<usize>;
    fn classify(&self, batch: &Batch) -> Result<Option<HostMatrix>>;
    fn classify_start(&self, batch: &Batch) -> Result<Option<PendingMatrix>>;
}

struct Loaded<B: Backend> {
    backend: B,
    model: Model<B>,
}

impl<B: Backend> DeviceModel for Loaded<B> {
    fn peak_device_bytes(&self) -> Option<usize> {
        self.backend.peak_device_bytes()
    }

    fn hidden_states(&self, batch: &Batch) -> Result<HostMatrix> {
        self.run(batch, |backend, model, batch| {
            backend.download(&model.forward(backend, batch)?)
        })
    }

    fn embed(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<HostMatrix> {
        self.run(batch, |backend, model, batch| {
            backend.download(&model.embed(backend, batch, pooling, normalize)?)
        })
    }

    fn embed_start(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<PendingMatrix> {
        self.run(batch, |backend, model, batch| {
            backend.download_start(&model.embed(backend, batch, pooling, normalize)?)
        })
    }

    fn classify(&self, batch: &Batch) -> Result<Option<HostMatrix>> {
        self.run(batch, |backend, model, batch| {
            match model.classify(backend, batch)? {
                Some(logits) => backend.download(&logits).map(Some),
                None => Ok(None),
            }
        })
    }

    fn classify_start(&self, batch: &Batch) -> Result<Option<PendingMatrix>> {
        self.run(batch, |backend, model, batch| {
            match model.classify(backend, batch)? {
                Some(logits) => backend.download_start(&logits).map(Some),
                None => Ok(None),
            }
        })
    }
}

impl<B: Backend> Loaded<B> {
    /// `pass` on the uploaded batch, run where the backend runs its passes
    /// ([`Backend::run_pass`]).
    fn run<R: Send>(
        &self,
        batch: &Batch,
        pass: impl FnOnce(&B, &Model<B>, &B::DeviceBatch) -> Result<R> + Send,
    ) -> Result<R> {
        self.backend.run_pass(|| {
            let batch = self.backend.upload_batch(batch)?;
            pass(&self.backend, &self.model, &batch)
        })
    }
}

/// Tokens per forward pass on a GPU unless the caller says otherwise.
pub const GPU_BATCH_TOKENS: usize = 16_384;

/// The size the CPU's default batch gives its widest activation (see
/// [`Encoder::default_batch_tokens`]).
pub const CPU_ACTIVATION_BYTES: usize = 6 << 20;

/// Tokens per CPU batch for a model of this hidden size: as many as keep the widest activation
/// the CPU writes out, the attention's q, k and v (`tokens x 3 hidden` f32), near
/// [`CPU_ACTIVATION_BYTES`] (see [`Encoder::default_batch_tokens`]).
pub fn cpu_batch_tokens(hidden_size: usize) -> usize {
    let widest = (3 * hidden_size).max(1);
    (CPU_ACTIVATION_BYTES / (4 * widest)).clamp(256, GPU_BATCH_TOKENS)
}

/// A model folder loaded onto a device: config, weights and the forward pass, no tokenizer.
pub struct Encoder {
    config: ModelConfig,
    stored_dtype: Option<StoredDtype>,
    device: Device,
    engine: Box<dyn DeviceModel>,
    /// The most tokens a batch may hold before it is split; `usize::MAX` until the device first
    /// runs out of memory.
    token_budget: AtomicUsize,
}

impl Encoder {
    /// Loads `config.json` and the safetensors weights of a model folder onto `device`, in f32.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Encoder> {
        Self::load_with_dtype(dir, device, Dtype::F32)
    }

    /// [`Encoder::load`] with the linear layers in `dtype`. `Dtype::Bf16` is a CPU option: on
    /// another device, or on a CPU without AVX-512, it is an error (never a silent f32).
    pub fn load_with_dtype(dir: impl AsRef<Path>, device: Device, dtype: Dtype) -> Result<Encoder> {
        let dir = dir.as_ref();
        if dtype != Dtype::F32 && device != Device::Cpu {
            return Err(Error::Option {
                option: "dtype".into(),
                message: format!("{dtype} is a CPU option; {device} runs its own precision"),
            });
        }
        let config = ModelConfig::load(dir)?;
        let weights = Weights::open(dir)?;
        let stored_dtype = weights.stored_dtype();
        let engine: Box<dyn DeviceModel> = match device {
            Device::Cpu => {
                let backend = CpuBackend::with_dtype(dtype)?;
                let model = Model::load(&backend, config.clone(), &weights)?;
                Box::new(Loaded { backend, model })
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => {
                let backend = crate::backend::cuda::CudaBackend::new(ordinal)?;
                let model = Model::load(&backend, config.clone(), &weights)?;
                Box::new(Loaded { backend, model })
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => {
                return Err(Error::Device {
                    device: device.to_string(),
                    message: "this build of ember has no CUDA backend (build with `--features cuda`)".into(),
                })
            }
        };
        Ok(Encoder {
            config,
            stored_dtype,
            device,
            engine,
            token_budget: AtomicUsize::new(usize::MAX),
        })
    }

    /// The model's validated configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the forward pass runs.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype the weights are stored in on disk.
    pub fn stored_dtype(&self) -> Option<StoredDtype> {
        self.stored_dtype
    }

    /// Packs tokenized sequences with this model's position ids.
    pub fn pack(&self, sequences: &[&Sequence]) -> Result<Batch> {
        Batch::pack(sequences, self.config.position_offset() as u32)
    }

    /// Tokens per forward pass when the caller does not say. On a GPU, [`GPU_BATCH_TOKENS`]: work
    /// enough to fill it. On the CPU, as many as keep the widest activation it writes out (q, k
    /// and v, `tokens x 3 hidden` f32) near [`CPU_ACTIVATION_BYTES`], so that each op's output
    /// is still in the caches when the next op reads it. The FFN's wider intermediate is not
    /// written out: `Backend::feed_forward` keeps it per row block. Sized by it instead (512
    /// tokens for bge-base, not 682), bge-base ran 7 % slower in f32 and 4-9 % in int8
    /// (BENCHMARKS.md, 2026-12-02); MiniLM, 1,024 tokens then and 1,365 now, the same in int8.
    /// Measured on MiniLM (Xeon with AMX, CPU time of 1,024 texts): in bf16, batches of 1,024
    /// tokens took 13 % less time than batches of 16,384, whose 100 MB activations go through
    /// memory between every two ops; in f32, whose GEMM is 6x slower and hides the memory
    /// traffic, 4 % more. With batches side by side (a batch per thread), halving or quartering
    /// these sizes gained nothing measurable (MiniLM f32 and int8, bge-base int8, 2 threads).
    pub fn default_batch_tokens(&self) -> usize {
        match self.device {
            Device::Cpu => cpu_batch_tokens(self.config.hidden_size),
            Device::Cuda(_) => GPU_BATCH_TOKENS,
        }
    }

    /// The token budget that running out of device memory has imposed, if it has: batches of
    /// more tokens are split before they run.
    pub fn token_budget(&self) -> Option<usize> {
        Some(self.token_budget.load(Ordering::Relaxed)).filter(|&b| b != usize::MAX)
    }

    /// The most GPU memory this encoder has held at once (weights, activations, batch
    /// buffers); `None` on the CPU. Buffers are reused, so it stops growing once every batch
    /// size has been seen.
    pub fn peak_device_bytes(&self) -> Option<usize> {
        self.engine.peak_device_bytes()
    }

    /// The last hidden state `[tokens, hidden]` of a packed batch.
    pub fn hidden_states(&self, batch: &Batch) -> Result<HostMatrix> {
        self.check(batch)?;
        self.fitting(batch, &|b| self.engine.hidden_states(b))
    }

    /// Pooled (and optionally L2-normalized) embeddings `[sequences, hidden]`.
    pub fn embed(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<HostMatrix> {
        self.check(batch)?;
        self.fitting(batch, &|b| self.engine.embed(b, pooling, normalize))
    }

    /// [`Encoder::embed`] without waiting for the result: on a GPU the batch is copied in,
    /// computed and copied back asynchronously, and [`PendingMatrix::wait`] returns the rows.
    /// Start batch i + 1 before waiting for batch i and the GPU does not idle between them
    /// ([`Encoder::run_pipelined`] does this). On the CPU the work is done before it returns.
    pub fn embed_start(&self, batch: &Batch, pooling: Pooling, normalize: bool) -> Result<PendingMatrix> {
        self.check(batch)?;
        self.fitting_start(batch, &|b| self.engine.embed_start(b, pooling, normalize), &|b| {
            self.engine.embed(b, pooling, normalize)
        })
    }

    /// Classifier logits `[sequences, num_labels]`; an error for a model without a head.
    pub fn classify(&self, batch: &Batch) -> Result<HostMatrix> {
        self.check(batch)?;
        self.fitting(batch, &|b| self.engine.classify(b)?.ok_or_else(|| self.no_head()))
    }

    /// [`Encoder::classify`] without waiting for the logits, as [`Encoder::embed_start`].
    pub fn classify_start(&self, batch: &Batch) -> Result<PendingMatrix> {
        self.check(batch)?;
        self.fitting_start(
            batch,
            &|b| self.engine.classify_start(b)?.ok_or_else(|| self.no_head()),
            &|b| self.engine.classify(b)?.ok_or_else(|| self.no_head()),
        )
    }

    fn no_head(&self) -> Error {
        Error::Option {
            option: "model".into(),
            message: format!(
                "{} has no classification head (its config.json names no *ForSequenceClassification architecture)",
                self.config.dir.display()
            ),
        }
    }

    /// Runs `run` on `batch`, or, when the batch is over the token budget or the device runs
    /// out of memory on it, on its two halves (recursively), and joins the rows in order.
    fn fitting(&self, batch: &Batch, run: &dyn Fn(&Batch) -> Result<HostMatrix>) -> Result<HostMatrix> {
        let (tokens, sequences) = (batch.num_tokens(), batch.num_sequences());
        if self.within_budget(batch) {
            match run(batch) {
                Err(e @ Error::OutOfMemory { .. }) => self.out_of_memory(e, tokens, sequences)?,
                result => return result,
            }
        }
        // Cut where the tokens are halved, keeping at least one sequence on each side.
        let middle = batch.cu_seqlens.partition_point(|&c| (c as usize) < tokens / 2);
        let middle = middle.clamp(1, sequences - 1);
        let mut first = self.fitting(&batch.sequences(0..middle), run)?;
        let second = self.fitting(&batch.sequences(middle..sequences), run)?;
        first.rows += second.rows;
        first.data.extend_from_slice(&second.data);
        Ok(first)
    }

    /// [`Encoder::fitting`] for a `start` that does not wait for its rows: a batch within the
    /// budget is started whole; one over it, or one the device runs out of memory starting,
    /// goes through `run` and the halving of [`Encoder::fitting`].
    fn fitting_start(
        &self,
        batch: &Batch,
        start: &dyn Fn(&Batch) -> Result<PendingMatrix>,
        run: &dyn Fn(&Batch) -> Result<HostMatrix>,
    ) -> Result<PendingMatrix> {
        if self.within_budget(batch) {
            match start(batch) {
                Err(e @ Error::OutOfMemory { .. }) => {
                    self.out_of_memory(e, batch.num_tokens(), batch.num_sequences())?
                }
                result => return result,
            }
        }
        self.fitting(batch, run).map(PendingMatrix::ready)
    }

    /// Whether a batch may be tried whole: within the token budget, or a single sequence.
    fn within_budget(&self, batch: &Batch) -> bool {
        batch.num_tokens() <= self.token_budget.load(Ordering::Relaxed) || batch.num_sequences() == 1
    }

    /// The answer to running out of memory on a batch: for several sequences, lower the budget
    /// to half its tokens (the caller then halves the batch); for one, the error, saying so.
    fn out_of_memory(&self, error: Error, tokens: usize, sequences: usize) -> Result<()> {
        match error {
            Error::OutOfMemory { device, op, message } if sequences == 1 => Err(Error::OutOfMemory {
                device,
                op,
                message: format!("{message}; a single sequence of {tokens} tokens does not fit"),
            }),
            _ => {
                self.token_budget
                    .fetch_min((tokens / 2).max(1), Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Runs `sequences` in batches of at most `batch_tokens` tokens through `run` (one of the
    /// methods above) and returns one row per sequence, in input order. Batches hold sequences
    /// of similar length; a result never depends on which batch its sequence landed in.
    pub fn run_batched(
        &self,
        sequences: &[Sequence],
        batch_tokens: usize,
        run: impl Fn(&Encoder, &Batch) -> Result<HostMatrix> + Sync,
    ) -> Result<HostMatrix> {
        self.run_pipelined(sequences, batch_tokens, |e, b| {
            run(e, b).map(PendingMatrix::ready)
        })
    }

    /// [`Encoder::run_batched`] with a `start` that returns before its result is ready (e.g.
    /// [`Encoder::embed_start`]): on a GPU batch i + 1 is packed and started before batch i is
    /// waited for, so that the GPU always has the next batch queued. On the CPU the batches run
    /// side by side ([`Encoder::runs_batches_side_by_side`]).
    pub fn run_pipelined(
        &self,
        sequences: &[Sequence],
        batch_tokens: usize,
        start: impl Fn(&Encoder, &Batch) -> Result<PendingMatrix> + Sync,
    ) -> Result<HostMatrix> {
        let lengths: Vec<usize> = sequences.iter().map(Sequence::len).collect();
        let plan = crate::batch::plan_batches(&lengths, batch_tokens.max(1), usize::MAX);
        let run_one = |members: &[usize]| -> Result<PendingMatrix> {
            let batch = self.pack(&members.iter().map(|&i| &sequences[i]).collect::<Vec<_>>())?;
            start(self, &batch)
        };
        // Each batch's rows go to their place as soon as the batch is done: only one batch's
        // rows per thread are held besides the output.
        let out: std::sync::Mutex<Option<HostMatrix>> = std::sync::Mutex::new(None);
        let scatter = |members: &[usize], rows: HostMatrix| {
            let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let out = out.get_or_insert_with(|| HostMatrix {
                rows: sequences.len(),
                cols: rows.cols,
                data: vec![0.0; sequences.len() * rows.cols],
            });
            for (j, &i) in members.iter().enumerate() {
                out.data[i * rows.cols..(i + 1) * rows.cols].copy_from_slice(rows.row(j));
            }
        };
        if self.runs_batches_side_by_side(plan.len()) {
            use rayon::prelude::*;
            // One batch per task, each run whole by the thread that takes it: its ops' own
            // parallel splits stay on that thread while the others are busy with batches of
            // their own, and are shared out again when the last batches leave threads idle.
            plan.par_iter().with_max_len(1).try_for_each(|members| {
                scatter(members, run_one(members)?.wait()?);
                Ok(())
            })?;
        } else {
            let mut in_flight: Option<(&[usize], PendingMatrix)> = None;
            for members in &plan {
                let pending = run_one(members)?;
                if let Some((previous, rows)) = in_flight.replace((members, pending)) {
                    scatter(previous, rows.wait()?);
                }
            }
            if let Some((members, rows)) = in_flight {
                scatter(members, rows.wait()?);
            }
        }
        let out = out.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(out.unwrap_or(HostMatrix {
            rows: 0,
            cols: 0,
            data: Vec::new(),
        }))
    }

    /// Whether `batches` batches run side by side, one per thread of the caller's rayon pool,
    /// rather than one after another with each op split across the threads: on the CPU, when
    /// there are two or more of each. A thread that runs a whole batch keeps its activations in
    /// its own core's caches and never waits for the other threads between ops (about 35
    /// fork-joins per batch). Measured on the Xeon model 207, 2 threads, old and new taking
    /// turns (BENCHMARKS.md, 2026-12-02): tokens/s +13 % for bge-base int8, +19 % for MiniLM
    /// int8, +30 % for MiniLM f32 (medians of 6 rounds). A single batch (one request's texts)
    /// still has every thread on each of its ops.
    pub fn runs_batches_side_by_side(&self, batches: usize) -> bool {
        self.device == Device::Cpu && batches >= 2 && rayon::current_num_threads() >= 2
    }

    /// Index checks that keep a batch from reading outside any embedding table.
    fn check(&self, batch: &Batch) -> Result<()> {
        let c = &self.config;
        if let Some(message) = batch.layout_error() {
            return Err(Error::input("batch", message));
        }
        let over = |ids: &[u32], limit: usize, what: &str| match Batch::first_id_past(ids, limit) {
            Some((t, id)) => Err(Error::input(
                "batch",
                format!("token {t}: {what} {id} is out of range (the model has {limit})"),
            )),
            None => Ok(()),
        };
        over(&batch.token_ids, c.vocab_size, "token id")?;
        over(&batch.type_ids, c.type_vocab_size, "token type id")?;
        over(&batch.position_ids, c.max_position_embeddings, "position id")?;
        Ok(())
    }
}
