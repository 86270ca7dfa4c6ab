/* The one header shared by the Rust host and the CUDA kernels (the only bindgen input).
 *
 * Plain C: one parameter struct per op (flash-attention's params-struct pattern), enums for
 * every variant, and the extern "C" entry points. Every entry point returns a cudaError_t as
 * an int (0 = success) and never exits or prints. Pointers are device pointers unless a
 * field says host; `stream` is a cudaStream_t (NULL = the legacy default stream).
 * Shapes are written [outer, inner], row-major. Token counts are at most 65535 (grid limits;
 * the host runs prompts in micro-batches far below that). Weight matrices, and each expert of
 * the MoE pointer tables, start aligned to their format's block as a stacked tensor's rows do:
 * 16 bytes for F32/F16/BF16/Q4_K/Q5_K, else the largest power of two dividing the block's
 * bytes (MXFP4's 17: none). Rows are read with loads no wider than that (quant.cuh). Row
 * lengths are multiples of 32 and of the format's block. */
#ifndef ROTARY_ABI_H
#define ROTARY_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weight formats, numbered as ggml's `enum ggml_type` (and src/quant/GgmlType). */
typedef enum RotaryQuant {
    ROTARY_QUANT_F32 = 0,
    ROTARY_QUANT_F16 = 1,
    ROTARY_QUANT_Q4_0 = 2,
    ROTARY_QUANT_Q4_1 = 3,
    ROTARY_QUANT_Q5_0 = 6,
    ROTARY_QUANT_Q5_1 = 7,
    ROTARY_QUANT_Q8_0 = 8,
    ROTARY_QUANT_Q2_K = 10,
    ROTARY_QUANT_Q3_K = 11,
    ROTARY_QUANT_Q4_K = 12,
    ROTARY_QUANT_Q5_K = 13,
    ROTARY_QUANT_Q6_K = 14,
    ROTARY_QUANT_IQ2_XXS = 16,
    ROTARY_QUANT_IQ2_XS = 17,
    ROTARY_QUANT_IQ3_XXS = 18,
    ROTARY_QUANT_IQ1_S = 19,
    ROTARY_QUANT_IQ4_NL = 20,
    ROTARY_QUANT_IQ3_S = 21,
    ROTARY_QUANT_IQ2_S = 22,
    ROTARY_QUANT_IQ4_XS = 23,
    ROTARY_QUANT_IQ1_M = 29,
    ROTARY_QUANT_BF16 = 30,
    ROTARY_QUANT_MXFP4 = 39,
    ROTARY_QUANT_NVFP4 = 40,
} RotaryQuant;

/* How the router's top-k weights are finished (Qwen3's `norm_topk_prob`). */
typedef enum RotaryTopkNorm {
    ROTARY_TOPK_SOFTMAX = 0,  /* the softmax probabilities of the chosen experts */
    ROTARY_TOPK_RENORM = 1,   /* the same, divided by their sum */
} RotaryTopkNorm;

/* Which part of RotaryMoe runs: all of it, or its two halves apart (the rotary's hybrid step
 * launches the expert stages, computes the CPU experts meanwhile, uploads their rows, then
 * launches the combine). */
typedef enum RotaryMoeStage {
    ROTARY_MOE_ALL = 0,      /* expert stages, then the combine */
    ROTARY_MOE_EXPERTS = 1,  /* out[p] for every pair with id >= 0; residual untouched */
    ROTARY_MOE_COMBINE = 2,  /* residual += the weighted out rows (every pair's row written) */
} RotaryMoeStage;

typedef enum RotaryCopyKind {
    ROTARY_COPY_H2D = 1,
    ROTARY_COPY_D2H = 2,
    ROTARY_COPY_D2D = 3,
} RotaryCopyKind;

