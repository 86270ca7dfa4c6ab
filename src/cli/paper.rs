//! `rotary bench --paper` and `--sweep`: the CLI side (which model, which device, the cached
//! preset with its progress bar, printing). The protocol and the chart live in
//! src/bench.rs.

use std::path::{Path, PathBuf};

use rotary::bench::{self, PaperResult, SweepPoint};
use rotary::model::weights::Weights;
use rotary::rotary::cache::{Allocation, Policy};
use rotary::rotary::BackendKind;
use rotary::routing::RoutingMode;
use rotary::synth::{self, Preset, QuantMix, SynthOptions};
use rotary::units::{self, human_bytes};
use rotary::{Engine, Session};
use rotary::{Error, Result};

use super::session::{backend_kind, cache_alloc, cache_policy, open_stream, router};
use super::{bytes_bar, ModelArgs};

pub struct PaperArgs {
    pub preset: Option<String>,
    pub quant: String,
    pub sweep: Option<String>,
    pub plot: PathBuf,
    pub n_decode: Option<usize>,
    pub json: bool,
}

/// The preset's GGUF in the cache folder, synthesized once (progress bar).
fn cached_preset(name: &str, quant: &str) -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("rotary");
    std::fs::create_dir_all(&base).map_err(|e| Error::Io { path: base.clone(), source: e })?;
    let path = base.join(format!("{name}-{quant}-seed0.gguf"));
    if path.exists() {
        return Ok(path);
    }
    let opts = SynthOptions::new(Preset::by_name(name)?, QuantMix::by_name(quant)?, 0);
    let total = synth::plan(&opts)?.0.layout()?.file_bytes;
    let tmp = path.with_extension("gguf.partial");
    let bar =
        bytes_bar(total, &format!("synth {name} {quant} (once, cached in {})", base.display()));
    synth::write(&opts, &tmp, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    std::fs::rename(&tmp, &path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    Ok(path)
}

/// One configuration of a run: budget, cache policy and allocation, routing.
#[derive(Clone)]
pub struct Config {
    pub label: String,
    pub budget: Option<u64>,
    /// Expert residency instead of a byte budget (scaled runs, vram=N% sweeps).
    pub residency: Option<f64>,
    pub policy: Policy,
    pub alloc: Allocation,
    pub routing: String,
}

/// `rotary bench --paper`: model, device, protocol, each configuration, the report. Over a
/// screen: the command's steps in order, each a call.
pub fn cmd_paper(args: &ModelArgs, p: &PaperArgs) -> Result<()> {
    let gpu = rotary::backend::cuda::device_available(args.device);
    // No GPU, no file, no backend asked for: the paper's model, replayed in seconds.
    if !gpu && args.backend.is_none() && args.model.is_none() {
        return super::paper_replay::cmd(args, p);
    }
    let backend = match &args.backend {
        Some(b) => backend_kind(b)?,
        None if gpu => BackendKind::Cuda,
        None => BackendKind::Sim,
    };
    let host = !backend.is_device();
    if host && p.sweep.is_some() {
        return Err(Error::Usage(
            "--sweep needs --backend cuda or sim (a VRAM cache to sweep)".into(),
        ));
    }
    let mut notes = Vec::new();
    let path = match &args.model {
        Some(m) => m.clone(),
        None => {
            let preset = p.preset.clone().unwrap_or_else(|| {
                if backend == BackendKind::Cuda {
                    "qwen3-30b-a3b".into()
                } else {
                    "small".into()
                }
            });
            if !matches!(preset.as_str(), "qwen3-30b-a3b" | "qwen35-35b-a3b") {
                notes.push(format!("scaled preset '{preset}' (not a real model's shape)"));
            }
            cached_preset(&preset, &p.quant)?
        }
    };
    if host {
        notes.push("CPU engine: every weight in host memory, no VRAM budget".to_string());
    }
    if backend == BackendKind::Sim {
        notes.push(format!(
            "simulated GPU: CPU kernels, {} GB/s link; tok/s is not a GPU figure",
            args.rotary.sim_link_gbps
        ));
    }
    let file = super::open_model_file(args, Some(&path))?;
    if args.routing.is_none() && file.is_synthesized() {
        notes.push(
            "routing text by default on a synthesized file (random weights route degenerately; \
             --routing model for the router's own choice)"
                .to_string(),
        );
    }
    let weights = Weights::load(&file)?;
    let tok = rotary::run::tokenizer_for(&file)?;
    let prompt = tok.encode(bench::PAPER_PROMPT, true)?;
    let n_decode = p.n_decode.unwrap_or(bench::PAPER_DECODE);
    let n_ctx = (prompt.len() + n_decode + 1).div_ceil(256) * 256;
    let routing = args
        .routing
        .clone()
        .unwrap_or_else(|| if file.is_synthesized() { "text" } else { "model" }.to_string());
    let base = base_config(args, backend, routing, &mut notes)?;
    let model = path.display().to_string();
    let configs = match &p.sweep {
        None => vec![base.clone()],
        Some(spec) => sweep_configs(spec, &base)?,
    };
    let mut results = Vec::new();
    let real_shape = match file.synth_preset() {
        None => true,
        Some(p) => matches!(p.as_str(), "qwen3-30b-a3b" | "qwen35-35b-a3b"),
    };
    if !real_shape && !host {
        notes.push("no laptop projection: not a real model's shape".into());
    }
    let job = Job { args, w: &weights, backend, n_ctx, prompt: &prompt, n_decode, real_shape };
    for c in &configs {
        let mut res = if host { run_host(&job, c)? } else { run_config(&job, c)? };
        res.model = model.clone();
        res.note = notes.join("; ");
        if !p.json {
            print_result(c, &res);
        }
        results.push((c.clone(), res));
    }
    if p.json {
        print_json(&results);
    }
    if let Some(spec) = &p.sweep {
        let title = format!(
            "rotary: decode and hit rate, {} ({}, routing {})",
            short(&model),
            backend.name(),
            base.routing
        );
        sweep_chart(spec, &results, &title, &p.plot)?;
    }
    Ok(())
}

fn short(path: &str) -> &str {
    Path::new(path).file_name().and_then(|f| f.to_str()).unwrap_or(path)
}

/// The configuration every sweep point starts from. The budget: the flag; on a GPU 8 GiB; on
/// the simulator the 30B's expert residency at 8 GiB applied to this model (so the cache is as
/// tight as on the paper's laptop).
fn base_config(
    args: &ModelArgs,
    backend: BackendKind,
    routing: String,
    notes: &mut Vec<String>,
) -> Result<Config> {
    let r = &args.rotary;
    let user_budget = r.vram_budget.as_deref().map(units::parse_size).transpose()?;
    let mut base = Config {
        label: String::new(),
        budget: user_budget.or(if backend == BackendKind::Cuda {
            Some(bench::PAPER_BUDGET)
        } else {
            None
        }),
        residency: None,
        policy: cache_policy(&r.cache_policy)?,
        alloc: cache_alloc(&r.cache_alloc)?,
        routing,
    };
    if base.budget.is_none() {
        let ctx = rotary::inspect::CUDA_CONTEXT_BYTES_ESTIMATE;
        let res =
            bench::residency("qwen3-30b-a3b", QuantMix::Q4KM, 4096, bench::PAPER_BUDGET, ctx)?;
        base.residency = Some(res);
        notes.push(format!(
            "budget scaled: the 30B-A3B's expert residency at 8 GiB ({:.1}%)",
            100.0 * res
        ));
    }
    Ok(base)
}

/// One result as JSON, or a sweep's as {"sweep": [...]}.
fn print_json(results: &[(Config, PaperResult)]) {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|(c, r)| {
            let mut v = r.to_json(c.budget);
            v["label"] = serde_json::json!(c.label);
            v
        })
        .collect();
    let out = if rows.len() == 1 { rows[0].clone() } else { serde_json::json!({ "sweep": rows }) };
    println!("{out}");
}

