//! The rotary: the Qwen3-MoE forward pass on a `Device` with the dense weights resident and
//! the routed experts rotating through a VRAM cache. Step for step the same as
//! src/model/qwen3moe.rs (the specification); what differs is where the experts come from.
//!
//! Per layer, after the router's top-k ran on the device, the expert ids come to the host in
//! one small copy (with the next layer's predicted ids, when prefetching). Each needed expert
//! is a cache hit, a demand load (copied into a slot on the copy stream; the compute stream
//! waits on one event per layer), or (CPU fallback) computed on the host from host memory, its
//! output row uploaded: activations cross the link instead of weights. The MoE kernel then
//! reads the experts through a per-layer pointer table. When every expert fits (no budget, or
//! a large one) they are all loaded at start and no id ever comes to the host.
//!
//! All device memory is allocated at start from the plan (src/rotary/plan.rs); nothing is
//! allocated per token.

use std::time::Instant;

use super::cache::{Allocation, ExpertCache, Policy};
use super::device::{alloc_upload, download, upload, Addr, Device, Event, Kernel, KvCache, Stream};
use super::plan::{self, align, Plan, LOGITS_ROWS, PAGE_SIZE, UBATCH};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Mat};
use crate::error::{Error, Result};
use crate::model::qwen3moe::{expert_forward, Logits};
use crate::model::weights::{Expert, Mixer, Weights};
use crate::model::{Engine, ModelConfig};
use crate::quant::{self, GgmlType};

/// Where missed experts are computed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MoePolicy {
    /// Always load them into VRAM.
    Gpu,
    /// Always compute them on the CPU (hits still run on the device).
    Cpu,
    /// Per layer, whichever the cost model predicts finishes first (both sides work at once).
    Auto,
}

impl MoePolicy {
    pub fn by_name(s: &str) -> Result<MoePolicy> {
        match s {
            "gpu" => Ok(MoePolicy::Gpu),
            "cpu" => Ok(MoePolicy::Cpu),
            "auto" => Ok(MoePolicy::Auto),
            _ => Err(Error::Usage(format!("--moe-policy {s}: want gpu, cpu or auto"))),
        }
    }
}

/// Where the copy engine reads experts from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PinMode {
    /// Every expert copied once into pinned host memory, packed (gate|up|down): one copy each.
    All,
    /// A bounded ring of pinned staging buffers filled from the file mapping by loader threads.
    Ring,
    /// All when it fits comfortably in available RAM, else Ring.
    Auto,
}

impl PinMode {
    pub fn by_name(s: &str) -> Result<PinMode> {
        match s {
            "all" => Ok(PinMode::All),
            "ring" => Ok(PinMode::Ring),
            "auto" => Ok(PinMode::Auto),
            _ => Err(Error::Usage(format!("--pin {s}: want all, ring or auto"))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub policy: Policy,
    pub alloc: Allocation,
    pub prefetch: bool,
    /// Copy experts that ran on the CPU into the cache behind the compute (admission on miss).
    pub load_behind: bool,
    pub moe_policy: MoePolicy,
    pub pin: PinMode,
    /// The host link's speed before any copy was measured (cost model), GB/s.
    pub link_gbps: f64,
    pub threads: Option<usize>,
    /// At most this many expert slots, whatever the budget leaves (experiments and tests that
    /// need an exact cache size on a device whose charges they cannot predict).
    pub max_slots: Option<usize>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            policy: Policy::Lru,
            alloc: Allocation::Global,
            prefetch: true,
            load_behind: true,
            moe_policy: MoePolicy::Gpu,
            pin: PinMode::Auto,
            link_gbps: 12.0,
            threads: None,
            max_slots: None,
        }
    }
}

/// What a run measured (`rotary logits --json` "stats", and the end-of-run line).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tokens: u64,
    pub hits: u64,
    pub misses: u64,
    pub per_layer_hits: Vec<u64>,
    pub per_layer_misses: Vec<u64>,
    pub h2d_bytes: u64,
    pub link_busy_seconds: f64,
    pub stall_seconds: f64,
    pub prefetch_predicted: u64,
    pub prefetch_correct: u64,
    pub prefetch_loads: u64,
    /// Experts computed on the CPU and then copied into the cache behind the compute.
    pub behind_loads: u64,
    pub cpu_experts: u64,
    pub gpu_experts: u64,
    pub peak_vram_bytes: u64,
    pub vram_budget_bytes: Option<u64>,
    pub link_peak_gbps: Option<f64>,
    pub n_layers: u64,
}

impl Stats {
    /// The counters accumulated since `before` (peaks and settings stay as they are now).
    pub fn since(&self, before: &Stats) -> Stats {
        let mut s = self.clone();
        s.tokens -= before.tokens;
        s.hits -= before.hits;
        s.misses -= before.misses;
        s.per_layer_hits.iter_mut().zip(&before.per_layer_hits).for_each(|(a, b)| *a -= b);
        s.per_layer_misses.iter_mut().zip(&before.per_layer_misses).for_each(|(a, b)| *a -= b);
        s.h2d_bytes -= before.h2d_bytes;
        s.link_busy_seconds -= before.link_busy_seconds;
        s.stall_seconds -= before.stall_seconds;
        s.prefetch_predicted -= before.prefetch_predicted;
        s.prefetch_correct -= before.prefetch_correct;
        s.prefetch_loads -= before.prefetch_loads;
        s.behind_loads -= before.behind_loads;
        s.cpu_experts -= before.cpu_experts;
        s.gpu_experts -= before.gpu_experts;
        s
    }

    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
    pub fn misses_per_layer_token(&self) -> f64 {
        self.misses as f64 / (self.n_layers * self.tokens).max(1) as f64
    }
    pub fn h2d_bytes_per_token(&self) -> f64 {
        self.h2d_bytes as f64 / self.tokens.max(1) as f64
    }
    /// Achieved link speed while it was busy.
    pub fn link_gbps(&self) -> f64 {
        if self.link_busy_seconds > 0.0 { self.h2d_bytes as f64 / self.link_busy_seconds / 1e9 } else { 0.0 }
    }
    pub fn prefetch_recall(&self) -> Option<f64> {
        (self.prefetch_predicted > 0).then(|| self.prefetch_correct as f64 / self.prefetch_predicted as f64)
    }
    pub fn cpu_expert_share(&self) -> f64 {
        self.cpu_experts as f64 / (self.cpu_experts + self.gpu_experts).max(1) as f64
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peak_vram_bytes": self.peak_vram_bytes,
            "vram_budget_bytes": self.vram_budget_bytes,
            "hit_rate": self.hit_rate(),
            "hit_rate_per_layer": self.per_layer_hits.iter().zip(&self.per_layer_misses)
                .map(|(&h, &m)| h as f64 / (h + m).max(1) as f64).collect::<Vec<_>>(),
            "misses_per_layer_token": self.misses_per_layer_token(),
            "h2d_bytes_per_token": self.h2d_bytes_per_token(),
            "link_gbps": self.link_gbps(),
            "link_peak_gbps": self.link_peak_gbps,
            "stall_seconds": self.stall_seconds,
            "prefetch_recall": self.prefetch_recall(),
            "prefetch_loads": self.prefetch_loads,
            "behind_loads": self.behind_loads,
            "cpu_expert_share": self.cpu_expert_share(),
            "tokens": self.tokens,
        })
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = self.vram_budget_bytes.map_or("none".into(), crate::inspect::human_bytes);
        write!(
            f,
            "experts: hit {:.1}%, {:.2} misses/layer/token, {:.2} MB H2D/token at {:.1} GB/s \
             (peak {}), prefetch recall {}, CPU share {:.1}% | peak VRAM {} of budget {budget}",
            100.0 * self.hit_rate(),
            self.misses_per_layer_token(),
            self.h2d_bytes_per_token() / 1e6,
            self.link_gbps(),
            self.link_peak_gbps.map_or("?".into(), |g| format!("{g:.1}")),
            self.prefetch_recall().map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
            100.0 * self.cpu_expert_share(),
            crate::inspect::human_bytes(self.peak_vram_bytes),
        )
    }
}

