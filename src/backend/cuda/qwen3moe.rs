//! The Qwen3-MoE forward pass on the device, step for step the same as src/model/qwen3moe.rs
//! (which is the specification; read it first). Everything stays on the GPU between the token
//! ids going in and the logits coming out: routing included (the router's top-k feeds the
//! expert kernels through device memory), so a decode step is one stream of launches with no
//! host round trip, ready for a CUDA graph.
//!
//! All device memory is allocated in `GpuSession::new` from the model's shapes: weights, the
//! paged f16 KV cache and the scratch of one micro-batch (UBATCH tokens). Nothing is allocated
//! per token. The whole model must fit; the rotary (expert streaming) is its own issue.

use super::device::{DevBuf, Device};
use super::ffi;
use super::kernels::{self, quant_of};
use crate::backend::Mat;
use crate::error::{Error, Result};
use crate::model::qwen3moe::Logits;
use crate::model::weights::{Expert, Weights};
use crate::model::{Engine, ModelConfig};

/// Tokens per micro-batch: prompts run in slices of this many.
const UBATCH: usize = 64;
/// Positions per KV page.
const PAGE_SIZE: usize = 16;

/// A weight matrix in VRAM.
struct DevMat {
    buf: DevBuf<u8>,
    quant: ffi::RotaryQuant,
    rows: usize,
    cols: usize,
}

impl DevMat {
    fn upload(dev: &Device, m: &Mat, name: &str) -> Result<DevMat> {
        let quant = quant_of(m.ty, name)?;
        Ok(DevMat { buf: dev.upload(m.data, name)?, quant, rows: m.rows, cols: m.cols })
    }
}

/// One layer's routed experts: all experts of a projection in one buffer, and the per-expert
/// pointer tables the MoE kernel reads.
struct DevExperts {
    _gate: DevBuf<u8>,
    _up: DevBuf<u8>,
    _down: DevBuf<u8>,
    gate_table: DevBuf<u64>, // [n_experts]
    up_table: DevBuf<u64>,   // [n_experts]
    down_table: DevBuf<u64>, // [n_experts]
    quant_gate_up: ffi::RotaryQuant,
    quant_down: ffi::RotaryQuant,
}

struct DevLayer {
    attn_norm: DevBuf<f32>, // [dim]
    wq: DevMat,             // [n_heads * head_dim, dim]
    wk: DevMat,             // [n_kv_heads * head_dim, dim]
    wv: DevMat,             // [n_kv_heads * head_dim, dim]
    wo: DevMat,             // [dim, n_heads * head_dim]
    q_norm: DevBuf<f32>,    // [head_dim]
    k_norm: DevBuf<f32>,    // [head_dim]
    ffn_norm: DevBuf<f32>,  // [dim]
    router: DevMat,         // [n_experts, dim]
    experts: DevExperts,
    k_cache: DevBuf<u16>,   // [n_pages, PAGE_SIZE, n_kv_heads * head_dim] f16
    v_cache: DevBuf<u16>,   // [n_pages, PAGE_SIZE, n_kv_heads * head_dim] f16
}

/// Scratch for one micro-batch of n ≤ UBATCH tokens.
struct Scratch {
    tokens: DevBuf<i32>,  // [UBATCH]
    x: DevBuf<f32>,       // [UBATCH, dim] the residual stream
    h: DevBuf<f32>,       // [UBATCH, dim] normed input / projection output
    q: DevBuf<f32>,       // [UBATCH, n_heads * head_dim]
    k: DevBuf<f32>,       // [UBATCH, n_kv_heads * head_dim]
    v: DevBuf<f32>,       // [UBATCH, n_kv_heads * head_dim]
    o: DevBuf<f32>,       // [UBATCH, n_heads * head_dim]
    router: DevBuf<f32>,  // [UBATCH, n_experts]
    ids: DevBuf<i32>,     // [UBATCH, k]
    weights: DevBuf<f32>, // [UBATCH, k]
    act: DevBuf<f32>,     // [UBATCH * k, ffn]
    out: DevBuf<f32>,     // [UBATCH * k, dim]
    offsets: DevBuf<i32>, // [n_experts + 1]
    pairs: DevBuf<i32>,   // [UBATCH * k]
    logits: DevBuf<f32>,  // [UBATCH, n_vocab]
}

/// A model resident on the GPU with the KV cache of one sequence.
pub struct GpuSession {
    dev: Device,
    cfg: ModelConfig,
    n_ctx: usize,
    n_past: usize,
    token_embd: DevMat,
    output_norm: DevBuf<f32>,
    output: DevMat,
    layers: Vec<DevLayer>,
    page_table: DevBuf<i32>, // [n_pages]
    inv_freq: DevBuf<f32>,   // [rope_dims / 2]
    s: Scratch,
    /// Bytes of device memory this session allocated.
    pub device_bytes: u64,
}

