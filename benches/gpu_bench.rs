//! The ember side of scripts/cuda/gpu-run.sh's comparison with PyTorch: a program, not a test (a
//! `harness = false` bench, built with the GPU tests by scripts/cuda/gpu-check.sh); without arguments
//! it does nothing.
//!
//! usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS] [IDS2.json OUT2.npy ...]
//!   For each (IDS, OUT): reads token id lists (special tokens included), embeds them on the GPU
//!   (CLS pooling, L2-normalized, as bge), writes the embeddings as .npy in input order and prints
//!   one JSON line: the best of PASSES timed passes after a warm-up, with the GPU's busy time in
//!   that pass (timed events per batch), the host's time spent queueing work (upload, launches,
//!   download start: below the GPU time, the host stays ahead of the GPU, so launches do not
//!   leave it idle), launches per batch, and the peak of device memory after
//!   the warm-up and at the end (equal when the buffer pool stops growing). The model is loaded
//!   once for all the id files.
//!   The loop is Encoder::run_pipelined's (batches planned by length, batch i + 1 uploaded and
//!   queued before batch i is waited for), written out here on the backend itself so that its
//!   gauges can be read.
//! usage: gpu_bench attention SEQ HEADS HEAD_DIM SEQUENCES REPEATS
//!   Times the attention kernel alone (the Auto choice) on SEQUENCES packed sequences of SEQ
//!   tokens, random q, k, v, and prints one JSON line with TFLOP/s (4 · seq² · head_dim per head
//!   and sequence: Q Kᵀ and P V, no mask).

//! usage: gpu_bench gemm PATH MxNxK[,MxNxK...] [MIN_MS]
//!   The GEMM table's ember side, one path per process (scripts/cuda/gpu_bench.py runs sm80 first,
//!   then each sm90 tile in a process of its own, cooperative tiles first, ping-pong last: a
//!   trap in one tile kernel leaves the others' figures). PATH: `sm80`, an sm90 tile name of
//!   TILES without `gemm_sm90_` (`128x256`, ..., `pp_64x192`: the sm90 path forced, no
//!   self-check), or `auto` (the device's own decision). For each shape, `linear` (identity,
//!   bias, no residual) on random nonzero f16 data seeded by the shape (every process times the
//!   same data): a few launches to warm up, then back-to-back launches for at least MIN_MS
//!   (default 40) milliseconds of synchronized wall time; the error against f64 on 64 sampled
//!   rows (the last one included). One JSON line per shape, printed as soon as it is measured,
//!   with the tile the automatic choice would give the shape.
//! usage: gpu_bench gemm-status
//!   One JSON line: the GPU, which GEMM `linear` runs there and why (the self-check runs here).

use std::time::Instant;

// The tests' shared helpers: the seeded random inputs.
#[path = "../tests/common/mod.rs"]
mod common;

use common::testutil::SplitMix64;
use ember::backend::cuda::{CudaBackend, GemmChoice};
use ember::backend::{Activation, Backend, HostMatrix, PendingMatrix};
use ember::model::Model;
use ember::{Batch, Pooling, Sequence};

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

/// Seeded data of one shape: x [m, k], w [n, k] (both f16-rounded) and the bias.
fn gemm_inputs(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(0x6e33 ^ ((m as u64) << 40) ^ ((n as u64) << 20) ^ k as u64);
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect() };
    let x = round(rng.values(m * k, 1.0));
    let w = round(rng.values(n * k, 2.0 / (k as f32).sqrt()));
    let bias = rng.values(n, 0.5);
    (x, w, bias)
}

/// Relative Frobenius error of `out` against f64 over 64 rows spread over M, the last one
/// included (the partial last tile).
fn sampled_error(out: &[f32], x: &[f32], w: &[f32], bias: &[f32], (m, n, k): (usize, usize, usize)) -> f64 {
    use rayon::prelude::*;
    let rows: Vec<usize> = (0..64).map(|i| (i * (m - 1)) / 63).collect();
    let (diff, norm) = rows
        .par_iter()
        .map(|&r| {
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for c in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                    .sum::<f64>()
                    + bias[c] as f64;
                let got = out[r * n + c] as f64;
                diff += (got - dot) * (got - dot);
                norm += dot * dot;
            }
            (diff, norm)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    (diff / norm).sqrt()
}

fn gemm_status() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("gpu_bench gemm-status: {e}"));
    let (path, why) = gpu
        .gemm_decision()
        .unwrap_or_else(|e| panic!("gpu_bench gemm-status: {e}"));
    println!(
        "{{\"device\": {:?}, \"gemm\": \"{}\", \"why\": {:?}}}",
        gpu.device_name(),
        path.name(),
        why
    );
}

