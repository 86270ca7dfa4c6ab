//! The Qwen3.5/3.6-MoE forward pass (models.md §2.2; HF `modeling_qwen3_5_moe.py`, llama.cpp
//! `src/models/qwen35moe.cpp`): three in four layers mix tokens with Gated DeltaNet (linear
//! attention with a recurrent state, src/ops/deltanet.rs), the rest with gated attention; every
//! layer adds a shared expert to the routed ones. Attention and the routed MoE are qwen3moe's.

use super::{Experts, Session};
use crate::error::Result;
use crate::ops::{HeadOrder, Kernel, MoeStage};
use crate::rotary::device::upload;
use crate::rotary::upload::{DDeltaNet, DMixer};

impl Session<'_> {
    /// One micro-batch of n ≤ ubatch tokens at positions n_past.. through every layer.
    pub(super) fn qwen35moe(&mut self, tokens: &[u32]) -> Result<()> {
        let (n, dim, s) = (tokens.len(), self.cfg.dim as usize, self.s);
        assert!(n > 0 && n <= self.ubatch, "ubatch of {n}");
        self.embed(tokens)?; // x [n, dim]
        for l in 0..self.dw.layers.len() {
            let (attn_norm, mixer) = (self.dw.layers[l].attn_norm, self.dw.layers[l].mixer);
            self.rmsnorm(s.x, attn_norm, s.h, n, dim)?; // h [n, dim]
            match mixer {
                // x += Wo · (attention(h) ⊙ σ(gate))
                DMixer::Attention(a) => self.attention(a, n)?,
                DMixer::DeltaNet(g) => self.delta_net(g, n)?, // x += Wout · delta_net(h)
            }
            self.moe(l, n)?; // x += Σ_j w_j · expert_j(h'), h' = rmsnorm(x) (left in s.h)
            self.shared_expert(l, n)?; // x += σ(gate_inp · h') · shared(h')
        }
        Ok(())
    }

    /// Gated DeltaNet on h = rmsnorm(x) (in s.h): projections, conv, gates, the delta rule
    /// over the micro-batch, gated norm, x += Wout o. The layer's state advances by n tokens
    /// (prefill runs the same recurrence as decode, so both leave the same state).
    fn delta_net(&mut self, g: DDeltaNet, n: usize) -> Result<()> {
        let DDeltaNet { qkv, z, beta, alpha, out, conv, dt_bias, a, norm, conv_state, ssm_state } =
            g;
        let sh = self.w.gdn.expect("DeltaNet layers come with a DeltaNet shape");
        let (s, dim, eps) = (self.s, self.cfg.dim as usize, self.cfg.rms_eps as f32);
        let (channels, n_v) = (sh.channels(), sh.n_v_heads);
        self.gemv(qkv, s.h, s.gdn_x, n)?; // [n, q n_k·dk | k n_k·dk | v n_v·dv]
        self.gemv(z, s.h, s.gdn_z, n)?; // [n, n_v·dv]
        self.gemv(beta, s.h, s.gdn_b, n)?; // [n, n_v]
        self.gemv(alpha, s.h, s.gdn_a, n)?; // [n, n_v]
        let kernel = sh.conv_kernel;
        self.launch(Kernel::GdnConv {
            x: s.gdn_x,
            state: conv_state,
            w: conv,
            n,
            channels,
            kernel,
        })?;
        self.launch(Kernel::GdnGates { beta: s.gdn_b, alpha: s.gdn_a, dt_bias, a, n, n_v })?;
        self.launch(Kernel::GdnRule {
            qkv: s.gdn_x,
            beta: s.gdn_b,
            decay: s.gdn_a,
            state: ssm_state,
            o: s.gdn_o, // [n, n_v·dv]
            n,
            n_k: sh.n_k_heads,
            n_v,
            head_k: sh.head_k,
            head_v: sh.head_v,
            order: if sh.tiled { HeadOrder::Tiled } else { HeadOrder::Grouped },
        })?;
        let (rows, width) = (n * n_v, sh.head_v);
        self.launch(Kernel::GatedNorm { x: s.gdn_o, z: s.gdn_z, w: norm, rows, width, eps })?;
        self.gemv(out, s.gdn_o, s.h, n)?; // h [n, dim]
        self.launch(Kernel::Add { y: s.x, x: s.h, n: n * dim })
    }

    /// x += sigmoid(gate_inp · h) · shared(h), h = the MoE's normed input (s.h): the MoE
    /// kernel over a one-expert table, every token weighted by its gate.
    fn shared_expert(&mut self, l: usize, n: usize) -> Result<()> {
        let s = self.s;
        let Some(sx) = self.dw.layers[l].shared else { return Ok(()) };
        self.gemv(sx.gate_inp, s.h, s.router, n)?; // [n, 1]
        self.launch(Kernel::Sigmoid { x: s.router, n })?;
        let shared = Experts {
            table: sx.table,
            n_experts: 1,
            ty_gate_up: sx.ty_gate_up,
            ty_down: sx.ty_down,
            ffn: sx.ffn,
        };
        self.launch_moe(shared, sx.ids, s.router, n, 1, MoeStage::All)
    }

    /// Zero every DeltaNet layer's conv and recurrent state (a new sequence starts).
    pub(super) fn clear_recurrent_state(&mut self) -> Result<()> {
        let Some(sh) = self.w.gdn else { return Ok(()) };
        let zeros = vec![0f32; sh.state_len().max(sh.conv_state_len())];
        for l in 0..self.dw.layers.len() {
            if let DMixer::DeltaNet(DDeltaNet { conv_state, ssm_state, .. }) =
                self.dw.layers[l].mixer
            {
                upload(self.dev.as_mut(), conv_state, &zeros[..sh.conv_state_len()])?;
                upload(self.dev.as_mut(), ssm_state, &zeros[..sh.state_len()])?;
            }
        }
        Ok(())
    }
}
