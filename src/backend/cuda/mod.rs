//! The CUDA backend: ember's own FP16 kernels (kernels/*.cu, compiled to PTX by build.rs and
//! embedded), launched through cudarc's driver API with the driver loaded at run time, so that a
//! build needs no CUDA install and a machine without a GPU gets an `Error::Device`, not a panic.
//!
//! Storage is f16 everywhere (weights, embedding tables, LayerNorm vectors, activations) except
//! the linear biases (f32); every kernel accumulates in f32 (see each kernel file's header).
//! Every kernel runs in order on one stream; batches are copied in on a second stream, and
//! results come back into pinned memory without stopping the host (transfer.rs), so that
//! `Encoder::run_pipelined` queues batch i + 1 while batch i runs and the GPU never waits for the
//! host between batches. Pooling and L2 normalization run on the GPU: only `[sequences, hidden]`
//! embeddings come back. Weights are uploaded once; activations come from a pool of freed buffers
//! (see `device::DeviceBuffer`), so after the first batch of a size the forward pass allocates
//! nothing, and `Backend::peak_device_bytes` stops growing.
//!
//! No CUDA graphs: a layer is 7 launches (84 for bge-base, 168 for bge-large, plus 3 per batch),
//! each a few microseconds of host time, queued while the previous batch still runs; on the GPU
//! consecutive kernels of a stream start about a microsecond apart. A 16k-token batch of
//! bge-base is milliseconds of work, so the gaps are on the order of 1-5 % and a graph per
//! (tokens, sequences) shape would buy little for the memory and capture logic it costs. The
//! bench reports launches per batch and the GPU's busy share of wall time (timed events per
//! batch) to check that claim on the card; tiny batches, where it fails, are the case to watch.
//!
//! Shapes and ids are checked here before any launch (a mismatch is an `Error::Backend`), so a
//! kernel never reads outside its buffers.

mod attention;
mod device;
mod gemm;
mod gemm_choice;
mod gemm_self_check;
mod modules;
mod transfer;

pub use attention::{AttentionKernel, SHORT_MAX_LEN};

use cudarc::driver::PushKernelArg;
use half::f16;

use crate::backend::{Activation, Backend, EmbeddingTables, HostMatrix, LayerNormWeights, Pooling};
use crate::batch::Batch;
use crate::error::Result;
use device::{error, Device, DeviceBuffer};
pub use gemm::{Tile, BERT_GEMM_SHAPES, TILES};
pub use gemm_choice::{decide, GemmChoice, GemmPath, SelfCheck, Sm90Setup, Verdict};

/// A row-major f16 matrix `[rows, cols]` on the GPU.
pub struct CudaTensor {
    rows: usize,
    cols: usize,
    buffer: DeviceBuffer,
}

impl CudaTensor {
    /// Rows: tokens or sequences.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    fn check(&self, op: &'static str, what: &str, rows: usize, cols: usize) -> Result<()> {
        if (self.rows, self.cols) != (rows, cols) {
            return Err(error(
                op,
                format!(
                    "{what} is [{}, {}], expected [{rows}, {cols}]",
                    self.rows, self.cols
                ),
            ));
        }
        Ok(())
    }
}

/// A linear layer on the GPU: the f16 weight `[out, in]` as stored by PyTorch, the f32 bias.
pub struct CudaLinear {
    out_features: usize,
    in_features: usize,
    weight: DeviceBuffer,
    bias: DeviceBuffer,
    /// The weight's TMA maps for the sm90 GEMM (None off Hopper or for shapes it does not take).
    maps: Option<gemm::WeightMaps>,
}

/// A packed batch's index arrays on the GPU (u32 each), one after the other in one buffer.
pub struct CudaBatch {
    tokens: usize,
    sequences: usize,
    max_len: usize,
    token_ids: IndexPtr,
    position_ids: IndexPtr,
    type_ids: IndexPtr,
    cu_seqlens: IndexPtr,
    /// Where the arrays live: a leased slot of transfer.rs (asynchronous upload) or a buffer of
    /// their own (synchronous upload). Kept until the batch drops.
    _indices: BatchIndices,
    /// Host copies for the checks done before a launch.
    host: Batch,
}

/// The device address of one of a batch's index arrays.
struct IndexPtr(u64);

