//! Every CPU op against its scalar f64 reference on fresh seeded random inputs with awkward
//! shapes (hidden 383, sequences of 1, 17 and 512 tokens in one batch, head dims 32, 64 and 33,
//! row counts that are multiples of no block size), plus isolation, batching-invariance and
//! error tests.
//!
//! Tolerances are on [`Deviation::relative_to_max`] (max abs diff / max |expected|). f32 has a
//! relative spacing of 1.2e-7; each tolerance below says how much rounding the op can add on top,
//! and each is still orders of magnitude under what a wrong index, a missing term or a swapped
//! operand would produce (errors of order 1).

use super::reference;
use super::testutil::{deviation, Deviation, SplitMix64};
use super::*;

pub(super) fn tensor(m: &HostMatrix) -> CpuTensor {
    CpuTensor::from(m.clone())
}

fn host(t: &CpuTensor) -> HostMatrix {
    CpuBackend::new().download(t).unwrap()
}

fn assert_close(what: &str, actual: &HostMatrix, expected: &HostMatrix, tolerance: f64) {
    let Deviation {
        max_abs,
        relative_to_max,
    } = deviation(actual, expected);
    assert!(
        relative_to_max <= tolerance,
        "{what}: max abs diff {max_abs:e}, relative to max {relative_to_max:e} > {tolerance:e}"
    );
}

pub(super) fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Checks `linear` against the reference for one shape, with and without a residual.
fn check_linear(rng: &mut SplitMix64, m: usize, n: usize, k: usize, activation: Activation) {
    let x = rng.matrix(m, k, 1.0);
    // Weights scaled by 1/sqrt(k) as in trained layers, so outputs are O(1) and the activations
    // are exercised on both sides of 0, not only in their saturated tails.
    let w = rng.matrix(n, k, 1.7 / (k as f32).sqrt());
    let b = rng.values(n, 0.5);
    let residual = rng.matrix(m, n, 1.0);
    let layer = CpuBackend::new().load_linear(&w.data, &b, n, k).unwrap();
    assert_eq!((layer.out_features(), layer.in_features()), (n, k));
    for r in [None, Some(&residual)] {
        let got = CpuBackend::new()
            .linear(&tensor(&x), &layer, activation, r.map(tensor).as_ref())
            .unwrap();
        let want = reference::linear(&x, &w, &b, activation, r);
        // f32 accumulation of k <= 1536 products per output: the rounding error grows like
        // sqrt(k) * 1.2e-7 (about 5e-6 at k = 1536) against outputs of order 1; the activations
        // add 2e-7. 2e-5 leaves room and still catches any indexing bug.
        assert_close(
            &format!("linear {m}x{n}x{k} {activation:?} residual={}", r.is_some()),
            &host(&got),
            &want,
            2e-5,
        );
    }
}

#[test]
fn linear_matches_reference_for_every_activation() {
    let mut rng = SplitMix64::new(1);
    for activation in Activation::ALL {
        check_linear(&mut rng, 67, 383, 383, activation);
    }
}

#[test]
fn linear_matches_reference_on_awkward_shapes_and_both_parallel_splits() {
    let rng = SplitMix64::new(2);
    // (m, n, k): single rows, one row more than a tile, BERT-like shapes, tiny n and k.
    let shapes = [
        (1, 1536, 384),
        (3, 384, 1536),
        (5, 9, 383),
        (130, 1152, 384),
        (577, 33, 47),
        (300, 1, 7),
        (2, 17, 1),
    ];
    // One thread takes the row-block split from 4 blocks (193 rows) on; three threads split
    // columns below 12 blocks. Both pools see every shape, so both code paths are covered.
    for threads in [1, 3] {
        with_threads(threads, || {
            for &(m, n, k) in &shapes {
                check_linear(&mut rng.clone(), m, n, k, Activation::Gelu);
            }
        });
    }
}

