//! The bf16 linear layers: weights stored as bfloat16, products accumulated in f32. Three
//! kernels ([`Kernel`]) share the packed weights:
//! - AMX ([`super::amx`], level [`Isa::Amx`]): `tdpbf16ps` on 16 x 16 tiles, activations rounded
//!   to bf16 as they are packed;
//! - dot (level [`Isa::Avx512Bf16`] on AMD): `vdpbf16ps`, 16 lanes x 2 products per instruction,
//!   activations rounded to bf16. On Zen 4 that is twice the multiply-adds of an f32 FMA;
//! - widened (every other AVX-512 CPU): the weights widened to f32 in registers (a shift or a
//!   mask per 16 values) and f32 FMAs on f32 activations. An Intel core with two 512-bit FMA
//!   units runs `vdpbf16ps` at half the multiply-adds of its FMAs (the roofline bench measured
//!   80 against 167 GFLOP/s on a Xeon without AMX), so there the dot kernel made bf16 slower
//!   than f32; widened, bf16 keeps f32's speed with half the weight bytes, and its activations
//!   are not rounded at all.
//!
//! A CPU without AVX-512 gets a clear error from [`check_supported`].
//!
//! Layouts (pairs of consecutive k, as both instructions multiply pairs):
//! - W: panels of `NR` = 32 columns, `panel[(q * NR + j) * 2 + e] = bf16(W[first + j][2q + e])`
//!   for `q` below `ceil(k / 32) * 16` (whole AMX k steps), zero past `n` and past `k`; 64-byte
//!   aligned.
//! - A: per K block and 12-row micro-panel, `pack[q * MR + i]` is the u32 holding
//!   `bf16(A[i][2q])` in its low half and `bf16(A[i][2q + 1])` in its high half (zero past `m`
//!   and past `k`), broadcast to all 16 lanes by the kernel.
//!
//! The blocking and the tile handling are those of the f32 GEMM (see `matmul`): K blocks of
//! [`KC`], M blocks of [`MC`], tails through an aligned tile buffer so that every row sees the
//! same arithmetic whatever its neighbours.

use std::cell::RefCell;

use half::bf16;

use super::matmul::{check_operands, drive, prefetch_line, store_tile, Operands, TileA, KC, MC};
use super::microkernel::{Isa, Tile, MR, NR};

/// The kernel that multiplies by bf16 weights (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `tdpbf16ps` on AMX tiles, activations rounded to bf16.
    Amx,
    /// `vdpbf16ps` (AVX512-BF16), activations rounded to bf16.
    Dot,
    /// f32 FMAs on weights widened from bf16 in registers (AVX-512F), f32 activations.
    Widened,
}

impl Kernel {
    /// The kernel of the level `isa` on this CPU, `None` below AVX-512.
    pub fn for_level(isa: Isa) -> Option<Kernel> {
        match isa {
            Isa::Amx => Some(Kernel::Amx),
            Isa::Avx512Bf16 if dot_outruns_fma() => Some(Kernel::Dot),
            Isa::Avx512Bf16 | Isa::Avx512 => Some(Kernel::Widened),
            Isa::Avx2 | Isa::Portable => None,
        }
    }

    /// The kernel of [`Isa::detected`].
    pub fn detected() -> Option<Kernel> {
        Kernel::for_level(Isa::detected())
    }

    /// Every kernel this CPU can run, whichever the level would choose (tests run each).
    pub fn available() -> Vec<Kernel> {
        [
            (Kernel::Amx, Isa::Amx),
            (Kernel::Dot, Isa::Avx512Bf16),
            (Kernel::Widened, Isa::Avx512),
        ]
        .into_iter()
        .filter(|(_, isa)| isa.is_available())
        .map(|(kernel, _)| kernel)
        .collect()
    }

    /// Whether the kernel rounds activations to bf16 (Amx, Dot) or multiplies them as f32.
    pub fn rounds_activations(self) -> bool {
        self != Kernel::Widened
    }

    /// How benches and engine names call it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Dot => "avx512-bf16",
            Kernel::Widened => "avx512-widened",
        }
    }
}

