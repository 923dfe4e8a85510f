//! The seam between the model and the hardware. The BERT forward pass (`model.rs`) is written once
//! against this trait; each backend implements a dozen BERT-level operations. The cut is at the
//! level of BERT, not of general tensor algebra, so that a backend is small enough to write twice
//! and to test op by op against the scalar reference in tests/common/reference.rs.
//!
//! Every activation is a row-major matrix `[rows, cols]` whose rows are tokens (packed, no padding)
//! or sequences (after pooling). Linear weights follow PyTorch's `nn.Linear` layout `[out, in]`:
//! `y = x · Wᵀ + b`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use std::str::FromStr;

use crate::batch::Batch;
use crate::error::{Error, Result};

/// The nonlinearity applied in a linear layer's output pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// No nonlinearity: the attention output projection, the classifier's last layer.
    Identity,
    /// The exact GELU, `x · Φ(x)` with the erf form (`hidden_act: "gelu"`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `max(x, 0)` (`hidden_act: "relu"`).
    Relu,
    /// Used by the BERT pooler and the XLM-R classification head.
    Tanh,
}

impl Activation {
    /// The activation's code in the kernels: its `ACT_*` define of kernels/common.cuh (a unit
    /// test holds the two together).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn kernel_code(self) -> i32 {
        match self {
            Activation::Identity => 0,
            Activation::Gelu => 1,
            Activation::GeluTanh => 2,
            Activation::Relu => 3,
            Activation::Tanh => 4,
        }
    }

    /// Every activation, for tests and benches that try each.
    pub const ALL: [Activation; 5] = [
        Activation::Identity,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu,
        Activation::Tanh,
    ];
}

/// The storage and arithmetic of the linear layers. Embeddings, attention, LayerNorm and
/// activations are f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// f32 weights and arithmetic: matches the float64 reference to about 1e-6.
    #[default]
    F32,
    /// bf16 weights, f32 accumulation; the activations rounded to bf16 at each matrix multiply
    /// where the kernel multiplies bf16 pairs (AMX, `vdpbf16ps`), kept in f32 where the weights
    /// are widened instead ([`cpu::bf16::Kernel`]). CPU only, on CPUs with AVX-512 (others get
    /// an error); cosine >= 0.999 against f32.
    Bf16,
    /// int8 weights and activations, quantized in groups along k (weights at load, activations
    /// per token at run time), exact integer sums per group, f32 everywhere else
    /// ([`cpu::int8`]). CPU only, on CPUs with AVX512-VNNI (others get an error); cosine >=
    /// 0.995 against f32.
    Int8,
}

impl FromStr for Dtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Dtype> {
        match s {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            "int8" => Ok(Dtype::Int8),
            _ => Err(Error::Option {
                option: "dtype".into(),
                message: format!("`{s}` is not a dtype (f32, bf16, int8)"),
            }),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::Int8 => "int8",
        })
    }
}

/// How token rows become one row per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token of each sequence (`[CLS]` / `<s>`).
    Cls,
    /// The mean over every token of the sequence (packing means there is no padding to mask).
    Mean,
}

/// A matrix copied back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMatrix {
    /// Rows: tokens or sequences.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// `rows * cols` values, row-major: row `r` is `data[r * cols..(r + 1) * cols]`.
    pub data: Vec<f32>,
}

impl HostMatrix {
    /// Row `r`.
    ///
    /// # Panics
    /// If `r` is not below `rows`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A matrix on its way back to the host (see [`Backend::download_start`]).
pub struct PendingMatrix(PendingInner);

enum PendingInner {
    Ready(HostMatrix),
    Waiting(Box<dyn FnOnce() -> Result<HostMatrix> + Send>),
}

impl PendingMatrix {
    /// A matrix already on the host.
    pub fn ready(matrix: HostMatrix) -> PendingMatrix {
        PendingMatrix(PendingInner::Ready(matrix))
    }

    /// A copy in flight; `finish` waits for it and returns the matrix.
    pub fn waiting(finish: impl FnOnce() -> Result<HostMatrix> + Send + 'static) -> PendingMatrix {
        PendingMatrix(PendingInner::Waiting(Box::new(finish)))
    }

    /// This matrix, passed through `f` once it is ready.
    pub fn map(self, f: impl FnOnce(HostMatrix) -> HostMatrix + Send + 'static) -> PendingMatrix {
        match self.0 {
            PendingInner::Ready(m) => PendingMatrix::ready(f(m)),
            PendingInner::Waiting(finish) => PendingMatrix::waiting(move || finish().map(f)),
        }
    }

