//! The sm90 GEMM's self-check: run once per device, at the first GEMM that could take the sm90
//! path, it decides whether `linear` uses it (gemm_choice.rs).
//!
//! Each tile the automatic choice may pick (the cooperative ones, or the one EMBER_GEMM_TILE
//! forces) runs three small awkward shapes against a float64 product on the host, over every
//! output element (the shapes are small enough: about 38 M multiply-adds in all, tens of
//! milliseconds):
//! - 77 x 384 x 448, GELU and a residual: a partial M tile (77 = 64 + 13 rows), N = 384 that
//!   128x256 covers only with a partial N tile, 7 K-slices (the 4- to 6-stage rings wrap);
//! - 1 x 64 x 64: one row, N below every tile's BN (TMA boxes mostly past the tensor), one
//!   K-slice;
//! - 200 x 192 x 640, tanh: two partial 128-row tiles, BN = 256 and 128 past N, 10 K-slices (the
//!   8-stage ring wraps too).
//!
//! Inputs are seeded random values, never zeros, rounded to f16 as the GPU stores them; every
//! output starts as NaN, so an unwritten element fails the check. A
//! tile fails on a non-finite output or a relative Frobenius error over 2e-3 (the GPU tests'
//! f16 tolerance). A launch error fails the check too, unless it left the context unusable (a
//! trap is sticky): then no GEMM can run at all, and that is returned as an error.

use half::f16;

use super::device::{Device, DeviceBuffer};
use super::gemm::{launch_sm90, GemmArgs, Sm90, TILES};
use super::gemm_choice::{injected_sm90_fault, InjectedSm90Fault, SelfCheck};

/// (M, N, K, activation code of kernels/common.cuh, with a residual).
const CASES: [(usize, usize, usize, i32, bool); 3] = [
    (77, 384, 448, 1, true),
    (1, 64, 64, 0, false),
    (200, 192, 640, 4, false),
];

/// The GPU tests' tolerance for f16 outputs with f32 accumulation (tests/gpu/main.rs).
const TOLERANCE: f64 = 2e-3;

const OP: &str = "self-check";

/// xorshift32: values in [-1, 1), never all zero, the same on every run.
struct Values(u32);

impl Values {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 17;
                self.0 ^= self.0 << 5;
                let v = ((self.0 as f32 / u32::MAX as f32) * 2.0 - 1.0) * scale;
                f16::from_f32(v).to_f32()
            })
            .collect()
    }
}

