//! `rotary selftest`: llama.cpp's test-backend-ops idea. A table of (op, format, shape) cases;
//! each runs on a backend and on the scalar reference from the same deterministic inputs, and
//! the outputs are compared by normalised mean squared error (≤ 1e-7 for elementwise ops,
//! ≤ 5e-4 for matrix products, attention and the delta rule). Any NaN fails; guard values
//! around device outputs must come back untouched; the router's expert ids are compared as
//! sets; ops with two outputs (a state they advance, a second tensor) compare both.
//!
//! The cases are the op vocabulary (src/ops/) at chosen shapes, run on any device (`device`:
//! cpu, cpu-ref, sim, cuda), like ggml's test-backend-ops. The reference is the oracle
//! (src/ops/oracle.rs, src/ops/deltanet.rs) with the `cpu-ref` backend's products.

mod device;
mod report;

pub use device::run;
pub use report::{compare, nmse, table, to_json, CaseResult, Report, Status};

use crate::backend::cpu_ref::CpuRef;
use crate::backend::{Backend, Mat};
use crate::error::Result;
use crate::ops::deltanet;
use crate::ops::oracle::{
    attention_reference, expert_forward, rmsnorm_rows, rope_tokens, split_gate, topk_moe,
};
use crate::ops::{HeadOrder, TopkNorm};
use crate::quant::{self, GgmlType};
use crate::synth::{random_f32, random_ints, random_matrix};

/// Formats every quantized kernel is tested in: every type the engine computes with
/// (`GgmlType::supported`, in its table order; tests/gen.rs checks that they agree).
pub const FORMATS: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ3XXS,
    GgmlType::IQ1S,
    GgmlType::IQ4NL,
    GgmlType::IQ3S,
    GgmlType::IQ2S,
    GgmlType::IQ4XS,
    GgmlType::IQ1M,
    GgmlType::BF16,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
];

/// Columns of an odd number of `ty`'s blocks (of at least 32 elements), about 500: a row's
/// bytes then keep only the alignment of one block (MXFP4's rows start at odd addresses).
fn odd_cols(ty: GgmlType) -> usize {
    let unit = ty.block_elems().max(32);
    let blocks = (500 / unit) | 1;
    blocks * unit
}

