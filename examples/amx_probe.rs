use ember::backend::cpu::{bf16, matmul::Isa, testutil::SplitMix64};
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (m, n, k, reps) = (args[0], args[1], args[2], args[3]);
    let mut rng = SplitMix64::new(5);
    let a = rng.values(m * k, 1.0);
    let w = bf16::PackedBf16::from_rows(&rng.values(n * k, 0.05), n, k);
    let bias = rng.values(n, 0.1);
    let mut out = vec![0.0; m * n];
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            bf16::gemm_panels_with(Isa::Amx, &a, k, m, &w, 0..w.panels(), Some(&bias), &mut out, n);
        }
        best = best.max(2.0 * (m * n * k * reps) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    println!("m={m} n={n} k={k}: {best:.1} GFLOP/s");
}
