//! The register micro-kernels of the f32 GEMM, one per instruction set, and the run-time choice
//! between them.
//!
//! Every kernel computes the same thing on one `MR x NR` tile of `C` (row `i` at `c[i * ldc..]`,
//! in the output itself or in an aligned edge buffer): for i in [0, MR) and j in [0, NR),
//! `C[i][j] = init[j] + sum_{p < k} a[p * MR + i] * b[p * NR + j]`, where `init` is the bias row
//! or C's partial sums, `a` a packed micro-panel of A (MR rows interleaved, see
//! `matmul::pack_a`) or, for the AVX-512 kernel, A's rows where they lie ([`run_rows`]), and `b`
//! a k-major panel of W. Each product is accumulated in the same order
//! (p ascending) for every element of the tile, so a row's result never depends on which other
//! rows share its tile: the batching-invariance test relies on this.
//!
//! - AVX-512F: the whole 12 x 32 tile in 24 zmm accumulators; per `p`, two loads of W, twelve
//!   broadcasts of A (folded into the FMA as `{1to16}` memory operands) and 24 FMAs.
//! - AVX2 + FMA: 16 ymm registers only, so the tile is done as four 6 x 16 quarters (12
//!   accumulators, 2 loads of W, 1 broadcast register).
//! - Portable: 4 x 8 blocks that LLVM vectorizes for whatever the target is (SSE2 by default);
//!   multiply and add are separate roundings there, the SIMD kernels use fused multiply-adds.
//!
//! The kernel is chosen once per process ([`Isa::detected`]), from the CPU's features; the
//! environment variable `EMBER_CPU_ISA=amx|avx512-bf16|avx512|avx2|portable` forces a level (for
//! benches, comparisons and tests; a level the CPU lacks is refused with a warning and the
//! detected one kept).

use std::sync::OnceLock;

/// Rows of `C` per register tile (and of A per packed micro-panel).
pub const MR: usize = 12;
/// Columns of `C` per register tile, and the panel width of `PackedMatrix`.
pub const NR: usize = 32;

/// One `MR x NR` tile of `C`, aligned so that each of its rows is one cache line pair.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Tile(pub [f32; MR * NR]);

/// The instruction-set level of the CPU kernels, best first. The f32 code has three variants
/// (AVX-512, AVX2, portable); the two levels above AVX-512 only change the bf16 linear layers
/// (see [`Isa::f32_kernels`] and `super::bf16::Kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// AMX-BF16 tiles (`tdpbf16ps`) for the bf16 linear layers, AVX-512 for everything else.
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`) for the bf16 linear layers where it outruns f32 FMAs (AMD),
    /// AVX-512 for everything else.
    Avx512Bf16,
    /// AVX-512 F/BW/DQ/VL with AVX2 + FMA; bf16 weights are widened to f32 for FMAs.
    Avx512,
    /// AVX2 + FMA.
    Avx2,
    /// Whatever the compilation target offers, through LLVM's auto-vectorizer.
    Portable,
}

impl Isa {
    /// Every level, best first.
    pub const ALL: [Isa; 5] = [Isa::Amx, Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name `EMBER_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// The level whose f32 kernels this level runs: the bf16 levels run AVX-512 f32 code.
    pub fn f32_kernels(self) -> Isa {
        match self {
            Isa::Amx | Isa::Avx512Bf16 => Isa::Avx512,
            other => other,
        }
    }

    /// Whether this CPU (and, for AMX, the operating system) can run the level. Asked once per
    /// level and remembered: kernels assert it on every call.
    pub fn is_available(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 5]> = OnceLock::new();
        let index = Isa::ALL.iter().position(|&isa| isa == self).unwrap_or(0);
        AVAILABLE.get_or_init(|| Isa::ALL.map(Isa::ask_cpu))[index]
    }

    /// What [`Isa::is_available`] remembers: the CPUID features (and the OS permission for AMX).
    fn ask_cpu(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => Isa::Avx512Bf16.ask_cpu() && super::amx::is_available(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512.ask_cpu() && is_x86_feature_detected!("avx512bf16"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // BW/DQ/VL too: the multiversioned elementwise code is compiled with them (every
                // AVX-512 CPU since Skylake-X has them; Xeon Phi does not, and gets AVX2).
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Amx | Isa::Avx512Bf16 | Isa::Avx512 | Isa::Avx2 => false,
            Isa::Portable => true,
        }
    }

    /// Every level this CPU can run, best first (tests run each of them).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_available()).collect()
    }

    /// The distinct f32 kernel levels this CPU can run, best first: [`Isa::available`] without
    /// the bf16 levels, whose f32 code is AVX-512's.
    pub fn available_f32() -> Vec<Isa> {
        Isa::available()
            .into_iter()
            .filter(|isa| isa.f32_kernels() == *isa)
            .collect()
    }

    /// The level every kernel of this process uses: the best available, or the one named by
    /// `EMBER_CPU_ISA` (`amx`, `avx512-bf16`, `avx512`, `avx2`, `portable`). Decided on the first
    /// call and cached.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Isa::available()[0];
            let Ok(wanted) = std::env::var("EMBER_CPU_ISA") else {
                return best;
            };
            match Isa::ALL.into_iter().find(|isa| isa.name() == wanted) {
                Some(isa) if isa.is_available() => isa,
                _ => {
                    eprintln!(
                        "ember: EMBER_CPU_ISA={wanted} is not available here (levels: {}); using {}",
                        Isa::available()
                            .iter()
                            .map(|isa| isa.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                        best.name()
                    );
                    best
                }
            }
        })
    }
}