/* y[t, r] = Σ_c W[r, c] · x[t, c]. W is `rows` rows of the quant's row bytes, 16-byte aligned. */
typedef struct RotaryGemv {
    RotaryQuant quant;
    const void *w;      /* [rows, cols] quantized */
    const float *x;     /* [n_tokens, cols] */
    float *y;           /* [n_tokens, rows] */
    int32_t rows;
    int32_t cols;       /* a multiple of the quant's block */
    int32_t n_tokens;
} RotaryGemv;

/* Router: p = softmax(logits[t]); ids[t] = top-k of p (largest first, lower id on ties);
 * weights[t] = p[ids] (renormalised by RENORM). */
typedef struct RotaryTopkMoe {
    const float *logits;  /* [n_tokens, n_experts] */
    int32_t *ids;         /* [n_tokens, k] */
    float *weights;       /* [n_tokens, k] */
    int32_t n_tokens;
    int32_t n_experts;    /* <= ROTARY_MAX_EXPERTS */
    int32_t k;            /* <= ROTARY_MAX_EXPERTS_USED */
    RotaryTopkNorm norm;
} RotaryTopkMoe;

#define ROTARY_MAX_EXPERTS 512
#define ROTARY_MAX_EXPERTS_USED 16
#define ROTARY_MAX_HEAD_DIM 256

/* Routed SwiGLU experts for n_tokens tokens, k experts each (a "pair" is p = t * k + j):
 *   act[p] = silu(gate[e] · x[t]) * (up[e] · x[t])      e = ids[p]
 *   out[p] = down[e] · act[p]
 *   residual[t] += Σ_j weights[t * k + j] · out[t * k + j]   (j in order: deterministic)
 * The experts' matrices are reached through per-expert pointer tables, so an expert can live
 * anywhere in VRAM (a resident tensor or a cache slot). A negative id -1-e marks a pair the
 * host computes itself (the rotary's CPU fallback): the expert stages skip it, and its `out`
 * row is written by the host before the combine runs (`stage`). Few tokens (decode) run one block row
 * per pair; many tokens (prefill) are first grouped by expert (`group_offsets`, `group_pairs`)
 * and each expert's weights are read once per tile of tokens (a batched expert GEMM). */
typedef struct RotaryMoe {
    RotaryQuant quant_gate_up;       /* gate and up share a format */
    RotaryQuant quant_down;
    const void *const *gate;         /* [n_experts] → [ffn, dim] */
    const void *const *up;           /* [n_experts] → [ffn, dim] */
    const void *const *down;         /* [n_experts] → [dim, ffn] */
    const int32_t *ids;              /* [n_tokens, k] */
    const float *weights;            /* [n_tokens, k] */
    const float *x;                  /* [n_tokens, dim] the normed hidden state */
    float *act;                      /* [n_tokens * k, ffn] scratch */
    float *out;                      /* [n_tokens * k, dim] scratch */
    int32_t *group_offsets;          /* [n_experts + 1] scratch */
    int32_t *group_pairs;            /* [n_tokens * k] scratch */
    float *residual;                 /* [n_tokens, dim] */
    int32_t dim;
    int32_t ffn;
    int32_t n_tokens;
    int32_t k;
    int32_t n_experts;
    RotaryMoeStage stage;
} RotaryMoe;

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for `rows` rows of `width` (in place allowed).
 * Also the per-head q/k norm: rows = n_tokens * n_heads, width = head_dim. */
typedef struct RotaryRmsNorm {
    const float *x;   /* [rows, width] */
    const float *w;   /* [width] */
    float *y;         /* [rows, width] */
    int32_t rows;
    int32_t width;
    float eps;
} RotaryRmsNorm;

/* NeoX RoPE in place: in each head, pairs (i, i + rope_dims/2) for i < rope_dims/2 rotate by
 * (pos0 + t) * inv_freq[i]. */
typedef struct RotaryRope {
    float *x;               /* [n_tokens, n_heads, head_dim] */
    const float *inv_freq;  /* [rope_dims / 2] */
    int32_t n_tokens;
    int32_t n_heads;
    int32_t head_dim;
    int32_t rope_dims;
    int32_t pos0;
} RotaryRope;

