//! The GEMM against the machine's roofline, in one run: first the f32 FMA peak (a loop of independent
//! multiply-adds (12 accumulators, enough to cover the FMA latency of 4 cycles times 2 pipes)
//! with no memory traffic, for AVX-512 (16 lanes) and AVX2 (8 lanes), on 1 thread and on every
//! core (one OS thread per core, all started together).
//!
//! Then the packed GEMM on one thread at BERT shapes, for every kernel level the CPU has, as
//! GFLOP/s and as a percentage of the single-thread peak.
//!
//! The same for the bf16 and int8 GEMMs against the peak of their own instruction (`vdpbf16ps`,
//! `tdpbf16ps`, `vpdpbusd` or `tdpbusd`; the FMA for bf16 weights widened to f32). The int8 GEMM twice:
//! `int8-codes` on activations quantized beforehand (its integer work alone), `int8-vnni` from f32
//! activations, their quantization in the time.
//!
//! `cargo bench --bench roofline` (MiniLM widths; `EMBER_BENCH_SHAPES=bge-base` for bge-base
//! widths) prints GFLOP/s (2 FLOPs per lane per FMA; for int8, 2
//! operations per byte product). Every figure is the
//! best of several short runs: on a shared machine the best run is the one least disturbed by
//! other processes, which is what a kernel's speed means (criterion's mean mixes in the noise).
//! Zen 4 runs a 512-bit FMA as two 256-bit halves, so both ISAs give the same peak there; a Xeon
//! with two 512-bit FMA units gives twice the AVX2 figure with AVX-512.

use std::time::Instant;

// The tests' shared helpers: the seeded random inputs.
#[path = "../tests/common/mod.rs"]
mod common;

#[cfg(target_arch = "x86_64")]
mod kernels {
    use std::arch::x86_64::*;

