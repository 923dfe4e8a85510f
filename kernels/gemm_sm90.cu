// The linear layer on Hopper (sm_90a): out[M, N] = act(x[M, K] · w[N, K]ᵀ + bias[N]) (+ residual[M, N]),
// the same operation, layouts and ACT_* codes as gemm.cu (x, w, residual, out f16 row-major; w is
// nn.Linear's [out, in]; bias f32; the residual, may be null, is added after the activation), f16
// operands, f32 accumulation. gemm.cu's mma.sync kernel reaches about 60 % of an H100's tensor-core
// peak; this one uses what Hopper adds, so that the tensor cores never wait on the data:
//
//  * wgmma.mma_async: one instruction per warpgroup (4 warps) multiplies a 64 x BN x 16 slice with
//    BOTH operands read straight from shared memory (no ldmatrix, no register staging), f32
//    accumulators in registers (BN / 2 per thread).
//  * TMA (cp.async.bulk.tensor.2d): one thread copies a whole [rows x 64] K-slice of x or w into
//    shared memory, zero-filling rows past M, and completes it on an mbarrier. The tensor maps
//    are made on the host (src/backend/cuda/gemm.rs, cuTensorMapEncodeTiled) and arrive as
//    `const __grid_constant__` parameters.
//  * 128-byte swizzle: a K-slice of 64 halves is one 128-byte row; TMA stores 16-byte chunk c of
//    row r at chunk c ^ (r % 8) inside each 1024-byte block of 8 rows, which is exactly the layout
//    wgmma's "128B swizzle" mode reads, and which keeps the 8 rows of a core matrix in 8 distinct
//    bank groups (no conflicts).
//  * A STAGES-deep ring of shared-memory stages with two mbarriers per stage: full[s] (the
//    producer arms it with the byte count, TMA completes it) and empty[s] (each consumer warp
//    arrives when its wgmmas that read stage s have finished).
//  * Warp specialization: warpgroup 0 is the producer (one thread issues every TMA, the rest idle)
//    and gives registers back with setmaxnreg.dec; warpgroups 1..CONSUMERS are the consumers
//    (64 rows of the tile each) and take them with setmaxnreg.inc (two-consumer shapes). The
//    roles are one if/else.
//    This needs the register cap at entry that `__launch_bounds__(threads, 1)` gives.
//  * Persistent tiles: the grid is (at most) one CTA per SM; CTA b takes tiles b, b + grid, ...
//    Tiles are numbered with N fastest: the CTAs that run at the same time cover a few consecutive
//    M-blocks and every N-block of them, so each x panel is read from DRAM once and shared through
//    L2, and the weight (at most 4096 x 1024 halves = 8 MiB for the shapes below; L2 is 50 MiB) stays
//    in L2 for the whole GEMM. BERT's GEMMs are skinny (M = tokens up to 64k, N <= 4096), so the
//    weight, not x, is the panel worth keeping.
//  * Fused epilogue: bias, activation (f32), residual, f16 rounding straight from the accumulator
//    registers, rows >= M and columns >= N skipped. The producer is already loading the next
//    tile's stages meanwhile.
//
// Tile shapes (BM x BN), one kernel each; the host picks per (M, N, K) from a small cost model
// (tiles per SM times tile cost, src/backend/cuda/gemm.rs):
//   gemm_sm90_128x256  2 consumer warpgroups, m64n256k16, 4 stages (48 KiB each)
//   gemm_sm90_128x192  2 consumer warpgroups, m64n192k16, 5 stages (40 KiB each): N = 384, 768,
//                      1152, 1536, 2304, 3072 split evenly
//   gemm_sm90_128x128  2 consumer warpgroups, m64n128k16, 6 stages (32 KiB each)
//   gemm_sm90_64x128   1 consumer warpgroup,  m64n128k16, 8 stages (24 KiB each): small M
// The "cooperative" shapes above split a tile's rows between the consumers, which then run their
// epilogue at the same time, tensor cores idle. The ping-pong shapes give each consumer whole
// 64-row tiles of its own, alternately (tile l of a CTA goes to consumer l % 2): the K-slices
// arrive in tile order through the one ring, so one consumer's epilogue overlaps the other's
// main loop. That matters most where K is short (K = 384: 6 slices per tile).
//   gemm_sm90_pp_64x256  2 consumers, m64n256k16, 5 stages (40 KiB each)
//   gemm_sm90_pp_64x192  2 consumers, m64n192k16, 6 stages (32 KiB each)
// Requirements (checked on the host, anything else goes to gemm.cu): K % 64 == 0 (no K tail),
// N % 64 == 0, x / w 16-byte aligned, compute capability 9.x (sm_90a PTX loads nowhere else).
//
// Shared memory of one stage: A = [BM rows][64 halves], B = [BN rows][64 halves], each row 128
// bytes, each buffer 1024-byte aligned (the swizzle pattern repeats every 1024 bytes and is a
// function of the absolute address bits [4, 10), so every tile must start on a 1024 boundary).
#include "common.cuh"

