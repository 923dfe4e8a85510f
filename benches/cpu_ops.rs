//! Criterion benches of the CPU backend's hot ops, on the global rayon pool (all cores):
//! - `linear`: the FFN shapes of a 384-hidden model (MiniLM, bge-small) at 4,096 tokens,
//!   up (N=1536, K=384) and down (N=384, K=1536), plus the fused QKV (N=1152, K=384); throughput
//!   is in FLOPs (2·M·N·K per call), so criterion's "elem/s" reads as FLOP/s;
//! - `activation`: both GELUs over one in-cache row block of an FFN output (96 x 1536) on one
//!   thread (copy included), to keep their cost in view next to the matmul;
//! - `attention`: 64 sequences of 128 tokens, 12 heads of dimension 32 (4·L²·d FLOPs per
//!   sequence and head: QKᵀ and PV).
//!
//! - `layer`: one whole MiniLM layer through the backend, f32 and bf16, and `layer_parts`: each of
//!   its operations alone (the GELU's cost is `up_linear_gelu` minus `up_linear`);
//! - `gemm_one_thread`: the packed GEMM on the calling thread for every kernel level (see also
//!   `cargo bench --bench roofline`, which puts it against the measured FMA peak).
//!
//! Inputs are seeded random nonzero values. Sample counts are small to keep a run short.

use std::time::Duration;

// The tests' shared helpers: the seeded random inputs.
#[path = "../tests/common/mod.rs"]
mod common;

use common::testutil::SplitMix64;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember::backend::cpu::{math, matmul, CpuBackend};
use ember::backend::{Activation, Backend};

fn linear(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(1);
    let mut group = c.benchmark_group("linear");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for (m, n, k) in [(4096, 1536, 384), (4096, 384, 1536), (4096, 1152, 384)] {
        let x = cpu.upload(&rng.values(m * k, 1.0), m, k).unwrap();
        let layer = cpu
            .load_linear(&rng.values(n * k, 0.05), &rng.values(n, 0.1), n, k)
            .unwrap();
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("m{m}_n{n}_k{k}")), |b| {
            b.iter(|| cpu.linear(&x, &layer, Activation::Identity, None).unwrap())
        });
    }
    group.finish();
}

