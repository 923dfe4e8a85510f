//! The CUDA backend against the CPU: each op against the f64 scalar reference on fresh random
//! inputs of awkward shapes (outputs poisoned with NaN before every launch, every launch checked),
//! then whole models against the CPU path. Compiled only with `--features cuda`; on a machine
//! without a GPU every test prints why it did nothing and passes, except the one that checks that
//! such a machine gets a clear error instead of a panic.
//!
//! Paths are read at run time so that the test binary can run from scripts/gpu-check.sh's bundle:
//! `EMBER_FIXTURES` (default: the repository's fixtures/) and `EMBER_TEST_MODEL` (the real
//! all-MiniLM-L6-v2; default .cache/models/all-MiniLM-L6-v2).
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use ember::backend::cpu::reference;
use ember::backend::cpu::testutil::{deviation, SplitMix64};
use ember::backend::cuda::{AttentionKernel, CudaBackend, BERT_GEMM_SHAPES};
use ember::backend::{Activation, Backend, EmbeddingTables, HostMatrix, LayerNormWeights, Pooling};
use ember::{Device, Embedder, EmbedderOptions, Error, Reranker, RerankerOptions};
use half::f16;

/// The GPU, in checked mode, or `None` after printing why the test does nothing.
fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(backend) => {
            backend.set_checked(true);
            Some(backend)
        }
        // scripts/gpu-run.sh sets EMBER_REQUIRE_GPU: on the GPU machine a skip would hide a failure.
        Err(e) if std::env::var_os("EMBER_REQUIRE_GPU").is_some() => {
            panic!("{test}: EMBER_REQUIRE_GPU is set but: {e}")
        }
        Err(e) => {
            eprintln!("{test}: skipped, no usable GPU: {e}");
            None
        }
    }
}