// A tensor map as the driver encodes it: 128 opaque bytes, 64-byte aligned (CUtensorMap of
// cuda.h, spelled here so that the file needs no driver header).
struct alignas(64) TensorMap {
    unsigned long long opaque[16];
};

#define BK 64                 // halves per K-slice: one 128-byte swizzled row
#define ROW_BYTES 128         // BK * sizeof(half)
#define SWIZZLE_ATOM 1024     // 8 rows x 128 bytes: the period of the 128-byte swizzle

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// ---- mbarrier (shared::cta, 64-bit) -------------------------------------------------------------

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Arms `bar` for `bytes` bytes of TMA traffic and counts as this thread's arrival.
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase 0, and the
// phase "before" it (parity 1) counts as completed: the producer's first wait on each empty[s]
// with parity 1 returns at once, which is what lets it fill the ring before any consumer ran.
// A watchdog: no legitimate wait here lasts more than microseconds, so a wait past ~2 s (4e9 SM
// cycles) is a pipeline bug (a wrong parity, a byte count TMA never reaches); trapping turns the
// hang into a launch failure that the backend reports against this kernel.
#define MBAR_TIMEOUT_CYCLES 4000000000ll
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    long long start = 0;
    for (;;) {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
        if (done) return;
        const long long now = clock64();
        if (start == 0) start = now;
        else if (now - start > MBAR_TIMEOUT_CYCLES) __trap();
    }
}

// ---- TMA ------------------------------------------------------------------------------------------

// Copies the box at (k0, row0) (innermost coordinate first) of `map` into shared memory at `dst`;
// completion is counted in bytes on `bar`. Rows past the tensor's end arrive as zeros and still
// count the full box in bytes.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TensorMap* map, int k0, int row0, unsigned bar) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
                 "l"(reinterpret_cast<unsigned long long>(map)), "r"(k0), "r"(row0), "r"(bar)
                 : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const TensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}

// ---- wgmma ----------------------------------------------------------------------------------------

// The shared-memory matrix descriptor of wgmma (PTX ISA, "Matrix Descriptor Format"), 64 bits:
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4 (LBO)
//   bits 32-45  stride-dimension byte offset >> 4 (SBO)
//   bits 49-51  base offset (0: every tile starts on a 1024-byte boundary)
//   bits 62-63  swizzle mode: 0 none, 1 = 128-byte, 2 = 64-byte, 3 = 32-byte
// Our operands are "K-major" (K contiguous: x rows, w rows), 128-byte swizzled. The hardware's
// unit is the 8 x 16-byte core matrix; with 128B swizzle and K-major, a row of 64 halves holds
// the whole K-slice, so:
//   SBO = 1024: from one group of 8 rows (M or N direction) to the next: 8 rows x 128 bytes.
//   LBO: the step between core matrices along K; for swizzled K-major layouts the K-step is
//        implied by the swizzle (the 16-byte chunks of a 128-byte row), LBO is not used and is
//        set to 1 (16 bytes) by convention.
// The K-advance inside a stage: a k16 step is 16 halves = 32 bytes along the row, so the
// descriptor for k-step kk of the slice is the base descriptor + (32 * kk) >> 4 = + 2 * kk in
// the address field. This is right even though the data are swizzled: the hardware forms each
// chunk's address from start + row * 128 + chunk * 16 and only then XORs address bits [4, 7)
// with bits [7, 10) (the row within the 1024-byte atom), the same function TMA applied when it
// stored the tile; with the tile base 1024-aligned, bits [7, 10) are the row and the 32-byte
// offset only moves the chunk index, as the logical K offset does.
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr) {
    const unsigned long long start = (addr & 0x3FFFFu) >> 4;       // 14 bits
    const unsigned long long lbo = 1;                              // unused (see above)
    const unsigned long long sbo = SWIZZLE_ATOM >> 4;              // 64
    return start | (lbo << 16) | (sbo << 32) | (1ull << 62);       // swizzle mode 1: 128-byte
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The accumulators must not be moved by the compiler across an in-flight wgmma: after each wait,
// tie every accumulator register to an empty asm so that no read is hoisted above it.
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 x N] (+)= A[64 x 16] · B[N x 16]ᵀ, A and B from shared memory (descriptors a, b), both
// K-major (imm-trans-a = imm-trans-b = 0), scale-a = scale-b = 1; `accumulate` == 0 overwrites D.
// D fragment per thread (warp w of the warpgroup, lane l): d[4j + e] is row 16w + l/4 + 8(e/2),
// column 8j + 2(l%4) + e%2, for j in [0, N/8), e in [0, 4) (the mma.m16n8 layout, repeated).
template <int N>
__device__ __forceinline__ void wgmma_f16(float (&d)[N / 2], unsigned long long a, unsigned long long b,
                                          int accumulate);

