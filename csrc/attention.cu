#include "attention.cuh"

__global__ void __launch_bounds__(ATTN_WARPS *ROTARY_WARP) attention_kernel(RotaryAttention p) {
    __shared__ float s_max[ATTN_WARPS], s_sum[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][ROTARY_MAX_HEAD_DIM];
    const int t = blockIdx.x, h = blockIdx.y;
    const int warp = threadIdx.x / ROTARY_WARP, lane = threadIdx.x % ROTARY_WARP;
    const int dims = p.head_dim / ROTARY_WARP;  // per lane
    const int kv_head = h / (p.n_heads / p.n_kv_heads);
    const size_t q_at = (static_cast<size_t>(t) * p.n_heads + h) * p.head_dim;

    float q[ATTN_DIMS_PER_LANE], acc[ATTN_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
        q[i] = i < dims ? __half2float(__float2half_rn(p.q[q_at + lane + ROTARY_WARP * i])) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int n_seen = p.pos0 + t + 1;
    for (int pos = warp; pos < n_seen; pos += ATTN_WARPS) {
        const size_t at = kv_row(p.cache, pos) + static_cast<size_t>(kv_head) * p.head_dim;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            if (i < dims) s += q[i] * f16_bits_to_float(p.cache.k[at + lane + ROTARY_WARP * i]);
        }
        s = warp_sum(s) * p.scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first position (m = -inf)
        const float w = expf(s - m_new);
        l = l * corr + w;
#pragma unroll
        for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
            if (i < dims) {
                const float v = f16_bits_to_float(p.cache.v[at + lane + ROTARY_WARP * i]);
                acc[i] = acc[i] * corr + w * v;
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATTN_DIMS_PER_LANE; i++) {
        if (i < dims) s_acc[warp][lane + ROTARY_WARP * i] = acc[i];
    }
    __syncthreads();
    // Merge: o = Σ_w acc_w e^(m_w - M) / Σ_w l_w e^(m_w - M); warps that saw nothing weigh 0.
    float mx = -INFINITY;
    for (int w = 0; w < ATTN_WARPS; w++) mx = fmaxf(mx, s_max[w]);
    float total = 0.0f;
    float scale_w[ATTN_WARPS];
    for (int w = 0; w < ATTN_WARPS; w++) {
        scale_w[w] = s_max[w] == -INFINITY ? 0.0f : expf(s_max[w] - mx);
        total += s_sum[w] * scale_w[w];
    }
    for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) o += s_acc[w][d] * scale_w[w];
        p.o[q_at + d] = o / total;
    }
}

extern "C" int rotary_attention(const RotaryAttention *p, void *stream) {
    if (p->n_tokens <= 0) return 0;
    if (p->head_dim % ROTARY_WARP != 0 || p->head_dim > ROTARY_MAX_HEAD_DIM ||
        p->n_kv_heads <= 0 || p->n_heads % p->n_kv_heads != 0 || p->cache.page_size <= 0) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    const dim3 grid(p->n_tokens, p->n_heads);
    return rotary_launch<attention_kernel>(grid, ATTN_WARPS * ROTARY_WARP, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