fn activate(x: f64, act: i32) -> f64 {
    match act {
        1 => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        4 => x.tanh(),
        _ => x,
    }
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Runs the self-check on `device`. Ok: the verdict. Err: the context is unusable afterwards.
pub(super) fn run(device: &Device, sm90: &Sm90) -> Result<SelfCheck, String> {
    // The work queued before this first GEMM (the forward pass so far) must not be blamed on the
    // sm90 kernels: it finishes, or fails under its own names, first.
    device
        .synchronize(OP)
        .map_err(|e| format!("before the sm90 GEMM's self-check: {e}"))?;
    let tiles: Vec<usize> = match sm90.forced() {
        Some(t) => vec![t],
        None => (0..TILES.len()).filter(|&t| !TILES[t].pingpong).collect(),
    };
    let mut values = Values(0x5e1f_c4ec);
    for (m, n, k, act, with_residual) in CASES {
        let x = values.take(m * k, 1.0);
        let w = values.take(n * k, 2.0 / (k as f32).sqrt());
        let bias = values.take(n, 0.5);
        let residual = with_residual.then(|| values.take(m * n, 1.0));
        let want: Vec<f64> = (0..m * n)
            .map(|i| {
                let (r, c) = (i / n, i % n);
                let dot: f64 = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum();
                activate(dot + bias[c] as f64, act) + residual.as_ref().map_or(0.0, |res| res[i] as f64)
            })
            .collect();
        let shape = format!("{m}x{n}x{k}");
        let upload = |bytes: Vec<u8>| device.upload_bytes(OP, &bytes).map_err(|e| e.to_string());
        let outcome = (|| -> Result<Option<String>, String> {
            let x_gpu = upload(f16_bytes(&x))?;
            let w_gpu = upload(f16_bytes(&w))?;
            let bias_gpu = upload(bias.iter().flat_map(|v| v.to_le_bytes()).collect())?;
            let residual_gpu = residual.as_ref().map(|r| upload(f16_bytes(r))).transpose()?;
            let maps = match sm90.weight_maps(w_gpu.ptr(), n, k) {
                Ok(Some(maps)) => maps,
                Ok(None) => return Ok(Some(format!("{shape}: the sm90 GEMM does not take this shape"))),
                Err(why) => return Ok(Some(why)),
            };
            for &t in &tiles {
                let tile = &TILES[t];
                // 0xFF bytes: NaN as f16. A buffer of its own, not the activation pool, so that
                // EMBER_FAULT_ALLOC_LIMIT (activations only) does not decide the check.
                let out = upload(vec![0xFF; m * n * 2])?;
                let map_x = match sm90.x_map(x_gpu.ptr(), m, k, tile.bm) {
                    Ok(map) => map,
                    Err(why) => return Ok(Some(why)),
                };
                let args = GemmArgs {
                    x: x_gpu.ptr(),
                    w: w_gpu.ptr(),
                    bias: bias_gpu.ptr(),
                    residual: residual_gpu.as_ref().map_or(0, DeviceBuffer::ptr),
                    out: out.ptr(),
                    m,
                    n,
                    k,
                    act,
                };
                let got = launch_sm90(device, sm90, t, &map_x, maps.for_bn(tile.bn), &args)
                    .and_then(|()| device.download_bytes(OP, &out, m * n * 2));
                let got: Vec<f64> = match got {
                    Ok(bytes) => bytes
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f64())
                        .collect(),
                    Err(e) => return Ok(Some(format!("{} on {shape}: {e}", tile.name))),
                };
                if let Some(why) = judge(
                    &got,
                    &want,
                    injected_sm90_fault() == Some(InjectedSm90Fault::SelfCheck),
                ) {
                    return Ok(Some(format!("{} on {shape}: {why}", tile.name)));
                }
            }
            Ok(None)
        })();
        let failure = match outcome {
            Ok(None) => continue,
            Ok(Some(why)) => why,
            Err(why) => format!("{shape}: {why}"),
        };
        // A launch that trapped leaves every later call failing: check before calling it a
        // verdict. A plain disagreement leaves the context as it was.
        if let Err(e) = device.synchronize(OP) {
            return Err(format!(
                "the sm90 GEMM's self-check left {} unusable ({failure}; then {e}); set EMBER_GEMM=sm80",
                device.describe()
            ));
        }
        return Ok(SelfCheck::Failed(failure));
    }
    Ok(SelfCheck::Passed(format!(
        "{} shapes x {} tile{} against f64",
        CASES.len(),
        tiles.len(),
        if tiles.len() == 1 { "" } else { "s" }
    )))
}

/// Why `got` is not `want` (None when it is, within [`TOLERANCE`]). `perturb`: first change one
/// element, as a wrong kernel would (EMBER_FAULT_SM90=self-check).
fn judge(got: &[f64], want: &[f64], perturb: bool) -> Option<String> {
    let mut got = got.to_vec();
    if perturb {
        // A tenth of the whole output's norm on one element: a relative error of 0.1.
        got[0] += 0.1 * want.iter().map(|w| w * w).sum::<f64>().sqrt();
    }
    let unwritten = got.iter().filter(|v| !v.is_finite()).count();
    if unwritten > 0 {
        return Some(format!(
            "{unwritten} of {} outputs not finite (unwritten: NaN-poisoned)",
            got.len()
        ));
    }
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        diff += (g - w) * (g - w);
        norm += w * w;
    }
    let error = (diff / norm.max(1e-300)).sqrt();
    (error > TOLERANCE).then(|| format!("relative error {error:.3e} against f64 (tolerance {TOLERANCE:.0e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_passes_rounding_and_fails_wrong_or_unwritten_outputs() {
        let want: Vec<f64> = (0..1000).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
        let rounded: Vec<f64> = want.iter().map(|&v| f16::from_f64(v).to_f64()).collect();
        assert_eq!(judge(&rounded, &want, false), None);
        let why = judge(&rounded, &want, true).expect("a perturbed element must fail");
        assert!(why.contains("relative error"), "{why}");
        let mut unwritten = rounded.clone();
        unwritten[999] = f64::NAN;
        let why = judge(&unwritten, &want, false).expect("a NaN must fail");
        assert!(why.contains("1 of 1000"), "{why}");
    }

    #[test]
    fn every_case_is_a_shape_the_sm90_path_takes() {
        for (m, n, k, _, _) in CASES {
            assert!(super::super::gemm::sm90_supports(m, n, k), "{m}x{n}x{k}");
        }
    }
}