#define F8(i)                                                                                      \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),    \
        "+f"(d[i + 6]), "+f"(d[i + 7])
template <>
__device__ __forceinline__ void wgmma_f16<256>(float (&d)[128], unsigned long long a, unsigned long long b,
                                            int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
                 "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
                 "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
                 "}, %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : F8(0), F8(8), F8(16), F8(24), F8(32), F8(40),
                   F8(48), F8(56), F8(64), F8(72), F8(80), F8(88),
                   F8(96), F8(104), F8(112), F8(120)
                 : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_f16<192>(float (&d)[96], unsigned long long a, unsigned long long b,
                                            int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
                 "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
                 "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
                 "}, %96, %97, p, 1, 1, 0, 0;\n}\n"
                 : F8(0), F8(8), F8(16), F8(24), F8(32), F8(40),
                   F8(48), F8(56), F8(64), F8(72), F8(80), F8(88)
                 : "l"(a), "l"(b), "r"(accumulate));
}
template <>
__device__ __forceinline__ void wgmma_f16<128>(float (&d)[64], unsigned long long a, unsigned long long b,
                                            int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : F8(0), F8(8), F8(16), F8(24), F8(32), F8(40),
                   F8(48), F8(56)
                 : "l"(a), "l"(b), "r"(accumulate));
}
#undef F8

// ---- the kernel -----------------------------------------------------------------------------------

template <int BM, int BN, int STAGES>
struct SmemLayout {
    static constexpr int A_BYTES = BM * ROW_BYTES; // one stage of x: [BM][64] halves
    static constexpr int B_BYTES = BN * ROW_BYTES; // one stage of w: [BN][64] halves
    static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
    // full[STAGES], empty[STAGES], turn[2] (ping-pong) after the tiles.
    static constexpr int BARRIERS = STAGES * STAGE_BYTES;
    // + SWIZZLE_ATOM: the dynamic shared memory base is rounded up to 1024 inside the kernel.
    static constexpr int TOTAL = BARRIERS + 2 * STAGES * 8 + 16 + SWIZZLE_ATOM;
};

// One output pair (columns col, col + 1 of one row): bias, activation, residual, f16.
template <int ACT>
__device__ __forceinline__ void store_pair(__half* __restrict__ out, const float* __restrict__ bias,
                                           const __half* __restrict__ residual, int N, int row, int col, float v0,
                                           float v1) {
    const size_t at = (size_t)row * N + col;
    const float2 b = *reinterpret_cast<const float2*>(bias + col);
    v0 = activate(v0 + b.x, ACT); // ACT is a constant: the switch in activate() folds away
    v1 = activate(v1 + b.y, ACT);
    if (residual) {
        const float2 r = __half22float2(*reinterpret_cast<const __half2*>(residual + at));
        v0 += r.x;
        v1 += r.y;
    }
    *reinterpret_cast<__half2*>(out + at) = __floats2half2_rn(v0, v1);
}

// The epilogue of one consumer thread: d[4j + e] is (row + 8 (e / 2), col + 8 j + e % 2), where
// row = m0 + 64 c + 16 warp + lane / 4 and col = n0 + 2 (lane % 4) (the wgmma D layout above).
// N is even, so col + 1 < N whenever col < N; rows past M are not written.
template <int ACT, int BN>
__device__ __forceinline__ void epilogue(const float (&d)[BN / 2], __half* __restrict__ out,
                                         const float* __restrict__ bias, const __half* __restrict__ residual, int M,
                                         int N, int row, int col) {
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        const int cj = col + 8 * j;
        if (cj < N) {
            if (row < M) store_pair<ACT>(out, bias, residual, N, row, cj, d[4 * j], d[4 * j + 1]);
            if (row + 8 < M) store_pair<ACT>(out, bias, residual, N, row + 8, cj, d[4 * j + 2], d[4 * j + 3]);
        }
    }
}

