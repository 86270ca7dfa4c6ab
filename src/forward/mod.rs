//! The forward pass: one per architecture (`qwen3moe`, `qwen35moe`), each written once against
//! the device trait and reading top to bottom like llama2.c's `forward()`. Every backend runs
//! it: `cpu` and `cpu-ref` (host devices: device memory is host memory, nothing is copied),
//! `sim` and `cuda`. The rotary (src/rotary/: plan, expert cache, prefetch, CPU fallback) sits
//! between the forward and the device; with every expert resident it costs nothing.
//!
//! A `Session` is the model in use with the state of one sequence. `forward` takes a batch of
//! tokens at the next positions (a whole prompt, or one token); both run the same code, so
//! decode reproduces prefill.

mod qwen35moe;
mod qwen3moe;

use crate::error::{Error, Result};
use crate::model::weights::Weights;
use crate::model::{Arch, ModelConfig};
use crate::ops::{oracle, Kernel, MoeStage, TopkNorm};
use crate::quant;
use crate::quant::GgmlType;
use crate::rotary::device::{download, upload, Addr, Device};
use crate::rotary::plan::{dense_bytes, Plan, LOGITS_ROWS};
use crate::rotary::residency::{check_slots, Residency};
use crate::rotary::upload::{
    layer_expert_bytes, resident_tensor_bytes, DMat, DeviceWeights, Scratch,
};
use crate::rotary::{BackendKind, Options, Stats};

/// Which positions' logits `forward` returns.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every token's (`rotary logits`, tests).
    All,
}

/// A model in use with the state of one sequence: what generation, the server and benchmarks
/// drive.
pub trait Engine {
    /// Run `tokens` at positions n_past.. and return logits (`[n_vocab]` for the last token,
    /// or `[tokens.len(), n_vocab]`).
    fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>>;
    /// Tokens in the cache (the position of the next token).
    fn n_past(&self) -> usize;
    fn n_ctx(&self) -> usize;
    /// Forget the sequence.
    fn reset(&mut self);
    /// Keep only the first `n_past` tokens of the sequence (a prompt cache whose new prompt
    /// shares only a prefix). False when the model cannot (a recurrent state has no history);
    /// then nothing changed.
    fn rewind(&mut self, _n_past: usize) -> bool {
        false
    }
    fn backend_name(&self) -> &'static str;
    fn threads(&self) -> usize;
    /// Route experts by a benchmark mode and/or record the routing (see src/routing.rs).
    fn set_router(&mut self, router: crate::routing::Router);
    /// The rotary's measurements (devices with a budget: sim, cuda); None on the host.
    fn rotary_stats(&self) -> Option<Stats> {
        None
    }
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

pub struct Session<'w> {
    w: &'w Weights<'w>,
    dev: Box<dyn Device + 'w>,
    cfg: ModelConfig,
    pub plan: Plan,
    dw: DeviceWeights,
    s: Scratch,
    rotary: Residency<'w>,
    /// Tokens per micro-batch (the device's).
    ubatch: usize,
    n_past: usize,
    /// reset() ran after DeltaNet state advanced: zero it before the next token (allocations
    /// start zeroed, so a fresh session uploads nothing).
    state_stale: bool,
    /// Benchmark routing modes / routing traces: routes on the host from the router's logits.
    router: Option<crate::routing::Router>,
    backend_name: &'static str,
    threads: usize,
}