/// One op with its shape.
#[derive(Clone, Debug)]
pub enum Op {
    /// y [n, rows] = W [rows, cols] · x [n, cols]; W held `copies` times side by side and one
    /// evaluation the product over each copy in turn (more than 1: weights the caches do not
    /// hold, as a layer's experts on the CPU).
    Gemv {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
        copies: usize,
    },
    /// Routed SwiGLU experts added to a residual (RotaryMoe).
    Moe {
        ty_gate_up: GgmlType,
        ty_down: GgmlType,
        dim: usize,
        ffn: usize,
        n_experts: usize,
        k: usize,
        n: usize,
        /// Its two stages launched apart (expert stages, then the combine: the hybrid step's
        /// order) instead of as one kernel.
        split: bool,
    },
    /// softmax → top-k → optional renormalisation.
    TopkMoe {
        n: usize,
        n_experts: usize,
        k: usize,
        norm: TopkNorm,
    },
    RmsNorm {
        rows: usize,
        width: usize,
    },
    Rope {
        n: usize,
        n_heads: usize,
        head_dim: usize,
        rope_dims: usize,
        pos0: usize,
    },
    /// KV store into a paged f16 cache (shuffled pages), then causal GQA attention.
    Attention {
        n: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        pos0: usize,
        page_size: usize,
    },
    Embed {
        ty: GgmlType,
        n_vocab: usize,
        dim: usize,
        n: usize,
    },
    Add {
        len: usize,
    },
    /// Gated attention: qg [n, n_heads, 2·head_dim] → q, gate [n, n_heads·head_dim].
    SplitGate {
        n: usize,
        n_heads: usize,
        head_dim: usize,
    },
    /// y *= sigmoid(g).
    SigmoidMul {
        len: usize,
    },
    /// x = sigmoid(x).
    Sigmoid {
        len: usize,
    },
    /// Gated DeltaNet conv + SiLU over n tokens from a non-zero state, which it advances.
    GdnConv {
        n: usize,
        channels: usize,
        kernel: usize,
    },
    /// Gated DeltaNet beta and decay for [n, n_v].
    GdnGates {
        n: usize,
        n_v: usize,
    },
    /// The gated delta rule over n tokens. `warm`: a random initial state (decode continues a
    /// state), else zeros (the first micro-batch of a prompt). `order`: GGUF's (tiled) or HF's.
    GdnRule {
        n: usize,
        n_k: usize,
        n_v: usize,
        head_k: usize,
        head_v: usize,
        order: HeadOrder,
        warm: bool,
    },
    /// rmsnorm(x) · w · silu(z) of rows of `width`.
    GatedNorm {
        rows: usize,
        width: usize,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Gemv { .. } => "gemv",
            Op::Moe { .. } => "moe",
            Op::TopkMoe { .. } => "topk_moe",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::Rope { .. } => "rope_neox",
            Op::Attention { .. } => "attention",
            Op::Embed { .. } => "embed",
            Op::Add { .. } => "add",
            Op::SplitGate { .. } => "split_gate",
            Op::SigmoidMul { .. } => "sigmoid_mul",
            Op::Sigmoid { .. } => "sigmoid",
            Op::GdnConv { .. } => "gdn_conv",
            Op::GdnGates { .. } => "gdn_gates",
            Op::GdnRule { .. } => "gdn_rule",
            Op::GatedNorm { .. } => "gated_norm",
        }
    }

    pub fn quant(&self) -> String {
        match self {
            Op::Gemv { ty, .. } | Op::Embed { ty, .. } => ty.name().to_string(),
            Op::Moe { ty_gate_up, ty_down, .. } => {
                format!("{}/{}", ty_gate_up.name(), ty_down.name())
            }
            Op::Attention { .. } => "f16 kv".into(),
            _ => "f32".into(),
        }
    }

    pub fn shape(&self) -> String {
        match *self {
            Op::Gemv { rows, cols, n, copies: 1, .. } => format!("rows={rows} cols={cols} n={n}"),
            Op::Gemv { rows, cols, n, copies, .. } => {
                format!("rows={rows} cols={cols} n={n} cold x{copies}")
            }
            Op::Moe { dim, ffn, n_experts, k, n, split, .. } => {
                let stages = if split { " stages apart" } else { "" };
                format!("dim={dim} ffn={ffn} experts={n_experts} k={k} n={n}{stages}")
            }
            Op::TopkMoe { n, n_experts, k, norm } => {
                format!(
                    "n={n} experts={n_experts} k={k} {}",
                    if norm == TopkNorm::Renorm { "renorm" } else { "softmax" }
                )
            }
            Op::RmsNorm { rows, width } => format!("rows={rows} width={width}"),
            Op::Rope { n, n_heads, head_dim, rope_dims, pos0 } => {
                format!("n={n} heads={n_heads} head_dim={head_dim} rot={rope_dims} pos0={pos0}")
            }
            Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, page_size } => format!(
                "n={n} heads={n_heads}/{n_kv_heads} head_dim={head_dim} \
                 pos0={pos0} page={page_size}"
            ),
            Op::Embed { n_vocab, dim, n, .. } => format!("vocab={n_vocab} dim={dim} n={n}"),
            Op::Add { len } | Op::SigmoidMul { len } | Op::Sigmoid { len } => format!("len={len}"),
            Op::SplitGate { n, n_heads, head_dim } => {
                format!("n={n} heads={n_heads} head_dim={head_dim}")
            }
            Op::GdnConv { n, channels, kernel } => {
                format!("n={n} channels={channels} kernel={kernel}")
            }
            Op::GdnGates { n, n_v } => format!("n={n} v_heads={n_v}"),
            Op::GdnRule { n, n_k, n_v, head_k, head_v, order, warm } => format!(
                "n={n} heads={n_k}/{n_v} dk={head_k} dv={head_v} {} {}",
                if order == HeadOrder::Tiled { "tiled" } else { "grouped" },
                if warm { "warm" } else { "cold" }
            ),
            Op::GatedNorm { rows, width } => format!("rows={rows} width={width}"),
        }
    }

    /// The NMSE bound: elementwise ops are exact up to rounding (the conv's K products and the
    /// norms' row sums included, as rmsnorm); products, attention and the delta rule sum in a
    /// different order (attention's softmax runs online; the delta rule's Sᵀk and Sᵀq are
    /// split over warps and its error compounds over the tokens through the state).
    pub fn max_nmse(&self) -> f64 {
        match self {
            Op::Gemv { .. } | Op::Moe { .. } | Op::Attention { .. } | Op::GdnRule { .. } => 5e-4,
            _ => 1e-7,
        }
    }

    /// Bytes one evaluation must move (for GB/s): the weights a product streams, or the delta
    /// rule's fp32 state at decode (read once and written once).
    pub fn weight_bytes(&self) -> Option<u64> {
        let rb = |ty: GgmlType, cols: usize| ty.row_bytes(cols as u64).unwrap_or(0);
        match *self {
            Op::Gemv { ty, rows, cols, copies, .. } => Some(rb(ty, cols) * (rows * copies) as u64),
            // Decode: the k chosen experts' gate, up and down.
            Op::Moe { ty_gate_up, ty_down, dim, ffn, k, n: 1, .. } => Some(
                k as u64 * (2 * rb(ty_gate_up, dim) * ffn as u64 + rb(ty_down, ffn) * dim as u64),
            ),
            Op::GdnRule { n_v, head_k, head_v, n: 1, .. } => {
                Some(2 * 4 * (n_v * head_k * head_v) as u64)
            }
            _ => None,
        }
    }
}

