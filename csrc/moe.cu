// The MoE launcher: grouping by expert (prefill), the two expert stages through the generated
// per-format instances, and the weighted combine into the residual stream.

#include "moe.cuh"

// One block: stable counting sort of the pairs by expert. Thread e scans every pair in order,
// so each expert's list is in pair order and the result is deterministic.
__global__ void moe_group_kernel(RotaryMoe p) {
    __shared__ int counts[ROTARY_MAX_EXPERTS + 1];
    const int n_pairs = p.n_tokens * p.k;
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) {
        int c = 0;
        for (int i = 0; i < n_pairs; i++) c += (p.ids[i] == e);
        counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int sum = 0;
        for (int e = 0; e < p.n_experts; e++) {
            const int c = counts[e];
            p.group_offsets[e] = sum;
            counts[e] = sum;
            sum += c;
        }
        p.group_offsets[p.n_experts] = sum;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < p.n_experts; e += blockDim.x) {
        int at = counts[e];
        for (int i = 0; i < n_pairs; i++) {
            if (p.ids[i] == e) p.group_pairs[at++] = i;
        }
    }
}

// residual[t, i] += Σ_j weights[t, j] · out[t * k + j, i], j in order.
__global__ void moe_combine_kernel(RotaryMoe p) {
    const int t = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.dim) return;
    float acc = 0.0f;
    for (int j = 0; j < p.k; j++) {
        const int pair = t * p.k + j;
        acc += p.weights[pair] * p.out[static_cast<size_t>(pair) * p.dim + i];
    }
    p.residual[static_cast<size_t>(t) * p.dim + i] += acc;
}

// Decode-sized batches run per pair; larger ones group by expert first.
static const int GROUP_MIN_TOKENS = 4;

extern "C" int rotary_moe(const RotaryMoe *p, void *stream) {
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (p->n_tokens <= 0 || p->k <= 0 || p->k > ROTARY_MAX_EXPERTS_USED ||
        p->n_experts <= 0 || p->n_experts > ROTARY_MAX_EXPERTS) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (p->stage != ROTARY_MOE_ALL && p->stage != ROTARY_MOE_EXPERTS &&
        p->stage != ROTARY_MOE_COMBINE) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (p->stage != ROTARY_MOE_COMBINE) {
        const bool grouped = p->n_tokens >= GROUP_MIN_TOKENS;
        if (grouped) {
            const int err = rotary_launch<moe_group_kernel>(1, 256, 0, s, *p);
            if (err != 0) return err;
        }
        int err = rotary_moe_gate_up_dispatch(p, grouped ? 1 : 0, stream);
        if (err != 0) return err;
        err = rotary_moe_down_dispatch(p, grouped ? 1 : 0, stream);
        if (err != 0) return err;
    }
    if (p->stage == ROTARY_MOE_EXPERTS) return 0;
    const dim3 grid(ceil_div(p->dim, 256), p->n_tokens);
    return rotary_launch<moe_combine_kernel>(grid, 256, 0, s, *p);
}
