//! Trace-driven replay: the rotary's cache and miss policy (`decide.rs`, the code the engine
//! runs) on a routing that does not depend on the hidden state (`--routing text`), or on the
//! ids a run recorded (`--routing trace:FILE` from `run --record-routing`: model or sticky
//! routing on a real or synthesized file, replayed as they were), with no kernels and no
//! weights. A real model's shape comes from its preset's tensor table, so the
//! paper's 35B-A3B at 6.3 GiB replays in seconds on a machine that could never run it.
//!
//! The replay walks the forward pass's sequence exactly: the prompt in micro-batches of
//! `ubatch` tokens, then one token at a time; per micro-batch and layer the router's ids, the
//! next layer's prediction, resolve (hits, demand loads, CPU experts), load-behind, then the
//! prefetch of the next layer. Counts are taken over the decode tokens, as `bench --paper`
//! takes the engine's.

use super::decide::Decider;
use super::options::{Options, Stats};
use super::plan::{self, Plan};
use super::residency::check_slots;
use super::target::{Breakdown, LayerWork, Target};
use crate::error::Result;
use crate::model::{ModelConfig, TensorRole};
use crate::routing::text::TextRouting;
use crate::routing::Trace;
use crate::synth::{self, Preset, QuantMix, SynthOptions};

/// A model's bytes as the replay and the time model need them.
#[derive(Clone, Debug)]
pub struct Shape {
    pub cfg: ModelConfig,
    /// Per layer: dense weights (attention or DeltaNet, norms, router, shared expert).
    pub dense: Vec<u64>,
    /// Per layer: one expert's gate + up + down.
    pub expert: Vec<u64>,
    /// Per layer: KV bytes read per context token (attention layers; f16 keys and values).
    pub kv_per_token: Vec<u64>,
    /// Per layer: recurrent state read and written per token (DeltaNet layers).
    pub state: Vec<u64>,
    /// Output head and final norm, read once per token.
    pub head: u64,
    /// What the VRAM plan charges for the resident tensors (each aligned, as they are placed).
    pub resident_bytes: u64,
}

impl Shape {
    /// The shape of a preset at a type mix, from its tensor table (no file).
    pub fn preset(name: &str, quant: QuantMix) -> Result<Shape> {
        let opts = SynthOptions::new(Preset::by_name(name)?, quant, 0);
        let cfg = opts.preset.config(opts.n_vocab);
        let (_, tensors) = synth::plan(&opts)?;
        let n = cfg.n_layers as usize;
        let (mut dense, mut expert, mut head) = (vec![0u64; n], vec![0u64; n], 0u64);
        let mut resident_bytes = 0u64;
        for t in &tensors {
            let ty = quant.type_for(t, cfg.n_layers);
            let rows: u64 = t.dims[1..].iter().product();
            let bytes = ty.row_bytes(t.dims[0]).unwrap_or(0) * rows.max(1);
            match (t.role, t.layer) {
                (TensorRole::Embedding, _) => {} // one row per token
                (TensorRole::Expert, Some(l)) => expert[l as usize] += bytes / cfg.n_experts,
                (_, Some(l)) => dense[l as usize] += bytes,
                (_, None) => head += bytes,
            }
            if !matches!(t.role, TensorRole::Embedding | TensorRole::Expert) {
                resident_bytes += plan::align(bytes);
            }
        }
        let kv_per_token =
            (0..cfg.n_layers)
                .map(|l| {
                    if cfg.is_full_attention(l) {
                        2 * cfg.n_kv_heads * cfg.head_dim * 2
                    } else {
                        0
                    }
                })
                .collect();
        let state = (0..cfg.n_layers)
            .map(|l| match &cfg.ssm {
                Some(s) if !cfg.is_full_attention(l) => {
                    2 * s.n_v_heads * s.state_size * s.state_size * 4
                }
                _ => 0,
            })
            .collect();
        Ok(Shape { cfg, dense, expert, kv_per_token, state, head, resident_bytes })
    }

    /// The VRAM plan for a budget on a device with `overhead` bytes of its own.
    pub fn plan(&self, n_ctx: usize, budget: Option<u64>, overhead: u64) -> Result<Plan> {
        Plan::new(&self.cfg, n_ctx, self.resident_bytes, &self.expert, overhead, budget)
    }
}