/* The paged KV cache of one layer: pages of `page_size` positions, each [page_size, kv_width]
 * f16; position p lives in page page_table[p / page_size] at row p % page_size. */
typedef struct RotaryKvCache {
    uint16_t *k;                /* [n_pages, page_size, kv_width] f16 bits */
    uint16_t *v;                /* [n_pages, page_size, kv_width] f16 bits */
    const int32_t *page_table;  /* [n_ctx / page_size] */
    int32_t page_size;
    int32_t kv_width;           /* n_kv_heads * head_dim */
} RotaryKvCache;

/* Store k, v (rounded to f16) at positions pos0 .. pos0 + n_tokens. */
typedef struct RotaryKvStore {
    RotaryKvCache cache;
    const float *k;   /* [n_tokens, kv_width] */
    const float *v;   /* [n_tokens, kv_width] */
    int32_t n_tokens;
    int32_t pos0;
} RotaryKvStore;

/* Causal GQA attention over the paged cache: token t (at position pos0 + t) of head h sees
 * positions 0 ..= pos0 + t of kv head h / (n_heads / n_kv_heads); q is rounded to f16 before
 * the dot products, as the f16 cache's values are; o = softmax(q·k * scale) · v with an online
 * softmax whose weights stay f32 (the CPU engine rounds them to f16: the results agree to
 * rounding, NMSE ~1e-7). One kernel serves decode (n_tokens = 1) and prefill. */
typedef struct RotaryAttention {
    RotaryKvCache cache;
    const float *q;   /* [n_tokens, n_heads, head_dim] */
    float *o;         /* [n_tokens, n_heads, head_dim] */
    int32_t n_tokens;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;  /* a multiple of 32, <= ROTARY_MAX_HEAD_DIM */
    int32_t pos0;
    float scale;
} RotaryAttention;

/* x[t] = dequantize(table[tokens[t]]). */
typedef struct RotaryEmbed {
    RotaryQuant quant;
    const void *table;       /* [n_vocab, dim] quantized */
    const int32_t *tokens;   /* [n_tokens] (checked < n_vocab by the host) */
    float *x;                /* [n_tokens, dim] */
    int32_t n_tokens;
    int32_t dim;
} RotaryEmbed;

/* y[i] += x[i]. */
typedef struct RotaryAdd {
    float *y;
    const float *x;
    int64_t n;
} RotaryAdd;

/* Gated attention (qwen35moe): the q projection holds [q_h | gate_h] per head.
 * qg [n_tokens, n_heads, 2 * head_dim] → q, gate [n_tokens, n_heads * head_dim]. */
typedef struct RotarySplitGate {
    const float *qg;  /* [n_tokens, n_heads, 2 * head_dim] */
    float *q;         /* [n_tokens, n_heads * head_dim] */
    float *gate;      /* [n_tokens, n_heads * head_dim] */
    int32_t n_tokens;
    int32_t n_heads;
    int32_t head_dim;
} RotarySplitGate;

/* y[i] *= sigmoid(g[i]), i < n (the gated attention's output gate). */
typedef struct RotarySigmoidMul {
    float *y;        /* [n] */
    const float *g;  /* [n] */
    int64_t n;
} RotarySigmoidMul;

/* x[i] = sigmoid(x[i]), i < n (the shared expert's per-token weight). */
typedef struct RotarySigmoid {
    float *x;  /* [n] */
    int64_t n;
} RotarySigmoid;

#define ROTARY_MAX_CONV_KERNEL 8

/* Gated DeltaNet's causal depthwise conv + SiLU, in place, over n_tokens tokens in order:
 *   x[t, c] = silu(Σ_j w[c, j] · in[t - (kernel-1) + j, c])
 * where inputs before token 0 come from `state` (the previous kernel-1 inputs, oldest first),
 * which is then advanced by n_tokens (it ends holding the last kernel-1 inputs). */
