//! The int8 GEMM against a scalar model of the same arithmetic (bit for bit: the integer sums
//! are exact and the last step is one f32 expression), the quantization against its error bound,
//! and the int8 linear layer against the f64 reference.

use super::*;
use crate::backend::cpu::testutil::SplitMix64;
use crate::backend::cpu::{reference, CpuBackend, CpuTensor};
use crate::backend::Dtype;
use crate::backend::{Activation, Backend};

/// What the GEMM must produce, computed the slow way: every code from the same quantization
/// rules, each group's sum in i64, then the same f32 expressions in the same order.
fn int8_model(a: &[f32], lda: usize, m: usize, w: &PackedInt8, bias: &[f32]) -> Vec<f32> {
    let (n, k) = (w.n(), w.k());
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        let row = &a[i * lda..][..k];
        for j in 0..n {
            let mut c = bias[j];
            for (g, group) in row.chunks(GROUP).enumerate() {
                let quantization = Quantization::of(group);
                let mut sum = 0i64;
                let mut column_sum = 0i64;
                for (offset, &x) in group.iter().enumerate() {
                    let (code, _) = w.code_and_scale(j, g * GROUP + offset);
                    sum += quantization.code(x) as i64 * code as i64;
                    column_sum += code as i64;
                }
                let (_, weight_scale) = w.code_and_scale(j, g * GROUP);
                let centred = (sum - quantization.zero as i64 * column_sum) as f32;
                c = centred.mul_add(quantization.scale * weight_scale, c);
            }
            out[i * n + j] = c;
        }
    }
    out
}

/// `m` random rows of `k` at stride `lda`, where there are four or more: one with an outlier,
/// one all positive (as after GELU), one all zero.
fn awkward_rows(rng: &mut SplitMix64, m: usize, k: usize, lda: usize) -> Vec<f32> {
    let mut a = rng.values(m * lda, 1.0);
    if m > 3 && k > 0 {
        a[lda] = 40.0;
        a[2 * lda..2 * lda + k].iter_mut().for_each(|v| *v = v.abs());
        a[3 * lda..3 * lda + k].iter_mut().for_each(|v| *v = 0.0);
    }
    a
}

#[test]
fn int8_gemm_is_exactly_its_integer_model() {
    if !is_supported() {
        // Refusal is the contract there: the backend must say so, not fall back.
        let err = CpuBackend::with_dtype(Dtype::Int8).unwrap_err().to_string();
        assert!(err.contains("AVX512-VNNI"), "{err}");
        return;
    }
    let mut rng = SplitMix64::new(21);
    // k not a multiple of 4 (a partly filled last quad), k over one and two 768 K blocks, rows
    // around the 12-row tile and the 96-row M block, column tails, k = 0.
    let shapes = [
        (1, 1, 1),
        (13, 33, 7),
        (29, 70, 777),
        (97, 32, 384),
        (12, 5, 0),
        // k = 0 on full 12 x 32 tiles: the bias alone.
        (24, 64, 0),
        (33, 64, 1537),
        (17, 95, 6),
        (200, 40, 65),
        // Two M blocks of three K blocks each, and five K blocks of one M block.
        (110, 40, 1600),
        (13, 40, 4200),
    ];
    for &(m, n, k) in &shapes {
        // C's rows 4 KiB apart (1,024 floats) for the shapes of 100 rows and more.
        let (lda, ldc) = (k + 3, if m >= 100 { 1024 } else { n + 5 });
        let a = awkward_rows(&mut rng, m, k, lda);
        let w = rng.values(n * k, 1.0 / (k.max(1) as f32).sqrt());
        let bias = rng.values(n, 0.5);
        let packed = PackedInt8::from_rows(&w, n, k);
        let sentinel = 12345.0;
        let mut c = vec![sentinel; m * ldc];
        let all = 0..packed.panels();
        gemm_panels(&a, lda, m, &packed, all.clone(), Some(&bias), &mut c, ldc);
        let want = int8_model(&a, lda, m, &packed, &bias);
        for i in 0..m {
            assert_eq!(
                &c[i * ldc..i * ldc + n],
                &want[i * n..(i + 1) * n],
                "int8 {m}x{n}x{k} row {i}"
            );
            assert!(
                c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == sentinel),
                "wrote outside C"
            );
        }
        // A quantized beforehand gives the same bits, over every M block at once.
        let mut quantized = QuantizedRows::new();
        quantized.quantize(&a, lda, m, k);
        let mut from_codes = vec![sentinel; m * ldc];
        gemm_codes_panels(
            &quantized,
            &packed,
            all.clone(),
            Some(&bias),
            &mut from_codes,
            ldc,
        );
        assert!(
            from_codes == c,
            "int8 {m}x{n}x{k}: gemm_codes_panels differs from gemm_panels"
        );
        // Without a bias the tiles start from zero.
        let mut unbiased = vec![sentinel; m * ldc];
        gemm_panels(&a, lda, m, &packed, all.clone(), None, &mut unbiased, ldc);
        let want_unbiased = int8_model(&a, lda, m, &packed, &vec![0.0; n]);
        for i in 0..m {
            assert_eq!(
                &unbiased[i * ldc..i * ldc + n],
                &want_unbiased[i * n..(i + 1) * n],
                "int8 {m}x{n}x{k} without bias, row {i}"
            );
        }
        // A subset of panels lands at column 0 of its own output, as gemm_parallel asks.
        if packed.panels() > 1 {
            let mut part = vec![0.0; m * (n - NR)];
            gemm_panels(
                &a,
                lda,
                m,
                &packed,
                1..packed.panels(),
                Some(&bias),
                &mut part,
                n - NR,
            );
            for i in 0..m {
                assert_eq!(
                    &part[i * (n - NR)..(i + 1) * (n - NR)],
                    &want[i * n + NR..(i + 1) * n]
                );
            }
        }
    }
}