#[test]
fn row_blocks_cover_the_rows_in_even_whole_tiles() {
    use matmul::{row_blocks, MC};
    use microkernel::MR;
    for threads in 1..=5 {
        for m in 1..700 {
            let blocks = row_blocks(m, threads);
            let tiles = m.div_ceil(MR);
            assert!(
                blocks.len().is_multiple_of(threads) || blocks.len() == tiles,
                "m {m}: {blocks:?}"
            );
            assert_eq!(blocks[0].start, 0);
            assert_eq!(blocks.last().unwrap().end, m);
            for pair in blocks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "m {m}: {blocks:?}");
            }
            let sizes: Vec<usize> = blocks.iter().map(|b| b.len().div_ceil(MR)).collect();
            let (least, most) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(
                *least >= 1 && most - least <= 1,
                "m {m} threads {threads}: {sizes:?}"
            );
            assert!(blocks.iter().all(|b| b.len() <= MC), "m {m}: {blocks:?}");
            assert!(blocks[..blocks.len() - 1].iter().all(|b| b.len() % MR == 0));
        }
    }
}

#[test]
fn row_strides_are_never_a_multiple_of_4_kib() {
    use matmul::row_stride;
    for cols in 0..5000 {
        let stride = row_stride(cols);
        assert!(
            stride >= cols && stride - cols <= 16,
            "{cols} columns: stride {stride}"
        );
        assert!(
            cols == 0 || !(stride * 4).is_multiple_of(4096),
            "{cols} columns: stride {stride}"
        );
    }
    // Widths whose rows are not 4 KiB apart keep their stride: MiniLM's and bge-base's.
    assert_eq!(
        (row_stride(1536), row_stride(768), row_stride(3072)),
        (1536, 768, 3088)
    );
}