impl IndexPtr {
    fn ptr(&self) -> u64 {
        self.0
    }
}

enum BatchIndices {
    Slot(transfer::BatchSlot),
    Owned(DeviceBuffer),
}

/// The CUDA implementation of [`Backend`] on one GPU.
pub struct CudaBackend {
    device: Device,
    transfers: transfer::Transfers,
    synchronous_uploads: std::sync::atomic::AtomicBool,
}

fn f16_bytes(data: &[f32]) -> Vec<u8> {
    data.iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

fn u32_bytes(data: &[u32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn dim(op: &'static str, what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| error(op, format!("{what} = {n} is past the kernels' 32-bit indices")))
}

impl CudaBackend {
    /// Opens GPU `ordinal`: a clear `Error::Device` when there is no driver, no such GPU, or one
    /// older than compute capability 8.0.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Ok(CudaBackend {
            device: Device::open(ordinal)?,
            transfers: transfer::Transfers::default(),
            synchronous_uploads: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The GPU's compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.device.capability
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// Checked mode (for tests and debugging, also set by `EMBER_CUDA_CHECKED=1`): every output is
    /// filled with NaN before its kernel runs, and every launch is followed by a synchronize, so
    /// that a kernel that leaves part of its output unwritten or faults is caught and named.
    pub fn set_checked(&self, on: bool) {
        self.device
            .checked
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs kernels/fault_probe.cu, which traps, and waits for it: the error must name the
    /// kernel (tests of the fault path). A trap is sticky: the context is unusable afterwards,
    /// so call this only in a process of its own.
    #[doc(hidden)]
    pub fn fault_probe(&self) -> Result<()> {
        const OP: &str = "fault_probe";
        let d = &self.device;
        let out = d.scratch(OP, 32 * 4)?;
        let ptr = out.ptr();
        d.launch(OP, "fault_probe", &d.kernels.fault_probe, (1, 1, 1), 32, |b| {
            b.arg(&ptr);
        })?;
        d.download_bytes(OP, &out, 32 * 4).map(|_| ())
    }

    /// Chooses the GEMM path of `linear` as `EMBER_GEMM` does at start: `Sm80`, `Sm90` (no
    /// self-check; an error where the sm90 GEMM is not set up), or `Auto` (the device's
    /// decision): for A/B comparisons and for tests of each path.
    pub fn set_gemm(&self, choice: GemmChoice) -> Result<()> {
        self.device.set_gemm_choice(choice)
    }

    /// Whether the sm90 (wgmma + TMA) GEMM kernels are loaded and set up: a GPU of compute
    /// capability 9.x, not opened with EMBER_GEMM=sm80, and no failure since. Whether `linear`
    /// uses them is [`CudaBackend::gemm_decision`]'s answer.
    pub fn has_sm90_gemm(&self) -> bool {
        self.device.kernels.sm90.is_some() && self.device.gemm.sm90_ready()
    }

    /// Which GEMM `linear` runs on this device and why (for `ember info` and the GPU run's
    /// reports): decides now if nothing has yet, running the sm90 self-check on Hopper.
    pub fn gemm_decision(&self) -> Result<(GemmPath, String)> {
        self.device.gemm_decision("gemm_decision")
    }

    /// The sm90 tile the automatic choice gives an M x N x K GEMM, whatever is forced (None
    /// without the sm90 GEMM): the GEMM table reports it beside each tile's own timing.
    pub fn auto_gemm_tile(&self, m: usize, n: usize, k: usize) -> Option<&'static str> {
        let sm90 = self.device.kernels.sm90.as_ref()?;
        Some(TILES[sm90.auto_tile(m, n, k)].name)
    }

    /// The GPU, its driver and its GEMM path as `ember info` prints them: one "key  value" line
    /// each. Decides the GEMM path (the self-check) if nothing has yet.
    pub fn describe(&self) -> Result<Vec<(&'static str, String)>> {
        let d = &self.device;
        let (path, why) = self.gemm_decision()?;
        Ok(vec![
            (
                "gpu",
                format!(
                    "{}, compute capability {}.{}, {} multiprocessors",
                    d.name, d.capability.0, d.capability.1, d.sms
                ),
            ),
            ("driver", d.driver.clone()),
            ("gemm", format!("{}: {why}", path.name())),
        ])
    }

    /// Makes the sm90 GEMM use one tile shape for every shape (a name of [`TILES`] without its
    /// `gemm_sm90_` prefix: `"128x256"`, `"pp_64x192"`, ..., as `EMBER_GEMM_TILE` does), or go
    /// back to the per-shape choice with `None`: for tests of every kernel and for tuning. An
    /// error without the sm90 GEMM.
    pub fn force_gemm_tile(&self, tile: Option<&str>) -> Result<()> {
        let sm90 = self.device.kernels.sm90.as_ref().ok_or_else(|| {
            error(
                "force_gemm_tile",
                format!("{} has no sm90 GEMM", self.device.name),
            )
        })?;
        sm90.force_tile(tile).map_err(|e| error("force_gemm_tile", e))
    }

    /// The kernel `linear` would launch for `layer` on `rows` rows, as the choice stands now
    /// (deciding it first if needed).
    pub fn gemm_kernel(&self, layer: &CudaLinear, rows: usize) -> Result<&'static str> {
        gemm::kernel_name(
            &self.device,
            layer.maps.is_some(),
            rows,
            layer.out_features,
            layer.in_features,
        )
    }

    /// Waits until every queued kernel has finished (for timings).
    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize("synchronize")
    }

    /// Uploads a host matrix as f16 (what `Backend::upload` does; public for tests).
    pub fn upload_f16(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(error(
                "upload",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            ));
        }
        let bytes = f16_bytes(data);
        let buffer = if bytes.is_empty() {
            self.device.scratch("upload", 0)?
        } else {
            self.device.upload_bytes("upload", &bytes)?
        };
        Ok(CudaTensor { rows, cols, buffer })
    }

    fn output(&self, op: &'static str, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            buffer: self.device.scratch(op, rows * cols * 2)?,
        })
    }

    fn vector(&self, op: &'static str, what: &str, v: &CudaTensor, n: usize) -> Result<u64> {
        if v.rows * v.cols != n {
            return Err(error(
                op,
                format!("{what} has {} values, expected {n}", v.rows * v.cols),
            ));
        }
        Ok(v.buffer.ptr())
    }
}

