//! The CPU attention paths (the GEMM path, the AVX-512 register-tile kernel, bf16 on `vdpbf16ps`
//! or AMX where the CPU has them) and the softmax at every level against the f64 reference, and their isolation and batching invariance: no
//! sequence sees another, and a sequence alone gets the bits it gets in a batch.

use super::*;

/// A qkv matrix and its batch: sequences of 1, 17, 512 and 70 tokens in one batch.
fn attention_case(rng: &mut SplitMix64, heads: usize, head_dim: usize) -> (HostMatrix, Batch) {
    let batch = rng.batch(&[1, 17, 512, 70], 10, 1);
    // Magnitudes up to 2 make scores up to ~10 after scaling: peaked softmax rows, where a wrong
    // scale or a wrong max subtraction shows, as well as nearly flat ones.
    let qkv = rng.matrix(batch.num_tokens(), 3 * heads * head_dim, 2.0);
    (qkv, batch)
}

#[test]
fn attention_matches_reference() {
    let mut rng = SplitMix64::new(6);
    // head_dim 64 (bge-base), 32 (MiniLM / bge-small), and an odd 33 that fills no SIMD width.
    for (heads, head_dim) in [(6, 64), (12, 32), (5, 33)] {
        let (qkv, batch) = attention_case(&mut rng, heads, head_dim);
        let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
        // With one thread the 4 sequences run their heads in a loop; with three, long sequences
        // split their heads into subtasks. Both paths must give the reference.
        for threads in [1, 3] {
            let got = with_threads(threads, || {
                CpuBackend::new()
                    .attention(&tensor(&qkv), &batch, heads, head_dim)
                    .unwrap()
            });
            // Scores are f32 dot products of head_dim <= 64 terms (error ~1e-6 on scaled scores
            // up to ~10), exp adds 2e-7 relative, and the context sums up to 512 weighted
            // values: a few 1e-6 against outputs of order 1.
            let what = format!("attention {heads}x{head_dim}, {threads} threads");
            assert_close(&what, &host(&got), &want, 2e-5);
        }
    }
}

#[test]
fn softmax_numerators_match_f64_at_every_level() {
    // Every level's softmax against f64 `exp`: lengths around the 16-lane vectors (and rows
    // with padding vectors past the last score), scores from flat to peaked, and a row whose
    // range sends most exponents below f32's normal range (0 there, never a clamp's 1e-38
    // counted as if it mattered).
    let mut rng = SplitMix64::new(24);
    for len in [1, 2, 15, 16, 17, 31, 33, 56, 385] {
        for (magnitude, padding) in [(0.01, 0), (3.0, 16), (40.0, 0), (2000.0, 32)] {
            let scores = rng.values(len, magnitude);
            let scale = 0.125;
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) as f64;
            let want: Vec<f64> = scores
                .iter()
                .map(|&s| ((s as f64 - max) * scale as f64).exp())
                .collect();
            let want_sum: f64 = want.iter().sum();
            let stride = len.next_multiple_of(16) + padding;
            let mut row = vec![0.5f32; stride];
            let mut check = |what: &str, run: &dyn Fn(&mut [f32]) -> f32| {
                row[..len].copy_from_slice(&scores);
                let sum = run(&mut row);
                assert!(
                    ((sum as f64 - want_sum) / want_sum).abs() < 2e-6,
                    "{what} len {len}: sum"
                );
                for (i, (&got, &want)) in row.iter().zip(&want).enumerate() {
                    // Relative to the row's largest numerator (1): the scores' own rounding
                    // times |t| up to ~40 where the numerator is far below 1.
                    assert!(
                        (got as f64 - want).abs() < 1e-6 * (1.0 + want),
                        "{what} len {len} [{i}]"
                    );
                }
                assert!(row[len..].iter().all(|v| v.is_finite()), "{what}: padding");
            };
            check("dispatched", &|row| {
                attention::softmax_numerators(row, len, scale)
            });
            for isa in microkernel::Isa::available_f32() {
                check(isa.name(), &|row| {
                    attention::softmax_numerators_portable_with(isa, row, len, scale)
                });
            }
        }
    }
}

#[test]
fn avx512_attention_gives_the_gemm_paths_bits() {
    // The AVX-512 kernel runs the GEMM path's FMAs in the same order: every output bit equal, on
    // lengths around the 12-query blocks and 32-key panels, one long sequence, head dimensions
    // 32 and 64 (and 96: three column tiles), one thread and three.
    if attention::HeadKernel::choose(Dtype::F32, 32) != attention::HeadKernel::Avx512 {
        return; // no AVX-512 here: the GEMM path is the only one
    }
    let mut rng = SplitMix64::new(23);
    for (heads, head_dim) in [(3, 64), (4, 32), (2, 96)] {
        let batch = rng.batch(&[1, 11, 12, 13, 31, 32, 33, 56, 385, 70], 10, 1);
        let qkv = rng.matrix(batch.num_tokens(), 3 * heads * head_dim, 2.0);
        let run = |kernel| {
            let mut out = vec![f32::NAN; batch.num_tokens() * heads * head_dim];
            attention::attention(&qkv.data, &batch.cu_seqlens, heads, head_dim, kernel, &mut out);
            out
        };
        for threads in [1, 3] {
            let (gemm, avx512) = with_threads(threads, || {
                (
                    run(attention::HeadKernel::F32),
                    run(attention::HeadKernel::Avx512),
                )
            });
            let first_difference = gemm
                .iter()
                .zip(&avx512)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first_difference, None, "{heads}x{head_dim}, {threads} threads");
        }
    }
}

