// Causal GQA attention over the paged f16 KV cache, for decode and prefill alike.
//
// Block (token, head), ATTN_WARPS warps. Lane l owns dimensions l, l + 32, ... of the head
// (coalesced f16 loads of each cached row); warp w walks positions w, w + ATTN_WARPS, ...
// with an online softmax (running max, sum and weighted V), and the warps' partial results
// merge in shared memory at the end. q is rounded to f16 first, as the CPU backend does for
// its f16 cache.
#pragma once

#include "kv_cache.cuh"

#define ATTN_WARPS 4
#define ATTN_DIMS_PER_LANE (ROTARY_MAX_HEAD_DIM / ROTARY_WARP)

__global__ void attention_kernel(RotaryAttention p);
