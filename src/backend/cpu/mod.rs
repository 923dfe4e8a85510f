//! The CPU backend: f32 activations, f32, bf16 or int8 linear weights ([`Dtype`]), parallel with
//! rayon on the caller's current pool (it never builds a pool of its own, so
//! `pool.install(|| model.forward(..))` decides the threads and nothing is oversubscribed).
//!
//! This file checks shapes and ids (every mismatch is an `Error::Backend`, never a panic) and
//! dispatches to the kernels:
//! - [`matmul`]: the packed-weight matrix multiply (the seam for the SIMD kernels), split over
//!   row blocks;
//! - `feed_forward`: a layer's two FFN products one row block at a time (the intermediate stays
//!   in cache), split over row blocks;
//! - `attention`: per sequence and head, split over sequences and, for long ones, heads;
//! - `rowwise`: embedding + LayerNorm, LayerNorm, pooling, L2 normalization, split over rows;
//! - `math`: vectorizable f32 `exp`, `erf`, `tanh` and the activations, compiled per ISA level;
//! - [`bf16`]: the bf16 linear layers ([`Dtype::Bf16`]), on AMX tiles (`amx`) or AVX512-BF16;
//! - [`int8`]: the int8 linear layers ([`Dtype::Int8`]), on AMX-INT8 tiles or AVX512-VNNI.
//!
//! [`matmul::Isa::detected`] picks the level once per process: AMX, AVX512-BF16 (both
//! AVX-512 for f32 code), AVX-512, AVX2 or portable.
//!
//! The tests compare each op against the scalar f64 versions of tests/common/reference.rs, on
//! the seeded random inputs of tests/common/testutil.rs; the unit tests include both files, which
//! are test code, not API.

#[cfg(target_arch = "x86_64")]
pub mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_amx;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
mod attention_bf16;
pub mod bf16;
mod buffers;
mod feed_forward;
pub mod int8;
pub mod math;
pub mod matmul;
mod microkernel;
#[cfg(test)]
#[path = "../../../tests/common/reference.rs"]
mod reference;
mod rowwise;
#[cfg(test)]
mod tests;
#[cfg(test)]
#[path = "../../../tests/common/testutil.rs"]
mod testutil;

use crate::backend::{Activation, Backend, Dtype, EmbeddingTables, HostMatrix, LayerNormWeights, Pooling};
use crate::batch::Batch;
use crate::error::{Error, Result};
use matmul::PackedMatrix;

fn error(op: &'static str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cpu",
        op,
        message: message.into(),
    }
}

/// A row-major f32 matrix in host memory: `data[r * cols + c]`, `data.len() == rows * cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    /// Rows: tokens or sequences.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

impl CpuTensor {
    /// Checks that `data` holds `rows * cols` values.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(error(
                "tensor",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            ));
        }
        Ok(Self { rows, cols, data })
    }

    /// Row `r`.
    ///
    /// # Panics
    /// If `r` is not below `rows`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    fn check(&self, op: &'static str, what: &str, rows: usize, cols: usize) -> Result<()> {
        if (self.rows, self.cols) != (rows, cols) || rows.checked_mul(cols) != Some(self.data.len()) {
            return Err(error(
                op,
                format!(
                    "{what} is [{}, {}] ({} values), expected [{rows}, {cols}]",
                    self.rows,
                    self.cols,
                    self.data.len()
                ),
            ));
        }
        Ok(())
    }

    fn check_consistent(&self, op: &'static str, what: &str) -> Result<()> {
        self.check(op, what, self.rows, self.cols)
    }
}

impl Drop for CpuTensor {
    /// The storage goes back to the backend's buffer pool (see `buffers`).
    fn drop(&mut self) {
        buffers::recycle(std::mem::take(&mut self.data));
    }
}

impl From<HostMatrix> for CpuTensor {
    fn from(m: HostMatrix) -> Self {
        Self {
            rows: m.rows,
            cols: m.cols,
            data: m.data,
        }
    }
}

/// A packed linear weight, f32, bf16 or int8.
#[derive(Debug, Clone)]
enum LinearWeight {
    F32(PackedMatrix),
    Bf16(bf16::PackedBf16),
    Int8(int8::PackedInt8),
}

/// A linear layer: the weight packed for [`matmul::gemm`] (or the bf16 GEMM) and the f32 bias.
#[derive(Debug, Clone)]
pub struct CpuLinear {
    weight: LinearWeight,
    bias: Vec<f32>,
}

