//! Helpers for testing a backend against the f64 reference (reference.rs beside this file): a
//! small seeded PRNG (no dependency, same numbers on every machine), random inputs that are never
//! zero, and a normalized error measure. Included, as reference.rs is, by the library's unit
//! tests and by the integration tests and benches, so that all use the same inputs and the same
//! yardstick; the includer brings `Batch` and `HostMatrix` into scope.

use super::{Batch, HostMatrix};

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, a good enough stream for test data.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The stream of `seed`: the same numbers for the same seed on every machine.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 random bits (every value exactly representable in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[0, n)`; `n > 0`.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) % n as u64) as usize
    }

    /// A value of magnitude in `[scale / 8, scale)` with a random sign: spread over three octaves
    /// and never zero, so that a wrong index or a missing term cannot hide behind zeros.
    pub fn nonzero(&mut self, scale: f32) -> f32 {
        let magnitude = scale * (0.125 + 0.875 * self.unit());
        if self.next_u64() & 1 == 0 {
            magnitude
        } else {
            -magnitude
        }
    }

    /// `len` values of [`SplitMix64::nonzero`].
    pub fn values(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.nonzero(scale)).collect()
    }

    /// A `[rows, cols]` matrix of [`SplitMix64::nonzero`] values.
    pub fn matrix(&mut self, rows: usize, cols: usize, scale: f32) -> HostMatrix {
        HostMatrix {
            rows,
            cols,
            data: self.values(rows * cols, scale),
        }
    }

    /// A packed batch with the given sequence lengths and random ids below the given table sizes
    /// (positions run 0.. within each sequence, like BERT).
    pub fn batch(&mut self, lengths: &[usize], vocab: usize, types: usize) -> Batch {
        let mut batch = Batch {
            token_ids: Vec::new(),
            type_ids: Vec::new(),
            position_ids: Vec::new(),
            cu_seqlens: vec![0],
            max_len: lengths.iter().copied().max().unwrap_or(0),
        };
        for &len in lengths {
            for p in 0..len {
                batch.token_ids.push(self.below(vocab) as u32);
                batch.type_ids.push(self.below(types) as u32);
                batch.position_ids.push(p as u32);
            }
            batch.cu_seqlens.push(batch.token_ids.len() as u32);
        }
        batch
    }
}

/// How far `actual` is from `expected`: the largest absolute difference, and that divided by the
/// largest magnitude in `expected` (a scale-free error, as ggml's normalized error).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deviation {
    /// The largest absolute difference.
    pub max_abs: f64,
    /// `max_abs` over the largest magnitude of the expected values.
    pub relative_to_max: f64,
}

/// Compares two equally shaped matrices.
///
/// # Panics
/// If the shapes differ or a value is NaN (a test failure either way).
pub fn deviation(actual: &HostMatrix, expected: &HostMatrix) -> Deviation {
    assert_eq!(
        (actual.rows, actual.cols),
        (expected.rows, expected.cols),
        "shapes differ"
    );
    let mut max_abs = 0.0f64;
    let mut magnitude = 0.0f64;
    for (&a, &e) in actual.data.iter().zip(&expected.data) {
        assert!(!a.is_nan() && !e.is_nan(), "NaN in comparison");
        max_abs = max_abs.max((a as f64 - e as f64).abs());
        magnitude = magnitude.max((e as f64).abs());
    }
    Deviation {
        max_abs,
        relative_to_max: if magnitude > 0.0 {
            max_abs / magnitude
        } else {
            max_abs
        },
    }
}