/// A sweep's SVG chart (and a PNG beside it where rsvg-convert is installed).
fn sweep_chart(
    spec: &str,
    results: &[(Config, PaperResult)],
    title: &str,
    plot: &Path,
) -> Result<()> {
    let (what, _) = spec.split_once('=').unwrap_or((spec, ""));
    let points: Vec<SweepPoint> = results
        .iter()
        .enumerate()
        .map(|(i, (c, r))| SweepPoint {
            label: c.label.clone(),
            x: match (what, c.budget, c.residency) {
                ("vram", Some(b), _) => b as f64 / (1u64 << 30) as f64,
                ("vram", None, Some(f)) => 100.0 * f,
                _ => i as f64,
            },
            decode_tok_s: r.decode_tok_s,
            hit_rate: r.stats.as_ref().map_or(0.0, |s| s.hit_rate()),
        })
        .collect();
    let x_label = match what {
        "vram" if results[0].0.budget.is_some() => "VRAM budget (GiB)",
        "vram" => "expert cache residency (% of experts)",
        "policy" => "cache policy",
        "alloc" => "cache allocation",
        "cache" => "cache policy / allocation",
        _ => "routing",
    };
    let svg = bench::sweep_svg(title, x_label, &points);
    std::fs::write(plot, svg).map_err(|e| Error::Io { path: plot.to_path_buf(), source: e })?;
    eprintln!("chart: {}", plot.display());
    // The PNG beside it, rendered by librsvg's rsvg-convert when it is installed.
    let png = plot.with_extension("png");
    match std::process::Command::new("rsvg-convert").arg(plot).arg("-o").arg(&png).status() {
        Ok(st) if st.success() => eprintln!("chart: {}", png.display()),
        _ => eprintln!("(no PNG: install rsvg-convert, e.g. apt-get install librsvg2-bin)"),
    }
    Ok(())
}

