//! The kernel entry points of abi.h, one Rust function each, returning `Error::Cuda` naming the
//! kernel. They only queue work on the device's stream; errors of the kernel itself surface at
//! the next synchronisation.

use super::device::{check, Gpu};
use super::ffi;
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The ABI's name for a weight format.
pub fn quant_of(ty: GgmlType, tensor: &str) -> Result<ffi::RotaryQuant> {
    use ffi::RotaryQuant as Q;
    Ok(match ty {
        GgmlType::F32 => Q::ROTARY_QUANT_F32,
        GgmlType::F16 => Q::ROTARY_QUANT_F16,
        GgmlType::BF16 => Q::ROTARY_QUANT_BF16,
        GgmlType::Q8_0 => Q::ROTARY_QUANT_Q8_0,
        GgmlType::Q4_0 => Q::ROTARY_QUANT_Q4_0,
        GgmlType::Q4_1 => Q::ROTARY_QUANT_Q4_1,
        GgmlType::Q5_0 => Q::ROTARY_QUANT_Q5_0,
        GgmlType::Q5_1 => Q::ROTARY_QUANT_Q5_1,
        GgmlType::Q2K => Q::ROTARY_QUANT_Q2_K,
        GgmlType::Q3K => Q::ROTARY_QUANT_Q3_K,
        GgmlType::Q4K => Q::ROTARY_QUANT_Q4_K,
        GgmlType::Q5K => Q::ROTARY_QUANT_Q5_K,
        GgmlType::Q6K => Q::ROTARY_QUANT_Q6_K,
        GgmlType::IQ2XXS => Q::ROTARY_QUANT_IQ2_XXS,
        GgmlType::IQ2XS => Q::ROTARY_QUANT_IQ2_XS,
        GgmlType::IQ2S => Q::ROTARY_QUANT_IQ2_S,
        GgmlType::IQ3XXS => Q::ROTARY_QUANT_IQ3_XXS,
        GgmlType::IQ3S => Q::ROTARY_QUANT_IQ3_S,
        GgmlType::IQ1S => Q::ROTARY_QUANT_IQ1_S,
        GgmlType::IQ1M => Q::ROTARY_QUANT_IQ1_M,
        GgmlType::IQ4NL => Q::ROTARY_QUANT_IQ4_NL,
        GgmlType::IQ4XS => Q::ROTARY_QUANT_IQ4_XS,
        GgmlType::MXFP4 => Q::ROTARY_QUANT_MXFP4,
        GgmlType::NVFP4 => Q::ROTARY_QUANT_NVFP4,
        other => {
            return Err(Error::UnsupportedType {
                name: tensor.to_string(),
                ty: other.name().to_string(),
            })
        }
    })
}

macro_rules! launchers {
    ($($(#[$doc:meta])* $name:ident($ty:ident) => $ffi:ident;)*) => {$(
        $(#[$doc])*
        ///
        /// # Safety
        /// Every pointer in `p` must be a live device allocation of at least the extent the
        /// params struct's documentation in abi.h gives for its dimensions.
        pub unsafe fn $name(dev: &Gpu, p: &ffi::$ty) -> Result<()> {
            dev.make_current()?;
            // SAFETY: p is a valid params struct (the caller vouches for its pointers); the
            // launcher only reads it and queues work on the device's stream.
            check(unsafe { ffi::$ffi(p, dev.stream()) }, stringify!($ffi))
        }
    )*};
}

launchers! {
    /// y = W · x (fused dequantization).
    gemv(RotaryGemv) => rotary_gemv;
    /// softmax → top-k → renormalise.
    topk_moe(RotaryTopkMoe) => rotary_topk_moe;
    /// Routed experts into the residual.
    moe(RotaryMoe) => rotary_moe;
    rmsnorm(RotaryRmsNorm) => rotary_rmsnorm;
    rope_neox(RotaryRope) => rotary_rope_neox;
    kv_store(RotaryKvStore) => rotary_kv_store;
    attention(RotaryAttention) => rotary_attention;
    embed(RotaryEmbed) => rotary_embed;
    add(RotaryAdd) => rotary_add;
    /// qg [n, heads, 2·hd] → q, gate (gated attention).
    split_gate(RotarySplitGate) => rotary_split_gate;
    sigmoid_mul(RotarySigmoidMul) => rotary_sigmoid_mul;
    sigmoid(RotarySigmoid) => rotary_sigmoid;
    /// Gated DeltaNet: causal conv + SiLU with its rolling state.
    gdn_conv(RotaryGdnConv) => rotary_gdn_conv;
    /// Gated DeltaNet: beta and decay.
    gdn_gates(RotaryGdnGates) => rotary_gdn_gates;
    /// Gated DeltaNet: the delta rule over the tokens, advancing the recurrent state.
    gdn_rule(RotaryGdnRule) => rotary_gdn_rule;
    /// rmsnorm(x) · w · silu(z), in place.
    gated_norm(RotaryGatedNorm) => rotary_gated_norm;
}
