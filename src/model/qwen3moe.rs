//! The Qwen3-MoE forward pass (models.md §1.2; HF `modeling_qwen3_moe.py`, llama.cpp
//! `src/models/qwen3moe.cpp`): RMSNorm, per-head q/k RMSNorm before NeoX RoPE, GQA attention
//! over a KV cache, softmax → top-k → (renormalised) router, SwiGLU experts, untied output.
//!
//! `Session::forward` takes a batch of tokens at the next positions: a whole prompt (prefill)
//! or one token (decode); both run the same code, so decode reproduces prefill. Every matrix
//! product goes to the `Backend`; the O(dim) steps are plain scalar code here.

use crate::backend::{Backend, Mat};
use crate::error::{Error, Result};
use crate::model::weights::{Layer, Weights};
use crate::quant;

/// Which positions' logits `forward` returns.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (`rotary logits`, tests).
    All,
}

/// A model in use: weights, a backend, and the KV cache of one sequence.
pub struct Session<'w> {
    w: &'w Weights<'w>,
    backend: &'w dyn Backend,
    n_ctx: usize,
    /// Tokens already in the cache (the position of the next token).
    pub n_past: usize,
    k_cache: Vec<Vec<f32>>, // [n_layers][n_ctx, n_kv_heads * head_dim]
    v_cache: Vec<Vec<f32>>, // [n_layers][n_ctx, n_kv_heads * head_dim]
    /// RoPE inverse frequencies θ^(-2i/rot), i < rot/2.
    inv_freq: Vec<f32>,
}

impl<'w> Session<'w> {
    /// A session with room for `n_ctx` tokens (at most the model's context length).
    pub fn new(w: &'w Weights<'w>, backend: &'w dyn Backend, n_ctx: usize) -> Result<Session<'w>> {
        let c = &w.cfg;
        if n_ctx == 0 || n_ctx as u64 > c.context_length {
            let max = c.context_length;
            return Err(Error::Usage(format!("context size {n_ctx} is not in 1..={max}")));
        }
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let rot = c.rope_dims as usize;
        let inv_freq = (0..rot / 2)
            .map(|i| (c.rope_theta.powf(-(2.0 * i as f64) / rot as f64)) as f32)
            .collect();
        Ok(Session {
            w,
            backend,
            n_ctx,
            n_past: 0,
            k_cache: (0..c.n_layers).map(|_| vec![0f32; n_ctx * kv_width]).collect(),
            v_cache: (0..c.n_layers).map(|_| vec![0f32; n_ctx * kv_width]).collect(),
            inv_freq,
        })
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forget the sequence (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.n_past = 0;
    }

    /// Run `tokens` at positions n_past.. and return logits: `[n_vocab]` for `Logits::Last`,
    /// `[tokens.len(), n_vocab]` for `Logits::All`.
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let c = &self.w.cfg;
        let (n, dim, n_vocab) = (tokens.len(), c.dim as usize, c.n_vocab as usize);
        if n == 0 {
            return Err(Error::Usage("no tokens to evaluate".into()));
        }
        if self.n_past + n > self.n_ctx {
            return Err(Error::ContextOverflow { n_tokens: self.n_past + n, n_ctx: self.n_ctx });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Usage(format!("token id {bad} is not below n_vocab {n_vocab}")));
        }

        // Embedding: one row of token_embd per token, dequantized.
        let mut x = vec![0f32; n * dim]; // [n, dim]
        for (t, &tok) in tokens.iter().enumerate() {
            let row = self.w.token_embd.row(tok as usize);
            quant::dequantize(self.w.token_embd.ty, row, &mut x[t * dim..(t + 1) * dim])?;
        }
        for l in 0..self.w.layers.len() {
            self.attention(l, &mut x, n)?;
            self.moe(&self.w.layers[l], &mut x, n)?;
        }
        self.n_past += n;

        // Final norm and the output projection, for the positions asked for.
        let first = if which == Logits::Last { n - 1 } else { 0 };
        let rows = n - first;
        let mut h = x[first * dim..].to_vec(); // [rows, dim]
        rmsnorm_rows(&mut h, &self.w.output_norm, c.rms_eps as f32);
        let mut logits = vec![0f32; rows * n_vocab]; // [rows, n_vocab]
        self.backend.matmul(&self.w.output, &h, rows, &mut logits)?;
        Ok(logits)
    }

