//! The model's dense weights on a device, and the workspaces of a micro-batch: allocated and
//! uploaded once, at start, from the plan (nothing is allocated per token). On a host device
//! the weights are the file mapping itself (Device::map copies nothing there).

use super::device::{alloc_upload, Addr, Device};
use super::plan::{self, LOGITS_ROWS, PAGE_SIZE};
use crate::backend::Mat;
use crate::error::{Error, Result};
use crate::model::weights::{Expert, Layer, Mixer, SharedExpert, Weights};
use crate::model::ModelConfig;
use crate::ops::{AttnGate, KvCache};
use crate::quant::GgmlType;

/// A matrix in device memory.
#[derive(Copy, Clone)]
pub struct DMat {
    pub addr: Addr,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
}

/// A layer's token mixer on the device.
#[derive(Copy, Clone)]
pub enum DMixer {
    Attention(DAttention),
    DeltaNet(DDeltaNet),
}

#[derive(Copy, Clone)]
pub struct DAttention {
    pub wq: DMat,     // [n_heads * head_dim (* 2 gated), dim]
    pub wk: DMat,     // [n_kv_heads * head_dim, dim]
    pub wv: DMat,     // [n_kv_heads * head_dim, dim]
    pub wo: DMat,     // [dim, n_heads * head_dim]
    pub q_norm: Addr, // [head_dim]
    pub k_norm: Addr, // [head_dim]
    pub cache: KvCache,
    pub gate: AttnGate,
}

/// Gated DeltaNet (src/ops/deltanet.rs) with its state, resident.
#[derive(Copy, Clone)]
pub struct DDeltaNet {
    pub qkv: DMat,        // [channels, dim]
    pub z: DMat,          // [n_v·dv, dim]
    pub beta: DMat,       // [n_v, dim]
    pub alpha: DMat,      // [n_v, dim]
    pub out: DMat,        // [dim, n_v·dv]
    pub conv: Addr,       // [channels, conv_kernel]
    pub dt_bias: Addr,    // [n_v]
    pub a: Addr,          // [n_v]
    pub norm: Addr,       // [dv]
    pub conv_state: Addr, // [conv_kernel - 1, channels]
    pub ssm_state: Addr,  // [n_v, dk, dv]
}

/// qwen35moe's shared expert: dense, resident, run through the MoE kernel as the only expert
/// of a one-entry table with weight sigmoid(gate_inp · h).
#[derive(Copy, Clone)]
pub struct DShared {
    pub gate_inp: DMat, // [1, dim]
    pub table: Addr,    // [3] u64: gate, up, down addresses
    pub ids: Addr,      // [ubatch] i32 zeros
    pub ty_gate_up: GgmlType,
    pub ty_down: GgmlType,
    pub ffn: usize,
}

pub struct DLayer {
    pub attn_norm: Addr, // [dim]
    pub mixer: DMixer,
    pub ffn_norm: Addr, // [dim]
    pub router: DMat,   // [n_experts, dim]
    pub shared: Option<DShared>,
    pub tables: Addr, // [3, n_experts] u64: gate, up, down addresses
    pub ty_gate_up: GgmlType,
    pub ty_down: GgmlType,
    pub gate_bytes: usize, // one expert's gate (= up) bytes
    pub down_bytes: usize,
}

/// Workspaces of one micro-batch of n ≤ ubatch tokens (plan::scratch_bytes mirrors this).
#[derive(Copy, Clone)]
pub struct Scratch {
    pub x: Addr,       // [ubatch, dim] the residual stream
    pub h: Addr,       // [ubatch, dim] normed input / projection output
    pub q: Addr,       // [ubatch, n_heads * head_dim]
    pub k: Addr,       // [ubatch, n_kv_heads * head_dim]
    pub v: Addr,       // [ubatch, n_kv_heads * head_dim]
    pub o: Addr,       // [ubatch, n_heads * head_dim]
    pub router: Addr,  // [ubatch, n_experts]
    pub weights: Addr, // [2, ubatch, k]: this layer's, then the next layer's predicted
    pub act: Addr,     // [ubatch * k, ffn]
    pub out: Addr,     // [ubatch * k, dim]
    pub logits: Addr,  // [LOGITS_ROWS, n_vocab]
    pub ids: Addr,     // [2, ubatch, k] i32: this layer's, then the next layer's predicted
    pub offsets: Addr, // [n_experts + 1] i32
    pub pairs: Addr,   // [ubatch * k] i32
    // qwen35moe (one float when the model has no such part):
    pub qg: Addr,    // [ubatch, n_heads * 2 * head_dim] gated attention's packed q|gate
    pub gate: Addr,  // [ubatch, n_heads * head_dim]
    pub gdn_x: Addr, // [ubatch, channels] DeltaNet q|k|v, convolved in place
    pub gdn_z: Addr, // [ubatch, n_v·dv]
    pub gdn_b: Addr, // [ubatch, n_v] beta
    pub gdn_a: Addr, // [ubatch, n_v] alpha → decay
    pub gdn_o: Addr, // [ubatch, n_v·dv]
}

