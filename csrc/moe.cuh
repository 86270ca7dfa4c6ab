// Routed SwiGLU experts (see RotaryMoe in include/abi.h), reached through per-expert pointer
// tables so an expert may sit anywhere in VRAM.
//
// Decode (few pairs): grid (row tiles, pairs); each warp computes one output row of one pair.
// Prefill (many pairs): `moe_group_kernel` sorts the pairs by expert on the device (stable,
// deterministic), then grid (row tiles, experts): a warp reads its expert's row once per tile
// of NT pairs routed to that expert (the batched expert GEMM). Gate and up are fused (one pass
// reads both rows, the epilogue applies silu(g) * u); the weighted sum over the k experts runs
// in `moe_combine_kernel` in a fixed order, so results do not depend on scheduling.
#pragma once

#include "gemv.cuh"

enum class MoeStage { GateUp, Down };

// Rows of the pair tile `pairs[0..n)`: x rows for GateUp (the token's hidden state) or act rows
// for Down; NULL past n.
template <MoeStage S, int NT>
__device__ __forceinline__ void moe_inputs(const RotaryMoe &p, const int *pairs, int n,
                                           const float **xs) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t < n) {
            const int pair = pairs[t];
            xs[t] = (S == MoeStage::GateUp) ? p.x + static_cast<size_t>(pair / p.k) * p.dim
                                            : p.act + static_cast<size_t>(pair) * p.ffn;
        } else {
            xs[t] = nullptr;
        }
    }
}

// One warp: output row `row` of expert `e` for the NT pairs of the tile.
template <class Q, MoeStage S, int NT>
__device__ __forceinline__ void moe_rows(const RotaryMoe &p, int e, int row, const int *pairs,
                                         int n) {
    const float *xs[NT];
    moe_inputs<S, NT>(p, pairs, n, xs);
    const bool lane0 = threadIdx.x % ROTARY_WARP == 0;
    if (S == MoeStage::GateUp) {
        const size_t rb = row_bytes<Q>(p.dim);
        const uint8_t *g = static_cast<const uint8_t *>(p.gate[e]) + rb * row;
        const uint8_t *u = static_cast<const uint8_t *>(p.up[e]) + rb * row;
        float ag[NT], au[NT];
        warp_row_dot2<Q, NT>(g, u, p.dim, xs, ag, au);
        if (lane0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < n) p.act[static_cast<size_t>(pairs[t]) * p.ffn + row] = silu(ag[t]) * au[t];
            }
        }
    } else {
        const uint8_t *d = static_cast<const uint8_t *>(p.down[e]) + row_bytes<Q>(p.ffn) * row;
        float acc[NT];
        warp_row_dot<Q, NT>(d, p.ffn, xs, acc);
        if (lane0) {
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < n) p.out[static_cast<size_t>(pairs[t]) * p.dim + row] = acc[t];
            }
        }
    }
}

// Decode path: block (row tile, pair).
template <class Q, MoeStage S, int WARPS>
__global__ void __launch_bounds__(WARPS *ROTARY_WARP) moe_pair_kernel(RotaryMoe p) {
    const int rows = (S == MoeStage::GateUp) ? p.ffn : p.dim;
    const int row = blockIdx.x * WARPS + threadIdx.x / ROTARY_WARP;
    if (row >= rows) return;
    const int pair = blockIdx.y;
    const int e = p.ids[pair];
    if (e < 0 || e >= p.n_experts) return;  // -1-e: computed on the host (abi.h)
    moe_rows<Q, S, 1>(p, e, row, &pair, 1);
}

// Prefill path: block (row tile, expert); the expert's pairs in tiles of NT.
template <class Q, MoeStage S, int WARPS, int NT>
__global__ void __launch_bounds__(WARPS *ROTARY_WARP) moe_grouped_kernel(RotaryMoe p) {
    const int rows = (S == MoeStage::GateUp) ? p.ffn : p.dim;
    const int row = blockIdx.x * WARPS + threadIdx.x / ROTARY_WARP;
    const int e = blockIdx.y;
    const int begin = p.group_offsets[e], end = p.group_offsets[e + 1];
    if (row >= rows || begin == end) return;
    for (int i = begin; i < end; i += NT) {
        const int n = min(NT, end - i);
        moe_rows<Q, S, NT>(p, e, row, p.group_pairs + i, n);
    }
}

template <class Q, MoeStage S, int WARPS, int NT>
int moe_stage_launch(const RotaryMoe &p, bool grouped, cudaStream_t stream) {
    const int rows = (S == MoeStage::GateUp) ? p.ffn : p.dim;
    if (grouped) {
        const dim3 grid(ceil_div(rows, WARPS), p.n_experts);
        return rotary_launch<moe_grouped_kernel<Q, S, WARPS, NT>>(
            grid, WARPS * ROTARY_WARP, 0, stream, p);
    }
    const dim3 grid(ceil_div(rows, WARPS), p.n_tokens * p.k);
    return rotary_launch<moe_pair_kernel<Q, S, WARPS>>(grid, WARPS * ROTARY_WARP, 0, stream, p);
}

// The per-format dispatch of each stage: gen/ writes their definitions (dispatch.cu), choosing
// the instance for the format and the device's SM.
int rotary_moe_gate_up_dispatch(const RotaryMoe *p, int grouped, void *stream);
int rotary_moe_down_dispatch(const RotaryMoe *p, int grouped, void *stream);
