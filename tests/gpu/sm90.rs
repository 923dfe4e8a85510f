//! The sm90 GEMM (kernels/gemm_sm90.cu: wgmma, TMA, warp specialization), one test per tile
//! kernel, so that scripts/cuda/gpu-run.sh can run each in a process of its own (a trap, the
//! pipeline's watchdog, leaves the context unusable): the cooperative tiles first, the automatic
//! tile choice, the ping-pong tiles last. Then the GEMM path's self-check and report
//! (src/backend/cuda/gemm_choice.rs). On a GPU that is not compute capability 9.x these print
//! why they do nothing; on a 9.x GPU an sm90 GEMM that failed to set up fails them.

use crate::common::reference;
use crate::common::testutil::SplitMix64;
use ember::backend::cuda::{CudaBackend, GemmChoice, GemmPath, BERT_GEMM_SHAPES, TILES};
use ember::backend::{Activation, Backend};

use super::*;

/// The tile kernels the tests below force, one test each, in the order of [`TILES`].
const TESTED_TILES: [&str; 6] = [
    "128x256",
    "128x192",
    "128x128",
    "64x128",
    "pp_64x256",
    "pp_64x192",
];

#[test]
fn every_tile_of_the_table_has_a_test() {
    let names: Vec<&str> = TILES.iter().map(|t| &t.name["gemm_sm90_".len()..]).collect();
    assert_eq!(names, TESTED_TILES, "add a test for each tile of TILES");
}

#[test]
fn tile_128x256() {
    check_sm90("sm90::tile_128x256", Some(TESTED_TILES[0]));
}

#[test]
fn tile_128x192() {
    check_sm90("sm90::tile_128x192", Some(TESTED_TILES[1]));
}

#[test]
fn tile_128x128() {
    check_sm90("sm90::tile_128x128", Some(TESTED_TILES[2]));
}

#[test]
fn tile_64x128() {
    check_sm90("sm90::tile_64x128", Some(TESTED_TILES[3]));
}

/// The per-shape tile choice of gemm.rs (cooperative tiles only).
#[test]
fn automatic_tile_choice() {
    check_sm90("sm90::automatic_tile_choice", None);
}

// Ping-pong: not in the automatic choice until a GPU run shows them right and faster.
#[test]
fn tile_pp_64x256() {
    check_sm90("sm90::tile_pp_64x256", Some(TESTED_TILES[4]));
}

#[test]
fn tile_pp_64x192() {
    check_sm90("sm90::tile_pp_64x192", Some(TESTED_TILES[5]));
}

/// The GPU with the sm90 GEMM set up, or None after saying why the test does nothing (a GPU that
/// is not 9.x). On a 9.x GPU whose sm90 GEMM failed to set up, the test fails with the reason.
fn hopper(test: &str) -> Option<CudaBackend> {
    let gpu = gpu(test)?;
    if gpu.has_sm90_gemm() {
        return Some(gpu);
    }
    if std::env::var("EMBER_GEMM").as_deref() == Ok("sm80") {
        eprintln!("{test}: skipped, EMBER_GEMM=sm80 keeps the sm90 GEMM unloaded");
        return None;
    }
    let (major, minor) = gpu.compute_capability();
    let why = gpu.gemm_decision().map_or_else(|e| e.to_string(), |(_, why)| why);
    assert!(
        major != 9,
        "{test}: {} is 9.{minor} but has no sm90 GEMM: {why}",
        gpu.device_name()
    );
    eprintln!("{test}: skipped, {} is {major}.{minor}: {why}", gpu.device_name());
    None
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
                let y = reference::activate(activation, dot + bias[c] as f64);
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

/// The sm90 GEMM with `tile` forced (None: the automatic choice), the path forced to sm90 (no
/// self-check), on every BERT (N, K) with M that is not a multiple of any tile (1, 77, 1000,
/// 8191), every epilogue, residual on and off: against f64 (relative Frobenius error <= 2e-3,
/// every output written) and against the sm80 path. Every case runs and every failure is listed
/// (with where the wrong elements are) before the test fails: a first GPU run should show the
/// whole picture.
fn check_sm90(test: &str, tile: Option<&str>) {
    let Some(gpu) = hopper(test) else { return };
    gpu.force_gemm_tile(tile).unwrap();
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
        let activation = Activation::ALL[case % Activation::ALL.len()];
        let with_residual = (case / Activation::ALL.len()).is_multiple_of(2);
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
            gpu.linear(&x_gpu, &layer, activation, residual_gpu.as_ref())
                .and_then(|out| gpu.download(&out))
        };
        // A launch or copy that fails (a trap: the watchdog) leaves the context unusable: list
        // it with the failures so far and stop, rather than panic without them.
        let stopped = |failures: &mut Vec<String>, kernel: &str, e: ember::Error| {
            failures.push(format!(
                "{what} ({kernel}): {e}; the cases after this one did not run (a trap leaves the context unusable)"
            ));
        };

        gpu.set_gemm(GemmChoice::Sm80).unwrap();
        let sm80 = match run() {
            Ok(out) => out,
            Err(e) => {
                stopped(&mut failures, "sm80", e);
                break;
            }
        };
        let sm80_error = relative_frobenius(&sm80, &rows, &want);
        if sm80_error > F16_TOLERANCE {
            failures.push(format!("{what} (sm80): vs f64 {sm80_error:.3e}"));
        }
        let sm80_f64: Vec<f64> = sm80.data.iter().map(|&v| v as f64).collect();
        let all: Vec<usize> = (0..m).collect();
        gpu.set_gemm(GemmChoice::Sm90).unwrap();
        let kernel = gpu.gemm_kernel(&layer, m).unwrap();
        if !kernel.starts_with("gemm_sm90") {
            failures.push(format!("{what}: took {kernel}, not an sm90 kernel"));
        }
        let got = match run() {
            Ok(out) => out,
            Err(e) => {
                stopped(&mut failures, kernel, e);
                break;
            }
        };
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
    eprintln!("{test}: {cases} runs, worst relative Frobenius deviation vs f64 {worst:.3e}");
    for f in &failures {
        eprintln!("{test} FAILED: {f}");
    }
    assert!(
        failures.is_empty(),
        "{test}: {} of {cases} GEMM runs failed (listed above)",
        failures.len()
    );
}

