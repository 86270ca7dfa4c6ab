#include "topk_moe.cuh"

__global__ void topk_moe_kernel(RotaryTopkMoe p) {
    const int warps = blockDim.x / ROTARY_WARP;
    const int t = blockIdx.x * warps + threadIdx.x / ROTARY_WARP;
    const int lane = threadIdx.x % ROTARY_WARP;
    if (t >= p.n_tokens) return;
    const float *logits = p.logits + static_cast<size_t>(t) * p.n_experts;

    // Softmax: v[i] holds expert lane + 32 i.
    float v[TOPK_PER_LANE];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < TOPK_PER_LANE; i++) {
        const int e = lane + ROTARY_WARP * i;
        v[i] = (e < p.n_experts) ? logits[e] : -INFINITY;
        mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < TOPK_PER_LANE; i++) {
        const int e = lane + ROTARY_WARP * i;
        v[i] = (e < p.n_experts) ? expf(v[i] - mx) : 0.0f;
        sum += v[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < TOPK_PER_LANE; i++) {
        const int e = lane + ROTARY_WARP * i;
        v[i] = (e < p.n_experts) ? v[i] / sum : -INFINITY;
    }

    // k rounds of arg-max; the winner's slot is then excluded.
    float chosen[ROTARY_MAX_EXPERTS_USED];
    float chosen_sum = 0.0f;
    for (int j = 0; j < p.k; j++) {
        float best = -INFINITY;
        int best_e = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < TOPK_PER_LANE; i++) {
            const int e = lane + ROTARY_WARP * i;
            if (e < p.n_experts && (v[i] > best || (v[i] == best && e < best_e))) {
                best = v[i];
                best_e = e;
            }
        }
#pragma unroll
        for (int o = ROTARY_WARP / 2; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(0xffffffffu, best, o);
            const int oe = __shfl_xor_sync(0xffffffffu, best_e, o);
            if (ob > best || (ob == best && oe < best_e)) {
                best = ob;
                best_e = oe;
            }
        }
        if (best_e >= p.n_experts) {
            // Only NaN probabilities (NaN logits) leave no winner: pass the NaN on, as the CPU
            // forward does, with a valid id so the expert kernels still write every row.
            best_e = j;
            best = NAN;
        }
        if (best_e % ROTARY_WARP == lane) {
#pragma unroll
            for (int i = 0; i < TOPK_PER_LANE; i++) {
                if (lane + ROTARY_WARP * i == best_e) v[i] = -INFINITY;
            }
        }
        chosen[j] = best;
        chosen_sum += best;
        if (lane == 0) p.ids[static_cast<size_t>(t) * p.k + j] = best_e;
    }
    if (lane == 0) {
        for (int j = 0; j < p.k; j++) {
            const float w = (p.norm == ROTARY_TOPK_RENORM) ? chosen[j] / chosen_sum : chosen[j];
            p.weights[static_cast<size_t>(t) * p.k + j] = w;
        }
    }
}

extern "C" int rotary_topk_moe(const RotaryTopkMoe *p, void *stream) {
    if (p->n_tokens <= 0) return 0;
    if (p->n_experts <= 0 || p->n_experts > ROTARY_MAX_EXPERTS || p->k <= 0 ||
        p->k > ROTARY_MAX_EXPERTS_USED || p->k > p->n_experts) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    const int warps = 4;
    return rotary_launch<topk_moe_kernel>(ceil_div(p->n_tokens, warps), warps * ROTARY_WARP, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
