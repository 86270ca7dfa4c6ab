#include "gated.cuh"

// Thread i writes q[i] and gate[i]: row r = i / head_dim (token, head), column i % head_dim.
__global__ void split_gate_kernel(RotarySplitGate p) {
    const int64_t n = static_cast<int64_t>(p.n_tokens) * p.n_heads * p.head_dim;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int64_t row = i / p.head_dim, col = i % p.head_dim;
    const float *pair = p.qg + row * 2 * p.head_dim;
    p.q[i] = pair[col];
    p.gate[i] = pair[p.head_dim + col];
}

__global__ void sigmoid_mul_kernel(RotarySigmoidMul p) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < p.n) p.y[i] *= sigmoid(p.g[i]);
}

__global__ void sigmoid_kernel(RotarySigmoid p) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] = sigmoid(p.x[i]);
}

extern "C" int rotary_split_gate(const RotarySplitGate *p, void *stream) {
    const long long n = static_cast<long long>(p->n_tokens) * p->n_heads * p->head_dim;
    if (n <= 0) return 0;
    return rotary_launch<split_gate_kernel>(ceil_div(n, 256), 256, 0,
                             static_cast<cudaStream_t>(stream), *p);
}

extern "C" int rotary_sigmoid_mul(const RotarySigmoidMul *p, void *stream) {
    if (p->n <= 0) return 0;
    return rotary_launch<sigmoid_mul_kernel>(ceil_div(p->n, 256), 256, 0,
                             static_cast<cudaStream_t>(stream), *p);
}

extern "C" int rotary_sigmoid(const RotarySigmoid *p, void *stream) {
    if (p->n <= 0) return 0;
    return rotary_launch<sigmoid_kernel>(ceil_div(p->n, 256), 256, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
