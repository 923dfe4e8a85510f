//! GPU faults (issue: hostile inputs and faults): running out of device memory halves batches
//! and keeps the results, a fault inside a kernel comes back as an error naming the kernel, and
//! a GPU that is not there is an error, never a quiet CPU fallback.
//!
//! A kernel fault leaves the CUDA context unusable and the allocation limit is read once per
//! process, so those cases run in a child process: this test binary started again with one
//! `#[ignore]`d child test selected and the fault set up in its environment.
//! Without a GPU, or in a build without `--features cuda` (the README's test command), every
//! test prints why it did nothing and passes (scripts/gpu-run.sh sets EMBER_REQUIRE_GPU=1,
//! which turns a skip into a failure).

mod common;

use common::*;
use ember::{Device, Embedder, EmbedderOptions, Encoder, Error};

/// Whether a GPU is usable, after printing why a test does nothing when it is not.
fn have_gpu(test: &str) -> bool {
    match Encoder::load(fixtures().join("tiny-bert-embed-f32"), Device::Cuda(0)) {
        Ok(_) => true,
        Err(e) if std::env::var_os("EMBER_REQUIRE_GPU").is_some() => {
            panic!("{test}: EMBER_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            eprintln!("{test}: skipped, no usable GPU: {e}");
            false
        }
    }
}

#[test]
fn out_of_memory_halves_batches_and_keeps_the_results() {
    if have_gpu("out_of_memory_halves_batches_and_keeps_the_results") {
        out_of_memory_scenario(Device::Cuda(0));
    }
}

#[test]
#[ignore = "a child of out_of_memory_halves_batches_and_keeps_the_results"]
fn child_encodes_under_an_allocation_limit() {
    if is_child() {
        encode_under_an_allocation_limit(Device::Cuda(0));
    }
}

#[test]
#[ignore = "a child of out_of_memory_halves_batches_and_keeps_the_results"]
fn child_reports_a_sequence_that_cannot_fit() {
    if is_child() {
        report_a_sequence_that_cannot_fit(Device::Cuda(0));
    }
}

#[test]
fn a_kernel_fault_names_the_kernel() {
    if !have_gpu("a_kernel_fault_names_the_kernel") {
        return;
    }
    // Unchecked, the fault surfaces at the next copy back, which lists the kernels queued since
    // the last one; checked, the launch's own synchronize names it.
    for checked in ["0", "1"] {
        let mut env = vec![];
        if checked == "1" {
            env.push(("EMBER_CUDA_CHECKED", "1".to_string()));
        }
        let out = child("child_runs_the_fault_probe", &env);
        assert!(out.status.success(), "checked={checked}: {}", report(&out));
    }
}

#[test]
#[ignore = "a child of a_kernel_fault_names_the_kernel"]
fn child_runs_the_fault_probe() {
    // Only started where `have_gpu` found a GPU, which needs the CUDA backend.
    #[cfg(feature = "cuda")]
    if is_child() {
        let gpu = ember::backend::cuda::CudaBackend::new(0).unwrap();
        let err = gpu.fault_probe().unwrap_err().to_string();
        println!("error: {err}");
        assert!(err.contains("fault_probe") && err.contains("cuda:0"), "{err}");
    }
}

#[test]
fn a_gpu_that_is_not_there_is_an_error_not_a_cpu_fallback() {
    let options = EmbedderOptions {
        device: Device::Cuda(97),
        ..EmbedderOptions::default()
    };
    match Embedder::load(fixtures().join("tiny-bert-embed-f32"), options) {
        Ok(_) => panic!("cuda:97 loaded: ember fell back to another device"),
        Err(e) => {
            assert!(matches!(e, Error::Device { .. }), "{e:?}");
            assert!(e.to_string().contains("cuda:97"), "{e}");
        }
    }
}
