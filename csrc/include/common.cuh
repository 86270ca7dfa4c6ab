// Helpers every kernel uses: warp reductions, f16/bf16 loads, SiLU and sigmoid, the
// launch-error check.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "abi.h"

#define ROTARY_WARP 32

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = ROTARY_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = ROTARY_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The f16 at a 2-byte aligned address, widened exactly.
__device__ __forceinline__ float load_f16(const uint8_t *p) {
    return __half2float(*reinterpret_cast<const __half *>(p));
}

__device__ __forceinline__ float f16_bits_to_float(uint16_t bits) {
    return __half2float(__ushort_as_half(bits));
}

// Round to nearest even, as the half crate and ggml's GGML_FP32_TO_FP16 do.
__device__ __forceinline__ uint16_t float_to_f16_bits(float v) {
    return __half_as_ushort(__float2half_rn(v));
}

// BF16 is the top half of an f32: widening is exact.
__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ float silu(float x) {
    return x / (1.0f + expf(-x));
}

// 1 / (1 + e^-x), as src/model/deltanet.rs (expf, not __expf: the selftest compares to 1e-7).
__device__ __forceinline__ float sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

// What every launcher returns: the launch's error (configuration, missing kernel image).
static inline int launch_result() {
    return static_cast<int>(cudaGetLastError());
}

// Every kernel launch goes through here, so one kernel source serves both builds: <<<>>> under
// nvcc; in the emulated build (ROTARY_CUDA=emu) the SIMT emulator of csrc/emu/ on the host.
template <auto K, class... A>
static inline int rotary_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
#ifdef ROTARY_EMU
    rotary_emu::launch<K>(grid, block, smem, stream, args...);
#else
    K<<<grid, block, smem, stream>>>(args...);
#endif
    return launch_result();
}

// Dynamic shared memory of a kernel (the emulated build gives each block its own, guarded).
#ifndef ROTARY_EMU
#define ROTARY_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

static inline unsigned ceil_div(long long a, long long b) {
    return static_cast<unsigned>((a + b - 1) / b);
}
