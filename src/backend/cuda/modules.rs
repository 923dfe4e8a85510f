//! The kernels: PTX embedded by build.rs (or read from `EMBER_PTX_DIR`), loaded into the context
//! once per backend, and each `extern "C"` kernel looked up by name.
//!
//! The driver JIT-compiles PTX for the GPU at load and caches the result (`CUDA_CACHE_PATH`,
//! default ~/.nv/ComputeCache), so only the first backend on a machine pays the compile.
//!
//! A module that fails to load is reported with the JIT's own info and error logs (the line and
//! reason ptxas gives), not only the driver's error code. cudarc's `load_module` passes no JIT
//! options, and its module type can be made by that call alone, so the logs are gathered by a
//! second load of the same PTX through `cuModuleLoadDataEx` with log buffers, only when the first
//! failed: a successful load costs nothing extra and stays in the driver's cache.
//!
//! The sm90 GEMM's module is optional: a failure there is an [`Sm90Setup::Failed`], and the
//! backend runs the sm80 GEMM (gemm_choice.rs); every other module is required.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUjit_option};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};

use super::gemm::{Sm90, TILES};
use super::gemm_choice::{injected_sm90_fault, InjectedSm90Fault, Sm90Setup};
use crate::error::{Error, Result};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Every kernel the backend launches, by its `extern "C"` name in kernels/*.cu.
pub(super) struct Kernels {
    pub gemm: CudaFunction,
    pub gemm_simple: CudaFunction,
    // attention.cu (see its header): tensor-core tiled, short-sequence, CUDA-core reference.
    pub attention_fa_d32: CudaFunction,
    pub attention_fa_d64: CudaFunction,
    pub attention_short_d32: CudaFunction,
    pub attention_short_d64: CudaFunction,
    pub attention_reference_d32: CudaFunction,
    pub attention_reference_d64: CudaFunction,
    pub layer_norm: CudaFunction,
    pub embed: CudaFunction,
    pub pool: CudaFunction,
    pub l2_normalize: CudaFunction,
    pub fault_probe: CudaFunction,
    /// kernels/gemm_sm90.cu, where it loaded and was set up (see [`Kernels::load`]'s setup).
    pub sm90: Option<Sm90>,
}

/// The PTX of kernels/`family`.cu: from `EMBER_PTX_DIR` where it has that file, else embedded.
///
/// EMBER_PTX_DIR=DIR loads DIR/<family>.ptx instead of the embedded PTX where present: a kernel
/// fix can then be tried on a GPU machine that has nvcc but no Rust
/// (`nvcc --ptx -arch=compute_80 -o DIR/gemm.ptx kernels/gemm.cu`; for a *_sm90.cu file
/// `nvcc --ptx -gencode=arch=compute_90a,code=compute_90a -o DIR/gemm_sm90.ptx ...`).
fn source(family: &str, embedded: &str) -> std::result::Result<String, String> {
    let override_dir = std::env::var_os("EMBER_PTX_DIR").map(std::path::PathBuf::from);
    match override_dir
        .map(|d| d.join(format!("{family}.ptx")))
        .filter(|p| p.exists())
    {
        Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("EMBER_PTX_DIR: {}: {e}", p.display())),
        None => Ok(embedded.to_string()),
    }
}

/// Loads one module; the error names the file and carries the JIT's logs.
fn load(ctx: &Arc<CudaContext>, family: &str, ptx: String) -> std::result::Result<Arc<CudaModule>, String> {
    match ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx.clone())) {
        Ok(module) => Ok(module),
        Err(e) => Err(format!(
            "loading the PTX of kernels/{family}.cu failed: {e} (a driver older than the PTX ISA of \
             NVRTC 12.9 refuses it){}",
            jit_logs(ctx, &ptx)
        )),
    }
}

/// The JIT's info and error logs for `ptx`, from a load with log buffers (see the module
/// documentation), as text to append to an error; empty when the logs are.
fn jit_logs(ctx: &Arc<CudaContext>, ptx: &str) -> String {
    const LOG_BYTES: usize = 16 * 1024;
    let Ok(image) = CString::new(ptx) else {
        return " (the PTX holds a NUL byte)".into();
    };
    if ctx.bind_to_thread().is_err() {
        return String::new();
    }
    let mut info = vec![0u8; LOG_BYTES];
    let mut errors = vec![0u8; LOG_BYTES];
    let mut options = [
        CUjit_option::CU_JIT_INFO_LOG_BUFFER,
        CUjit_option::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
        CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        CUjit_option::CU_JIT_LOG_VERBOSE,
    ];
    // Sizes and flags travel as the pointer's value (the driver's convention for scalar options).
    let mut values: [*mut c_void; 5] = [
        info.as_mut_ptr().cast(),
        std::ptr::without_provenance_mut(LOG_BYTES),
        errors.as_mut_ptr().cast(),
        std::ptr::without_provenance_mut(LOG_BYTES),
        std::ptr::without_provenance_mut(1),
    ];
    let mut module = std::ptr::null_mut();
    // SAFETY: `image` is a NUL-terminated PTX string; the two log buffers are LOG_BYTES long, as
    // their size options say, and outlive the call; options and values have 5 entries each.
    let result = unsafe {
        sys::cuModuleLoadDataEx(
            &mut module,
            image.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    };
    if result == sys::CUresult::CUDA_SUCCESS {
        // SAFETY: a module this call loaded and nothing else holds.
        unsafe { sys::cuModuleUnload(module) };
    }
    let text = |buffer: &[u8]| {
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).trim().to_string()
    };
    let (info, errors) = (text(&info), text(&errors));
    let mut out = String::new();
    if result == sys::CUresult::CUDA_SUCCESS {
        out.push_str("; a second load, with the JIT logs, succeeded");
    }
    if !errors.is_empty() {
        out.push_str(&format!("; JIT error log: {errors}"));
    }
    if !info.is_empty() {
        out.push_str(&format!("; JIT info log: {info}"));
    }
    out
}

impl Kernels {
    /// Loads every module and looks up every kernel. `hopper`: also try the sm90 GEMM (compute
    /// capability 9.x, not opened with EMBER_GEMM=sm80); what became of it is the second value.
    /// `sms`: the multiprocessor count.
    /// `forced_tile`: the tile EMBER_GEMM_TILE names, if any.
    pub fn load(
        ctx: &Arc<CudaContext>,
        device: &str,
        hopper: bool,
        sms: usize,
        forced_tile: Option<usize>,
    ) -> Result<(Kernels, Option<Sm90Setup>)> {
        let device_error = |message: String| Error::Device {
            device: device.to_string(),
            message,
        };
        let mut modules = HashMap::new();
        for (family, target, embedded) in ptx::KERNELS {
            if target.ends_with('a') {
                continue; // an sm_90a module: optional, below
            }
            let module =
                load(ctx, family, source(family, embedded).map_err(device_error)?).map_err(device_error)?;
            modules.insert(*family, module);
        }
        let get = |family: &str, name: &str| -> Result<CudaFunction> {
            let module = modules.get(family).ok_or_else(|| {
                device_error(format!("no kernels/{family}.cu was compiled into this build"))
            })?;
            module
                .load_function(name)
                .map_err(|e| device_error(format!("kernel {name} missing from kernels/{family}.cu: {e}")))
        };
        let (sm90, setup) = match hopper {
            true => match load_sm90(ctx, sms, forced_tile) {
                Ok(sm90) => (Some(sm90), Some(Sm90Setup::Ready)),
                Err(why) => (None, Some(Sm90Setup::Failed(why))),
            },
            false => (None, None),
        };
        let kernels = Kernels {
            sm90,
            gemm: get("gemm", "gemm_f16")?,
            gemm_simple: get("gemm", "gemm_f16_simple")?,
            attention_fa_d32: get("attention", "attention_fa_d32")?,
            attention_fa_d64: get("attention", "attention_fa_d64")?,
            attention_short_d32: get("attention", "attention_short_d32")?,
            attention_short_d64: get("attention", "attention_short_d64")?,
            attention_reference_d32: get("attention", "attention_reference_d32")?,
            attention_reference_d64: get("attention", "attention_reference_d64")?,
            layer_norm: get("layernorm", "layer_norm")?,
            embed: get("layernorm", "embed")?,
            pool: get("layernorm", "pool")?,
            l2_normalize: get("layernorm", "l2_normalize")?,
            fault_probe: get("fault_probe", "fault_probe")?,
        };
        Ok((kernels, setup))
    }
}

/// The sm90 GEMM: its module, its kernels in the order of [`TILES`], their shared-memory limits
/// raised. Err: which step failed and the driver's (and the JIT's) words.
fn load_sm90(
    ctx: &Arc<CudaContext>,
    sms: usize,
    forced_tile: Option<usize>,
) -> std::result::Result<Sm90, String> {
    if injected_sm90_fault() == Some(InjectedSm90Fault::Setup) {
        return Err("loading kernels/gemm_sm90.cu failed on purpose (EMBER_FAULT_SM90=setup)".into());
    }
    let (family, _, embedded) = ptx::KERNELS
        .iter()
        .find(|(family, target, _)| *family == "gemm_sm90" && target.ends_with('a'))
        .ok_or("no kernels/gemm_sm90.cu was compiled into this build")?;
    let module = load(ctx, family, source(family, embedded)?)?;
    let kernels = TILES
        .iter()
        .map(|t| {
            module
                .load_function(t.name)
                .map_err(|e| format!("kernel {} missing from kernels/gemm_sm90.cu: {e}", t.name))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Sm90::new(kernels, sms, forced_tile)
}
