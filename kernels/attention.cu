// Self-attention over packed variable-length sequences (no padding, no mask, bidirectional).
//
// qkv is f16 [tokens, 3 * heads * head_dim]: each row holds q, then k, then v, each split into
// heads of head_dim columns. This is exactly what the fused QKV linear layer writes (its weight
// is query, key and value stacked, [3 * hidden, hidden]), so attention reads the projection's
// output in place. Sequence s owns tokens cu_seqlens[s] .. cu_seqlens[s + 1]. out is f16
// [tokens, heads * head_dim] with the heads side by side: the row-major input of the output
// projection, so no transpose kernel runs on either side.
//   out[i, h] = sum_j softmax_j(q_i,h · k_j,h / sqrt(head_dim)) v_j,h   over j in i's sequence.
//
// Three kernel families, each instantiated for head_dim 32 (MiniLM) and 64 (bge, tuned):
//
// attention_fa_d{32,64}: FlashAttention-2 on the tensor cores, any length.
//   grid = (ceil(max_len / 128), heads, sequences): blockIdx.z IS the sequence, so a block finds
//   its tokens with two loads of cu_seqlens (O(1), no scan); blocks past their sequence's end
//   exit at once (batches are sorted by length, so few do). A block of 4 warps takes 128 queries
//   of one (sequence, head), 32 per warp as two 16-row mma tiles (two tiles per warp halve the
//   shared-memory reads of K and V per mma; FA2 does the same). Q goes global -> shared (cp.async)
//   -> registers (ldmatrix) once. K and V stream through shared memory in tiles of 64 keys,
//   double-buffered with cp.async (tile t + 1 is in flight while tile t is multiplied); Q is
//   staged in the second buffer before the loop, so shared memory is 2 x (K + V) tiles only:
//   36 KB (d64), 20 KB (d32), under the 48 KB of a static allocation.
//   Per tile: S = Q Kᵀ with mma.sync.m16n8k16 (f16 in, f32 accumulate; B fragments from K rows
//   by ldmatrix), the online softmax on S in f32 (running max and sum per row, exp2 with
//   log2(e) / sqrt(head_dim) folded into one multiply), then O += P V with P converted in
//   registers from the S accumulators to the A operand (the C and A fragment layouts line up, so
//   P never touches shared memory) and V's B fragments from ldmatrix.trans. O is divided by the
//   row sum at the end and written as f16. Nothing of size seq x seq exists anywhere.
//
// attention_short_d{32,64}: sequences of at most 128 tokens (the host picks it when the batch's
//   longest sequence is <= 128). A warp takes 32 queries (two mma tiles) of one (sequence,
//   head); the whole K and V of the sequence sit in shared memory at once (one cp.async wave, no
//   pipeline to fill). Several (sequence, head) pairs share a block so that no warp idles on
//   short batches: with W = ceil(max_len / 32) rounded up to 1, 2 or 4 warps per pair, a block of
//   4 warps holds P = 4 / W pairs (P = 4 for max_len <= 32, 2 for <= 64, 1 for <= 128), pair
//   index = blockIdx.x * P + warp / W, sequence = pair / heads (O(1)); grid.x = ceil(pairs / P).
//   Q fragments are read straight from global memory into registers (each is used by one warp
//   only). Keys are processed in chunks of 32 so that a 20-token sequence does one chunk.
//   Shared memory: 128 K rows + 128 V rows, 36 KB (d64), 20 KB (d32).
//
// attention_reference_d{32,64}: the straightforward CUDA-core kernel (f32 FMAs, one warp per 8
//   queries); the fallback for head dims other than 32 and 64 (<= 64) and a second opinion in
//   the tests.
//
// Masking: K and V rows past a sequence's end are zero-filled by cp.async (src-size 0: nothing
// read, so neither the next sequence's keys nor garbage from past the buffer end come in, and a
// zero V row times a zero probability stays zero, never NaN); their scores are set to -inf
// before the softmax, in the one chunk that straddles the end. Every chunk has at least one real
// key, so every running max is finite after the first chunk. Query rows past the end compute on
// zeros and are never stored.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .f16 A/B and .f32 C; g = lane / 4, t = lane % 4):
//   A (16 x 16, row): a0 = (g, 2t..2t+1), a1 = (g + 8, 2t..), a2 = (g, 2t + 8..), a3 = (g + 8, 2t + 8..)
//   B (16 x 8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t + 8.., n g)
//   C (16 x 8):       c0, c1 = (g, 2t..2t+1), c2, c3 = (g + 8, 2t..2t+1)
//   ldmatrix.x4: lanes 8i..8i+7 give the row addresses of matrix i; register i of lane l holds
//   matrix i's (row l / 4, cols 2(l % 4)..+1), or with .trans its (rows 2(l % 4)..+1, col l / 4).
// scripts/cuda/attention_fragments_sim.py replays this index arithmetic lane by lane on a CPU against
// a float64 reference; keep the two in step.
// Accumulation: f32 throughout (scores, softmax, P V); only Q, K, V, P and the output are f16.
#include "mma.cuh"

