//! The Qwen3-MoE forward pass (models.md §1.2; HF `modeling_qwen3_moe.py`, llama.cpp
//! `src/models/qwen3moe.cpp`): RMSNorm, per-head q/k RMSNorm before NeoX RoPE, GQA attention
//! over a KV cache, softmax → top-k → (renormalised) router, SwiGLU experts, untied output.
//! Qwen3.5-MoE (§2.2) runs through the same `forward()`: its layers swap the mixer (Gated
//! DeltaNet, src/model/qwen35moe.rs, or gated attention here) and add a shared expert.
//!
//! `Session::forward` takes a batch of tokens at the next positions: a whole prompt (prefill)
//! or one token (decode); both run the same code, so decode reproduces prefill. Every matrix
//! product goes to the `Backend`; the O(dim) steps are plain scalar code here.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::backend::{Backend, Mat};
use crate::error::{Error, Result};
use crate::model::weights::{Attention, Mixer, Weights};
use crate::quant;

/// Which positions' logits `forward` returns.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (`rotary logits`, tests).
    All,
}

/// How the KV cache stores keys and values.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KvType {
    /// Exact: the reference backend's choice (logits match HF to 1e-12).
    F32,
    /// Half the memory; q and the attention weights are rounded to f16 for the dot products,
    /// as llama.cpp's default f16 cache does.
    F16,
}

/// The KV cache of one layer: `[n_ctx, n_kv_heads * head_dim]` in the session's KvType.
enum KvCache {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvCache {
    fn new(kv: KvType, len: usize) -> KvCache {
        match kv {
            KvType::F32 => KvCache::F32(vec![0f32; len]),
            KvType::F16 => KvCache::F16(vec![f16::ZERO; len]),
        }
    }

    fn store(&mut self, at: usize, values: &[f32]) {
        match self {
            KvCache::F32(c) => c[at..at + values.len()].copy_from_slice(values),
            KvCache::F16(c) => c[at..at + values.len()]
                .iter_mut()
                .zip(values)
                .for_each(|(c, &v)| *c = f16::from_f32(v)),
        }
    }

    /// Rows 0..rows of one head: out[p, ..] = cache[p * stride + offset ..][..width], widened
    /// to f32 (exactly) with the CPU's f16 conversion instructions where it has them.
    fn gather(&self, offset: usize, stride: usize, rows: usize, out: &mut [f32]) {
        let width = out.len() / rows.max(1);
        for (p, dst) in out.chunks_exact_mut(width).take(rows).enumerate() {
            let at = p * stride + offset;
            match self {
                KvCache::F32(c) => dst.copy_from_slice(&c[at..at + width]),
                KvCache::F16(c) => c[at..at + width].convert_to_f32_slice(dst),
            }
        }
    }

    /// Σ a[i] · b[i]: in order for the exact f32 cache (the reference), in 8 lanes for the
    /// f16 cache (vectorised; the lanes change only the rounding of the sum).
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            KvCache::F32(_) => dot(a, b),
            KvCache::F16(_) => {
                let mut acc = [0f32; 8];
                let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
                let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
                for (x, y) in ac.zip(bc) {
                    for i in 0..8 {
                        acc[i] += x[i] * y[i];
                    }
                }
                acc.iter().sum::<f32>() + tail
            }
        }
    }

    /// Round `x` to what the cache's dot products see.
    fn round(&self, x: f32) -> f32 {
        match self {
            KvCache::F32(_) => x,
            KvCache::F16(_) => f16::from_f32(x).to_f32(),
        }
    }
}

/// A model in use: weights, a backend, and the KV cache of one sequence.
pub struct Session<'w> {
    pub(crate) w: &'w Weights<'w>,
    pub(crate) backend: &'w dyn Backend,
    n_ctx: usize,
    /// Tokens already in the cache (the position of the next token).
    pub n_past: usize,
    k_cache: Vec<KvCache>, // [n_layers][n_ctx, n_kv_heads * head_dim] (empty for DeltaNet layers)
    v_cache: Vec<KvCache>, // [n_layers][n_ctx, n_kv_heads * head_dim] (empty for DeltaNet layers)
    /// Gated DeltaNet state per layer (empty for attention layers): the last K-1 projected
    /// inputs [K-1, channels] and the recurrent state [n_v_heads, head_k, head_v], fp32.
    pub(crate) conv_state: Vec<Vec<f32>>,
    pub(crate) ssm_state: Vec<Vec<f32>>,
    /// RoPE inverse frequencies θ^(-2i/rot), i < rot/2.
    inv_freq: Vec<f32>,
    /// Benchmark routing modes and routing traces (None: the router's top-k).
    pub router: Option<crate::routing::Router>,
    /// Attention workspaces, one per thread, kept between calls (long contexts would
    /// otherwise fault in fresh pages for every layer of every token).
    attn_scratch: Vec<Vec<f32>>,
}

