//! The device side of the CUDA backend: the driver and the context, its streams, the kernels
//! (modules.rs), the GEMM path's state (gemm_choice.rs), device buffers with a reuse pool, and
//! checked launches.
//!
//! Two streams: `stream` runs every kernel in order; `copy_stream` only copies batches in
//! (transfer.rs), ordered against `stream` with events, so that batch i + 1 is copied while
//! batch i computes. Both are non-blocking streams (the legacy default stream would serialize
//! them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};

use super::gemm::forced_tile_from_env;
use super::gemm_choice::{
    injected_sm90_fault_setting, GemmChoice, GemmPath, GemmState, SelfCheck, Sm90Setup,
};
use super::modules::Kernels;

use crate::error::{Error, Result};

pub(super) fn error(op: &'static str, message: impl Into<String>) -> Error {
    Error::Backend {
        backend: "cuda",
        op,
        message: message.into(),
    }
}

/// The path of the libcuda this process loaded (from /proc/self/maps), if any.
pub(super) fn loaded_libcuda() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            let file = path.rsplit('/').next().unwrap_or(path);
            file.starts_with("libcuda.so")
        })
        .map(str::to_string)
}

/// A driver call's failure as an error message. The CUDA toolkit ships a stub libcuda.so (for
/// linking) that answers every call with CUDA_ERROR_STUB_LIBRARY; cudarc asks for `libcuda.so`
/// before `libcuda.so.1`, so a stubs folder on LD_LIBRARY_PATH shadows the real driver. Say so.
fn driver_failure(what: &str, e: cudarc::driver::DriverError) -> String {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_STUB_LIBRARY {
        let path = loaded_libcuda().unwrap_or_else(|| "libcuda.so".into());
        return format!(
            "{what}: {path} is the CUDA toolkit's stub library, not the driver: take its folder off \
             LD_LIBRARY_PATH (or put the driver's libcuda.so.1 first)"
        );
    }
    format!("{what}: {e}")
}

/// "CUDA 13.0 driver, /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05": the version the driver
/// reports and the file it was loaded from (`ember info`, the GPU run's pre-flight).
fn driver_description() -> String {
    let mut version = 0i32;
    // SAFETY: writes one int; the driver library is loaded (is_culib_present was asked first).
    let result = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    let version = match result {
        cudarc::driver::sys::CUresult::CUDA_SUCCESS => {
            format!("CUDA {}.{} driver", version / 1000, (version % 1000) / 10)
        }
        other => format!("driver version unknown ({other:?})"),
    };
    match loaded_libcuda() {
        Some(path) => format!("{version}, {path}"),
        None => version,
    }
}

/// Freed buffers by size class (a power of two of bytes), for the next op that needs one: after
/// the first batch of a given size, the forward pass allocates nothing.
type FreeLists = Arc<Mutex<HashMap<usize, Vec<CudaSlice<u8>>>>>;

/// A device allocation. Activations come from (and return to) the pool; weights own theirs.
pub struct DeviceBuffer {
    slice: Option<CudaSlice<u8>>,
    pool: Option<FreeLists>,
    ptr: u64,
    /// Set for buffers outside the pool, whose bytes leave the count when they are dropped.
    memory: Option<Arc<MemoryCount>>,
}