impl CpuLinear {
    /// Output features: the rows of the weight.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            LinearWeight::F32(w) => w.n(),
            LinearWeight::Bf16(w) => w.n(),
            LinearWeight::Int8(w) => w.n(),
        }
    }

    /// Input features: the columns of the weight.
    pub fn in_features(&self) -> usize {
        match &self.weight {
            LinearWeight::F32(w) => w.k(),
            LinearWeight::Bf16(w) => w.k(),
            LinearWeight::Int8(w) => w.k(),
        }
    }

    /// The f32 packed weight (`None` for a bf16 or int8 layer).
    pub fn weight(&self) -> Option<&PackedMatrix> {
        match &self.weight {
            LinearWeight::F32(w) => Some(w),
            LinearWeight::Bf16(_) | LinearWeight::Int8(_) => None,
        }
    }

    /// The bias, `out_features` values.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
}

/// The CPU implementation of [`Backend`]. Holds only the dtype of its linear layers: cheap to
/// construct and to share.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend {
    dtype: Dtype,
}

impl CpuBackend {
    /// The f32 backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose linear layers use `dtype`; bf16 is refused with a clear error on a CPU
    /// without AVX512-BF16, int8 on one without AVX512-VNNI.
    pub fn with_dtype(dtype: Dtype) -> Result<Self> {
        match dtype {
            Dtype::F32 => {}
            Dtype::Bf16 => bf16::check_supported().map_err(|message| error("bf16", message))?,
            Dtype::Int8 => int8::check_supported().map_err(|message| error("int8", message))?,
        }
        Ok(Self { dtype })
    }

    /// The dtype of this backend's linear layers.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// `activation(x · Wᵀ + b) [+ residual]` on the caller's rayon pool, then `finish` on each block
/// of finished rows (whole rows of the output) in the same parallel pass.
fn linear_then(
    op: &'static str,
    x: &CpuTensor,
    layer: &CpuLinear,
    activation: Activation,
    residual: Option<&CpuTensor>,
    finish: impl Fn(&mut [f32]) + Sync,
) -> Result<CpuTensor> {
    let (m, n) = (x.rows, layer.out_features());
    x.check(op, "input", m, layer.in_features())?;
    if let Some(r) = residual {
        r.check(op, "residual", m, n)?;
    }
    let mut out = buffers::for_overwrite(op, m * n)?;
    let epilogue = output_pass(activation, residual, n, finish);
    match &layer.weight {
        LinearWeight::F32(w) => matmul::gemm_parallel(&x.data, m, w, &layer.bias, &mut out, epilogue),
        LinearWeight::Bf16(w) => matmul::gemm_parallel(&x.data, m, w, &layer.bias, &mut out, epilogue),
        LinearWeight::Int8(w) => matmul::gemm_parallel(&x.data, m, w, &layer.bias, &mut out, epilogue),
    }
    CpuTensor::new(m, n, out)
}

/// The output pass of a linear layer of `n` outputs on a block of finished rows, the first of
/// them `first_row`: the activation, the residual's same rows, then `finish`.
fn output_pass<'a>(
    activation: Activation,
    residual: Option<&'a CpuTensor>,
    n: usize,
    finish: impl Fn(&mut [f32]) + Sync + 'a,
) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
    move |first_row, block| {
        let r = residual.map(|r| &r.data[first_row * n..first_row * n + block.len()]);
        math::epilogue(activation, block, r);
        finish(block);
    }
}

/// `norm` applied in place to a block of whole rows of `n` values, once its vectors are checked.
fn layer_norm_pass<'a>(
    op: &'static str,
    norm: &'a LayerNormWeights<CpuTensor>,
    n: usize,
) -> Result<impl Fn(&mut [f32]) + Sync + 'a> {
    if n == 0 {
        return Err(error(op, "rows of zero columns have no mean"));
    }
    let gamma = norm_vector(op, "gamma", &norm.gamma, n)?;
    let beta = norm_vector(op, "beta", &norm.beta, n)?;
    Ok(move |block: &mut [f32]| rowwise::layer_norm_in_place(block, gamma, beta, norm.eps))
}

/// A LayerNorm vector (`[1, n]`, or any shape holding `n` values) as a slice.
fn norm_vector<'a>(op: &'static str, what: &str, v: &'a CpuTensor, n: usize) -> Result<&'a [f32]> {
    v.check_consistent(op, what)?;
    if v.data.len() != n {
        return Err(error(
            op,
            format!("{what} has {} values, expected {n}", v.data.len()),
        ));
    }
    Ok(&v.data)
}

fn check_batch(op: &'static str, batch: &Batch) -> Result<()> {
    batch
        .layout_error()
        .map_or(Ok(()), |message| Err(error(op, message)))
}