/// A matrix in device memory.
#[derive(Copy, Clone)]
struct DMat {
    addr: Addr,
    ty: GgmlType,
    rows: usize,
    cols: usize,
}

/// A layer's token mixer on the device.
#[derive(Copy, Clone)]
enum DMixer {
    Attention(DAttention),
    DeltaNet(DDeltaNet),
}

#[derive(Copy, Clone)]
struct DAttention {
    wq: DMat,     // [n_heads * head_dim (* 2 gated), dim]
    wk: DMat,     // [n_kv_heads * head_dim, dim]
    wv: DMat,     // [n_kv_heads * head_dim, dim]
    wo: DMat,     // [dim, n_heads * head_dim]
    q_norm: Addr, // [head_dim]
    k_norm: Addr, // [head_dim]
    cache: KvCache,
    gated: bool,
}

/// Gated DeltaNet (src/model/deltanet.rs) with its state, resident.
#[derive(Copy, Clone)]
struct DDeltaNet {
    qkv: DMat,        // [channels, dim]
    z: DMat,          // [n_v·dv, dim]
    beta: DMat,       // [n_v, dim]
    alpha: DMat,      // [n_v, dim]
    out: DMat,        // [dim, n_v·dv]
    conv: Addr,       // [channels, conv_kernel]
    dt_bias: Addr,    // [n_v]
    a: Addr,          // [n_v]
    norm: Addr,       // [dv]
    conv_state: Addr, // [conv_kernel - 1, channels]
    ssm_state: Addr,  // [n_v, dk, dv]
}

/// A pointer table of experts ([3, n_experts] u64: gate, up, down addresses) and their shape.
#[derive(Copy, Clone)]
struct Experts {
    table: Addr,
    n_experts: usize,
    ty_gate_up: GgmlType,
    ty_down: GgmlType,
    ffn: usize,
}

/// qwen35moe's shared expert: dense, resident, run through the MoE kernel as the only expert
/// of a one-entry table with weight sigmoid(gate_inp · h).
#[derive(Copy, Clone)]
struct DShared {
    gate_inp: DMat, // [1, dim]
    table: Addr,    // [3] u64: gate, up, down addresses
    ids: Addr,      // [UBATCH] i32 zeros
    ty_gate_up: GgmlType,
    ty_down: GgmlType,
    ffn: usize,
}

struct DLayer {
    attn_norm: Addr, // [dim]
    mixer: DMixer,
    ffn_norm: Addr, // [dim]
    router: DMat,   // [n_experts, dim]
    shared: Option<DShared>,
    tables: Addr,       // [3, n_experts] u64: gate, up, down addresses
    ty_gate_up: GgmlType,
    ty_down: GgmlType,
    gate_bytes: usize, // one expert's gate (= up) bytes
    down_bytes: usize,
}

/// Workspaces of one micro-batch of n ≤ UBATCH tokens (plan::scratch_bytes mirrors this).
#[derive(Copy, Clone)]
struct Scratch {
    x: Addr,       // [UBATCH, dim] the residual stream
    h: Addr,       // [UBATCH, dim] normed input / projection output
    q: Addr,       // [UBATCH, n_heads * head_dim]
    k: Addr,       // [UBATCH, n_kv_heads * head_dim]
    v: Addr,       // [UBATCH, n_kv_heads * head_dim]
    o: Addr,       // [UBATCH, n_heads * head_dim]
    router: Addr,  // [UBATCH, n_experts]
    weights: Addr, // [2, UBATCH, k]: this layer's, then the next layer's predicted
    act: Addr,     // [UBATCH * k, ffn]
    out: Addr,     // [UBATCH * k, dim]
    logits: Addr,  // [LOGITS_ROWS, n_vocab]
    ids: Addr,     // [2, UBATCH, k] i32: this layer's, then the next layer's predicted
    offsets: Addr, // [n_experts + 1] i32
    pairs: Addr,   // [UBATCH * k] i32
    // qwen35moe (one float when the model has no such part):
    qg: Addr,      // [UBATCH, n_heads * 2 * head_dim] gated attention's packed q|gate
    gate: Addr,    // [UBATCH, n_heads * head_dim]
    gdn_x: Addr,   // [UBATCH, channels] DeltaNet q|k|v, convolved in place
    gdn_z: Addr,   // [UBATCH, n_v·dv]
    gdn_b: Addr,   // [UBATCH, n_v] beta
    gdn_a: Addr,   // [UBATCH, n_v] alpha → decay
    gdn_o: Addr,   // [UBATCH, n_v·dv]
}

/// Where the copy engine reads experts.
enum HostExperts {
    /// Pinned, packed gate|up|down per expert; offsets[l][e].
    Packed { base: *mut u8, offsets: Vec<Vec<usize>> },
    /// Pinned staging buffers filled from the mapping; the copy that last read each.
    Ring { staging: Vec<*mut u8>, last_copy: Vec<Option<Event>>, next: usize },
    /// Every expert is resident: no host source needed after load.
    None,
}

/// Staging buffers of the ring: a full micro-batch's loads for one layer (at most one per
/// slot a layer may use, at most every expert) and the next layer's prefetches.
fn ring_len(n_experts: usize) -> usize {
    2 * n_experts
}

/// Recently CPU-computed experts remembered per layer, in units of top-k (see `ghosts`).
const GHOSTS: usize = 4;

/// Loader threads per batch of staging fills.
const LOADERS: usize = 4;

/// One staging fill: the expert's three parts, back to back, into `dst`.
struct Fill<'a> {
    dst: *mut u8,
    parts: [&'a [u8]; 3],
}

// SAFETY: each Fill writes a distinct staging buffer that no copy reads until it is queued
// after load_parallel returns; the parts are shared read-only views of the file mapping.
unsafe impl Send for Fill<'_> {}
unsafe impl Sync for Fill<'_> {}

/// Fill staging buffers from the mapping, on up to LOADERS threads.
fn load_parallel(fills: &[Fill]) {
    let fill = |f: &Fill| {
        let mut at = 0;
        for part in f.parts {
            // SAFETY: dst holds slot_bytes >= the expert's bytes and is not read by any copy
            // until this returns (see Fill).
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), f.dst.add(at), part.len()) };
            at += part.len();
        }
    };
    if fills.len() <= 1 {
        fills.iter().for_each(fill);
        return;
    }
    let per = fills.len().div_ceil(LOADERS);
    std::thread::scope(|s| {
        for chunk in fills.chunks(per) {
            s.spawn(move || chunk.iter().for_each(fill));
        }
    });
}

pub struct StreamSession<'w> {
    w: &'w Weights<'w>,
    dev: Box<dyn Device + 'w>,
    cfg: ModelConfig,
    pub plan: Plan,
    opts: Options,
    n_past: usize,
    layers: Vec<DLayer>,
    output_norm: Addr,
    output: DMat,
    inv_freq: Addr,
    s: Scratch,
    slots: Addr,
    cache: ExpertCache,
    host: HostExperts,
    /// Host mirror of each layer's pointer table.
    tables: Vec<Vec<u64>>,
    /// The previous layer's prediction of each layer's experts, per token.
    predicted: Vec<Option<Vec<Vec<usize>>>>,
    /// Per layer, the experts most recently computed on the CPU (at most GHOSTS · k): a second
    /// CPU miss of one of them admits it into the cache (load-behind).
    ghosts: Vec<std::collections::VecDeque<usize>>,
    /// reset() ran after DeltaNet state advanced: zero it before the next token (allocations
    /// start zeroed, so a fresh session uploads nothing).
    state_stale: bool,
    cpu: CpuBackend,
    /// Measured seconds per byte of expert weights computed on the CPU (cost model).
    cpu_s_per_byte: f64,
    /// Slots the current layer's experts occupy (protected from eviction while it runs).
    used_slots: Vec<usize>,
    /// The copy-stream event after the latest demand loads (prefetches queue behind it).
    last_demand: Option<Event>,
    /// Benchmark routing modes / routing traces: routes on the host from the router's logits.
    router: Option<crate::routing::Router>,
    pinned_bytes: u64,
    stats: Stats,
    backend_name: &'static str,
}