/// Whether `vdpbf16ps` does more multiply-adds per cycle than f32 FMAs: on AMD's cores (Zen 4
/// runs both at one 512-bit instruction per cycle, the dot product doing twice the work), not on
/// Intel's (two FMA units against half the rate for `vdpbf16ps`). Decided from the vendor, not
/// timed, so that a process's numerics never depend on a noisy measurement; asked once (every
/// bf16 GEMM call chooses its kernel, and CPUID traps to the hypervisor in a VM).
fn dot_outruns_fma() -> bool {
    static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let id = std::arch::x86_64::__cpuid(0);
            // "AuthenticAMD" in EBX, EDX, ECX.
            (id.ebx, id.edx, id.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this process runs bf16 linear layers: the level of [`Isa::detected`] is AVX-512 or
/// above.
pub fn is_supported() -> bool {
    Kernel::detected().is_some()
}

/// `Ok` when [`is_supported`], else the error message to show.
pub fn check_supported() -> std::result::Result<(), String> {
    if is_supported() {
        return Ok(());
    }
    if Isa::Avx512.is_available() {
        return Err(format!(
            "bf16 on the CPU needs AVX-512, which EMBER_CPU_ISA={} rules out",
            Isa::detected().name()
        ));
    }
    Err("bf16 on the CPU needs AVX-512 (Intel Skylake-SP, AMD Zen 4 or later); this CPU does not have it. Use f32.".into())
}

/// Pairs of k stored per panel: whole AMX k steps of 16 pairs.
fn stored_pairs(k: usize) -> usize {
    k.div_ceil(32) * 16
}

/// Rounds to the nearest bf16, ties to even (as PyTorch's `.to(torch.bfloat16)`).
#[inline(always)]
fn to_bits(value: f32) -> u16 {
    bf16::from_f32(value).to_bits()
}

/// `W [n, k]` as bf16, packed in k-pair panels of `NR` columns (see the module header).
#[derive(Debug, Clone, Default)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    offset: usize,
    data: Vec<u16>,
}

impl PackedBf16 {
    /// Packs `W[r][p] = src[r * k + p]` (row-major `[n, k]`), rounding each value to bf16.
    ///
    /// # Panics
    /// If `src` holds fewer than `n * k` values.
    pub fn from_rows(src: &[f32], n: usize, k: usize) -> Self {
        assert!(src.len() >= n * k, "PackedBf16: source too short");
        let pairs = stored_pairs(k);
        let len = n.div_ceil(NR) * NR * pairs * 2;
        // 32 spare values: room to start the panels on a 64-byte boundary.
        let mut data = vec![0u16; len + 32];
        let offset = (32 - (data.as_ptr() as usize / 2) % 32) % 32;
        if pairs > 0 {
            for (panel_index, panel) in data[offset..offset + len]
                .chunks_exact_mut(pairs * NR * 2)
                .enumerate()
            {
                for j in 0..NR.min(n - panel_index * NR) {
                    let row = &src[(panel_index * NR + j) * k..][..k];
                    for (p, &value) in row.iter().enumerate() {
                        panel[((p / 2) * NR + j) * 2 + p % 2] = to_bits(value);
                    }
                }
            }
        }
        Self { n, k, offset, data }
    }

    /// Output features (`n`, the rows of W).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (`k`, the columns of W).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Panels of `NR` output columns, the last one padded.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The values of pairs `q0..q0 + count` of panel `index`.
    pub(super) fn panel_pairs(&self, index: usize, q0: usize, count: usize) -> &[u16] {
        let pairs = stored_pairs(self.k);
        &self.data[self.offset + index * pairs * NR * 2 + q0 * NR * 2..][..count * NR * 2]
    }
}

thread_local! {
    /// Each thread's A block as bf16 pairs (the dot kernel).
    static A_PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Packs rows `0..m` (m <= MC), columns `k0..k0 + kc` of A (k0 even) as bf16 pairs.
fn pack_a(a: &[f32], lda: usize, m: usize, k0: usize, kc: usize, pack: &mut Vec<u32>) {
    let pairs = kc.div_ceil(2);
    pack.clear();
    pack.resize(m.div_ceil(MR) * pairs * MR, 0);
    if pairs == 0 {
        return;
    }
    let mut row_pairs = [0u32; KC / 2];
    let mut tile_pairs = [[0u32; KC / 2]; MR];
    for (t, micro_panel) in pack.chunks_exact_mut(pairs * MR).enumerate() {
        let rows = MR.min(m - t * MR);
        if rows == MR {
            // Convert the twelve rows, then write the micro-panel contiguously (strided stores
            // into it cost more than the conversion).
            for (i, out) in tile_pairs.iter_mut().enumerate() {
                bf16_pairs(&a[(t * MR + i) * lda + k0..][..kc], &mut out[..pairs]);
            }
            for (q, dst) in micro_panel.chunks_exact_mut(MR).enumerate() {
                for (d, row) in dst.iter_mut().zip(&tile_pairs) {
                    *d = row[q];
                }
            }
            continue;
        }
        for i in 0..rows {
            let row = &a[(t * MR + i) * lda + k0..][..kc];
            bf16_pairs(row, &mut row_pairs[..pairs]);
            for (q, &pair) in row_pairs[..pairs].iter().enumerate() {
                micro_panel[q * MR + i] = pair;
            }
        }
    }
}

super::math::multiversion! {
    /// `out[q]` = bf16(`row[2q]`) in the low half, bf16(`row[2q + 1]`) (or 0 past the end) in the
    /// high half; rounding to nearest even, as [`to_bits`] for finite values.
    fn bf16_pairs / bf16_pairs_with(row: &[f32], out: &mut [u32]) => bf16_pairs_inline
}

/// Branch-free so that it vectorizes: adding `0x7fff` plus the lowest kept bit rounds the upper
/// 16 bits to nearest, ties to even (inputs are finite activations; NaN is not special-cased).
#[inline(always)]
fn bf16_pairs_inline(row: &[f32], out: &mut [u32]) {
    #[inline(always)]
    fn rounded(x: f32) -> u32 {
        let bits = x.to_bits();
        bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000
    }
    let mut chunks = row.chunks_exact(2);
    for (o, pair) in out.iter_mut().zip(chunks.by_ref()) {
        *o = (rounded(pair[0]) >> 16) | rounded(pair[1]);
    }
    if let [last] = chunks.remainder() {
        out[row.len() / 2] = rounded(*last) >> 16;
    }
}

/// `C = A · Wᵀ (+ bias)` restricted to the panels `panels` of `w`, on one thread; column 0 of `c`
/// is column `panels.start * NR` of the full product (as `matmul::gemm_panels`), with the kernel
/// of [`Kernel::detected`].
///
/// # Panics
/// If that level has no bf16 kernel, or a slice is too short for its stride and extent.
#[allow(clippy::too_many_arguments)] // a BLAS-style signature: strides and extents are the point
pub fn gemm_panels(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    let kernel = Kernel::detected().expect("bf16 GEMM below AVX-512");
    gemm_panels_with(kernel, a, lda, m, w, panels, bias, c, ldc);
}

/// [`gemm_panels`] with `kernel` (tests run each one the CPU has).
///
/// # Panics
/// If the CPU cannot run `kernel`, or a slice is too short.
#[allow(clippy::too_many_arguments)]
pub fn gemm_panels_with(
    kernel: Kernel,
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => super::amx::gemm_panels(a, lda, m, w, panels, bias, c, ldc),
        Kernel::Dot => gemm_panels_avx512bf16(a, lda, m, w, panels, bias, c, ldc),
        Kernel::Widened => gemm_panels_widened(a, lda, m, w, panels, bias, c, ldc),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Amx => panic!("no AMX off x86-64"),
    }
}

/// The widened kernel, in the f32 GEMM's loop (`matmul::drive`) with the bf16 weight panels. A
/// is packed: reading its rows in place, as the f32 kernel does, made LLVM hoist the 24
/// broadcasts of a k pair and spill accumulators (85 against 140 GFLOP/s).
#[allow(clippy::too_many_arguments)]
fn gemm_panels_widened(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        Isa::Avx512.is_available(),
        "bf16 widened GEMM on a CPU without AVX-512"
    );
    let operands = Operands {
        a,
        lda,
        m,
        n: w.n,
        k: w.k,
        panels,
        bias,
    };
    let block = |panel, k0: usize, kc: usize| w.panel_pairs(panel, k0 / 2, kc.div_ceil(2));
    drive(operands, c, ldc, false, block, |tile| {
        let TileA::Packed(micro_panel) = tile.a else {
            unreachable!("drive packs every tile when not asked to read in place")
        };
        let b = block(tile.panel, tile.k0, tile.kc);
        assert!(micro_panel.len() >= tile.kc * MR && tile.ldc >= NR);
        assert!(tile.c.len() >= (MR - 1) * tile.ldc + NR);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (asserted on entry); `micro_panel` holds `kc * MR` floats
        // and `b` `ceil(kc / 2) * NR * 2` values; `c` holds `MR` rows of `NR` floats at stride
        // `ldc` (all checked just above).
        unsafe {
            widened(
                tile.kc,
                micro_panel.as_ptr(),
                b.as_ptr(),
                tile.c.as_mut_ptr(),
                tile.ldc,
                tile.init,
                tile.prefetch,
            )
        };
    });
}

