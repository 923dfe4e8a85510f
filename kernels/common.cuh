// Shared by ember's kernels: the warp width, the activation codes, warp reductions (sum and max),
// and the activation functions of the GEMM epilogue (the exact GELU on CUDA's erff).
//
// Every kernel reads and writes row-major matrices whose rows are packed tokens (no padding).
// Activations are f16; LayerNorm vectors and biases are f32; all arithmetic that is not a tensor-
// core product (sums, softmax, LayerNorm statistics, activations) is done in f32.
#pragma once
#include <cuda_fp16.h>

#define EMBER_WARP 32

// Activation codes: Activation::kernel_code in src/backend/mod.rs, whose unit test reads these
// lines (a define renamed, renumbered or added without its variant fails it).
#define ACT_IDENTITY 0
#define ACT_GELU 1
#define ACT_GELU_TANH 2
#define ACT_RELU 3
#define ACT_TANH 4

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// `act` is uniform across the grid, so this switch does not diverge.
__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
    case ACT_GELU:
        return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH: {
        const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.0f + tanhf(inner));
    }
    case ACT_RELU:
        return fmaxf(x, 0.0f);
    case ACT_TANH:
        return tanhf(x);
    default:
        return x;
    }
}

