// Gated DeltaNet, the linear-attention mixer of qwen35moe (src/model/deltanet.rs is the
// reference; see RotaryGdnConv/Gates/Rule and RotaryGatedNorm in include/abi.h). All fp32, with
// expf/log1pf/sqrtf rather than fast-math intrinsics; scalar loads (4-byte alignment suffices).
//
// - gdn_conv: one thread per channel walks the n tokens in order with the window (at most
//   ROTARY_MAX_CONV_KERNEL inputs) in registers; the conv state is read once at the start and
//   written once at the end.
// - gdn_gates: one thread per (token, value head).
// - gdn_rule: the sequential recurrence token by token (not the chunked WY form). Grid (value
//   head, slice of GDN_COLS value columns); lane j of every warp owns column j of the slice and
//   warp w a contiguous quarter of the key rows, so the state slice [head_k, GDN_COLS] is read
//   from global memory once, coalesced along head_v, lives in shared memory across all the
//   tokens of the call (decode: 1; prefill: the micro-batch), and is written back once. Decode
//   is memory-bound on that one read and one write of the state. Per token, the partial sums
//   over each warp's rows (Sᵀk, then Sᵀq) are combined across the warps in a fixed order.
// - gated_norm: one warp per row (width <= ROTARY_MAX_GATED_NORM_WIDTH, in registers).
#pragma once

#include "include/common.cuh"

#define GDN_COLS ROTARY_WARP
#define GDN_WARPS 4
#define GATED_NORM_PER_LANE (ROTARY_MAX_GATED_NORM_WIDTH / ROTARY_WARP)
#define GATED_NORM_WARPS 4

__global__ void gdn_conv_kernel(RotaryGdnConv p);
__global__ void gdn_gates_kernel(RotaryGdnGates p);
__global__ void gdn_rule_kernel(RotaryGdnRule p);
__global__ void gated_norm_kernel(RotaryGatedNorm p);