/// The shapes the kernels accept, checked once against the model.
fn check_shapes(c: &ModelConfig) -> Result<()> {
    let bad = |what: String| Err(Error::Usage(format!("the cuda backend cannot run this model: {what}")));
    if c.head_dim % 32 != 0 || c.head_dim > ffi::ROTARY_MAX_HEAD_DIM as u64 {
        return bad(format!("head_dim {} is not a multiple of 32 up to 256", c.head_dim));
    }
    if c.n_experts > ffi::ROTARY_MAX_EXPERTS as u64 || c.n_experts_used > ffi::ROTARY_MAX_EXPERTS_USED as u64 {
        return bad(format!("{} experts, {} used (at most 512 and 16)", c.n_experts, c.n_experts_used));
    }
    if c.dim % 32 != 0 || c.expert_ffn_dim % 32 != 0 {
        return bad(format!("dim {} and ffn {} must be multiples of 32", c.dim, c.expert_ffn_dim));
    }
    Ok(())
}

impl GpuSession {
    /// Upload `w` to device `ordinal` with room for `n_ctx` tokens. `progress(done, total)`
    /// is called with bytes uploaded.
    pub fn new(
        w: &Weights,
        n_ctx: usize,
        ordinal: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GpuSession> {
        let c = w.cfg.clone();
        check_shapes(&c)?;
        if n_ctx == 0 || n_ctx as u64 > c.context_length {
            let max = c.context_length;
            return Err(Error::Usage(format!("context size {n_ctx} is not in 1..={max}")));
        }
        let dev = Device::open(ordinal)?;
        let (free_before, _) = dev.mem_info()?;
        let mut bar = Progress { done: 0, total: weight_bytes(w), report: progress };
        let up_mat = |m: &Mat, name: &str, bar: &mut Progress| -> Result<DevMat> {
            let d = DevMat::upload(&dev, m, name)?;
            bar.add(m.data.len() as u64);
            Ok(d)
        };
        let token_embd = up_mat(&w.token_embd, "token_embd.weight", &mut bar)?;
        let output = up_mat(&w.output, "output.weight", &mut bar)?;
        let (kv_width, n_pages) = ((c.n_kv_heads * c.head_dim) as usize, n_ctx.div_ceil(PAGE_SIZE));
        let mut layers = Vec::with_capacity(w.layers.len());
        for (l, layer) in w.layers.iter().enumerate() {
            let name = |s: &str| format!("blk.{l}.{s}");
            layers.push(DevLayer {
                attn_norm: dev.upload(&layer.attn_norm, &name("attn_norm"))?,
                wq: up_mat(&layer.wq, &name("attn_q"), &mut bar)?,
                wk: up_mat(&layer.wk, &name("attn_k"), &mut bar)?,
                wv: up_mat(&layer.wv, &name("attn_v"), &mut bar)?,
                wo: up_mat(&layer.wo, &name("attn_output"), &mut bar)?,
                q_norm: dev.upload(&layer.q_norm, &name("attn_q_norm"))?,
                k_norm: dev.upload(&layer.k_norm, &name("attn_k_norm"))?,
                ffn_norm: dev.upload(&layer.ffn_norm, &name("ffn_norm"))?,
                router: up_mat(&layer.router, &name("ffn_gate_inp"), &mut bar)?,
                experts: upload_experts(&dev, layer, l)?,
                k_cache: dev.alloc(n_pages * PAGE_SIZE * kv_width, &name("k cache"))?,
                v_cache: dev.alloc(n_pages * PAGE_SIZE * kv_width, &name("v cache"))?,
            });
            bar.add(layer.experts.iter().map(expert_bytes).sum());
        }
        let rot = c.rope_dims as usize;
        let inv_freq: Vec<f32> =
            (0..rot / 2).map(|i| c.rope_theta.powf(-(2.0 * i as f64) / rot as f64) as f32).collect();
        let page_ids: Vec<i32> = (0..n_pages as i32).collect();
        let s = Scratch::new(&dev, &c)?;
        let mut session = GpuSession {
            output_norm: dev.upload(&w.output_norm, "output_norm")?,
            page_table: dev.upload(&page_ids, "page table")?,
            inv_freq: dev.upload(&inv_freq, "rope frequencies")?,
            dev,
            cfg: c,
            n_ctx,
            n_past: 0,
            token_embd,
            output,
            layers,
            s,
            device_bytes: 0,
        };
        session.dev.sync()?;
        let (free_after, _) = session.dev.mem_info()?;
        session.device_bytes = free_before.saturating_sub(free_after);
        Ok(session)
    }

    pub fn device(&self) -> String {
        self.dev.info.to_string()
    }

    /// y[n, rows] = m · x[n, cols] (x, y: scratch buffers at offset 0).
    fn gemv(&self, m: &DevMat, x: *const f32, y: *mut f32, n: usize) -> Result<()> {
        let p = ffi::RotaryGemv {
            quant: m.quant,
            w: m.buf.ptr().cast(),
            x,
            y,
            rows: m.rows as i32,
            cols: m.cols as i32,
            n_tokens: n as i32,
        };
        // SAFETY: m holds rows x cols; callers pass scratch buffers of at least n rows.
        unsafe { kernels::gemv(&self.dev, &p) }
    }

    fn rmsnorm(&self, x: *const f32, w: &DevBuf<f32>, y: *mut f32, rows: usize) -> Result<()> {
        let p = ffi::RotaryRmsNorm {
            x,
            w: w.ptr(),
            y,
            rows: rows as i32,
            width: w.len() as i32,
            eps: self.cfg.rms_eps as f32,
        };
        // SAFETY: x and y hold rows x w.len() floats (scratch sized for UBATCH tokens).
        unsafe { kernels::rmsnorm(&self.dev, &p) }
    }

    /// One micro-batch of n ≤ UBATCH tokens at positions n_past..; with `first`, the final
    /// hidden state of tokens first..n normed and projected into s.logits.
    fn ubatch(&mut self, tokens: &[u32], first: Option<usize>) -> Result<()> {
        let c = &self.cfg;
        let n = tokens.len();
        assert!(n > 0 && n <= UBATCH && first.is_none_or(|f| f < n), "ubatch of {n} from {first:?}");
        let (dim, hd) = (c.dim as usize, c.head_dim as usize);
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        let (n_experts, k) = (c.n_experts as usize, c.n_experts_used as usize);
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        self.dev.write(&mut self.s.tokens, 0, &ids)?;
        let s2 = &self.s;

        // Embedding.
        let p = ffi::RotaryEmbed {
            quant: self.token_embd.quant,
            table: self.token_embd.buf.ptr().cast(),
            tokens: s2.tokens.ptr(),
            x: s2.x.mut_ptr(),
            n_tokens: n as i32,
            dim: dim as i32,
        };
        // SAFETY: token ids were checked < n_vocab by forward(); x holds UBATCH x dim.
        unsafe { kernels::embed(&self.dev, &p)? };

        for layer in &self.layers {
            let cache = ffi::RotaryKvCache {
                k: layer.k_cache.mut_ptr(),
                v: layer.v_cache.mut_ptr(),
                page_table: self.page_table.ptr(),
                page_size: PAGE_SIZE as i32,
                kv_width: (n_kv_heads * hd) as i32,
            };
            // Attention: h = rmsnorm(x); q, k, v; per-head norm; RoPE; cache; attend; x += Wo o.
            self.rmsnorm(s2.x.ptr(), &layer.attn_norm, s2.h.mut_ptr(), n)?;
            self.gemv(&layer.wq, s2.h.ptr(), s2.q.mut_ptr(), n)?;
            self.gemv(&layer.wk, s2.h.ptr(), s2.k.mut_ptr(), n)?;
            self.gemv(&layer.wv, s2.h.ptr(), s2.v.mut_ptr(), n)?;
            self.rmsnorm(s2.q.ptr(), &layer.q_norm, s2.q.mut_ptr(), n * n_heads)?;
            self.rmsnorm(s2.k.ptr(), &layer.k_norm, s2.k.mut_ptr(), n * n_kv_heads)?;
            for (buf, heads) in [(&s2.q, n_heads), (&s2.k, n_kv_heads)] {
                let p = ffi::RotaryRope {
                    x: buf.mut_ptr(),
                    inv_freq: self.inv_freq.ptr(),
                    n_tokens: n as i32,
                    n_heads: heads as i32,
                    head_dim: hd as i32,
                    rope_dims: c.rope_dims as i32,
                    pos0: self.n_past as i32,
                };
                // SAFETY: buf holds n x heads x head_dim; inv_freq rope_dims / 2.
                unsafe { kernels::rope_neox(&self.dev, &p)? };
            }
            let store = ffi::RotaryKvStore {
                cache,
                k: s2.k.ptr(),
                v: s2.v.ptr(),
                n_tokens: n as i32,
                pos0: self.n_past as i32,
            };
            let attn = ffi::RotaryAttention {
                cache,
                q: s2.q.ptr(),
                o: s2.o.mut_ptr(),
                n_tokens: n as i32,
                n_heads: n_heads as i32,
                n_kv_heads: n_kv_heads as i32,
                head_dim: hd as i32,
                pos0: self.n_past as i32,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            // SAFETY: n_past + n <= n_ctx (checked by forward()): every position has a page.
            unsafe {
                kernels::kv_store(&self.dev, &store)?;
                kernels::attention(&self.dev, &attn)?;
            }
            self.gemv(&layer.wo, s2.o.ptr(), s2.h.mut_ptr(), n)?;
            let add = ffi::RotaryAdd { y: s2.x.mut_ptr(), x: s2.h.ptr(), n: (n * dim) as i64 };
            // SAFETY: both hold n x dim.
            unsafe { kernels::add(&self.dev, &add)? };

            // MoE: h = rmsnorm(x); router → top-k on the device; x += Σ w_j expert_j(h).
            self.rmsnorm(s2.x.ptr(), &layer.ffn_norm, s2.h.mut_ptr(), n)?;
            self.gemv(&layer.router, s2.h.ptr(), s2.router.mut_ptr(), n)?;
            let topk = ffi::RotaryTopkMoe {
                logits: s2.router.ptr(),
                ids: s2.ids.mut_ptr(),
                weights: s2.weights.mut_ptr(),
                n_tokens: n as i32,
                n_experts: n_experts as i32,
                k: k as i32,
                norm: if c.norm_topk_prob {
                    ffi::RotaryTopkNorm::ROTARY_TOPK_RENORM
                } else {
                    ffi::RotaryTopkNorm::ROTARY_TOPK_SOFTMAX
                },
            };
            let e = &layer.experts;
            let moe = ffi::RotaryMoe {
                quant_gate_up: e.quant_gate_up,
                quant_down: e.quant_down,
                gate: e.gate_table.ptr().cast(),
                up: e.up_table.ptr().cast(),
                down: e.down_table.ptr().cast(),
                ids: s2.ids.ptr(),
                weights: s2.weights.ptr(),
                x: s2.h.ptr(),
                act: s2.act.mut_ptr(),
                out: s2.out.mut_ptr(),
                group_offsets: s2.offsets.mut_ptr(),
                group_pairs: s2.pairs.mut_ptr(),
                residual: s2.x.mut_ptr(),
                dim: dim as i32,
                ffn: c.expert_ffn_dim as i32,
                n_tokens: n as i32,
                k: k as i32,
                n_experts: n_experts as i32,
            };
            // SAFETY: scratch sized for UBATCH tokens x k pairs; tables hold n_experts valid
            // expert pointers.
            unsafe {
                kernels::topk_moe(&self.dev, &topk)?;
                kernels::moe(&self.dev, &moe)?;
            }
        }

        self.n_past += n;
        let Some(first) = first else { return Ok(()) };
        // Final norm and output projection for tokens first..n.
        let rows = n - first;
        let x_first = s2.x.ptr_at(first * dim);
        self.rmsnorm(x_first, &self.output_norm, s2.h.mut_ptr(), rows)?;
        self.gemv(&self.output, s2.h.ptr(), s2.logits.mut_ptr(), rows)
    }
}

impl Engine for GpuSession {
    fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let n_vocab = self.cfg.n_vocab as usize;
        if tokens.is_empty() {
            return Err(Error::Usage("no tokens to evaluate".into()));
        }
        if self.n_past + tokens.len() > self.n_ctx {
            return Err(Error::ContextOverflow { n_tokens: self.n_past + tokens.len(), n_ctx: self.n_ctx });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Usage(format!("token id {bad} is not below n_vocab {n_vocab}")));
        }
        let mut logits = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(UBATCH).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let first = match which {
                Logits::All => Some(0),
                Logits::Last if last => Some(chunk.len() - 1),
                Logits::Last => None,
            };
            self.ubatch(chunk, first)?;
            if let Some(first) = first {
                let rows = chunk.len() - first;
                let at = logits.len();
                logits.resize(at + rows * n_vocab, 0f32);
                self.dev.read(&self.s.logits, 0, &mut logits[at..])?;
            }
        }
        if which == Logits::Last {
            let at = logits.len() - n_vocab;
            logits.drain(..at);
        }
        Ok(logits)
    }

    fn n_past(&self) -> usize {
        self.n_past
    }

    fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    fn reset(&mut self) {
        self.n_past = 0;
    }

    fn backend_name(&self) -> &'static str {
        "cuda"
    }

    fn threads(&self) -> usize {
        1
    }
}