/// Bytes of the resident matrices and vectors (each allocation aligned), as allocated below.
pub fn dense_bytes(w: &Weights) -> u64 {
    let m = |m: &Mat| align(m.data.len() as u64);
    let v = |v: &[f32]| align(v.len() as u64 * 4);
    let mut total = m(&w.output) + v(&w.output_norm);
    for l in &w.layers {
        total += m(&l.router) + v(&l.attn_norm) + v(&l.ffn_norm);
        total += match &l.mixer {
            Mixer::Attention(a) => m(&a.wq) + m(&a.wk) + m(&a.wv) + m(&a.wo) + v(&a.q_norm) + v(&a.k_norm),
            Mixer::DeltaNet(d) => {
                m(&d.qkv) + m(&d.z) + m(&d.beta) + m(&d.alpha) + m(&d.out)
                    + v(&d.conv) + v(&d.dt_bias) + v(&d.a) + v(&d.norm)
            }
        };
        if let Some(sh) = &l.shared {
            total += m(&sh.gate_inp) + m(&sh.expert.gate) + m(&sh.expert.up) + m(&sh.expert.down);
        }
    }
    total
}

fn expert_bytes(e: &Expert) -> (usize, usize) {
    assert_eq!(e.gate.data.len(), e.up.data.len(), "gate and up have one shape");
    (e.gate.data.len(), e.down.data.len())
}

/// Bytes of one slot: the largest expert of any layer.
pub fn slot_bytes(w: &Weights) -> u64 {
    w.layers
        .iter()
        .filter_map(|l| l.experts.first())
        .map(|e| {
            let (g, d) = expert_bytes(e);
            (2 * g + d) as u64
        })
        .max()
        .unwrap_or(0)
}

/// Available RAM (Linux MemAvailable), if known.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

