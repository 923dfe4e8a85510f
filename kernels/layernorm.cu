// LayerNorm, the embedding layer and pooling: the row-wise kernels.
//
// layer_norm:   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * gamma + beta, biased variance
//               (as PyTorch). x, out, gamma, beta f16 ([rows, cols] and [cols]).
// embed:        out[t, :] = LayerNorm(word[ids[t]] + position[pos[t]] + token_type[types[t]]);
//               tables f16, ids u32, out f16.
// pool:         out[s, :] = hidden[cu_seqlens[s], :] (CLS) or the mean of hidden[cu_seqlens[s] ..
//               cu_seqlens[s + 1], :] (mean). hidden, out f16.
// l2_normalize: out[r, :] = x[r, :] / max(||x[r, :]||_2, 1e-12). x, out f16.
//
// Mapping: layer_norm, embed, l2_normalize: one warp per row, 4 rows per block of 128 threads,
// grid.x = ceil(rows / 4); each lane walks columns lane, lane + 32, ... pool: one block of 128
// threads per sequence (grid.x = sequences), one thread per column (strided).
// Accumulation: f32 everywhere; the mean and the variance in two passes, as PyTorch.
#include "common.cuh"

#define ROWS_PER_BLOCK 4

// Normalizes `cols` f32 values that a warp produces through `value(c)` (read twice, from cache).
template <typename Value>
__device__ __forceinline__ void warp_layer_norm(Value value, int cols, const __half* __restrict__ gamma,
                                                const __half* __restrict__ beta, float eps,
                                                __half* __restrict__ out_row) {
    const int lane = threadIdx.x % EMBER_WARP;
    float sum = 0.0f;
    for (int c = lane; c < cols; c += EMBER_WARP) sum += value(c);
    const float mean = warp_sum(sum) / (float)cols;
    float sq = 0.0f;
    for (int c = lane; c < cols; c += EMBER_WARP) {
        const float d = value(c) - mean;
        sq += d * d;
    }
    const float rstd = rsqrtf(warp_sum(sq) / (float)cols + eps);
    for (int c = lane; c < cols; c += EMBER_WARP)
        out_row[c] = __float2half((value(c) - mean) * rstd * __half2float(gamma[c]) + __half2float(beta[c]));
}

extern "C" __global__ void __launch_bounds__(128) layer_norm(const __half* __restrict__ x, const __half* __restrict__ gamma,
                                      const __half* __restrict__ beta, __half* __restrict__ out, int rows,
                                      int cols, float eps) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / EMBER_WARP; // range [0, rows)
    if (row >= rows) return;
    const __half* in = x + (size_t)row * cols;
    warp_layer_norm([&](int c) { return __half2float(in[c]); }, cols, gamma, beta, eps,
                    out + (size_t)row * cols);
}

extern "C" __global__ void __launch_bounds__(128) embed(const unsigned* __restrict__ token_ids, const unsigned* __restrict__ position_ids,
                                 const unsigned* __restrict__ type_ids, const __half* __restrict__ word,
                                 const __half* __restrict__ position, const __half* __restrict__ token_type,
                                 const __half* __restrict__ gamma, const __half* __restrict__ beta,
                                 __half* __restrict__ out, int tokens, int cols, float eps) {
    const int t = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / EMBER_WARP; // range [0, tokens)
    if (t >= tokens) return;
    const __half* w = word + (size_t)token_ids[t] * cols;
    const __half* p = position + (size_t)position_ids[t] * cols;
    const __half* y = token_type + (size_t)type_ids[t] * cols;
    warp_layer_norm(
        [&](int c) { return __half2float(w[c]) + __half2float(p[c]) + __half2float(y[c]); }, cols,
        gamma, beta, eps, out + (size_t)t * cols);
}

extern "C" __global__ void __launch_bounds__(128) pool(const __half* __restrict__ hidden, const unsigned* __restrict__ cu_seqlens,
                                __half* __restrict__ out, int cols, int mean) {
    const int s = blockIdx.x; // range [0, sequences)
    const unsigned start = cu_seqlens[s], end = cu_seqlens[s + 1];
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v;
        if (mean) {
            float sum = 0.0f;
            for (unsigned t = start; t < end; ++t) sum += __half2float(hidden[(size_t)t * cols + c]);
            v = sum / (float)(end - start);
        } else {
            v = __half2float(hidden[(size_t)start * cols + c]);
        }
        out[(size_t)s * cols + c] = __float2half(v);
    }
}

extern "C" __global__ void __launch_bounds__(128) l2_normalize(const __half* __restrict__ x, __half* __restrict__ out, int rows, int cols) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / EMBER_WARP; // range [0, rows)
    if (row >= rows) return;
    const int lane = threadIdx.x % EMBER_WARP;
    const __half* in = x + (size_t)row * cols;
    float sq = 0.0f;
    for (int c = lane; c < cols; c += EMBER_WARP) {
        const float v = __half2float(in[c]);
        sq += v * v;
    }
    const float scale = 1.0f / fmaxf(sqrtf(warp_sum(sq)), 1e-12f);
    for (int c = lane; c < cols; c += EMBER_WARP) out[(size_t)row * cols + c] = __float2half(__half2float(in[c]) * scale);
}