/// A case: the op, and whether it only runs with `--perf` (large shapes).
#[derive(Clone, Debug)]
pub struct Case {
    pub op: Op,
    pub perf_only: bool,
}

/// The case table. Shapes cover single tokens (decode), odd token counts (tile remainders),
/// batches past the tile (prefill), every format, GQA, partial RoPE and paged caches.
/// Over a screen: the table itself, one line per group of cases.
pub fn cases(perf: bool) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |op: Op| out.push(Case { op, perf_only: false });
    for &ty in FORMATS {
        for (n, cols) in [(1, 512), (3, odd_cols(ty)), (11, 512)] {
            add(Op::Gemv { ty, rows: 96, cols, n, copies: 1 });
        }
        add(Op::Embed { ty, n_vocab: 50, dim: odd_cols(ty), n: 5 });
    }
    moe_cases(&mut add);
    // qwen35moe's shared expert: the MoE kernel over a one-entry table, every token weighted.
    for n in [1, 9] {
        add(Op::Moe {
            ty_gate_up: GgmlType::Q4K,
            ty_down: GgmlType::Q6K,
            dim: 512,
            ffn: 512,
            n_experts: 1,
            k: 1,
            n,
            split: false,
        });
    }
    for (n_experts, k, renorm) in
        [(128, 8, true), (256, 8, true), (60, 4, false), (512, 16, true), (8, 2, true)]
    {
        let norm = if renorm { TopkNorm::Renorm } else { TopkNorm::Softmax };
        add(Op::TopkMoe { n: 5, n_experts, k, norm });
    }
    add(Op::RmsNorm { rows: 5, width: 2048 });
    add(Op::RmsNorm { rows: 5 * 32, width: 128 });
    add(Op::RmsNorm { rows: 3, width: 96 });
    add(Op::Rope { n: 3, n_heads: 8, head_dim: 128, rope_dims: 128, pos0: 17 });
    add(Op::Rope { n: 2, n_heads: 4, head_dim: 256, rope_dims: 64, pos0: 3000 });
    for (n, pos0, n_heads, n_kv_heads, head_dim, page_size) in [
        (1, 0, 4, 4, 64, 16),
        (1, 37, 8, 2, 128, 16),
        (6, 0, 8, 2, 128, 16),
        (5, 21, 32, 4, 128, 8),
        (1, 300, 16, 2, 256, 32),
    ] {
        add(Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, page_size });
    }
    add(Op::Add { len: 10_000 });
    qwen35_cases(&mut add);
    if perf {
        // Qwen3-30B-A3B's shapes: attention q projection (every format), the router, one MoE
        // layer's decode.
        let mut add_perf = |op: Op| out.push(Case { op, perf_only: true });
        for &ty in FORMATS {
            add_perf(Op::Gemv { ty, rows: 4096, cols: 2048, n: 1, copies: 1 });
        }
        add_perf(Op::Gemv { ty: GgmlType::Q6K, rows: 151_936, cols: 2048, n: 1, copies: 1 });
        // One expert's matrices, cold (1 GiB of copies: past any cache), for 1 and 8 tokens:
        // Qwen3-30B-A3B's gate/up [768, 2048] and down [2048, 768], Qwen3.5-35B-A3B's [512,
        // 2048] and [2048, 512]. On the CPU, the rate of experts computed from host memory.
        for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
            for (rows, cols) in [(768, 2048), (2048, 768), (512, 2048), (2048, 512)] {
                let bytes = ty.row_bytes(cols as u64).unwrap_or(1) as usize * rows;
                let copies = (1usize << 30).div_ceil(bytes);
                for n in [1, 8] {
                    add_perf(Op::Gemv { ty, rows, cols, n, copies });
                }
            }
        }
        for (gu, down) in [(GgmlType::Q4K, GgmlType::Q6K), (GgmlType::Q4K, GgmlType::Q4K)] {
            add_perf(Op::Moe {
                ty_gate_up: gu,
                ty_down: down,
                dim: 2048,
                ffn: 768,
                n_experts: 128,
                k: 8,
                n: 1,
                split: false,
            });
        }
        // Qwen3.5-35B-A3B's Gated DeltaNet at decode: one layer's state read and written.
        add_perf(Op::GdnRule {
            n: 1,
            n_k: 16,
            n_v: 32,
            head_k: 128,
            head_v: 128,
            order: HeadOrder::Tiled,
            warm: true,
        });
    }
    out
}

