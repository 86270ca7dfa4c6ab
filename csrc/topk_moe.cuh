// Router: softmax over the experts → top-k → optional renormalisation, one warp per token, no
// host round trip (llama.cpp's topk-moe fusion is the model). Each lane holds n_experts / 32
// probabilities in registers; k rounds of a warp arg-max (largest value, lower id on ties, as
// the CPU's sort) pick the experts.
#pragma once

#include "include/common.cuh"

#define TOPK_PER_LANE (ROTARY_MAX_EXPERTS / ROTARY_WARP)

__global__ void topk_moe_kernel(RotaryTopkMoe p);