#define NEG_INF __int_as_float(0xff800000) // -inf (NVRTC has no math.h INFINITY)
#define LOG2E 1.44269504088896341f

// ---------------------------------------------------------------------------------------------
// Tensor-core helpers.

__device__ __forceinline__ float fast_exp2(float x) { // ex2.approx(-inf) = +0
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi); // .x = lo: the lower column index in the low half
    return *reinterpret_cast<const unsigned*>(&h);
}

// Shared-memory rows of D halves are padded by 8 halves (16 bytes): the 8 row addresses of one
// ldmatrix phase then fall in distinct 16-byte bank groups (stride 144 B for d64, 80 B for d32).
template <int D>
struct Tile {
    static constexpr int LD = D + 8;
};

// Copies `rows` rows of D halves (row i at src + i * stride) into shared rows of Tile<D>::LD;
// rows >= valid are zero-filled without reading. All 128 threads of the block take part.
template <int D>
__device__ __forceinline__ void load_rows(__half* dst, const __half* __restrict__ src, int stride, int valid,
                                          int rows) {
    constexpr int CHUNKS = D / 8; // 16-byte chunks per row
    for (int c = threadIdx.x; c < rows * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, k = (c % CHUNKS) * 8;
        const bool ok = r < valid;
        cp_async16(dst + r * Tile<D>::LD + k, src + (size_t)(ok ? r : 0) * stride + k, ok ? 16 : 0);
    }
}

// The running state of one warp's MT x 16 query rows: O accumulators (f32, D / 8 n-tiles of 8
// columns per m-tile), and per row the running max (in log2 units) and this thread's share of the
// running sum. Thread (g, t) holds rows g (index 0) and g + 8 (index 1) of each m-tile.
template <int D, int MT>
struct Rows {
    float o[MT][D / 8][4];
    float m[MT][2];
    float l[MT][2];

    __device__ __forceinline__ void init() {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) o[mt][n][i] = 0.0f;
            m[mt][0] = m[mt][1] = NEG_INF;
            l[mt][0] = l[mt][1] = 0.0f;
        }
    }
};