/// The AMX kernel's driver on a model of the tile unit (every CPU with AVX-512), and on the tile
/// unit itself where the CPU has AMX-INT8, against the integer model: the same bits.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_kernel_is_exactly_its_integer_model() {
    if !Isa::Avx512.is_available() {
        return; // the kernel scales its sums with AVX-512
    }
    let on_tiles = amx_int8_available();
    if !on_tiles {
        eprintln!("no AMX-INT8 here: the AMX kernel's driver runs on the model of the tile unit only");
    }
    let mut rng = SplitMix64::new(25);
    // Rows around the 32-row block and the 96-row M block; k around the 64-wide step, the
    // 128-wide group and the 768-wide K block, a partly filled last quad; column tails; k = 0.
    let shapes = [
        (1, 1, 1),
        (31, 33, 64),
        (33, 32, 65),
        (97, 70, 777),
        (96, 64, 128),
        (40, 5, 0),
        (13, 40, 1600),
        (130, 95, 191),
    ];
    for &(m, n, k) in &shapes {
        // C's rows 4 KiB apart (1,024 floats) for the shapes of 100 rows and more.
        let (lda, ldc) = (k + 3, if m >= 100 { 1024 } else { n + 5 });
        let a = awkward_rows(&mut rng, m, k, lda);
        let w = PackedInt8::from_rows(&rng.values(n * k, 1.0 / (k.max(1) as f32).sqrt()), n, k);
        let bias = rng.values(n, 0.5);
        let mut codes = QuantizedRows::new();
        codes.quantize(&a, lda, m, k);
        for bias in [Some(&bias[..]), None] {
            let want = int8_model(&a, lda, m, &w, bias.unwrap_or(&vec![0.0; n]));
            let sentinel = 12345.0;
            // By M blocks of tiles, as `gemm_codes_panels`, over all panels and over all but the
            // first (landing at column 0 of their own output).
            for first_panel in [0, 1].into_iter().filter(|&p| p < w.panels()) {
                let width = n - first_panel * NR;
                let run = |on_tiles: bool| {
                    let mut c = vec![sentinel; m * ldc];
                    for t0 in (0..codes.tiles()).step_by(MC / MR) {
                        let tiles = t0..(t0 + MC / MR).min(codes.tiles());
                        let panels = first_panel..w.panels();
                        let out = &mut c[t0 * MR * ldc..];
                        if on_tiles {
                            amx_kernel::multiply(&codes, tiles, &w, panels, bias, out, ldc);
                        } else {
                            let model = &mut amx_kernel::TileModel::new();
                            amx_kernel::multiply_on(model, &codes, tiles, &w, panels, bias, out, ldc);
                        }
                    }
                    c
                };
                for (unit, c) in [(false, run(false))]
                    .into_iter()
                    .chain(on_tiles.then(|| (true, run(true))))
                {
                    let unit = if unit { "AMX tiles" } else { "tile model" };
                    for i in 0..m {
                        assert_eq!(
                            &c[i * ldc..i * ldc + width],
                            &want[i * n + first_panel * NR..(i + 1) * n],
                            "{unit}: {m}x{n}x{k} from panel {first_panel}, bias {}, row {i}",
                            bias.is_some()
                        );
                        assert!(
                            c[i * ldc + width..(i + 1) * ldc].iter().all(|&v| v == sentinel),
                            "{unit}: wrote outside C"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn activating_while_quantizing_is_activating_first() {
    if !is_supported() {
        return; // the refusal is checked above
    }
    let mut rng = SplitMix64::new(24);
    let gelu = |row: &mut [f32]| crate::backend::cpu::math::activate(crate::backend::Activation::Gelu, row);
    // Rows padded past k (lda > k): the padding must stay as it was. Three M blocks, k over two
    // K blocks, a partly filled last quad.
    for (m, n, k) in [(1, 3, 5), (200, 70, 1539), (13, 32, 128)] {
        let lda = k + 9;
        let a = rng.values(m * lda, 2.0);
        let w = PackedInt8::from_rows(&rng.values(n * k, 0.1), n, k);
        let bias = rng.values(n, 0.5);
        let mut activated = a.clone();
        for row in activated.chunks_mut(lda) {
            gelu(&mut row[..k]);
        }
        let mut want = vec![0.0; m * n];
        gemm_panels(&activated, lda, m, &w, 0..w.panels(), Some(&bias), &mut want, n);
        let (mut fused_a, mut got) = (a.clone(), vec![0.0; m * n]);
        activate_then_gemm_panels(
            &mut fused_a,
            lda,
            m,
            &gelu,
            &w,
            0..w.panels(),
            Some(&bias),
            &mut got,
            n,
        );
        assert!(got == want, "{m}x{n}x{k}: products differ");
        for (i, (row, before)) in fused_a.chunks(lda).zip(a.chunks(lda)).enumerate() {
            assert!(
                row[..k] == activated[i * lda..][..k],
                "{m}x{n}x{k}: row {i} not activated in place"
            );
            assert!(row[k..] == before[k..], "{m}x{n}x{k}: row {i}'s padding written");
        }
    }
}

#[test]
fn quantization_stays_within_half_a_step() {
    let mut rng = SplitMix64::new(22);
    for len in [1, 5, 16, 17, 200, 383, 1536] {
        let mut rows = vec![rng.values(len, 1.0), rng.values(len, 3.0)];
        rows.push(rows[0].iter().map(|v| v.abs() + 0.5).collect()); // zero below the range
        rows.push(rows[0].iter().map(|v| -v.abs()).collect());
        rows.push(vec![0.0; len]);
        let mut outlier = rng.values(len, 1.0);
        outlier[len / 2] = -50.0;
        rows.push(outlier);
        for row in &rows {
            let quantization = Quantization::of(row);
            assert!(quantization.scale > 0.0 && (0..=255).contains(&quantization.zero));
            assert_eq!(quantization.code(0.0) as i32, quantization.zero, "0 is exact");
            for (&x, code) in row.iter().map(|x| (x, quantization.code(*x))) {
                let back = (code as i32 - quantization.zero) as f32 * quantization.scale;
                assert!(
                    (back - x).abs() <= 0.5 * quantization.scale * (1.0 + 1e-5),
                    "{x} -> {code} -> {back} (scale {})",
                    quantization.scale
                );
            }
            // The vectorized quantization of the GEMM's packing gives the same scale, zero point
            // and codes, group by group.
            if !Isa::Avx512.is_available() {
                continue;
            }
            let mut codes = vec![0u8; row.len()];
            let mut vectorized = vec![Quantization { scale: 0.0, zero: -1 }; row.len().div_ceil(GROUP)];
            // SAFETY: AVX-512 is present (checked above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                quantize_row(row, &mut codes, &mut vectorized)
            };
            for (g, group) in row.chunks(GROUP).enumerate() {
                let scalar_quantization = Quantization::of(group);
                assert_eq!(vectorized[g], scalar_quantization, "group {g}");
                let scalar: Vec<u8> = group.iter().map(|&x| scalar_quantization.code(x)).collect();
                assert_eq!(
                    &codes[g * GROUP..][..group.len()],
                    scalar,
                    "vectorized codes differ"
                );
            }
        }
    }
    let w = rng.values(7 * 300, 0.3);
    let packed = PackedInt8::from_rows(&w, 7, 300);
    for j in 0..7 {
        for p in 0..300 {
            let (code, scale) = packed.code_and_scale(j, p);
            let error = (code as f32 * scale - w[j * 300 + p]).abs();
            assert!(error <= 0.5 * scale * (1.0 + 1e-5), "W[{j}][{p}]");
        }
    }
}

#[test]
fn int8_linear_layer_stays_close_to_f32() {
    let Ok(backend) = CpuBackend::with_dtype(Dtype::Int8) else {
        return; // refusal is checked above
    };
    let mut rng = SplitMix64::new(23);
    let (m, n, k) = (67, 383, 383);
    let x = rng.matrix(m, k, 1.0);
    let w = rng.matrix(n, k, 1.7 / (k as f32).sqrt());
    let b = rng.values(n, 0.5);
    let layer = backend.load_linear(&w.data, &b, n, k).unwrap();
    assert!(layer.weight().is_none(), "int8 layer holds f32 weights");
    let got = backend
        .linear(&CpuTensor::from(x.clone()), &layer, Activation::Gelu, None)
        .unwrap();
    let got = backend.download(&got).unwrap();
    let want = reference::linear(&x, &w, &b, Activation::Gelu, None);
    // Half a step of error per code, 1/255 of a group's range for A and 1/254 of one for W, of random sign over k = 383 terms: about 1 % of the output scale; 4 % still catches
    // any indexing error (those are of order 1).
    let deviation = crate::backend::cpu::testutil::deviation(&got, &want);
    assert!(deviation.relative_to_max < 0.04, "int8 linear: {deviation:?}");
}