impl<'w> StreamSession<'w> {
    /// Plan, allocate and upload. `progress(done, total)` reports bytes of weights placed.
    pub fn new(
        w: &'w Weights<'w>,
        mut dev: Box<dyn Device + 'w>,
        n_ctx: usize,
        opts: Options,
        backend_name: &'static str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<StreamSession<'w>> {
        let c = w.cfg.clone();
        check_shapes(&c)?;
        if n_ctx == 0 || n_ctx as u64 > c.context_length {
            let max = c.context_length;
            return Err(Error::Usage(format!("context size {n_ctx} is not in 1..={max}")));
        }
        let budget = dev.budget_bytes();
        let mut plan = Plan::new(&c, n_ctx, dense_bytes(w), slot_bytes(w), dev.overhead_bytes(), budget)?;
        plan.n_slots = plan.n_slots.min(opts.max_slots.unwrap_or(usize::MAX));
        check_slots(&plan, &c, &opts)?;
        let total_bytes = dense_bytes(w) + w.layers.iter().flat_map(|l| &l.experts).map(|e| {
            let (g, d) = expert_bytes(e);
            (2 * g + d) as u64
        }).sum::<u64>();
        let mut done = 0u64;
        let d = dev.as_mut();
        let mut mat = |d: &mut dyn Device, m: &Mat, what: &str, done: &mut u64| -> Result<DMat> {
            let addr = alloc_upload(d, m.data, what)?;
            *done += m.data.len() as u64;
            progress(*done, total_bytes);
            Ok(DMat { addr, ty: m.ty, rows: m.rows, cols: m.cols })
        };
        let output = mat(d, &w.output, "output.weight", &mut done)?;
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let n_pages = n_ctx.div_ceil(PAGE_SIZE);
        let mut layers = Vec::with_capacity(w.layers.len());
        for (l, layer) in w.layers.iter().enumerate() {
            let name = |s: &str| format!("blk.{l}.{s}");
            let first = layer.experts.first().ok_or_else(|| Error::MissingTensor { name: name("ffn_gate_exps.weight") })?;
            if first.gate.ty != first.up.ty {
                return Err(Error::UnsupportedType {
                    name: name("ffn_up_exps.weight"),
                    ty: format!("{} (gate and up must share a format; gate is {})", first.up.ty, first.gate.ty),
                });
            }
            let (gate_bytes, down_bytes) = expert_bytes(first);
            let mixer = match &layer.mixer {
                Mixer::Attention(a) => {
                    let cache_bytes = (n_pages * PAGE_SIZE * kv_width * 2) as u64;
                    DMixer::Attention(DAttention {
                        wq: mat(d, &a.wq, &name("attn_q"), &mut done)?,
                        wk: mat(d, &a.wk, &name("attn_k"), &mut done)?,
                        wv: mat(d, &a.wv, &name("attn_v"), &mut done)?,
                        wo: mat(d, &a.wo, &name("attn_output"), &mut done)?,
                        q_norm: alloc_upload(d, &a.q_norm, &name("attn_q_norm"))?,
                        k_norm: alloc_upload(d, &a.k_norm, &name("attn_k_norm"))?,
                        cache: KvCache {
                            k: d.alloc(cache_bytes, &name("k cache"))?,
                            v: d.alloc(cache_bytes, &name("v cache"))?,
                            page_table: 0,
                            page_size: PAGE_SIZE,
                            kv_width,
                        },
                        gated: a.gated,
                    })
                }
                Mixer::DeltaNet(g) => {
                    let sh = w.gdn.expect("DeltaNet layers come with a DeltaNet shape");
                    DMixer::DeltaNet(DDeltaNet {
                        qkv: mat(d, &g.qkv, &name("attn_qkv"), &mut done)?,
                        z: mat(d, &g.z, &name("attn_gate"), &mut done)?,
                        beta: mat(d, &g.beta, &name("ssm_beta"), &mut done)?,
                        alpha: mat(d, &g.alpha, &name("ssm_alpha"), &mut done)?,
                        out: mat(d, &g.out, &name("ssm_out"), &mut done)?,
                        conv: alloc_upload(d, &g.conv, &name("ssm_conv1d"))?,
                        dt_bias: alloc_upload(d, &g.dt_bias, &name("ssm_dt"))?,
                        a: alloc_upload(d, &g.a, &name("ssm_a"))?,
                        norm: alloc_upload(d, &g.norm, &name("ssm_norm"))?,
                        conv_state: d.alloc(sh.conv_state_len() as u64 * 4, &name("conv state"))?,
                        ssm_state: d.alloc(sh.state_len() as u64 * 4, &name("recurrent state"))?,
                    })
                }
            };
            let shared = match &layer.shared {
                None => None,
                Some(sx) => {
                    let e = &sx.expert;
                    let gate_inp = mat(d, &sx.gate_inp, &name("ffn_gate_inp_shexp"), &mut done)?;
                    let parts = [
                        mat(d, &e.gate, &name("ffn_gate_shexp"), &mut done)?,
                        mat(d, &e.up, &name("ffn_up_shexp"), &mut done)?,
                        mat(d, &e.down, &name("ffn_down_shexp"), &mut done)?,
                    ];
                    if e.gate.ty != e.up.ty {
                        let ty = format!("{} (gate and up must share a format; gate is {})", e.up.ty, e.gate.ty);
                        return Err(Error::UnsupportedType { name: name("ffn_up_shexp.weight"), ty });
                    }
                    Some(DShared {
                        gate_inp,
                        table: alloc_upload(d, &parts.map(|m| m.addr), &name("shared expert table"))?,
                        ids: alloc_upload(d, &[0i32; UBATCH], &name("shared expert ids"))?,
                        ty_gate_up: e.gate.ty,
                        ty_down: e.down.ty,
                        ffn: e.gate.rows,
                    })
                }
            };
            let router = mat(d, &layer.router, &name("ffn_gate_inp"), &mut done)?;
            layers.push(DLayer {
                attn_norm: alloc_upload(d, &layer.attn_norm, &name("attn_norm"))?,
                mixer,
                ffn_norm: alloc_upload(d, &layer.ffn_norm, &name("ffn_norm"))?,
                router,
                shared,
                tables: d.alloc(3 * c.n_experts * 8, &name("expert pointer table"))?,
                ty_gate_up: first.gate.ty,
                ty_down: first.down.ty,
                gate_bytes,
                down_bytes,
            });
        }
        let d = dev.as_mut();
        let output_norm = alloc_upload(d, &w.output_norm, "output_norm")?;
        let page_ids: Vec<i32> = (0..n_pages as i32).collect();
        let page_table = alloc_upload(d, &page_ids, "KV page table")?;
        for l in layers.iter_mut() {
            if let DMixer::Attention(a) = &mut l.mixer {
                a.cache.page_table = page_table;
            }
        }
        let rot = c.rope_dims as usize;
        let inv_freq: Vec<f32> =
            (0..rot / 2).map(|i| c.rope_theta.powf(-(2.0 * i as f64) / rot as f64) as f32).collect();
        let inv_freq = alloc_upload(d, &inv_freq, "rope frequencies")?;
        let s = Scratch::new(d, &c)?;
        // The plan's arithmetic is ideal (256-byte rounding); a device charges in its own
        // pages and loads code lazily. The cache gets what really fits now.
        if let Some(room) = d.largest_alloc()? {
            let fit = (room / plan.slot_bytes) as usize;
            if fit < plan.n_slots {
                plan.n_slots = fit;
                check_slots(&plan, &c, &opts)?;
            }
        }
        let slots = d.alloc((plan.n_slots as u64 * plan.slot_bytes).max(1), "expert cache")?;
        let n_experts = c.n_experts as usize;
        let cache = ExpertCache::new(plan.n_slots, c.n_layers as usize, opts.policy, opts.alloc);
        let mut session = StreamSession {
            w,
            dev,
            plan,
            opts: opts.clone(),
            n_past: 0,
            layers,
            output_norm,
            output,
            inv_freq,
            s,
            slots,
            cache,
            host: HostExperts::None,
            tables: vec![vec![0u64; 3 * n_experts]; c.n_layers as usize],
            predicted: vec![None; c.n_layers as usize],
            ghosts: vec![std::collections::VecDeque::new(); c.n_layers as usize],
            state_stale: false,
            cpu: CpuBackend::new(opts.threads)?,
            cpu_s_per_byte: 0.0,
            used_slots: Vec::new(),
            last_demand: None,
            router: None,
            pinned_bytes: 0,
            stats: Stats { n_layers: c.n_layers, vram_budget_bytes: budget, ..Stats::default() },
            backend_name,
            cfg: c,
        };
        session.stats.per_layer_hits = vec![0; session.layers.len()];
        session.stats.per_layer_misses = vec![0; session.layers.len()];
        session.place_experts(&mut done, total_bytes, progress)?;
        session.calibrate_cpu()?;
        // Every allocation above was zeroed, and the dense weights uploaded, on the compute
        // stream; expert copies run on the copy and prefetch streams, which no event orders
        // after that. Today the first copy follows a synchronous download of the router's ids,
        // which drains the compute stream; this wait makes the order explicit instead of
        // incidental (a review finding, not seen to fail in the emulator).
        let setup = session.dev.record(Stream::Compute)?;
        session.dev.sync_event(setup)?;
        session.dev.release(setup);
        Ok(session)
    }

    /// Resident: every expert into its slot now. Streaming: the host source of the copies.
    fn place_experts(&mut self, done: &mut u64, total: u64, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let w = self.w;
        if self.plan.all_resident() {
            let mut slot = 0;
            for (l, layer) in w.layers.iter().enumerate() {
                for (e, x) in layer.experts.iter().enumerate() {
                    let at = self.slot_addr(slot);
                    let (g, d) = (self.layers[l].gate_bytes, self.layers[l].down_bytes);
                    upload(self.dev.as_mut(), at, x.gate.data)?;
                    upload(self.dev.as_mut(), at + g as u64, x.up.data)?;
                    upload(self.dev.as_mut(), at + 2 * g as u64, x.down.data)?;
                    self.cache.insert(slot, l, e);
                    self.set_table(l, e, slot);
                    slot += 1;
                    *done += (2 * g + d) as u64;
                }
                progress(*done, total);
                let t = self.tables[l].clone();
                upload(self.dev.as_mut(), self.layers[l].tables, &t)?;
            }
            return Ok(());
        }
        let packed: u64 = self.layers.iter().map(|l| (2 * l.gate_bytes + l.down_bytes) as u64 * self.cfg.n_experts).sum();
        let pin_all = match self.opts.pin {
            PinMode::All => true,
            PinMode::Ring => false,
            PinMode::Auto => mem_available().is_some_and(|m| packed < m / 2),
        };
        if pin_all {
            let base = self.dev.alloc_host(packed, "pinned experts")?;
            self.pinned_bytes = packed;
            let mut offsets = Vec::with_capacity(self.layers.len());
            let mut at = 0usize;
            for (l, layer) in w.layers.iter().enumerate() {
                let mut offs = Vec::with_capacity(layer.experts.len());
                for x in &layer.experts {
                    offs.push(at);
                    for part in [x.gate.data, x.up.data, x.down.data] {
                        // SAFETY: base holds `packed` bytes; the parts of all experts sum to it.
                        unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(at), part.len()) };
                        at += part.len();
                    }
                    let dl = &self.layers[l];
                    *done += (2 * dl.gate_bytes + dl.down_bytes) as u64;
                }
                progress(*done, total);
                offsets.push(offs);
            }
            self.host = HostExperts::Packed { base, offsets };
        } else {
            let n = ring_len(self.cfg.n_experts as usize).min(2 * self.plan.n_slots.max(1));
            let staging = (0..n).map(|_| self.dev.alloc_host(self.plan.slot_bytes, "pinned staging")).collect::<Result<Vec<_>>>()?;
            self.pinned_bytes = n as u64 * self.plan.slot_bytes;
            self.host = HostExperts::Ring { staging, last_copy: vec![None; n], next: 0 };
            progress(total, total);
        }
        Ok(())
    }

    /// Time one expert on the CPU: the cost model's CPU speed.
    fn calibrate_cpu(&mut self) -> Result<()> {
        let x = &self.w.layers[0].experts[0];
        let input = vec![0.5f32; self.cfg.dim as usize];
        expert_forward(&self.cpu, &x.gate, &x.up, &x.down, &input)?; // warm
        let start = Instant::now();
        expert_forward(&self.cpu, &x.gate, &x.up, &x.down, &input)?;
        let (g, d) = expert_bytes(x);
        self.cpu_s_per_byte = start.elapsed().as_secs_f64() / (2 * g + d) as f64;
        Ok(())
    }

    fn slot_addr(&self, slot: usize) -> Addr {
        assert!(slot < self.cache.len(), "slot {slot} of {}", self.cache.len());
        self.slots + slot as u64 * self.plan.slot_bytes
    }

    fn set_table(&mut self, l: usize, e: usize, slot: usize) {
        let n = self.cfg.n_experts as usize;
        let at = self.slot_addr(slot);
        let g = self.layers[l].gate_bytes as u64;
        self.tables[l][e] = at;
        self.tables[l][n + e] = at + g;
        self.tables[l][2 * n + e] = at + 2 * g;
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        let link = self.dev.link_stats();
        s.h2d_bytes = link.h2d_bytes;
        s.link_busy_seconds = link.busy_seconds;
        s.stall_seconds = self.dev.stall_seconds();
        s.link_peak_gbps = self.dev.link_peak_gbps();
        s.peak_vram_bytes = self.dev.peak_bytes();
        for (l, c) in self.cache.per_layer.iter().enumerate() {
            s.per_layer_hits[l] = c.hits;
            s.per_layer_misses[l] = c.misses;
        }
        let t = self.cache.totals();
        (s.hits, s.misses) = (t.hits, t.misses);
        s
    }

    pub fn device(&self) -> String {
        self.dev.describe()
    }

    /// Bytes one token reads from device memory when every expert hits: the dense weights
    /// and the k experts of every layer.
    pub fn read_bytes_per_token(&self) -> u64 {
        let k = self.cfg.n_experts_used;
        self.plan.dense_bytes + self.layers.iter().map(|l| k * (2 * l.gate_bytes + l.down_bytes) as u64).sum::<u64>()
    }

    /// The average bytes of one expert.
    pub fn expert_bytes_avg(&self) -> f64 {
        let n = self.layers.len().max(1) as f64;
        self.layers.iter().map(|l| (2 * l.gate_bytes + l.down_bytes) as f64).sum::<f64>() / n
    }

    /// Pinned host memory this session holds (packed experts or the staging ring).
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    fn launch(&mut self, k: Kernel) -> Result<()> {
        self.dev.launch(&k)
    }

    fn gemv(&mut self, m: DMat, x: Addr, y: Addr, n: usize) -> Result<()> {
        self.launch(Kernel::Gemv { ty: m.ty, w: m.addr, x, y, rows: m.rows, cols: m.cols, n })
    }

    fn rmsnorm(&mut self, x: Addr, w: Addr, y: Addr, rows: usize, width: usize) -> Result<()> {
        self.launch(Kernel::RmsNorm { x, w, y, rows, width, eps: self.cfg.rms_eps as f32 })
    }

    /// One micro-batch of n ≤ UBATCH tokens at positions n_past.. through every layer.
    fn ubatch(&mut self, tokens: &[u32]) -> Result<()> {
        let n = tokens.len();
        assert!(n > 0 && n <= UBATCH, "ubatch of {n}");
        let (dim, s) = (self.cfg.dim as usize, self.s);

        // Embedding: gathered on the host (the table stays in host memory), then uploaded.
        let mut x = vec![0f32; n * dim]; // [n, dim]
        for (t, &tok) in tokens.iter().enumerate() {
            let row = self.w.token_embd.row(tok as usize);
            quant::dequantize(self.w.token_embd.ty, row, &mut x[t * dim..(t + 1) * dim])?;
        }
        upload(self.dev.as_mut(), s.x, &x)?;

        for l in 0..self.layers.len() {
            let (attn_norm, mixer) = (self.layers[l].attn_norm, self.layers[l].mixer);
            self.rmsnorm(s.x, attn_norm, s.h, n, dim)?;
            match mixer {
                DMixer::Attention(a) => self.attention(a, n)?,
                DMixer::DeltaNet(g) => self.delta_net(g, n)?,
            }
            self.moe(l, n, &s)?;
        }
        self.n_past += n;
        self.stats.tokens += n as u64;
        Ok(())
    }

    /// Attention on h = rmsnorm(x) (in s.h): q, k, v; per-head norm; RoPE; cache; attend;
    /// x += Wo o. Gated (qwen35moe): q|gate per head from one projection, o ⊙ sigmoid(gate).
    fn attention(&mut self, a: DAttention, n: usize) -> Result<()> {
        let DAttention { wq, wk, wv, wo, q_norm, k_norm, cache, gated } = a;
        let c = &self.cfg;
        let (dim, hd, rope_dims) = (c.dim as usize, c.head_dim as usize, c.rope_dims as usize);
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        let s = self.s;
        if gated {
            self.gemv(wq, s.h, s.qg, n)?;
            self.launch(Kernel::SplitGate { qg: s.qg, q: s.q, gate: s.gate, n, n_heads, head_dim: hd })?;
        } else {
            self.gemv(wq, s.h, s.q, n)?;
        }
        self.gemv(wk, s.h, s.k, n)?;
        self.gemv(wv, s.h, s.v, n)?;
        self.rmsnorm(s.q, q_norm, s.q, n * n_heads, hd)?;
        self.rmsnorm(s.k, k_norm, s.k, n * n_kv_heads, hd)?;
        for (buf, heads) in [(s.q, n_heads), (s.k, n_kv_heads)] {
            let rope = Kernel::Rope {
                x: buf,
                inv_freq: self.inv_freq,
                n,
                n_heads: heads,
                head_dim: hd,
                rope_dims,
                pos0: self.n_past,
            };
            self.launch(rope)?;
        }
        self.launch(Kernel::KvStore { cache, k: s.k, v: s.v, n, pos0: self.n_past })?;
        let scale = 1.0 / (hd as f32).sqrt();
        let (pos0, o) = (self.n_past, s.o);
        self.launch(Kernel::Attention { cache, q: s.q, o, n, n_heads, n_kv_heads, head_dim: hd, pos0, scale })?;
        if gated {
            self.launch(Kernel::SigmoidMul { y: s.o, g: s.gate, n: n * n_heads * hd })?;
        }
        self.gemv(wo, s.o, s.h, n)?;
        self.launch(Kernel::Add { y: s.x, x: s.h, n: n * dim })
    }

    /// residual (s.x) += Σ_j weights[t, j] · expert_{ids[t, j]}(s.h) over `e`'s pointer table.
    fn launch_moe(&mut self, e: Experts, ids: Addr, weights: Addr, n: usize, k: usize) -> Result<()> {
        let (s, n_experts) = (self.s, e.n_experts);
        self.launch(Kernel::Moe {
            ty_gate_up: e.ty_gate_up,
            ty_down: e.ty_down,
            gate: e.table,
            up: e.table + (n_experts * 8) as u64,
            down: e.table + (2 * n_experts * 8) as u64,
            ids,
            weights,
            x: s.h,
            act: s.act,
            out: s.out,
            offsets: s.offsets,
            pairs: s.pairs,
            residual: s.x,
            dim: self.cfg.dim as usize,
            ffn: e.ffn,
            n,
            k,
            n_experts,
        })
    }

    /// Zero every DeltaNet layer's conv and recurrent state (a new sequence starts).
    fn clear_recurrent_state(&mut self) -> Result<()> {
        let Some(sh) = self.w.gdn else { return Ok(()) };
        let zeros = vec![0f32; sh.state_len().max(sh.conv_state_len())];
        for l in 0..self.layers.len() {
            if let DMixer::DeltaNet(DDeltaNet { conv_state, ssm_state, .. }) = self.layers[l].mixer {
                upload(self.dev.as_mut(), conv_state, &zeros[..sh.conv_state_len()])?;
                upload(self.dev.as_mut(), ssm_state, &zeros[..sh.state_len()])?;
            }
        }
        Ok(())
    }

    /// Gated DeltaNet on h = rmsnorm(x) (in s.h): projections, conv, gates, the delta rule
    /// over the micro-batch, gated norm, x += Wout o. The layer's state advances by n tokens.
    fn delta_net(&mut self, g: DDeltaNet, n: usize) -> Result<()> {
        let DDeltaNet { qkv, z, beta, alpha, out, conv, dt_bias, a, norm, conv_state, ssm_state } = g;
        let sh = self.w.gdn.expect("DeltaNet layers come with a DeltaNet shape");
        let (s, dim, eps) = (self.s, self.cfg.dim as usize, self.cfg.rms_eps as f32);
        let (channels, n_v) = (sh.channels(), sh.n_v_heads);
        self.gemv(qkv, s.h, s.gdn_x, n)?;
        self.gemv(z, s.h, s.gdn_z, n)?;
        self.gemv(beta, s.h, s.gdn_b, n)?;
        self.gemv(alpha, s.h, s.gdn_a, n)?;
        let kernel = sh.conv_kernel;
        self.launch(Kernel::GdnConv { x: s.gdn_x, state: conv_state, w: conv, n, channels, kernel })?;
        self.launch(Kernel::GdnGates { beta: s.gdn_b, alpha: s.gdn_a, dt_bias, a, n, n_v })?;
        self.launch(Kernel::GdnRule {
            qkv: s.gdn_x,
            beta: s.gdn_b,
            decay: s.gdn_a,
            state: ssm_state,
            o: s.gdn_o,
            n,
            n_k: sh.n_k_heads,
            n_v,
            head_k: sh.head_k,
            head_v: sh.head_v,
            tiled: sh.tiled,
        })?;
        let (rows, width) = (n * n_v, sh.head_v);
        self.launch(Kernel::GatedNorm { x: s.gdn_o, z: s.gdn_z, w: norm, rows, width, eps })?;
        self.gemv(out, s.gdn_o, s.h, n)?;
        self.launch(Kernel::Add { y: s.x, x: s.h, n: n * dim })
    }

    /// Final norm and output projection of tokens first..n of the last micro-batch, appended
    /// to `logits` LOGITS_ROWS rows at a time.
    fn project(&mut self, n: usize, first: usize, logits: &mut Vec<f32>) -> Result<()> {
        let (dim, n_vocab) = (self.cfg.dim as usize, self.cfg.n_vocab as usize);
        let s = self.s;
        let mut t = first;
        while t < n {
            let rows = LOGITS_ROWS.min(n - t);
            self.rmsnorm(s.x + (t * dim * 4) as u64, self.output_norm, s.h, rows, dim)?;
            self.gemv(self.output, s.h, s.logits, rows)?;
            let at = logits.len();
            logits.resize(at + rows * n_vocab, 0f32);
            download(self.dev.as_mut(), s.logits, &mut logits[at..])?;
            t += rows;
        }
        Ok(())
    }

    /// x += Σ_j w_j · expert_j(h), h = rmsnorm(x): router and top-k on the device, experts
    /// from the cache, loaded, or computed on the CPU.
    fn moe(&mut self, l: usize, n: usize, s: &Scratch) -> Result<()> {
        let c = self.cfg.clone();
        let (dim, k, n_experts) = (c.dim as usize, c.n_experts_used as usize, c.n_experts as usize);
        let renorm = c.norm_topk_prob;
        let (ffn_norm, router) = (self.layers[l].ffn_norm, self.layers[l].router);
        self.rmsnorm(s.x, ffn_norm, s.h, n, dim)?;
        self.gemv(router, s.h, s.router, n)?;
        self.launch(Kernel::TopkMoe { logits: s.router, ids: s.ids, weights: s.weights, n, n_experts, k, renorm })?;
        let host_ids = self.route_on_host(l, n, s)?;
        let predict = !self.plan.all_resident() && self.opts.prefetch && l + 1 < self.layers.len();
        if predict {
            // The next layer's router on this layer's state: its likely experts, early.
            let next = &self.layers[l + 1];
            let (ffn_norm1, router1) = (next.ffn_norm, next.router);
            self.rmsnorm(s.x, ffn_norm1, s.act, n, dim)?;
            self.gemv(router1, s.act, s.router, n)?;
            let (ids, weights) = (s.ids + (UBATCH * k * 4) as u64, s.weights + (UBATCH * k * 4) as u64);
            self.launch(Kernel::TopkMoe { logits: s.router, ids, weights, n, n_experts, k, renorm })?;
        }
        let mut ids = vec![0i32; n * k];
        let mut pred = Vec::new();
        if !self.plan.all_resident() {
            // The one device-to-host copy of the layer: this layer's ids (and the prediction).
            if predict {
                let mut both = vec![0i32; UBATCH * k + n * k];
                download(self.dev.as_mut(), s.ids, &mut both)?;
                ids.copy_from_slice(&both[..n * k]);
                pred = both[UBATCH * k..].to_vec();
            } else if host_ids.is_none() {
                download(self.dev.as_mut(), s.ids, &mut ids)?;
            }
            if let Some(h) = &host_ids {
                ids.copy_from_slice(h);
            }
            self.resolve(l, n, &ids, s)?;
        } else {
            // Resident: every lookup hits (counted per token and expert, no ids on the host).
            self.cache.per_layer[l].hits += (n * k) as u64;
            self.stats.gpu_experts += (n * k) as u64;
        }
        let ly = &self.layers[l];
        let routed = Experts { table: ly.tables, n_experts, ty_gate_up: ly.ty_gate_up, ty_down: ly.ty_down, ffn: c.expert_ffn_dim as usize };
        self.launch_moe(routed, s.ids, s.weights, n, k)?;
        if let Some(sx) = self.layers[l].shared {
            // x += sigmoid(gate_inp · h) · shared(h): the MoE kernel over a one-expert table.
            self.gemv(sx.gate_inp, s.h, s.router, n)?;
            self.launch(Kernel::Sigmoid { x: s.router, n })?;
            let shared = Experts { table: sx.table, n_experts: 1, ty_gate_up: sx.ty_gate_up, ty_down: sx.ty_down, ffn: sx.ffn };
            self.launch_moe(shared, sx.ids, s.router, n, 1)?;
        }
        if !self.plan.all_resident() {
            // Each slot holds a reference to the compute event of its last reader.
            let ev = self.dev.record(Stream::Compute)?;
            for &slot in &self.used_slots {
                self.dev.retain(ev);
                if let Some(old) = self.cache.slots[slot].last_read.replace(ev) {
                    self.dev.release(old);
                }
            }
            self.dev.release(ev);
        }
        if predict {
            self.prefetch(l + 1, n, &pred)?;
        }
        Ok(())
    }
}