// One chunk of KN keys: S = Q Kᵀ, online softmax, O += P V. ks and vs point at the chunk's first
// K and V rows in shared memory (stride Tile<D>::LD); keys >= valid (relative to the chunk) are
// masked. qf holds the warp's Q as A fragments: [m-tile][16-column slice of D][4].
template <int D, int KN, int MT>
__device__ __forceinline__ void attend_chunk(const unsigned (&qf)[MT][D / 16][4], const __half* ks,
                                             const __half* vs, int valid, float scale_log2,
                                             Rows<D, MT>& st) {
    constexpr int LD = Tile<D>::LD;
    const int lane = threadIdx.x % EMBER_WARP;
    float s[MT][KN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < KN / 8; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) s[mt][j][i] = 0.0f;

    // S = Q Kᵀ. One ldmatrix.x4 gives the B fragments of two 8-key n-tiles for one 16-wide
    // slice of D: matrices (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 0-7),
    // (keys 8-15, dims 8-15) -> b0, b1 of n-tile 2jp, b0, b1 of n-tile 2jp + 1.
    const int k_row = (lane & 7) + ((lane >> 4) << 3), k_col = ((lane >> 3) & 1) << 3;
#pragma unroll
    for (int kd = 0; kd < D / 16; ++kd) {
#pragma unroll
        for (int jp = 0; jp < KN / 16; ++jp) {
            unsigned b[4];
            ldsm_x4(b, ks + (jp * 16 + k_row) * LD + kd * 16 + k_col);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816(s[mt][2 * jp], qf[mt][kd], b[0], b[1]);
                mma_16816(s[mt][2 * jp + 1], qf[mt][kd], b[2], b[3]);
            }
        }
    }

    // Online softmax, in log2 units. Thread (g, t) holds keys 8j + 2t, 8j + 2t + 1 of rows g, g + 8.
    // The max is taken on the raw scores and the scale folded into one FFMA per score before
    // exp2 (the scale is positive, so max(s) * scale = max(s * scale)); only the chunk that
    // straddles the sequence's end pays for the mask (a warp-uniform branch).
    const int t2 = (lane & 3) * 2;
    if (valid < KN) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < KN / 8; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (j * 8 + t2 + (i & 1) >= valid) s[mt][j][i] = NEG_INF;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < KN / 8; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) mx[i >> 1] = fmaxf(mx[i >> 1], s[mt][j][i]);
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            // The four threads of a quad hold the same row: reduce across them.
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            // The new running max in log2 units; finite (every chunk has a real key).
            mx[r] = fmaxf(st.m[mt][r], mx[r] * scale_log2);
            corr[r] = fast_exp2(st.m[mt][r] - mx[r]); // 0 on the first chunk (m = -inf)
            st.m[mt][r] = mx[r];
            st.l[mt][r] *= corr[r];
        }
#pragma unroll
        for (int j = 0; j < KN / 8; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float p = fast_exp2(fmaf(s[mt][j][i], scale_log2, -mx[i >> 1]));
                s[mt][j][i] = p;
                st.l[mt][i >> 1] += p;
            }
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            st.o[mt][n][0] *= corr[0];
            st.o[mt][n][1] *= corr[0];
            st.o[mt][n][2] *= corr[1];
            st.o[mt][n][3] *= corr[1];
        }
    }

    // O += P V. The C fragments of n-tiles 2kk and 2kk + 1 of S are, element for element, the A
    // fragment of keys 16kk .. 16kk + 15. One ldmatrix.x4.trans gives the B fragments of two
    // 8-dim n-tiles: matrices (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15),
    // (keys 8-15, dims 8-15) -> b0, b1 of dim tile 2dp, b0, b1 of dim tile 2dp + 1.
    const int v_row = (lane & 7) + (((lane >> 3) & 1) << 3), v_col = (lane >> 4) << 3;
#pragma unroll
    for (int kk = 0; kk < KN / 16; ++kk) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            a[mt][0] = pack_half2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            a[mt][1] = pack_half2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            a[mt][2] = pack_half2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            a[mt][3] = pack_half2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            unsigned b[4];
            ldsm_x4_trans(b, vs + (kk * 16 + v_row) * LD + dp * 16 + v_col);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                mma_16816(st.o[mt][2 * dp], a[mt], b[0], b[1]);
                mma_16816(st.o[mt][2 * dp + 1], a[mt], b[2], b[3]);
            }
        }
    }
}

