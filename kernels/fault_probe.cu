// A kernel whose only job is to fail: it traps on purpose, so that tests can check that a
// fault while a kernel runs reaches the caller as an error naming that kernel (see
// CudaBackend::fault_probe and tests/gpu_faults.rs). A trap leaves the context unusable, so it
// is only ever launched in a process of its own.
#include "common.cuh"

extern "C" __global__ void fault_probe(float* out) {
    out[threadIdx.x] = 1.0f;
    __trap();
}