    /// Waits for the copy (and every kernel queued before it) and returns the matrix.
    pub fn wait(self) -> Result<HostMatrix> {
        match self.0 {
            PendingInner::Ready(m) => Ok(m),
            PendingInner::Waiting(finish) => finish(),
        }
    }
}

/// A hardware target for the BERT forward pass.
pub trait Backend: Send + Sync {
    /// An activation or table on the device: a row-major matrix.
    type Tensor: Send + Sync;
    /// A linear layer's weight `[out, in]` and bias `[out]`, in whatever layout the backend's
    /// matrix multiply wants (the fast CPU kernels pack it once at load).
    type Linear: Send + Sync;
    /// A packed batch's index arrays, on the device.
    type DeviceBatch: Send + Sync;

    /// The backend's name in errors and reports (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// Uploads a host matrix `[rows, cols]` (embedding tables, LayerNorm vectors as `[1, n]`).
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Uploads a linear layer: `weight` is `[out_features, in_features]`, `bias` is `[out_features]`.
    fn load_linear(
        &self,
        weight: &[f32],
        bias: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self::Linear>;

    /// Uploads a packed batch's token, type and position ids and its sequence boundaries.
    fn upload_batch(&self, batch: &Batch) -> Result<Self::DeviceBatch>;

    /// Copies `tensor` back to the host, waiting for every operation queued before it.
    fn download(&self, tensor: &Self::Tensor) -> Result<HostMatrix>;

    /// The most device memory the backend has held at once, for devices with memory of their
    /// own (`None` on the CPU, whose activations live in the process's heap).
    fn peak_device_bytes(&self) -> Option<usize> {
        None
    }

    /// Starts copying `tensor` back without waiting for it: the matrix comes from
    /// [`PendingMatrix::wait`]. A caller that queues batch i + 1 before waiting for batch i keeps
    /// an asynchronous device busy between batches. The default downloads at once.
    fn download_start(&self, tensor: &Self::Tensor) -> Result<PendingMatrix> {
        self.download(tensor).map(PendingMatrix::ready)
    }

    /// `[tokens, hidden]`: `LayerNorm(word[token_id] + position[position_id] + token_type[type_id])`.
    fn embed(
        &self,
        batch: &Self::DeviceBatch,
        tables: &EmbeddingTables<Self::Tensor>,
        norm: &LayerNormWeights<Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// `activation(x · Wᵀ + b) [+ residual]`; the residual, when given, has the output's shape and
    /// is added after the activation.
    fn linear(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        activation: Activation,
        residual: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// `LayerNorm(x · Wᵀ + b + residual)`: a linear layer, its residual and the LayerNorm after
    /// it, as both output projections of a BERT layer run. The default is [`Backend::linear`]
    /// then [`Backend::layer_norm`]; a backend may fuse them as long as the results are the same
    /// (the CPU normalizes each block of rows in the same parallel pass, while it is in cache).
    fn linear_residual_norm(
        &self,
        x: &Self::Tensor,
        layer: &Self::Linear,
        residual: &Self::Tensor,
        norm: &LayerNormWeights<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let sum = self.linear(x, layer, Activation::Identity, Some(residual))?;
        self.layer_norm(&sum, norm)
    }

    /// The feed-forward half of a BERT layer, `LayerNorm(activation(x · Upᵀ + b) · Downᵀ + b +
    /// x)`. The default is [`Backend::linear`] then [`Backend::linear_residual_norm`]; a backend
    /// may fuse them as long as the results are the same (the CPU runs both products on one
    /// block of rows at a time, so that the `[tokens, intermediate]` activation never leaves
    /// the core's cache).
    fn feed_forward(
        &self,
        x: &Self::Tensor,
        up: &Self::Linear,
        activation: Activation,
        down: &Self::Linear,
        norm: &LayerNormWeights<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let hidden = self.linear(x, up, activation, None)?;
        self.linear_residual_norm(&hidden, down, x, norm)
    }

    /// Runs `pass`, a forward pass (many calls of this trait), where this backend's ops run
    /// best. The default runs it in place. The CPU, called from outside a rayon pool, runs it on
    /// a thread of the global pool, where each op's parallel split starts in the pool instead of
    /// being handed to it and waited for: op by op, that hand-over cost two thread wake-ups,
    /// about 5 % of an int8 MiniLM pass's CPU time on a VM (perf: `futex_wake`).
    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        pass()
    }

    /// Multi-head self-attention within each sequence of the batch, never across sequences.
    /// `qkv` is `[tokens, 3 · heads · head_dim]`, each row holding q, then k, then v, each split
    /// into heads of `head_dim` columns. Returns the context `[tokens, heads · head_dim]` with the
    /// heads side by side, scaled by `1/sqrt(head_dim)` before the softmax.
    fn attention(
        &self,
        qkv: &Self::Tensor,
        batch: &Self::DeviceBatch,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self::Tensor>;

    /// Row-wise LayerNorm with the biased variance, as PyTorch computes it.
    fn layer_norm(&self, x: &Self::Tensor, norm: &LayerNormWeights<Self::Tensor>) -> Result<Self::Tensor>;

    /// `[sequences, cols]` from `[tokens, cols]`.
    fn pool(&self, hidden: &Self::Tensor, batch: &Self::DeviceBatch, mode: Pooling) -> Result<Self::Tensor>;

    /// Each row divided by its L2 norm (clamped below at 1e-12, as torch.nn.functional.normalize).
    fn l2_normalize(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
}

/// A fault-injection knob for tests: with `EMBER_FAULT_ALLOC_LIMIT=BYTES` in the environment,
/// every activation buffer of more than BYTES bytes fails to allocate as if the device were out
/// of memory, on any backend. It lets the out-of-memory path (the typed error, the encoder's
/// batch halving) run on machines whose memory a test cannot exhaust. Read once per process.
pub(crate) fn injected_alloc_limit() -> Option<usize> {
    static LIMIT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| std::env::var("EMBER_FAULT_ALLOC_LIMIT").ok()?.trim().parse().ok())
}

/// An error unless every id in `ids` indexes a table of `entries` rows; shared by the backends,
/// which check ids themselves because the trait is public and a caller may skip [`crate::Encoder`].
pub(crate) fn check_ids(
    backend: &'static str,
    op: &'static str,
    what: &str,
    ids: &[u32],
    entries: usize,
) -> Result<()> {
    match Batch::first_id_past(ids, entries) {
        Some((t, id)) => Err(crate::Error::Backend {
            backend,
            op,
            message: format!("token {t}: {what} id {id} is past the table's {entries} rows"),
        }),
        None => Ok(()),
    }
}

/// The three embedding tables, each `[entries, hidden]`.
pub struct EmbeddingTables<T> {
    /// One row per vocabulary id.
    pub word: T,
    /// One row per position id.
    pub position: T,
    /// One row per token type id.
    pub token_type: T,
}

/// LayerNorm's scale and shift, each `[1, hidden]`, and its epsilon.
pub struct LayerNormWeights<T> {
    /// The scale (`weight` in PyTorch).
    pub gamma: T,
    /// The shift (`bias` in PyTorch).
    pub beta: T,
    /// Added to the variance before its square root.
    pub eps: f32,
}

#[cfg(test)]
mod tests {
    use super::Activation;

    /// The kernels take the activation as an int: each variant's code must be the `ACT_*` define
    /// of its name in kernels/common.cuh (`GeluTanh` is `ACT_GELU_TANH`), and every define a
    /// variant's. Read as text, so the check runs without the CUDA build.
    #[test]
    fn activation_codes_match_the_kernels_defines() {
        let header = include_str!("../../kernels/common.cuh");
        let defines: Vec<(String, i32)> = header
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("#define ACT_")?.split_whitespace();
                let name = words.next()?.to_string();
                let code = words
                    .next()?
                    .parse()
                    .expect("an ACT_* define's value is an integer");
                Some((name, code))
            })
            .collect();
        assert_eq!(defines.len(), Activation::ALL.len(), "ACT_* defines: {defines:?}");
        for activation in Activation::ALL {
            let mut name = String::new();
            for (i, c) in format!("{activation:?}").chars().enumerate() {
                if c.is_uppercase() && i > 0 {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            let define = defines.iter().find(|(n, _)| *n == name);
            assert_eq!(
                define.map(|(_, code)| *code),
                Some(activation.kernel_code()),
                "{activation:?}: ACT_{name} in kernels/common.cuh"
            );
        }
    }
}
