//! The op vocabulary: every kernel the forward pass launches, with the contracts of
//! csrc/include/abi.h in Rust terms, and its scalar reference (the oracle, `oracle` and
//! `deltanet`). Devices implement the vocabulary (src/rotary/device.rs): `cpu` and `cpu-ref`
//! and the simulator through `host` (kernels on host memory), `cuda` through the FFI.
//! Nothing here knows a model, a device or the CLI.

pub mod deltanet;
pub mod host;
pub mod oracle;

use crate::quant::GgmlType;

/// A device address: a CUDA device pointer, or for the simulator a host pointer into memory
/// the simulator owns. Kernels receive addresses, as the CUDA kernels receive pointers.
pub type Addr = u64;

/// How a KV cache stores keys and values.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KvType {
    /// Half the memory; q and the attention weights are rounded to f16 for the dot products,
    /// as llama.cpp's default f16 cache does (abi.h's only cache type).
    F16,
    /// Exact: the reference device's choice (logits match HF to 1e-12). Host devices only.
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// The paged KV cache of one layer (RotaryKvCache).
#[derive(Copy, Clone, Debug)]
pub struct KvCache {
    pub k: Addr,          // [n_pages, page_size, kv_width] of ty
    pub v: Addr,          // [n_pages, page_size, kv_width] of ty
    pub page_table: Addr, // [n_pages] i32
    pub page_size: usize,
    pub kv_width: usize,
    pub ty: KvType,
}

/// Which part of `Moe` runs (abi.h RotaryMoeStage).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MoeStage {
    /// The expert stages, then the combine.
    All,
    /// `out` rows of the pairs with an expert id (≥ 0); the residual is untouched.
    Experts,
    /// residual += Σ_j weights · out rows, every pair's row already written.
    Combine,
}

/// How `TopkMoe` weighs the chosen experts (abi.h RotaryTopkNorm).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TopkNorm {
    /// The softmax probabilities as they are.
    Softmax,
    /// Renormalised to sum to 1 over the k chosen (norm_topk_prob).
    Renorm,
}

/// Which key head a Gated DeltaNet value head reads (abi.h RotaryGdnHeadOrder).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HeadOrder {
    /// GGUF: value head h reads key head h % n_k.
    Tiled,
    /// HF: value head h reads key head h / (n_v / n_k).
    Grouped,
}

/// Whether attention's q projection carries a per-head output gate (qwen35moe).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttnGate {
    None,
    /// q|gate per head from one projection; the output is o ⊙ sigmoid(gate).
    Sigmoid,
}

/// The kernels of abi.h, with the same contracts (see csrc/include/abi.h), in Rust terms.
/// Sizes are element counts; every address is 16-byte aligned.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// y [n, rows] = W [rows, cols] · x [n, cols].
    Gemv {
        ty: GgmlType,
        w: Addr,
        x: Addr,
        y: Addr,
        rows: usize,
        cols: usize,
        n: usize,
    },
    /// logits [n, n_experts] → ids [n, k] i32, weights [n, k].
    TopkMoe {
        logits: Addr,
        ids: Addr,
        weights: Addr,
        n: usize,
        n_experts: usize,
        k: usize,
        norm: TopkNorm,
    },
    /// Routed experts into the residual. A negative id −1−e marks a pair whose `out` row the
    /// host writes (computed on the CPU): the expert stages skip it, the combine adds it. The
    /// hybrid step launches the two halves apart (`stage`), the CPU experts between them.
    Moe {
        stage: MoeStage,
        ty_gate_up: GgmlType,
        ty_down: GgmlType,
        gate: Addr,     // [n_experts] u64 addresses of [ffn, dim]
        up: Addr,       // [n_experts] u64 addresses of [ffn, dim]
        down: Addr,     // [n_experts] u64 addresses of [dim, ffn]
        ids: Addr,      // [n, k] i32
        weights: Addr,  // [n, k] f32
        x: Addr,        // [n, dim]
        act: Addr,      // [n * k, ffn]
        out: Addr,      // [n * k, dim]
        offsets: Addr,  // [n_experts + 1] i32
        pairs: Addr,    // [n * k] i32
        residual: Addr, // [n, dim]
        dim: usize,
        ffn: usize,
        n: usize,
        k: usize,
        n_experts: usize,
    },
    RmsNorm {
        x: Addr,
        w: Addr,
        y: Addr,
        rows: usize,
        width: usize,
        eps: f32,
    },
    /// x [n, dim] ← rows tokens[t] of the table [n_vocab, dim] (any weight format), dequantized.
    Embed {
        ty: GgmlType,
        table: Addr,
        tokens: Addr,
        x: Addr,
        n: usize,
        dim: usize,
    },
    Rope {
        x: Addr,
        inv_freq: Addr,
        n: usize,
        n_heads: usize,
        head_dim: usize,
        rope_dims: usize,
        pos0: usize,
    },
    KvStore {
        cache: KvCache,
        k: Addr,
        v: Addr,
        n: usize,
        pos0: usize,
    },
    Attention {
        cache: KvCache,
        q: Addr,
        o: Addr,
        n: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        pos0: usize,
        scale: f32,
    },
    Add {
        y: Addr,
        x: Addr,
        n: usize,
    },
    /// Gated attention (qwen35moe): qg [n, n_heads, 2 * head_dim] = [q_h | gate_h] per head →
    /// q, gate [n, n_heads * head_dim].
    SplitGate {
        qg: Addr,
        q: Addr,
        gate: Addr,
        n: usize,
        n_heads: usize,
        head_dim: usize,
    },
    /// y[i] *= sigmoid(g[i]), i < n.
    SigmoidMul {
        y: Addr,
        g: Addr,
        n: usize,
    },
    /// x[i] = sigmoid(x[i]), i < n (the shared expert's per-token weight).
    Sigmoid {
        x: Addr,
        n: usize,
    },
    /// Gated DeltaNet causal conv + SiLU in place on x [n, channels]; state [kernel-1, channels]
    /// (previous inputs, oldest first) advanced by n; w [channels, kernel] f32.
    GdnConv {
        x: Addr,
        state: Addr,
        w: Addr,
        n: usize,
        channels: usize,
        kernel: usize,
    },
    /// beta [n, n_v] ← sigmoid(beta); alpha [n, n_v] ← exp(a · softplus(alpha + dt_bias)).
    GdnGates {
        beta: Addr,
        alpha: Addr,
        dt_bias: Addr,
        a: Addr,
        n: usize,
        n_v: usize,
    },
    /// The gated delta rule over n tokens (src/model/deltanet.rs `delta_rule`): qkv [n,
    /// 2·n_k·dk + n_v·dv] convolved, beta/decay [n, n_v], state [n_v, dk, dv] f32 updated,
    /// o [n, n_v·dv]. Value head h reads the key head `order` says.
    GdnRule {
        qkv: Addr,
        beta: Addr,
        decay: Addr,
        state: Addr,
        o: Addr,
        n: usize,
        n_k: usize,
        n_v: usize,
        head_k: usize,
        head_v: usize,
        order: HeadOrder,
    },
    /// x [rows, width] ← rmsnorm(x) · w · silu(z), w [width] (plain weight), in place.
    GatedNorm {
        x: Addr,
        z: Addr,
        w: Addr,
        rows: usize,
        width: usize,
        eps: f32,
    },
}