typedef struct RotaryGdnConv {
    float *x;         /* [n_tokens, channels] */
    float *state;     /* [kernel - 1, channels] */
    const float *w;   /* [channels, kernel] */
    int32_t n_tokens;
    int32_t channels;
    int32_t kernel;   /* 1 ..= ROTARY_MAX_CONV_KERNEL */
} RotaryGdnConv;

/* Gated DeltaNet gates, per token and value head h, in place:
 *   beta ← sigmoid(beta);  alpha ← exp(a[h] · softplus(alpha + dt_bias[h]))  (the decay)
 * softplus is log(1 + eˣ), linear above 20 (torch's threshold). a = −exp(A_log) < 0. */
typedef struct RotaryGdnGates {
    float *beta;            /* [n_tokens, n_v_heads] */
    float *alpha;           /* [n_tokens, n_v_heads] */
    const float *dt_bias;   /* [n_v_heads] */
    const float *a;         /* [n_v_heads] */
    int32_t n_tokens;
    int32_t n_v_heads;
} RotaryGdnGates;

/* Which key head value head h reads: GGUF tiles the value heads (h % n_k_heads), HF groups
 * them (h / (n_v_heads / n_k_heads)). */
typedef enum RotaryGdnHeadOrder {
    ROTARY_GDN_GROUPED = 0,
    ROTARY_GDN_TILED = 1,
} RotaryGdnHeadOrder;

#define ROTARY_MAX_GDN_HEAD_K 256

/* The gated delta rule over n_tokens tokens, in order (the sequential recurrence; no chunked
 * WY form). Per token, q and k of each key head are l2-normalised (x · rsqrt(Σx² + 1e-6)),
 * q also scaled by 1/sqrt(head_k); then per value head h (key head kh, see the order):
 *   S ← decay·S;  u = beta·(v − Sᵀk);  S ← S + k uᵀ;  o = Sᵀq
 * qkv rows are [q n_k·head_k | k n_k·head_k | v n_v·head_v]. S is fp32 [head_k, head_v] per
 * value head, head_v contiguous. n_v_heads is a multiple of n_k_heads. */
typedef struct RotaryGdnRule {
    const float *qkv;    /* [n_tokens, 2 * n_k_heads * head_k + n_v_heads * head_v] */
    const float *beta;   /* [n_tokens, n_v_heads] */
    const float *decay;  /* [n_tokens, n_v_heads] */
    float *state;        /* [n_v_heads, head_k, head_v] */
    float *o;            /* [n_tokens, n_v_heads * head_v] */
    int32_t n_tokens;
    int32_t n_k_heads;
    int32_t n_v_heads;
    int32_t head_k;      /* <= ROTARY_MAX_GDN_HEAD_K */
    int32_t head_v;
    RotaryGdnHeadOrder order;
} RotaryGdnRule;

#define ROTARY_MAX_GATED_NORM_WIDTH 256

/* Gated RMSNorm in place: x[r] = x[r] / sqrt(mean(x[r]^2) + eps) · w · silu(z[r]). */
typedef struct RotaryGatedNorm {
    float *x;        /* [rows, width] */
    const float *z;  /* [rows, width] */
    const float *w;  /* [width] */
    int32_t rows;
    int32_t width;   /* <= ROTARY_MAX_GATED_NORM_WIDTH */
    float eps;
} RotaryGatedNorm;

typedef struct RotaryDeviceInfo {
    char name[256];
    int32_t cc_major;
    int32_t cc_minor;
    int32_t sm_count;
    uint64_t total_bytes;
    int32_t driver_version;
    int32_t runtime_version;
} RotaryDeviceInfo;