/// The device decides its GEMM path (on Hopper by the self-check, at first use), says which and
/// why, and `linear` then takes that path and gives the right numbers. Run with EMBER_GEMM unset
/// (scripts/cuda/gpu-run.sh's sm90 group); with EMBER_GEMM set it checks that the setting is obeyed.
#[test]
fn the_gemm_path_is_decided_reported_and_taken() {
    let test = "sm90::the_gemm_path_is_decided_reported_and_taken";
    let Some(gpu) = gpu(test) else { return };
    let (n, k) = BERT_GEMM_SHAPES[0];
    let m = 77;
    let mut rng = SplitMix64::new(0xc4ec);
    let x = rounded(rng.matrix(m, k, 1.0));
    let w = rounded(rng.matrix(n, k, 2.0 / (k as f32).sqrt()));
    let bias = rng.values(n, 0.5);
    let layer = gpu.load_linear(&w.data, &bias, n, k).unwrap();
    let (path, why) = gpu.gemm_decision().unwrap();
    let kernel = gpu.gemm_kernel(&layer, m).unwrap();
    eprintln!(
        "{test}: {} ({:?}): GEMM {}: {why}; a [{m}x{k}]·[{n}x{k}]ᵀ takes {kernel}",
        gpu.device_name(),
        gpu.compute_capability(),
        path.name()
    );
    assert_eq!(
        kernel.starts_with("gemm_sm90"),
        path == GemmPath::Sm90,
        "{kernel} vs {path:?}"
    );
    match std::env::var("EMBER_GEMM").ok().as_deref() {
        Some("sm80") => assert!(path == GemmPath::Sm80 && why.contains("EMBER_GEMM=sm80"), "{why}"),
        Some("sm90") => assert!(path == GemmPath::Sm90 && why.contains("EMBER_GEMM=sm90"), "{why}"),
        _ if gpu.has_sm90_gemm() => assert!(why.contains("self-check"), "{why}"),
        _ => assert!(
            path == GemmPath::Sm80 && why.contains("compute capability"),
            "{why}"
        ),
    }
    // Whichever path was chosen, it computes the product.
    let rows: Vec<usize> = (0..m).collect();
    let want = linear_f64(&x, &w, &bias, Activation::Gelu, None, &rows);
    let got = gpu
        .download(&gpu.linear(&up(&gpu, &x), &layer, Activation::Gelu, None).unwrap())
        .unwrap();
    let error = relative_frobenius(&got, &rows, &want);
    assert!(error <= F16_TOLERANCE, "{kernel}: vs f64 {error:.3e}");
}
