// Self-attention over packed variable-length sequences (no padding, no mask).
//
// qkv is f16 [tokens, 3 * heads * head_dim]: each row holds q, then k, then v, each split into
// heads of head_dim columns (the layout documented on Backend::attention). Sequence s owns tokens
// cu_seqlens[s] .. cu_seqlens[s + 1]. out is f16 [tokens, heads * head_dim], heads side by side:
//   out[i, h] = sum_j softmax_j(q_i,h · k_j,h / sqrt(head_dim)) v_j,h   over j in i's sequence.
//
// Mapping: grid = (ceil(max_len / 32), heads, sequences); a block of 128 threads = 4 warps takes
// 32 queries of one (sequence, head), 8 per warp. Blocks past their sequence's end exit at once
// (batches are sorted by length, so few do). Keys and values stream through shared memory in
// tiles of 64 tokens, converted to f32 (rows padded by one float so that the 32 lanes, each on
// its own key, hit distinct banks). For each query the warp computes 64 scores (2 keys per lane),
// then the online softmax (FlashAttention's running max and sum, f32, exp2 with the scale folded
// in) and the output: lane l owns dims l, l + 32, ... (DPL of them), so head_dim <= 32 * DPL.
// Two instances: attention_d32 (head_dim <= 32, MiniLM) and attention_d64 (<= 64, bge); shared
// memory is 41 KB for the latter, under the 48 KB of a static allocation.
// Accumulation: f32 throughout; only the inputs and the final output are f16.
// This is the straightforward CUDA-core version; the tensor-core FlashAttention-2 form is the
// attention tuning issue's job.
#include "common.cuh"

#define Q_PER_WARP 8
#define Q_PER_BLOCK 32
#define KV_TILE 64
#define NEG_INF __int_as_float(0xff800000) // -inf (NVRTC has no math.h INFINITY)

template <int DPL>
__device__ __forceinline__ void attention_impl(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                               __half* __restrict__ out, int heads, int head_dim) {
    constexpr int DMAX = 32 * DPL;
    __shared__ float q_s[Q_PER_BLOCK][DMAX];
    __shared__ float k_s[KV_TILE][DMAX + 1];
    __shared__ float v_s[KV_TILE][DMAX];

    const int s = blockIdx.z, h = blockIdx.y;
    const int start = (int)cu_seqlens[s], len = (int)cu_seqlens[s + 1] - start;
    const int q0 = blockIdx.x * Q_PER_BLOCK; // range [0, len)
    if (q0 >= len) return;
    const int hidden = heads * head_dim, row_stride = 3 * hidden;
    const int warp = threadIdx.x / EMBER_WARP, lane = threadIdx.x % EMBER_WARP;
    // Scores are kept in base 2: s * log2(e) / sqrt(head_dim), so that exp2f does the softmax.
    const float scale = rsqrtf((float)head_dim) * 1.44269504088896341f;

    for (int e = threadIdx.x; e < Q_PER_BLOCK * DMAX; e += blockDim.x) {
        const int qi = e / DMAX, d = e % DMAX;
        const int t = q0 + qi;
        q_s[qi][d] = (t < len && d < head_dim)
                         ? __half2float(qkv[(size_t)(start + t) * row_stride + h * head_dim + d]) * scale
                         : 0.0f;
    }

    float m[Q_PER_WARP], l[Q_PER_WARP], o[Q_PER_WARP][DPL];
#pragma unroll
    for (int q = 0; q < Q_PER_WARP; ++q) {
        m[q] = NEG_INF;
        l[q] = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; ++d) o[q][d] = 0.0f;
    }

    for (int k0 = 0; k0 < len; k0 += KV_TILE) {
        __syncthreads(); // the previous tile is no longer read (and q_s is written, first time)
        for (int e = threadIdx.x; e < KV_TILE * DMAX; e += blockDim.x) {
            const int j = e / DMAX, d = e % DMAX;
            const bool ok = k0 + j < len && d < head_dim;
            const size_t at = (size_t)(start + k0 + j) * row_stride + h * head_dim + d;
            k_s[j][d] = ok ? __half2float(qkv[at + hidden]) : 0.0f;
            v_s[j][d] = ok ? __half2float(qkv[at + 2 * hidden]) : 0.0f;
        }
        __syncthreads();
        const bool key0 = k0 + lane < len, key1 = k0 + lane + 32 < len;
#pragma unroll
        for (int q = 0; q < Q_PER_WARP; ++q) {
            const int qi = warp * Q_PER_WARP + q;
            float s0 = 0.0f, s1 = 0.0f;
            for (int d = 0; d < head_dim; ++d) {
                const float qd = q_s[qi][d];
                s0 += qd * k_s[lane][d];
                s1 += qd * k_s[lane + 32][d];
            }
            s0 = key0 ? s0 : NEG_INF;
            s1 = key1 ? s1 : NEG_INF;
            const float m_new = fmaxf(m[q], warp_max(fmaxf(s0, s1))); // finite: key k0 exists
            const float correction = exp2f(m[q] - m_new);              // 0 on the first tile
            const float p0 = exp2f(s0 - m_new), p1 = exp2f(s1 - m_new);
            l[q] = l[q] * correction + warp_sum(p0 + p1);
            m[q] = m_new;
#pragma unroll
            for (int d = 0; d < DPL; ++d) o[q][d] *= correction;
            const int keys = min(KV_TILE, len - k0);
            for (int j = 0; j < keys; ++j) {
                const float p = __shfl_sync(0xffffffffu, j < 32 ? p0 : p1, j % 32);
#pragma unroll
                for (int d = 0; d < DPL; ++d) o[q][d] += p * v_s[j][lane + 32 * d];
            }
        }
    }

#pragma unroll
    for (int q = 0; q < Q_PER_WARP; ++q) {
        const int t = q0 + warp * Q_PER_WARP + q;
        if (t >= len) break;
        const float inv = 1.0f / l[q];
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int dim = lane + 32 * d;
            if (dim < head_dim) out[(size_t)(start + t) * hidden + h * head_dim + dim] = __float2half(o[q][d] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_d32(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                                                __half* __restrict__ out, int heads, int head_dim) {
    attention_impl<1>(qkv, cu_seqlens, out, heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128) attention_d64(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                                                __half* __restrict__ out, int heads, int head_dim) {
    attention_impl<2>(qkv, cu_seqlens, out, heads, head_dim);
}