impl Scratch {
    fn new(dev: &Device, c: &ModelConfig) -> Result<Scratch> {
        let (dim, q_width) = (c.dim as usize, (c.n_heads * c.head_dim) as usize);
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let (e, k, ffn) = (c.n_experts as usize, c.n_experts_used as usize, c.expert_ffn_dim as usize);
        let u = UBATCH;
        Ok(Scratch {
            tokens: dev.alloc(u, "scratch tokens")?,
            x: dev.alloc(u * dim, "scratch x")?,
            h: dev.alloc(u * dim, "scratch h")?,
            q: dev.alloc(u * q_width, "scratch q")?,
            k: dev.alloc(u * kv_width, "scratch k")?,
            v: dev.alloc(u * kv_width, "scratch v")?,
            o: dev.alloc(u * q_width, "scratch o")?,
            router: dev.alloc(u * e, "scratch router")?,
            ids: dev.alloc(u * k, "scratch expert ids")?,
            weights: dev.alloc(u * k, "scratch expert weights")?,
            act: dev.alloc(u * k * ffn, "scratch expert activations")?,
            out: dev.alloc(u * k * dim, "scratch expert outputs")?,
            offsets: dev.alloc(e + 1, "scratch expert offsets")?,
            pairs: dev.alloc(u * k, "scratch expert pairs")?,
            logits: dev.alloc(u * c.n_vocab as usize, "scratch logits")?,
        })
    }
}