/// Whether the kernel of `isa` can read A's rows in place ([`run_rows`]) instead of a packed
/// micro-panel: the AVX-512 kernel.
pub fn reads_rows(isa: Isa) -> bool {
    cfg!(target_arch = "x86_64") && isa.f32_kernels() == Isa::Avx512
}

/// [`run`] with A read in place: row `i` of the tile is `a[i * lda..i * lda + k]`.
///
/// # Panics
/// If `isa` has no such kernel ([`reads_rows`]) or is not available, or a slice is too short.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
#[inline]
pub fn run_rows(
    isa: Isa,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    init: Option<&[f32; NR]>,
    prefetch: &[f32],
) {
    assert!(
        a.len() >= (MR - 1) * lda + k && b.len() >= k * NR,
        "microkernel: A rows or panel too short"
    );
    assert!(
        ldc >= NR && c.len() >= (MR - 1) * ldc + NR,
        "microkernel: tile too short"
    );
    assert!(
        reads_rows(isa) && isa.is_available(),
        "no in-place kernel at level {}",
        isa.name()
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512F (checked above); the kernel reads `k` values at each `i * lda`
    // of `a`, `k * NR` of `b`, the `NR` of `init`, and rows `i * ldc..i * ldc + NR` (i < MR) of
    // `c` (lengths checked above).
    unsafe {
        x86::avx512_rows(
            k,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            c.as_mut_ptr(),
            ldc,
            init,
            prefetch,
        )
    }
}

/// `C = init + a · b` over `k` steps on the `MR x NR` tile whose row `i` is
/// `c[i * ldc..i * ldc + NR]` (see the module header for the layouts of `a` and `b`). `init` is
/// the same row for every row of the tile (the bias, or zeros); `None` accumulates onto `C`.
/// Full tiles run in place in the output with its own stride; edge tiles go through a [`Tile`].
///
/// # Panics
/// If `isa` is not available on this CPU, or a slice is too short for its extent.
#[inline]
pub fn run(isa: Isa, k: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, init: Option<&[f32; NR]>) {
    assert!(
        a.len() >= k * MR && b.len() >= k * NR,
        "microkernel: panel too short"
    );
    assert!(
        ldc >= NR && c.len() >= (MR - 1) * ldc + NR,
        "microkernel: tile too short"
    );
    match isa.f32_kernels() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(isa.is_available(), "AVX-512F kernel on a CPU without it");
            // SAFETY: the CPU has AVX-512F (checked above); the kernel reads `k * MR` values of
            // `a`, `k * NR` of `b`, the `NR` of `init`, and rows `i * ldc..i * ldc + NR` (i < MR)
            // of `c` (lengths checked above).
            unsafe { x86::avx512(k, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, init) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(isa.is_available(), "AVX2 kernel on a CPU without AVX2 + FMA");
            // SAFETY: as above, for AVX2 + FMA.
            unsafe { x86::avx2(k, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc, init) }
        }
        _ => portable(k, a, b, c, ldc, init),
    }
}

