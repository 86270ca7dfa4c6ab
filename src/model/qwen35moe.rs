//! The Qwen3.5/3.6-MoE pieces of the forward pass (models.md §2.2; HF
//! `modeling_qwen3_5_moe.py`, llama.cpp `src/models/qwen35moe.cpp`). The layer loop, the gated
//! attention and the shared expert live in `Session::forward` (src/model/qwen3moe.rs); this is
//! the Gated DeltaNet mixer of the 3-in-4 linear-attention layers.

use crate::error::Result;
use crate::model::deltanet;
use crate::model::qwen3moe::{rmsnorm_rows, Session};
use crate::model::weights::DeltaNet;

impl Session<'_> {
    /// x += Wout · gated_norm(delta_rule(silu(conv(Wqkv h)), gates), Wz h), h = rmsnorm(x).
    /// Advances this layer's conv and recurrent state by the n tokens (prefill runs the same
    /// recurrence as decode, so both leave the same state).
    pub(crate) fn delta_net(&mut self, l: usize, d: &DeltaNet, x: &mut [f32], n: usize) -> Result<()> {
        let w = self.w;
        let sh = w.gdn.expect("DeltaNet layers come with a DeltaNet shape");
        let (dim, ch, inner, nv) = (w.cfg.dim as usize, sh.channels(), sh.inner(), sh.n_v_heads);
        let eps = w.cfg.rms_eps as f32;
        let b = self.backend;

        let mut h = x.to_vec(); // [n, dim]
        rmsnorm_rows(&mut h, &w.layers[l].attn_norm, eps);
        let mut qkv = vec![0f32; n * ch]; // [n, q n_k·dk | k n_k·dk | v n_v·dv]
        let mut z = vec![0f32; n * inner]; // [n, n_v·dv]
        let mut beta = vec![0f32; n * nv]; // [n, n_v]
        let mut decay = vec![0f32; n * nv]; // [n, n_v]
        b.matmul(&d.qkv, &h, n, &mut qkv)?;
        b.matmul(&d.z, &h, n, &mut z)?;
        b.matmul(&d.beta, &h, n, &mut beta)?;
        b.matmul(&d.alpha, &h, n, &mut decay)?;

        deltanet::conv_silu(&mut qkv, &mut self.conv_state[l], &d.conv, n, ch, sh.conv_kernel);
        deltanet::gates(&mut beta, &mut decay, &d.dt_bias, &d.a);
        let mut o = vec![0f32; n * inner]; // [n, n_v·dv]
        deltanet::delta_rule(&qkv, &beta, &decay, &mut self.ssm_state[l], &sh, n, &mut o);
        deltanet::gated_norm(&mut o, &z, &d.norm, eps);

        let mut out = vec![0f32; n * dim]; // [n, dim]
        b.matmul(&d.out, &o, n, &mut out)?;
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
        Ok(())
    }
}