fn check_ids(op: &'static str, what: &str, ids: &[u32], entries: usize) -> Result<()> {
    crate::backend::check_ids("cuda", op, what, ids, entries)
}

const ROWS_PER_BLOCK: usize = 4; // layernorm.cu: one warp per row, 4 warps per block

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Linear = CudaLinear;
    type DeviceBatch = CudaBatch;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        self.upload_f16(data, rows, cols)
    }

    fn load_linear(
        &self,
        weight: &[f32],
        bias: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<CudaLinear> {
        if out_features.checked_mul(in_features) != Some(weight.len())
            || bias.len() != out_features
            || weight.is_empty()
        {
            return Err(error(
                "load_linear",
                format!(
                    "weight has {} values and bias {} for a [{out_features}, {in_features}] layer",
                    weight.len(),
                    bias.len()
                ),
            ));
        }
        let weight = self.device.upload_bytes("load_linear", &f16_bytes(weight))?;
        // The sm90 GEMM's maps, unless the path is sure to be sm80; a map the driver refuses
        // turns the sm90 GEMM off on this device (gemm_choice.rs), or is an error when forced.
        let maps = match &self.device.kernels.sm90 {
            Some(sm90) if self.has_sm90_gemm() && self.device.gemm.request() != GemmChoice::Sm80 => {
                match sm90.weight_maps(weight.ptr(), out_features, in_features) {
                    Ok(maps) => maps,
                    Err(why) => {
                        self.device.sm90_broke("load_linear", why)?;
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(CudaLinear {
            out_features,
            in_features,
            weight,
            bias: self.device.upload_bytes("load_linear", &f32_bytes(bias))?,
            maps,
        })
    }

    fn upload_batch(&self, batch: &Batch) -> Result<CudaBatch> {
        const OP: &str = "upload_batch";
        let tokens = batch.token_ids.len();
        if let Some(message) = batch.layout_error() {
            return Err(error(OP, format!("inconsistent batch: {message}")));
        }
        if tokens == 0 {
            return Err(error(OP, "an empty batch has nothing to run"));
        }
        dim(OP, "tokens", tokens)?;
        let (cu, max_len) = (&batch.cu_seqlens, batch.max_len);
        let arrays = [
            &batch.token_ids[..],
            &batch.position_ids[..],
            &batch.type_ids[..],
            &cu[..],
        ];
        let indices = if self
            .synchronous_uploads
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let bytes: Vec<u8> = arrays.iter().flat_map(|a| u32_bytes(a)).collect();
            BatchIndices::Owned(self.device.upload_bytes(OP, &bytes)?)
        } else {
            BatchIndices::Slot(self.transfers.upload(&self.device, OP, arrays)?)
        };
        let at = |i: usize| {
            let words: usize = arrays[..i].iter().map(|a| a.len()).sum();
            IndexPtr(match &indices {
                BatchIndices::Slot(slot) => slot.ptr(i),
                BatchIndices::Owned(buffer) => buffer.ptr() + 4 * words as u64,
            })
        };
        Ok(CudaBatch {
            tokens,
            sequences: cu.len() - 1,
            max_len,
            token_ids: at(0),
            position_ids: at(1),
            type_ids: at(2),
            cu_seqlens: at(3),
            _indices: indices,
            host: batch.clone(),
        })
    }

    /// Never `None`. The buffer pool never frees, so this stops growing once every batch shape
    /// has been seen.
    fn peak_device_bytes(&self) -> Option<usize> {
        Some(self.device.memory.peak())
    }

    fn download_start(&self, tensor: &CudaTensor) -> Result<crate::backend::PendingMatrix> {
        let (rows, cols) = (tensor.rows, tensor.cols);
        if rows * cols == 0 {
            return self.download(tensor).map(crate::backend::PendingMatrix::ready);
        }
        let convert = move |bytes: &[u8]| HostMatrix {
            rows,
            cols,
            data: bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        self.transfers
            .download_start(&self.device, "download", &tensor.buffer, rows * cols * 2, convert)
    }

    fn download(&self, tensor: &CudaTensor) -> Result<HostMatrix> {
        let n = tensor.rows * tensor.cols;
        let bytes = if n == 0 {
            Vec::new()
        } else {
            self.device.download_bytes("download", &tensor.buffer, n * 2)?
        };
        let data = bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        Ok(HostMatrix {
            rows: tensor.rows,
            cols: tensor.cols,
            data,
        })
    }

    fn embed(
        &self,
        batch: &CudaBatch,
        tables: &EmbeddingTables<CudaTensor>,
        norm: &LayerNormWeights<CudaTensor>,
    ) -> Result<CudaTensor> {
        const OP: &str = "embed";
        let hidden = tables.word.cols;
        if hidden == 0 {
            return Err(error(OP, "embedding tables of zero columns"));
        }
        tables
            .position
            .check(OP, "position table", tables.position.rows, hidden)?;
        tables
            .token_type
            .check(OP, "token type table", tables.token_type.rows, hidden)?;
        check_ids(OP, "word", &batch.host.token_ids, tables.word.rows)?;
        check_ids(OP, "position", &batch.host.position_ids, tables.position.rows)?;
        check_ids(OP, "token type", &batch.host.type_ids, tables.token_type.rows)?;
        let gamma = self.vector(OP, "gamma", &norm.gamma, hidden)?;
        let beta = self.vector(OP, "beta", &norm.beta, hidden)?;
        let out = self.output(OP, batch.tokens, hidden)?;
        let (tokens, cols) = (dim(OP, "tokens", batch.tokens)?, dim(OP, "hidden", hidden)?);
        let ptrs = [
            batch.token_ids.ptr(),
            batch.position_ids.ptr(),
            batch.type_ids.ptr(),
            tables.word.buffer.ptr(),
            tables.position.buffer.ptr(),
            tables.token_type.buffer.ptr(),
            gamma,
            beta,
            out.buffer.ptr(),
        ];
        let grid = (batch.tokens.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
        self.device
            .launch(OP, "embed", &self.device.kernels.embed, grid, 128, |b| {
                for p in &ptrs {
                    b.arg(p);
                }
                b.arg(&tokens).arg(&cols).arg(&norm.eps);
            })?;
        Ok(out)
    }

    fn linear(
        &self,
        x: &CudaTensor,
        layer: &CudaLinear,
        activation: Activation,
        residual: Option<&CudaTensor>,
    ) -> Result<CudaTensor> {
        const OP: &str = "linear";
        let (m, n, k) = (x.rows, layer.out_features, layer.in_features);
        x.check(OP, "input", m, k)?;
        if let Some(r) = residual {
            r.check(OP, "residual", m, n)?;
        }
        let out = self.output(OP, m, n)?;
        let act = activation.kernel_code();
        // gemm.rs picks the path (sm90 on Hopper for BERT shapes, else gemm.cu) and the tile.
        let args = gemm::GemmArgs {
            x: x.buffer.ptr(),
            w: layer.weight.ptr(),
            bias: layer.bias.ptr(),
            residual: residual.map_or(0, |r| r.buffer.ptr()),
            out: out.buffer.ptr(),
            m,
            n,
            k,
            act,
        };
        gemm::launch(&self.device, layer.maps.as_ref(), &args)?;
        Ok(out)
    }

    fn attention(
        &self,
        qkv: &CudaTensor,
        batch: &CudaBatch,
        heads: usize,
        head_dim: usize,
    ) -> Result<CudaTensor> {
        self.attention_with(qkv, batch, heads, head_dim, AttentionKernel::Auto)
    }

    fn layer_norm(&self, x: &CudaTensor, norm: &LayerNormWeights<CudaTensor>) -> Result<CudaTensor> {
        const OP: &str = "layer_norm";
        if x.cols == 0 {
            return Err(error(OP, "rows of zero columns have no mean"));
        }
        let gamma = self.vector(OP, "gamma", &norm.gamma, x.cols)?;
        let beta = self.vector(OP, "beta", &norm.beta, x.cols)?;
        let out = self.output(OP, x.rows, x.cols)?;
        let (rows, cols) = (dim(OP, "rows", x.rows)?, dim(OP, "cols", x.cols)?);
        let ptrs = [x.buffer.ptr(), gamma, beta, out.buffer.ptr()];
        let grid = (x.rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
        self.device.launch(
            OP,
            "layer_norm",
            &self.device.kernels.layer_norm,
            grid,
            128,
            |b| {
                for p in &ptrs {
                    b.arg(p);
                }
                b.arg(&rows).arg(&cols).arg(&norm.eps);
            },
        )?;
        Ok(out)
    }

    fn pool(&self, hidden: &CudaTensor, batch: &CudaBatch, mode: Pooling) -> Result<CudaTensor> {
        const OP: &str = "pool";
        hidden.check(OP, "hidden", batch.tokens, hidden.cols)?;
        if let Some(s) = batch.host.cu_seqlens.windows(2).position(|w| w[0] == w[1]) {
            return Err(error(OP, format!("sequence {s} is empty")));
        }
        let out = self.output(OP, batch.sequences, hidden.cols)?;
        let cols = dim(OP, "cols", hidden.cols)?;
        let mean: i32 = (mode == Pooling::Mean).into();
        let ptrs = [hidden.buffer.ptr(), batch.cu_seqlens.ptr(), out.buffer.ptr()];
        let grid = (batch.sequences as u32, 1, 1);
        self.device
            .launch(OP, "pool", &self.device.kernels.pool, grid, 128, |b| {
                for p in &ptrs {
                    b.arg(p);
                }
                b.arg(&cols).arg(&mean);
            })?;
        Ok(out)
    }

    fn l2_normalize(&self, x: &CudaTensor) -> Result<CudaTensor> {
        const OP: &str = "l2_normalize";
        let out = self.output(OP, x.rows, x.cols)?;
        let (rows, cols) = (dim(OP, "rows", x.rows)?, dim(OP, "cols", x.cols)?);
        let ptrs = [x.buffer.ptr(), out.buffer.ptr()];
        let grid = (x.rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1);
        self.device.launch(
            OP,
            "l2_normalize",
            &self.device.kernels.l2_normalize,
            grid,
            128,
            |b| {
                for p in &ptrs {
                    b.arg(p);
                }
                b.arg(&rows).arg(&cols);
            },
        )?;
        Ok(out)
    }
}