/// Routed experts: pairs of (gate/up, down) formats covering every format, most at shapes
/// where rows and experts keep only their block's alignment (odd block counts).
fn moe_cases(add: &mut impl FnMut(Op)) {
    use GgmlType::*;
    for (gu, down, dim, ffn) in [
        (Q4K, Q6K, 512, 256),
        (Q4K, Q4K, 512, 256),
        (Q5K, Q8_0, 512, 256),
        (Q8_0, Q8_0, 512, 256),
        (F16, BF16, 512, 256),
        (Q4_0, F32, 512, 256),
        (IQ4XS, Q6K, 512, 256),
        (IQ3S, IQ4XS, 768, 256),
        (Q3K, Q5_0, 768, 224),
        (IQ2XXS, Q2K, 768, 256),
        (MXFP4, NVFP4, 480, 192),
        (NVFP4, MXFP4, 448, 96),
        (IQ1M, IQ1S, 768, 256),
        (Q4_1, Q5_1, 480, 160),
        (IQ2XS, IQ2S, 768, 256),
        (IQ3XXS, IQ4NL, 768, 224),
    ] {
        for n in [1, 2, 9] {
            let split = false;
            add(Op::Moe { ty_gate_up: gu, ty_down: down, dim, ffn, n_experts: 16, k: 4, n, split });
        }
    }
    // The hybrid step's order: the expert stages, then the combine, per pair and grouped.
    for n in [1, 9] {
        let (ty_gate_up, ty_down) = (GgmlType::Q4K, GgmlType::Q6K);
        add(Op::Moe {
            ty_gate_up,
            ty_down,
            dim: 512,
            ffn: 256,
            n_experts: 16,
            k: 4,
            n,
            split: true,
        });
    }
}

/// qwen35moe's ops: Qwen3.5-35B-A3B's shapes (16 key / 32 value heads of 128, conv 4 over
/// 8192 channels, 16 attention heads of 256) at 1, 3 and 17 tokens, both head orders, warm
/// and cold states; and small odd shapes (partial column slices, key rows not a multiple of
/// the warps, the largest head_k and conv kernel, fewer tokens than the conv's history).
fn qwen35_cases(add: &mut impl FnMut(Op)) {
    let order = |tiled| if tiled { HeadOrder::Tiled } else { HeadOrder::Grouped };
    for n in [1, 3] {
        add(Op::SplitGate { n, n_heads: 16, head_dim: 256 });
    }
    add(Op::SplitGate { n: 5, n_heads: 3, head_dim: 40 });
    add(Op::SigmoidMul { len: 10_000 });
    add(Op::Sigmoid { len: 1000 });
    for (n, channels, kernel) in
        [(1, 8192, 4), (3, 8192, 4), (17, 8192, 4), (2, 100, 8), (5, 37, 3)]
    {
        add(Op::GdnConv { n, channels, kernel });
    }
    for (n, n_v) in [(1, 32), (17, 32), (5, 7)] {
        add(Op::GdnGates { n, n_v });
    }
    for (n, tiled, warm) in [
        (1, true, true),
        (1, false, true),
        (3, true, false),
        (3, false, true),
        (17, true, true),
        (17, false, false),
    ] {
        add(Op::GdnRule {
            n,
            n_k: 16,
            n_v: 32,
            head_k: 128,
            head_v: 128,
            order: order(tiled),
            warm,
        });
    }
    for (n, n_k, n_v, head_k, head_v, tiled) in [
        (5, 2, 6, 24, 40, true),
        (5, 2, 6, 24, 40, false),
        (2, 3, 3, 33, 70, false),
        (2, 1, 2, 256, 32, true),
    ] {
        add(Op::GdnRule { n, n_k, n_v, head_k, head_v, order: order(tiled), warm: true });
    }
    for (rows, width) in [(32, 128), (17 * 32, 128), (3, 40), (2, 256)] {
        add(Op::GatedNorm { rows, width });
    }
}

