//! Elementwise f32 functions for the CPU backend: `exp`, `erf`, `tanh`, the two GELUs, and the
//! activation pass of a linear layer.
//!
//! Why not `f32::exp` / `libm::erf`: those are scalar calls with branches, so a loop over a row
//! cannot be vectorized, and GELU over the FFN output (tokens x 1536 values per layer) would cost
//! a third of the matrix multiply. These versions are branch-free (both sides of every split are
//! computed and one is selected), fully inlined, and written so that LLVM turns a loop over a
//! slice into SIMD code. Each is accurate to a few f32 ulp; `tests` checks them against the f64
//! functions on dense grids.
//!
//! Polynomial coefficients were fitted for this file with mpmath's `chebyfit` (near-minimax
//! Chebyshev fits at 40 digits) on the intervals named next to each table.

use crate::backend::Activation;

/// Horner evaluation, highest degree first, each step one fused multiply-add: a hardware FMA at
/// the AVX levels, the C library's exactly rounded `fmaf` at the portable level, so every level
/// still gives the same bits (and the AVX levels half the instructions: 6 % less CPU time for a
/// bf16 MiniLM pass, whose GELU and softmax are a quarter of it).
#[inline(always)]
fn horner<const N: usize>(x: f32, coefficients: &[f32; N]) -> f32 {
    let mut acc = coefficients[0];
    for &c in &coefficients[1..] {
        acc = acc.mul_add(x, c);
    }
    acc
}

/// `e^x`, relative error below 2e-7 on [-87, 88]; inputs outside are clamped there (so very
/// negative inputs give ~1e-38, not 0, which is harmless in a softmax whose sum is at least 1).
///
/// Range reduction `x = n ln2 + r`, `|r| <= ln2/2`, then `e^r` by its Taylor series to degree 7
/// (truncation error `0.347^8 / 8! = 5e-9`), then a multiply by `2^n` built from its bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to the nearest integer (the fraction bits fall off) and leaves that
    // integer, offset by 2^22, in the low mantissa bits: an exact round-and-convert with no
    // float-to-int instruction, which SSE2 lacks in vector form for rounding to nearest.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two so that `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const TAYLOR: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    // 88.3 keeps 2^n at most 2^127; -87.3 keeps it a normal number.
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    horner(r, &TAYLOR) * scale
}

/// `erf(x)` with absolute error below 3.5e-7 (f32 has a spacing of 6e-8 just below 1).
///
/// One rational function for the whole range: `x P(x^2) / Q(x^2)`, degrees 6 and 5 in `x^2`, a
/// minimax fit (Lawson's iteration) of erf on [0, 3.92] with error 1.7e-9. erf is odd, and so is
/// the fit, so negative inputs need no branch. Beyond 3.92, `erfc(x) < 2.97e-8`, under half the
/// f32 spacing below 1, so the input is clamped there. Twelve multiply-adds and a division,
/// against the two polynomials and an `exp` of the piecewise form this replaced: the GELU after
/// the first FFN matrix runs twice as fast (`cargo bench --bench cpu_ops -- Gelu`). The price is
/// rounding: the two polynomials, the product and the quotient each round in f32, which costs
/// up to 5.5 ulp just below 1 (3.3e-7) where the piecewise form kept 2e-7; a GELU's error is
/// half of erf's times |x|, far below the GEMMs' rounding. `scripts/fit_erf.py` refits the
/// coefficients.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const NUMERATOR: [f32; 7] = [
        -1.336_368_8e-8,
        4.723_591e-6,
        3.805_329_6e-4,
        3.830_977_2e-3,
        5.427_682e-2,
        1.846_534_4e-1,
        // The fit lands on 2/sqrt(pi), the Taylor slope of erf at 0.
        std::f32::consts::FRAC_2_SQRT_PI,
    ];
    const DENOMINATOR: [f32; 6] = [
        6.347_23e-5,
        1.304_947e-3,
        1.542_884_6e-2,
        1.137_600_8e-1,
        4.969_784e-1,
        1.0,
    ];
    // `clamp` keeps NaN a NaN, which the division then passes on.
    let x = x.clamp(-3.92, 3.92);
    let t = x * x;
    let value = x * horner(t, &NUMERATOR) / horner(t, &DENOMINATOR);
    // The fit may pass 1 by its error near the clamp; erf never does.
    value.clamp(-1.0, 1.0)
}

