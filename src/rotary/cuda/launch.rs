//! The op vocabulary on the GPU: each kernel's FFI params struct (abi.h), built here and
//! nowhere else, launched on the compute stream.

use std::ffi::c_void;

use crate::backend::cuda::device::Gpu;
use crate::backend::cuda::ffi;
use crate::backend::cuda::kernels::{self, quant_of};
use crate::error::{Error, Result};
use crate::ops::{Addr, HeadOrder, Kernel, KvCache, KvType, MoeStage, TopkNorm};

/// Launch `k` on the compute stream.
pub(super) fn launch(gpu: &Gpu, k: &Kernel) -> Result<()> {
    match k {
        Kernel::Gemv { .. }
        | Kernel::TopkMoe { .. }
        | Kernel::Moe { .. }
        | Kernel::Embed { .. } => launch_products(gpu, k),
        Kernel::GdnConv { .. }
        | Kernel::GdnGates { .. }
        | Kernel::GdnRule { .. }
        | Kernel::GatedNorm { .. } => launch_deltanet(gpu, k),
        _ => launch_mixing(gpu, k),
    }
}

fn p(a: Addr) -> *mut f32 {
    a as *mut f32
}

/// The ABI's name for a DeltaNet value-head order.
fn gdn_head_order(order: HeadOrder) -> ffi::RotaryGdnHeadOrder {
    match order {
        HeadOrder::Tiled => ffi::RotaryGdnHeadOrder::ROTARY_GDN_TILED,
        HeadOrder::Grouped => ffi::RotaryGdnHeadOrder::ROTARY_GDN_GROUPED,
    }
}

/// The ABI's name for a part of the MoE kernel.
fn moe_stage(stage: MoeStage) -> ffi::RotaryMoeStage {
    match stage {
        MoeStage::All => ffi::RotaryMoeStage::ROTARY_MOE_ALL,
        MoeStage::Experts => ffi::RotaryMoeStage::ROTARY_MOE_EXPERTS,
        MoeStage::Combine => ffi::RotaryMoeStage::ROTARY_MOE_COMBINE,
    }
}

/// The ABI's name for top-k weighting.
fn topk_norm(norm: TopkNorm) -> ffi::RotaryTopkNorm {
    match norm {
        TopkNorm::Renorm => ffi::RotaryTopkNorm::ROTARY_TOPK_RENORM,
        TopkNorm::Softmax => ffi::RotaryTopkNorm::ROTARY_TOPK_SOFTMAX,
    }
}

/// The products (gemv, top-k, MoE, embed). Over a screen: one FFI struct per arm, field by
/// field as abi.h declares it.
fn launch_products(gpu: &Gpu, k: &Kernel) -> Result<()> {
    // SAFETY: the forward builds every kernel from allocations sized by the plan (the
    // simulator checks the same kernels' extents against its allocations in CI).
    unsafe {
        match *k {
            Kernel::Gemv { ty, w, x, y, rows, cols, n } => kernels::gemv(
                gpu,
                &ffi::RotaryGemv {
                    quant: quant_of(ty, "gemv")?,
                    w: w as *const c_void,
                    x: p(x),
                    y: p(y),
                    rows: rows as i32,
                    cols: cols as i32,
                    n_tokens: n as i32,
                },
            ),
            Kernel::TopkMoe { logits, ids, weights, n, n_experts, k, norm } => kernels::topk_moe(
                gpu,
                &ffi::RotaryTopkMoe {
                    logits: p(logits),
                    ids: ids as *mut i32,
                    weights: p(weights),
                    n_tokens: n as i32,
                    n_experts: n_experts as i32,
                    k: k as i32,
                    norm: topk_norm(norm),
                },
            ),
            Kernel::Moe {
                stage,
                ty_gate_up,
                ty_down,
                gate,
                up,
                down,
                ids,
                weights,
                x,
                act,
                out,
                offsets,
                pairs,
                residual,
                dim,
                ffn,
                n,
                k,
                n_experts,
            } => kernels::moe(
                gpu,
                &ffi::RotaryMoe {
                    quant_gate_up: quant_of(ty_gate_up, "moe gate/up")?,
                    quant_down: quant_of(ty_down, "moe down")?,
                    gate: gate as *const *const c_void,
                    up: up as *const *const c_void,
                    down: down as *const *const c_void,
                    ids: ids as *const i32,
                    weights: p(weights),
                    x: p(x),
                    act: p(act),
                    out: p(out),
                    group_offsets: offsets as *mut i32,
                    group_pairs: pairs as *mut i32,
                    residual: p(residual),
                    dim: dim as i32,
                    ffn: ffn as i32,
                    n_tokens: n as i32,
                    k: k as i32,
                    n_experts: n_experts as i32,
                    stage: moe_stage(stage),
                },
            ),
            Kernel::Embed { ty, table, tokens, x, n, dim } => kernels::embed(
                gpu,
                &ffi::RotaryEmbed {
                    quant: quant_of(ty, "embed")?,
                    table: table as *const c_void,
                    tokens: tokens as *const i32,
                    x: p(x),
                    n_tokens: n as i32,
                    dim: dim as i32,
                },
            ),
            _ => unreachable!("a product kernel"),
        }
    }
}