/* Kernels (csrc/<op>.cu, dispatch generated by gen/). */
int rotary_gemv(const RotaryGemv *p, void *stream);
int rotary_topk_moe(const RotaryTopkMoe *p, void *stream);
int rotary_moe(const RotaryMoe *p, void *stream);
int rotary_rmsnorm(const RotaryRmsNorm *p, void *stream);
int rotary_rope_neox(const RotaryRope *p, void *stream);
int rotary_kv_store(const RotaryKvStore *p, void *stream);
int rotary_attention(const RotaryAttention *p, void *stream);
int rotary_embed(const RotaryEmbed *p, void *stream);
int rotary_add(const RotaryAdd *p, void *stream);
int rotary_split_gate(const RotarySplitGate *p, void *stream);
int rotary_sigmoid_mul(const RotarySigmoidMul *p, void *stream);
int rotary_sigmoid(const RotarySigmoid *p, void *stream);
int rotary_gdn_conv(const RotaryGdnConv *p, void *stream);
int rotary_gdn_gates(const RotaryGdnGates *p, void *stream);
int rotary_gdn_rule(const RotaryGdnRule *p, void *stream);
int rotary_gated_norm(const RotaryGatedNorm *p, void *stream);
/* Whether the build has kernels for this quant (1) or not (0). */
int rotary_quant_supported(RotaryQuant q);

/* The runtime, thinly (csrc/runtime.cu). */
int rotary_device_count(int32_t *count);
int rotary_device_info(int32_t ordinal, RotaryDeviceInfo *info);
int rotary_set_device(int32_t ordinal);
int rotary_mem_info(uint64_t *free_bytes, uint64_t *total_bytes);
int rotary_malloc(void **ptr, uint64_t bytes);
int rotary_free(void *ptr);
int rotary_host_alloc_pinned(void **ptr, uint64_t bytes);
int rotary_host_free_pinned(void *ptr);
int rotary_memcpy_async(void *dst, const void *src, uint64_t bytes, RotaryCopyKind kind,
                        void *stream);
int rotary_memset_async(void *ptr, int32_t value, uint64_t bytes, void *stream);
int rotary_stream_create(void **stream);
int rotary_stream_destroy(void *stream);
int rotary_stream_synchronize(void *stream);
/* An event for ordering only (cudaEventDisableTiming: cheaper to record and wait on). */
int rotary_event_create(void **event);
/* An event cudaEventElapsedTime can time. */
int rotary_event_create_timing(void **event);
int rotary_event_destroy(void *event);
/* 0: everything before the event's last record is done; ROTARY_NOT_READY: not yet. Either way
   the thread's last error is left as it was before the call (a not-ready answer is cleared). */
int rotary_event_query(void *event);
int rotary_event_record(void *event, void *stream);
int rotary_stream_wait_event(void *stream, void *event);
int rotary_event_synchronize(void *event);
int rotary_event_elapsed_ms(float *ms, void *start, void *end);
/* The thread's last runtime error, cleared (cudaGetLastError). */
int rotary_get_last_error(void);
const char *rotary_error_name(int code);
const char *rotary_error_string(int code);

/* cudaErrorNotReady. */
#define ROTARY_NOT_READY 600

/* The emulated build's own counters (csrc/emu/runtime.cpp; absent from nvcc builds). */
typedef struct RotaryEmuStats {
    int64_t live_events;        /* created and not destroyed */
    int64_t live_timing_events; /* of those, without cudaEventDisableTiming */
    int64_t events_created;     /* ever */
    uint64_t used_bytes;        /* device memory charged now (context, pages, code, local) */
    uint64_t peak_bytes;        /* the most charged at once since rotary_emu_reset_peak */
    uint64_t code_bytes;        /* of which lazily loaded kernel code */
    uint64_t local_bytes;       /* of which the local-memory reservation of spilling kernels */
    uint64_t kernels_loaded;
} RotaryEmuStats;
int rotary_emu_stats(int32_t device, RotaryEmuStats *out);
int rotary_emu_reset_peak(int32_t device);

#ifdef __cplusplus
}
#endif
#endif /* ROTARY_ABI_H */