/// `tanh(x)` with absolute error below 2e-7 and relative error below 3e-7.
///
/// `|x| < 0.55`: `x * T(x^2)` (fit of `tanh(sqrt t)/sqrt t` on t in [0, 0.3025], error 1e-9),
/// where `1 - 2/(e^{2x}+1)` would lose relative accuracy to cancellation. Otherwise that formula;
/// beyond 9, tanh rounds to 1 in f32, so the input is clamped there.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const SMALL: [f32; 6] = [
        -6.233_633_5e-3,
        2.103_821_5e-2,
        -5.384_232e-2,
        1.333_245_7e-1,
        -3.333_331e-1,
        1.0,
    ];
    let a = x.abs().min(9.0);
    let small = a * horner(a * a, &SMALL);
    let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let magnitude = if a < 0.55 { small } else { large };
    if x.is_nan() {
        x
    } else {
        magnitude.copysign(x)
    }
}

/// The exact GELU, `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`, as `hidden_act: "gelu"`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The tanh approximation `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (`gelu_new`,
/// `gelu_pytorch_tanh`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// The lanes of the 16-lane vector whose first lane is element `first` that lie before element
/// `end`, as an AVX-512 mask: all 16, the few left in a row's last vector, or none past it.
#[cfg(target_arch = "x86_64")]
pub(super) fn lanes_before(end: usize, first: usize) -> u16 {
    ((1u32 << end.saturating_sub(first).min(16)) - 1) as u16
}

/// Defines `$name(args)`, which runs the `#[inline(always)]` function `$inner` compiled for the
/// instruction set of [`Isa::detected`], and `$name_with(isa, args)` for a given level (tests).
///
/// The body is the same portable Rust for every level: inlined into a function with
/// `#[target_feature]`, LLVM vectorizes its loops 16 lanes wide for AVX-512 or 8 for AVX2 instead
/// of the 4 of the default x86-64 target. Rust never contracts `a * b + c` into an FMA by itself
/// (the explicit `mul_add` of [`horner`] is exactly rounded at every level), so every level
/// computes bit-identical results; only the speed differs.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $name_with:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $inner:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $name_with($crate::backend::cpu::microkernel::Isa::detected(), $($arg),*)
        }

        /// The same with the code of `isa`.
        ///
        /// # Panics
        /// If `isa` is not available on this CPU.
        #[allow(dead_code)] // tests call it for every level; the library only through the above
        $vis fn $name_with(isa: $crate::backend::cpu::microkernel::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::backend::cpu::microkernel::Isa;
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                match isa.f32_kernels() {
                    Isa::Avx512 => {
                        assert!(isa.is_available(), "AVX-512 code on a CPU without it");
                        // SAFETY: the CPU has the features (checked just above).
                        return unsafe { avx512($($arg),*) };
                    }
                    Isa::Avx2 => {
                        assert!(isa.is_available(), "AVX2 code on a CPU without it");
                        // SAFETY: as above.
                        return unsafe { avx2($($arg),*) };
                    }
                    Isa::Amx | Isa::Avx512Bf16 | Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            $inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// Applies `activation` to every value of `values` in place, then adds `residual` (same
    /// length) when given: the output pass of a linear layer, one sweep over the block.
    pub fn epilogue / epilogue_with(activation: Activation, values: &mut [f32], residual: Option<&[f32]>)
        => epilogue_inline
}

#[inline(always)]
fn epilogue_inline(activation: Activation, values: &mut [f32], residual: Option<&[f32]>) {
    activate_inline(activation, values);
    if let Some(residual) = residual {
        add_assign(values, residual);
    }
}

multiversion! {
    /// Applies `activation` to every value of `values` in place.
    pub fn activate / activate_with(activation: Activation, values: &mut [f32]) => activate_inline
}

/// The match is outside the loops so that each loop is a plain map LLVM can vectorize. Plain
/// `for` loops, not `for_each` with a closure: `for_each` is a separate function that need not be
/// inlined, and out of line it would be compiled without the caller's target features.
#[inline(always)]
fn activate_inline(activation: Activation, values: &mut [f32]) {
    match activation {
        Activation::Identity => {}
        Activation::Gelu => {
            for v in values.iter_mut() {
                *v = gelu(*v);
            }
        }
        Activation::GeluTanh => {
            for v in values.iter_mut() {
                *v = gelu_tanh(*v);
            }
        }
        Activation::Relu => {
            for v in values.iter_mut() {
                *v = v.max(0.0);
            }
        }
        Activation::Tanh => {
            for v in values.iter_mut() {
                *v = tanh(*v);
            }
        }
    }
}

/// Adds `b` into `a` elementwise (the residual of a linear layer).
#[inline(always)]
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += *y;
    }
}