/// The paged f16 cache (the only cache type the CUDA kernels keep).
fn kv_cache(c: &KvCache) -> Result<ffi::RotaryKvCache> {
    if c.ty != KvType::F16 {
        return Err(Error::Usage(format!("the CUDA kernels keep an f16 KV cache, not {:?}", c.ty)));
    }
    Ok(ffi::RotaryKvCache {
        k: c.k as *mut u16,
        v: c.v as *mut u16,
        page_table: c.page_table as *const i32,
        page_size: c.page_size as i32,
        kv_width: c.kv_width as i32,
    })
}

/// Norms, RoPE, the KV cache, attention, the elementwise steps. Over a screen: one FFI
/// struct per arm, field by field as abi.h declares it.
fn launch_mixing(gpu: &Gpu, k: &Kernel) -> Result<()> {
    // SAFETY: the forward builds every kernel from allocations sized by the plan (the
    // simulator checks the same kernels' extents against its allocations in CI).
    unsafe {
        match *k {
            Kernel::RmsNorm { x, w, y, rows, width, eps } => kernels::rmsnorm(
                gpu,
                &ffi::RotaryRmsNorm {
                    x: p(x),
                    w: p(w),
                    y: p(y),
                    rows: rows as i32,
                    width: width as i32,
                    eps,
                },
            ),
            Kernel::Rope { x, inv_freq, n, n_heads, head_dim, rope_dims, pos0 } => {
                kernels::rope_neox(
                    gpu,
                    &ffi::RotaryRope {
                        x: p(x),
                        inv_freq: p(inv_freq),
                        n_tokens: n as i32,
                        n_heads: n_heads as i32,
                        head_dim: head_dim as i32,
                        rope_dims: rope_dims as i32,
                        pos0: pos0 as i32,
                    },
                )
            }
            Kernel::KvStore { cache: c, k: kk, v, n, pos0 } => kernels::kv_store(
                gpu,
                &ffi::RotaryKvStore {
                    cache: kv_cache(&c)?,
                    k: p(kk),
                    v: p(v),
                    n_tokens: n as i32,
                    pos0: pos0 as i32,
                },
            ),
            Kernel::Attention { cache: c, q, o, n, n_heads, n_kv_heads, head_dim, pos0, scale } => {
                kernels::attention(
                    gpu,
                    &ffi::RotaryAttention {
                        cache: kv_cache(&c)?,
                        q: p(q),
                        o: p(o),
                        n_tokens: n as i32,
                        n_heads: n_heads as i32,
                        n_kv_heads: n_kv_heads as i32,
                        head_dim: head_dim as i32,
                        pos0: pos0 as i32,
                        scale,
                    },
                )
            }
            Kernel::Add { y, x, n } => {
                kernels::add(gpu, &ffi::RotaryAdd { y: p(y), x: p(x), n: n as i64 })
            }
            Kernel::SplitGate { qg, q, gate, n, n_heads, head_dim } => kernels::split_gate(
                gpu,
                &ffi::RotarySplitGate {
                    qg: p(qg),
                    q: p(q),
                    gate: p(gate),
                    n_tokens: n as i32,
                    n_heads: n_heads as i32,
                    head_dim: head_dim as i32,
                },
            ),
            Kernel::SigmoidMul { y, g, n } => {
                kernels::sigmoid_mul(gpu, &ffi::RotarySigmoidMul { y: p(y), g: p(g), n: n as i64 })
            }
            Kernel::Sigmoid { x, n } => {
                kernels::sigmoid(gpu, &ffi::RotarySigmoid { x: p(x), n: n as i64 })
            }
            _ => unreachable!("an attention-side kernel"),
        }
    }
}

/// Gated DeltaNet's kernels.
fn launch_deltanet(gpu: &Gpu, k: &Kernel) -> Result<()> {
    // SAFETY: the forward builds every kernel from allocations sized by the plan (the
    // simulator checks the same kernels' extents against its allocations in CI).
    unsafe {
        match *k {
            Kernel::GdnConv { x, state, w, n, channels, kernel } => kernels::gdn_conv(
                gpu,
                &ffi::RotaryGdnConv {
                    x: p(x),
                    state: p(state),
                    w: p(w),
                    n_tokens: n as i32,
                    channels: channels as i32,
                    kernel: kernel as i32,
                },
            ),
            Kernel::GdnGates { beta, alpha, dt_bias, a, n, n_v } => kernels::gdn_gates(
                gpu,
                &ffi::RotaryGdnGates {
                    beta: p(beta),
                    alpha: p(alpha),
                    dt_bias: p(dt_bias),
                    a: p(a),
                    n_tokens: n as i32,
                    n_v_heads: n_v as i32,
                },
            ),
            Kernel::GdnRule { qkv, beta, decay, state, o, n, n_k, n_v, head_k, head_v, order } => {
                kernels::gdn_rule(
                    gpu,
                    &ffi::RotaryGdnRule {
                        qkv: p(qkv),
                        beta: p(beta),
                        decay: p(decay),
                        state: p(state),
                        o: p(o),
                        n_tokens: n as i32,
                        n_k_heads: n_k as i32,
                        n_v_heads: n_v as i32,
                        head_k: head_k as i32,
                        head_v: head_v as i32,
                        order: gdn_head_order(order),
                    },
                )
            }
            Kernel::GatedNorm { x, z, w, rows, width, eps } => kernels::gated_norm(
                gpu,
                &ffi::RotaryGatedNorm {
                    x: p(x),
                    z: p(z),
                    w: p(w),
                    rows: rows as i32,
                    width: width as i32,
                    eps,
                },
            ),
            _ => unreachable!("a DeltaNet kernel"),
        }
    }
}
