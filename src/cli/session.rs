//! Flags into typed options, and the session they describe: the model, its weights and
//! tokenizer, the device, the rotary's configuration (what run, logits, bench, serve and chat
//! start from). Every flag name the library's options answer to appears here, not in the
//! library.

use std::path::Path;

use rotary::forward::{Engine, Session};
use rotary::model::weights::Weights;
use rotary::rotary::cache::{Allocation, Policy};
use rotary::rotary::target::Target;
use rotary::rotary::{open_device, BackendKind, MoePolicy, Options, PinMode};
use rotary::tokenizer::Tokenizer;
use rotary::{units, Error, Result};

use super::{bytes_bar, ModelArgs};

fn usage<T>(flag: &str, value: &str, want: &str) -> Result<T> {
    Err(Error::Usage(format!("--{flag} {value}: want {want}")))
}

/// `--backend`.
pub fn backend_kind(s: &str) -> Result<BackendKind> {
    match s {
        "cpu" => Ok(BackendKind::Cpu),
        "cpu-ref" => Ok(BackendKind::CpuRef),
        "sim" => Ok(BackendKind::Sim),
        "cuda" => Ok(BackendKind::Cuda),
        _ => usage("backend", s, "cpu, cpu-ref, sim or cuda"),
    }
}

/// `--cache-policy`.
pub fn cache_policy(s: &str) -> Result<Policy> {
    match s {
        "lru" => Ok(Policy::Lru),
        "lfru" => Ok(Policy::Lfru),
        "layer" | "layer-aware" => Ok(Policy::LayerAware),
        _ => usage("cache-policy", s, "lru, lfru or layer"),
    }
}

/// `--cache-alloc`.
pub fn cache_alloc(s: &str) -> Result<Allocation> {
    match s {
        "global" => Ok(Allocation::Global),
        "layer" | "per-layer" => Ok(Allocation::PerLayer),
        _ => usage("cache-alloc", s, "global or layer"),
    }
}

/// `--moe-policy`.
pub fn moe_policy(s: &str) -> Result<MoePolicy> {
    match s {
        "gpu" => Ok(MoePolicy::Gpu),
        "cpu" => Ok(MoePolicy::Cpu),
        "auto" => Ok(MoePolicy::Auto),
        _ => usage("moe-policy", s, "gpu, cpu or auto"),
    }
}

fn pin_mode(s: &str) -> Result<PinMode> {
    match s {
        "all" => Ok(PinMode::All),
        "ring" => Ok(PinMode::Ring),
        "auto" => Ok(PinMode::Auto),
        _ => usage("pin", s, "all, ring or auto"),
    }
}

impl ModelArgs {
    /// `--backend`, default cpu.
    pub fn backend(&self) -> Result<BackendKind> {
        backend_kind(self.backend.as_deref().unwrap_or("cpu"))
    }
}

/// The model, its weights, tokenizer and a session: what run and logits start from.
pub fn with_session<T>(
    args: &ModelArgs,
    record: Option<&Path>,
    f: impl FnOnce(&mut dyn Engine, &Tokenizer) -> Result<T>,
) -> Result<T> {
    let kind = args.backend()?;
    if kind == BackendKind::Cuda && !rotary::backend::cuda::COMPILED {
        return Err(Error::CudaNotCompiled);
    }
    let budget = args.rotary.vram_budget.as_deref().map(units::parse_size).transpose()?;
    if budget.is_some() && !kind.is_device() {
        return Err(Error::Usage(format!(
            "--vram-budget needs --backend cuda or sim (not {})",
            kind.name()
        )));
    }
    if args.model.is_none() {
        eprintln!("no model given (-m): using the embedded tiny model with random weights");
    }
    let file = super::open_model_file(args, None)?;
    let weights = Weights::load(&file)?;
    let tok = rotary::run::tokenizer_for(&file)?;
    let n_ctx = args.ctx.unwrap_or(weights.cfg.context_length.min(4096) as usize);
    let router = router(args.routing.as_deref().unwrap_or("model"), &weights.cfg, record)?;
    let mut s = open_stream(args, &weights, kind, n_ctx, budget, None)?;
    if kind.is_device() {
        eprint!("{}: {}\n{}", kind.name(), s.device(), s.plan);
    }
    if let Some(router) = router {
        s.set_router(router);
    }
    let out = f(&mut s, &tok)?;
    if kind.is_device() {
        eprintln!("{}", s.stats());
    }
    Ok(out)
}

/// A session on `kind` under `budget`, configured by the rotary flags; `cache` overrides
/// --cache-policy and --cache-alloc (sweeps).
pub fn open_stream<'w>(
    args: &ModelArgs,
    w: &'w Weights<'w>,
    kind: BackendKind,
    n_ctx: usize,
    budget: Option<u64>,
    cache: Option<(Policy, Allocation)>,
) -> Result<Session<'w>> {
    let r = &args.rotary;
    if !(r.sim_link_gbps > 0.0 && r.sim_link_gbps.is_finite()) {
        return usage("sim-link-gbps", &r.sim_link_gbps.to_string(), "a positive number");
    }
    let (policy, alloc) = match cache {
        Some(c) => c,
        None => (cache_policy(&r.cache_policy)?, cache_alloc(&r.cache_alloc)?),
    };
    let opts = Options {
        policy,
        alloc,
        prefetch: !r.no_prefetch,
        load_behind: !r.no_load_behind,
        moe_policy: moe_policy(&r.moe_policy)?,
        pin: pin_mode(&r.pin)?,
        link_gbps: r.sim_link_gbps,
        threads: args.threads,
        max_slots: r.cache_slots,
        costs: r.target.as_deref().map(Target::by_name).transpose()?.map(|t| t.costs()),
    };
    let dev = open_device(kind, args.device, budget, r.sim_link_gbps, args.threads)?;
    let bar = bytes_bar(0, "place weights");
    let s = Session::new(w, dev, n_ctx, opts, kind.name(), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(|e| match e {
        Error::TooFewSlots { .. } => Error::Usage(format!(
            "{e}: raise --vram-budget, use --cache-alloc global, or --moe-policy cpu to compute \
             missed experts on the CPU"
        )),
        e => e,
    })?;
    bar.finish_and_clear();
    Ok(s)
}

/// The router for a --routing mode (and a recorder), unless it is plain model routing.
pub fn router(
    routing: &str,
    cfg: &rotary::model::ModelConfig,
    record: Option<&Path>,
) -> Result<Option<rotary::routing::Router>> {
    let mode = rotary::routing::RoutingMode::parse(routing)
        .map_err(|e| Error::Usage(format!("--routing: {e}")))?;
    if matches!(mode, rotary::routing::RoutingMode::Model) && record.is_none() {
        return Ok(None);
    }
    let (l, e, k) = (cfg.n_layers as usize, cfg.n_experts as usize, cfg.n_experts_used as usize);
    let mut r = rotary::routing::Router::new(mode, l, e, k, 0x5eed)?;
    if let Some(path) = record {
        r.record_to(rotary::routing::Recorder::create(path, l, e, k)?);
    }
    Ok(Some(r))
}
