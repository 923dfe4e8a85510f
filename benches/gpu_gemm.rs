//! Criterion bench of the CUDA linear layer's GEMM (`--features cuda`) on BERT shapes at
//! M = 8192 tokens: the path ember picks (kernels/gemm_sm90.cu on Hopper) and the portable sm80
//! path (kernels/gemm.cu), side by side. Throughput is in FLOPs (2·M·N·K per call), so
//! criterion's "elem/s" reads as FLOP/s. Each iteration launches and waits for the kernel.
//!
//! Without a GPU (or a driver) it prints why and exits cleanly. The GEMM table of
//! scripts/cuda/gpu-run.sh (scripts/cuda/gpu_bench.py --gemm) is the comparison with cuBLAS.

use std::time::Duration;

// The tests' shared helpers: the seeded random inputs.
#[path = "../tests/common/mod.rs"]
mod common;

use common::testutil::SplitMix64;
use criterion::{BenchmarkId, Criterion, Throughput};
use ember::backend::cuda::{CudaBackend, GemmChoice};
use ember::backend::{Activation, Backend};

/// (N, K): bge-base's fused QKV, output, FFN up, FFN down, and bge-large's FFN up and down.
const SHAPES: [(usize, usize); 6] = [
    (2304, 768),
    (768, 768),
    (3072, 768),
    (768, 3072),
    (4096, 1024),
    (1024, 4096),
];
const M: usize = 8192;

fn main() {
    let gpu = match CudaBackend::new(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("gpu_gemm: skipped, no usable GPU: {e}");
            return;
        }
    };
    let mut c = Criterion::default().configure_from_args();
    let mut rng = SplitMix64::new(0x6e6d);
    let mut group = c.benchmark_group(format!("gemm {}", gpu.device_name()));
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (n, k) in SHAPES {
        let x = gpu.upload_f16(&rng.values(M * k, 1.0), M, k).unwrap();
        let layer = gpu
            .load_linear(
                &rng.values(n * k, 2.0 / (k as f32).sqrt()),
                &rng.values(n, 0.5),
                n,
                k,
            )
            .unwrap();
        group.throughput(Throughput::Elements((2 * M * n * k) as u64));
        for choice in [GemmChoice::Auto, GemmChoice::Sm80] {
            gpu.set_gemm(choice).unwrap();
            let kernel = gpu.gemm_kernel(&layer, M).unwrap();
            group.bench_function(BenchmarkId::new(kernel, format!("m{M}_n{n}_k{k}")), |b| {
                b.iter(|| {
                    let out = gpu.linear(&x, &layer, Activation::Identity, None).unwrap();
                    gpu.synchronize().unwrap();
                    out
                })
            });
        }
    }
    gpu.set_gemm(GemmChoice::Auto).unwrap();
    group.finish();
    c.final_summary();
}