/// Device bytes held by the backend (weights, the pool's buffers, batch slots) and their peak.
/// The pool never frees, so after the first batches of each size the count stays flat: the
/// GPU tests check that repeated batches do not raise the peak.
#[derive(Default)]
pub struct MemoryCount {
    live: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl MemoryCount {
    pub fn add(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = self.live.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(live, Relaxed);
    }

    pub fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl DeviceBuffer {
    pub(super) fn ptr(&self) -> u64 {
        self.ptr
    }

    pub(super) fn slice(&self) -> &CudaSlice<u8> {
        self.slice.as_ref().expect("a live buffer")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Every use of this buffer was enqueued on the one stream already, so a later op that
        // takes it from the pool runs after them: stream order makes the reuse safe.
        if let (Some(slice), Some(pool)) = (self.slice.take(), &self.pool) {
            if let Ok(mut lists) = pool.lock() {
                lists.entry(slice.len()).or_default().push(slice);
            }
        } else if let (Some(slice), Some(memory)) = (&self.slice, &self.memory) {
            memory.sub(slice.len());
        }
    }
}

/// What an error that surfaces at a wait says about its cause.
pub(super) fn queued_failure(queued: &str) -> String {
    format!(
        "a kernel queued since the last copy back failed (one of: {queued}; EMBER_CUDA_CHECKED=1 \
         stops at the failing one)"
    )
}

pub(super) fn raw_ptr<T>(stream: &CudaStream, slice: &CudaSlice<T>) -> u64 {
    // Event tracking is off (the backend orders its streams itself), so the guard does nothing.
    let (ptr, _guard) = slice.device_ptr(stream);
    ptr
}

/// The context, its stream, the kernels and the buffer pool.
pub(super) struct Device {
    pub name: String,
    pub label: String,
    pub stream: Arc<CudaStream>,
    /// Host-to-device copies of batches only (transfer.rs).
    pub copy_stream: Arc<CudaStream>,
    pub kernels: Kernels,
    /// Which GEMM `linear` runs, and why (gemm_choice.rs).
    pub gemm: GemmState,
    /// Compute capability, multiprocessor count, and the driver as `ember info` shows it.
    pub capability: (i32, i32),
    pub sms: usize,
    pub driver: String,
    free: FreeLists,
    pub memory: Arc<MemoryCount>,
    /// Kernels launched (the bench divides by batches: launches per batch).
    pub launches: std::sync::atomic::AtomicU64,
    /// Fill every output with NaN before its kernel runs, and synchronize after every launch so
    /// that an asynchronous fault is reported against the kernel that caused it (tests).
    pub checked: std::sync::atomic::AtomicBool,
    /// The kernels launched since the host last waited on the stream, in order and without
    /// repeats: an error that surfaces at the wait names these as the candidates.
    queued: Mutex<Vec<String>>,
    // Kept last: dropped after everything that holds device memory.
    ctx: Arc<CudaContext>,
}

impl Device {
    pub fn open(ordinal: usize) -> Result<Device> {
        let label = format!("cuda:{ordinal}");
        let device_error = |message: String| Error::Device {
            device: label.clone(),
            message,
        };
        // SAFETY: only tries to dlopen libcuda; cudarc would panic at the first driver call
        // without it, so ask first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(device_error(
                "no CUDA driver on this machine (libcuda.so not found): use --device cpu, or run on a machine with an NVIDIA GPU and driver".into(),
            ));
        }
        // Settings read before any work, so that a mistake is an error, not a surprise later.
        let request =
            GemmChoice::from_env(std::env::var("EMBER_GEMM").ok().as_deref()).map_err(&device_error)?;
        let forced_tile = forced_tile_from_env().map_err(&device_error)?;
        injected_sm90_fault_setting().map_err(&device_error)?;
        let count =
            CudaContext::device_count().map_err(|e| device_error(driver_failure("cannot count GPUs", e)))?;
        if ordinal >= count.max(0) as usize {
            return Err(device_error(format!("this machine has {count} CUDA device(s)")));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| device_error(driver_failure("cannot create a context", e)))?;
        // SAFETY: every buffer is used on `stream` only, except the batch slots of transfer.rs,
        // which order `copy_stream` against `stream` with their own events; cudarc's per-buffer
        // events would add a wait to every launch for nothing.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error(format!("cannot read the compute capability: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if major < 8 {
            return Err(device_error(format!(
                "{name} is compute capability {major}.{minor}; ember's kernels need 8.0 or newer (mma.sync f16, cp.async)"
            )));
        }
        let stream = ctx
            .new_stream()
            .map_err(|e| device_error(format!("cannot create a stream: {e}")))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| device_error(format!("cannot create a stream: {e}")))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| device_error(format!("cannot read the multiprocessor count: {e}")))?
            .max(1) as usize;
        // The sm90 module is not even loaded with EMBER_GEMM=sm80 (A/B runs, and a way around a
        // module that breaks the driver).
        let hopper = major == 9 && request != GemmChoice::Sm80;
        let (kernels, setup) = Kernels::load(&ctx, &label, hopper, sms, forced_tile)?;
        let setup = setup.unwrap_or(match major {
            9 => Sm90Setup::NotLoaded,
            _ => Sm90Setup::NotHopper { major, minor },
        });
        let gemm = GemmState::new(request, setup);
        let device = Device {
            label: label.clone(),
            stream,
            copy_stream,
            kernels,
            gemm,
            capability: (major, minor),
            sms,
            driver: driver_description(),
            free: Arc::new(Mutex::new(HashMap::new())),
            memory: Arc::default(),
            launches: Default::default(),
            checked: std::sync::atomic::AtomicBool::new(std::env::var_os("EMBER_CUDA_CHECKED").is_some()),
            queued: Mutex::new(Vec::new()),
            ctx,
            name,
        };
        // A failed sm90 setup is a warning now (or, with EMBER_GEMM=sm90, an error), not at the
        // first GEMM; a pending self-check waits for that first GEMM.
        device.gemm.settle(&device.describe()).map_err(device_error)?;
        Ok(device)
    }

    /// "cuda:0 (NVIDIA H100 80GB HBM3)", for warnings.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.label, self.name)
    }

    /// The GEMM path `linear` takes now, deciding it first if needed (the self-check runs at the
    /// first call that could take the sm90 path). Err: `EMBER_GEMM=sm90` cannot be honoured, or
    /// the self-check left the context unusable.
    pub fn gemm_path(&self, op: &'static str) -> Result<GemmPath> {
        if let Some(path) = self.gemm.cached() {
            return Ok(path); // every linear asks: no label to format
        }
        self.gemm
            .path(&self.describe(), &|| self.run_self_check())
            .map_err(|why| error(op, why))
    }

    /// [`Device::gemm_path`] and why.
    pub fn gemm_decision(&self, op: &'static str) -> Result<(GemmPath, String)> {
        self.gemm
            .resolve(&self.describe(), &|| self.run_self_check())
            .map_err(|why| error(op, why))
    }

    fn run_self_check(&self) -> std::result::Result<SelfCheck, String> {
        match &self.kernels.sm90 {
            Some(sm90) => super::gemm_self_check::run(self, sm90),
            None => Ok(SelfCheck::Failed("the sm90 kernels are not loaded".into())),
        }
    }

    /// Records that the sm90 GEMM broke after the device was opened (a tensor map the driver
    /// refused): a warning, and the sm80 GEMM from now on; Err with EMBER_GEMM=sm90.
    pub fn sm90_broke(&self, op: &'static str, why: String) -> Result<()> {
        self.gemm.sm90_failed(why);
        self.gemm
            .settle(&self.describe())
            .map(|_| ())
            .map_err(|why| error(op, why))
    }

    pub fn set_gemm_choice(&self, choice: GemmChoice) -> Result<()> {
        self.gemm
            .set_request(choice)
            .map_err(|why| error("set_gemm", why))
    }

    /// Waits for every queued kernel (timings).
    pub fn synchronize(&self, op: &'static str) -> Result<()> {
        self.waited(op, "synchronizing", self.stream.synchronize())
    }

    /// The result of a wait on the stream. The kernels queued before it are forgotten either
    /// way; a failure names them, since one of them is the cause.
    fn waited<T>(
        &self,
        op: &'static str,
        what: &str,
        result: std::result::Result<T, cudarc::driver::DriverError>,
    ) -> Result<T> {
        let queued = self.take_queued();
        result.map_err(|e| self.driver(op, &format!("{what}: {}", queued_failure(&queued)), e))
    }

    fn checked(&self) -> bool {
        self.checked.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(super) fn driver(&self, op: &'static str, what: &str, e: impl std::fmt::Display) -> Error {
        error(op, format!("{what} on {} ({}): {e}", self.label, self.name))
    }

    /// A pooled buffer of at least `bytes` bytes, poisoned with NaN (0xFF bytes) when checked.
    pub fn scratch(&self, op: &'static str, bytes: usize) -> Result<DeviceBuffer> {
        let class = bytes.max(256).next_power_of_two();
        let reused = self
            .free
            .lock()
            .ok()
            .and_then(|mut l| l.get_mut(&class).and_then(Vec::pop));
        let slice = match reused {
            Some(s) => s,
            None => self.allocate(op, class)?,
        };
        let ptr = raw_ptr(&self.stream, &slice);
        let buffer = DeviceBuffer {
            slice: Some(slice),
            pool: Some(self.free.clone()),
            ptr,
            memory: None,
        };
        if self.checked() {
            self.poison(op, &buffer)?;
        }
        Ok(buffer)
    }

    /// Fills the whole buffer with 0xFF bytes (NaN as f16) on the stream, so that an element a
    /// kernel leaves unwritten is seen.
    pub fn poison(&self, op: &'static str, buffer: &DeviceBuffer) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.driver(op, "binding the context to this thread", e))?;
        let bytes = buffer.slice().len();
        // SAFETY: `buffer.ptr()` is a live allocation of `bytes` bytes owned by `buffer`.
        unsafe { cudarc::driver::result::memset_d8_async(buffer.ptr(), 0xFF, bytes, self.stream.cu_stream()) }
            .map_err(|e| self.driver(op, "poisoning an output", e))
    }

    /// A fresh allocation of `bytes`. When the driver refuses, the buffers kept for reuse
    /// (sized for earlier, perhaps larger, batches) are freed and the allocation is tried once
    /// more; a second refusal is an [`Error::OutOfMemory`], which the encoder answers by
    /// halving the batch.
    fn allocate(&self, op: &'static str, bytes: usize) -> Result<CudaSlice<u8>> {
        let out_of_memory = |why: String| Error::OutOfMemory {
            device: format!("{} ({})", self.label, self.name),
            op,
            message: format!("{bytes} bytes for an activation: {why}"),
        };
        if let Some(limit) = crate::backend::injected_alloc_limit().filter(|&l| bytes > l) {
            return Err(out_of_memory(format!("over EMBER_FAULT_ALLOC_LIMIT={limit}")));
        }
        // SAFETY: the contents are unset; every kernel writes its whole output before any read.
        let first = unsafe { self.stream.alloc::<u8>(bytes) };
        let e = match first {
            Ok(slice) => {
                self.memory.add(bytes);
                return Ok(slice);
            }
            Err(e) if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => e,
            Err(e) => return Err(self.driver(op, &format!("allocating {bytes} bytes"), e)),
        };
        if let Ok(mut free) = self.free.lock() {
            for (_, slices) in free.drain() {
                slices.iter().for_each(|s| self.memory.sub(s.len()));
            }
        }
        // SAFETY: as above.
        let slice = unsafe { self.stream.alloc::<u8>(bytes) }
            .map_err(|_| out_of_memory(format!("{e} (also after freeing the reuse pool)")))?;
        self.memory.add(bytes);
        Ok(slice)
    }

    /// Copies host bytes into a buffer of their own (weights, batch indices).
    pub fn upload_bytes(&self, op: &'static str, bytes: &[u8]) -> Result<DeviceBuffer> {
        let slice = self
            .stream
            .clone_htod(bytes)
            .map_err(|e| self.driver(op, &format!("uploading {} bytes", bytes.len()), e))?;
        let ptr = raw_ptr(&self.stream, &slice);
        self.memory.add(bytes.len());
        Ok(DeviceBuffer {
            slice: Some(slice),
            pool: None,
            ptr,
            memory: Some(self.memory.clone()),
        })
    }

    /// The first `bytes` bytes of a buffer, after every queued kernel has finished.
    pub fn download_bytes(&self, op: &'static str, buffer: &DeviceBuffer, bytes: usize) -> Result<Vec<u8>> {
        let view = buffer.slice().slice(0..bytes);
        let copied = self
            .stream
            .clone_dtoh(&view)
            .and_then(|host| self.stream.synchronize().map(|()| host));
        self.waited(op, "copying back", copied)
    }

    /// The kernels launched since the last copy back (see `queued`), forgetting them.
    pub fn take_queued(&self) -> String {
        self.queued
            .lock()
            .map(|mut q| std::mem::take(&mut *q).join(", "))
            .unwrap_or_default()
    }

    /// Records a launch for the error of a later wait (see `queued`).
    fn note_queued(&self, kernel_name: &str) {
        if let Ok(mut queued) = self.queued.lock() {
            if !queued.iter().any(|k| k == kernel_name) {
                queued.push(kernel_name.to_string());
            }
        }
    }

    /// Launches `kernel` with the arguments pushed by `args`; a launch error, or with `checked` an
    /// error while it ran, names the kernel.
    pub fn launch<'a>(
        &'a self,
        op: &'static str,
        kernel_name: &str,
        kernel: &'a CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: impl FnOnce(&mut cudarc::driver::LaunchArgs<'a>),
    ) -> Result<()> {
        self.launch_with_smem(op, kernel_name, kernel, grid, block, 0, args)
    }

    /// `launch` with `smem` bytes of dynamic shared memory (the kernel's limit must have been
    /// raised to that beforehand when it is over 48 KiB).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_with_smem<'a>(
        &'a self,
        op: &'static str,
        kernel_name: &str,
        kernel: &'a CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: impl FnOnce(&mut cudarc::driver::LaunchArgs<'a>),
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        self.note_queued(kernel_name);
        self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut builder = self.stream.launch_builder(kernel);
        args(&mut builder);
        let config = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: each call site passes the arguments of the kernel's C signature in order, with
        // device pointers to buffers sized for the shapes it checked.
        unsafe { builder.launch(config) }.map_err(|e| {
            self.driver(
                op,
                &format!(
                    "launching kernel {kernel_name} (grid {grid:?}, block {block}, {smem} bytes shared)"
                ),
                e,
            )
        })?;
        if self.checked() {
            self.stream
                .synchronize()
                .map_err(|e| self.driver(op, &format!("kernel {kernel_name} failed while running"), e))?;
        }
        Ok(())
    }
}
