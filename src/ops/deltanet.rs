//! Gated DeltaNet, the linear-attention mixer of qwen35moe (models.md §2.2; HF
//! `Qwen3_5MoeGatedDeltaNet`, llama.cpp `delta-net-base.cpp`), as plain functions over slices.
//!
//! The host kernels (src/ops/host.rs) and the selftest reference both call these, so
//! a streamed run agrees with a resident one to the bit. Per layer the state is the last
//! `conv_kernel - 1` projected inputs (`conv`, `[K-1, channels]`) and one fp32 matrix per value
//! head (`s`, `[n_v_heads][head_k][head_v]`, v contiguous). Prefill runs the same recurrence
//! token by token as decode, so prefill and decode leave the same state.

use super::oracle::silu;
use super::HeadOrder;

/// The shape of one Gated DeltaNet layer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    /// Per-head key (and query) width.
    pub head_k: usize,
    /// Per-head value width.
    pub head_v: usize,
    pub conv_kernel: usize,
    /// Which key head value head `hv` reads: GGUF stores value heads "tiled" (hv % n_k_heads),
    /// HF groups them (hv / (n_v_heads / n_k_heads)). The weights decide, never a guess.
    pub tiled: bool,
}

impl Shape {
    /// The shape the delta rule sees (the conv is a kernel of its own): heads, widths, order.
    pub fn of_rule(
        n_k: usize,
        n_v: usize,
        head_k: usize,
        head_v: usize,
        order: HeadOrder,
    ) -> Shape {
        let tiled = order == HeadOrder::Tiled;
        Shape { n_k_heads: n_k, n_v_heads: n_v, head_k, head_v, conv_kernel: 1, tiled }
    }

    /// Channels of the q|k|v projection and of the convolution:
    /// [q n_k·dk | k n_k·dk | v n_v·dv].
    pub fn channels(&self) -> usize {
        2 * self.n_k_heads * self.head_k + self.n_v_heads * self.head_v
    }

    /// Value width n_v·dv (z, the output).
    pub fn inner(&self) -> usize {
        self.n_v_heads * self.head_v
    }

    pub fn k_head(&self, hv: usize) -> usize {
        if self.tiled {
            hv % self.n_k_heads
        } else {
            hv / (self.n_v_heads / self.n_k_heads)
        }
    }

    /// f32 values of the conv state.
    pub fn conv_state_len(&self) -> usize {
        (self.conv_kernel - 1) * self.channels()
    }

    /// f32 values of the recurrent state.
    pub fn state_len(&self) -> usize {
        self.n_v_heads * self.head_k * self.head_v
    }
}

/// Causal depthwise convolution of `n` tokens followed by SiLU, in place on `x` `[n, ch]`.
/// `state` `[K-1, ch]` holds the previous inputs (oldest first) and is advanced by `n`
/// tokens; `w` is `[ch, K]` (HF conv1d `[ch, 1, K]` squeezed, GGUF `ssm_conv1d`).
/// out_t[c] = silu(Σ_j w[c][j] · in_{t-(K-1)+j}[c]).
pub fn conv_silu(x: &mut [f32], state: &mut [f32], w: &[f32], n: usize, ch: usize, kk: usize) {
    assert!(kk >= 1 && x.len() == n * ch && state.len() == (kk - 1) * ch && w.len() == ch * kk);
    let hist = kk - 1;
    // The window of inputs this batch sees: the state, then the batch. [hist + n, ch]
    let mut window = Vec::with_capacity((hist + n) * ch);
    window.extend_from_slice(state);
    window.extend_from_slice(x);
    for t in 0..n {
        for c in 0..ch {
            let mut acc = 0f32;
            for j in 0..kk {
                acc += w[c * kk + j] * window[(t + j) * ch + c];
            }
            x[t * ch + c] = silu(acc);
        }
    }
    state.copy_from_slice(&window[n * ch..]);
}

/// Per token and value head: beta = sigmoid(b), decay = exp(a · softplus(alpha + dt_bias))
/// with a = −exp(A_log) < 0 (GGUF `ssm_a`). `b`, `alpha` are `[n, n_v]`, overwritten with beta
/// and decay.
pub fn gates(b: &mut [f32], alpha: &mut [f32], dt_bias: &[f32], a: &[f32]) {
    let hv = a.len();
    assert!(dt_bias.len() == hv && b.len() == alpha.len() && b.len().is_multiple_of(hv));
    for (i, (b, al)) in b.iter_mut().zip(alpha.iter_mut()).enumerate() {
        let h = i % hv;
        *b = sigmoid(*b);
        *al = (a[h] * softplus(*al + dt_bias[h])).exp();
    }
}