/// The operands of a case, generated from its index.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Quantized matrices (gemv: [W]; moe: [gate, up, down] stacked over experts; embed: [table]).
    pub mats: Vec<Vec<u8>>,
    /// f32 operands in the op's order (see `inputs`).
    pub f: Vec<Vec<f32>>,
    /// Integer operands: moe's expert ids, embed's tokens, attention's page table.
    pub ids: Vec<i32>,
}

/// Gated DeltaNet gates as the model computes them, from random projections: beta [n, n_v]
/// and decay [n, n_v], both in (0, 1).
fn gdn_gate_values(n: usize, n_v: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut beta = random_f32(n * n_v, 0.0, 2.0, seed);
    let mut decay = random_f32(n * n_v, 0.0, 2.0, seed + 1);
    let dt_bias = random_f32(n_v, 0.0, 1.0, seed + 2);
    let a: Vec<f32> = random_f32(n_v, 0.0, 0.5, seed + 3).iter().map(|x| -x.exp()).collect();
    deltanet::gates(&mut beta, &mut decay, &dt_bias, &a);
    (beta, decay)
}

/// The operands of `op`:
/// - Gemv: mats [W], f [x]. Moe: mats [gate, up, down], f [x, residual, weights], ids [n, k].
/// - TopkMoe: f [logits]. RmsNorm: f [x, w]. Rope: f [x, inv_freq].
/// - Attention: f [q, k, v] (k, v: all pos0 + n positions), ids = page table.
/// - Embed: mats [table], ids = tokens. Add: f [y, x].
/// - SplitGate: f [qg]. SigmoidMul: f [y, g]. Sigmoid: f [x]. GdnConv: f [x, state, w].
/// - GdnGates: f [beta, alpha, dt_bias, a]. GdnRule: f [qkv, beta, decay, state].
/// - GatedNorm: f [x, z, w].
pub fn inputs(op: &Op, seed: u64) -> Result<Inputs> {
    let mut i = Inputs::default();
    match *op {
        Op::Gemv { ty, rows, cols, n, .. } => {
            i.mats.push(random_matrix(ty, rows, cols, 1.0 / (cols as f32).sqrt(), seed)?);
            i.f.push(random_f32(n * cols, 0.0, 1.0, seed + 1));
        }
        Op::Moe { .. } => return moe_inputs(op, seed),
        Op::TopkMoe { n, n_experts, .. } => i.f.push(random_f32(n * n_experts, 0.0, 2.0, seed)),
        Op::RmsNorm { rows, width } => {
            i.f.push(random_f32(rows * width, 0.1, 1.0, seed));
            i.f.push(random_f32(width, 1.0, 0.1, seed + 1));
        }
        Op::Rope { .. } | Op::Attention { .. } => return Ok(attention_inputs(op, seed)),
        Op::Embed { ty, n_vocab, dim, n } => {
            i.mats.push(random_matrix(ty, n_vocab, dim, 1.0, seed)?);
            i.ids = random_ints(n, 0, n_vocab as u32 - 1, seed + 1)
                .into_iter()
                .map(|t| t as i32)
                .collect();
        }
        Op::Add { len } => {
            i.f.push(random_f32(len, 0.0, 1.0, seed));
            i.f.push(random_f32(len, 0.0, 1.0, seed + 1));
        }
        Op::SplitGate { .. }
        | Op::SigmoidMul { .. }
        | Op::Sigmoid { .. }
        | Op::GdnConv { .. }
        | Op::GdnGates { .. }
        | Op::GdnRule { .. }
        | Op::GatedNorm { .. } => return Ok(deltanet_inputs(op, seed)),
    }
    Ok(i)
}