fn fixtures() -> PathBuf {
    std::env::var_os("EMBER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

fn minilm() -> PathBuf {
    let dir = std::env::var_os("EMBER_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2"));
    assert!(
        dir.join("config.json").exists(),
        "no test model at {} (set EMBER_TEST_MODEL)",
        dir.display()
    );
    dir
}

fn json(name: &str) -> serde_json::Value {
    let path = fixtures().join(name);
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
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

#[test]
fn linear_matches_reference_on_awkward_shapes() {
    let Some(gpu) = gpu("linear") else { return };
    let mut rng = SplitMix64::new(0x6e6d);
    // (M, N, K): K % 8 == 0 takes the tensor-core kernel, otherwise the simple one.
    let shapes = [
        (1, 1, 8),
        (37, 97, 200),
        (130, 65, 72),
        (129, 1152, 384),
        (300, 384, 1536),
        (257, 1, 64),
        (5, 3, 13),
        (70, 33, 100),
    ];
    let activations = [
        Activation::Identity,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu,
        Activation::Tanh,
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for (j, &activation) in activations.iter().enumerate() {
            let with_residual = (i + j) % 2 == 0;
            let scale = 1.0 / (k as f32).sqrt();
            let x = rounded(rng.matrix(m, k, 1.0));
            let w = rounded(rng.matrix(n, k, 2.0 * scale));
            let bias = rng.values(n, 0.5);
            let residual = with_residual.then(|| rounded(rng.matrix(m, n, 1.0)));
            let want = reference::linear(&x, &w, &bias, activation, residual.as_ref());
            let layer = gpu.load_linear(&w.data, &bias, n, k).unwrap();
            let residual_gpu = residual.as_ref().map(|r| up(&gpu, r));
            let out = gpu
                .linear(&up(&gpu, &x), &layer, activation, residual_gpu.as_ref())
                .unwrap();
            let got = gpu.download(&out).unwrap();
            assert_close(
                &format!("linear [{m}x{k}]·[{n}x{k}]ᵀ {activation:?} residual={with_residual}"),
                &got,
                &want,
            );
        }
    }
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::Identity,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Relu,
    Activation::Tanh,
];

fn activate_f64(x: f64, activation: Activation) -> f64 {
    match activation {
        Activation::Identity => x,
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044_715 * x * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
    }
}

/// Rows of an M-row output that are compared with the f64 reference: all of them up to 1100,
/// else the first 64, the last 192 (the partial last tile and the tiles before it) and every
/// 97th, so that the reference stays cheap at M = 8191 with K = 4096.
fn checked_rows(m: usize) -> Vec<usize> {
    if m <= 1100 {
        return (0..m).collect();
    }
    let mut rows: Vec<usize> = (0..64)
        .chain((m - 192)..m)
        .chain((64..m - 192).step_by(97))
        .collect();
    rows.sort_unstable();
    rows
}

/// act(x[r] · wᵀ + bias) (+ residual[r]) in f64 for each of `rows`, row after row.
fn linear_f64(
    x: &HostMatrix,
    w: &HostMatrix,
    bias: &[f32],
    activation: Activation,
    residual: Option<&HostMatrix>,
    rows: &[usize],
) -> Vec<f64> {
    use rayon::prelude::*;
    let (n, k) = (w.rows, w.cols);
    rows.par_iter()
        .flat_map_iter(|&r| {
            let xr = &x.data[r * k..(r + 1) * k];
            (0..n).map(move |c| {
                let wc = &w.data[c * k..(c + 1) * k];
                let dot: f64 = xr.iter().zip(wc).map(|(&a, &b)| a as f64 * b as f64).sum();
                let y = activate_f64(dot + bias[c] as f64, activation);
                y + residual.map_or(0.0, |res| res.data[r * n + c] as f64)
            })
        })
        .collect()
}

/// ‖got − want‖_F / ‖want‖_F over `rows` of `got`.
fn relative_frobenius(got: &HostMatrix, rows: &[usize], want: &[f64]) -> f64 {
    let n = got.cols;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (i, &r) in rows.iter().enumerate() {
        for c in 0..n {
            let (g, w) = (got.data[r * n + c] as f64, want[i * n + c]);
            diff += (g - w) * (g - w);
            norm += w * w;
        }
    }
    (diff / norm.max(1e-300)).sqrt()
}

/// Where `got` differs from `want` (over `rows`) by more than 1e-2 of want's largest magnitude:
/// how many elements, the first few, and how they spread over c % 8 and r % 8 (the phase of the
/// 128-byte swizzle in w's and x's shared tiles: the pattern a wrong descriptor or swizzle would
/// leave) and over (r % 128) / 16 (the warp of a 128-row tile: a wrong fragment mapping or
/// consumer offset). For failure messages.
fn mismatch_report(got: &HostMatrix, rows: &[usize], want: &[f64]) -> String {
    let n = got.cols;
    let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs())).max(1e-30);
    let (mut bad, mut first) = (0usize, Vec::new());
    let (mut by_col8, mut by_row8, mut by_warp) = ([0usize; 8], [0usize; 8], [0usize; 8]);
    for (i, &r) in rows.iter().enumerate() {
        for c in 0..n {
            let (g, w) = (got.data[r * n + c] as f64, want[i * n + c]);
            if (g - w).abs() > 1e-2 * scale {
                bad += 1;
                by_col8[c % 8] += 1;
                by_row8[r % 8] += 1;
                by_warp[(r % 128) / 16] += 1;
                if first.len() < 4 {
                    first.push(format!("({r}, {c}): {g} vs {w:.4}"));
                }
            }
        }
    }
    format!(
        "{bad} of {} elements off by > 1e-2 of the max; first {}; by col % 8 {by_col8:?}, row % 8 {by_row8:?}, \
         (row % 128) / 16 {by_warp:?}",
        rows.len() * n,
        first.join(", ")
    )
}