fn gemm_table(path: &str, shapes: &str, min_ms: f64) {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("gpu_bench gemm: {e}"));
    match path {
        "sm80" => gpu.set_gemm(GemmChoice::Sm80),
        "auto" => gpu.set_gemm(GemmChoice::Auto),
        tile => gpu
            .set_gemm(GemmChoice::Sm90)
            .and_then(|()| gpu.force_gemm_tile(Some(tile))),
    }
    .unwrap_or_else(|e| panic!("gpu_bench gemm {path}: {e}"));
    for shape in shapes.split(',') {
        let dims: Vec<usize> = shape.split('x').map(|d| d.parse().expect("MxNxK")).collect();
        let [m, n, k] = dims[..] else {
            panic!("{shape}: expected MxNxK")
        };
        let (x, w, bias) = gemm_inputs(m, n, k);
        let x_gpu = gpu.upload_f16(&x, m, k).expect("upload");
        let layer = gpu.load_linear(&w, &bias, n, k).expect("load_linear");
        let kernel = gpu.gemm_kernel(&layer, m).expect("gemm_kernel");
        let seconds = time_launches(&gpu, min_ms / 1e3, || {
            gpu.linear(&x_gpu, &layer, Activation::Identity, None)
                .expect("linear");
        });
        let out = gpu
            .download(
                &gpu.linear(&x_gpu, &layer, Activation::Identity, None)
                    .expect("linear"),
            )
            .expect("download");
        let error = sampled_error(&out.data, &x, &w, &bias, (m, n, k));
        let finite = out.data.iter().all(|v| v.is_finite());
        let auto_tile = gpu
            .auto_gemm_tile(m, n, k)
            .map_or("null".to_string(), |t| format!("\"{t}\""));
        println!(
            "{{\"m\": {m}, \"n\": {n}, \"k\": {k}, \"path\": \"{path}\", \"kernel\": \"{kernel}\", \
             \"seconds\": {seconds}, \"tflops\": {}, \"rel_err\": {error}, \"finite\": {finite}, \
             \"auto_tile\": {auto_tile}}}",
            2.0 * (m * n * k) as f64 / seconds / 1e12,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.first().is_some_and(|a| a == "gemm") {
        let usage = "usage: gpu_bench gemm sm80|auto|TILE MxNxK[,MxNxK...] [MIN_MS]";
        let (path, shapes) = (args.get(1).expect(usage), args.get(2).expect(usage));
        let min_ms: f64 = args.get(3).map_or(40.0, |v| v.parse().expect("MIN_MS"));
        return gemm_table(path, shapes, min_ms);
    }
    if args.first().is_some_and(|a| a == "gemm-status") {
        return gemm_status();
    }
    if args.first().is_some_and(|a| a == "attention") {
        return attention(&args[1..]);
    }
    if args.len() < 3 {
        eprintln!(
            "gpu_bench: nothing to do (usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS] [IDS2.json OUT2.npy ...] | gpu_bench attention SEQ HEADS HEAD_DIM SEQUENCES REPEATS | gpu_bench gemm sm80|auto|TILE MxNxK[,MxNxK...] [MIN_MS] | gpu_bench gemm-status)"
        );
        return;
    }
    let passes: usize = args.get(3).map_or(3, |p| p.parse().expect("PASSES"));
    let batch_tokens: usize = args.get(4).map_or(16_384, |b| b.parse().expect("BATCH_TOKENS"));
    let mut jobs = vec![(args[1].clone(), args[2].clone())];
    for pair in args.get(5..).unwrap_or(&[]).chunks(2) {
        assert!(pair.len() == 2, "IDS.json without OUT.npy");
        jobs.push((pair[0].clone(), pair[1].clone()));
    }

    let load = Instant::now();
    let dir = std::path::Path::new(&args[0]);
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("{e}"));
    let config = ember::config::ModelConfig::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let weights = ember::weights::Weights::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let model = Model::load(&gpu, config, &weights).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    drop(weights);
    let load_s = load.elapsed().as_secs_f64();
    // Which GEMM the rows below ran on, and why (the table says so beside each row).
    let (gemm, gemm_why) = gpu.gemm_decision().unwrap_or_else(|e| panic!("{e}"));
    gpu.set_timing(true);

    for (ids_path, out_path) in jobs {
        let ids: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(&ids_path).expect("IDS.json"))
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
        let (embeddings, _) = run(&gpu, &model, &sequences, batch_tokens); // warm-up: PTX JIT, pool
        gpu.gpu_seconds().expect("timing");
        let peak = || {
            gpu.peak_device_bytes()
                .expect("a GPU reports its peak device memory")
        };
        let peak_after_warmup = peak();
        let (launches0, batches0) = gpu.launch_counts();
        let (mut best, mut busy, mut queueing) = (f64::INFINITY, 0.0, 0.0);
        for _ in 0..passes {
            let start = Instant::now();
            let (_, host_s) = std::hint::black_box(run(&gpu, &model, &sequences, batch_tokens));
            let seconds = start.elapsed().as_secs_f64();
            let gpu_s = gpu.gpu_seconds().expect("timing");
            if seconds < best {
                (best, busy, queueing) = (seconds, gpu_s, host_s);
            }
        }
        let (launches1, batches1) = gpu.launch_counts();
        let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path).expect("OUT.npy"));
        ember::npy::write_f32(&mut out, embeddings.rows, embeddings.cols, &embeddings.data)
            .expect("writing OUT.npy");
        println!(
            "{{\"ids\": {ids_path:?}, \"sequences\": {}, \"tokens\": {tokens}, \"seconds\": {best}, \"tokens_per_s\": {}, \"gpu_busy_s\": {busy}, \"host_queue_s\": {queueing}, \"launches_per_batch\": {}, \"batches_per_pass\": {}, \"peak_device_bytes_after_warmup\": {peak_after_warmup}, \"peak_device_bytes\": {}, \"load_s\": {load_s}, \"gemm\": \"{}\", \"gemm_why\": {gemm_why:?}}}",
            sequences.len(),
            tokens as f64 / best,
            (launches1 - launches0) as f64 / (batches1 - batches0).max(1) as f64,
            (batches1 - batches0) / passes.max(1) as u64,
            peak(),
            gemm.name(),
        );
    }
}