    /// `iterations` rounds of 12 independent 16-lane FMAs; returns a value so nothing is elided.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(iterations: u64) -> f32 {
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut total = _mm512_setzero_ps();
        for r in acc {
            total = _mm512_add_ps(total, r);
        }
        _mm512_reduce_add_ps(total)
    }

    /// The same with `vdpbf16ps` (AVX512-BF16): 16 lanes x 2 products per instruction.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn avx512bf16(iterations: u64) -> f32 {
        // SAFETY: 512 bits of integers as 512 bits of bf16 pairs: plain vectors of one size,
        // every bit pattern a value of either.
        let (a, b): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3380_3380)),
            )
        };
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, a, b);
            }
        }
        let mut total = _mm512_setzero_ps();
        for r in acc {
            total = _mm512_add_ps(total, r);
        }
        _mm512_reduce_add_ps(total)
    }

    /// The same with `vpdpbusd` (AVX512-VNNI): 16 lanes x 4 byte products per instruction.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn avx512vnni(iterations: u64) -> f32 {
        let a = _mm512_set1_epi32(0x0101_0101);
        let b = _mm512_set1_epi32(0x0102_0301);
        let mut acc = [_mm512_setzero_si512(); 12];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_dpbusd_epi32(*r, a, b);
            }
        }
        let mut total = _mm512_setzero_si512();
        for r in acc {
            total = _mm512_add_epi32(total, r);
        }
        _mm512_reduce_add_epi32(total) as f32
    }

    /// Defines `$name(iterations)`: the AMX tile multiply `$op` on four independent accumulator
    /// tiles, 12 per iteration as the loops above, returning one value of the result (a float
    /// made of its bits). The tile configuration is loaded and released inside.
    macro_rules! amx_peak {
        ($(#[$doc:meta])* $name:ident, $op:literal) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// AMX present and permitted by the OS, with the instruction's extension.
            pub unsafe fn $name(iterations: u64) -> f32 {
                use std::arch::asm;
                #[repr(C, align(64))]
                struct Config([u8; 64]);
                let mut config = Config([0; 64]);
                config.0[0] = 1;
                for t in 0..8 {
                    config.0[16 + 2 * t] = 64;
                    config.0[48 + t] = 16;
                }
                #[repr(C, align(64))]
                struct Tile([u16; 512]);
                let ones = Tile([0x3f80; 512]); // bf16 1.0 (bytes 0x80, 0x3f for int8)
                let mut out = Tile([0; 512]);
                // SAFETY: AMX is usable (the caller's contract); `config` is the 64-byte,
                // 64-aligned operand of ldtilecfg (palette 1, eight tiles of 16 rows x 64 bytes),
                // and `ones` a whole 1 KiB tile, 16 rows of 64 bytes, for both loads.
                unsafe {
                    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr());
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "tileloadd tmm4, [{p} + {s} * 1]",
                        "tileloadd tmm5, [{p} + {s} * 1]",
                        p = in(reg) ones.0.as_ptr(),
                        s = in(reg) 64usize,
                    );
                }
                for _ in 0..iterations {
                    // SAFETY: the configuration is loaded; tile multiplies touch no memory.
                    unsafe {
                        asm!(
                            concat!($op, " tmm0, tmm4, tmm5"),
                            concat!($op, " tmm1, tmm4, tmm5"),
                            concat!($op, " tmm2, tmm4, tmm5"),
                            concat!($op, " tmm3, tmm4, tmm5"),
                            concat!($op, " tmm0, tmm4, tmm5"),
                            concat!($op, " tmm1, tmm4, tmm5"),
                            concat!($op, " tmm2, tmm4, tmm5"),
                            concat!($op, " tmm3, tmm4, tmm5"),
                            concat!($op, " tmm0, tmm4, tmm5"),
                            concat!($op, " tmm1, tmm4, tmm5"),
                            concat!($op, " tmm2, tmm4, tmm5"),
                            concat!($op, " tmm3, tmm4, tmm5"),
                            options(nostack, nomem)
                        );
                    }
                }
                // SAFETY: `out` is a whole 1 KiB tile for the store; then the tiles are
                // released.
                unsafe {
                    asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) out.0.as_mut_ptr(), s = in(reg) 64usize);
                    asm!("tilerelease");
                }
                f32::from_bits(u32::from(out.0[0]) | (u32::from(out.0[1]) << 16))
            }
        };
    }

    amx_peak!(
        /// `tdpbf16ps`: 16 x 16 x 32 bf16 multiply-adds per instruction.
        amx_bf16,
        "tdpbf16ps"
    );
    amx_peak!(
        /// `tdpbusd`: 16 x 16 x 64 byte products (unsigned by signed) per instruction.
        amx_int8,
        "tdpbusd"
    );

    /// The same with 8-lane AVX2 FMAs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(iterations: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut total = _mm256_setzero_ps();
        for r in acc {
            total = _mm256_add_ps(total, r);
        }
        // SAFETY: `out` is 8 floats, the 32 bytes the store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), total) };
        out.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
fn measure(name: &str, lanes: u64, threads: usize, run: fn(u64) -> f32) -> f64 {
    let iterations = 200_000_000 / lanes;
    run(iterations / 10); // warm-up (clock ramp)
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| std::thread::spawn(move || run(iterations)))
            .collect();
        let sink: f32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let seconds = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        let flops = (threads as u64 * iterations * 12 * lanes * 2) as f64;
        best = best.max(flops / seconds / 1e9);
    }
    println!("fma_peak {name:<8} {threads} thread(s): {best:7.1} GFLOP/s (best of 5)");
    best
}