/// The packed GEMM alone on the calling thread, for every kernel level the CPU has: the figure
/// to hold against the single-core FMA peak of `cargo bench --bench fma_peak`.
fn gemm_one_thread(c: &mut Criterion) {
    let mut rng = SplitMix64::new(4);
    let mut group = c.benchmark_group("gemm_one_thread");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    for (m, n, k) in [(4096, 1536, 384), (4096, 384, 1536), (4096, 1152, 384)] {
        let a = rng.values(m * k, 1.0);
        let w = matmul::PackedMatrix::from_rows(&rng.values(n * k, 0.05), n, k, k);
        let bias = rng.values(n, 0.1);
        let mut out = vec![0.0; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for isa in matmul::Isa::available_f32() {
            let id = BenchmarkId::new(isa.name(), format!("m{m}_n{n}_k{k}"));
            group.bench_function(id, |b| {
                b.iter(|| matmul::gemm_with(isa, &a, k, m, &w, Some(&bias), &mut out, n))
            });
        }
    }
    group.finish();
}

fn activation(c: &mut Criterion) {
    let mut rng = SplitMix64::new(2);
    // One gemm_parallel row block of the widest MiniLM layer: the epilogue runs on blocks that
    // the GEMM has just written, in cache, so this times the arithmetic, not memory.
    let values = rng.values(96 * 1536, 3.0);
    let mut group = c.benchmark_group("activation");
    group.sample_size(10).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(values.len() as u64));
    for act in [Activation::Gelu, Activation::GeluTanh] {
        group.bench_function(format!("{act:?}_96x1536_one_thread"), |b| {
            let mut buffer = values.clone();
            b.iter(|| {
                buffer.copy_from_slice(&values);
                math::activate(act, &mut buffer);
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(3);
    let (sequences, len, heads, head_dim) = (64, 128, 12, 32);
    let batch = rng.batch(&vec![len; sequences], 100, 1);
    let tokens = sequences * len;
    let qkv = cpu
        .upload(
            &rng.values(tokens * 3 * heads * head_dim, 1.0),
            tokens,
            3 * heads * head_dim,
        )
        .unwrap();
    let mut group = c.benchmark_group("attention");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(
        (4 * sequences * heads * len * len * head_dim) as u64,
    ));
    group.bench_function("64x128_tokens_12x32_heads", |b| {
        b.iter(|| cpu.attention(&qkv, &batch, heads, head_dim).unwrap())
    });
    group.finish();
}

/// One MiniLM encoder layer (hidden 384, 12 heads of 32, FFN 1536, exact GELU) as model.rs runs
/// it, over 64 sequences of 56 tokens (the corpus median), f32 and, where the CPU has them, bf16
/// and int8:
/// the whole layer (`layer/minilm_*`), then each of its parts alone (`layer_parts/*`), so that a
/// change to one kernel shows where it lands. Throughput of the whole layer is in FLOPs of its
/// matrix products (linear 2·t·(4h² + 2h·f), attention 4·L²·h per sequence), so "elem/s" reads
/// as FLOP/s; the parts are timed per call.
fn layer(c: &mut Criterion) {
    use ember::backend::LayerNormWeights;
    use ember::Dtype;
    let mut rng = SplitMix64::new(6);
    let (sequences, len, hidden, heads, ffn) = (64, 56, 384, 12, 1536);
    let tokens = sequences * len;
    let batch = rng.batch(&vec![len; sequences], 100, 1);
    let flops = 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * sequences * len * len * hidden;
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::Int8] {
        let Ok(cpu) = CpuBackend::with_dtype(dtype) else {
            continue;
        };
        let mut linear = |n: usize, k: usize| {
            let w = rng.values(n * k, 1.0 / (k as f32).sqrt());
            cpu.load_linear(&w, &rng.values(n, 0.1), n, k).unwrap()
        };
        let (qkv, out, up, down) = (
            linear(3 * hidden, hidden),
            linear(hidden, hidden),
            linear(ffn, hidden),
            linear(hidden, ffn),
        );
        let norm = || LayerNormWeights {
            gamma: cpu.upload(&vec![1.0; hidden], 1, hidden).unwrap(),
            beta: cpu.upload(&vec![0.0; hidden], 1, hidden).unwrap(),
            eps: 1e-12,
        };
        let (norm1, norm2) = (norm(), norm());
        let x = cpu
            .upload(&rng.values(tokens * hidden, 1.0), tokens, hidden)
            .unwrap();
        let mut group = c.benchmark_group("layer");
        group.sample_size(10).measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(format!("minilm_{dtype:?}_64x56_tokens"), |b| {
            b.iter(|| {
                let q = cpu.linear(&x, &qkv, Activation::Identity, None).unwrap();
                let context = cpu.attention(&q, &batch, heads, hidden / heads).unwrap();
                let attended = cpu
                    .linear(&context, &out, Activation::Identity, Some(&x))
                    .unwrap();
                let attended = cpu.layer_norm(&attended, &norm1).unwrap();
                let h = cpu.linear(&attended, &up, Activation::Gelu, None).unwrap();
                let h = cpu
                    .linear(&h, &down, Activation::Identity, Some(&attended))
                    .unwrap();
                cpu.layer_norm(&h, &norm2).unwrap()
            })
        });
        group.finish();
        // The parts, each on inputs of its real shape.
        let q = cpu.linear(&x, &qkv, Activation::Identity, None).unwrap();
        let context = cpu.attention(&q, &batch, heads, hidden / heads).unwrap();
        let h = cpu.linear(&x, &up, Activation::Gelu, None).unwrap();
        let mut group = c.benchmark_group("layer_parts");
        group.sample_size(10).measurement_time(Duration::from_secs(2));
        let name = |part: &str| format!("{dtype:?}_{part}");
        group.bench_function(name("qkv_linear"), |b| {
            b.iter(|| cpu.linear(&x, &qkv, Activation::Identity, None).unwrap())
        });
        group.bench_function(name("attention"), |b| {
            b.iter(|| cpu.attention(&q, &batch, heads, hidden / heads).unwrap())
        });
        group.bench_function(name("out_linear_residual"), |b| {
            b.iter(|| {
                cpu.linear(&context, &out, Activation::Identity, Some(&x))
                    .unwrap()
            })
        });
        group.bench_function(name("layer_norm"), |b| {
            b.iter(|| cpu.layer_norm(&x, &norm1).unwrap())
        });
        group.bench_function(name("up_linear"), |b| {
            b.iter(|| cpu.linear(&x, &up, Activation::Identity, None).unwrap())
        });
        group.bench_function(name("up_linear_gelu"), |b| {
            b.iter(|| cpu.linear(&x, &up, Activation::Gelu, None).unwrap())
        });
        group.bench_function(name("down_linear_residual"), |b| {
            b.iter(|| cpu.linear(&h, &down, Activation::Identity, Some(&x)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, gemm_one_thread, linear, layer, activation, attention);
criterion_main!(benches);