/// The gated delta rule over `n` tokens. `qkv` `[n, channels]` is the convolved projection
/// (q and k are l2-normalised here, q scaled by 1/√dk), `beta`/`decay` `[n, n_v]` from
/// `gates`, `s` the recurrent state. Writes `o` `[n, n_v·dv]`:
///   S ← decay·S;  u = β·(v − Sᵀk);  S ← S + k uᵀ;  o = Sᵀq      (per value head)
pub fn delta_rule(
    qkv: &[f32],
    beta: &[f32],
    decay: &[f32],
    s: &mut [f32],
    sh: &Shape,
    n: usize,
    o: &mut [f32],
) {
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.head_k, sh.head_v);
    let ch = sh.channels();
    assert!(qkv.len() == n * ch && beta.len() == n * nv && decay.len() == n * nv);
    assert!(s.len() == sh.state_len() && o.len() == n * nv * dv);
    let scale = 1.0 / (dk as f32).sqrt();
    let (mut q, mut k) = (vec![0f32; nk * dk], vec![0f32; nk * dk]); // [n_k, dk] each
    let mut u = vec![0f32; dv]; // [dv]
    for t in 0..n {
        let row = &qkv[t * ch..(t + 1) * ch];
        q.copy_from_slice(&row[..nk * dk]);
        k.copy_from_slice(&row[nk * dk..2 * nk * dk]);
        q.chunks_exact_mut(dk).for_each(|h| l2norm(h, scale));
        k.chunks_exact_mut(dk).for_each(|h| l2norm(h, 1.0));
        let v = &row[2 * nk * dk..];
        for h in 0..nv {
            let kh = sh.k_head(h);
            let (qh, khv) = (&q[kh * dk..(kh + 1) * dk], &k[kh * dk..(kh + 1) * dk]);
            let sh_ = &mut s[h * dk * dv..(h + 1) * dk * dv]; // [dk, dv]
            let (b, g) = (beta[t * nv + h], decay[t * nv + h]);
            sh_.iter_mut().for_each(|x| *x *= g);
            u.copy_from_slice(&v[h * dv..(h + 1) * dv]);
            for (i, &ki) in khv.iter().enumerate() {
                let srow = &sh_[i * dv..(i + 1) * dv];
                u.iter_mut().zip(srow).for_each(|(u, &s)| *u -= s * ki);
            }
            u.iter_mut().for_each(|u| *u *= b);
            let oh = &mut o[(t * nv + h) * dv..(t * nv + h + 1) * dv];
            oh.fill(0.0);
            for i in 0..dk {
                let srow = &mut sh_[i * dv..(i + 1) * dv];
                let (ki, qi) = (khv[i], qh[i]);
                srow.iter_mut().zip(&u).for_each(|(s, &u)| *s += ki * u);
                oh.iter_mut().zip(srow.iter()).for_each(|(o, &s)| *o += s * qi);
            }
        }
    }
}

/// Tokens per chunk of `delta_rule_chunked` (HF's and FLA's default).
pub const CHUNK: usize = 64;

