//! The ember side of scripts/gpu-run.sh's comparison with PyTorch: reads token ids, embeds them
//! on the GPU (CLS pooling, L2-normalized, as bge), writes the embeddings as .npy in input order
//! and prints the best timing of a few passes as one JSON line. A `harness = false` test target
//! so that it is built with the test binaries; without arguments it does nothing.
//!
//! usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS]
//! IDS.json: a list of token id lists, special tokens included.
//!
//! usage: gpu_bench gemm MxNxK[,MxNxK...] [MIN_MS]
//! The GEMM table's ember side: for each shape, `linear` (identity, bias, no residual) on seeded
//! random nonzero f16 data, timed on the path `linear` picks (sm90 on Hopper) and on the sm80
//! path: a few launches to warm up, then back-to-back launches for at least MIN_MS (default 40)
//! milliseconds of synchronized wall time. The error against f64 is measured on 64 sampled rows
//! (the last one included). On Hopper every sm90 tile kernel is also timed, forced onto the shape
//! (half the time each), so that one run shows which tile each shape should take. One JSON line
//! per shape.

use std::time::Instant;

use ember::backend::cpu::testutil::SplitMix64;
use ember::backend::cuda::{CudaBackend, GemmChoice, TILES};
use ember::backend::{Activation, Backend};
use ember::{Device, Encoder, Pooling, Sequence};

/// Seconds per launch of `run`, after warming up: back-to-back launches until `min_s` of
/// synchronized wall time (at least 10 launches).
fn time_launches(gpu: &CudaBackend, min_s: f64, mut run: impl FnMut()) -> f64 {
    for _ in 0..3 {
        run();
    }
    gpu.synchronize().expect("warm-up");
    let (mut reps, mut total) = (0usize, 0.0f64);
    let mut batch = 10usize;
    while total < min_s || reps < 10 {
        let start = Instant::now();
        for _ in 0..batch {
            run();
        }
        gpu.synchronize().expect("timed launches");
        total += start.elapsed().as_secs_f64();
        reps += batch;
        batch = (batch * 2).min(2000);
    }
    total / reps as f64
}

fn gemm_table(shapes: &str, min_ms: f64) {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("gpu_bench gemm: {e}"));
    let mut rng = SplitMix64::new(0x6e33);
    for shape in shapes.split(',') {
        let dims: Vec<usize> = shape.split('x').map(|d| d.parse().expect("MxNxK")).collect();
        let [m, n, k] = dims[..] else {
            panic!("{shape}: expected MxNxK")
        };
        let round =
            |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect() };
        let x = round(rng.values(m * k, 1.0));
        let w = round(rng.values(n * k, 2.0 / (k as f32).sqrt()));
        let bias = rng.values(n, 0.5);
        let x_gpu = gpu.upload_f16(&x, m, k).expect("upload");
        let layer = gpu.load_linear(&w, &bias, n, k).expect("load_linear");
        let flops = 2.0 * (m * n * k) as f64;
        let timing = |choice| {
            gpu.set_gemm(choice);
            let kernel = gpu.gemm_kernel(&layer, m);
            let s = time_launches(&gpu, min_ms / 1e3, || {
                gpu.linear(&x_gpu, &layer, Activation::Identity, None)
                    .expect("linear");
            });
            (kernel, s)
        };
        let (sm80_kernel, sm80_s) = timing(GemmChoice::Sm80);
        let mut tiles = Vec::new();
        if gpu.has_sm90_gemm() {
            for tile in &TILES {
                let name = &tile.name["gemm_sm90_".len()..];
                gpu.force_gemm_tile(Some(name)).expect("force_gemm_tile");
                let s = time_launches(&gpu, min_ms / 2e3, || {
                    gpu.linear(&x_gpu, &layer, Activation::Identity, None)
                        .expect("linear");
                });
                tiles.push(format!("\"{name}\": {}", flops / s / 1e12));
            }
            gpu.force_gemm_tile(None).expect("force_gemm_tile");
        }
        let (kernel, seconds) = timing(GemmChoice::Auto);
        let out = gpu
            .download(
                &gpu.linear(&x_gpu, &layer, Activation::Identity, None)
                    .expect("linear"),
            )
            .expect("download");
        // 64 rows spread over M, the last one included (the partial last tile).
        let rows: Vec<usize> = (0..64).map(|i| (i * (m - 1)) / 63).collect();
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for &r in &rows {
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>()
                    + bias[c] as f64;
                let got = out.data[r * n + c] as f64;
                diff += (got - dot) * (got - dot);
                norm += dot * dot;
            }
        }
        let error = (diff / norm).sqrt();
        let finite = out.data.iter().all(|v| v.is_finite());
        println!(
            "{{\"m\": {m}, \"n\": {n}, \"k\": {k}, \"kernel\": \"{kernel}\", \"seconds\": {seconds}, \
             \"tflops\": {}, \"sm80_kernel\": \"{sm80_kernel}\", \"sm80_tflops\": {}, \"rel_err\": {error}, \
             \"finite\": {finite}, \"tiles\": {{{}}}}}",
            flops / seconds / 1e12,
            flops / sm80_s / 1e12,
            tiles.join(", ")
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().map(String::as_str) == Some("gemm") {
        let shapes = args
            .get(1)
            .expect("usage: gpu_bench gemm MxNxK[,MxNxK...] [MIN_MS]");
        let min_ms: f64 = args.get(2).map_or(40.0, |v| v.parse().expect("MIN_MS"));
        gemm_table(shapes, min_ms);
        return;
    }
    if args.len() < 3 {
        eprintln!(
            "gpu_bench: nothing to do (usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS], \
             or gpu_bench gemm MxNxK[,MxNxK...] [MIN_MS])"
        );
        return;
    }
    let passes: usize = args.get(3).map_or(3, |p| p.parse().expect("PASSES"));
    let batch_tokens: usize = args.get(4).map_or(16_384, |b| b.parse().expect("BATCH_TOKENS"));
    let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&args[1]).expect("IDS.json"))
        .expect("IDS.json: a list of id lists");
    let sequences: Vec<Sequence> = ids
        .into_iter()
        .map(|token_ids| Sequence {
            type_ids: vec![0; token_ids.len()],
            token_ids,
            truncated: false,
        })
        .collect();
    let tokens: usize = sequences.iter().map(Sequence::len).sum();

    let load = Instant::now();
    let encoder = Encoder::load(&args[0], Device::Cuda(0)).unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let load_s = load.elapsed().as_secs_f64();
    let run = || {
        encoder
            .run_batched(&sequences, batch_tokens, |e, b| e.embed(b, Pooling::Cls, true))
            .expect("forward pass")
    };
    let embeddings = run(); // warm-up: JIT of the PTX, the buffer pool's first allocations
    let mut best = f64::INFINITY;
    for _ in 0..passes {
        let start = Instant::now();
        std::hint::black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[2]).expect("OUT.npy"));
    ember::npy::write_f32(&mut out, embeddings.rows, embeddings.cols, &embeddings.data)
        .expect("writing OUT.npy");
    println!(
        "{{\"sequences\": {}, \"tokens\": {tokens}, \"seconds\": {best}, \"tokens_per_s\": {}, \"load_s\": {load_s}}}",
        sequences.len(),
        tokens as f64 / best
    );
}