/// The dense weights on the device: every layer, the output norm and projection, RoPE's
/// frequencies.
pub struct DeviceWeights {
    pub layers: Vec<DLayer>,
    pub output_norm: Addr, // [dim]
    pub output: DMat,      // [n_vocab, dim]
    pub inv_freq: Addr,    // [rope_dims / 2]
}

/// Places a model's tensors on a device, counting weight bytes for the progress report.
struct Placer<'a, 'd> {
    d: &'d mut dyn Device,
    done: u64,
    progress: &'a mut dyn FnMut(u64),
    /// The layer being placed (tensor names in errors), if any.
    layer: Option<usize>,
}

impl Placer<'_, '_> {
    fn name(&self, what: &str) -> String {
        match self.layer {
            Some(l) => format!("blk.{l}.{what}"),
            None => what.to_string(),
        }
    }

    /// A matrix: a copy, or on a host device the mapping itself.
    fn mat(&mut self, m: &Mat, what: &str) -> Result<DMat> {
        let name = self.name(what);
        // SAFETY: the weights outlive the device that reads them (both belong to the session,
        // which borrows the weights for 'w and drops the device first).
        let addr = unsafe { self.d.map(m.data, &name)? };
        self.done += m.data.len() as u64;
        (self.progress)(self.done);
        Ok(DMat { addr, ty: m.ty, rows: m.rows, cols: m.cols })
    }

    /// Small data, always copied: f32 vectors (norms, conv weights, gates), tables, ids.
    fn vector<T: Copy>(&mut self, v: &[T], what: &str) -> Result<Addr> {
        let name = self.name(what);
        alloc_upload(self.d, v, &name)
    }

    /// `bytes` of zeroed device memory (caches, states, tables).
    fn zeros(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        let name = self.name(what);
        self.d.alloc(bytes, &name)
    }
}