fn check_ids(op: &'static str, what: &str, ids: &[u32], entries: usize) -> Result<()> {
    crate::backend::check_ids("cpu", op, what, ids, entries)
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type DeviceBatch = Batch;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::new(rows, cols, data.to_vec()).map_err(|_| {
            error(
                "upload",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            )
        })
    }

    fn load_linear(
        &self,
        weight: &[f32],
        bias: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<CpuLinear> {
        if out_features.checked_mul(in_features) != Some(weight.len()) || bias.len() != out_features {
            return Err(error(
                "load_linear",
                format!(
                    "weight has {} values and bias {} for a [{out_features}, {in_features}] layer",
                    weight.len(),
                    bias.len()
                ),
            ));
        }
        let weight = match self.dtype {
            Dtype::F32 => LinearWeight::F32(PackedMatrix::from_rows(
                weight,
                out_features,
                in_features,
                in_features,
            )),
            Dtype::Bf16 => LinearWeight::Bf16(bf16::PackedBf16::from_rows(weight, out_features, in_features)),
            Dtype::Int8 => LinearWeight::Int8(int8::PackedInt8::from_rows(weight, out_features, in_features)),
        };
        Ok(CpuLinear {
            weight,
            bias: bias.to_vec(),
        })
    }

    fn upload_batch(&self, batch: &Batch) -> Result<Batch> {
        check_batch("upload_batch", batch)?;
        Ok(batch.clone())
    }

    fn download(&self, tensor: &CpuTensor) -> Result<HostMatrix> {
        tensor.check_consistent("download", "tensor")?;
        Ok(HostMatrix {
            rows: tensor.rows,
            cols: tensor.cols,
            data: tensor.data.clone(),
        })
    }

    fn embed(
        &self,
        batch: &Batch,
        tables: &EmbeddingTables<CpuTensor>,
        norm: &LayerNormWeights<CpuTensor>,
    ) -> Result<CpuTensor> {
        const OP: &str = "embed";
        check_batch(OP, batch)?;
        let hidden = tables.word.cols;
        if hidden == 0 {
            return Err(error(OP, "embedding tables of zero columns"));
        }
        for (what, table) in [
            ("word table", &tables.word),
            ("position table", &tables.position),
            ("token type table", &tables.token_type),
        ] {
            table.check(OP, what, table.rows, hidden)?;
        }
        check_ids(OP, "word", &batch.token_ids, tables.word.rows)?;
        check_ids(OP, "position", &batch.position_ids, tables.position.rows)?;
        check_ids(OP, "token type", &batch.type_ids, tables.token_type.rows)?;
        let gamma = norm_vector(OP, "gamma", &norm.gamma, hidden)?;
        let beta = norm_vector(OP, "beta", &norm.beta, hidden)?;
        let tokens = batch.token_ids.len();
        let mut out = buffers::for_overwrite(OP, tokens * hidden)?;
        let slices = rowwise::Tables {
            word: &tables.word.data,
            position: &tables.position.data,
            token_type: &tables.token_type.data,
        };
        rowwise::embed(
            &batch.token_ids,
            &batch.position_ids,
            &batch.type_ids,
            &slices,
            gamma,
            beta,
            norm.eps,
            &mut out,
        );
        CpuTensor::new(tokens, hidden, out)
    }

    fn linear(
        &self,
        x: &CpuTensor,
        layer: &CpuLinear,
        activation: Activation,
        residual: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        linear_then("linear", x, layer, activation, residual, |_| {})
    }

    fn linear_residual_norm(
        &self,
        x: &CpuTensor,
        layer: &CpuLinear,
        residual: &CpuTensor,
        norm: &LayerNormWeights<CpuTensor>,
    ) -> Result<CpuTensor> {
        const OP: &str = "linear_residual_norm";
        // Each block of finished rows is normalized as soon as its residual is in: one parallel
        // pass instead of two, the block still in cache, the same results as `layer_norm`.
        let normalize = layer_norm_pass(OP, norm, layer.out_features())?;
        linear_then(OP, x, layer, Activation::Identity, Some(residual), normalize)
    }

    fn feed_forward(
        &self,
        x: &CpuTensor,
        up: &CpuLinear,
        activation: Activation,
        down: &CpuLinear,
        norm: &LayerNormWeights<CpuTensor>,
    ) -> Result<CpuTensor> {
        const OP: &str = "feed_forward";
        let (m, middle, n) = (x.rows, up.out_features(), down.out_features());
        let apart = || {
            let hidden = self.linear(x, up, activation, None)?;
            self.linear_residual_norm(&hidden, down, x, norm)
        };
        if !feed_forward::fuses(m) {
            return apart();
        }
        x.check(OP, "input", m, up.in_features())?;
        if down.in_features() != middle {
            return Err(error(
                OP,
                format!(
                    "the up projection gives {middle} features, the down projection takes {}",
                    down.in_features()
                ),
            ));
        }
        x.check(OP, "input (the residual of the down projection)", m, n)?;
        let finish = output_pass(Activation::Identity, Some(x), n, layer_norm_pass(OP, norm, n)?);
        let activate = |block: &mut [f32]| math::activate(activation, block);
        let mut out = buffers::for_overwrite(OP, m * n)?;
        let ups = (&up.weight, up.bias.as_slice());
        let downs = (&down.weight, down.bias.as_slice());
        use feed_forward::feed_forward_parallel as fused;
        match (ups, downs) {
            ((LinearWeight::F32(u), ub), (LinearWeight::F32(d), db)) => {
                fused(&x.data, m, (u, ub), (d, db), &mut out, activate, finish)
            }
            ((LinearWeight::Bf16(u), ub), (LinearWeight::Bf16(d), db)) => {
                fused(&x.data, m, (u, ub), (d, db), &mut out, activate, finish)
            }
            ((LinearWeight::Int8(u), ub), (LinearWeight::Int8(d), db)) => {
                fused(&x.data, m, (u, ub), (d, db), &mut out, activate, finish)
            }
            // Layers of two dtypes (never loaded by this backend, which has one).
            _ => return apart(),
        }
        CpuTensor::new(m, n, out)
    }

    fn run_pass<R: Send>(&self, pass: impl FnOnce() -> R + Send) -> R {
        if rayon::current_thread_index().is_some() {
            pass()
        } else {
            rayon::scope(|_| pass())
        }
    }

    fn attention(&self, qkv: &CpuTensor, batch: &Batch, heads: usize, head_dim: usize) -> Result<CpuTensor> {
        const OP: &str = "attention";
        check_batch(OP, batch)?;
        let hidden = heads
            .checked_mul(head_dim)
            .filter(|&h| h > 0 && h.checked_mul(3).is_some());
        let Some(hidden) = hidden else {
            return Err(error(OP, format!("{heads} heads of dimension {head_dim}")));
        };
        qkv.check(OP, "qkv", batch.token_ids.len(), 3 * hidden)?;
        let mut out = buffers::for_overwrite(OP, qkv.rows * hidden)?;
        let kernel = attention::HeadKernel::choose(self.dtype, head_dim);
        attention::attention(&qkv.data, &batch.cu_seqlens, heads, head_dim, kernel, &mut out);
        CpuTensor::new(qkv.rows, hidden, out)
    }

    fn layer_norm(&self, x: &CpuTensor, norm: &LayerNormWeights<CpuTensor>) -> Result<CpuTensor> {
        const OP: &str = "layer_norm";
        x.check_consistent(OP, "input")?;
        if x.cols == 0 {
            return Err(error(OP, "rows of zero columns have no mean"));
        }
        let gamma = norm_vector(OP, "gamma", &norm.gamma, x.cols)?;
        let beta = norm_vector(OP, "beta", &norm.beta, x.cols)?;
        let mut out = buffers::for_overwrite(OP, x.data.len())?;
        rowwise::layer_norm(&x.data, gamma, beta, norm.eps, &mut out);
        CpuTensor::new(x.rows, x.cols, out)
    }

    fn pool(&self, hidden: &CpuTensor, batch: &Batch, mode: Pooling) -> Result<CpuTensor> {
        const OP: &str = "pool";
        check_batch(OP, batch)?;
        hidden.check(OP, "hidden", batch.token_ids.len(), hidden.cols)?;
        if let Some(s) = batch.cu_seqlens.windows(2).position(|w| w[0] == w[1]) {
            return Err(error(OP, format!("sequence {s} is empty")));
        }
        let sequences = batch.cu_seqlens.len() - 1;
        let mut out = buffers::for_overwrite(OP, sequences * hidden.cols)?;
        rowwise::pool(&hidden.data, hidden.cols, &batch.cu_seqlens, mode, &mut out);
        CpuTensor::new(sequences, hidden.cols, out)
    }

    fn l2_normalize(&self, x: &CpuTensor) -> Result<CpuTensor> {
        const OP: &str = "l2_normalize";
        x.check_consistent(OP, "input")?;
        let mut out = buffers::for_overwrite(OP, x.data.len())?;
        rowwise::l2_normalize(&x.data, x.cols, &mut out);
        CpuTensor::new(x.rows, x.cols, out)
    }
}