/// Routing the replay can follow without a model: text routing, or a recorded trace (of any
/// mode, `run --record-routing`), its ids replayed as they were.
#[derive(Clone, Debug)]
pub enum Routes {
    Text(TextRouting),
    /// A trace from its first token, and each layer's position in it. It predicts nothing: the
    /// engine predicts a trace's next layer with the model's own router, which a replay lacks.
    Trace {
        trace: Trace,
        at: Vec<usize>,
    },
}

impl Routes {
    pub fn trace(trace: Trace) -> Routes {
        let at = vec![0; trace.n_layers];
        Routes::Trace { trace, at }
    }

    /// The next token's experts at `layer`.
    fn next(&mut self, layer: usize) -> Vec<usize> {
        match self {
            Routes::Text(t) => t.next(layer),
            Routes::Trace { trace, at } => {
                let i = at[layer] % trace.tokens.len();
                at[layer] += 1;
                trace.tokens[i][layer].clone()
            }
        }
    }

    /// The prefetcher's view of `layer`'s next `n` tokens, where the replay has one.
    fn predict(&mut self, layer: usize, n: usize) -> Option<Vec<Vec<usize>>> {
        match self {
            Routes::Text(t) => Some(t.predict(layer, n)),
            Routes::Trace { .. } => None,
        }
    }
}

/// What a replay does: the prompt and decode lengths, and the micro-batch.
#[derive(Copy, Clone, Debug)]
pub struct Protocol {
    pub n_prompt: usize,
    pub n_decode: usize,
    pub ubatch: usize,
}

/// The counts over the decode tokens (Stats' vocabulary), and the projection when a target was
/// given.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    pub stats: Stats,
    pub demand_loads: u64,
    pub breakdown: Option<Breakdown>,
    /// The same decisions with the CPU experts before the layer's MoE kernel (the engine
    /// before the hybrid step): what the hybrid step buys.
    pub breakdown_before: Option<Breakdown>,
    pub n_slots: usize,
    pub n_experts_total: usize,
}

