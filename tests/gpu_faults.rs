//! GPU faults (issue: hostile inputs and faults): running out of device memory halves batches
//! and keeps the results, a fault inside a kernel comes back as an error naming the kernel, and
//! a GPU that is not there is an error, never a quiet CPU fallback.
//!
//! A kernel fault leaves the CUDA context unusable and the allocation limit is read once per
//! process, so those cases run in a child process: this test binary started again with one
//! `#[ignore]`d child test selected and the fault set up in its environment.
//! Without a GPU, or in a build without `--features cuda` (the README's test command), every
//! test prints why it did nothing and passes (scripts/cuda/gpu-run.sh sets EMBER_REQUIRE_GPU=1,
//! which turns a skip into a failure).

mod common;

use common::*;
use ember::{Device, Embedder, EmbedderOptions, Encoder, Error};

/// Whether a GPU is usable, after printing why a test does nothing when it is not.
fn have_gpu(test: &str) -> bool {
    usable_gpu(test, || {
        Encoder::load(fixtures().join("tiny-bert-embed-f32"), Device::Cuda(0))
    })
    .is_some()
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

/// The sm90 GEMM's fallback (src/backend/cuda/gemm_choice.rs) on a real GPU: each failure it
/// answers, injected with EMBER_FAULT_SM90 in a child process (the setting is read once per
/// process), leaves a working backend on the sm80 GEMM, a warning naming the cause, and
/// `gemm_decision` saying why; with EMBER_GEMM=sm90 the same failure is an error instead. On a
/// GPU that is not Hopper the children check that the sm80 GEMM runs and the decision says why.
#[test]
fn each_sm90_failure_falls_back_to_the_sm80_gemm() {
    if !have_gpu("each_sm90_failure_falls_back_to_the_sm80_gemm") {
        return;
    }
    for fault in ["setup", "tensor-map", "self-check"] {
        let out = child(
            "child_falls_back_to_sm80",
            &[("EMBER_FAULT_SM90", fault.to_string())],
        );
        assert!(out.status.success(), "EMBER_FAULT_SM90={fault}: {}", report(&out));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        if stdout.contains("fallback tested: yes") {
            let warnings = stderr.matches("ember: warning: ").count();
            assert_eq!(
                warnings,
                1,
                "EMBER_FAULT_SM90={fault}: one warning expected: {}",
                report(&out)
            );
        }
    }
    let out = child(
        "child_refuses_a_forced_sm90_that_cannot_run",
        &[
            ("EMBER_FAULT_SM90", "setup".to_string()),
            ("EMBER_GEMM", "sm90".to_string()),
        ],
    );
    assert!(out.status.success(), "{}", report(&out));
}

#[test]
#[ignore = "a child of each_sm90_failure_falls_back_to_the_sm80_gemm"]
fn child_falls_back_to_sm80() {
    #[cfg(feature = "cuda")]
    if is_child() {
        use crate::common::reference;
        use crate::common::testutil::{deviation, SplitMix64};
        use ember::backend::cuda::{CudaBackend, GemmPath};
        use ember::backend::{Activation, Backend, HostMatrix};

        let fault = std::env::var("EMBER_FAULT_SM90").unwrap();
        let gpu = CudaBackend::new(0).unwrap();
        if let Ok(forced) = std::env::var("EMBER_GEMM") {
            println!("fallback tested: no (EMBER_GEMM={forced} is set)");
            return;
        }
        let hopper = gpu.compute_capability().0 == 9;
        println!(
            "fallback tested: {}",
            if hopper { "yes" } else { "no (not Hopper)" }
        );
        // bge-small's fused QKV on 77 tokens: a shape the sm90 GEMM takes.
        let (m, n, k) = (77, 1152, 384);
        let mut rng = SplitMix64::new(0xfa11);
        let round = |h: HostMatrix| HostMatrix {
            data: h.data.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
            ..h
        };
        let x = round(rng.matrix(m, k, 1.0));
        let w = round(rng.matrix(n, k, 2.0 / (k as f32).sqrt()));
        let bias = rng.values(n, 0.5);
        let layer = gpu.load_linear(&w.data, &bias, n, k).unwrap();
        let x_gpu = gpu.upload(&x.data, m, k).unwrap();
        let got = gpu
            .download(&gpu.linear(&x_gpu, &layer, Activation::Gelu, None).unwrap())
            .unwrap();
        let want = reference::linear(&x, &w, &bias, Activation::Gelu, None);
        let d = deviation(&got, &want);
        assert!(d.relative_to_max <= 2e-3, "{d:?}");
        let (path, why) = gpu.gemm_decision().unwrap();
        let kernel = gpu.gemm_kernel(&layer, m).unwrap();
        println!("EMBER_FAULT_SM90={fault}: {} ({why}), {kernel}", path.name());
        assert_eq!(path, GemmPath::Sm80, "{why}");
        assert_eq!(kernel, "gemm_f16");
        if hopper {
            let cause = match fault.as_str() {
                "self-check" => "failed its self-check",
                other => other,
            };
            assert!(why.contains(cause), "EMBER_FAULT_SM90={fault}: {why}");
        }
    }
}

#[test]
#[ignore = "a child of each_sm90_failure_falls_back_to_the_sm80_gemm"]
fn child_refuses_a_forced_sm90_that_cannot_run() {
    #[cfg(feature = "cuda")]
    if is_child() {
        let err = match ember::backend::cuda::CudaBackend::new(0) {
            Ok(_) => panic!("EMBER_GEMM=sm90 with a failed sm90 setup opened a backend"),
            Err(e) => e.to_string(),
        };
        println!("error: {err}");
        // Hopper: the injected setup failure; any other GPU: its compute capability.
        assert!(
            err.contains("EMBER_GEMM=sm90")
                && (err.contains("EMBER_FAULT_SM90=setup") || err.contains("compute capability")),
            "{err}"
        );
    }
}
