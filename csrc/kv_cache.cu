#include "kv_cache.cuh"

// Block per token; threads over kv_width.
__global__ void kv_store_kernel(RotaryKvStore p) {
    const int t = blockIdx.x;
    const size_t at = kv_row(p.cache, p.pos0 + t);
    const float *k = p.k + static_cast<size_t>(t) * p.cache.kv_width;
    const float *v = p.v + static_cast<size_t>(t) * p.cache.kv_width;
    for (int i = threadIdx.x; i < p.cache.kv_width; i += blockDim.x) {
        p.cache.k[at + i] = float_to_f16_bits(k[i]);
        p.cache.v[at + i] = float_to_f16_bits(v[i]);
    }
}

extern "C" int rotary_kv_store(const RotaryKvStore *p, void *stream) {
    if (p->n_tokens <= 0) return 0;
    if (p->cache.page_size <= 0) return static_cast<int>(cudaErrorInvalidValue);
    return rotary_launch<kv_store_kernel>(p->n_tokens, 256, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