// Divides by the row sums and stores rows [row0, row0 + 16 * MT) of the warp (those < len) to
// out (row r of the sequence at out + r * hidden, the head's columns already offset).
template <int D, int MT>
__device__ __forceinline__ void store_rows(Rows<D, MT>& st, __half* __restrict__ out, int hidden, int row0,
                                           int len) {
    const int lane = threadIdx.x % EMBER_WARP;
    const int g = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = st.l[mt][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = 1.0f / l; // l >= 1: the row's max contributes exp2(0)
            const int row = row0 + mt * 16 + g + 8 * r;
            if (row < len) {
                __half* dst = out + (size_t)row * hidden + t2;
#pragma unroll
                for (int n = 0; n < D / 8; ++n)
                    *reinterpret_cast<__half2*>(dst + n * 8) =
                        __floats2half2_rn(st.o[mt][n][2 * r] * inv, st.o[mt][n][2 * r + 1] * inv);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// attention_fa: the tiled FlashAttention-2 kernel (any length).

#define FA_WARPS 4
#define FA_MT 2                             // 16-row m-tiles per warp
#define FA_BM (FA_WARPS * FA_MT * 16)       // 128 queries per block
#define FA_KN 64                            // keys per shared-memory tile

template <int D>
__device__ __forceinline__ void attention_fa(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                             __half* __restrict__ out, int heads) {
    constexpr int LD = Tile<D>::LD;
    constexpr int STAGE = 2 * FA_KN * LD; // K rows, then V rows; stage 1 first holds Q (FA_BM rows)
    static_assert(FA_BM == 2 * FA_KN, "Q is staged in one K + V buffer");
    __shared__ __align__(16) __half smem[2][STAGE];

    const int s = blockIdx.z, h = blockIdx.y;
    const int start = (int)cu_seqlens[s], len = (int)cu_seqlens[s + 1] - start;
    const int q0 = blockIdx.x * FA_BM; // range [0, len)
    if (q0 >= len) return;
    const int hidden = heads * D, stride = 3 * hidden;
    const int warp = threadIdx.x / EMBER_WARP, lane = threadIdx.x % EMBER_WARP;
    const __half* q_base = qkv + (size_t)start * stride + h * D;
    const __half* k_base = q_base + hidden;
    const __half* v_base = q_base + 2 * hidden;
    const float scale_log2 = rsqrtf((float)D) * LOG2E;

    load_rows<D>(smem[1], q_base + (size_t)q0 * stride, stride, len - q0, FA_BM);
    cp_async_commit();
    load_rows<D>(smem[0], k_base, stride, len, FA_KN);
    load_rows<D>(smem[0] + FA_KN * LD, v_base, stride, len, FA_KN);
    cp_async_commit();

    cp_async_wait<1>(); // Q has landed
    __syncthreads();
    unsigned qf[FA_MT][D / 16][4];
    const int row0 = warp * FA_MT * 16; // the warp's first query, relative to q0
#pragma unroll
    for (int mt = 0; mt < FA_MT; ++mt)
#pragma unroll
        for (int kd = 0; kd < D / 16; ++kd)
            ldsm_x4(qf[mt][kd], smem[1] + (row0 + mt * 16 + (lane & 15)) * LD + kd * 16 + ((lane >> 4) << 3));
    __syncthreads(); // stage 1 is free for K / V tile 1

    Rows<D, FA_MT> st;
    st.init();
    const bool active = q0 + row0 < len; // a warp whose 32 queries are all past the end only loads
    const int tiles = (len + FA_KN - 1) / FA_KN;
    for (int tile = 0; tile < tiles; ++tile) {
        if (tile + 1 < tiles) {
            __half* next = smem[(tile + 1) & 1];
            const int k1 = (tile + 1) * FA_KN;
            load_rows<D>(next, k_base + (size_t)k1 * stride, stride, len - k1, FA_KN);
            load_rows<D>(next + FA_KN * LD, v_base + (size_t)k1 * stride, stride, len - k1, FA_KN);
        }
        cp_async_commit(); // possibly empty: keeps "all but the newest group" = this tile
        cp_async_wait<1>();
        __syncthreads();
        const __half* cur = smem[tile & 1];
        if (active) attend_chunk<D, FA_KN, FA_MT>(qf, cur, cur + FA_KN * LD, len - tile * FA_KN, scale_log2, st);
        __syncthreads(); // every warp is done with this stage before it is refilled
    }
    if (active) store_rows<D, FA_MT>(st, out + (size_t)(start + q0) * hidden + h * D, hidden, row0, len - q0);
}

extern "C" __global__ void __launch_bounds__(128) attention_fa_d32(const __half* __restrict__ qkv,
                                                                   const unsigned* __restrict__ cu_seqlens,
                                                                   __half* __restrict__ out, int heads) {
    attention_fa<32>(qkv, cu_seqlens, out, heads);
}

extern "C" __global__ void __launch_bounds__(128) attention_fa_d64(const __half* __restrict__ qkv,
                                                                   const unsigned* __restrict__ cu_seqlens,
                                                                   __half* __restrict__ out, int heads) {
    attention_fa<64>(qkv, cu_seqlens, out, heads);
}

// ---------------------------------------------------------------------------------------------
// attention_short: whole sequences of <= 128 tokens in shared memory, P (sequence, head) pairs
// per block.

#define SH_WARPS 4
#define SH_MT 2          // a warp's 32 queries
#define SH_ROWS 128      // K (and V) rows per block: P pairs x W warps x 32
#define SH_KN 32         // keys per softmax chunk

template <int D>
__device__ __forceinline__ void attention_short(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                                __half* __restrict__ out, int heads, int sequences,
                                                int pairs_per_block) {
    constexpr int LD = Tile<D>::LD;
    __shared__ __align__(16) __half k_s[SH_ROWS * LD];
    __shared__ __align__(16) __half v_s[SH_ROWS * LD];

    const int warps_per_pair = SH_WARPS / pairs_per_block; // 1, 2 or 4
    const int rows_per_pair = warps_per_pair * 32;          // the longest sequence this launch takes
    const int hidden = heads * D, stride = 3 * hidden;
    const int pairs = sequences * heads;
    const int warp = threadIdx.x / EMBER_WARP, lane = threadIdx.x % EMBER_WARP;
    const float scale_log2 = rsqrtf((float)D) * LOG2E;

    // Every thread loads K and V rows of every pair of the block (all 128 threads per wave).
    constexpr int CHUNKS = D / 8;
    for (int c = threadIdx.x; c < SH_ROWS * CHUNKS; c += blockDim.x) {
        const int r = c / CHUNKS, k = (c % CHUNKS) * 8;
        const int pair = blockIdx.x * pairs_per_block + r / rows_per_pair, j = r % rows_per_pair;
        int start = 0, len = 0;
        if (pair < pairs) {
            const int s = pair / heads;
            start = (int)cu_seqlens[s];
            len = min((int)cu_seqlens[s + 1] - start, rows_per_pair);
        }
        const bool ok = j < len;
        const size_t at = (size_t)(start + (ok ? j : 0)) * stride + (pair < pairs ? pair % heads : 0) * D + k;
        cp_async16(k_s + r * LD + k, qkv + at + hidden, ok ? 16 : 0);
        cp_async16(v_s + r * LD + k, qkv + at + 2 * hidden, ok ? 16 : 0);
    }
    cp_async_commit();

    const int pair = blockIdx.x * pairs_per_block + warp / warps_per_pair;
    const int part = warp % warps_per_pair; // queries [32 part, 32 part + 32) of the pair
    int start = 0, len = 0, h = 0;
    if (pair < pairs) {
        const int s = pair / heads;
        h = pair % heads;
        start = (int)cu_seqlens[s];
        len = min((int)cu_seqlens[s + 1] - start, rows_per_pair); // the host guarantees len <= rows
    }
    const int row0 = part * 32;
    const bool active = row0 < len;

    // Q straight from global memory into A fragments (row r, columns c, c + 1 as one 32-bit load),
    // while the K / V copies are in flight. Rows past the end are zeros.
    unsigned qf[SH_MT][D / 16][4];
    const int g = lane >> 2, t2 = (lane & 3) * 2;
    const __half* q_base = qkv + (size_t)start * stride + h * D;
#pragma unroll
    for (int mt = 0; mt < SH_MT; ++mt) {
        const int r0 = row0 + mt * 16 + g, r1 = r0 + 8;
#pragma unroll
        for (int kd = 0; kd < D / 16; ++kd) {
            const int c = kd * 16 + t2;
            const unsigned* p0 = reinterpret_cast<const unsigned*>(q_base + (size_t)r0 * stride + c);
            const unsigned* p1 = reinterpret_cast<const unsigned*>(q_base + (size_t)r1 * stride + c);
            qf[mt][kd][0] = r0 < len ? p0[0] : 0u;
            qf[mt][kd][1] = r1 < len ? p1[0] : 0u;
            qf[mt][kd][2] = r0 < len ? p0[4] : 0u; // columns c + 8, c + 9
            qf[mt][kd][3] = r1 < len ? p1[4] : 0u;
        }
    }

    cp_async_wait<0>();
    __syncthreads();
    if (!active) return; // no barrier follows
    const int base = (warp / warps_per_pair) * rows_per_pair; // the pair's first K / V row
    Rows<D, SH_MT> st;
    st.init();
    for (int k0 = 0; k0 < len; k0 += SH_KN)
        attend_chunk<D, SH_KN, SH_MT>(qf, k_s + (base + k0) * LD, v_s + (base + k0) * LD, len - k0, scale_log2, st);
    store_rows<D, SH_MT>(st, out + (size_t)start * hidden + h * D, hidden, row0, len);
}

extern "C" __global__ void __launch_bounds__(128) attention_short_d32(const __half* __restrict__ qkv,
                                                                      const unsigned* __restrict__ cu_seqlens,
                                                                      __half* __restrict__ out, int heads,
                                                                      int sequences, int pairs_per_block) {
    attention_short<32>(qkv, cu_seqlens, out, heads, sequences, pairs_per_block);
}

extern "C" __global__ void __launch_bounds__(128) attention_short_d64(const __half* __restrict__ qkv,
                                                                      const unsigned* __restrict__ cu_seqlens,
                                                                      __half* __restrict__ out, int heads,
                                                                      int sequences, int pairs_per_block) {
    attention_short<64>(qkv, cu_seqlens, out, heads, sequences, pairs_per_block);
}

// ---------------------------------------------------------------------------------------------
// attention_reference: the CUDA-core kernel. grid = (ceil(max_len / 32), heads, sequences); a
// block of 128 threads = 4 warps takes 32 queries of one (sequence, head), 8 per warp. Keys and
// values stream through shared memory in tiles of 64 tokens, converted to f32 (rows padded by
// one float so that the 32 lanes, each on its own key, hit distinct banks). For each query the
// warp computes 64 scores (2 keys per lane), then the online softmax and the output: lane l owns
// dims l, l + 32, ... (DPL of them), so head_dim <= 32 * DPL. Shared memory 41 KB (d64).

#define REF_Q_PER_WARP 8
#define REF_Q_PER_BLOCK 32
#define REF_KV_TILE 64

template <int DPL>
__device__ __forceinline__ void attention_reference(const __half* __restrict__ qkv, const unsigned* __restrict__ cu_seqlens,
                                                    __half* __restrict__ out, int heads, int head_dim) {
    constexpr int DMAX = 32 * DPL;
    __shared__ float q_s[REF_Q_PER_BLOCK][DMAX];
    __shared__ float k_s[REF_KV_TILE][DMAX + 1];
    __shared__ float v_s[REF_KV_TILE][DMAX];

    const int s = blockIdx.z, h = blockIdx.y;
    const int start = (int)cu_seqlens[s], len = (int)cu_seqlens[s + 1] - start;
    const int q0 = blockIdx.x * REF_Q_PER_BLOCK; // range [0, len)
    if (q0 >= len) return;
    const int hidden = heads * head_dim, row_stride = 3 * hidden;
    const int warp = threadIdx.x / EMBER_WARP, lane = threadIdx.x % EMBER_WARP;
    // Scores are kept in base 2: s * log2(e) / sqrt(head_dim), so that exp2f does the softmax.
    const float scale = rsqrtf((float)head_dim) * LOG2E;

    for (int e = threadIdx.x; e < REF_Q_PER_BLOCK * DMAX; e += blockDim.x) {
        const int qi = e / DMAX, d = e % DMAX;
        const int t = q0 + qi;
        q_s[qi][d] = (t < len && d < head_dim)
                         ? __half2float(qkv[(size_t)(start + t) * row_stride + h * head_dim + d]) * scale
                         : 0.0f;
    }

    float m[REF_Q_PER_WARP], l[REF_Q_PER_WARP], o[REF_Q_PER_WARP][DPL];
#pragma unroll
    for (int q = 0; q < REF_Q_PER_WARP; ++q) {
        m[q] = NEG_INF;
        l[q] = 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; ++d) o[q][d] = 0.0f;
    }

    for (int k0 = 0; k0 < len; k0 += REF_KV_TILE) {
        __syncthreads(); // the previous tile is no longer read (and q_s is written, first time)
        for (int e = threadIdx.x; e < REF_KV_TILE * DMAX; e += blockDim.x) {
            const int j = e / DMAX, d = e % DMAX;
            const bool ok = k0 + j < len && d < head_dim;
            const size_t at = (size_t)(start + k0 + j) * row_stride + h * head_dim + d;
            k_s[j][d] = ok ? __half2float(qkv[at + hidden]) : 0.0f;
            v_s[j][d] = ok ? __half2float(qkv[at + 2 * hidden]) : 0.0f;
        }
        __syncthreads();
        const bool key0 = k0 + lane < len, key1 = k0 + lane + 32 < len;
#pragma unroll
        for (int q = 0; q < REF_Q_PER_WARP; ++q) {
            const int qi = warp * REF_Q_PER_WARP + q;
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
            const int keys = min(REF_KV_TILE, len - k0);
            for (int j = 0; j < keys; ++j) {
                const float p = __shfl_sync(0xffffffffu, j < 32 ? p0 : p1, j % 32);
#pragma unroll
                for (int d = 0; d < DPL; ++d) o[q][d] += p * v_s[j][lane + 32 * d];
            }
        }
    }

#pragma unroll
    for (int q = 0; q < REF_Q_PER_WARP; ++q) {
        const int t = q0 + warp * REF_Q_PER_WARP + q;
        if (t >= len) break;
        const float inv = 1.0f / l[q];
#pragma unroll
        for (int d = 0; d < DPL; ++d) {
            const int dim = lane + 32 * d;
            if (dim < head_dim) out[(size_t)(start + t) * hidden + h * head_dim + dim] = __float2half(o[q][d] * inv);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_reference_d32(const __half* __restrict__ qkv,
                                                                          const unsigned* __restrict__ cu_seqlens,
                                                                          __half* __restrict__ out, int heads,
                                                                          int head_dim) {
    attention_reference<1>(qkv, cu_seqlens, out, heads, head_dim);
}

extern "C" __global__ void __launch_bounds__(128) attention_reference_d64(const __half* __restrict__ qkv,
                                                                          const unsigned* __restrict__ cu_seqlens,
                                                                          __half* __restrict__ out, int heads,
                                                                          int head_dim) {
    attention_reference<2>(qkv, cu_seqlens, out, heads, head_dim);
}
