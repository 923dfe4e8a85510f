//! The ember side of scripts/gpu-run.sh's comparison with PyTorch: reads token ids, embeds them
//! on the GPU (CLS pooling, L2-normalized, as bge), writes the embeddings as .npy in input order
//! and prints the best timing of a few passes as one JSON line. A `harness = false` test target
//! so that it is built with the test binaries; without arguments it does nothing.
//!
//! usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS]
//! IDS.json: a list of token id lists, special tokens included.

use std::time::Instant;

use ember::{Device, Encoder, Pooling, Sequence};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        eprintln!(
            "gpu_bench: nothing to do (usage: gpu_bench MODEL_DIR IDS.json OUT.npy [PASSES] [BATCH_TOKENS])"
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