/// `vram=4,5,6.3,8,12GiB` (a unit on the last value applies to all), `vram=10%,25%`,
/// `policy=lru,lfru,layer`, `alloc=global,layer`, `cache=lru/global,layer/layer` (both),
/// `routing=model,text,sticky:0.45`.
pub fn sweep_configs(spec: &str, base: &Config) -> Result<Vec<Config>> {
    let bad = || {
        Error::Usage(format!(
            "--sweep {spec}: want vram=4,6.3,8GiB, vram=10%,25%, policy=lru,lfru,layer, \
             alloc=global,layer, cache=lru/global,layer/layer or routing=model,text,sticky:0.45"
        ))
    };
    let (what, list) = spec.split_once('=').ok_or_else(bad)?;
    let items: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() || items.len() > 32 {
        return Err(bad());
    }
    let mut out = Vec::new();
    match what {
        "vram" => {
            let unit: String = items
                .last()
                .expect("non-empty")
                .chars()
                .skip_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            for it in &items {
                let mut c = base.clone();
                c.label = it.to_string();
                if let Some(pct) = it.strip_suffix('%') {
                    let f: f64 = pct.parse().map_err(|_| bad())?;
                    if !(0.0..=100.0).contains(&f) {
                        return Err(bad());
                    }
                    (c.budget, c.residency) = (None, Some(f / 100.0));
                } else {
                    let with_unit = if it.chars().any(|ch| ch.is_ascii_alphabetic()) {
                        it.to_string()
                    } else {
                        format!("{it}{unit}")
                    };
                    (c.budget, c.residency) = (Some(units::parse_size(&with_unit)?), None);
                    c.label = with_unit;
                }
                out.push(c);
            }
        }
        "policy" | "alloc" | "cache" => {
            for it in &items {
                let mut c = base.clone();
                match what {
                    "policy" => c.policy = cache_policy(it)?,
                    "alloc" => c.alloc = cache_alloc(it)?,
                    _ => {
                        let (p, a) = it.split_once('/').ok_or_else(bad)?;
                        (c.policy, c.alloc) = (cache_policy(p)?, cache_alloc(a)?);
                    }
                }
                c.label = it.to_string();
                out.push(c);
            }
        }
        "routing" => {
            for it in &items {
                RoutingMode::parse(it)?;
                let mut c = base.clone();
                c.routing = it.to_string();
                c.label = it.to_string();
                out.push(c);
            }
        }
        _ => return Err(bad()),
    }
    Ok(out)
}

/// What every configuration of one `bench --paper` shares.
struct Job<'a> {
    args: &'a ModelArgs,
    w: &'a Weights<'a>,
    backend: BackendKind,
    n_ctx: usize,
    prompt: &'a [u32],
    n_decode: usize,
    /// A real model (a file that is not synthesized, or a real shape's preset).
    real_shape: bool,
}