/// Encoder::run_pipelined on the backend: one batch in flight while the next is queued. Returns
/// the embeddings and the host's time spent queueing GPU work.
fn run(
    gpu: &CudaBackend,
    model: &Model<CudaBackend>,
    sequences: &[Sequence],
    batch_tokens: usize,
) -> (HostMatrix, f64) {
    let lengths: Vec<usize> = sequences.iter().map(Sequence::len).collect();
    let hidden = model.config().hidden_size;
    let mut out = HostMatrix {
        rows: sequences.len(),
        cols: hidden,
        data: vec![0.0; sequences.len() * hidden],
    };
    let mut scatter = |members: &[usize], rows: PendingMatrix| {
        let rows = rows.wait().expect("forward pass");
        for (j, &i) in members.iter().enumerate() {
            out.data[i * hidden..(i + 1) * hidden].copy_from_slice(rows.row(j));
        }
    };
    let mut in_flight: Option<(Vec<usize>, PendingMatrix)> = None;
    let mut queueing = 0.0;
    for members in ember::batch::plan_batches(&lengths, batch_tokens, usize::MAX) {
        let refs: Vec<&Sequence> = members.iter().map(|&i| &sequences[i]).collect();
        let batch = Batch::pack(&refs, model.config().position_offset() as u32).expect("pack");
        let queued = Instant::now();
        let device_batch = gpu.upload_batch(&batch).expect("upload");
        let embeddings = model
            .embed(gpu, &device_batch, Pooling::Cls, true)
            .expect("forward pass");
        let pending = gpu.download_start(&embeddings).expect("download");
        drop((embeddings, device_batch));
        queueing += queued.elapsed().as_secs_f64();
        if let Some((previous, rows)) = in_flight.replace((members, pending)) {
            scatter(&previous, rows);
        }
    }
    if let Some((members, rows)) = in_flight {
        scatter(&members, rows);
    }
    (out, queueing)
}

fn attention(args: &[String]) {
    let arg = |i: usize, what: &str| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("gpu_bench attention: {what}"))
    };
    let (seq, heads, head_dim, sequences, repeats) = (
        arg(0, "SEQ"),
        arg(1, "HEADS"),
        arg(2, "HEAD_DIM"),
        arg(3, "SEQUENCES"),
        arg(4, "REPEATS"),
    );
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("{e}"));
    let tokens = seq * sequences;
    let batch = Batch {
        token_ids: vec![0; tokens],
        type_ids: vec![0; tokens],
        position_ids: (0..tokens).map(|t| (t % seq) as u32).collect(),
        cu_seqlens: (0..=sequences).map(|s| (s * seq) as u32).collect(),
        max_len: seq,
    };
    // Random q, k, v of magnitude <= 1 (never zeros: timing on zeros flatters some hardware).
    let mut state = 0x9e37_79b9_u32;
    let qkv: Vec<f32> = (0..tokens * 3 * heads * head_dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect();
    let qkv = gpu.upload(&qkv, tokens, 3 * heads * head_dim).expect("upload");
    let device_batch = gpu.upload_batch(&batch).expect("upload batch");
    let out = gpu
        .attention(&qkv, &device_batch, heads, head_dim)
        .expect("attention");
    drop(out);
    gpu.synchronize().expect("warm-up");
    let start = Instant::now();
    for _ in 0..repeats {
        drop(
            gpu.attention(&qkv, &device_batch, heads, head_dim)
                .expect("attention"),
        );
    }
    gpu.synchronize().expect("attention runs");
    let seconds = start.elapsed().as_secs_f64() / repeats.max(1) as f64;
    let flops = 4.0 * (seq * seq * head_dim * heads * sequences) as f64;
    println!(
        "{{\"seq\": {seq}, \"heads\": {heads}, \"head_dim\": {head_dim}, \"sequences\": {sequences}, \"seconds\": {seconds}, \"attention_tflops\": {}}}",
        flops / seconds / 1e12
    );
}
