//! The Qwen3-MoE forward pass (models.md §1.2; HF `modeling_qwen3_moe.py`, llama.cpp
//! `src/models/qwen3moe.cpp`): RMSNorm, per-head q/k RMSNorm before NeoX RoPE, GQA attention
//! over a paged KV cache, softmax → top-k → (renormalised) router, SwiGLU experts, untied
//! output. Attention and the routed MoE are shared with qwen35moe (src/forward/qwen35moe.rs).

use super::{Experts, Session};
use crate::error::Result;
use crate::ops::{AttnGate, Kernel, MoeStage};
use crate::rotary::device::download;
use crate::rotary::upload::{DAttention, DMixer};

impl Session<'_> {
    /// One micro-batch of n ≤ ubatch tokens at positions n_past.. through every layer.
    pub(super) fn qwen3moe(&mut self, tokens: &[u32]) -> Result<()> {
        let (n, dim, s) = (tokens.len(), self.cfg.dim as usize, self.s);
        assert!(n > 0 && n <= self.ubatch, "ubatch of {n}");
        self.embed(tokens)?; // x [n, dim]
        for l in 0..self.dw.layers.len() {
            let layer = &self.dw.layers[l];
            let (attn_norm, DMixer::Attention(a)) = (layer.attn_norm, layer.mixer) else {
                unreachable!("every qwen3moe layer is attention")
            };
            self.rmsnorm(s.x, attn_norm, s.h, n, dim)?; // h [n, dim]
            self.attention(a, n)?; // x += Wo · attention(h)
            self.moe(l, n)?; // x += Σ_j w_j · expert_j(rmsnorm(x))
        }
        Ok(())
    }

    /// Attention on h = rmsnorm(x) (in s.h): q, k, v; per-head norm; RoPE; cache; attend;
    /// x += Wo o. Gated (qwen35moe): q|gate per head from one projection, o ⊙ sigmoid(gate).
    pub(super) fn attention(&mut self, a: DAttention, n: usize) -> Result<()> {
        let DAttention { wq, wk, wv, wo, q_norm, k_norm, cache, gate } = a;
        let c = &self.cfg;
        let (dim, hd, rope_dims) = (c.dim as usize, c.head_dim as usize, c.rope_dims as usize);
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        let (s, pos0) = (self.s, self.n_past);
        match gate {
            AttnGate::Sigmoid => {
                self.gemv(wq, s.h, s.qg, n)?; // qg [n, n_heads, 2 * head_dim]
                self.launch(Kernel::SplitGate {
                    qg: s.qg,
                    q: s.q,
                    gate: s.gate,
                    n,
                    n_heads,
                    head_dim: hd,
                })?;
            }
            AttnGate::None => self.gemv(wq, s.h, s.q, n)?, // q [n, n_heads * head_dim]
        }
        self.gemv(wk, s.h, s.k, n)?; // k [n, n_kv_heads * head_dim]
        self.gemv(wv, s.h, s.v, n)?; // v [n, n_kv_heads * head_dim]
        self.rmsnorm(s.q, q_norm, s.q, n * n_heads, hd)?;
        self.rmsnorm(s.k, k_norm, s.k, n * n_kv_heads, hd)?;
        let inv_freq = self.dw.inv_freq;
        for (x, heads) in [(s.q, n_heads), (s.k, n_kv_heads)] {
            self.launch(Kernel::Rope {
                x,
                inv_freq,
                n,
                n_heads: heads,
                head_dim: hd,
                rope_dims,
                pos0,
            })?;
        }
        self.launch(Kernel::KvStore { cache, k: s.k, v: s.v, n, pos0 })?;
        let scale = 1.0 / (hd as f32).sqrt();
        self.launch(Kernel::Attention {
            cache,
            q: s.q,
            o: s.o,
            n,
            n_heads,
            n_kv_heads,
            head_dim: hd,
            pos0,
            scale,
        })?;
        if gate == AttnGate::Sigmoid {
            self.launch(Kernel::SigmoidMul { y: s.o, g: s.gate, n: n * n_heads * hd })?;
        }
        self.gemv(wo, s.o, s.h, n)?; // h [n, dim]
        self.launch(Kernel::Add { y: s.x, x: s.h, n: n * dim })
    }

    /// x += Σ_j w_j · expert_j(h), h = rmsnorm(x) (left in s.h): router and top-k on the
    /// device, experts from the rotary (resident, cached, loaded or computed on the CPU).
    pub(super) fn moe(&mut self, l: usize, n: usize) -> Result<()> {
        let (dim, k, n_experts) =
            (self.cfg.dim as usize, self.cfg.n_experts_used as usize, self.cfg.n_experts as usize);
        let (s, norm, ub) = (self.s, self.topk_norm(), self.ubatch);
        let (ffn_norm, router) = (self.dw.layers[l].ffn_norm, self.dw.layers[l].router);
        self.rmsnorm(s.x, ffn_norm, s.h, n, dim)?; // h [n, dim]
        self.gemv(router, s.h, s.router, n)?; // router logits [n, n_experts]
        self.launch(Kernel::TopkMoe {
            logits: s.router,
            ids: s.ids,
            weights: s.weights,
            n,
            n_experts,
            k,
            norm,
        })?;
        let host_ids = self.route_on_host(l, n)?;
        let resident = self.rotary.resident;
        let predict = !resident && self.rotary.prefetches() && l + 1 < self.dw.layers.len();
        // A synthetic router knows what it will pick (with its stated recall): the device's
        // prediction is then neither computed nor downloaded.
        let host_pred = match self.router.as_mut() {
            Some(r) if predict => r.predict(l + 1, n),
            _ => None,
        };
        let device_predict = predict && host_pred.is_none();
        if device_predict {
            // The next layer's router on this layer's state: its likely experts, early.
            let next = &self.dw.layers[l + 1];
            let (ffn_norm1, router1) = (next.ffn_norm, next.router);
            self.rmsnorm(s.x, ffn_norm1, s.act, n, dim)?;
            self.gemv(router1, s.act, s.router, n)?;
            let (ids, weights) = (s.ids + (ub * k * 4) as u64, s.weights + (ub * k * 4) as u64);
            self.launch(Kernel::TopkMoe { logits: s.router, ids, weights, n, n_experts, k, norm })?;
        }
        let mut pred = host_pred.unwrap_or_default();
        let mut cpu_experts = false;
        if resident {
            self.rotary.count_resident(l, n);
        } else {
            // The one device-to-host copy of the layer: this layer's ids (and the prediction).
            let mut ids = vec![0i32; n * k]; // [n, k]
            if device_predict {
                let mut both = vec![0i32; ub * k + n * k]; // [ubatch + n, k]
                download(self.dev.as_mut(), s.ids, &mut both)?;
                ids.copy_from_slice(&both[..n * k]);
                pred = both[ub * k..].to_vec();
            } else if host_ids.is_none() {
                download(self.dev.as_mut(), s.ids, &mut ids)?;
            }
            if let Some(h) = &host_ids {
                ids.copy_from_slice(h);
            }
            cpu_experts = self.rotary.resolve(self.dev.as_mut(), l, n, &ids, &s)?;
        }
        let ly = &self.dw.layers[l];
        let ffn = self.cfg.expert_ffn_dim as usize;
        let routed = Experts {
            table: ly.tables,
            n_experts,
            ty_gate_up: ly.ty_gate_up,
            ty_down: ly.ty_down,
            ffn,
        };
        if cpu_experts {
            // The hybrid step: the GPU runs the hits and loads while the host computes the
            // misses it was given; their rows go up, then one combine in the canonical order.
            self.launch_moe(routed, s.ids, s.weights, n, k, MoeStage::Experts)?;
            self.rotary.join_cpu(self.dev.as_mut(), &s)?;
            self.launch_moe(routed, s.ids, s.weights, n, k, MoeStage::Combine)?;
            self.rotary.load_behind_cpu(self.dev.as_mut())?;
        } else {
            self.launch_moe(routed, s.ids, s.weights, n, k, MoeStage::All)?;
        }
        if !resident {
            self.rotary.layer_done(self.dev.as_mut())?;
        }
        if predict {
            self.rotary.prefetch(self.dev.as_mut(), l + 1, n, &pred)?;
        }
        Ok(())
    }
}