fn run_config(j: &Job, c: &Config) -> Result<PaperResult> {
    let Job { args, w, backend, n_ctx, prompt, n_decode, .. } = *j;
    // A residency becomes a byte budget through the plan of this model.
    let budget = match (c.budget, c.residency) {
        (Some(b), _) => Some(b),
        (None, Some(f)) => {
            let probe =
                open_stream(args, w, BackendKind::Sim, n_ctx, None, Some((c.policy, c.alloc)))?;
            Some(probe.plan.fixed_bytes() + probe.plan.cache_bytes_for(f))
        }
        (None, None) => None,
    };
    let mut s = open_stream(args, w, backend, n_ctx, budget, Some((c.policy, c.alloc)))?;
    if let Some(r) = router(&c.routing, &w.cfg, None)? {
        s.set_router(r);
    }
    eprintln!(
        "{}: {} | {} expert slots of {} ({:.1}%)",
        c.label_or("run"),
        s.device(),
        s.plan.n_slots,
        s.plan.n_experts_total,
        100.0 * s.plan.n_slots as f64 / s.plan.n_experts_total.max(1) as f64
    );
    let mut r = paper_run_with_bar(&mut s, prompt, n_decode)?;
    r.device = s.device();
    r.routing = c.routing.clone();
    r.cache = format!("{}, {} allocation", c.policy.name(), c.alloc.name());
    r.pinned_bytes = s.pinned_bytes();
    // A laptop figure only for a real model's shape: a scaled preset's would read as ours.
    if let Some(st) = r.stats.as_ref().filter(|_| j.real_shape) {
        let tokens = st.tokens.max(1) as f64;
        let cpu_bytes = st.cpu_experts as f64 * s.expert_bytes_avg() / tokens;
        r.projection = Some(bench::project(
            s.read_bytes_per_token() as f64,
            st.h2d_bytes_per_token() + cpu_bytes,
        ));
    }
    Ok(r)
}

/// The paper protocol with a progress bar on stderr (tokens, tok/s, hit rate, ETA).
fn paper_run_with_bar(s: &mut Session, prompt: &[u32], n_decode: usize) -> Result<PaperResult> {
    let bar = super::count_bar(n_decode as u64, "decode");
    let mut tick = |done: usize, hit: Option<f64>| {
        bar.set_position(done as u64);
        if let Some(h) = hit {
            bar.set_message(format!("decode, hit {:.1}%", 100.0 * h));
        }
    };
    let r = bench::paper_run(s, prompt, n_decode, &mut tick);
    bar.finish_and_clear();
    r
}

/// The protocol on the CPU engine (no VRAM, no expert stats).
fn run_host(j: &Job, c: &Config) -> Result<PaperResult> {
    let Job { args, w, backend, n_ctx, prompt, n_decode, .. } = *j;
    let mut s = open_stream(args, w, backend, n_ctx, None, None)?;
    if let Some(r) = router(&c.routing, &w.cfg, None)? {
        s.set_router(r);
    }
    let mut r = paper_run_with_bar(&mut s, prompt, n_decode)?;
    r.device = format!("CPU ({} threads)", s.threads());
    r.routing = c.routing.clone();
    Ok(r)
}

impl Config {
    fn label_or<'a>(&'a self, d: &'a str) -> &'a str {
        if self.label.is_empty() {
            d
        } else {
            &self.label
        }
    }
}

fn print_result(c: &Config, r: &PaperResult) {
    println!(
        "== bench --paper{} ==",
        if c.label.is_empty() { String::new() } else { format!(" {}", c.label) }
    );
    println!("model      {}", r.model);
    println!("device     {} ({})", r.device, r.backend);
    if !r.note.is_empty() {
        println!("note       {}", r.note);
    }
    println!("routing    {}", r.routing);
    if !r.cache.is_empty() {
        println!("cache      {}", r.cache);
    }
    println!("prefill    {} tokens, {:.1} tok/s", r.n_prompt, r.prefill_tok_s);
    println!(
        "decode     {} tokens, {:.2} tok/s (latency p50 {:.1} ms, p99 {:.1} ms)",
        r.n_decode, r.decode_tok_s, r.latency_ms_p50, r.latency_ms_p99
    );
    if let Some(s) = &r.stats {
        println!("experts    {s}");
    }
    println!(
        "memory     peak RSS {}, pinned {}",
        r.peak_rss_bytes.map_or("?".into(), human_bytes),
        human_bytes(r.pinned_bytes)
    );
    if let Some(p) = &r.projection {
        println!(
            "projection for {} on laptop-4060 (assumptions: 256 GB/s VRAM at 0.6 efficiency, \
             11.8 GB/s link; a projection, not a measurement): {:.1} tok/s serial, {:.1} tok/s \
             with full overlap",
            short(&r.model),
            p.serial_tok_s,
            p.overlap_tok_s
        );
        println!("           {}", p.formula);
    }
}