/// The best of `runs` timings of `multiply` (one m x n x k product), as G operations per second
/// (2 per multiply-add), and a line saying what share of `peak` (its instruction's one-thread
/// rate) that is.
fn best_rate(
    name: &str,
    peak: f64,
    (m, n, k): (usize, usize, usize),
    runs: usize,
    mut multiply: impl FnMut(),
) {
    let mut best = 0.0f64;
    for _ in 0..runs {
        let start = Instant::now();
        multiply();
        best = best.max(2.0 * (m * n * k) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    println!(
        "gemm 1 thread {name:<11} m={m:<5} n={n:<5} k={k:<5} {best:7.1} GOP/s = {:5.1} % of its instruction's 1-thread peak",
        100.0 * best / peak
    );
}

/// The one-thread bf16 GEMM with `kernel` against `peak`, the rate of its own instruction.
fn gemm_bf16(
    kernel: ember::backend::cpu::bf16::Kernel,
    peak: f64,
    shape: (usize, usize, usize),
    runs: usize,
) {
    use common::testutil::SplitMix64;
    use ember::backend::cpu::bf16;
    let (m, n, k) = shape;
    let mut rng = SplitMix64::new(5);
    let a = rng.values(m * k, 1.0);
    let w = bf16::PackedBf16::from_rows(&rng.values(n * k, 0.05), n, k);
    let bias = rng.values(n, 0.1);
    let mut out = vec![0.0; m * n];
    best_rate(kernel.name(), peak, shape, runs, || {
        bf16::gemm_panels_with(kernel, &a, k, m, &w, 0..w.panels(), Some(&bias), &mut out, n)
    });
    std::hint::black_box(&out);
}

/// The one-thread int8 GEMM against `peak`, the rate of its instruction (`vpdpbusd`, or
/// `tdpbusd` where it runs on AMX): first on A quantized beforehand (`int8-codes`, `amx-codes`:
/// the GEMM's integer work alone, as for an A quantized where it is produced), then with A's
/// quantization in the time (`int8-vnni`, `amx-int8`, from f32 rows).
fn gemm_int8(peak: f64, shape: (usize, usize, usize), runs: usize) {
    use common::testutil::SplitMix64;
    use ember::backend::cpu::int8;
    let (m, n, k) = shape;
    let mut rng = SplitMix64::new(6);
    let a = rng.values(m * k, 1.0);
    let w = int8::PackedInt8::from_rows(&rng.values(n * k, 0.05), n, k);
    let bias = rng.values(n, 0.1);
    let mut out = vec![0.0; m * n];
    let mut codes = int8::QuantizedRows::new();
    codes.quantize(&a, k, m, k);
    let on_amx = int8::kernel_name() == "amx-int8";
    let (codes_name, name) = if on_amx {
        ("amx-codes", "amx-int8")
    } else {
        ("int8-codes", "int8-vnni")
    };
    best_rate(codes_name, peak, shape, runs, || {
        int8::gemm_codes_panels(&codes, &w, 0..w.panels(), Some(&bias), &mut out, n)
    });
    best_rate(name, peak, shape, runs, || {
        int8::gemm_panels(&a, k, m, &w, 0..w.panels(), Some(&bias), &mut out, n)
    });
    std::hint::black_box(&out);
}

/// Best-of-`runs` GFLOP/s of the one-thread GEMM at (m, n, k) for every kernel level.
fn gemm(peak: f64, m: usize, n: usize, k: usize, runs: usize) {
    use common::testutil::SplitMix64;
    use ember::backend::cpu::matmul;
    let mut rng = SplitMix64::new(4);
    let a = rng.values(m * k, 1.0);
    let w = matmul::PackedMatrix::from_rows(&rng.values(n * k, 0.05), n, k, k);
    let bias = rng.values(n, 0.1);
    let mut out = vec![0.0; m * n];
    for isa in matmul::Isa::available_f32() {
        let mut best = 0.0f64;
        for _ in 0..runs {
            let start = Instant::now();
            matmul::gemm_with(isa, &a, k, m, &w, Some(&bias), &mut out, n);
            let seconds = start.elapsed().as_secs_f64();
            best = best.max(2.0 * (m * n * k) as f64 / seconds / 1e9);
        }
        std::hint::black_box(&out);
        println!(
            "gemm 1 thread {:<8} m={m:<5} n={n:<5} k={k:<5} {best:7.1} GFLOP/s = {:5.1} % of the 1-thread peak",
            isa.name(),
            100.0 * best / peak
        );
    }
}

/// `"MxNxK"` as `(m, n, k)`.
fn parse_shape(text: &str) -> (usize, usize, usize) {
    let sizes: Vec<usize> = text
        .split('x')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("EMBER_BENCH_SHAPES: {text:?} is not MxNxK"))
        })
        .collect();
    match sizes[..] {
        [m, n, k] => (m, n, k),
        _ => panic!("EMBER_BENCH_SHAPES: {text:?} is not MxNxK"),
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut thread_counts = vec![1];
        if cores > 1 {
            thread_counts.push(cores);
        }
        let mut one_thread_peak = 0.0f64;
        for &threads in &thread_counts {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                let peak = measure("avx512", 16, threads, |n| unsafe { kernels::avx512(n) });
                if threads == 1 {
                    one_thread_peak = one_thread_peak.max(peak);
                }
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA (checked just above).
                let peak = measure("avx2", 8, threads, |n| unsafe { kernels::avx2(n) });
                if threads == 1 {
                    one_thread_peak = one_thread_peak.max(peak);
                }
            }
        }
        let runs = std::env::var("EMBER_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(7);
        // MiniLM's widths by default; `EMBER_BENCH_SHAPES=bge-base` takes bge-base's (hidden 768,
        // FFN 3,072), whose FFN weights outgrow a 2 MiB L2 in int8 where MiniLM's do not.
        // `EMBER_BENCH_SHAPES=MxNxK,...` names shapes of its own (to profile one of them).
        // m is the tokens of the batches the engine runs on the CPU (`default_batch_tokens`:
        // 1,365 for MiniLM, 682 for bge-base). The engine never runs 4,096 rows on the CPU; there
        // the 6-25 MB inputs and outputs leave the caches between row blocks, and on the Xeon
        // (model 207) the int8 GEMM at 4096 x 1536 x 384 ran 8-43 % below 1024 x 1536 x 384 in
        // every pair measured (three in one run each, two in adjacent runs); f32 went from 10 %
        // faster to 20 % slower, within the noise.
        let bert = |hidden: usize, ffn: usize| {
            let m = ember::encoder::cpu_batch_tokens(hidden);
            vec![
                (m, ffn, hidden),
                (m, hidden, ffn),
                (m, 3 * hidden, hidden),
                (m, hidden, hidden),
            ]
        };
        let shapes: Vec<(usize, usize, usize)> = match std::env::var("EMBER_BENCH_SHAPES").as_deref() {
            Ok("bge-base") => bert(768, 3072),
            Ok(list) if list.contains('x') => list.split(',').map(parse_shape).collect(),
            _ => bert(384, 1536),
        };
        // `EMBER_BENCH_KINDS=f32,int8` runs only those GEMMs (default: all the CPU has).
        let kinds = std::env::var("EMBER_BENCH_KINDS").unwrap_or_else(|_| "f32,bf16,int8,amx".into());
        let wanted = |kind: &str| kinds.split(',').any(|k| k.trim() == kind);
        for &(m, n, k) in shapes.iter().filter(|_| wanted("f32")) {
            gemm(one_thread_peak, m, n, k, runs);
        }
        use ember::backend::cpu::bf16::Kernel;
        use ember::backend::cpu::matmul::Isa;
        if Isa::Avx512.is_available() && wanted("bf16") {
            // bf16 weights widened to f32: the FMA's peak is its instruction's.
            for &shape in &shapes {
                gemm_bf16(Kernel::Widened, one_thread_peak, shape, runs);
            }
        }
        if Isa::Avx512Bf16.is_available() && wanted("bf16") {
            // SAFETY: the CPU has AVX512-BF16 (checked just above).
            let peak = measure("bf16dp", 32, 1, |n| unsafe { kernels::avx512bf16(n) });
            for &shape in &shapes {
                gemm_bf16(Kernel::Dot, peak, shape, runs);
            }
        }
        if ember::backend::cpu::int8::is_supported() && wanted("int8") {
            let peak = if ember::backend::cpu::int8::kernel_name() == "amx-int8" {
                // SAFETY: the int8 GEMM runs on AMX-INT8 only where the CPU has it and the OS
                // permits the tiles.
                measure("tdpbusd", 16 * 16 * 64, 1, |n| unsafe { kernels::amx_int8(n) })
            } else {
                // SAFETY: the CPU has AVX512-VNNI (checked just above).
                measure("vnni", 64, 1, |n| unsafe { kernels::avx512vnni(n) })
            };
            for &shape in &shapes {
                gemm_int8(peak, shape, runs);
            }
        }
        if Isa::Amx.is_available() && wanted("amx") {
            // SAFETY: AMX is present and permitted (checked just above).
            let peak = measure("tdpbf16", 16 * 16 * 32, 1, |n| unsafe { kernels::amx_bf16(n) });
            for &shape in &shapes {
                gemm_bf16(Kernel::Amx, peak, shape, runs);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("fma_peak: only x86-64 kernels are written");
}
