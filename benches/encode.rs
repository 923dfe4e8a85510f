//! End to end through the library: `Embedder::encode` on a corpus (one text per line), f32 or
//! bf16, on a rayon pool of the given size; the model is loaded and warmed up before the clock
//! starts (as the PyTorch and ONNX Runtime scripts time `encode` only). Prints one line of JSON
//! like scripts/bench/bench_torch.py, for scripts/bench/compare-cpu.sh.
//!
//! `cargo bench --bench encode -- --model DIR --corpus FILE [--dtype f32|bf16|int8] [--threads N] [--repeat 3]
//! [--batch-tokens N] [--max-length N]`

use std::time::Instant;

use ember::{Dtype, Embedder, EmbedderOptions};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut model, mut corpus, mut dtype, mut threads, mut repeat) = (None, None, Dtype::F32, 0, 3);
    let (mut batch_tokens, mut max_length) = (None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(value()),
            "--corpus" => corpus = Some(value()),
            "--dtype" => dtype = value().parse().expect("dtype"),
            "--threads" => threads = value().parse().expect("threads"),
            "--repeat" => repeat = value().parse().expect("repeat"),
            "--batch-tokens" => batch_tokens = Some(value().parse().expect("batch tokens")),
            "--max-length" => max_length = Some(value().parse().expect("max length")),
            other => panic!("unknown argument {other}"),
        }
    }
    let (Some(model), Some(corpus)) = (model, corpus) else {
        eprintln!(
            "usage: cargo bench --bench encode -- --model DIR --corpus FILE [--dtype f32|bf16|int8] [--threads N]"
        );
        return;
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let text = std::fs::read_to_string(&corpus).unwrap();
    let texts: Vec<&str> = text.lines().collect();
    pool.install(|| {
        let embedder = Embedder::load_with_dtype(
            &model,
            EmbedderOptions {
                batch_tokens,
                max_length,
                ..Default::default()
            },
            dtype,
        )
            .unwrap_or_else(|e| panic!("{e}"));
        let tokens: usize = embedder
            .tokenize(&texts, false)
            .unwrap()
            .iter()
            .map(|s| s.token_ids.len())
            .sum();
        embedder.encode(&texts[..texts.len().min(64)]).unwrap(); // warm-up
        let mut times: Vec<f64> = (0..repeat.max(1))
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(embedder.encode(&texts).unwrap());
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        println!(
            "{{\"engine\": \"ember {dtype} ({} kernels)\", \"texts\": {}, \"tokens\": {tokens}, \"seconds\": {seconds}, \"tokens_per_s\": {}}}",
            {
                let isa = ember::backend::cpu::matmul::Isa::detected();
                match dtype {
                    Dtype::F32 => isa.f32_kernels().name(),
                    Dtype::Bf16 => ember::backend::cpu::bf16::Kernel::detected().map_or("no bf16", |k| k.name()),
                    Dtype::Int8 => ember::backend::cpu::int8::kernel_name(),
                }
            },
            texts.len(),
            tokens as f64 / seconds
        );
    });
}