/// The 12 x 32 tile with 24 zmm accumulators, on a bf16 weight panel: per pair of k, two 64-byte
/// loads of W (16 columns x 2 bf16 each) widened into four f32 vectors (the even k by a 16-bit
/// shift, the odd k by clearing the low half), then 48 FMAs with the f32 activations of both k.
/// The sums run in the order of k for every element, as the f32 kernel's. One line of
/// `prefetch` (a slice of the next W block) is asked for in L2 per pair, as the f32 kernel does.
///
/// # Safety
/// AVX-512F present; `a` readable for `kc * MR` floats, `b` for `ceil(kc / 2) * NR * 2` u16;
/// `c` read/write for `NR` floats at each `i * ldc`, i < MR.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widened(
    kc: usize,
    a: *const f32,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
    init: Option<&[f32; NR]>,
    prefetch: &[u16],
) {
    use super::microkernel::x86::{fma_column, load_tile, store_tile};
    use std::arch::x86_64::*;
    // SAFETY: C's rows and `init` as the caller vouched for.
    let mut acc = unsafe { load_tile(c, ldc, init) };
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    for q in 0..kc.div_ceil(2) {
        prefetch_line(prefetch, q);
        // SAFETY: q < ceil(kc / 2): `b[q * NR * 2..][..64]` and A's columns 2q and (below kc)
        // 2q + 1, at `a[2q * MR..]`, lie inside the extents the caller vouched for.
        unsafe {
            let raw = [
                _mm512_loadu_si512(b.add(q * NR * 2).cast()),
                _mm512_loadu_si512(b.add(q * NR * 2 + 32).cast()),
            ];
            let a_q = a.add(2 * q * MR);
            let even = raw.map(|r| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(r)));
            fma_column(&mut acc, |i| a_q.add(i), even);
            // An odd kc ends on a pair whose second half is W's zero padding, past A's end.
            if 2 * q + 1 < kc {
                let odd = raw.map(|r| _mm512_castsi512_ps(_mm512_and_si512(r, high)));
                fma_column(&mut acc, |i| a_q.add(MR + i), odd);
            }
        }
    }
    // SAFETY: the same rows of C as loaded.
    unsafe { store_tile(&acc, c, ldc) };
}