impl<'w> Session<'w> {
    /// A session with room for `n_ctx` tokens (at most the model's context length), with an
    /// f32 KV cache for the reference backend and f16 otherwise.
    pub fn new(w: &'w Weights<'w>, backend: &'w dyn Backend, n_ctx: usize) -> Result<Session<'w>> {
        let kv = if backend.is_reference() { KvType::F32 } else { KvType::F16 };
        Session::with_kv_type(w, backend, n_ctx, kv)
    }

    pub fn with_kv_type(
        w: &'w Weights<'w>,
        backend: &'w dyn Backend,
        n_ctx: usize,
        kv: KvType,
    ) -> Result<Session<'w>> {
        let c = &w.cfg;
        if n_ctx == 0 || n_ctx as u64 > c.context_length {
            let max = c.context_length;
            return Err(Error::Usage(format!("context size {n_ctx} is not in 1..={max}")));
        }
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let kv_len = |l: &u64| if c.is_full_attention(*l) { n_ctx * kv_width } else { 0 };
        let gdn_len = |l: &u64, f: fn(&crate::model::deltanet::Shape) -> usize| match &w.gdn {
            Some(sh) if !c.is_full_attention(*l) => f(sh),
            _ => 0,
        };
        let rot = c.rope_dims as usize;
        let inv_freq = (0..rot / 2)
            .map(|i| (c.rope_theta.powf(-(2.0 * i as f64) / rot as f64)) as f32)
            .collect();
        Ok(Session {
            w,
            backend,
            n_ctx,
            n_past: 0,
            k_cache: (0..c.n_layers).map(|l| KvCache::new(kv, kv_len(&l))).collect(),
            v_cache: (0..c.n_layers).map(|l| KvCache::new(kv, kv_len(&l))).collect(),
            conv_state: (0..c.n_layers).map(|l| vec![0f32; gdn_len(&l, |s| s.conv_state_len())]).collect(),
            ssm_state: (0..c.n_layers).map(|l| vec![0f32; gdn_len(&l, |s| s.state_len())]).collect(),
            inv_freq,
            router: None,
            attn_scratch: Vec::new(),
        })
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forget the sequence (the KV cache is overwritten from position 0; the DeltaNet state,
    /// which accumulates, is cleared).
    pub fn reset(&mut self) {
        self.n_past = 0;
        self.conv_state.iter_mut().chain(self.ssm_state.iter_mut()).for_each(|s| s.fill(0.0));
        if let Some(r) = self.router.as_mut() {
            r.reset();
        }
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
        let w = self.w;
        for l in 0..w.layers.len() {
            match &w.layers[l].mixer {
                Mixer::Attention(a) => self.attention(l, a, &mut x, n)?,
                Mixer::DeltaNet(d) => self.delta_net(l, d, &mut x, n)?,
            }
            self.moe(l, &mut x, n)?;
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

    /// x += Wo · attention(rope(norm(Wq h)), rope(norm(Wk h)), Wv h), h = rmsnorm(x). Gated
    /// (qwen35moe): Wq h is [q_h | gate_h] per head and the output is o ⊙ sigmoid(gate).
    fn attention(&mut self, l: usize, layer: &Attention, x: &mut [f32], n: usize) -> Result<()> {
        let c = &self.w.cfg;
        let (dim, hd) = (c.dim as usize, c.head_dim as usize);
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        let (q_width, kv_width) = (n_heads * hd, n_kv_heads * hd);
        let eps = c.rms_eps as f32;

        let mut h = x.to_vec(); // [n, dim]
        rmsnorm_rows(&mut h, &self.w.layers[l].attn_norm, eps);
        let mut q = vec![0f32; n * q_width]; // [n, n_heads * head_dim]
        let mut k = vec![0f32; n * kv_width]; // [n, n_kv_heads * head_dim]
        let mut v = vec![0f32; n * kv_width]; // [n, n_kv_heads * head_dim]
        let mut gate = Vec::new(); // [n, n_heads * head_dim] when gated
        if layer.gated {
            let mut qg = vec![0f32; 2 * n * q_width]; // [n, n_heads, 2 * head_dim]
            self.backend.matmul(&layer.wq, &h, n, &mut qg)?;
            gate = vec![0f32; n * q_width];
            split_gate(&qg, hd, &mut q, &mut gate);
        } else {
            self.backend.matmul(&layer.wq, &h, n, &mut q)?;
        }
        self.backend.matmul(&layer.wk, &h, n, &mut k)?;
        self.backend.matmul(&layer.wv, &h, n, &mut v)?;

        // Per-head RMSNorm of q and k (before RoPE), then NeoX RoPE at each token's position.
        rmsnorm_rows(&mut q, &layer.q_norm, eps);
        rmsnorm_rows(&mut k, &layer.k_norm, eps);
        let mut cos_sin = vec![(0f32, 0f32); self.inv_freq.len()]; // [rot / 2]
        for t in 0..n {
            self.rope_angles(self.n_past + t, &mut cos_sin);
            let rope = |h: &mut [f32]| rope(h, &cos_sin);
            q[t * q_width..(t + 1) * q_width].chunks_exact_mut(hd).for_each(rope);
            k[t * kv_width..(t + 1) * kv_width].chunks_exact_mut(hd).for_each(rope);
        }
        // Append this batch's k, v to the cache.
        let at = self.n_past * kv_width;
        self.k_cache[l].store(at, &k);
        self.v_cache[l].store(at, &v);

        // Causal GQA attention: token t sees cache positions 0..=n_past + t. Each kv head's
        // cached keys and values are widened to f32 once and serve its whole group of q heads;
        // long contexts split the kv heads over the backend's threads.
        let (kc, vc) = (&self.k_cache[l], &self.v_cache[l]);
        q.iter_mut().for_each(|x| *x = kc.round(*x)); // q meets k at k's precision
        let g = AttnGeometry { n, n_past: self.n_past, n_heads, n_kv_heads, hd };
        let work = (self.n_past + n) * n * n_heads * hd;
        let threads = if work >= ATTN_PARALLEL_WORK { self.backend.threads().min(n_kv_heads) } else { 1 };
        let per = n_kv_heads.div_ceil(threads.max(1));
        let n_jobs = n_kv_heads.div_ceil(per);
        let scratch = &mut self.attn_scratch;
        if scratch.len() < n_jobs {
            scratch.resize_with(n_jobs, Vec::new);
        }
        let parts: Vec<Vec<f32>> = if n_jobs <= 1 {
            vec![attend_kv_heads(kc, vc, &q, &g, 0..n_kv_heads, &mut scratch[0])]
        } else {
            std::thread::scope(|sc| {
                let jobs: Vec<_> = (0..n_kv_heads)
                    .step_by(per)
                    .zip(scratch.iter_mut())
                    .map(|(h0, buf)| {
                        let (q, g) = (&q, &g);
                        sc.spawn(move || attend_kv_heads(kc, vc, q, g, h0..(h0 + per).min(n_kv_heads), buf))
                    })
                    .collect();
                jobs.into_iter().map(|j| j.join().expect("attention thread")).collect()
            })
        };
        // parts[i] is [n, its heads * head_dim]; interleave into o [n, n_heads * head_dim].
        let mut o = vec![0f32; n * q_width]; // [n, n_heads * head_dim]
        let mut head0 = 0;
        for part in &parts {
            let w = part.len() / n;
            for t in 0..n {
                o[t * q_width + head0 * hd..][..w].copy_from_slice(&part[t * w..(t + 1) * w]);
            }
            head0 += w / hd;
        }
        if layer.gated {
            o.iter_mut().zip(&gate).for_each(|(o, &g)| *o *= crate::model::deltanet::sigmoid(g));
        }
        let mut out = vec![0f32; n * dim]; // [n, dim]
        self.backend.matmul(&layer.wo, &o, n, &mut out)?;
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
        Ok(())
    }

    /// (cos, sin) of each rotary pair's angle at `pos`.
    fn rope_angles(&self, pos: usize, out: &mut [(f32, f32)]) {
        for (o, &f) in out.iter_mut().zip(&self.inv_freq) {
            let (sin, cos) = (pos as f32 * f).sin_cos();
            *o = (cos, sin);
        }
    }

    /// x += Σ_j w_j · expert_j(h), h = rmsnorm(x), experts and weights from the router.
    fn moe(&mut self, l: usize, x: &mut [f32], n: usize) -> Result<()> {
        let w = self.w;
        let layer = &w.layers[l];
        let c = &self.w.cfg;
        let (dim, ff) = (c.dim as usize, c.expert_ffn_dim as usize);
        let (n_experts, k) = (c.n_experts as usize, c.n_experts_used as usize);
        let mut h = x.to_vec(); // [n, dim]
        rmsnorm_rows(&mut h, &layer.ffn_norm, c.rms_eps as f32);
        let mut router = vec![0f32; n * n_experts]; // [n, n_experts]
        self.backend.matmul(&layer.router, &h, n, &mut router)?;

        // Per token: softmax over experts, top-k, renormalise (norm_topk_prob); or the
        // benchmark's routing mode, which picks from the same probabilities.
        let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts]; // expert → (t, w)
        router.chunks_exact_mut(n_experts).for_each(softmax);
        if let Some(r) = self.router.as_mut() {
            let (mut ids, mut w) = (vec![0usize; n * k], vec![0f32; n * k]); // [n, k]
            r.route(l, &router, c.norm_topk_prob, &mut ids, &mut w)?;
            for (i, (&e, &weight)) in ids.iter().zip(&w).enumerate() {
                chosen[e].push((i / k, weight));
            }
        } else {
            for t in 0..n {
                for (e, weight) in route_top_k(&router[t * n_experts..(t + 1) * n_experts], k, c.norm_topk_prob) {
                    chosen[e].push((t, weight));
                }
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
        // qwen35moe: x += sigmoid(w_sg · h) · shared(h), every token.
        if let Some(shared) = &layer.shared {
            let mut s = vec![0f32; n]; // [n, 1]
            self.backend.matmul(&shared.gate_inp, &h, n, &mut s)?;
            let e = &shared.expert;
            let sff = e.gate.rows;
            let (mut gate, mut up) = (vec![0f32; n * sff], vec![0f32; n * sff]); // [n, shared ffn]
            self.backend.matmul(&e.gate, &h, n, &mut gate)?;
            self.backend.matmul(&e.up, &h, n, &mut up)?;
            gate.iter_mut().zip(&up).for_each(|(g, &u)| *g = silu(*g) * u);
            let mut y = vec![0f32; n * dim]; // [n, dim]
            self.backend.matmul(&e.down, &gate, n, &mut y)?;
            for t in 0..n {
                let weight = crate::model::deltanet::sigmoid(s[t]);
                let xt = &mut x[t * dim..(t + 1) * dim];
                xt.iter_mut().zip(&y[t * dim..(t + 1) * dim]).for_each(|(x, &y)| *x += weight * y);
            }
        }
        Ok(())
    }
}

impl crate::model::Engine for Session<'_> {
    fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        Session::forward(self, tokens, which)
    }

    fn n_past(&self) -> usize {
        self.n_past
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn reset(&mut self) {
        Session::reset(self);
    }

    /// Attention's KV cache is read only below n_past, so dropping its tail is moving n_past
    /// back; DeltaNet's state and a routing trace cannot go back.
    fn rewind(&mut self, n_past: usize) -> bool {
        if self.ssm_state.iter().any(|s| !s.is_empty()) || self.router.is_some() || n_past > self.n_past {
            return false;
        }
        self.n_past = n_past;
        true
    }

    fn set_router(&mut self, router: crate::routing::Router) {
        self.router = Some(router);
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn threads(&self) -> usize {
        self.backend.threads()
    }
}

/// NeoX RoPE of `n` tokens of `n_heads` heads at positions pos0.., from the inverse
/// frequencies (the simulator and the selftest reference; the forward pass inlines it).
pub fn rope_tokens(x: &mut [f32], inv_freq: &[f32], n: usize, n_heads: usize, head_dim: usize, pos0: usize) {
    for t in 0..n {
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|&f| {
                let (s, c) = ((pos0 + t) as f32 * f).sin_cos();
                (c, s)
            })
            .collect();
        x[t * n_heads * head_dim..(t + 1) * n_heads * head_dim].chunks_exact_mut(head_dim).for_each(|h| rope(h, &cs));
    }
}

/// One expert on one token: down · (silu(gate · x) ⊙ (up · x)). The simulator's MoE kernel,
/// the rotary's CPU fallback and the selftest reference share it, so a streamed run agrees
/// with a resident one to the bit.
pub fn expert_forward(b: &dyn Backend, gate: &Mat, up: &Mat, down: &Mat, x: &[f32]) -> Result<Vec<f32>> {
    let (mut g, mut u, mut y) = (vec![0f32; gate.rows], vec![0f32; up.rows], vec![0f32; down.rows]);
    b.matmul(gate, x, 1, &mut g)?;
    b.matmul(up, x, 1, &mut u)?;
    g.iter_mut().zip(&u).for_each(|(g, &u)| *g = silu(*g) * u);
    b.matmul(down, &g, 1, &mut y)?;
    Ok(y)
}

/// Attention work (positions × tokens × q dims) from which the kv heads are split over threads.
const ATTN_PARALLEL_WORK: usize = 1 << 20;

/// The shape of one attention call.
struct AttnGeometry {
    n: usize,
    n_past: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
}

/// Attention for the q heads of kv heads `kv_heads`: returns [n, their q heads * head_dim].
/// `buf` is this thread's workspace (grown as needed, never shrunk).
fn attend_kv_heads(
    kc: &KvCache,
    vc: &KvCache,
    q: &[f32],
    g: &AttnGeometry,
    kv_heads: std::ops::Range<usize>,
    buf: &mut Vec<f32>,
) -> Vec<f32> {
    let (n, hd) = (g.n, g.hd);
    let (q_width, kv_width) = (g.n_heads * hd, g.n_kv_heads * hd);
    let group = g.n_heads / g.n_kv_heads;
    let n_all = g.n_past + n;
    let width = kv_heads.len() * group * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * width]; // [n, heads here * head_dim]
    if buf.len() < n_all * (2 * hd + 1) {
        buf.resize(n_all * (2 * hd + 1), 0.0);
    }
    let (kf, rest) = buf.split_at_mut(n_all * hd); // [n_all, head_dim] one kv head's keys
    let (vf, rest) = rest.split_at_mut(n_all * hd); // [n_all, head_dim] one kv head's values
    let scores = &mut rest[..n_all]; // [n_seen]
    for (i, kv_head) in kv_heads.enumerate() {
        kc.gather(kv_head * hd, kv_width, n_all, kf);
        vc.gather(kv_head * hd, kv_width, n_all, vf);
        for t in 0..n {
            let n_seen = g.n_past + t + 1;
            for j in 0..group {
                let head = kv_head * group + j;
                let qh = &q[t * q_width + head * hd..][..hd];
                for (p, s) in scores[..n_seen].iter_mut().enumerate() {
                    *s = kc.dot_f32(qh, &kf[p * hd..(p + 1) * hd]) * scale;
                }
                softmax(&mut scores[..n_seen]);
                let oh = &mut out[t * width + (i * group + j) * hd..][..hd];
                for (p, &s) in scores[..n_seen].iter().enumerate() {
                    let w = vc.round(s);
                    oh.iter_mut().zip(&vf[p * hd..(p + 1) * hd]).for_each(|(o, &v)| *o += w * v);
                }
            }
        }
    }
    out
}

/// Split gated attention's packed q projection [n, n_heads, (q head_dim | gate head_dim)] into
/// q and gate, each [n, n_heads * head_dim].
pub fn split_gate(qg: &[f32], hd: usize, q: &mut [f32], gate: &mut [f32]) {
    for ((pair, q), g) in qg.chunks_exact(2 * hd).zip(q.chunks_exact_mut(hd)).zip(gate.chunks_exact_mut(hd)) {
        q.copy_from_slice(&pair[..hd]);
        g.copy_from_slice(&pair[hd..]);
    }
}

/// Rotate pairs (i, i + rot/2) of one head by the given angles (NeoX / HF rotate_half).
pub fn rope(head: &mut [f32], cos_sin: &[(f32, f32)]) {
    let half = cos_sin.len();
    for (i, &(cos, sin)) in cos_sin.iter().enumerate() {
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = a * sin + b * cos;
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

/// One token's routing from its router probabilities: the k largest, renormalised to sum to 1
/// when `renorm` (softmax → top-k → renormalise).
pub fn route_top_k(p: &[f32], k: usize, renorm: bool) -> Vec<(usize, f32)> {
    let top = top_k(p, k);
    let sum: f32 = top.iter().map(|&(_, v)| v).sum();
    top.into_iter().map(|(e, v)| (e, if renorm { v / sum } else { v })).collect()
}

/// The `topk_moe` kernel on the host: router logits [n, n_experts] → ids and weights [n, k]
/// (the simulator and the selftest reference).
pub fn topk_moe(logits: &[f32], n_experts: usize, k: usize, renorm: bool) -> (Vec<i32>, Vec<f32>) {
    let (mut ids, mut weights) = (Vec::with_capacity(logits.len() / n_experts * k), Vec::new());
    for row in logits.chunks_exact(n_experts) {
        let mut p = row.to_vec();
        softmax(&mut p);
        for (e, w) in route_top_k(&p, k, renorm) {
            ids.push(e as i32);
            weights.push(w);
        }
    }
    (ids, weights)
}

pub fn silu(x: f32) -> f32 {
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
