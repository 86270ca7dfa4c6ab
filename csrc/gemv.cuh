// Fused dequant-GEMV: y[t, r] = Σ_c W[r, c] · x[t, c] with W in a quantized format.
//
// One warp per row, WARPS rows per block. Each lane dequantizes Quant::CHUNK weights at a time
// into registers and dots them with up to NT token rows of x (f32, read through L1/L2: every
// warp of the grid reads the same x), so a tile of NT tokens reads W once. The activation stays
// f32: on a GPU decode is bound by reading W, and f32 x keeps the result within rounding of
// the CPU reference. gen/ instantiates gemv_launch<Quant, WARPS, NT> per format and tile.
#pragma once

#include "include/quant.cuh"

// Σ_i v[i] · x[i] over one chunk; x is 16-byte aligned (cols and CHUNK are multiples of 32).
template <int CHUNK>
__device__ __forceinline__ float dot_chunk(const float *v, const float *x) {
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i < CHUNK / 4; i++) {
        const float4 f = x4[i];
        acc += v[4 * i] * f.x + v[4 * i + 1] * f.y + v[4 * i + 2] * f.z + v[4 * i + 3] * f.w;
    }
    return acc;
}

// acc[t] = row · x[t] for the NT rows of x given by `xs` (NULL entries skipped), summed over
// the warp. Every lane returns the full sums.
template <class Q, int NT>
__device__ __forceinline__ void warp_row_dot(const uint8_t *row, int cols, const float *const *xs,
                                             float *acc) {
    const int lane = threadIdx.x % ROTARY_WARP;
    const int n_chunks = cols / Q::CHUNK;
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c = lane; c < n_chunks; c += ROTARY_WARP) {
        float v[Q::CHUNK];
        Q::dequant(row, c, v);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (xs[t] != nullptr) acc[t] += dot_chunk<Q::CHUNK>(v, xs[t] + c * Q::CHUNK);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
}

// acc += v · x over one chunk, four products at a time (x 16-byte aligned).
template <int CHUNK>
__device__ __forceinline__ void accumulate_chunk(const float *v, const float *x, float &acc) {
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll
    for (int i = 0; i < CHUNK / 4; i++) {
        const float4 f = x4[i];
        acc += v[4 * i] * f.x + v[4 * i + 1] * f.y + v[4 * i + 2] * f.z + v[4 * i + 3] * f.w;
    }
}

// Two rows of the same format against the same x in one pass over the chunks (the MoE gate
// and up). One chunk of dequantized weights is live at a time: the second row's chunk reuses
// the first's registers and x is read again from L1. Holding both (2 * CHUNK floats next to
// 2 * NT sums) made the 8-token Q4_K/Q5_K instances spill (ptxas, `rotary kernels`).
template <class Q, int NT>
__device__ __forceinline__ void warp_row_dot2(const uint8_t *row_a, const uint8_t *row_b, int cols,
                                              const float *const *xs, float *acc_a, float *acc_b) {
    const int lane = threadIdx.x % ROTARY_WARP;
    const int n_chunks = cols / Q::CHUNK;
#pragma unroll
    for (int t = 0; t < NT; t++) acc_a[t] = acc_b[t] = 0.0f;
    for (int c = lane; c < n_chunks; c += ROTARY_WARP) {
        float v[Q::CHUNK];
        Q::dequant(row_a, c, v);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (xs[t] != nullptr) accumulate_chunk<Q::CHUNK>(v, xs[t] + c * Q::CHUNK, acc_a[t]);
        }
        Q::dequant(row_b, c, v);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (xs[t] != nullptr) accumulate_chunk<Q::CHUNK>(v, xs[t] + c * Q::CHUNK, acc_b[t]);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc_a[t] = warp_sum(acc_a[t]);
        acc_b[t] = warp_sum(acc_b[t]);
    }
}

template <class Q, int WARPS, int NT>
__global__ void __launch_bounds__(WARPS *ROTARY_WARP) gemv_kernel(RotaryGemv p) {
    const int row = blockIdx.x * WARPS + threadIdx.x / ROTARY_WARP;
    if (row >= p.rows) return;
    const uint8_t *w = static_cast<const uint8_t *>(p.w) + row_bytes<Q>(p.cols) * row;
    const int t0 = blockIdx.y * NT;
    const float *xs[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        xs[t] = (t0 + t < p.n_tokens) ? p.x + static_cast<size_t>(t0 + t) * p.cols : nullptr;
    }
    float acc[NT];
    warp_row_dot<Q, NT>(w, p.cols, xs, acc);
    if (threadIdx.x % ROTARY_WARP == 0) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (xs[t] != nullptr) p.y[static_cast<size_t>(t0 + t) * p.rows + row] = acc[t];
        }
    }
}

template <class Q, int WARPS, int NT>
int gemv_launch(const RotaryGemv &p, cudaStream_t stream) {
    const dim3 grid(ceil_div(p.rows, WARPS), ceil_div(p.n_tokens, NT));
    return rotary_launch<gemv_kernel<Q, WARPS, NT>>(grid, WARPS * ROTARY_WARP, 0, stream, p);
}