/// `delta_rule` in the chunked (WY / UT-transform) form of HF's `torch_chunk_gated_delta_rule`:
/// per value head and chunk of c ≤ `chunk` tokens, with G the cumulative log decay and
/// P[i][j] = exp(G_i − G_j) (j ≤ i), solve the unit lower-triangular system
/// (I + strict_lower(β_i k_i·k_j P[i][j])) [U | W] = [β v | β k e^G], then
///   v' = U − W S;  o = (q e^G) S + lower(q_i·k_j P[i][j]) v';
///   S ← e^{G_c} S + (k e^{G_c − G})ᵀ v'.
/// The same state and outputs as the recurrence up to rounding (NMSE ~1e-13, tests/deltanet.rs):
/// the reference for a chunked device kernel. The engine's prefill keeps the recurrence: with
/// 8-bit activations (the `cpu` backend) the chunked form's rounding flips activation roundings
/// downstream, and prefill then differs from decode by logits NMSE ~5e-4 instead of 0.
#[allow(clippy::too_many_arguments)]
pub fn delta_rule_chunked(
    qkv: &[f32],
    beta: &[f32],
    decay: &[f32],
    s: &mut [f32],
    sh: &Shape,
    n: usize,
    o: &mut [f32],
    chunk: usize,
) {
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.head_k, sh.head_v);
    let ch = sh.channels();
    assert!(chunk >= 1 && qkv.len() == n * ch && beta.len() == n * nv && decay.len() == n * nv);
    assert!(s.len() == sh.state_len() && o.len() == n * nv * dv);
    let (q, k) = normalized_qk(qkv, sh, n); // [n, n_k, dk] each
    for h in 0..nv {
        let kh = sh.k_head(h);
        let st = &mut s[h * dk * dv..(h + 1) * dk * dv]; // [dk, dv]
        for t0 in (0..n).step_by(chunk) {
            let c = chunk.min(n - t0);
            // The chunk's rows for value head h: [c] slices of [dk], [dk], [dv].
            let qc: Vec<&[f32]> = (0..c).map(|i| &q[((t0 + i) * nk + kh) * dk..][..dk]).collect();
            let kc: Vec<&[f32]> = (0..c).map(|i| &k[((t0 + i) * nk + kh) * dk..][..dk]).collect();
            let vc: Vec<&[f32]> =
                (0..c).map(|i| &qkv[(t0 + i) * ch + 2 * nk * dk + h * dv..][..dv]).collect();
            let bc: Vec<f32> = (0..c).map(|i| beta[(t0 + i) * nv + h]).collect(); // [c]
            let g = chunk_log_decay(decay, t0, c, nv, h); // [c]
            let (mut u, w) = chunk_solve(&g, &kc, &vc, &bc, dk, dv);
            chunk_correct(&mut u, &w, st, dk, dv);
            let mut oc: Vec<&mut [f32]> = o
                .chunks_exact_mut(nv * dv)
                .skip(t0)
                .take(c)
                .map(|r| &mut r[h * dv..][..dv])
                .collect();
            chunk_output(&mut oc, &qc, &kc, &g, &u, st);
            chunk_update(st, &g, &kc, &u);
        }
    }
}

/// l2-normalised q (scaled by 1/√dk) and k of every token of `qkv`: [n, n_k, dk] each.
fn normalized_qk(qkv: &[f32], sh: &Shape, n: usize) -> (Vec<f32>, Vec<f32>) {
    let (nk, dk) = (sh.n_k_heads, sh.head_k);
    let ch = sh.channels();
    let scale = 1.0 / (dk as f32).sqrt();
    let (mut q, mut k) = (vec![0f32; n * nk * dk], vec![0f32; n * nk * dk]);
    for t in 0..n {
        let row = &qkv[t * ch..(t + 1) * ch];
        q[t * nk * dk..(t + 1) * nk * dk].copy_from_slice(&row[..nk * dk]);
        k[t * nk * dk..(t + 1) * nk * dk].copy_from_slice(&row[nk * dk..2 * nk * dk]);
    }
    q.chunks_exact_mut(dk).for_each(|h| l2norm(h, scale));
    k.chunks_exact_mut(dk).for_each(|h| l2norm(h, 1.0));
    (q, k)
}

/// The dot product of two equal-length rows.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
}

/// P[i][j] = e^(G_i − G_j), j ≤ i, from the chunk's cumulative log decay `g`.
fn decay_between(g: &[f32], i: usize, j: usize) -> f32 {
    (g[i] - g[j]).exp()
}

/// G: the cumulative log decay of value head `h` over the chunk of `c` tokens at `t0`, [c].
fn chunk_log_decay(decay: &[f32], t0: usize, c: usize, nv: usize, h: usize) -> Vec<f32> {
    let mut g = vec![0f32; c]; // [c]
    let mut acc = 0f32;
    for (i, gi) in g.iter_mut().enumerate() {
        acc += decay[(t0 + i) * nv + h].ln();
        *gi = acc;
    }
    g
}