#[test]
fn gemm_gives_the_same_bits_at_strides_4_kib_apart() {
    // A and C rows a multiple of 4 KiB apart take other paths (A's M block copied, C's tiles
    // built in a contiguous block): same bits as at plain strides, nothing written past n.
    let mut rng = SplitMix64::new(21);
    // Two M blocks, the last tile partial; a partial panel; three K blocks, the last partial.
    let (m, n, k) = (100, 45, 800);
    let w = matmul::PackedMatrix::from_rows(&rng.values(n * k, 0.1), n, k, k);
    let bias = rng.values(n, 0.5);
    let a = rng.values(m * k, 1.0);
    let (lda, ldc) = (1024, 2048);
    let mut a_wide = vec![0.0; m * lda];
    for (wide, row) in a_wide.chunks_exact_mut(lda).zip(a.chunks_exact(k)) {
        wide[..k].copy_from_slice(row);
    }
    let sentinel = -7.5;
    for isa in matmul::Isa::available_f32() {
        let mut plain = vec![0.0; m * n];
        matmul::gemm_with(isa, &a, k, m, &w, Some(&bias), &mut plain, n);
        let mut wide = vec![sentinel; m * ldc];
        matmul::gemm_with(isa, &a_wide, lda, m, &w, Some(&bias), &mut wide, ldc);
        for i in 0..m {
            let (got, want) = (&wide[i * ldc..][..ldc], &plain[i * n..][..n]);
            let differs = got[..n]
                .iter()
                .zip(want)
                .position(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(
                differs, None,
                "{isa:?}: row {i}, strides {lda} / {ldc} against {k} / {n}"
            );
            assert!(
                got[n..].iter().all(|&x| x == sentinel),
                "{isa:?}: row {i} written past n"
            );
        }
    }
}

#[test]
fn prefetch_parts_cover_the_next_block_once() {
    use matmul::{next_block, part_of, LoopOrder};
    // Panels 2..5 of a product with k = 1000 in K blocks of 384: every (panel, K block) in the
    // driver's order, then none.
    let visit = |order| {
        let mut visited = vec![];
        let mut at = Some((2, 0, 384));
        while let Some((panel, k0, kc)) = at {
            visited.push((panel, k0, kc));
            at = next_block(order, &(2..5), panel, (k0, kc), 1000, 384);
        }
        visited
    };
    let k_blocks = [(0, 384), (384, 384), (768, 232)];
    let k_block_outer: Vec<_> = k_blocks
        .iter()
        .flat_map(|&(k0, kc)| (2..5).map(move |panel| (panel, k0, kc)))
        .collect();
    assert_eq!(visit(LoopOrder::KBlockOuter), k_block_outer);
    let panel_outer: Vec<_> = (2..5)
        .flat_map(|panel| k_blocks.iter().map(move |&(k0, kc)| (panel, k0, kc)))
        .collect();
    assert_eq!(visit(LoopOrder::PanelOuter), panel_outer);
    for len in [0, 1, 15, 16, 17, 1000, 6144] {
        let items: Vec<u32> = (0..len).collect();
        for parts in [1, 3, 8, 13] {
            let joined: Vec<u32> = (0..parts)
                .flat_map(|p| part_of(&items, p, parts).to_vec())
                .collect();
            assert_eq!(joined, items, "len {len}, {parts} parts");
        }
    }
}

#[test]
fn linear_of_an_empty_batch_is_empty() {
    let layer = CpuBackend::new()
        .load_linear(&[0.5; 12], &[1.0; 3], 3, 4)
        .unwrap();
    let x = CpuBackend::new().upload(&[], 0, 4).unwrap();
    let y = CpuBackend::new()
        .linear(&x, &layer, Activation::Relu, None)
        .unwrap();
    assert_eq!((y.rows, y.cols, y.data.len()), (0, 3, 0));
}

#[test]
fn gemm_honours_strides_and_column_packing() {
    let mut rng = SplitMix64::new(3);
    let (m, n, k, lda, ldc, ldw) = (11, 13, 29, 40, 21, 31);
    let a = rng.values(m * lda, 1.0);
    let w_t = rng.values(k * ldw, 1.0); // [k, n] with row stride ldw: W = w_tᵀ
    let packed = matmul::PackedMatrix::from_columns(&w_t, n, k, ldw);
    let sentinel = 12345.0;
    let mut c = vec![sentinel; m * ldc];
    matmul::gemm(&a, lda, m, &packed, None, &mut c, ldc);
    for i in 0..m {
        for j in 0..ldc {
            let got = c[i * ldc + j];
            if j >= n {
                assert_eq!(got, sentinel, "gemm wrote outside its columns at ({i}, {j})");
                continue;
            }
            let want: f64 = (0..k)
                .map(|p| a[i * lda + p] as f64 * w_t[p * ldw + j] as f64)
                .sum();
            // k = 29 products of magnitude < 1: a few ulp of a sum of order 5.
            assert!(
                (got as f64 - want).abs() < 1e-5,
                "gemm ({i}, {j}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn embed_matches_reference() {
    let mut rng = SplitMix64::new(4);
    let (hidden, vocab, positions, types) = (383, 50, 512, 2);
    let batch = rng.batch(&[1, 17, 512], vocab, types);
    let word = rng.matrix(vocab, hidden, 1.0);
    let position = rng.matrix(positions, hidden, 0.5);
    let token_type = rng.matrix(types, hidden, 0.25);
    let gamma = rng.values(hidden, 1.0);
    let beta = rng.values(hidden, 0.5);
    let norm = LayerNormWeights {
        gamma: CpuBackend::new().upload(&gamma, 1, hidden).unwrap(),
        beta: CpuBackend::new().upload(&beta, 1, hidden).unwrap(),
        eps: 1e-12,
    };
    let tables = EmbeddingTables {
        word: tensor(&word),
        position: tensor(&position),
        token_type: tensor(&token_type),
    };
    let device_batch = CpuBackend::new().upload_batch(&batch).unwrap();
    let got = CpuBackend::new().embed(&device_batch, &tables, &norm).unwrap();
    let want = reference::embed(
        &batch.token_ids,
        &batch.position_ids,
        &batch.type_ids,
        &word,
        &position,
        &token_type,
        &gamma,
        &beta,
        1e-12,
    );
    // Three f32 additions, then a LayerNorm (see `layer_norm_matches_reference`): outputs of
    // order 1-4 with a few ulp of error each.
    assert_close("embed", &host(&got), &want, 5e-6);
}

#[test]
fn layer_norm_matches_reference() {
    let mut rng = SplitMix64::new(5);
    for (rows, hidden, offset) in [(67, 383, 0.0), (3, 1024, 0.0), (130, 384, 100.0)] {
        let mut x = rng.matrix(rows, hidden, 2.0);
        // A large common offset checks that the variance is not computed as E[x²] - E[x]², which
        // would cancel catastrophically here.
        x.data.iter_mut().for_each(|v| *v += offset);
        let gamma = rng.values(hidden, 1.0);
        let beta = rng.values(hidden, 0.5);
        let norm = LayerNormWeights {
            gamma: CpuBackend::new().upload(&gamma, 1, hidden).unwrap(),
            beta: CpuBackend::new().upload(&beta, 1, hidden).unwrap(),
            eps: 1e-5,
        };
        let got = CpuBackend::new().layer_norm(&tensor(&x), &norm).unwrap();
        let want = reference::layer_norm(&x, &gamma, &beta, 1e-5);
        // Mean and variance are f32 sums of <= 1024 terms over 8 lanes (relative error ~1e-6),
        // the normalized values are O(1-4). With the offset, the f32 mean near 100 is itself
        // rounded by up to 4e-6 (half an ulp of 100) and every `x - mean` carries that shift,
        // as it does in PyTorch's f32 LayerNorm: hence the looser bound there.
        let tolerance = if offset == 0.0 { 5e-6 } else { 2e-5 };
        assert_close(
            &format!("layer_norm {rows}x{hidden}"),
            &host(&got),
            &want,
            tolerance,
        );
    }
}

#[test]
fn pool_matches_reference() {
    let mut rng = SplitMix64::new(9);
    let batch = rng.batch(&[1, 17, 512, 3], 10, 1);
    let hidden = rng.matrix(batch.num_tokens(), 383, 1.0);
    for mode in [Pooling::Cls, Pooling::Mean] {
        let got = CpuBackend::new().pool(&tensor(&hidden), &batch, mode).unwrap();
        let want = reference::pool(&hidden, &batch.cu_seqlens, mode);
        // Both accumulate in f64 and round once: at most half an ulp apart.
        assert_close(&format!("pool {mode:?}"), &host(&got), &want, 1.2e-7);
    }
}

#[test]
fn l2_normalize_matches_reference_and_keeps_zero_rows_zero() {
    let mut rng = SplitMix64::new(10);
    let mut x = rng.matrix(70, 383, 1.0);
    // A tiny row checks the division itself, a zero row the clamp at 1e-12 (0 / 1e-12 = 0).
    x.data[383..766].iter_mut().for_each(|v| *v *= 1e-20);
    x.data[766..1149].fill(0.0);
    let got = host(&CpuBackend::new().l2_normalize(&tensor(&x)).unwrap());
    let want = reference::l2_normalize(&x);
    // The norm is f64, the division one f32 rounding: an ulp of values below 1.
    assert_close("l2_normalize", &got, &want, 1.2e-7);
    assert!(got.row(2).iter().all(|&v| v == 0.0));
}

#[test]
fn shape_mismatches_are_errors_not_panics() {
    let cpu = CpuBackend::new();
    let mut rng = SplitMix64::new(11);
    let is_backend_error = |r: Result<CpuTensor>| matches!(r, Err(Error::Backend { backend: "cpu", .. }));
    assert!(cpu.upload(&[1.0; 5], 2, 3).is_err());
    assert!(cpu.load_linear(&[1.0; 6], &[0.0; 2], 2, 4).is_err());
    assert!(cpu.load_linear(&[1.0; 8], &[0.0; 3], 2, 4).is_err());

    let layer = cpu
        .load_linear(&rng.values(8, 1.0), &rng.values(2, 1.0), 2, 4)
        .unwrap();
    let x5 = cpu.upload(&rng.values(15, 1.0), 3, 5).unwrap();
    let x4 = cpu.upload(&rng.values(12, 1.0), 3, 4).unwrap();
    assert!(is_backend_error(cpu.linear(
        &x5,
        &layer,
        Activation::Identity,
        None
    )));
    assert!(is_backend_error(cpu.linear(
        &x4,
        &layer,
        Activation::Identity,
        Some(&x4)
    )));
    let broken = CpuTensor {
        rows: 3,
        cols: 4,
        data: vec![1.0; 11],
    };
    assert!(is_backend_error(cpu.linear(
        &broken,
        &layer,
        Activation::Identity,
        None
    )));

    let batch = rng.batch(&[2, 1], 10, 2);
    let qkv = cpu.upload(&rng.values(3 * 12, 1.0), 3, 12).unwrap();
    assert!(cpu.attention(&qkv, &batch, 2, 2).is_ok());
    assert!(is_backend_error(cpu.attention(&qkv, &batch, 2, 3)));
    assert!(is_backend_error(cpu.attention(&qkv, &batch, 0, 4)));
    assert!(is_backend_error(cpu.attention(&qkv, &batch, usize::MAX, 2)));
    assert!(is_backend_error(cpu.attention(&x4, &batch, 2, 2)));
    let mut bad_batch = batch.clone();
    bad_batch.cu_seqlens = vec![0, 3, 2];
    assert!(cpu.upload_batch(&bad_batch).is_err());
    assert!(is_backend_error(cpu.attention(&qkv, &bad_batch, 2, 2)));
    bad_batch.cu_seqlens = vec![0, 2, 4];
    assert!(is_backend_error(cpu.pool(&qkv, &bad_batch, Pooling::Mean)));
    let mut empty_sequence = batch.clone();
    empty_sequence.cu_seqlens = vec![0, 0, 3];
    assert!(is_backend_error(cpu.pool(&qkv, &empty_sequence, Pooling::Cls)));

    let norm = |n: usize| LayerNormWeights {
        gamma: cpu.upload(&vec![1.0; n], 1, n).unwrap(),
        beta: cpu.upload(&vec![0.0; n], 1, n).unwrap(),
        eps: 1e-12,
    };
    assert!(is_backend_error(cpu.layer_norm(&x5, &norm(4))));
    let table = |rows: usize, cols: usize| cpu.upload(&vec![0.5; rows * cols], rows, cols).unwrap();
    let tables = EmbeddingTables {
        word: table(10, 4),
        position: table(2, 4),
        token_type: table(2, 4),
    };
    assert!(cpu.embed(&batch, &tables, &norm(4)).is_ok());
    assert!(is_backend_error(cpu.embed(&batch, &tables, &norm(5))));
    let mut long_batch = rng.batch(&[3], 10, 2); // position 2 is past a 2-row position table
    assert!(is_backend_error(cpu.embed(&long_batch, &tables, &norm(4))));
    long_batch.token_ids[1] = 10;
    let err = cpu.embed(&long_batch, &tables, &norm(4)).unwrap_err().to_string();
    assert!(err.contains("word id 10"), "{err}");
    let zero_width = cpu.upload(&[], 10, 0).unwrap();
    let zero_tables = EmbeddingTables {
        word: zero_width.clone(),
        position: zero_width.clone(),
        token_type: zero_width,
    };
    assert!(is_backend_error(cpu.embed(&batch, &zero_tables, &norm(0))));
}

/// `C = A · Wᵀ + bias` in f64 from the unpacked operands, for the GEMM tests below.
fn gemm_reference(a: &[f32], lda: usize, m: usize, w: &[f32], n: usize, k: usize, bias: &[f32]) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * lda + p] as f64 * w[j * k + p] as f64).sum();
            c[i * n + j] = bias[j] as f64 + dot;
        }
    }
    c
}

