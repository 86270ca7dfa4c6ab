#include "deltanet.cuh"

#define MAXK ROTARY_MAX_CONV_KERNEL

// Thread c = channel. The window is right-aligned in registers: win[MAXK - 1] is the current
// input, win[MAXK - kernel .. MAXK - 1) the previous kernel - 1 (oldest first), paired with
// w[c, 0 .. kernel) at the same slots; every index is static after unrolling. The products
// are summed oldest first, as the CPU does.
__global__ void gdn_conv_kernel(RotaryGdnConv p) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) return;
    const int first = MAXK - p.kernel;  // the window's first slot
    const int64_t ch = p.channels;
    float w[MAXK], win[MAXK];
#pragma unroll
    for (int m = 0; m < MAXK; ++m) {
        const int j = m - first;
        w[m] = j >= 0 ? p.w[c * static_cast<int64_t>(p.kernel) + j] : 0.0f;
        win[m] = (j >= 0 && m < MAXK - 1) ? p.state[j * ch + c] : 0.0f;
    }
    for (int t = 0; t < p.n_tokens; ++t) {
        float *xt = p.x + t * ch + c;
        win[MAXK - 1] = *xt;
        float acc = 0.0f;
#pragma unroll
        for (int m = 0; m < MAXK; ++m) {
            if (m >= first) acc += w[m] * win[m];
        }
        *xt = silu(acc);
#pragma unroll
        for (int m = 0; m + 1 < MAXK; ++m) win[m] = win[m + 1];
    }
    // After the last shift, slots first .. MAXK - 1 hold the last kernel - 1 inputs.
#pragma unroll
    for (int m = 0; m + 1 < MAXK; ++m) {
        if (m >= first) p.state[(m - first) * ch + c] = win[m];
    }
}

// Thread i = (token, value head h).
__global__ void gdn_gates_kernel(RotaryGdnGates p) {
    const int64_t n = static_cast<int64_t>(p.n_tokens) * p.n_v_heads;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int h = static_cast<int>(i % p.n_v_heads);
    p.beta[i] = sigmoid(p.beta[i]);
    const float x = p.alpha[i] + p.dt_bias[h];
    const float softplus = x > 20.0f ? x : log1pf(expf(x));  // torch's threshold
    p.alpha[i] = expf(p.a[h] * softplus);
}

// Block (value head h, column slice): GDN_WARPS warps of GDN_COLS lanes. Thread (w, j) owns
// column col = slice * GDN_COLS + j for rows [w * rows, (w + 1) * rows) of the head's state;
// those shared-memory cells are only ever touched by it (s[i][j]: lane j's bank, no conflicts).
// Dynamic shared memory: s [head_k, GDN_COLS] | q [head_k] | k [head_k] | partial sums of Sᵀk
// and of Sᵀq, [GDN_WARPS, GDN_COLS] each.
__global__ void __launch_bounds__(GDN_COLS * GDN_WARPS) gdn_rule_kernel(RotaryGdnRule p) {
    ROTARY_DYNAMIC_SHARED(float, smem);
    const int dk = p.head_k, dv = p.head_v, nk = p.n_k_heads, nv = p.n_v_heads;
    float *s = smem;
    float *qs = s + dk * GDN_COLS;
    float *ks = qs + dk;
    float *part_k = ks + dk;
    float *part_q = part_k + GDN_WARPS * GDN_COLS;
    const int h = blockIdx.x;
    const int lane = threadIdx.x % ROTARY_WARP, warp = threadIdx.x / ROTARY_WARP;
    const int col = blockIdx.y * GDN_COLS + lane;
    const bool active = col < dv;
    const int kh = p.order == ROTARY_GDN_TILED ? h % nk : h / (nv / nk);
    const int rows = (dk + GDN_WARPS - 1) / GDN_WARPS;
    const int i0 = warp * rows, i1 = min(dk, i0 + rows);
    const int64_t channels = 2LL * nk * dk + static_cast<int64_t>(nv) * dv;
    float *state = p.state + static_cast<int64_t>(h) * dk * dv;  // [dk, dv]
    if (active) {
        for (int i = i0; i < i1; ++i) {
            s[i * GDN_COLS + lane] = state[static_cast<int64_t>(i) * dv + col];
        }
    }
    const float scale = 1.0f / sqrtf(static_cast<float>(dk));
    for (int t = 0; t < p.n_tokens; ++t) {
        const float *row = p.qkv + t * channels;  // [q nk·dk | k nk·dk | v nv·dv]
        for (int i = threadIdx.x; i < dk; i += blockDim.x) {
            qs[i] = row[static_cast<int64_t>(kh) * dk + i];
            ks[i] = row[static_cast<int64_t>(nk + kh) * dk + i];
        }
        __syncthreads();
        // l2 norms: each warp sums the same values in the same order, so all agree.
        float sq = 0.0f, sk = 0.0f;
        for (int i = lane; i < dk; i += ROTARY_WARP) {
            sq += qs[i] * qs[i];
            sk += ks[i] * ks[i];
        }
        const float qf = 1.0f / sqrtf(warp_sum(sq) + 1e-6f) * scale;
        const float kf = 1.0f / sqrtf(warp_sum(sk) + 1e-6f);
        const float beta = p.beta[t * nv + h], decay = p.decay[t * nv + h];
        // S ← decay·S and this warp's part of Sᵀk.
        float acc = 0.0f;
        if (active) {
            for (int i = i0; i < i1; ++i) {
                const float x = s[i * GDN_COLS + lane] * decay;
                s[i * GDN_COLS + lane] = x;
                acc += x * (ks[i] * kf);
            }
        }
        part_k[warp * GDN_COLS + lane] = acc;
        __syncthreads();
        // u = beta·(v − Sᵀk); S ← S + k uᵀ and this warp's part of o = Sᵀq.
        float stk = 0.0f;
#pragma unroll
        for (int w = 0; w < GDN_WARPS; ++w) stk += part_k[w * GDN_COLS + lane];
        const float v = active ? row[2LL * nk * dk + static_cast<int64_t>(h) * dv + col] : 0.0f;
        const float u = (v - stk) * beta;
        acc = 0.0f;
        if (active) {
            for (int i = i0; i < i1; ++i) {
                const float x = s[i * GDN_COLS + lane] + (ks[i] * kf) * u;
                s[i * GDN_COLS + lane] = x;
                acc += x * (qs[i] * qf);
            }
        }
        part_q[warp * GDN_COLS + lane] = acc;
        __syncthreads();
        if (warp == 0 && active) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < GDN_WARPS; ++w) o += part_q[w * GDN_COLS + lane];
            p.o[(static_cast<int64_t>(t) * nv + h) * dv + col] = o;
        }
        // The next token overwrites qs, ks and part_k only after every warp passed here.
        __syncthreads();
    }
    if (active) {
        for (int i = i0; i < i1; ++i) {
            state[static_cast<int64_t>(i) * dv + col] = s[i * GDN_COLS + lane];
        }
    }
}