    /// x += Wo · attention(rope(norm(Wq h)), rope(norm(Wk h)), Wv h), h = rmsnorm(x).
    fn attention(&mut self, l: usize, x: &mut [f32], n: usize) -> Result<()> {
        let c = &self.w.cfg;
        let layer: &Layer = &self.w.layers[l];
        let (dim, hd) = (c.dim as usize, c.head_dim as usize);
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        let (q_width, kv_width) = (n_heads * hd, n_kv_heads * hd);
        let eps = c.rms_eps as f32;

        let mut h = x.to_vec(); // [n, dim]
        rmsnorm_rows(&mut h, &layer.attn_norm, eps);
        let mut q = vec![0f32; n * q_width]; // [n, n_heads * head_dim]
        let mut k = vec![0f32; n * kv_width]; // [n, n_kv_heads * head_dim]
        let mut v = vec![0f32; n * kv_width]; // [n, n_kv_heads * head_dim]
        self.backend.matmul(&layer.wq, &h, n, &mut q)?;
        self.backend.matmul(&layer.wk, &h, n, &mut k)?;
        self.backend.matmul(&layer.wv, &h, n, &mut v)?;

        // Per-head RMSNorm of q and k (before RoPE), then NeoX RoPE at each token's position.
        rmsnorm_rows(&mut q, &layer.q_norm, eps);
        rmsnorm_rows(&mut k, &layer.k_norm, eps);
        for t in 0..n {
            let pos = self.n_past + t;
            q[t * q_width..(t + 1) * q_width].chunks_exact_mut(hd).for_each(|h| self.rope(h, pos));
            k[t * kv_width..(t + 1) * kv_width].chunks_exact_mut(hd).for_each(|h| self.rope(h, pos));
        }
        // Append this batch's k, v to the cache.
        let at = self.n_past * kv_width;
        self.k_cache[l][at..at + n * kv_width].copy_from_slice(&k);
        self.v_cache[l][at..at + n * kv_width].copy_from_slice(&v);

        // Causal GQA attention: token t sees cache positions 0..=n_past + t.
        let mut o = vec![0f32; n * q_width]; // [n, n_heads * head_dim]
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; self.n_past + n]; // [n_seen]
        for t in 0..n {
            let n_seen = self.n_past + t + 1;
            for head in 0..n_heads {
                let kv_head = head / (n_heads / n_kv_heads);
                let qh = &q[t * q_width + head * hd..][..hd];
                for (p, s) in scores[..n_seen].iter_mut().enumerate() {
                    let kp = &self.k_cache[l][p * kv_width + kv_head * hd..][..hd];
                    *s = dot(qh, kp) * scale;
                }
                softmax(&mut scores[..n_seen]);
                let oh = &mut o[t * q_width + head * hd..][..hd];
                for (p, &s) in scores[..n_seen].iter().enumerate() {
                    let vp = &self.v_cache[l][p * kv_width + kv_head * hd..][..hd];
                    oh.iter_mut().zip(vp).for_each(|(o, &v)| *o += s * v);
                }
            }
        }
        let mut out = vec![0f32; n * dim]; // [n, dim]
        self.backend.matmul(&layer.wo, &o, n, &mut out)?;
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
        Ok(())
    }

    /// Rotate pairs (i, i + rot/2) of one head by pos·θ_i (NeoX / HF rotate_half).
    fn rope(&self, head: &mut [f32], pos: usize) {
        let half = self.inv_freq.len();
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos - b * sin;
            head[i + half] = a * sin + b * cos;
        }
    }

    /// x += Σ_j w_j · expert_j(h), h = rmsnorm(x), experts and weights from the router.
    fn moe(&self, layer: &Layer, x: &mut [f32], n: usize) -> Result<()> {
        let c = &self.w.cfg;
        let (dim, ff) = (c.dim as usize, c.expert_ffn_dim as usize);
        let (n_experts, k) = (c.n_experts as usize, c.n_experts_used as usize);
        let mut h = x.to_vec(); // [n, dim]
        rmsnorm_rows(&mut h, &layer.ffn_norm, c.rms_eps as f32);
        let mut router = vec![0f32; n * n_experts]; // [n, n_experts]
        self.backend.matmul(&layer.router, &h, n, &mut router)?;

        // Per token: softmax over experts, top-k, renormalise (norm_topk_prob).
        let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts]; // expert → (t, w)
        for t in 0..n {
            let p = &mut router[t * n_experts..(t + 1) * n_experts];
            softmax(p);
            let top = top_k(p, k);
            let sum: f32 = top.iter().map(|&(_, v)| v).sum();
            for (e, v) in top {
                let weight = if c.norm_topk_prob { v / sum } else { v };
                chosen[e].push((t, weight));
            }
        }
        // Each expert runs once over the tokens routed to it (a batch in prefill).
        for (e, routed) in chosen.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let expert = &layer.experts[e];
            let m = routed.len();
            let mut xe = Vec::with_capacity(m * dim); // [m, dim]
            routed.iter().for_each(|&(t, _)| xe.extend_from_slice(&h[t * dim..(t + 1) * dim]));
            let mut gate = vec![0f32; m * ff]; // [m, ffn]
            let mut up = vec![0f32; m * ff]; // [m, ffn]
            self.backend.matmul(&expert.gate, &xe, m, &mut gate)?;
            self.backend.matmul(&expert.up, &xe, m, &mut up)?;
            gate.iter_mut().zip(&up).for_each(|(g, &u)| *g = silu(*g) * u);
            let mut y = vec![0f32; m * dim]; // [m, dim]
            self.backend.matmul(&expert.down, &gate, m, &mut y)?;
            for (i, &(t, weight)) in routed.iter().enumerate() {
                let xt = &mut x[t * dim..(t + 1) * dim];
                xt.iter_mut().zip(&y[i * dim..(i + 1) * dim]).for_each(|(x, &y)| *x += weight * y);
            }
        }
        Ok(())
    }
}

/// RMSNorm of every `w.len()`-wide row of `x`, in place: x̂ · w (Qwen3: plain weight).
pub fn rmsnorm_rows(x: &mut [f32], w: &[f32], eps: f32) {
    assert_eq!(x.len() % w.len(), 0, "rows of the weight's width");
    for row in x.chunks_exact_mut(w.len()) {
        let mean_sq = row.iter().map(|&v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        row.iter_mut().zip(w).for_each(|(v, &w)| *v = *v * inv * w);
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    x.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    x.iter_mut().for_each(|v| *v /= sum);
}

/// The k largest values with their indices, largest first (ties: lower index first).
pub fn top_k(p: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, p[i])).collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Logits of an f32 matrix row: used by tests and tools that hold a `Mat`.
pub fn mat_row_f32(m: &Mat, r: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; m.cols];
    quant::dequantize(m.ty, m.row(r), &mut out)?;
    Ok(out)
}