/// Speculative copies go in pieces of at most this many bytes: a demand copy queued on the
/// other stream waits for one piece on the shared link, not for a whole batch of experts.
pub const PREFETCH_CHUNK: usize = 512 << 10;

/// `dev.h2d`, in PREFETCH_CHUNK pieces on the prefetch stream.
///
/// # Safety
/// As `Device::h2d`.
unsafe fn h2d_chunked(dev: &mut dyn Device, stream: Stream, dst: Addr, src: *const u8, bytes: usize) -> Result<()> {
    let piece = if stream == Stream::Prefetch { PREFETCH_CHUNK } else { bytes.max(1) };
    let mut at = 0;
    while at < bytes {
        let n = piece.min(bytes - at);
        // SAFETY: the caller's contract covers [src, src + bytes) and [dst, dst + bytes).
        unsafe { dev.h2d(stream, dst + at as u64, src.add(at), n)? };
        at += n;
    }
    Ok(())
}

/// Streaming needs the k experts of a token's layer in VRAM at once (unless every miss runs on
/// the CPU).
fn check_slots(plan: &Plan, c: &ModelConfig, opts: &Options) -> Result<()> {
    let k = c.n_experts_used as usize;
    let per_layer = match opts.alloc {
        Allocation::Global => plan.n_slots,
        Allocation::PerLayer => plan.n_slots / c.n_layers.max(1) as usize,
    };
    if !plan.all_resident() && opts.moe_policy != MoePolicy::Cpu && per_layer < k {
        return Err(Error::Usage(format!(
            "VRAM budget: {} expert slots fit after the dense part ({per_layer} per layer), a \
             layer needs {k} (raise --vram-budget, use --cache-alloc global, or --moe-policy \
             cpu to compute missed experts on the CPU)",
            plan.n_slots
        )));
    }
    Ok(())
}

