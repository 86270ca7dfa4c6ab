// Embedding gather: x[t] = dequantize(table[tokens[t]]), one block per token, a chunk per
// thread. gen/ instantiates embed_launch<Quant> per format.
#pragma once

#include "include/quant.cuh"

template <class Q>
__global__ void embed_kernel(RotaryEmbed p) {
    const int t = blockIdx.x;
    const uint8_t *row = static_cast<const uint8_t *>(p.table) + row_bytes<Q>(p.dim) * p.tokens[t];
    float *x = p.x + static_cast<size_t>(t) * p.dim;
    for (int c = threadIdx.x; c < p.dim / Q::CHUNK; c += blockDim.x) {
        float v[Q::CHUNK];
        Q::dequant(row, c, v);
#pragma unroll
        for (int i = 0; i < Q::CHUNK; i++) x[c * Q::CHUNK + i] = v[i];
    }
}

template <class Q>
int embed_launch(const RotaryEmbed &p, cudaStream_t stream) {
    return rotary_launch<embed_kernel<Q>>(p.n_tokens, 128, 0, stream, p);
}