/// A layer's experts into three buffers (expert e at e * its bytes) plus pointer tables.
fn upload_experts(dev: &Device, layer: &crate::model::weights::Layer, l: usize) -> Result<DevExperts> {
    let first = &layer.experts[0];
    let name = |s: &str| format!("blk.{l}.{s}");
    if first.gate.ty != first.up.ty {
        return Err(Error::UnsupportedType {
            name: name("ffn_up_exps.weight"),
            ty: format!("{} (the cuda backend needs gate and up in one format, gate is {})", first.up.ty, first.gate.ty),
        });
    }
    let one = |pick: for<'a, 'b> fn(&'a Expert<'b>) -> &'a Mat<'b>, what: &str| -> Result<(DevBuf<u8>, DevBuf<u64>)> {
        let bytes = pick(first).data.len();
        let mut buf = dev.alloc::<u8>(bytes * layer.experts.len(), &name(what))?;
        for (e, x) in layer.experts.iter().enumerate() {
            let m = pick(x);
            if m.data.len() != bytes || m.ty != pick(first).ty {
                return Err(Error::BadTensor {
                    name: name(what),
                    offset: 0,
                    reason: format!("expert {e} differs in size or type from expert 0"),
                });
            }
            dev.write(&mut buf, e * bytes, m.data)?;
        }
        let table: Vec<u64> = (0..layer.experts.len()).map(|e| buf.addr() + (e * bytes) as u64).collect();
        let table = dev.upload(&table, &name(what))?;
        Ok((buf, table))
    };
    let (gate, gate_table) = one(|e| &e.gate, "ffn_gate_exps.weight")?;
    let (up, up_table) = one(|e| &e.up, "ffn_up_exps.weight")?;
    let (down, down_table) = one(|e| &e.down, "ffn_down_exps.weight")?;
    Ok(DevExperts {
        _gate: gate,
        _up: up,
        _down: down,
        gate_table,
        up_table,
        down_table,
        quant_gate_up: quant_of(first.gate.ty, &name("ffn_gate_exps.weight"))?,
        quant_down: quant_of(first.down.ty, &name("ffn_down_exps.weight"))?,
    })
}

/// Upload progress in bytes.
struct Progress<'a> {
    done: u64,
    total: u64,
    report: &'a mut dyn FnMut(u64, u64),
}

impl Progress<'_> {
    fn add(&mut self, bytes: u64) {
        self.done += bytes;
        (self.report)(self.done, self.total);
    }
}

fn expert_bytes(e: &Expert) -> u64 {
    (e.gate.data.len() + e.up.data.len() + e.down.data.len()) as u64
}

/// Bytes of all matrices (for the upload progress bar).
fn weight_bytes(w: &Weights) -> u64 {
    let mut total = (w.token_embd.data.len() + w.output.data.len()) as u64;
    for l in &w.layers {
        total += [&l.wq, &l.wk, &l.wv, &l.wo, &l.router].iter().map(|m| m.data.len() as u64).sum::<u64>();
        total += l.experts.iter().map(expert_bytes).sum::<u64>();
    }
    total
}