/// The shapes the kernels accept, checked once against the model.
fn check_shapes(c: &ModelConfig) -> Result<()> {
    let bad = |what: String| Err(Error::Usage(format!("the device engine cannot run this model: {what}")));
    if c.head_dim % 32 != 0 || c.head_dim > 256 {
        return bad(format!("head_dim {} is not a multiple of 32 up to 256", c.head_dim));
    }
    if c.n_experts > 512 || c.n_experts_used > 16 {
        return bad(format!("{} experts, {} used (at most 512 and 16)", c.n_experts, c.n_experts_used));
    }
    if c.dim % 32 != 0 || c.expert_ffn_dim % 32 != 0 {
        return bad(format!("dim {} and ffn {} must be multiples of 32", c.dim, c.expert_ffn_dim));
    }
    if let Some(s) = &c.ssm {
        // The DeltaNet kernels' limits (csrc/include/abi.h).
        if s.conv_kernel > 8 || s.state_size > 256 {
            return bad(format!("DeltaNet conv kernel {} (at most 8) and state size {} (at most 256)", s.conv_kernel, s.state_size));
        }
    }
    Ok(())
}

impl Scratch {
    fn new(d: &mut dyn Device, c: &ModelConfig) -> Result<Scratch> {
        let (dim, q_width) = (c.dim as usize, (c.n_heads * c.head_dim) as usize);
        let kv_width = (c.n_kv_heads * c.head_dim) as usize;
        let (e, k, ffn) = (c.n_experts as usize, c.n_experts_used as usize, plan::act_ffn(c) as usize);
        let g = plan::Qwen35Scratch::of(c);
        let gated_width = if g.gated { q_width } else { 0 };
        let u = UBATCH;
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

impl Engine for StreamSession<'_> {
    fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let n_vocab = self.cfg.n_vocab as usize;
        if tokens.is_empty() {
            return Err(Error::Usage("no tokens to evaluate".into()));
        }
        if self.n_past + tokens.len() > self.plan.n_ctx {
            return Err(Error::ContextOverflow { n_tokens: self.n_past + tokens.len(), n_ctx: self.plan.n_ctx });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Usage(format!("token id {bad} is not below n_vocab {n_vocab}")));
        }
        if self.state_stale {
            self.clear_recurrent_state()?;
            self.state_stale = false;
        }
        let mut logits = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(UBATCH).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let first = match which {
                Logits::All => Some(0),
                Logits::Last if i + 1 == chunks.len() => Some(chunk.len() - 1),
                Logits::Last => None,
            };
            self.ubatch(chunk)?;
            if let Some(first) = first {
                self.project(chunk.len(), first, &mut logits)?;
            }
        }
        Ok(logits)
    }

    fn n_past(&self) -> usize {
        self.n_past
    }

    fn n_ctx(&self) -> usize {
        self.plan.n_ctx
    }

    /// As the CPU session: attention only, no routing trace.
    fn rewind(&mut self, n_past: usize) -> bool {
        if self.w.gdn.is_some() || self.router.is_some() || n_past > self.n_past {
            return false;
        }
        self.n_past = n_past;
        true
    }

    fn reset(&mut self) {
        self.state_stale = self.w.gdn.is_some();
        self.n_past = 0;
        if let Some(r) = self.router.as_mut() {
            r.reset();
        }
    }

    fn set_router(&mut self, router: crate::routing::Router) {
        self.router = Some(router);
    }

    fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    fn threads(&self) -> usize {
        self.cpu.threads()
    }

    fn rotary_stats(&self) -> Option<Stats> {
        Some(self.stats())
    }
}