/// Solve (I + strict_lower(β_i k_i·k_j P[i][j])) [U | W] = [β v | β k e^G]: U [c, dv], W [c, dk].
fn chunk_solve(
    g: &[f32],
    k: &[&[f32]],
    v: &[&[f32]],
    b: &[f32],
    dk: usize,
    dv: usize,
) -> (Vec<f32>, Vec<f32>) {
    let c = g.len();
    let (mut u, mut w) = (vec![0f32; c * dv], vec![0f32; c * dk]);
    for (i, &gi) in g.iter().enumerate() {
        let (ui, wi) = (i * dv, i * dk);
        for (x, &vv) in u[ui..ui + dv].iter_mut().zip(v[i]) {
            *x = b[i] * vv;
        }
        let eg = gi.exp();
        for (x, &kk) in w[wi..wi + dk].iter_mut().zip(k[i]) {
            *x = b[i] * kk * eg;
        }
        for j in 0..i {
            let a = b[i] * dot(k[i], k[j]) * decay_between(g, i, j);
            let (done, row) = u.split_at_mut(ui);
            row[..dv].iter_mut().zip(&done[j * dv..(j + 1) * dv]).for_each(|(x, &y)| *x -= a * y);
            let (done, row) = w.split_at_mut(wi);
            row[..dk].iter_mut().zip(&done[j * dk..(j + 1) * dk]).for_each(|(x, &y)| *x -= a * y);
        }
    }
    (u, w)
}

/// v' = U − W S in place of U [c, dv], with W [c, dk] and the head's state S [dk, dv].
fn chunk_correct(u: &mut [f32], w: &[f32], st: &[f32], dk: usize, dv: usize) {
    for i in 0..u.len() / dv {
        for r in 0..dk {
            let wr = w[i * dk + r];
            u[i * dv..(i + 1) * dv]
                .iter_mut()
                .zip(&st[r * dv..(r + 1) * dv])
                .for_each(|(x, &sv)| *x -= wr * sv);
        }
    }
}

/// The chunk's rows o [c][dv]: o_i = (q_i e^{G_i}) S + Σ_{j ≤ i} (q_i·k_j) P[i][j] v'_j.
fn chunk_output(
    o: &mut [&mut [f32]],
    q: &[&[f32]],
    k: &[&[f32]],
    g: &[f32],
    u: &[f32],
    st: &[f32],
) {
    for (i, oi) in o.iter_mut().enumerate() {
        let dv = oi.len();
        oi.fill(0.0);
        let eg = g[i].exp();
        for (r, &qr) in q[i].iter().enumerate() {
            let f = qr * eg;
            oi.iter_mut().zip(&st[r * dv..(r + 1) * dv]).for_each(|(x, &sv)| *x += f * sv);
        }
        for j in 0..=i {
            let a = dot(q[i], k[j]) * decay_between(g, i, j);
            oi.iter_mut().zip(&u[j * dv..(j + 1) * dv]).for_each(|(x, &y)| *x += a * y);
        }
    }
}

/// S ← e^{G_c} S + Σ_j (k_j e^{G_c − G_j}) v'_jᵀ for the head's state S [dk, dv], v' [c, dv].
fn chunk_update(st: &mut [f32], g: &[f32], k: &[&[f32]], u: &[f32]) {
    let (c, dv) = (g.len(), u.len() / g.len());
    let last = g[c - 1];
    st.iter_mut().for_each(|x| *x *= last.exp());
    for j in 0..c {
        let f = (last - g[j]).exp();
        for (r, &kr) in k[j].iter().enumerate() {
            let a = kr * f;
            st[r * dv..(r + 1) * dv]
                .iter_mut()
                .zip(&u[j * dv..(j + 1) * dv])
                .for_each(|(x, &y)| *x += a * y);
        }
    }
}

/// Gated RMSNorm of every `dv`-wide head of `o` in place: rms(o)·w·silu(z) (plain weight).
pub fn gated_norm(o: &mut [f32], z: &[f32], w: &[f32], eps: f32) {
    assert!(o.len() == z.len() && o.len().is_multiple_of(w.len()));
    let d = w.len();
    for (oh, zh) in o.chunks_exact_mut(d).zip(z.chunks_exact(d)) {
        let inv = 1.0 / (oh.iter().map(|&x| x * x).sum::<f32>() / d as f32 + eps).sqrt();
        for ((o, &z), &w) in oh.iter_mut().zip(zh).zip(w) {
            *o = *o * inv * w * silu(z);
        }
    }
}

/// x · scale / ‖x‖ (HF and FLA: x · rsqrt(Σx² + 1e-6)).
fn l2norm(x: &mut [f32], scale: f32) {
    let inv = 1.0 / (x.iter().map(|&v| v * v).sum::<f32>() + 1e-6).sqrt();
    x.iter_mut().for_each(|v| *v *= inv * scale);
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// log(1 + eˣ), linear above 20 as torch's softplus.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}
