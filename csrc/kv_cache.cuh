// The paged f16 KV cache: storing a batch's keys and values at their positions. Addressing
// (page_table, page_size) is shared with the attention kernel through kv_row().
#pragma once

#include "include/common.cuh"

// The first f16 of position `pos` in a cache tensor of the layer.
__device__ __forceinline__ size_t kv_row(const RotaryKvCache &c, int pos) {
    const int page = c.page_table[pos / c.page_size];
    return (static_cast<size_t>(page) * c.page_size + pos % c.page_size) * c.kv_width;
}

__global__ void kv_store_kernel(RotaryKvStore p);
