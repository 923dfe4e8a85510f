//! The CUDA backend against the CPU: each op against the f64 scalar reference on fresh random
//! inputs of awkward shapes (outputs poisoned with NaN before every launch, every launch checked),
//! then whole models against the CPU path. Compiled only with `--features cuda`; on a machine
//! without a GPU every test prints why it did nothing and passes, except the one that checks that
//! such a machine gets a clear error instead of a panic.
//!
//! The modules are the groups scripts/cuda/gpu-run.sh runs apart, each test in a process of its own
//! (a trap leaves its process's CUDA context unusable, so one fault must not hide another):
//! - `ops`: each kernel family against f64 (on the sm80 GEMM there);
//! - `sm90`: the sm90 GEMM, one test per tile, and the GEMM path's self-check and report;
//! - `models`: whole models against the CPU path (first on sm80, then on the device's choice);
//! - `pipeline`: overlapped uploads and flat device memory.
//!
//! Paths are read at run time so that the test binary can run from scripts/cuda/gpu-check.sh's bundle:
//! `EMBER_FIXTURES` (default: the repository's fixtures/) and `EMBER_TEST_MODEL` (the real
//! all-MiniLM-L6-v2; default .cache/models/all-MiniLM-L6-v2).
#![cfg(feature = "cuda")]

mod models;
mod ops;
mod pipeline;
mod sm90;

#[path = "../common/mod.rs"]
mod common;

use common::testutil::deviation;
use ember::backend::cuda::CudaBackend;
use ember::backend::{Backend, HostMatrix};
use ember::Error;
use half::f16;

/// The GPU, in checked mode, or `None` after printing why the test does nothing.
fn gpu(test: &str) -> Option<CudaBackend> {
    let backend = common::usable_gpu(test, || CudaBackend::new(0))?;
    backend.set_checked(true);
    Some(backend)
}

/// Values as the GPU stores them (f16), so that the reference sees the same inputs.
fn rounded(m: HostMatrix) -> HostMatrix {
    HostMatrix {
        data: m.data.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        ..m
    }
}

fn up(gpu: &CudaBackend, m: &HostMatrix) -> ember::backend::cuda::CudaTensor {
    gpu.upload(&m.data, m.rows, m.cols).unwrap()
}

/// f16 outputs carry a relative rounding error of 2^-11 ≈ 4.9e-4 of each value; 2e-3 of the
/// largest magnitude leaves room for f32 accumulation in a different order, nothing more.
const F16_TOLERANCE: f64 = 2e-3;

fn assert_close(what: &str, got: &HostMatrix, want: &HostMatrix) {
    assert!(
        got.data.iter().all(|v| v.is_finite()),
        "{what}: non-finite output (an unwritten, NaN-poisoned element?)"
    );
    let d = deviation(got, want);
    eprintln!(
        "{what}: max abs {:.3e}, relative to max {:.3e}",
        d.max_abs, d.relative_to_max
    );
    assert!(d.relative_to_max <= F16_TOLERANCE, "{what}: {d:?}");
}

#[test]
fn without_a_gpu_the_error_is_clear_not_a_panic() {
    match CudaBackend::new(0) {
        Ok(gpu) => eprintln!("a GPU is present: {}", gpu.device_name()),
        Err(e) if std::env::var_os("EMBER_REQUIRE_GPU").is_some() => {
            panic!("EMBER_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            assert!(matches!(e, Error::Device { .. }), "{e:?}");
            eprintln!("no GPU, as expected on this machine: {e}");
        }
    }
}

/// The bar for the f16 GPU path against the f32 CPU path.
const MIN_COSINE: f64 = 0.9995;