// Warp per row; lane l holds elements l, l + 32, ... of x and z in registers.
__global__ void gated_norm_kernel(RotaryGatedNorm p) {
    const int lane = threadIdx.x % ROTARY_WARP;
    const int r = blockIdx.x * GATED_NORM_WARPS + threadIdx.x / ROTARY_WARP;
    if (r >= p.rows) return;
    float *x = p.x + static_cast<int64_t>(r) * p.width;
    const float *z = p.z + static_cast<int64_t>(r) * p.width;
    float xs[GATED_NORM_PER_LANE];
    float ss = 0.0f;
#pragma unroll
    for (int m = 0; m < GATED_NORM_PER_LANE; ++m) {
        const int i = lane + m * ROTARY_WARP;
        xs[m] = i < p.width ? x[i] : 0.0f;
        ss += xs[m] * xs[m];
    }
    // As the CPU: 1 / sqrt(mean + eps), then ((x · inv) · w) · silu(z).
    const float inv = 1.0f / sqrtf(warp_sum(ss) / static_cast<float>(p.width) + p.eps);
#pragma unroll
    for (int m = 0; m < GATED_NORM_PER_LANE; ++m) {
        const int i = lane + m * ROTARY_WARP;
        if (i < p.width) x[i] = xs[m] * inv * p.w[i] * silu(z[i]);
    }
}

extern "C" int rotary_gdn_conv(const RotaryGdnConv *p, void *stream) {
    if (p->kernel < 1 || p->kernel > ROTARY_MAX_CONV_KERNEL) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (p->n_tokens <= 0 || p->channels <= 0) return 0;
    return rotary_launch<gdn_conv_kernel>(ceil_div(p->channels, 128), 128, 0,
                             static_cast<cudaStream_t>(stream), *p);
}

extern "C" int rotary_gdn_gates(const RotaryGdnGates *p, void *stream) {
    const long long n = static_cast<long long>(p->n_tokens) * p->n_v_heads;
    if (n <= 0) return 0;
    return rotary_launch<gdn_gates_kernel>(ceil_div(n, 256), 256, 0,
                             static_cast<cudaStream_t>(stream), *p);
}

extern "C" int rotary_gdn_rule(const RotaryGdnRule *p, void *stream) {
    if (p->head_k < 1 || p->head_k > ROTARY_MAX_GDN_HEAD_K || p->head_v < 1 || p->n_k_heads < 1 ||
        p->n_v_heads < p->n_k_heads || p->n_v_heads % p->n_k_heads != 0) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (p->n_tokens <= 0) return 0;
    // 35 KiB at head_k = 256: under the 48 KiB every SM gives without an opt-in.
    const size_t smem = sizeof(float) * (static_cast<size_t>(p->head_k) * GDN_COLS + 2 * p->head_k +
                                         2 * GDN_WARPS * GDN_COLS);
    const dim3 grid(p->n_v_heads, ceil_div(p->head_v, GDN_COLS));
    return rotary_launch<gdn_rule_kernel>(grid, GDN_COLS * GDN_WARPS, smem,
                             static_cast<cudaStream_t>(stream), *p);
}

extern "C" int rotary_gated_norm(const RotaryGatedNorm *p, void *stream) {
    if (p->width < 1 || p->width > ROTARY_MAX_GATED_NORM_WIDTH) {
        return static_cast<int>(cudaErrorInvalidValue);
    }
    if (p->rows <= 0) return 0;
    const unsigned blocks = ceil_div(p->rows, GATED_NORM_WARPS);
    const int threads = GATED_NORM_WARPS * ROTARY_WARP;
    return rotary_launch<gated_norm_kernel>(blocks, threads, 0,
                             static_cast<cudaStream_t>(stream), *p);
}