/// Replay `routing` on `shape` under `plan` with the rotary's `opts` (whose `costs`, a target
/// machine's, the miss policy weighs: the replay measures nothing); project each decode token
/// on `target` when given. `progress(done, total)` counts tokens.
pub fn replay(
    shape: &Shape,
    plan: &Plan,
    opts: &Options,
    routing: &mut Routes,
    p: Protocol,
    target: Option<&Target>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Replayed> {
    let c = &shape.cfg;
    check_slots(plan, c, opts)?;
    if p.ubatch == 0 {
        return Err(crate::Error::Usage("replay: a micro-batch of 0 tokens".into()));
    }
    let costs = opts.costs.ok_or_else(|| {
        crate::Error::Usage("the replay decides with a target machine's costs: none given".into())
    })?;
    if let Routes::Trace { trace, .. } = routing {
        if trace.tokens.is_empty() {
            return Err(crate::Error::Usage("routing trace: no tokens".into()));
        }
        let (l, k) = (c.n_layers as usize, c.n_experts_used as usize);
        if trace.n_layers != l
            || trace.k != k
            || trace.n_experts.is_some_and(|e| e as u64 != c.n_experts)
        {
            return Err(crate::Error::Usage(format!(
                "routing trace: {} layers, k={}, {} experts; the shape has {l} layers, k={k}, {} \
                 experts",
                trace.n_layers,
                trace.k,
                trace.n_experts.map_or("unstated".into(), |e| e.to_string()),
                c.n_experts
            )));
        }
        if let Some(&id) =
            trace.tokens.iter().flatten().flatten().find(|&&e| e as u64 >= c.n_experts)
        {
            return Err(crate::Error::Usage(format!(
                "routing trace: expert {id} of {} experts",
                c.n_experts
            )));
        }
    }
    let (n_layers, k) = (c.n_layers as usize, c.n_experts_used as usize);
    let mut d = Decider::new(
        super::cache::ExpertCache::with_ranges(
            plan.n_slots,
            super::residency::layer_ranges(plan, opts.alloc),
            opts.policy,
        ),
        k,
        opts.moe_policy,
        opts.load_behind,
        shape.expert.clone(),
    );
    let resident = plan.all_resident();
    let traced = matches!(routing, Routes::Trace { .. });
    if traced && opts.prefetch && !resident && d.prefetch_pays(costs) {
        return Err(crate::Error::Usage(
            "a routing trace gives no prediction of the next layer's experts (the engine's comes \
             from the model's router), and prefetch pays on this target: add --no-prefetch"
                .into(),
        ));
    }
    let mut out = Replayed {
        n_slots: plan.n_slots,
        n_experts_total: plan.n_experts_total,
        ..Replayed::default()
    };
    let mut breakdown = target.map(|_| Breakdown::default());
    let before = target
        .filter(|t| !t.serial && t.cpu_beside_gpu)
        .map(|t| Target { cpu_beside_gpu: false, ..t.clone() });
    let mut breakdown_before = before.as_ref().map(|_| Breakdown::default());
    let mut predicted: Vec<Option<Vec<Vec<usize>>>> = vec![None; n_layers];
    let total = p.n_prompt + p.n_decode;
    let mut pos = 0usize;
    let mut counting = false;
    while pos < total {
        let n = if pos < p.n_prompt { p.ubatch.min(p.n_prompt - pos) } else { 1 };
        if pos == p.n_prompt && !counting {
            counting = true;
            for pl in d.cache.per_layer.iter_mut() {
                *pl = Default::default();
            }
        }
        let st = &mut out.stats;
        let mut work = vec![LayerWork::default(); n_layers];
        for l in 0..n_layers {
            let sets: Vec<Vec<usize>> = (0..n).map(|_| routing.next(l)).collect();
            let xb = shape.expert[l];
            if resident {
                d.cache.per_layer[l].hits += (n * k) as u64;
                if counting {
                    st.gpu_experts += (n * k) as u64;
                    work[l].gpu_experts = (k as u64 * xb) as f64;
                }
                continue;
            }
            let predict = opts.prefetch && l + 1 < n_layers;
            let pred = if predict { routing.predict(l + 1, n) } else { None };
            if let Some(prev) = predicted[l].take() {
                for (t, guess) in prev.iter().enumerate().take(n) {
                    if counting {
                        st.prefetch_correct +=
                            guess.iter().filter(|e| sets[t].contains(e)).count() as u64;
                        st.prefetch_predicted += k as u64;
                    }
                }
            }
            let ids: Vec<i32> = sets.iter().flatten().map(|&e| e as i32).collect();
            let r = d.resolve(l, &ids, costs);
            let behind = d.behind(l, &r.cpu);
            let ahead = match &pred {
                Some(pr) => {
                    let mut want: Vec<usize> = Vec::new();
                    for &e in pr.iter().flatten() {
                        if !want.contains(&e) {
                            want.push(e);
                        }
                    }
                    predicted[l + 1] = Some(pr.clone());
                    d.ahead(l + 1, &want, costs)
                }
                None => Vec::new(),
            };
            if counting {
                st.cpu_experts += r.cpu.len() as u64;
                st.gpu_experts += (r.hits.len() + r.loads.len()) as u64;
                st.behind_loads += behind.len() as u64;
                st.prefetch_loads += ahead.len() as u64;
                out.demand_loads += r.loads.len() as u64;
                st.h2d_bytes += (r.loads.len() + behind.len()) as u64 * xb;
                if l + 1 < n_layers {
                    let bytes = ahead.len() as u64 * shape.expert[l + 1];
                    st.h2d_bytes += bytes;
                    work[l + 1].ahead = bytes as f64;
                }
                work[l].behind = (behind.len() as u64 * xb) as f64;
                work[l].gpu_experts = ((r.hits.len() + r.loads.len()) as u64 * xb) as f64;
                work[l].demand = (r.loads.len() as u64 * xb) as f64;
                work[l].cpu_experts = (r.cpu.len() as u64 * xb) as f64;
                work[l].resolved = true;
            }
        }
        if counting {
            out.stats.tokens += 1;
            if let (Some(b), Some(t)) = (breakdown.as_mut(), target) {
                for (l, w) in work.iter_mut().enumerate() {
                    let ctx = (pos + 1) as u64;
                    w.dense =
                        (shape.dense[l] + shape.kv_per_token[l] * ctx + shape.state[l]) as f64;
                }
                b.add_token(t, &work, shape.head as f64);
                if let (Some(b2), Some(t2)) = (breakdown_before.as_mut(), before.as_ref()) {
                    b2.add_token(t2, &work, shape.head as f64);
                }
            }
        }
        pos += n;
        progress(pos, total);
    }
    let t = d.cache.totals();
    (out.stats.hits, out.stats.misses) = (t.hits, t.misses);
    out.stats.n_layers = c.n_layers;
    out.breakdown = breakdown;
    out.breakdown_before = breakdown_before;
    Ok(out)
}