impl<'w> Session<'w> {
    /// Plan, allocate and place the weights on `dev`. `progress(done, total)` reports bytes of
    /// weights placed.
    pub fn new(
        w: &'w Weights<'w>,
        mut dev: Box<dyn Device + 'w>,
        n_ctx: usize,
        opts: Options,
        backend_name: &'static str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Session<'w>> {
        let c = w.cfg.clone();
        if !dev.is_host() {
            check_shapes(&c)?;
        }
        if n_ctx == 0 || n_ctx as u64 > c.context_length {
            let max = c.context_length;
            return Err(Error::Usage(format!("context size {n_ctx} is not in 1..={max}")));
        }
        let (dense, per_layer) = (dense_bytes(resident_tensor_bytes(w)), layer_expert_bytes(w));
        let mut plan =
            Plan::new(&c, n_ctx, dense, &per_layer, dev.overhead_bytes(), dev.budget_bytes())?;
        if let Some(max) = opts.max_slots.filter(|&m| m < plan.n_slots) {
            plan.fit_cache(plan.cache_room(), max);
        }
        check_slots(&plan, &c, &opts)?;
        let experts_total: u64 =
            w.layers.iter().zip(&per_layer).map(|(l, b)| l.experts.len() as u64 * b).sum();
        let total = dense + experts_total;
        let dw = DeviceWeights::upload(w, dev.as_mut(), n_ctx, &mut |done| progress(done, total))?;
        let ubatch = dev.max_batch();
        let s = Scratch::new(dev.as_mut(), &c, ubatch)?;
        let threads = opts.threads;
        let rotary = Residency::new(w, dev.as_mut(), &mut plan, &dw.layers, opts, &mut |done| {
            progress(dense + done, total)
        })?;
        // Every allocation above was zeroed, and the dense weights uploaded, on the compute
        // stream; expert copies run on the copy and prefetch streams, which no event orders
        // after that: this wait makes the order explicit.
        let setup = dev.record(crate::rotary::device::Stream::Compute)?;
        dev.sync_event(setup)?;
        dev.release(setup);
        Ok(Session {
            w,
            dev,
            cfg: c,
            plan,
            dw,
            s,
            rotary,
            ubatch,
            n_past: 0,
            state_stale: false,
            router: None,
            backend_name,
            threads: crate::backend::threads_or_default(threads),
        })
    }

    /// A session on `kind` with default options and no budget (tests, tools).
    pub fn open(
        w: &'w Weights<'w>,
        kind: BackendKind,
        n_ctx: usize,
        threads: Option<usize>,
    ) -> Result<Session<'w>> {
        let dev = crate::rotary::open_device(kind, 0, None, Options::default().link_gbps, threads)?;
        Session::new(
            w,
            dev,
            n_ctx,
            Options { threads, ..Options::default() },
            kind.name(),
            &mut |_, _| {},
        )
    }

    /// What the run measured: the rotary's counters, the device's link, stall and peak.
    pub fn stats(&self) -> Stats {
        let mut s = self.rotary.stats.clone();
        let link = self.dev.link_stats();
        s.h2d_bytes = link.h2d_bytes;
        s.link_busy_seconds = link.busy_seconds;
        s.stall_seconds = self.dev.stall_seconds();
        s.link_peak_gbps = self.dev.link_peak_gbps();
        s.peak_vram_bytes = self.dev.peak_bytes();
        self.rotary.fill_stats(&mut s);
        s
    }

    pub fn device(&self) -> String {
        self.dev.describe()
    }

    /// Bytes one token reads from device memory when every expert hits: the dense weights
    /// and the k experts of every layer.
    pub fn read_bytes_per_token(&self) -> u64 {
        let k = self.cfg.n_experts_used;
        self.plan.dense_bytes
            + self
                .dw
                .layers
                .iter()
                .map(|l| k * (2 * l.gate_bytes + l.down_bytes) as u64)
                .sum::<u64>()
    }

    /// The average bytes of one expert.
    pub fn expert_bytes_avg(&self) -> f64 {
        let n = self.dw.layers.len().max(1) as f64;
        self.dw.layers.iter().map(|l| (2 * l.gate_bytes + l.down_bytes) as f64).sum::<f64>() / n
    }