/// The sm90 GEMM (wgmma + TMA, kernels/gemm_sm90.cu) on every BERT (N, K) with M that is not a
/// multiple of any tile (1, 77, 1000, 8191), every epilogue, residual on and off, with the tile
/// ember picks and with each tile kernel forced (ping-pong ones included): against f64 (relative Frobenius
/// error <= 2e-3, every output written) and against the sm80 path. Every case runs and every
/// failure is listed (with where the wrong elements are) before the test fails: a first GPU run
/// should show the whole picture. On a GPU that is not Hopper this checks the sm80 path alone.
#[test]
fn gemm_sm90_matches_f64_reference_and_sm80_path() {
    let Some(gpu) = gpu("gemm_sm90") else { return };
    use ember::backend::cuda::GemmChoice;
    use ember::backend::cuda::TILES;
    let tiles: Vec<Option<&str>> = if gpu.has_sm90_gemm() {
        // The automatic choice, then every tile kernel forced (the ping-pong ones included).
        std::iter::once(None)
            .chain(TILES.iter().map(|t| Some(&t.name["gemm_sm90_".len()..])))
            .collect()
    } else {
        eprintln!(
            "gemm_sm90: {} has no sm90 GEMM (not compute capability 9.x, or EMBER_GEMM=sm80): checking the sm80 path only",
            gpu.device_name()
        );
        vec![None]
    };
    let mut rng = SplitMix64::new(0x5990);
    let (mut worst, mut failures, mut cases) = (0.0f64, Vec::new(), 0usize);
    // First a few small cases that isolate the parts: one K-slice (descriptors, swizzle, fragment
    // mapping, no pipeline), one tile with several slices, then stages wrapping around, a partial
    // N-tile (N = 320) and several tiles per CTA. Then N = 64, below every tile's BN (w's box
    // is mostly past the tensor: TMA must still complete the whole box's bytes), and many tiles
    // per CTA with fewer K-slices than stages (K = 64, 128: one or two slices per tile, so the
    // ring's phases turn over within a few tiles and the ping-pong turns alternate every
    // tile, on every tile kernel; the BERT shapes all have K >= 384). Then every BERT shape.
    let small = [
        (64, 256, 64),
        (128, 256, 64),
        (64, 192, 256),
        (130, 320, 512),
        (300, 256, 1024),
        (77, 64, 128),
        (20000, 512, 64),
        (20000, 768, 128),
    ];
    let bert = [1usize, 77, 1000, 8191]
        .iter()
        .flat_map(|&m| BERT_GEMM_SHAPES.iter().map(move |&(n, k)| (m, n, k)));
    for (case, (m, n, k)) in small.into_iter().chain(bert).enumerate() {
        // Any 10 consecutive cases (12 per M) make every (activation, residual) pair.
        let activation = ACTIVATIONS[case % ACTIVATIONS.len()];
        let with_residual = (case / ACTIVATIONS.len()).is_multiple_of(2);
        let x = rounded(rng.matrix(m, k, 1.0));
        let w = rounded(rng.matrix(n, k, 2.0 / (k as f32).sqrt()));
        let bias = rng.values(n, 0.5);
        let residual = with_residual.then(|| rounded(rng.matrix(m, n, 1.0)));
        let layer = gpu.load_linear(&w.data, &bias, n, k).unwrap();
        let (x_gpu, residual_gpu) = (up(&gpu, &x), residual.as_ref().map(|r| up(&gpu, r)));
        let what = format!("gemm [{m}x{k}]·[{n}x{k}]ᵀ {activation:?} residual={with_residual}");
        let rows = checked_rows(m);
        let want = linear_f64(&x, &w, &bias, activation, residual.as_ref(), &rows);
        let run = || {
            gpu.download(
                &gpu.linear(&x_gpu, &layer, activation, residual_gpu.as_ref())
                    .unwrap(),
            )
            .unwrap()
        };

        gpu.set_gemm(GemmChoice::Sm80);
        let sm80 = run();
        let sm80_error = relative_frobenius(&sm80, &rows, &want);
        if sm80_error > F16_TOLERANCE {
            failures.push(format!("{what} (sm80): vs f64 {sm80_error:.3e}"));
        }
        let sm80_f64: Vec<f64> = sm80.data.iter().map(|&v| v as f64).collect();
        let all: Vec<usize> = (0..m).collect();
        gpu.set_gemm(GemmChoice::Auto);
        for &tile in &tiles {
            if gpu.has_sm90_gemm() {
                gpu.force_gemm_tile(tile).unwrap();
            }
            let kernel = gpu.gemm_kernel(&layer, m);
            if gpu.has_sm90_gemm() && !kernel.starts_with("gemm_sm90") {
                failures.push(format!("{what}: took {kernel}, not an sm90 kernel"));
            }
            let got = run();
            cases += 1;
            if !got.data.iter().all(|v| v.is_finite()) {
                let unwritten = got.data.iter().filter(|v| !v.is_finite()).count();
                failures.push(format!(
                    "{what} ({kernel}): {unwritten} non-finite outputs (unwritten, NaN-poisoned?)"
                ));
                continue;
            }
            let error = relative_frobenius(&got, &rows, &want);
            let agreement = relative_frobenius(&got, &all, &sm80_f64);
            worst = worst.max(error);
            eprintln!("{what}: {kernel}, vs f64 {error:.2e}, vs sm80 {agreement:.2e}");
            if error > F16_TOLERANCE || agreement > F16_TOLERANCE {
                failures.push(format!(
                    "{what} ({kernel}): vs f64 {error:.3e}, vs sm80 {agreement:.3e}; {}",
                    mismatch_report(&got, &rows, &want)
                ));
            }
        }
        if gpu.has_sm90_gemm() {
            gpu.force_gemm_tile(None).unwrap();
        }
    }
    eprintln!("gemm_sm90: {cases} runs, worst relative Frobenius deviation vs f64 {worst:.3e}");
    for f in &failures {
        eprintln!("gemm_sm90 FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} GEMM runs failed (listed above)",
        failures.len()
    );
}

#[test]
fn attention_matches_reference_on_packed_sequences() {
    let Some(gpu) = gpu("attention") else { return };
    let mut rng = SplitMix64::new(0xa77e);
    let cases: [(&[usize], usize, usize); 6] = [
        (&[1], 1, 32),
        (&[7, 33, 1, 64, 65], 3, 32),
        (&[130, 5, 97], 2, 64),
        (&[300, 2], 12, 32),
        (&[31, 200], 4, 24),
        (&[17, 64, 129], 2, 48),
    ];
    for (lengths, heads, head_dim) in cases {
        let batch = rng.batch(lengths, 10, 2);
        let tokens = batch.token_ids.len();
        let qkv = rounded(rng.matrix(tokens, 3 * heads * head_dim, 1.0));
        let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
        let device_batch = gpu.upload_batch(&batch).unwrap();
        let out = gpu
            .attention(&up(&gpu, &qkv), &device_batch, heads, head_dim)
            .unwrap();
        let got = gpu.download(&out).unwrap();
        assert_close(
            &format!("attention lengths {lengths:?} heads {heads} head_dim {head_dim}"),
            &got,
            &want,
        );
    }
}

#[test]
fn layer_norm_embed_pool_normalize_match_reference() {
    let Some(gpu) = gpu("rowwise") else { return };
    let mut rng = SplitMix64::new(0x1a7e);
    for &(rows, cols) in &[(1, 1), (3, 7), (129, 384), (77, 1000), (5, 4096)] {
        // A large common offset checks that the variance is not computed as E[x²] − E[x]².
        let mut x = rng.matrix(rows, cols, 1.0);
        x.data.iter_mut().for_each(|v| *v += 8.0);
        let x = rounded(x);
        let gamma = rounded(rng.matrix(1, cols, 1.5));
        let beta = rounded(rng.matrix(1, cols, 0.5));
        let want = reference::layer_norm(&x, &gamma.data, &beta.data, 1e-12);
        let norm = LayerNormWeights {
            gamma: up(&gpu, &gamma),
            beta: up(&gpu, &beta),
            eps: 1e-12,
        };
        let got = gpu
            .download(&gpu.layer_norm(&up(&gpu, &x), &norm).unwrap())
            .unwrap();
        assert_close(&format!("layer_norm [{rows}x{cols}]"), &got, &want);

        let normalized = gpu.download(&gpu.l2_normalize(&up(&gpu, &x)).unwrap()).unwrap();
        assert_close(
            &format!("l2_normalize [{rows}x{cols}]"),
            &normalized,
            &reference::l2_normalize(&x),
        );
    }

    for &(hidden, lengths) in &[
        (32usize, &[1usize, 5, 40][..]),
        (384, &[3, 1, 77, 2][..]),
        (1000, &[129][..]),
    ] {
        let (vocab, positions, types) = (50, 130, 2);
        let batch = rng.batch(lengths, vocab, types);
        let word = rounded(rng.matrix(vocab, hidden, 1.0));
        let position = rounded(rng.matrix(positions, hidden, 0.5));
        let token_type = rounded(rng.matrix(types, hidden, 0.25));
        let gamma = rounded(rng.matrix(1, hidden, 1.0));
        let beta = rounded(rng.matrix(1, hidden, 0.5));
        let want = reference::embed(
            &batch.token_ids,
            &batch.position_ids,
            &batch.type_ids,
            &word,
            &position,
            &token_type,
            &gamma.data,
            &beta.data,
            1e-12,
        );
        let tables = EmbeddingTables {
            word: up(&gpu, &word),
            position: up(&gpu, &position),
            token_type: up(&gpu, &token_type),
        };
        let norm = LayerNormWeights {
            gamma: up(&gpu, &gamma),
            beta: up(&gpu, &beta),
            eps: 1e-12,
        };
        let device_batch = gpu.upload_batch(&batch).unwrap();
        let got = gpu
            .download(&gpu.embed(&device_batch, &tables, &norm).unwrap())
            .unwrap();
        assert_close(&format!("embed hidden {hidden} lengths {lengths:?}"), &got, &want);

        let hidden_states = rounded(rng.matrix(batch.token_ids.len(), hidden, 1.0));
        for mode in [Pooling::Cls, Pooling::Mean] {
            let want = reference::pool(&hidden_states, &batch.cu_seqlens, mode);
            let got = gpu
                .download(&gpu.pool(&up(&gpu, &hidden_states), &device_batch, mode).unwrap())
                .unwrap();
            assert_close(
                &format!("pool {mode:?} hidden {hidden} lengths {lengths:?}"),
                &got,
                &want,
            );
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// The design's bar for the f16 GPU path against the f32 CPU path.
const MIN_COSINE: f64 = 0.9995;

fn check_rows(what: &str, gpu: &HostMatrix, cpu: &HostMatrix) {
    assert_eq!((gpu.rows, gpu.cols), (cpu.rows, cpu.cols), "{what}: shapes");
    let worst = (0..cpu.rows)
        .map(|r| cosine(gpu.row(r), cpu.row(r)))
        .fold(1.0f64, f64::min);
    eprintln!("{what}: {} rows, worst cosine {worst:.6}", cpu.rows);
    assert!(worst >= MIN_COSINE, "{what}: worst cosine {worst}");
}

fn texts() -> Vec<String> {
    json("texts.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn embedder_matches_cpu(what: &str, dir: PathBuf) {
    let cuda = Embedder::load(
        &dir,
        EmbedderOptions {
            device: Device::Cuda(0),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let cpu = Embedder::load(&dir, EmbedderOptions::default()).unwrap();
    let texts = texts();
    let got = cuda.encode(&texts).unwrap();
    check_rows(what, &got, &cpu.encode(&texts).unwrap());

    // Batching must not change a result: each text alone against the whole set in one batch.
    let alone = Embedder::load(
        &dir,
        EmbedderOptions {
            device: Device::Cuda(0),
            batch_tokens: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
    .encode(&texts)
    .unwrap();
    let worst = (0..got.rows)
        .map(|r| cosine(got.row(r), alone.row(r)))
        .fold(1.0f64, f64::min);
    eprintln!("{what}: one text per batch vs one batch, worst cosine {worst:.8}");
    assert!(
        worst >= 0.99999,
        "{what}: batching changed a result (cosine {worst})"
    );
}

#[test]
fn fixture_embedders_match_cpu() {
    if gpu("fixture embedders").is_none() {
        return;
    }
    for name in [
        "tiny-bert-embed-f32",
        "tiny-bert-embed-f16",
        "tiny-bert-embed-bf16",
    ] {
        embedder_matches_cpu(name, fixtures().join(name));
    }
}

#[test]
fn minilm_matches_cpu() {
    if gpu("minilm").is_none() {
        return;
    }
    embedder_matches_cpu("all-MiniLM-L6-v2", minilm());
}

#[test]
fn fixture_rerankers_match_cpu() {
    if gpu("fixture rerankers").is_none() {
        return;
    }
    let pairs: Vec<(String, String)> = json("pairs.json")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in [
        "tiny-bert-rerank-f32",
        "tiny-bert-rerank-f16",
        "tiny-xlmr-rerank-f32",
        "tiny-xlmr-rerank-bf16",
    ] {
        let dir = fixtures().join(name);
        let load = |device| {
            Reranker::load(
                &dir,
                RerankerOptions {
                    device,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let got = load(Device::Cuda(0)).logits(&pairs).unwrap();
        let want = load(Device::Cpu).logits(&pairs).unwrap();
        // One logit per pair: compare the whole column of scores as one vector, and each score
        // within 1e-2 of the largest (f16 activations through every layer).
        let cos = cosine(&got.data, &want.data);
        let d = deviation(&got, &want);
        eprintln!("{name}: {} logits, cosine {cos:.6}, {d:?}", got.data.len());
        assert!(
            cos >= MIN_COSINE && d.relative_to_max <= 1e-2,
            "{name}: cosine {cos}, {d:?}"
        );
    }
}

// ---- Tensor-core attention (kernels/attention.cu: attention_fa_*, attention_short_*) ----------

/// Runs `kernel` on fresh random q, k, v (never zeros; `scale` sets how peaked the softmax is)
/// and checks it against the f64 reference; returns the GPU output for further comparisons.
fn check_attention_kernel(
    gpu: &CudaBackend,
    rng: &mut SplitMix64,
    lengths: &[usize],
    heads: usize,
    head_dim: usize,
    scale: f32,
    kernels: &[AttentionKernel],
) {
    let batch = rng.batch(lengths, 10, 2);
    let tokens = batch.token_ids.len();
    let qkv = rounded(rng.matrix(tokens, 3 * heads * head_dim, scale));
    let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
    let device_batch = gpu.upload_batch(&batch).unwrap();
    let qkv_gpu = up(gpu, &qkv);
    for &kernel in kernels {
        let out = gpu
            .attention_with(&qkv_gpu, &device_batch, heads, head_dim, kernel)
            .unwrap_or_else(|e| panic!("{kernel:?} lengths {lengths:?}: {e}"));
        let got = gpu.download(&out).unwrap();
        // F16_TOLERANCE: on top of the output's own f16 rounding, P is rounded to f16 before the
        // P·V product (as FlashAttention does); each weight's 2^-11 relative error averages out
        // over the keys, far below 2e-3 of the largest output.
        assert_close(
            &format!("{kernel:?} lengths {lengths:?} heads {heads} head_dim {head_dim} scale {scale}"),
            &got,
            &want,
        );
    }
}

#[test]
fn flash_attention_matches_f64_reference_on_awkward_length_mixes() {
    let Some(gpu) = gpu("flash attention") else { return };
    let mut rng = SplitMix64::new(0xf1a5);
    // Every boundary of the 16-row mma tiles, the 32/64-key chunks, the 128-query blocks and
    // the short path's 128-token limit, mixed in one batch (not sorted: the kernels must not
    // rely on order), plus a lone 1-token sequence and one past BERT's 512 positions.
    let mix: &[usize] = &[129, 1, 512, 33, 2, 255, 64, 511, 31, 128, 65, 127];
    let all = [
        AttentionKernel::Auto,
        AttentionKernel::Tiled,
        AttentionKernel::Reference,
    ];
    for head_dim in [32, 64] {
        for (heads, scale) in [(3, 1.0), (2, 4.0)] {
            check_attention_kernel(&gpu, &mut rng, mix, heads, head_dim, scale, &all);
        }
        check_attention_kernel(&gpu, &mut rng, &[1], 1, head_dim, 1.0, &all);
        check_attention_kernel(&gpu, &mut rng, &[700, 3], 2, head_dim, 2.0, &all);
    }
}

#[test]
fn short_attention_matches_f64_reference_at_one_two_and_four_pairs_per_block() {
    let Some(gpu) = gpu("short attention") else { return };
    let mut rng = SplitMix64::new(0x5407);
    let both = [
        AttentionKernel::Short,
        AttentionKernel::Tiled,
        AttentionKernel::Auto,
    ];
    // max_len <= 32: 4 (sequence, head) pairs per block; <= 64: 2; <= 128: 1. Pair counts that
    // leave the last block partly empty (5 sequences x 3 heads = 15 pairs).
    let mixes: [&[usize]; 4] = [
        &[1, 2, 17, 31, 32],
        &[33, 1, 64, 5, 63],
        &[65, 127, 128, 1, 100],
        &[16, 48, 80, 112, 96, 3, 128],
    ];
    for head_dim in [32, 64] {
        for (i, mix) in mixes.iter().enumerate() {
            let scale = if i % 2 == 0 { 1.0 } else { 4.0 };
            check_attention_kernel(&gpu, &mut rng, mix, 3, head_dim, scale, &both);
        }
        // One sequence, one head: a grid of one block, three of its four warps idle.
        check_attention_kernel(&gpu, &mut rng, &[7], 1, head_dim, 1.0, &both);
    }
    // The short kernel refuses what it cannot hold, and head dims without a tensor-core kernel.
    let batch = gpu.upload_batch(&rng.batch(&[129], 10, 2)).unwrap();
    let qkv = up(&gpu, &rounded(rng.matrix(129, 3 * 64, 1.0)));
    assert!(gpu
        .attention_with(&qkv, &batch, 1, 64, AttentionKernel::Short)
        .is_err());
    let qkv = up(&gpu, &rounded(rng.matrix(129, 3 * 48, 1.0)));
    assert!(gpu
        .attention_with(&qkv, &batch, 1, 48, AttentionKernel::Tiled)
        .is_err());
}

// ---- The pipeline (src/backend/cuda/transfer.rs) ----------------------------------------------

/// Batches copied in through the slots and the copy stream, with several batches in flight and
/// several slots leased at once, give the same bits as the plain synchronous path; repeating the
/// same batches does not raise the peak of device memory (the buffer pool is reused).
#[test]
fn overlapped_uploads_match_synchronous_ones_bit_for_bit_and_memory_stays_flat() {
    let Some(gpu) = gpu("overlapped uploads") else {
        return;
    };
    // Checked mode synchronizes after every launch, which would hide ordering bugs between the
    // two streams: run the way production does.
    gpu.set_checked(false);
    let dir = fixtures().join("tiny-bert-embed-f32");
    let config = ember::config::ModelConfig::load(&dir).unwrap();
    let weights = ember::weights::Weights::open(&dir).unwrap();
    let (vocab, types, max_len) = (
        config.vocab_size,
        config.type_vocab_size,
        config.max_position_embeddings,
    );
    let model = ember::model::Model::load(&gpu, config, &weights).unwrap();
    let mut rng = SplitMix64::new(0x0e71);
    let batches: Vec<ember::Batch> = (0..12)
        .map(|i| {
            let n = 1 + rng.below(40);
            let lengths: Vec<usize> = (0..n).map(|_| 1 + rng.below(max_len)).collect();
            // Every third batch much larger: the slots must grow (or be replaced) mid-stream.
            let lengths = if i % 3 == 2 { lengths.repeat(8) } else { lengths };
            rng.batch(&lengths, vocab, types)
        })
        .collect();
    let run_async = || -> Vec<HostMatrix> {
        // Three batches uploaded before any runs (three slots leased at once), then all queued
        // with their downloads in flight together, waited for at the end.
        let mut pending = Vec::new();
        for chunk in batches.chunks(3) {
            let uploaded: Vec<_> = chunk.iter().map(|b| gpu.upload_batch(b).unwrap()).collect();
            for b in uploaded.iter().rev() {
                let out = model.embed(&gpu, b, Pooling::Mean, true).unwrap();
                pending.push(gpu.download_start(&out).unwrap());
            }
        }
        let mut rows: Vec<HostMatrix> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
        // Undo the reversal within each chunk of three.
        for chunk in rows.chunks_mut(3) {
            chunk.reverse();
        }
        rows
    };
    let overlapped = run_async();
    let peak = gpu.peak_device_bytes();
    for round in 0..3 {
        let again = run_async();
        assert_eq!(
            again, overlapped,
            "round {round}: results changed between identical runs"
        );
        assert_eq!(
            gpu.peak_device_bytes(),
            peak,
            "round {round}: peak device memory grew over repeated batches"
        );
    }
    gpu.set_synchronous_uploads(true);
    let synchronous: Vec<HostMatrix> = batches
        .iter()
        .map(|b| {
            let device_batch = gpu.upload_batch(b).unwrap();
            gpu.download(&model.embed(&gpu, &device_batch, Pooling::Mean, true).unwrap())
                .unwrap()
        })
        .collect();
    gpu.set_synchronous_uploads(false);
    for (i, (a, s)) in overlapped.iter().zip(&synchronous).enumerate() {
        assert!(a.data.iter().all(|v| v.is_finite()), "batch {i}: non-finite");
        assert_eq!(a, s, "batch {i}: overlapped and synchronous uploads differ");
    }
    eprintln!(
        "overlapped uploads: {} batches bit-identical; peak device memory {} bytes, now {}",
        batches.len(),
        peak,
        gpu.device_bytes()
    );
}