#[allow(clippy::too_many_arguments)]
fn gemm_panels_avx512bf16(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedBf16,
    panels: std::ops::Range<usize>,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        Isa::Avx512Bf16.is_available(),
        "bf16 GEMM on a CPU without AVX512-BF16"
    );
    let (n, k) = (w.n, w.k);
    if m == 0 || panels.is_empty() {
        return;
    }
    let first_column = check_operands("gemm_bf16", (a, lda), m, n, k, &panels, bias, (c, ldc));
    A_PACK.with_borrow_mut(|pack| {
        for m0 in (0..m).step_by(MC) {
            let rows_in_block = MC.min(m - m0);
            for kb in 0..k.div_ceil(KC).max(1) {
                let (k0, kc) = (kb * KC, KC.min(k - kb * KC));
                let pairs = kc.div_ceil(2);
                pack_a(&a[m0 * lda..], lda, rows_in_block, k0, kc, pack);
                for panel_index in panels.clone() {
                    let column = panel_index * NR;
                    let width = NR.min(n - column);
                    let b = w.panel_pairs(panel_index, k0 / 2, pairs);
                    for t in 0..rows_in_block.div_ceil(MR) {
                        let micro_panel = &pack[t * pairs * MR..][..pairs * MR];
                        let row = m0 + t * MR;
                        let rows = MR.min(m - row);
                        let c_tile = &mut c[row * ldc + column - first_column..];
                        let mut tile = Tile([0.0; MR * NR]);
                        for (i, tile_row) in tile.0.chunks_exact_mut(NR).take(rows).enumerate() {
                            let init = if kb == 0 {
                                bias.map(|bias| &bias[column..column + width])
                            } else {
                                Some(&c_tile[i * ldc..i * ldc + width])
                            };
                            if let Some(init) = init {
                                tile_row[..width].copy_from_slice(init);
                            }
                        }
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: AVX512-BF16 is present (asserted on entry); `micro_panel` holds
                        // `pairs * MR` values and `b` `pairs * NR * 2`, as the kernel reads.
                        unsafe {
                            avx512bf16(pairs, micro_panel.as_ptr(), b.as_ptr(), tile.0.as_mut_ptr())
                        };
                        store_tile(&tile, rows, width, c_tile, ldc);
                    }
                }
            }
        }
    });
}