/// The portable kernel: 4 x 8 sub-tiles (8 accumulator vectors of 4 lanes fit SSE2's 16
/// registers), each a plain loop that LLVM vectorizes.
fn portable(k: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize, init: Option<&[f32; NR]>) {
    for rq in 0..MR / 4 {
        for cq in 0..NR / 8 {
            let mut acc = [[0.0f32; 8]; 4];
            for (i, row) in acc.iter_mut().enumerate() {
                row.copy_from_slice(match init {
                    Some(init) => &init[cq * 8..][..8],
                    None => &c[(rq * 4 + i) * ldc + cq * 8..][..8],
                });
            }
            for (a_p, b_p) in a[..k * MR].chunks_exact(MR).zip(b[..k * NR].chunks_exact(NR)) {
                let b8: &[f32; 8] = b_p[cq * 8..cq * 8 + 8].try_into().expect("8 lanes");
                for (i, row) in acc.iter_mut().enumerate() {
                    let a_ip = a_p[rq * 4 + i];
                    for j in 0..8 {
                        row[j] += a_ip * b8[j];
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                c[(rq * 4 + i) * ldc + cq * 8..][..8].copy_from_slice(row);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::matmul::prefetch_line;
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 12 x 32 with 24 zmm accumulators, on a packed micro-panel of A.
    ///
    /// # Safety
    /// AVX-512F present; `a` readable for `k * MR` floats, `b` for `k * NR`, `c` read/write for
    /// `NR` floats at each `i * ldc`, i < MR.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        init: Option<&[f32; NR]>,
    ) {
        // SAFETY: A[i][p] at `a + p * MR + i` lies in the `k * MR` floats vouched for; the rest is
        // the caller's contract, passed on.
        unsafe { tile_12x32(k, |p, i| a.add(p * MR + i), b, NR, c, ldc, init, &[]) }
    }

    /// 12 x 32 with 24 zmm accumulators, reading A's twelve rows where they lie (`a + i * lda`),
    /// with no packing: the broadcasts take any address, so a copy of A into micro-panels only
    /// costs time (about 2 cycles per value, 6 % of an f32 forward pass).
    ///
    /// # Safety
    /// AVX-512F present; `a` readable for `k` floats at each `i * lda`, i < MR, `b` for `k * NR`,
    /// `c` read/write for `NR` floats at each `i * ldc`, i < MR.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // a BLAS-style signature, plus the prefetch hint
    pub unsafe fn avx512_rows(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        init: Option<&[f32; NR]>,
        prefetch: &[f32],
    ) {
        // SAFETY: A[i][p] at `a + i * lda + p` lies in row i's `k` floats vouched for; the rest
        // is the caller's contract, passed on.
        unsafe { tile_12x32(k, |p, i| a.add(i * lda + p), b, NR, c, ldc, init, prefetch) }
    }

    /// [`avx512_rows`] with W's step p at `b + p * ldb` instead of a packed panel's `p * NR`:
    /// attention's context product reads V's rows where they lie in the qkv rows. A function of
    /// its own, not `tile_12x32` inlined into the caller: there LLVM hoisted the broadcasts of
    /// four steps into registers and spilled them.
    ///
    /// # Safety
    /// AVX-512F present; `a` readable for `k` floats at each `i * lda`, i < MR, `b` for `NR`
    /// floats at each `p * ldb`, p < k, `c` read/write for `NR` floats at each `i * ldc`, i < MR.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // a BLAS-style signature
    pub unsafe fn avx512_rows_strided(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: Option<&[f32; NR]>,
    ) {
        // SAFETY: as `avx512_rows`, with W's rows at stride `ldb` (the caller's contract).
        unsafe { tile_12x32(k, |p, i| a.add(i * lda + p), b, ldb, c, ldc, init, &[]) }
    }

    /// Steps of k per iteration of [`tile_12x32`]'s loop.
    const UNROLL: usize = 4;

    /// The 12 x 32 tile with A[i][p] at `a_at(p, i)` and W's step p at `b + p * ldb` (`NR` for a
    /// packed panel, V's row stride for [`avx512_rows_strided`]): per `p`, two loads of W, twelve
    /// broadcasts of A (folded into the FMAs as `{1to16}` memory operands) and 24 FMAs.
    ///
    /// # Safety
    /// AVX-512F present; `a_at(p, i)` readable for p < k, i < MR; `b` readable for `NR` floats at
    /// each `p * ldb`, p < k; `c`, `init` as for [`avx512`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)] // a BLAS-style signature, plus the prefetch hint
    unsafe fn tile_12x32(
        k: usize,
        a_at: impl Fn(usize, usize) -> *const f32,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: Option<&[f32; NR]>,
        prefetch: &[f32],
    ) {
        // SAFETY: C's rows and `init` as the caller vouched for.
        let mut acc = unsafe { load_tile(c, ldc, init) };
        // One step of k: two loads of W, twelve broadcasts of A, 24 FMAs.
        let step = |acc: &mut [[__m512; 2]; MR], p: usize| {
            prefetch_line(prefetch, p);
            // SAFETY: p < k, and the caller made `b` readable for `NR` floats at `p * ldb` and
            // A at `a_at(p, i)`: step p reads `b[p * ldb..p * ldb + 32]` and A's column p.
            unsafe {
                let b_p = [
                    _mm512_loadu_ps(b.add(p * ldb)),
                    _mm512_loadu_ps(b.add(p * ldb + 16)),
                ];
                fma_column(acc, |i| a_at(p, i), b_p);
            }
        };
        // Four steps per iteration: the twelve addresses of A's rows are then worked out once
        // per four steps (as displacements of one address each), not once per step. Worked out
        // every step they were about 14 integer operations against 24 FMAs, and some of them
        // take the two ports the FMAs need.
        let unrolled = k / UNROLL * UNROLL;
        for p0 in (0..unrolled).step_by(UNROLL) {
            for p in p0..p0 + UNROLL {
                step(&mut acc, p);
            }
        }
        for p in unrolled..k {
            step(&mut acc, p);
        }
        // SAFETY: the same rows of C as loaded.
        unsafe { store_tile(&acc, c, ldc) };
    }

    /// The 24 accumulators of a 12 x 32 tile, started from `init` (every row) or, with `None`,
    /// from C's rows `c + i * ldc`.
    ///
    /// # Safety
    /// AVX-512F present; `c` readable for `NR` floats at each `i * ldc`, i < MR, when `init` is
    /// `None`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn load_tile(c: *const f32, ldc: usize, init: Option<&[f32; NR]>) -> [[__m512; 2]; MR] {
        // A loop, not `array::from_fn`: that one's closure is compiled without this function's
        // target features and was left out of line in some builds (a call per row in the
        // kernel, seen in perf as `core::array::from_fn`).
        let mut tile = [[_mm512_setzero_ps(); 2]; MR];
        for (i, row) in tile.iter_mut().enumerate() {
            // SAFETY: row i < MR of C, or `init`'s `NR` floats (the caller's contract).
            unsafe {
                let src = init.map_or(c.add(i * ldc), |init| init.as_ptr());
                *row = [_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))];
            }
        }
        tile
    }

    /// One step of k on the tile: row `i`'s accumulators gain `A[i] * b`, A[i] at `a_at(i)`.
    ///
    /// # Safety
    /// AVX-512F present; `a_at(i)` readable for i < MR.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn fma_column(
        acc: &mut [[__m512; 2]; MR],
        a_at: impl Fn(usize) -> *const f32,
        b: [__m512; 2],
    ) {
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: i < MR (the caller's contract).
            let a_i = _mm512_set1_ps(unsafe { *a_at(i) });
            row[0] = _mm512_fmadd_ps(a_i, b[0], row[0]);
            row[1] = _mm512_fmadd_ps(a_i, b[1], row[1]);
        }
    }

    /// Stores the tile's accumulators to C's rows `c + i * ldc`.
    ///
    /// # Safety
    /// AVX-512F present; `c` writable for `NR` floats at each `i * ldc`, i < MR.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn store_tile(acc: &[[__m512; 2]; MR], c: *mut f32, ldc: usize) {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: row i < MR of C (the caller's contract).
            unsafe {
                _mm512_storeu_ps(c.add(i * ldc), row[0]);
                _mm512_storeu_ps(c.add(i * ldc + 16), row[1]);
            }
        }
    }

    /// The 12 x 32 tile as four 6 x 16 quarters.
    ///
    /// # Safety
    /// AVX2 and FMA present; pointers as for [`avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        init: Option<&[f32; NR]>,
    ) {
        for row_half in 0..2 {
            for column_half in 0..2 {
                // SAFETY: each quarter is rows `6 * row_half..+6` and columns
                // `16 * column_half..+16` of the tile the caller vouched for, with the full
                // panels' strides, so every read and write stays inside the caller's extents;
                // AVX2 and FMA are enabled here as the quarter kernel needs.
                unsafe {
                    avx2_6x16(
                        k,
                        a.add(row_half * 6),
                        b.add(column_half * 16),
                        c.add(row_half * 6 * ldc + column_half * 16),
                        ldc,
                        init.map(|init| init.as_ptr().add(column_half * 16)),
                    );
                }
            }
        }
    }

    /// 6 x 16 with 12 ymm accumulators; `a` and `b` keep the strides `MR` and `NR` of the full
    /// micro-panels.
    ///
    /// # Safety
    /// AVX2 and FMA present; `a` readable at `p * MR + i` and `b` at `p * NR..p * NR + 16` for
    /// p < k, i < 6; `c` read/write for 16 floats at each `i * ldc`, i < 6; `init`, when given,
    /// readable for 16 floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn avx2_6x16(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        init: Option<*const f32>,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: 16 floats of row i < 6 of C, or of `init` (the caller's contract).
            unsafe {
                let src = init.unwrap_or(c.add(i * ldc) as *const f32);
                row[0] = _mm256_loadu_ps(src);
                row[1] = _mm256_loadu_ps(src.add(8));
            }
        }
        for p in 0..k {
            // SAFETY: p < k: `b[p * NR..p * NR + 16]` and `a[p * MR..p * MR + 6]`, inside the
            // extents the caller vouched for.
            unsafe {
                let b0 = _mm256_loadu_ps(b.add(p * NR));
                let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
                let a_p = a.add(p * MR);
                for (i, row) in acc.iter_mut().enumerate() {
                    let a_ip = _mm256_broadcast_ss(&*a_p.add(i));
                    row[0] = _mm256_fmadd_ps(a_ip, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(a_ip, b1, row[1]);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the same 16 floats of row i of C as loaded above.
            unsafe {
                _mm256_storeu_ps(c.add(i * ldc), row[0]);
                _mm256_storeu_ps(c.add(i * ldc + 8), row[1]);
            }
        }
    }
}