/// Moe's operands: mats [gate, up, down], f [x, residual, weights], ids [n, k].
fn moe_inputs(op: &Op, seed: u64) -> Result<Inputs> {
    let Op::Moe { ty_gate_up, ty_down, dim, ffn, n_experts, k, n, .. } = *op else {
        unreachable!("moe_inputs() is for moe")
    };
    let mut i = Inputs::default();
    i.mats.push(random_matrix(ty_gate_up, n_experts * ffn, dim, 1.0 / (dim as f32).sqrt(), seed)?);
    i.mats.push(random_matrix(
        ty_gate_up,
        n_experts * ffn,
        dim,
        1.0 / (dim as f32).sqrt(),
        seed + 1,
    )?);
    i.mats.push(random_matrix(ty_down, n_experts * dim, ffn, 1.0 / (ffn as f32).sqrt(), seed + 2)?);
    i.f.push(random_f32(n * dim, 0.0, 1.0, seed + 3));
    i.f.push(random_f32(n * dim, 0.0, 1.0, seed + 4));
    i.f.push(random_f32(n * k, 0.5, 0.25, seed + 5));
    i.ids = moe_expert_ids(n, k, n_experts, seed);
    Ok(i)
}

/// k distinct experts per token, [n, k], each drawn from its own seed.
fn moe_expert_ids(n: usize, k: usize, n_experts: usize, seed: u64) -> Vec<i32> {
    let mut ids = Vec::with_capacity(n * k);
    for t in 0..n {
        let mut chosen: Vec<i32> = Vec::new();
        let mut s = seed + 100 + t as u64;
        while chosen.len() < k {
            let e = random_ints(1, 0, n_experts as u32 - 1, s)[0] as i32;
            s += 1000;
            if !chosen.contains(&e) {
                chosen.push(e);
            }
        }
        ids.extend(chosen);
    }
    ids
}

/// Rope's f [x, inv_freq]; Attention's f [q, k, v] (pos0 + n positions), ids = page table.
fn attention_inputs(op: &Op, seed: u64) -> Inputs {
    let mut i = Inputs::default();
    match *op {
        Op::Rope { n, n_heads, head_dim, rope_dims, .. } => {
            i.f.push(random_f32(n * n_heads * head_dim, 0.0, 1.0, seed));
            let theta = 1_000_000f64;
            i.f.push(
                (0..rope_dims / 2)
                    .map(|j| theta.powf(-(2.0 * j as f64) / rope_dims as f64) as f32)
                    .collect(),
            );
        }
        Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, page_size } => {
            let n_pos = pos0 + n;
            i.f.push(random_f32(n * n_heads * head_dim, 0.0, 1.0, seed));
            i.f.push(random_f32(n_pos * n_kv_heads * head_dim, 0.0, 1.0, seed + 1));
            i.f.push(random_f32(n_pos * n_kv_heads * head_dim, 0.0, 1.0, seed + 2));
            i.ids = shuffled_pages(n_pos.div_ceil(page_size), seed + 3);
        }
        _ => unreachable!("attention_inputs() is for rope and attention"),
    }
    i
}

/// A shuffled page table of `n_pages` pages: position p lives in page table[p / page_size].
fn shuffled_pages(n_pages: usize, seed: u64) -> Vec<i32> {
    let mut table: Vec<i32> = (0..n_pages as i32).collect();
    let r = random_ints(n_pages, 0, u32::MAX - 1, seed);
    for j in (1..n_pages).rev() {
        table.swap(j, r[j] as usize % (j + 1));
    }
    table
}