template <int BN, int CONSUMERS, int STAGES, bool PINGPONG>
__device__ __forceinline__ void gemm_sm90_body(const TensorMap* map_x, const TensorMap* map_w,
                                               const float* __restrict__ bias, const __half* __restrict__ residual,
                                               __half* __restrict__ out, int M, int N, int K, int act) {
    // Rows of one tile: every consumer takes 64 of them (cooperative), or a whole 64-row tile
    // of its own (ping-pong).
    constexpr int BM = PINGPONG ? 64 : 64 * CONSUMERS;
    using L = SmemLayout<BM, BN, STAGES>;
    extern __shared__ unsigned char smem_raw[];
    // Shared-space addresses throughout (what TMA, mbarrier and the descriptors take).
    const unsigned base = (smem_u32(smem_raw) + SWIZZLE_ATOM - 1) & ~(unsigned)(SWIZZLE_ATOM - 1);
    const unsigned full_bar = base + L::BARRIERS;      // full[s]  at full_bar + 8 s
    const unsigned empty_bar = full_bar + 8 * STAGES;  // empty[s] at empty_bar + 8 s
    const unsigned turn_bar = empty_bar + 8 * STAGES;  // ping-pong: turn[c] at turn_bar + 8 c
    // Stage s: A at base + s * STAGE_BYTES, B right after it; both 1024-aligned since
    // A_BYTES and B_BYTES are multiples of 1024 (BM, BN multiples of 8 rows).

    const int warpgroup = threadIdx.x / 128; // range [0, CONSUMERS]
    const int tiles_n = (N + BN - 1) / BN;
    const int tiles = ((M + BM - 1) / BM) * tiles_n;
    const int k_tiles = K / BK;

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full_bar + 8 * s, 1);              // the producer's expect_tx arrival
            // One arrival per warp that reads the stage: every consumer warp, or (ping-pong) the
            // 4 warps of the one warpgroup whose tile the stage holds.
            mbar_init(empty_bar + 8 * s, PINGPONG ? 4 : CONSUMERS * 4);
        }
        if (PINGPONG) {
            mbar_init(turn_bar, 1);
            mbar_init(turn_bar + 8, 1);
        }
        // Make the initialized barriers visible to the async proxy (TMA's complete_tx).
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        tma_prefetch_map(map_x);
        tma_prefetch_map(map_w);
    }
    __syncthreads();

    if (warpgroup == 0) {
        // ---- producer: one thread streams K-slices of (x, w) into the ring ----
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
        if (threadIdx.x == 0) {
            int it = 0; // K-slices issued so far, over all tiles: stage it % STAGES, pass it / STAGES
            for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
                const int m0 = (tile / tiles_n) * BM, n0 = (tile % tiles_n) * BN;
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % STAGES;
                    const unsigned pass = (unsigned)(it / STAGES);
                    mbar_wait(empty_bar + 8 * s, (pass & 1) ^ 1); // the consumers freed this stage
                    const unsigned a = base + s * L::STAGE_BYTES, full = full_bar + 8 * s;
                    mbar_expect_tx(full, L::STAGE_BYTES);
                    tma_load_2d(a, map_x, kt * BK, m0, full);
                    tma_load_2d(a + L::A_BYTES, map_w, kt * BK, n0, full);
                }
            }
        }
    } else {
        // ---- consumers: warpgroup c multiplies rows [64 c, 64 c + 64) of each tile (cooperative),
        // or every tile l with l % CONSUMERS == c of this CTA (ping-pong) ----
        // Registers move within the CTA's own allocation: 384 threads x 168 at entry = 128 x 40
        // (producer) + 256 x 232 (consumers), exactly. With one consumer (256 threads) the entry
        // allocation already covers it, so there is nothing to take.
        if constexpr (CONSUMERS > 1) asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
        const int c = warpgroup - 1;
        const int warp = (threadIdx.x / EMBER_WARP) % 4, lane = threadIdx.x % EMBER_WARP;
        float acc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f; // never read (the first wgmma overwrites), but defined
        int it = 0, local = 0, turns = 0; // local: this CTA's tiles so far; turns: waits on turn[c]
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
            if (PINGPONG && local % CONSUMERS != c) {
                it += k_tiles; // another warpgroup's tile: its K-slices pass this one by
                continue;
            }
            // Ping-pong: the main loops take turns, tile by tile. Besides ordering the tensor-core
            // work, this keeps the phase arithmetic sound: a consumer that skipped k_tiles slices
            // must not wait on a full[s] whose previous pass has not completed yet (try_wait.parity
            // cannot tell "one pass behind" from "done"), and the other consumer hands over the
            // turn only after it has waited on every slice before this tile's first.
            if (PINGPONG && local > 0) {
                mbar_wait(turn_bar + 8 * c, (unsigned)turns & 1);
                ++turns;
            }
            const int m0 = (tile / tiles_n) * BM, n0 = (tile % tiles_n) * BN;
            for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                const int s = it % STAGES;
                mbar_wait(full_bar + 8 * s, (unsigned)(it / STAGES) & 1); // the stage's bytes landed
                const unsigned a = base + s * L::STAGE_BYTES + (PINGPONG ? 0 : c * 64 * ROW_BYTES);
                const unsigned long long da = smem_desc(a), db = smem_desc(base + s * L::STAGE_BYTES + L::A_BYTES);
                wgmma_fence(); // the accumulators were last touched by ordinary instructions or wgmma
#pragma unroll
                for (int kk = 0; kk < BK / 16; ++kk) // +32 bytes per k16 step: +2 in the address field
                    wgmma_f16<BN>(acc, da + 2 * kk, db + 2 * kk, (kt | kk) != 0);
                wgmma_commit();
                // Keep this slice's group in flight; once the previous one is done, its stage can
                // be refilled.
                wgmma_wait<1>();
                fence_regs(acc);
                if (kt > 0 && lane == 0) mbar_arrive(empty_bar + 8 * ((it + STAGES - 1) % STAGES));
            }
            // Ping-pong: every slice of this tile has been waited on; the other consumer's main
            // loop may start while this one finishes its wgmmas and runs the epilogue.
            if (PINGPONG && threadIdx.x % 128 == 0) mbar_arrive(turn_bar + 8 * (1 - c));
            wgmma_wait<0>();
            fence_regs(acc);
            if (lane == 0) mbar_arrive(empty_bar + 8 * ((it + STAGES - 1) % STAGES));

            // Epilogue from registers, its activation chosen once per tile (not per element).
            const int row = m0 + (PINGPONG ? 0 : c * 64) + warp * 16 + lane / 4; // range [m0, m0 + BM)
            const int col = n0 + (lane % 4) * 2;
            switch (act) {
            case ACT_GELU:
                epilogue<ACT_GELU, BN>(acc, out, bias, residual, M, N, row, col);
                break;
            case ACT_GELU_TANH:
                epilogue<ACT_GELU_TANH, BN>(acc, out, bias, residual, M, N, row, col);
                break;
            case ACT_RELU:
                epilogue<ACT_RELU, BN>(acc, out, bias, residual, M, N, row, col);
                break;
            case ACT_TANH:
                epilogue<ACT_TANH, BN>(acc, out, bias, residual, M, N, row, col);
                break;
            default:
                epilogue<ACT_IDENTITY, BN>(acc, out, bias, residual, M, N, row, col);
            }
        }
    }
}

// One entry point per tile shape (the names src/backend/cuda/gemm.rs launches). Block =
// 128 (CONSUMERS + 1) threads; dynamic shared memory = SmemLayout<..>::TOTAL bytes.
#define GEMM_SM90(NAME, BN, CONSUMERS, STAGES, PINGPONG)                                                 \
    extern "C" __global__ void __launch_bounds__(128 * (CONSUMERS + 1), 1)                               \
        NAME(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_w,           \
             const float* __restrict__ bias, const __half* __restrict__ residual, __half* __restrict__ out, \
             int M, int N, int K, int act) {                                                             \
        gemm_sm90_body<BN, CONSUMERS, STAGES, PINGPONG>(&map_x, &map_w, bias, residual, out, M, N, K, act); \
    }

GEMM_SM90(gemm_sm90_128x256, 256, 2, 4, false)
GEMM_SM90(gemm_sm90_128x192, 192, 2, 5, false)
GEMM_SM90(gemm_sm90_128x128, 128, 2, 6, false)
GEMM_SM90(gemm_sm90_64x128, 128, 1, 8, false)
GEMM_SM90(gemm_sm90_pp_64x256, 256, 2, 5, true)
GEMM_SM90(gemm_sm90_pp_64x192, 192, 2, 6, true)
