#include "rmsnorm.cuh"

__global__ void rmsnorm_kernel(RotaryRmsNorm p) {
    __shared__ float partial[32];
    const float *x = p.x + static_cast<size_t>(blockIdx.x) * p.width;
    float *y = p.y + static_cast<size_t>(blockIdx.x) * p.width;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < p.width; i += blockDim.x) ss += x[i] * x[i];
    ss = warp_sum(ss);
    const int warp = threadIdx.x / ROTARY_WARP, lane = threadIdx.x % ROTARY_WARP;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        const int n_warps = blockDim.x / ROTARY_WARP;
        ss = warp_sum(lane < n_warps ? partial[lane] : 0.0f);
        if (lane == 0) partial[0] = ss;
    }
    __syncthreads();
    // As the CPU: 1 / sqrt(mean + eps), not the approximate rsqrtf.
    const float inv = 1.0f / sqrtf(partial[0] / static_cast<float>(p.width) + p.eps);
    for (int i = threadIdx.x; i < p.width; i += blockDim.x) y[i] = x[i] * inv * p.w[i];
}

extern "C" int rotary_rmsnorm(const RotaryRmsNorm *p, void *stream) {
    if (p->rows <= 0) return 0;
    const int threads = p->width >= 1024 ? 256 : (p->width >= 256 ? 128 : 32);
    return rotary_launch<rmsnorm_kernel>(p->rows, threads, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