    /// Pinned host memory this session holds (packed experts or the staging ring).
    pub fn pinned_bytes(&self) -> u64 {
        self.rotary.pinned_bytes()
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

    /// x [n, dim] ← the tokens' rows of token_embd: gathered on the host (the table stays in
    /// host memory), then uploaded.
    fn embed(&mut self, tokens: &[u32]) -> Result<()> {
        let (n, dim) = (tokens.len(), self.cfg.dim as usize);
        let mut x = vec![0f32; n * dim]; // [n, dim]
        for (t, &tok) in tokens.iter().enumerate() {
            let row = self.w.token_embd.row(tok as usize);
            quant::dequantize(self.w.token_embd.ty, row, &mut x[t * dim..(t + 1) * dim])?;
        }
        upload(self.dev.as_mut(), self.s.x, &x)
    }

    /// Final norm and output projection of tokens first..n of the last micro-batch, appended
    /// to `logits` LOGITS_ROWS rows at a time.
    fn project(&mut self, n: usize, first: usize, logits: &mut Vec<f32>) -> Result<()> {
        let (dim, n_vocab) = (self.cfg.dim as usize, self.cfg.n_vocab as usize);
        let s = self.s;
        let mut t = first;
        while t < n {
            let rows = LOGITS_ROWS.min(n - t);
            self.rmsnorm(s.x + (t * dim * 4) as u64, self.dw.output_norm, s.h, rows, dim)?;
            self.gemv(self.dw.output, s.h, s.logits, rows)?;
            let at = logits.len();
            logits.resize(at + rows * n_vocab, 0f32);
            download(self.dev.as_mut(), s.logits, &mut logits[at..])?;
            t += rows;
        }
        Ok(())
    }

    /// residual (s.x) += Σ_j weights[t, j] · expert_{ids[t, j]}(s.h) over `e`'s pointer table
    /// (or one `stage` of it).
    fn launch_moe(
        &mut self,
        e: Experts,
        ids: Addr,
        weights: Addr,
        n: usize,
        k: usize,
        stage: MoeStage,
    ) -> Result<()> {
        let (s, n_experts) = (self.s, e.n_experts);
        self.launch(Kernel::Moe {
            stage,
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

    /// Benchmark routing / recording: the router's logits come to the host, the Router picks
    /// the experts from their softmax, and its ids and weights replace the device's top-k.
    /// None in plain model routing (nothing crosses the link).
    fn route_on_host(&mut self, l: usize, n: usize) -> Result<Option<Vec<i32>>> {
        let Some(router) = self.router.as_mut() else { return Ok(None) };
        if router.is_model() && !router.is_recording() {
            return Ok(None);
        }
        let (e, k) = (self.cfg.n_experts as usize, self.cfg.n_experts_used as usize);
        let mut probs = vec![0f32; n * e]; // [n, n_experts]
        download(self.dev.as_mut(), self.s.router, &mut probs)?;
        probs.chunks_exact_mut(e).for_each(oracle::softmax);
        let (mut ids, mut w) = (vec![0usize; n * k], vec![0f32; n * k]); // [n, k]
        router.route(l, &probs, self.cfg.norm_topk_prob, &mut ids, &mut w)?;
        let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        upload(self.dev.as_mut(), self.s.ids, &ids)?;
        upload(self.dev.as_mut(), self.s.weights, &w)?;
        Ok(Some(ids))
    }

    fn topk_norm(&self) -> TopkNorm {
        if self.cfg.norm_topk_prob {
            TopkNorm::Renorm
        } else {
            TopkNorm::Softmax
        }
    }
}

impl Engine for Session<'_> {
    fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let n_vocab = self.cfg.n_vocab as usize;
        if tokens.is_empty() {
            return Err(Error::Usage("no tokens to evaluate".into()));
        }
        if self.n_past + tokens.len() > self.plan.n_ctx {
            return Err(Error::ContextOverflow {
                n_tokens: self.n_past + tokens.len(),
                n_ctx: self.plan.n_ctx,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Usage(format!("token id {bad} is not below n_vocab {n_vocab}")));
        }
        if self.state_stale {
            self.clear_recurrent_state()?;
            self.state_stale = false;
        }
        let mut logits = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.ubatch).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let first = match which {
                Logits::All => Some(0),
                Logits::Last if i + 1 == chunks.len() => Some(chunk.len() - 1),
                Logits::Last => None,
            };
            match self.cfg.arch {
                Arch::Qwen3Moe => self.qwen3moe(chunk)?,
                Arch::Qwen35Moe => self.qwen35moe(chunk)?,
            }
            self.n_past += chunk.len();
            self.rotary.stats.tokens += chunk.len() as u64;
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

    /// Attention's KV cache is read only below n_past, so dropping its tail is moving n_past
    /// back; DeltaNet's state and a routing trace cannot go back.
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
        self.threads
    }

    fn rotary_stats(&self) -> Option<Stats> {
        (!self.dev.is_host()).then(|| self.stats())
    }
}

/// The shapes the GPU kernels accept, checked once against the model.
fn check_shapes(c: &ModelConfig) -> Result<()> {
    let bad = |what: String| {
        Err(Error::Usage(format!("the device engine cannot run this model: {what}")))
    };
    if !c.head_dim.is_multiple_of(32) || c.head_dim > 256 {
        return bad(format!("head_dim {} is not a multiple of 32 up to 256", c.head_dim));
    }
    if c.n_experts > 512 || c.n_experts_used > 16 {
        return bad(format!(
            "{} experts, {} used (at most 512 and 16)",
            c.n_experts, c.n_experts_used
        ));
    }
    if !c.dim.is_multiple_of(32) || !c.expert_ffn_dim.is_multiple_of(32) {
        return bad(format!("dim {} and ffn {} must be multiples of 32", c.dim, c.expert_ffn_dim));
    }
    if let Some(s) = &c.ssm {
        // The DeltaNet kernels' limits (csrc/include/abi.h).
        if s.conv_kernel > 8 || s.state_size > 256 {
            return bad(format!(
                "DeltaNet conv kernel {} (at most 8) and state size {} (at most 256)",
                s.conv_kernel, s.state_size
            ));
        }
    }
    Ok(())
}