/// Sum with eight independent accumulators: LLVM does not reorder float additions on its own, so
/// a single accumulator would be one serial dependency chain; eight lanes vectorize and also
/// make the rounding error grow with `len / 8` instead of `len`.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..8 {
            acc[lane] += chunk[lane];
        }
    }
    let mut total = 0.0;
    for lane in acc {
        total += lane;
    }
    for &v in tail {
        total += v;
    }
    total
}

/// The largest value (`-inf` for an empty slice), over eight lanes like [`sum`] so that it
/// vectorizes.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..8 {
            acc[lane] = acc[lane].max(chunk[lane]);
        }
    }
    acc.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `sum((v - center)^2)`, same accumulator scheme as [`sum`].
#[inline(always)]
pub fn sum_squared_deviation(values: &[f32], center: f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for lane in 0..8 {
            let d = chunk[lane] - center;
            acc[lane] += d * d;
        }
    }
    let mut total = 0.0;
    for lane in acc {
        total += lane;
    }
    for &v in tail {
        total += (v - center) * (v - center);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 1/1024 from -lo to hi, plus a few special points.
    fn grid(lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        let steps = ((hi - lo) * 1024.0) as i32;
        (0..=steps)
            .map(move |i| lo + i as f32 / 1024.0)
            .chain([0.0, -0.0, 1e-30, -1e-30, 1e-8, 0.55, -0.55, 1.0, -1.0])
    }

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0) {
            let truth = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - truth).abs() / truth);
        }
        // 2e-7 relative is under 2 ulp (f32 epsilon 1.19e-7): Taylor truncation (5e-9) plus the
        // rounding of 8 Horner steps and of the reduced argument.
        assert!(worst < 2e-7, "exp worst relative error {worst:e}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        for x in grid(-6.0, 6.0) {
            let truth = libm::erf(x as f64);
            worst = worst.max(((erf(x) as f64) - truth).abs());
        }
        // 3.5e-7 absolute: under 6 ulp near |erf| = 1 (spacing 6e-8), from the four f32
        // roundings of `x P / Q`; the fit itself is 1.7e-9.
        assert!(worst < 3.5e-7, "erf worst absolute error {worst:e}");
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_accurate_to_a_few_ulp() {
        let (mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64);
        for x in grid(-12.0, 12.0) {
            let truth = (x as f64).tanh();
            let err = ((tanh(x) as f64) - truth).abs();
            worst_abs = worst_abs.max(err);
            if truth != 0.0 {
                worst_rel = worst_rel.max(err / truth.abs());
            }
        }
        // Same reasoning as erf for the absolute bound; the relative bound (2.5 ulp) checks that
        // small inputs go through the polynomial and not through the cancelling formula.
        assert!(worst_abs < 2e-7, "tanh worst absolute error {worst_abs:e}");
        assert!(worst_rel < 3e-7, "tanh worst relative error {worst_rel:e}");
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn gelus_match_their_f64_definitions() {
        for x in grid(-10.0, 10.0) {
            let xd = x as f64;
            let exact = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            let approx = 0.5
                * xd
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            // erf error (3.5e-7) or tanh error (2e-7) times |x|/2, plus rounding of the products.
            let tol = 2e-7 * (1.0 + xd.abs());
            assert!(((gelu(x) as f64) - exact).abs() <= tol, "gelu({x})");
            assert!(((gelu_tanh(x) as f64) - approx).abs() <= tol, "gelu_tanh({x})");
        }
    }
}
