//! Packed attention on the GPU: which kernel of kernels/attention.cu runs a batch, and its grid.
//!
//! The QKV projection already writes what the kernels read: `[tokens, 3 · hidden]`, each row q,
//! k, v with the heads side by side (the fused weight is query, key, value stacked), and the
//! kernels write `[tokens, hidden]` with the heads side by side, the row-major input of the
//! output projection. No transpose runs on either side.
//!
//! Choice (`AttentionKernel::Auto`): head dims 32 and 64 take the tensor-core kernels, the
//! short-sequence one when the batch's longest sequence has at most 128 tokens (batches are
//! length-sorted, so a batch's sequences are of similar length), the tiled one otherwise; other
//! head dims up to 64 take the CUDA-core reference kernel.

use cudarc::driver::PushKernelArg;

use super::device::error;
use super::{dim, CudaBackend, CudaBatch, CudaTensor};
use crate::error::Result;

/// Which attention kernel runs (tests and benchmarks pick one; the backend uses `Auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The fastest kernel that handles the batch (see the module documentation).
    Auto,
    /// `attention_fa_*`: FlashAttention-2 tiles on the tensor cores, any length; head dim 32 or 64.
    Tiled,
    /// `attention_short_*`: whole sequences in shared memory; head dim 32 or 64, lengths <= 128.
    Short,
    /// `attention_reference_*`: the CUDA-core kernel, head dims 1..=64.
    Reference,
}

/// The longest sequence the short kernel takes (4 warps x 32 queries, K and V of 128 rows).
pub const SHORT_MAX_LEN: usize = 128;
/// Queries per block of the tiled kernel (4 warps x 2 mma tiles of 16 rows).
const TILED_QUERIES: usize = 128;
/// Queries per block of the reference kernel.
const REFERENCE_QUERIES: usize = 32;

impl CudaBackend {
    /// [`crate::backend::Backend::attention`] with a chosen kernel; an error when that kernel
    /// cannot run this batch (head dim, length).
    pub fn attention_with(
        &self,
        qkv: &CudaTensor,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
        kernel: AttentionKernel,
    ) -> Result<CudaTensor> {
        const OP: &str = "attention";
        let hidden = heads.checked_mul(head_dim).filter(|&h| h > 0);
        let Some(hidden) = hidden else {
            return Err(error(OP, format!("{heads} heads of dimension {head_dim}")));
        };
        qkv.check(OP, "qkv", batch.tokens, 3 * hidden)?;
        if head_dim > 64 {
            return Err(error(
                OP,
                format!("head_dim {head_dim}: the attention kernels handle head dimensions up to 64"),
            ));
        }
        if batch.sequences > 65_535 || heads > 65_535 {
            return Err(error(
                OP,
                format!(
                    "{} sequences x {heads} heads: past the grid's 65535 limit",
                    batch.sequences
                ),
            ));
        }
        let tensor_cores = head_dim == 32 || head_dim == 64;
        let kernel = match kernel {
            AttentionKernel::Auto if !tensor_cores => AttentionKernel::Reference,
            AttentionKernel::Auto if batch.max_len <= SHORT_MAX_LEN => AttentionKernel::Short,
            AttentionKernel::Auto => AttentionKernel::Tiled,
            AttentionKernel::Tiled | AttentionKernel::Short if !tensor_cores => {
                return Err(error(
                    OP,
                    format!("head_dim {head_dim}: the tensor-core kernels take head dims 32 and 64"),
                ))
            }
            AttentionKernel::Short if batch.max_len > SHORT_MAX_LEN => {
                return Err(error(
                    OP,
                    format!(
                        "the short-sequence kernel takes sequences of <= {SHORT_MAX_LEN} tokens, not {}",
                        batch.max_len
                    ),
                ))
            }
            k => k,
        };
        let out = self.output(OP, batch.tokens, hidden)?;
        let (h, d) = (dim(OP, "heads", heads)?, dim(OP, "head_dim", head_dim)?);
        let ptrs = [qkv.buffer.ptr(), batch.cu_seqlens.ptr(), out.buffer.ptr()];
        let k = &self.device.kernels;
        let wide = head_dim == 64;
        match kernel {
            AttentionKernel::Tiled => {
                let (f, name) = if wide {
                    (&k.attention_fa_d64, "attention_fa_d64")
                } else {
                    (&k.attention_fa_d32, "attention_fa_d32")
                };
                let grid = (
                    batch.max_len.div_ceil(TILED_QUERIES) as u32,
                    heads as u32,
                    batch.sequences as u32,
                );
                self.device.launch(OP, name, f, grid, 128, |b| {
                    for p in &ptrs {
                        b.arg(p);
                    }
                    b.arg(&h);
                })?;
            }
            AttentionKernel::Short => {
                let (f, name) = if wide {
                    (&k.attention_short_d64, "attention_short_d64")
                } else {
                    (&k.attention_short_d32, "attention_short_d32")
                };
                // 1, 2 or 4 warps of 32 queries per (sequence, head), 4 warps per block.
                let pairs_per_block: usize = match batch.max_len {
                    0..=32 => 4,
                    33..=64 => 2,
                    _ => 1,
                };
                let pairs = batch.sequences * heads;
                let (s, ppb) = (dim(OP, "sequences", batch.sequences)?, pairs_per_block as i32);
                dim(OP, "sequences x heads", pairs)?;
                let grid = (pairs.div_ceil(pairs_per_block) as u32, 1, 1);
                self.device.launch(OP, name, f, grid, 128, |b| {
                    for p in &ptrs {
                        b.arg(p);
                    }
                    b.arg(&h).arg(&s).arg(&ppb);
                })?;
            }
            _ => {
                let (f, name) = if head_dim <= 32 {
                    (&k.attention_reference_d32, "attention_reference_d32")
                } else {
                    (&k.attention_reference_d64, "attention_reference_d64")
                };
                let grid = (
                    batch.max_len.div_ceil(REFERENCE_QUERIES) as u32,
                    heads as u32,
                    batch.sequences as u32,
                );
                self.device.launch(OP, name, f, grid, 128, |b| {
                    for p in &ptrs {
                        b.arg(p);
                    }
                    b.arg(&h).arg(&d);
                })?;
            }
        }
        Ok(out)
    }
}