impl DeviceWeights {
    /// Place the dense weights and allocate each attention layer's paged KV cache (room for
    /// n_ctx positions) and each DeltaNet layer's state. `progress(bytes)` counts weight
    /// bytes placed.
    pub fn upload(
        w: &Weights,
        d: &mut dyn Device,
        n_ctx: usize,
        progress: &mut dyn FnMut(u64),
    ) -> Result<DeviceWeights> {
        let c = &w.cfg;
        let mut p = Placer { d, done: 0, progress, layer: None };
        let output = p.mat(&w.output, "output.weight")?;
        let n_pages = n_ctx.div_ceil(PAGE_SIZE);
        let page_ids: Vec<i32> = (0..n_pages as i32).collect(); // [n_pages]
        let page_table = p.vector(&page_ids, "KV page table")?;
        let cache = KvCache {
            k: 0,
            v: 0,
            page_table,
            page_size: PAGE_SIZE,
            kv_width: (c.n_kv_heads * c.head_dim) as usize,
            ty: p.d.kv_type(),
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for (l, layer) in w.layers.iter().enumerate() {
            p.layer = Some(l);
            layers.push(place_layer(&mut p, w, layer, cache, n_pages)?);
        }
        p.layer = None;
        let output_norm = p.vector(&w.output_norm, "output_norm")?;
        let rot = c.rope_dims as usize;
        let inv_freq: Vec<f32> =
            (0..rot / 2) // [rope_dims / 2]
                .map(|i| c.rope_theta.powf(-(2.0 * i as f64) / rot as f64) as f32)
                .collect();
        let inv_freq = p.vector(&inv_freq, "rope frequencies")?;
        Ok(DeviceWeights { layers, output_norm, output, inv_freq })
    }
}

/// One layer: its mixer (with its cache or state), the router, the shared expert, an empty
/// expert pointer table (the rotary fills it).
fn place_layer(
    p: &mut Placer,
    w: &Weights,
    layer: &Layer,
    cache: KvCache,
    n_pages: usize,
) -> Result<DLayer> {
    let first = layer
        .experts
        .first()
        .ok_or_else(|| Error::MissingTensor { name: p.name("ffn_gate_exps.weight") })?;
    same_format(first, &p.name("ffn_up_exps.weight"))?;
    let (gate_bytes, down_bytes) = expert_bytes(first);
    let mixer = match &layer.mixer {
        Mixer::Attention(a) => {
            let cache_bytes = (n_pages * PAGE_SIZE * cache.kv_width * cache.ty.bytes()) as u64;
            DMixer::Attention(DAttention {
                wq: p.mat(&a.wq, "attn_q")?,
                wk: p.mat(&a.wk, "attn_k")?,
                wv: p.mat(&a.wv, "attn_v")?,
                wo: p.mat(&a.wo, "attn_output")?,
                q_norm: p.vector(&a.q_norm, "attn_q_norm")?,
                k_norm: p.vector(&a.k_norm, "attn_k_norm")?,
                cache: KvCache {
                    k: p.zeros(cache_bytes, "k cache")?,
                    v: p.zeros(cache_bytes, "v cache")?,
                    ..cache
                },
                gate: if a.gated { AttnGate::Sigmoid } else { AttnGate::None },
            })
        }
        Mixer::DeltaNet(g) => {
            let sh = w.gdn.expect("DeltaNet layers come with a DeltaNet shape");
            DMixer::DeltaNet(DDeltaNet {
                qkv: p.mat(&g.qkv, "attn_qkv")?,
                z: p.mat(&g.z, "attn_gate")?,
                beta: p.mat(&g.beta, "ssm_beta")?,
                alpha: p.mat(&g.alpha, "ssm_alpha")?,
                out: p.mat(&g.out, "ssm_out")?,
                conv: p.vector(&g.conv, "ssm_conv1d")?,
                dt_bias: p.vector(&g.dt_bias, "ssm_dt")?,
                a: p.vector(&g.a, "ssm_a")?,
                norm: p.vector(&g.norm, "ssm_norm")?,
                conv_state: p.zeros(sh.conv_state_len() as u64 * 4, "conv state")?,
                ssm_state: p.zeros(sh.state_len() as u64 * 4, "recurrent state")?,
            })
        }
    };
    let shared = match &layer.shared {
        None => None,
        Some(sx) => Some(place_shared(p, sx)?),
    };
    Ok(DLayer {
        attn_norm: p.vector(&layer.attn_norm, "attn_norm")?,
        mixer,
        ffn_norm: p.vector(&layer.ffn_norm, "ffn_norm")?,
        router: p.mat(&layer.router, "ffn_gate_inp")?,
        shared,
        tables: p.zeros(3 * w.cfg.n_experts * 8, "expert pointer table")?,
        ty_gate_up: first.gate.ty,
        ty_down: first.down.ty,
        gate_bytes,
        down_bytes,
    })
}

/// qwen35moe's shared expert: resident, behind a one-entry pointer table.
fn place_shared(p: &mut Placer, sx: &SharedExpert) -> Result<DShared> {
    let e = &sx.expert;
    same_format(e, &p.name("ffn_up_shexp.weight"))?;
    let gate_inp = p.mat(&sx.gate_inp, "ffn_gate_inp_shexp")?;
    let parts = [
        p.mat(&e.gate, "ffn_gate_shexp")?,
        p.mat(&e.up, "ffn_up_shexp")?,
        p.mat(&e.down, "ffn_down_shexp")?,
    ];
    let ubatch = p.d.max_batch();
    let table = p.vector(&parts.map(|m| m.addr), "shared expert table")?; // [3] u64
    let ids = p.vector(&vec![0i32; ubatch], "shared expert ids")?; // [ubatch] i32
    Ok(DShared {
        gate_inp,
        table,
        ids,
        ty_gate_up: e.gate.ty,
        ty_down: e.down.ty,
        ffn: e.gate.rows,
    })
}

/// Gate and up of an expert share one format (the MoE kernel reads both with one dequant).
fn same_format(e: &Expert, up_name: &str) -> Result<()> {
    if e.gate.ty != e.up.ty {
        let ty = format!("{} (gate and up must share a format; gate is {})", e.up.ty, e.gate.ty);
        return Err(Error::UnsupportedType { name: up_name.to_string(), ty });
    }
    Ok(())
}

/// The device bytes of each resident matrix and vector, as placed above (vectors as f32).
pub fn resident_tensor_bytes(w: &Weights) -> Vec<u64> {
    let m = |m: &Mat| m.data.len() as u64;
    let v = |v: &[f32]| v.len() as u64 * 4;
    let mut sizes = vec![m(&w.output), v(&w.output_norm)];
    for l in &w.layers {
        sizes.extend([m(&l.router), v(&l.attn_norm), v(&l.ffn_norm)]);
        match &l.mixer {
            Mixer::Attention(a) => {
                sizes.extend([m(&a.wq), m(&a.wk), m(&a.wv), m(&a.wo), v(&a.q_norm), v(&a.k_norm)])
            }
            Mixer::DeltaNet(d) => sizes.extend([
                m(&d.qkv),
                m(&d.z),
                m(&d.beta),
                m(&d.alpha),
                m(&d.out),
                v(&d.conv),
                v(&d.dt_bias),
                v(&d.a),
                v(&d.norm),
            ]),
        }
        if let Some(sh) = &l.shared {
            let e = &sh.expert;
            sizes.extend([m(&sh.gate_inp), m(&e.gate), m(&e.up), m(&e.down)]);
        }
    }
    sizes
}

pub fn expert_bytes(e: &Expert) -> (usize, usize) {
    assert_eq!(e.gate.data.len(), e.up.data.len(), "gate and up have one shape");
    (e.gate.data.len(), e.down.data.len())
}

/// Bytes of one expert (gate + up + down) per layer (0 for a layer without experts).
pub fn layer_expert_bytes(w: &Weights) -> Vec<u64> {
    let one = |e: &Expert| {
        let (g, d) = expert_bytes(e);
        (2 * g + d) as u64
    };
    w.layers.iter().map(|l| l.experts.first().map_or(0, one)).collect()
}

impl Scratch {
    pub fn new(d: &mut dyn Device, c: &ModelConfig, ubatch: usize) -> Result<Scratch> {
        let (dim, q_width) = (c.dim as usize, (c.n_heads * c.head_dim) as usize);
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let (e, k, ffn) =
            (c.n_experts as usize, c.n_experts_used as usize, plan::act_ffn(c) as usize);
        let g = plan::Qwen35Scratch::of(c);
        let gated_width = if g.gated { q_width } else { 0 };
        let u = ubatch;
        let mut f = |n: usize, what: &str| d.alloc((n * 4) as u64, what);
        Ok(Scratch {
            x: f(u * dim, "scratch x")?,
            h: f(u * dim, "scratch h")?,
            q: f(u * q_width, "scratch q")?,
            k: f(u * kv_width, "scratch k")?,
            v: f(u * kv_width, "scratch v")?,
            o: f(u * q_width, "scratch o")?,
            router: f(u * e, "scratch router")?,
            weights: f(2 * u * k, "scratch expert weights")?,
            act: f(u * k * ffn, "scratch expert activations")?,
            out: f(u * k * dim, "scratch expert outputs")?,
            logits: f(LOGITS_ROWS * c.n_vocab as usize, "scratch logits")?,
            ids: f(2 * u * k, "scratch expert ids")?,
            offsets: f(e + 1, "scratch expert offsets")?,
            pairs: f(u * k, "scratch expert pairs")?,
            qg: f((u * 2 * gated_width).max(1), "scratch q|gate")?,
            gate: f((u * gated_width).max(1), "scratch attention gate")?,
            gdn_x: f((u * g.channels).max(1), "scratch DeltaNet qkv")?,
            gdn_z: f((u * g.inner).max(1), "scratch DeltaNet z")?,
            gdn_b: f((u * g.n_v).max(1), "scratch DeltaNet beta")?,
            gdn_a: f((u * g.n_v).max(1), "scratch DeltaNet decay")?,
            gdn_o: f((u * g.inner).max(1), "scratch DeltaNet o")?,
        })
    }
}