#[test]
fn bf16_attention_matches_reference_and_batching() {
    // The bf16 backend's attention: on AMX, or with `vdpbf16ps` on AMD (head dimensions 32 and
    // 64), Q, K, V and the probabilities in bf16; elsewhere, and at head dimension 33, f32.
    let Ok(backend) = CpuBackend::with_dtype(Dtype::Bf16) else {
        return; // refusal is checked by the bf16 GEMM test
    };
    let amx = matmul::Isa::detected() == matmul::Isa::Amx;
    let mut rng = SplitMix64::new(17);
    for (heads, head_dim) in [(6, 64), (12, 32), (5, 33)] {
        let kernel = attention::HeadKernel::choose(Dtype::Bf16, head_dim);
        let fits = head_dim.is_multiple_of(32);
        let dot = bf16::Kernel::detected() == Some(bf16::Kernel::Dot);
        let avx512 = matmul::Isa::detected().f32_kernels() == matmul::Isa::Avx512;
        let expected = match () {
            _ if amx && fits => attention::HeadKernel::Amx,
            _ if dot && fits => attention::HeadKernel::Bf16,
            _ if avx512 && fits => attention::HeadKernel::Avx512,
            _ => attention::HeadKernel::F32,
        };
        assert_eq!(kernel, expected, "head dimension {head_dim}");
        // Lengths around the 12- and 16-query and 16/32-key blocks, and one long sequence.
        let batch = rng.batch(&[1, 11, 12, 13, 15, 16, 17, 33, 512, 70], 10, 1);
        let qkv = rng.matrix(batch.num_tokens(), 3 * heads * head_dim, 2.0);
        let want = reference::attention(&qkv, &batch.cu_seqlens, heads, head_dim);
        for threads in [1, 3] {
            let got = with_threads(threads, || {
                backend.attention(&tensor(&qkv), &batch, heads, head_dim).unwrap()
            });
            // bf16 keeps 8 significant bits: Q and K rounded (2^-9 relative each) move scaled
            // scores of up to ~10 by a few 1e-2 at worst, and P and V rounded add 2^-9 relative
            // per term of the context: 4e-3 of the output scale measured. An indexing error, a
            // missing key block or a wrong mask is of order 1.
            let what = format!("bf16 attention {heads}x{head_dim} ({kernel:?}), {threads} threads");
            assert_close(&what, &host(&got), &want, 1e-2);
        }
        // Batching invariance: each sequence alone gives the same bits.
        let together = backend.attention(&tensor(&qkv), &batch, heads, head_dim).unwrap();
        assert_alone_as_in_batch(&backend, (&qkv, &batch), (heads, head_dim), &together, &[0, 3, 5]);
    }
}

#[test]
fn attention_does_not_leak_across_sequences() {
    let mut rng = SplitMix64::new(7);
    let (heads, head_dim) = (4, 32);
    let (qkv, batch) = attention_case(&mut rng, heads, head_dim);
    let before = CpuBackend::new()
        .attention(&tensor(&qkv), &batch, heads, head_dim)
        .unwrap();
    // Replace every token of every sequence but sequence 1.
    let mut changed = qkv.clone();
    let keep = batch.range(1);
    for t in (0..batch.num_tokens()).filter(|t| !keep.contains(t)) {
        for c in 0..changed.cols {
            changed.data[t * changed.cols + c] = rng.nonzero(3.0);
        }
    }
    let after = CpuBackend::new()
        .attention(&tensor(&changed), &batch, heads, head_dim)
        .unwrap();
    let hidden = heads * head_dim;
    for t in 0..batch.num_tokens() {
        let same = before.row(t) == after.row(t);
        assert_eq!(
            same,
            keep.contains(&t),
            "token {t} (sequence 1 is {keep:?}, hidden {hidden})"
        );
    }
}

/// Each of `sequences` of the batch, attended alone, gives the very bits it got in the batch
/// (`together`): batching must not change results (a published pain point of peers).
fn assert_alone_as_in_batch(
    backend: &CpuBackend,
    (qkv, batch): (&HostMatrix, &Batch),
    (heads, head_dim): (usize, usize),
    together: &CpuTensor,
    sequences: &[usize],
) {
    let (cols, hidden) = (qkv.cols, heads * head_dim);
    for &s in sequences {
        let range = batch.range(s);
        let rows = qkv.data[range.start * cols..range.end * cols].to_vec();
        let alone_qkv = CpuTensor::new(range.len(), cols, rows).unwrap();
        let alone_batch = SplitMix64::new(s as u64).batch(&[range.len()], 10, 1);
        let alone = backend
            .attention(&alone_qkv, &alone_batch, heads, head_dim)
            .unwrap();
        let what = format!("{:?} {heads}x{head_dim}: sequence {s}", backend.dtype());
        assert_eq!(
            alone.data,
            together.data[range.start * hidden..range.end * hidden],
            "{what}"
        );
    }
}

#[test]
fn attention_of_a_sequence_is_the_same_alone_and_in_a_batch() {
    let mut rng = SplitMix64::new(8);
    let (heads, head_dim) = (3, 64);
    let (qkv, batch) = attention_case(&mut rng, heads, head_dim);
    // One thread: the batch runs heads in a loop, while each sequence alone splits its heads
    // into subtasks, so this also checks that the two paths agree bit for bit.
    let together = with_threads(1, || {
        CpuBackend::new()
            .attention(&tensor(&qkv), &batch, heads, head_dim)
            .unwrap()
    });
    let all: Vec<usize> = (0..batch.num_sequences()).collect();
    assert_alone_as_in_batch(
        &CpuBackend::new(),
        (&qkv, &batch),
        (heads, head_dim),
        &together,
        &all,
    );
}