impl StreamSession<'_> {
    /// Benchmark routing / recording: the router's logits come to the host, the Router picks
    /// the experts from their softmax, and its ids and weights replace the device's top-k.
    /// None in plain model routing (nothing crosses the link).
    fn route_on_host(&mut self, l: usize, n: usize, s: &Scratch) -> Result<Option<Vec<i32>>> {
        let Some(router) = self.router.as_ref() else { return Ok(None) };
        if router.is_model() && !router.is_recording() {
            return Ok(None);
        }
        let (e, k) = (self.cfg.n_experts as usize, self.cfg.n_experts_used as usize);
        let mut probs = vec![0f32; n * e]; // [n, n_experts]
        download(self.dev.as_mut(), s.router, &mut probs)?;
        probs.chunks_exact_mut(e).for_each(crate::model::qwen3moe::softmax);
        let (mut ids, mut w) = (vec![0usize; n * k], vec![0f32; n * k]); // [n, k]
        let renorm = self.cfg.norm_topk_prob;
        self.router.as_mut().expect("checked").route(l, &probs, renorm, &mut ids, &mut w)?;
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        upload(self.dev.as_mut(), s.ids, &ids)?;
        upload(self.dev.as_mut(), s.weights, &w)?;
        Ok(Some(ids))
    }

    /// Make layer `l`'s experts for these ids available: hits, demand loads into slots, CPU
    /// fallback (output rows uploaded, ids marked). Updates the layer's pointer table.
    fn resolve(&mut self, l: usize, n: usize, ids: &[i32], s: &Scratch) -> Result<()> {
        let (dim, k) = (self.cfg.dim as usize, self.cfg.n_experts_used as usize);
        if let Some(pred) = self.predicted[l].take() {
            for (t, p) in pred.iter().enumerate().take(n) {
                let truth = &ids[t * k..(t + 1) * k];
                self.stats.prefetch_correct += p.iter().filter(|&&e| truth.contains(&(e as i32))).count() as u64;
                self.stats.prefetch_predicted += k as u64;
            }
        }
        let mut needed: Vec<usize> = Vec::with_capacity(n * k);
        for &e in ids {
            assert!(e >= 0 && (e as u64) < self.cfg.n_experts, "router id {e}");
            if !needed.contains(&(e as usize)) {
                needed.push(e as usize);
            }
        }
        self.used_slots.clear();
        let mut misses = Vec::new();
        let mut in_flight = Vec::new(); // prefetches the hits still wait for
        for &e in &needed {
            match self.cache.lookup(l, e) {
                Some(slot) => {
                    in_flight.extend(self.cache.slots[slot].ready.take());
                    self.used_slots.push(slot);
                    self.set_table(l, e, slot);
                }
                None => misses.push(e),
            }
        }
        let (gpu, cpu) = self.split(l, &misses);
        // The CPU experts start from h as it is now: it comes down before the compute stream
        // queues any wait for a copy, so they run while the copies do (max, not sum).
        let mut h = Vec::new(); // [n, dim] when some expert runs on the CPU
        if !cpu.is_empty() {
            h.resize(n * dim, 0f32);
            download(self.dev.as_mut(), s.h, &mut h)?;
        }
        for ev in in_flight {
            self.dev.wait(Stream::Compute, ev)?;
            self.dev.release(ev);
        }
        let mut jobs = Vec::with_capacity(gpu.len());
        for &e in &gpu {
            let slot = self.cache.victim(l, &self.used_slots).expect("split() keeps loads within capacity");
            self.before_refill(Stream::Copy, slot)?;
            jobs.push((l, e, slot));
            self.cache.insert(slot, l, e);
            self.used_slots.push(slot);
            self.set_table(l, e, slot);
        }
        if !gpu.is_empty() {
            self.copy_experts(Stream::Copy, &jobs)?;
            let ev = self.dev.record(Stream::Copy)?;
            self.dev.wait(Stream::Compute, ev)?;
            // Prefetches queued from now on start after these demand loads (load_async).
            if let Some(old) = self.last_demand.replace(ev) {
                self.dev.release(old);
            }
        }
        let table = std::mem::take(&mut self.tables[l]);
        upload(self.dev.as_mut(), self.layers[l].tables, &table)?;
        self.tables[l] = table;
        if !cpu.is_empty() {
            // Activations cross the link instead of weights: h down (above), output rows up.
            let mut marked = ids.to_vec();
            for (pair, id) in marked.iter_mut().enumerate() {
                let e = *id as usize;
                if !cpu.contains(&e) {
                    continue;
                }
                let x = &self.w.layers[l].experts[e];
                let t = pair / k;
                let y = expert_forward(&self.cpu, &x.gate, &x.up, &x.down, &h[t * dim..(t + 1) * dim])?;
                upload(self.dev.as_mut(), s.out + (pair * dim * 4) as u64, &y)?;
                *id = -1 - e as i32;
            }
            upload(self.dev.as_mut(), s.ids, &marked)?;
            if self.opts.load_behind && self.opts.moe_policy != MoePolicy::Cpu {
                // Admission on a second miss: an expert that ran on the CPU recently and runs
                // there again is copied into the cache behind the compute (prefetch stream), so
                // its next reuse hits. One-off misses (no reuse) cost no link traffic.
                let ghosts = &mut self.ghosts[l];
                let again: Vec<usize> = cpu.iter().copied().filter(|e| ghosts.contains(e)).collect();
                for &e in &cpu {
                    ghosts.retain(|&g| g != e);
                    ghosts.push_back(e);
                }
                while ghosts.len() > GHOSTS * k {
                    ghosts.pop_front();
                }
                let used = self.used_slots.clone();
                self.stats.behind_loads += self.load_async(l, &again, used)? as u64;
            }
        }
        self.stats.cpu_experts += cpu.len() as u64;
        self.stats.gpu_experts += (needed.len() - cpu.len()) as u64;
        Ok(())
    }

    /// Which misses load into VRAM and which run on the CPU. Loads never exceed the slots the
    /// layer may use beside its hits; what does not fit runs on the CPU whatever the policy.
    fn split(&self, l: usize, misses: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let room = self.cache.capacity(l).saturating_sub(self.used_slots.len());
        let (mut gpu, mut cpu) = (Vec::new(), Vec::new());
        let bytes = (2 * self.layers[l].gate_bytes + self.layers[l].down_bytes) as f64;
        let link = self.stats_link_bytes_per_s();
        let (mut t_link, mut t_cpu) = (0.0f64, 0.0f64);
        for &e in misses {
            let to_gpu = gpu.len() < room
                && match self.opts.moe_policy {
                    MoePolicy::Gpu => true,
                    MoePolicy::Cpu => false,
                    // Both sides work at once: give each miss to the side that finishes first.
                    MoePolicy::Auto => t_link + bytes / link <= t_cpu + bytes * self.cpu_s_per_byte,
                };
            if to_gpu {
                t_link += bytes / link;
                gpu.push(e);
            } else {
                t_cpu += bytes * self.cpu_s_per_byte;
                cpu.push(e);
            }
        }
        (gpu, cpu)
    }

    /// The link's measured speed (bytes/s), or the configured estimate before any copy.
    fn stats_link_bytes_per_s(&self) -> f64 {
        let s = self.dev.link_stats();
        if s.busy_seconds > 0.01 {
            s.h2d_bytes as f64 / s.busy_seconds
        } else {
            self.dev.link_peak_gbps().unwrap_or(self.opts.link_gbps) * 1e9
        }
    }

    /// Queue the copies of experts (l, e) into their slots on `stream`: from packed pinned
    /// memory one copy each; in ring mode loader threads first fill staging buffers from the
    /// file mapping in parallel (page faults happen there, on the host, while the device works
    /// through what is already queued).
    fn copy_experts(&mut self, stream: Stream, jobs: &[(usize, usize, usize)]) -> Result<()> {
        let w = self.w;
        let sizes: Vec<(Addr, usize)> = jobs
            .iter()
            .map(|&(l, _, slot)| (self.slot_addr(slot), 2 * self.layers[l].gate_bytes + self.layers[l].down_bytes))
            .collect();
        match &mut self.host {
            HostExperts::Packed { base, offsets } => {
                for (&(l, e, _), &(dst, bytes)) in jobs.iter().zip(&sizes) {
                    // SAFETY: the packed buffer lives as long as the device and is never
                    // written after load; offsets[l][e] + bytes lies inside it.
                    let src = unsafe { base.add(offsets[l][e]) };
                    // SAFETY: dst is a slot of slot_bytes >= bytes; src stays valid (above).
                    unsafe { h2d_chunked(self.dev.as_mut(), stream, dst, src, bytes)? };
                }
                Ok(())
            }
            HostExperts::Ring { staging, last_copy, next } => {
                // Take a staging buffer per job (waiting for the copy that last read it).
                let mut bufs = Vec::with_capacity(jobs.len());
                for _ in jobs {
                    let i = *next;
                    *next = (i + 1) % staging.len();
                    if let Some(ev) = last_copy[i].take() {
                        self.dev.sync_event(ev)?;
                        self.dev.release(ev);
                    }
                    bufs.push(i);
                }
                assert!(jobs.len() <= staging.len(), "{} loads for {} staging buffers", jobs.len(), staging.len());
                let fills: Vec<Fill> = jobs
                    .iter()
                    .zip(&bufs)
                    .map(|(&(l, e, _), &i)| {
                        let x = &w.layers[l].experts[e];
                        Fill { dst: staging[i], parts: [x.gate.data, x.up.data, x.down.data] }
                    })
                    .collect();
                load_parallel(&fills);
                for (&i, &(dst, bytes)) in bufs.iter().zip(&sizes) {
                    // SAFETY: the buffer stays unchanged until the event recorded right after
                    // this copy completes (its next use waits for it).
                    unsafe { h2d_chunked(self.dev.as_mut(), stream, dst, staging[i], bytes)? };
                    last_copy[i] = Some(self.dev.record(stream)?);
                }
                Ok(())
            }
            HostExperts::None => unreachable!("resident sessions never load experts"),
        }
    }

    /// Order a refill of `slot` on `stream` after everything that touches the slot: the
    /// compute that last read it, and a prefetch still filling it (two copies into one slot on
    /// two streams would land in either order).
    fn before_refill(&mut self, stream: Stream, slot: usize) -> Result<()> {
        if let Some(ev) = self.cache.slots[slot].last_read {
            self.dev.wait(stream, ev)?;
        }
        if let Some(ev) = self.cache.slots[slot].ready.take() {
            self.dev.wait(stream, ev)?;
            self.dev.release(ev);
        }
        Ok(())
    }

    /// Speculatively load layer `l`'s predicted experts on the prefetch stream, behind every
    /// demand load; remember the prediction to measure its recall.
    fn prefetch(&mut self, l: usize, n: usize, pred: &[i32]) -> Result<()> {
        let k = self.cfg.n_experts_used as usize;
        let per_token: Vec<Vec<usize>> = (0..n).map(|t| pred[t * k..(t + 1) * k].iter().map(|&e| e as usize).collect()).collect();
        let mut want: Vec<usize> = Vec::new();
        for e in per_token.iter().flatten() {
            if !want.contains(e) {
                want.push(*e);
            }
        }
        self.predicted[l] = Some(per_token);
        // Only as many as the layer can hold without evicting its own predicted experts.
        let protected: Vec<usize> = want.iter().filter_map(|&e| self.cache.peek(l, e)).collect();
        self.stats.prefetch_loads += self.load_async(l, &want, protected)? as u64;
        Ok(())
    }

    /// Load layer `l`'s `experts` (those not cached) on the prefetch stream into slots other
    /// than `protected`, as many as the layer may hold; each slot's `ready` event orders its
    /// first reader after the copy. Returns how many were queued.
    fn load_async(&mut self, l: usize, experts: &[usize], mut protected: Vec<usize>) -> Result<usize> {
        let mut loaded = Vec::new();
        for &e in experts {
            if self.cache.peek(l, e).is_some() || protected.len() >= self.cache.capacity(l) {
                continue;
            }
            let Some(slot) = self.cache.victim(l, &protected) else { break };
            self.before_refill(Stream::Prefetch, slot)?;
            self.cache.insert(slot, l, e);
            self.set_table(l, e, slot);
            protected.push(slot);
            loaded.push(slot);
        }
        let n_loaded = loaded.len();
        if !loaded.is_empty() {
            let jobs: Vec<(usize, usize, usize)> =
                loaded.iter().map(|&slot| (l, self.cache.slots[slot].key.expect("just inserted").1, slot)).collect();
            // Never ahead of a demand load on the link: the two copy streams are peers on a
            // GPU (the simulator serves demand first); this makes the GPU behave the same.
            if let Some(ev) = self.last_demand {
                self.dev.wait(Stream::Prefetch, ev)?;
            }
            self.copy_experts(Stream::Prefetch, &jobs)?;
            let ev = self.dev.record(Stream::Prefetch)?;
            for slot in loaded {
                self.dev.retain(ev);
                self.cache.slots[slot].ready = Some(ev);
            }
            self.dev.release(ev);
        }
        Ok(n_loaded)
    }
}
