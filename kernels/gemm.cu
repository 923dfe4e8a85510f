// The linear layer: out[M, N] = act(x[M, K] · w[N, K]ᵀ + bias[N]) (+ residual[M, N]).
//
// x, w, residual and out are f16, row-major; w is PyTorch's nn.Linear layout [out, in], which is
// exactly the "col" B operand of mma.sync (each output column's K values contiguous). bias is f32.
// act is one of the ACT_* codes of common.cuh; the residual (may be null) is added after it.
//
// gemm_f16 (tensor cores, needs K % 8 == 0 so that every 16-byte row chunk is aligned):
//   block tile 128 (M) x 64 (N) x 32 (K), 128 threads = 4 warps in a 2 x 2 grid, warp tile
//   64 x 32 = 4 x 4 mma.sync.m16n8k16 (f16 in, f32 accumulate: 64 f32 accumulators per thread).
//   grid = (ceil(N / 64), ceil(M / 128)). Tiles stream global -> shared with cp.async (16 bytes,
//   zero-filled past the matrix edges), 3 stages deep; fragments come from shared memory with
//   ldmatrix.x4. Shared rows are padded from 32 to 40 halves (80 bytes) so that the 8 row
//   addresses of one ldmatrix phase fall in distinct banks. The epilogue (bias, activation,
//   residual, f32 -> f16) runs on the accumulators in registers; nothing round-trips through
//   global memory.
// gemm_f16_simple (any K; the fallback for K % 8 != 0): one thread per output, f32 accumulate;
//   grid = (M, ceil(N / 256)), 256 threads along N.
#include "mma.cuh"

#define BM 128
#define BN 64
#define BK 32
#define STAGES 3
#define PAD_K 40 // BK + 8 halves of padding per shared row

struct Tiles {
    __half a[STAGES][BM][PAD_K];
    __half b[STAGES][BN][PAD_K];
};

// Issues the copies of the K-slice starting at k0 into `stage`: 128 rows x 4 chunks of A (4 per
// thread) and 64 rows x 4 chunks of B (2 per thread).
__device__ __forceinline__ void load_tiles(Tiles& s, int stage, const __half* __restrict__ x,
                                           const __half* __restrict__ w, int M, int N, int K, int m0,
                                           int n0, int k0) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int chunk = tid + i * 128;      // range [0, 512)
        const int row = chunk / 4, col = (chunk % 4) * 8;
        const int gm = m0 + row, gk = k0 + col;
        const bool ok = gm < M && gk < K;
        const __half* src = ok ? x + (size_t)gm * K + gk : x;
        cp_async16(&s.a[stage][row][col], src, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int chunk = tid + i * 128;      // range [0, 256)
        const int row = chunk / 4, col = (chunk % 4) * 8;
        const int gn = n0 + row, gk = k0 + col;
        const bool ok = gn < N && gk < K;
        const __half* src = ok ? w + (size_t)gn * K + gk : w;
        cp_async16(&s.b[stage][row][col], src, ok ? 16 : 0);
    }
}

__device__ __forceinline__ void store_out(__half* __restrict__ out, const float* __restrict__ bias,
                                          const __half* __restrict__ residual, int M, int N, int act, int row,
                                          int col, float v0, float v1) {
    if (row >= M) return;
    const size_t at = (size_t)row * N + col;
    if (col + 1 < N && (N % 2) == 0) {
        v0 = activate(v0 + bias[col], act);
        v1 = activate(v1 + bias[col + 1], act);
        if (residual) {
            const float2 r = __half22float2(*reinterpret_cast<const __half2*>(residual + at));
            v0 += r.x;
            v1 += r.y;
        }
        *reinterpret_cast<__half2*>(out + at) = __floats2half2_rn(v0, v1);
        return;
    }
    const float v[2] = {v0, v1};
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        if (col + j >= N) break;
        float y = activate(v[j] + bias[col + j], act);
        if (residual) y += __half2float(residual[at + j]);
        out[at + j] = __float2half(y);
    }
}

extern "C" __global__ void __launch_bounds__(128) gemm_f16(const __half* __restrict__ x, const __half* __restrict__ w,
                                                           const float* __restrict__ bias,
                                                           const __half* __restrict__ residual,
                                                           __half* __restrict__ out, int M, int N, int K, int act) {
    __shared__ __align__(128) Tiles s;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int warp = threadIdx.x / EMBER_WARP, lane = threadIdx.x % EMBER_WARP;
    const int wm = (warp / 2) * 64, wn = (warp % 2) * 32; // this warp's corner inside the block tile

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    const int k_tiles = (K + BK - 1) / BK;
    // Prologue: STAGES - 1 slices in flight (empty groups past the end keep the count uniform).
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < k_tiles) load_tiles(s, st, x, w, M, N, K, m0, n0, st * BK);
        cp_async_commit();
    }

    for (int kt = 0; kt < k_tiles; ++kt) {
        cp_async_wait<STAGES - 2>(); // slice kt has landed (for this thread) ...
        __syncthreads();             // ... and for every thread; slice kt - 1's stage is free again
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load_tiles(s, next % STAGES, x, w, M, N, K, m0, n0, next * BK);
        cp_async_commit();

        const int st = kt % STAGES;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            unsigned a[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) // rows lane % 16, k half lane / 16 (the mma A layout)
                ldsm_x4(a[i], &s.a[st][wm + i * 16 + (lane % 16)][kk + (lane / 16) * 8]);
            unsigned b[4][2];
#pragma unroll
            for (int j = 0; j < 4; j += 2) { // matrices: (n 0-7, k 0-7) (n 0-7, k 8-15) (n 8-15, ...)
                unsigned r[4];
                const int mi = lane / 8;
                ldsm_x4(r, &s.b[st][wn + j * 8 + (mi / 2) * 8 + (lane % 8)][kk + (mi % 2) * 8]);
                b[j][0] = r[0];
                b[j][1] = r[1];
                b[j + 1][0] = r[2];
                b[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_16816(acc[i][j], a[i], b[j][0], b[j][1]);
        }
    }
    cp_async_wait<0>();

    // Accumulator layout of m16n8: e 0,1 at row lane / 4, cols 2 (lane % 4) + {0, 1}; e 2,3 at row + 8.
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = m0 + wm + i * 16 + lane / 4;
            const int col = n0 + wn + j * 8 + (lane % 4) * 2;
            if (col < N) {
                store_out(out, bias, residual, M, N, act, row, col, acc[i][j][0], acc[i][j][1]);
                store_out(out, bias, residual, M, N, act, row + 8, col, acc[i][j][2], acc[i][j][3]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(256) gemm_f16_simple(const __half* __restrict__ x, const __half* __restrict__ w,
                                                                  const float* __restrict__ bias,
                                                                  const __half* __restrict__ residual,
                                                                  __half* __restrict__ out, int M, int N, int K,
                                                                  int act) {
    const int row = blockIdx.x;                            // range [0, M)
    const int col = blockIdx.y * blockDim.x + threadIdx.x; // range [0, N)
    if (col >= N || row >= M) return;
    float sum = 0.0f;
    for (int k = 0; k < K; ++k) sum += __half2float(x[(size_t)row * K + k]) * __half2float(w[(size_t)col * K + k]);
    float y = activate(sum + bias[col], act);
    if (residual) y += __half2float(residual[(size_t)row * N + col]);
    out[(size_t)row * N + col] = __float2half(y);
}