/// The operands of qwen35moe's ops, SplitGate to GatedNorm (their order: see `inputs`).
fn deltanet_inputs(op: &Op, seed: u64) -> Inputs {
    let mut i = Inputs::default();
    match *op {
        Op::SplitGate { n, n_heads, head_dim } => {
            i.f.push(random_f32(2 * n * n_heads * head_dim, 0.0, 1.0, seed))
        }
        Op::SigmoidMul { len } => {
            i.f.push(random_f32(len, 0.0, 1.0, seed));
            i.f.push(random_f32(len, 0.0, 4.0, seed + 1));
        }
        // Far into both tails, where 1 + e^-x overflows or rounds to 1.
        Op::Sigmoid { len } => i.f.push(random_f32(len, 0.0, 60.0, seed)),
        Op::GdnConv { n, channels, kernel } => {
            i.f.push(random_f32(n * channels, 0.0, 1.0, seed));
            i.f.push(random_f32((kernel - 1) * channels, 0.0, 1.0, seed + 1));
            i.f.push(random_f32(channels * kernel, 0.0, 0.5, seed + 2));
        }
        Op::GdnGates { n, n_v } => {
            i.f.push(random_f32(n * n_v, 0.0, 2.0, seed));
            // Past softplus's threshold of 20 in both directions.
            i.f.push(random_f32(n * n_v, 0.0, 15.0, seed + 1));
            i.f.push(random_f32(n_v, 0.0, 1.0, seed + 2));
            i.f.push(random_f32(n_v, 0.0, 0.5, seed + 3).iter().map(|x| -x.exp()).collect());
        }
        Op::GdnRule { n, n_k, n_v, head_k, head_v, warm, .. } => {
            i.f.push(random_f32(n * (2 * n_k * head_k + n_v * head_v), 0.0, 1.0, seed));
            let (beta, decay) = gdn_gate_values(n, n_v, seed + 1);
            i.f.extend([beta, decay]);
            let len = n_v * head_k * head_v;
            i.f.push(if warm { random_f32(len, 0.0, 0.3, seed + 5) } else { vec![0.0; len] });
        }
        Op::GatedNorm { rows, width } => {
            i.f.push(random_f32(rows * width, 0.1, 1.0, seed));
            i.f.push(random_f32(rows * width, 0.0, 2.0, seed + 1));
            i.f.push(random_f32(width, 1.0, 0.1, seed + 2));
        }
        _ => {
            unreachable!("deltanet_inputs() is for split_gate, sigmoid(_mul), gdn_* and gated_norm")
        }
    }
    i
}

/// What an op produced: f32 values (and, for the router, expert ids), and whether the guard
/// values around device outputs survived.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub values: Vec<f32>,
    pub ids: Vec<i32>,
    /// A second output, compared on its own: split_gate's gate, gdn_gates' decay, the state
    /// gdn_conv and gdn_rule advance. Empty for the other ops.
    pub second: Vec<f32>,
    pub guards_ok: bool,
}

/// A matrix view over a case's bytes.
fn mat<'a>(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Mat<'a>> {
    Mat::new(ty, rows, cols, data, "selftest")
}

/// The reference result of `op` (cpu-ref and the forward pass's scalar steps).
pub fn reference(op: &Op, i: &Inputs) -> Result<Output> {
    let values = match *op {
        Op::Gemv { .. } | Op::Moe { .. } => return products(&CpuRef, op, i),
        Op::TopkMoe { n, n_experts, k, norm } => {
            let (ids, w) = topk_moe(&i.f[0][..n * n_experts], n_experts, k, norm);
            return Ok(Output { values: w, ids, second: Vec::new(), guards_ok: true });
        }
        Op::RmsNorm { width, .. } => {
            let mut x = i.f[0].clone();
            rmsnorm_rows(&mut x, &i.f[1][..width], 1e-6);
            x
        }
        Op::Rope { n, n_heads, head_dim, pos0, .. } => {
            let mut x = i.f[0].clone();
            rope_tokens(&mut x, &i.f[1], n, n_heads, head_dim, pos0);
            x
        }
        Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, .. } => {
            let scale = 1.0 / (head_dim as f32).sqrt();
            attention_reference(
                &i.f[0], &i.f[1], &i.f[2], n, n_heads, n_kv_heads, head_dim, pos0, scale,
            )
        }
        Op::Embed { ty, n_vocab, dim, .. } => {
            let table = mat(ty, n_vocab, dim, &i.mats[0])?;
            let mut x = vec![0f32; i.ids.len() * dim];
            for (t, &tok) in i.ids.iter().enumerate() {
                quant::dequantize(ty, table.row(tok as usize), &mut x[t * dim..(t + 1) * dim])?;
            }
            x
        }
        Op::Add { .. } => i.f[0].iter().zip(&i.f[1]).map(|(y, x)| y + x).collect(),
        Op::SigmoidMul { .. } => {
            i.f[0].iter().zip(&i.f[1]).map(|(y, &g)| y * deltanet::sigmoid(g)).collect()
        }
        Op::Sigmoid { .. } => i.f[0].iter().map(|&x| deltanet::sigmoid(x)).collect(),
        Op::GatedNorm { width, .. } => {
            let mut x = i.f[0].clone();
            deltanet::gated_norm(&mut x, &i.f[1], &i.f[2][..width], 1e-6);
            x
        }
        Op::SplitGate { .. } | Op::GdnConv { .. } | Op::GdnGates { .. } | Op::GdnRule { .. } => {
            return Ok(two_outputs(op, i));
        }
    };
    Ok(Output { values, ids: Vec::new(), second: Vec::new(), guards_ok: true })
}

