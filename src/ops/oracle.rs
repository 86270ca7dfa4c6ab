//! The oracle: the scalar reference of the op vocabulary (src/ops/mod.rs), obviously correct
//! and in one place. The selftest compares every device with it; host kernels (src/ops/host.rs)
//! call these where the scalar code is also the fast code (O(dim) steps).

use half::f16;

use super::TopkNorm;
use crate::backend::{Backend, Mat};
use crate::error::Result;

/// NeoX RoPE of `n` tokens of `n_heads` heads at positions pos0.., from the inverse
/// frequencies (the simulator and the selftest reference; the forward pass inlines it).
pub fn rope_tokens(
    x: &mut [f32],
    inv_freq: &[f32],
    n: usize,
    n_heads: usize,
    head_dim: usize,
    pos0: usize,
) {
    for t in 0..n {
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|&f| {
                let (s, c) = ((pos0 + t) as f32 * f).sin_cos();
                (c, s)
            })
            .collect();
        x[t * n_heads * head_dim..(t + 1) * n_heads * head_dim]
            .chunks_exact_mut(head_dim)
            .for_each(|h| rope(h, &cs));
    }
}

/// One expert on one token: down · (silu(gate · x) ⊙ (up · x)). The simulator's MoE kernel,
/// the rotary's CPU fallback and the selftest reference share it, so a streamed run agrees
/// with a resident one to the bit.
pub fn expert_forward(
    b: &dyn Backend,
    gate: &Mat,
    up: &Mat,
    down: &Mat,
    x: &[f32],
) -> Result<Vec<f32>> {
    let (mut g, mut u, mut y) = (vec![0f32; gate.rows], vec![0f32; up.rows], vec![0f32; down.rows]);
    b.matmul(gate, x, 1, &mut g)?;
    b.matmul(up, x, 1, &mut u)?;
    g.iter_mut().zip(&u).for_each(|(g, &u)| *g = silu(*g) * u);
    b.matmul(down, &g, 1, &mut y)?;
    Ok(y)
}

/// Split gated attention's packed q projection [n, n_heads, (q head_dim | gate head_dim)] into
/// q and gate, each [n, n_heads * head_dim].
pub fn split_gate(qg: &[f32], hd: usize, q: &mut [f32], gate: &mut [f32]) {
    for ((pair, q), g) in
        qg.chunks_exact(2 * hd).zip(q.chunks_exact_mut(hd)).zip(gate.chunks_exact_mut(hd))
    {
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
pub fn topk_moe(
    logits: &[f32],
    n_experts: usize,
    k: usize,
    norm: TopkNorm,
) -> (Vec<i32>, Vec<f32>) {
    let renorm = norm == TopkNorm::Renorm;
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

/// Causal GQA attention with an f16 cache, as the CPU engine computes it: q, k, v rounded to
/// f16, scores in f32, softmax, then the weights rounded to f16 before the V sum.
#[allow(clippy::too_many_arguments)] // the attention kernel's parameters, as abi.h has them
pub fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    pos0: usize,
    scale: f32,
) -> Vec<f32> {
    let r = |x: f32| f16::from_f32(x).to_f32();
    let kv_width = n_kv_heads * hd;
    let mut o = vec![0f32; n * n_heads * hd];
    for t in 0..n {
        let n_seen = pos0 + t + 1;
        for h in 0..n_heads {
            let kvh = h / (n_heads / n_kv_heads);
            let qh: Vec<f32> = q[(t * n_heads + h) * hd..][..hd].iter().map(|&x| r(x)).collect();
            let mut s: Vec<f32> = (0..n_seen)
                .map(|p| {
                    let kp = &k[p * kv_width + kvh * hd..][..hd];
                    qh.iter().zip(kp).map(|(a, &b)| a * r(b)).sum::<f32>() * scale
                })
                .collect();
            softmax(&mut s);
            let oh = &mut o[(t * n_heads + h) * hd..][..hd];
            for (p, &w) in s.iter().enumerate() {
                let vp = &v[p * kv_width + kvh * hd..][..hd];
                oh.iter_mut().zip(vp).for_each(|(o, &x)| *o += r(w) * r(x));
            }
        }
    }
    o
}