#[test]
fn gemm_matches_reference_at_every_isa_level() {
    let mut rng = SplitMix64::new(11);
    // Tails in every direction: rows around the 12-row tile and the 96-row block, columns around
    // the 32-wide panel, k around the 384-step K block (several blocks at 800, run panel first;
    // at 4,200 K block first: `LoopOrder`).
    let shapes = [
        (1, 1, 1),
        (13, 33, 5),
        (11, 31, 385),
        (97, 70, 383),
        (200, 65, 800),
        (29, 40, 4200),
        (12, 32, 0),
    ];
    for isa in matmul::Isa::available_f32() {
        for &(m, n, k) in &shapes {
            let (lda, ldc) = (k + 3, n + 5);
            let a = rng.values(m * lda, 1.0);
            let w = rng.values(n * k, 1.0 / (k.max(1) as f32).sqrt());
            let bias = rng.values(n, 0.5);
            let packed = matmul::PackedMatrix::from_rows(&w, n, k, k);
            let sentinel = 12345.0;
            let mut c = vec![sentinel; m * ldc];
            matmul::gemm_with(isa, &a, lda, m, &packed, Some(&bias), &mut c, ldc);
            let want = gemm_reference(&a, lda, m, &w, n, k, &bias);
            for i in 0..m {
                for j in 0..ldc {
                    let got = c[i * ldc + j];
                    if j >= n {
                        assert_eq!(
                            got, sentinel,
                            "{isa:?} {m}x{n}x{k}: wrote outside C at ({i}, {j})"
                        );
                        continue;
                    }
                    // Sums of k products of O(1/sqrt k) terms: O(1) results, f32 rounding of
                    // about sqrt(k) ulp; 2e-5 is far below any indexing error.
                    let diff = (got as f64 - want[i * n + j]).abs();
                    assert!(
                        diff < 2e-5,
                        "{isa:?} {m}x{n}x{k} ({i}, {j}): {got} vs {}",
                        want[i * n + j]
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_rows_do_not_depend_on_their_neighbours_at_any_isa_level() {
    // A row's result must be bit-identical whether it is computed alone, as the tail of a tile or
    // inside a full one: the batching-invariance guarantee of the engine rests on this.
    let mut rng = SplitMix64::new(12);
    let (m, n, k) = (29, 70, 777);
    let a = rng.values(m * k, 1.0);
    let packed = matmul::PackedMatrix::from_rows(&rng.values(n * k, 0.05), n, k, k);
    let bias = rng.values(n, 0.5);
    for isa in matmul::Isa::available_f32() {
        let mut all = vec![0.0; m * n];
        matmul::gemm_with(isa, &a, k, m, &packed, Some(&bias), &mut all, n);
        for i in [0, 11, 12, 25, 28] {
            let mut alone = vec![0.0; n];
            matmul::gemm_with(isa, &a[i * k..], k, 1, &packed, Some(&bias), &mut alone, n);
            assert_eq!(
                &all[i * n..(i + 1) * n],
                &alone[..],
                "{isa:?}: row {i} differs alone"
            );
        }
    }
}

#[test]
fn elementwise_code_is_bit_identical_at_every_isa_level() {
    // The multiversioned functions are one body compiled per level, with no FMA contraction: the
    // results must not change with the level, only the speed.
    let mut rng = SplitMix64::new(13);
    let values = rng.values(1000, 4.0);
    let residual = rng.values(1000, 1.0);
    let (gamma, beta) = (rng.values(1000, 1.0), rng.values(1000, 1.0));
    let portable = matmul::Isa::Portable;
    for isa in matmul::Isa::available_f32() {
        for activation in Activation::ALL {
            let (mut x, mut y) = (values.clone(), values.clone());
            math::epilogue_with(isa, activation, &mut x, Some(&residual));
            math::epilogue_with(portable, activation, &mut y, Some(&residual));
            assert_eq!(x, y, "{isa:?} {activation:?}");
        }
        let (mut x, mut y) = (vec![0.0; 1000], vec![0.0; 1000]);
        rowwise::layer_norm_row_with(isa, &values, &gamma, &beta, 1e-12, &mut x);
        rowwise::layer_norm_row_with(portable, &values, &gamma, &beta, 1e-12, &mut y);
        assert_eq!(x, y, "{isa:?} layer norm");
    }
}

#[test]
fn bf16_gemm_matches_reference_with_every_bf16_kernel() {
    if !bf16::is_supported() {
        // Refusal is the contract there: the backend must say so, not fall back.
        assert!(CpuBackend::with_dtype(Dtype::Bf16).is_err());
        return;
    }
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect() };
    let mut rng = SplitMix64::new(14);
    // Odd k (a half-filled last pair), k around the 32-wide AMX step and over one 384 block, rows
    // around the 16-row tile, the 32-row AMX block and the 96-row M block, column tails.
    let shapes = [
        (1, 1, 1),
        (13, 33, 7),
        (29, 70, 777),
        (97, 32, 384),
        (12, 5, 0),
        (33, 64, 31),
        (17, 95, 33),
        (200, 40, 65),
    ];
    for kernel in bf16::Kernel::available() {
        // Amx and Dot multiply bf16-rounded activations, Widened the f32 ones.
        let activations = |a: &[f32]| {
            if kernel.rounds_activations() {
                round(a)
            } else {
                a.to_vec()
            }
        };
        for &(m, n, k) in &shapes {
            let (lda, ldc) = (k + 3, n + 5);
            let a = rng.values(m * lda, 1.0);
            let w = rng.values(n * k, 1.0 / (k.max(1) as f32).sqrt());
            let bias = rng.values(n, 0.5);
            let packed = bf16::PackedBf16::from_rows(&w, n, k);
            let sentinel = 12345.0;
            let mut c = vec![sentinel; m * ldc];
            let all = 0..packed.panels();
            bf16::gemm_panels_with(kernel, &a, lda, m, &packed, all.clone(), Some(&bias), &mut c, ldc);
            // The products (of bf16 values, or of a bf16 and an f32 in a fused multiply-add) are
            // exact: only the f32 accumulation rounds, so the f64 result on the same inputs is
            // matched as closely as the f32 GEMM's.
            let want = gemm_reference(&activations(&a), lda, m, &round(&w), n, k, &bias);
            for i in 0..m {
                assert!(
                    c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == sentinel),
                    "{kernel:?}: wrote outside C"
                );
                for j in 0..n {
                    let (got, want) = (c[i * ldc + j] as f64, want[i * n + j]);
                    assert!(
                        (got - want).abs() < 2e-5,
                        "{kernel:?} bf16 {m}x{n}x{k} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
            // Batching invariance holds for bf16 as for f32: a row alone gives the same bits.
            if m > 0 && n > 0 {
                let i = m - 1;
                let mut alone = vec![0.0; n];
                bf16::gemm_panels_with(
                    kernel,
                    &a[i * lda..],
                    lda,
                    1,
                    &packed,
                    all,
                    Some(&bias),
                    &mut alone,
                    n,
                );
                assert_eq!(
                    &c[i * ldc..i * ldc + n],
                    &alone[..],
                    "{kernel:?} bf16 row {i} alone"
                );
            }
        }
    }
}

#[test]
fn bf16_linear_layers_stay_close_to_f32() {
    let Ok(backend) = CpuBackend::with_dtype(Dtype::Bf16) else {
        return; // refusal is checked by the test above
    };
    let mut rng = SplitMix64::new(15);
    let (m, n, k) = (67, 383, 383);
    let x = rng.matrix(m, k, 1.0);
    let w = rng.matrix(n, k, 1.7 / (k as f32).sqrt());
    let b = rng.values(n, 0.5);
    let layer = backend.load_linear(&w.data, &b, n, k).unwrap();
    assert!(layer.weight().is_none(), "bf16 layer holds f32 weights");
    let got = backend
        .linear(&tensor(&x), &layer, Activation::Gelu, None)
        .unwrap();
    let want = reference::linear(&x, &w, &b, Activation::Gelu, None);
    // Two bf16 roundings (8 significant bits: relative 2^-9 each) per product, averaging out
    // over k = 383 terms of random sign: about 2^-9 / sqrt(k) * sqrt(k) ~ 4e-3 of the output
    // scale at worst; 1e-2 still catches any indexing error (those are of order 1).
    assert_close("bf16 linear", &host(&got), &want, 1e-2);
}

#[path = "attention_tests.rs"]
mod attention_tests;
