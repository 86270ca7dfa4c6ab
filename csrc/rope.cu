#include "rope.cuh"

// Block (token, head); thread i rotates pair i.
__global__ void rope_neox_kernel(RotaryRope p) {
    const int t = blockIdx.x, h = blockIdx.y;
    const int half = p.rope_dims / 2;
    float *x = p.x + (static_cast<size_t>(t) * p.n_heads + h) * p.head_dim;
    const float pos = static_cast<float>(p.pos0 + t);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(pos * p.inv_freq[i], &s, &c);
        const float a = x[i], b = x[i + half];
        x[i] = a * c - b * s;
        x[i + half] = a * s + b * c;
    }
}

extern "C" int rotary_rope_neox(const RotaryRope *p, void *stream) {
    if (p->n_tokens <= 0) return 0;
    if (p->rope_dims > p->head_dim || p->rope_dims % 2 != 0) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    const dim3 grid(p->n_tokens, p->n_heads);
    return rotary_launch<rope_neox_kernel>(grid, 64, 0, static_cast<cudaStream_t>(stream), *p);
}