/// The 12 x 32 tile with 24 zmm accumulators on a packed A micro-panel, added to the tile's
/// contents: [`dot_pairs`] between loading and storing the tile.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `a` readable for `pairs * MR` u32, `b` for
/// `pairs * NR * 2` u16, `tile` read/write for `MR * NR` f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512bf16(pairs: usize, a: *const u32, b: *const u16, tile: *mut f32) {
    use super::microkernel::x86::{load_tile, store_tile};
    // SAFETY: the tile holds MR rows of NR floats; A[i][q] at `a + q * MR + i` lies in the
    // `pairs * MR` values and B in the `pairs * NR * 2` (as u32 pairs: `pairs * NR`) vouched for.
    unsafe {
        let mut acc = load_tile(tile, NR, None);
        dot_pairs(&mut acc, pairs, |q, i| a.add(q * MR + i), b.cast());
        store_tile(&acc, tile, NR);
    }
}

/// Adds `A · B` over `pairs` pairs of k to the 12 x 32 tile `acc`: per pair, two 64-byte loads
/// of B (`b + q * NR`: 32 columns of one pair each), twelve 32-bit broadcasts of A's pair
/// (`a_at(q, i)`, packed or in place) and 24 `vdpbf16ps`. The bf16 GEMM's kernel and
/// attention's (`attention_bf16`) both run it.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `a_at(q, i)` readable for q < pairs, i < MR; `b` for
/// `pairs * NR` u32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
pub(super) unsafe fn dot_pairs(
    acc: &mut [[std::arch::x86_64::__m512; 2]; MR],
    pairs: usize,
    a_at: impl Fn(usize, usize) -> *const u32,
    b: *const u32,
) {
    use std::arch::x86_64::*;
    for q in 0..pairs {
        // SAFETY: q < pairs: B's 32 values of pair q and A's pair q of each row lie in the
        // extents the caller vouched for. The transmutes turn 512 bits of integers into 512 bits
        // of bf16 pairs, plain vectors of the same size for which every bit pattern is a value.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let a_iq: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_at(q, i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], a_iq, b0);
                row[1] = _mm512_dpbf16_ps(row[1], a_iq, b1);
            }
        }
    }
}