/// The reference of the ops with two outputs (see `Output::second`).
fn two_outputs(op: &Op, i: &Inputs) -> Output {
    let (values, second) = match *op {
        Op::SplitGate { n, n_heads, head_dim } => {
            let len = n * n_heads * head_dim;
            let (mut q, mut gate) = (vec![0f32; len], vec![0f32; len]);
            split_gate(&i.f[0], head_dim, &mut q, &mut gate);
            (q, gate)
        }
        Op::GdnConv { n, channels, kernel } => {
            let (mut x, mut state) = (i.f[0].clone(), i.f[1].clone());
            deltanet::conv_silu(&mut x, &mut state, &i.f[2], n, channels, kernel);
            (x, state)
        }
        Op::GdnGates { .. } => {
            let (mut beta, mut decay) = (i.f[0].clone(), i.f[1].clone());
            deltanet::gates(&mut beta, &mut decay, &i.f[2], &i.f[3]);
            (beta, decay)
        }
        Op::GdnRule { n, n_k, n_v, head_k, head_v, order, .. } => {
            let sh = deltanet::Shape::of_rule(n_k, n_v, head_k, head_v, order);
            let (mut state, mut o) = (i.f[3].clone(), vec![0f32; n * sh.inner()]);
            deltanet::delta_rule(&i.f[0], &i.f[1], &i.f[2], &mut state, &sh, n, &mut o);
            (o, state)
        }
        _ => unreachable!("two_outputs() is for split_gate, gdn_conv, gdn_gates and gdn_rule"),
    };
    Output { values, ids: Vec::new(), second, guards_ok: true }
}

/// Gemv and Moe through a host `Backend`'s matmul (the reference, or the fast CPU backend).
pub fn products(b: &dyn Backend, op: &Op, i: &Inputs) -> Result<Output> {
    let values = match *op {
        Op::Gemv { ty, rows, cols, n, .. } => {
            let mut y = vec![0f32; n * rows];
            b.matmul(&mat(ty, rows, cols, &i.mats[0])?, &i.f[0], n, &mut y)?;
            y
        }
        Op::Moe { ty_gate_up, ty_down, dim, ffn, n_experts, k, n, .. } => {
            let gate = mat(ty_gate_up, n_experts * ffn, dim, &i.mats[0])?;
            let up = mat(ty_gate_up, n_experts * ffn, dim, &i.mats[1])?;
            let down = mat(ty_down, n_experts * dim, ffn, &i.mats[2])?;
            let mut residual = i.f[1].clone();
            for t in 0..n {
                let x = &i.f[0][t * dim..(t + 1) * dim];
                let mut acc = vec![0f32; dim];
                for j in 0..k {
                    let e = i.ids[t * k + j] as usize;
                    let (g, u, d) = (
                        gate.rows_slice(e * ffn, ffn),
                        up.rows_slice(e * ffn, ffn),
                        down.rows_slice(e * dim, dim),
                    );
                    let y = expert_forward(b, &g, &u, &d, x)?;
                    let w = i.f[2][t * k + j];
                    acc.iter_mut().zip(&y).for_each(|(a, &y)| *a += w * y);
                }
                residual[t * dim..(t + 1) * dim].iter_mut().zip(&acc).for_each(|(r, a)| *r += a);
            }
            residual
        }
        _ => unreachable!("products() is for gemv and moe"),
    };
    Ok(Output { values, ids: Vec::new(), second: Vec::new(), guards_ok: true })
}
