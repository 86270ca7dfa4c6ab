//! `rotary bench --paper` without a GPU: the paper's model and budget, replayed. The rotary's
//! cache and miss policy (the engine's own code, src/rotary/decide.rs) run on text routing for
//! the real shape's tensor table, with no kernels, and each decode token is projected on a
//! target machine (src/rotary/target.rs). Seconds, not hours; labelled a projection.

use rotary::bench::{self, SweepPoint};
use rotary::rotary::replay::{self, Protocol, Replayed, Routes, Shape};
use rotary::rotary::target::Target;
use rotary::rotary::Options;
use rotary::routing::text::TextRouting;
use rotary::routing::{RoutingMode, Trace};
use rotary::synth::QuantMix;
use rotary::units::{self, human_bytes};
use rotary::{Error, Result};

use super::paper::{sweep_configs, Config, PaperArgs};
use super::session::{cache_alloc, cache_policy, moe_policy};
use super::ModelArgs;

/// The paper's VRAM use (~6.3 GB on the 8 GB laptop): the replay's default budget.
pub const PAPER_REPLAY_BUDGET: u64 = 6_764_573_491; // 6.3 GiB
/// Presets with a real model's shape: the only ones a laptop figure is printed for.
const REAL_SHAPES: [(&str, &str); 2] =
    [("qwen3-30b-a3b", "Qwen3-30B-A3B"), ("qwen35-35b-a3b", "Qwen3.5/3.6-35B-A3B")];
/// The published figures on the same laptop (anchors.md §1).
const SEED_TOK_S: f64 = 21.06;
const FREETOKEN_TOK_S: f64 = 39.0;

/// One configuration's replay.
struct Row {
    c: Config,
    budget: u64,
    r: Replayed,
}

pub fn cmd(args: &ModelArgs, p: &PaperArgs) -> Result<()> {
    let preset = p.preset.clone().unwrap_or_else(|| "qwen35-35b-a3b".into());
    let real = REAL_SHAPES.iter().find(|(n, _)| *n == preset).map(|(_, m)| *m);
    let quant = QuantMix::by_name(&p.quant)?;
    let target = Target::by_name(args.rotary.target.as_deref().unwrap_or("laptop-4060"))?;
    let routing = args.routing.clone().unwrap_or_else(|| "text".into());
    let mode = RoutingMode::parse(&routing)?;
    let shape = Shape::preset(&preset, quant)?;
    let cfg = &shape.cfg;
    let (l, e, k) = (cfg.n_layers as usize, cfg.n_experts as usize, cfg.n_experts_used as usize);
    let n_decode = p.n_decode.unwrap_or(bench::PAPER_DECODE);
    if n_decode == 0 {
        return Err(Error::Usage("-n 0: the replay projects decode tokens; want 1 or more".into()));
    }
    let (routes, n_prompt) = match &mode {
        // A synthesized file's byte-level vocabulary makes one token per byte of the prompt.
        RoutingMode::Text(seed) => {
            // Fits its exponent once; each run gets a copy.
            (Routes::Text(TextRouting::new(l, e, k, *seed)), bench::PAPER_PROMPT.len())
        }
        // A recorded run: its last -n tokens decode, all before them are the prompt.
        RoutingMode::Trace(path) => {
            let trace = Trace::load(path)?;
            let n = trace.tokens.len();
            if n <= n_decode {
                return Err(Error::Usage(format!(
                    "routing trace {}: {n} tokens; -n {n_decode} needs a prompt before them \
                     (record at least {} tokens, or lower -n)",
                    path.display(),
                    n_decode + 1
                )));
            }
            (Routes::trace(trace), n - n_decode)
        }
        _ => {
            return Err(Error::Usage(format!(
                "--routing {routing}: the replay needs routing that does not depend on the hidden \
                 state (text, text:SEED, or trace:FILE recorded by `run --record-routing`); run \
                 another mode on the simulator (--backend sim -m FILE)"
            )))
        }
    };
    let n_ctx = (n_prompt + n_decode + 1).div_ceil(256) * 256;
    let r = &args.rotary;
    let base = Config {
        label: String::new(),
        budget: Some(match &r.vram_budget {
            Some(b) => units::parse_size(b)?,
            None => PAPER_REPLAY_BUDGET,
        }),
        residency: None,
        policy: cache_policy(&r.cache_policy)?,
        alloc: cache_alloc(&r.cache_alloc)?,
        routing: mode.label(),
    };
    let configs = match &p.sweep {
        None => vec![base],
        Some(spec) if spec.starts_with("routing=") => {
            return Err(Error::Usage("the replay sweeps vram, policy, alloc or cache".into()))
        }
        Some(spec) => sweep_configs(spec, &base)?,
    };
    let overhead = rotary::inspect::CUDA_CONTEXT_BYTES_ESTIMATE;
    let mut rows = Vec::new();
    for c in configs {
        let budget = match (c.budget, c.residency) {
            (_, Some(f)) => {
                let probe = shape.plan(n_ctx, None, overhead)?;
                probe.fixed_bytes() + probe.cache_bytes_for(f)
            }
            (Some(b), None) => b,
            (None, None) => unreachable!("the replay always has a budget"),
        };
        let mut plan = shape.plan(n_ctx, Some(budget), overhead)?;
        if let Some(max) = r.cache_slots {
            plan.fit_cache(plan.cache_room(), max);
        }
        let opts = Options {
            policy: c.policy,
            alloc: c.alloc,
            prefetch: !r.no_prefetch,
            load_behind: !r.no_load_behind,
            moe_policy: moe_policy(&r.moe_policy)?,
            costs: Some(target.costs()),
            ..Options::default()
        };
        let mut routing = routes.clone();
        let protocol = Protocol { n_prompt, n_decode, ubatch: rotary::rotary::plan::UBATCH };
        let bar = super::count_bar((n_prompt + n_decode) as u64, "replay");
        // A laptop figure only for a real model's shape; a machine given by its speeds (the
        // simulator's, to validate the model) projects any shape.
        let proj = (real.is_some() || target.is_custom()).then_some(&target);
        let mut tick = |done: usize, _: usize| bar.set_position(done as u64);
        let rep = replay::replay(&shape, &plan, &opts, &mut routing, protocol, proj, &mut tick)?;
        bar.finish_and_clear();
        rows.push(Row { c, budget, r: rep });
    }
    let routed_per_token = shape.cfg.n_layers * shape.cfg.n_experts_used;
    let what = Heading {
        preset: &preset,
        real,
        quant: &p.quant,
        target: &target,
        n_prompt,
        n_decode,
        routed_per_token,
        flags: rotary_flags(args),
    };
    if p.json {
        print_json(&what, &rows);
    } else {
        print_rows(&what, &rows);
    }
    if let Some(spec) = &p.sweep {
        chart(spec, &what, &rows, &p.plot)?;
    }
    Ok(())
}

struct Heading<'a> {
    preset: &'a str,
    real: Option<&'a str>,
    quant: &'a str,
    target: &'a Target,
    n_prompt: usize,
    n_decode: usize,
    /// Layers × k.
    routed_per_token: u64,
    /// The rotary flags the run was given, for the reproduce line.
    flags: String,
}

impl Heading<'_> {
    fn model(&self) -> String {
        match self.real {
            Some(m) => format!("{} shape ({}) {}", m, self.preset, self.quant),
            None => {
                format!("scaled preset {} {} (not a real model's shape)", self.preset, self.quant)
            }
        }
    }

    fn reproduce(&self, row: &Row, flags: &str) -> String {
        format!(
            "rotary bench --paper --backend cuda --preset {} --quant {} --vram-budget {} \
             --routing {} --cache-policy {} --cache-alloc {} --target {} -n {}{flags}",
            self.preset,
            self.quant,
            row.budget,
            row.c.routing,
            row.c.policy.name(),
            row.c.alloc.name(),
            self.target.name,
            self.n_decode
        )
    }
}

/// The rotary flags beyond budget, cache and target, as given (for the reproduce line).
fn rotary_flags(args: &ModelArgs) -> String {
    let r = &args.rotary;
    let mut f = format!(" --moe-policy {}", r.moe_policy);
    if r.no_prefetch {
        f += " --no-prefetch";
    }
    if r.no_load_behind {
        f += " --no-load-behind";
    }
    if let Some(n) = r.cache_slots {
        f += &format!(" --cache-slots {n}");
    }
    f
}

/// Per decode token: experts on the CPU, and expert bytes over the link.
fn per_token(r: &Replayed) -> (f64, f64) {
    let t = r.stats.tokens.max(1) as f64;
    (r.stats.cpu_experts as f64 / t, r.stats.h2d_bytes as f64 / t)
}

fn print_rows(h: &Heading, rows: &[Row]) {
    println!(
        "rotary bench --paper: no GPU here, so this replays the rotary's expert cache and miss \
         policy (the engine's code, no kernels) on {}{}",
        h.model(),
        if h.real.is_some() {
            ", projected for a target machine: a projection, not a measurement"
        } else {
            ""
        }
    );
    for row in rows {
        let (r, s) = (&row.r, &row.r.stats);
        let (cpu, link) = per_token(r);
        if !row.c.label.is_empty() {
            println!("== {} ==", row.c.label);
        }
        println!(
            "model      {}; routing {}; {}-token prompt + {} decode tokens",
            h.model(),
            row.c.routing,
            h.n_prompt,
            h.n_decode
        );
        println!(
            "budget     {} VRAM ({} CUDA context assumed): {} expert slots of {} ({:.1}%), \
             cache {}, {} allocation",
            human_bytes(row.budget),
            human_bytes(rotary::inspect::CUDA_CONTEXT_BYTES_ESTIMATE),
            r.n_slots,
            r.n_experts_total,
            100.0 * r.n_slots as f64 / r.n_experts_total.max(1) as f64,
            row.c.policy.name(),
            row.c.alloc.name()
        );
        let cpu_beats_link = h.target.host_gbps > h.target.link_gbps;
        let prefetch = match s.prefetch_recall() {
            _ if s.prefetch_loads == 0 && s.prefetch_predicted > 0 && cpu_beats_link => {
                "no prefetch: on this target the CPU computes a missed expert faster than the \
                 link copies it"
                    .to_string()
            }
            Some(x) => format!("prefetch recall {:.1}%", 100.0 * x),
            None => "no prefetch".to_string(),
        };
        println!("hit rate   {:.1}% ({prefetch})", 100.0 * s.hit_rate());
        println!("CPU        {cpu:.2} experts per token (of {} routed)", h.routed_per_token);
        println!(
            "link       {:.1} MB of experts per token ({} demand loads, {} prefetched, {} loaded behind)",
            link / 1e6,
            r.demand_loads,
            s.prefetch_loads,
            s.behind_loads
        );
        match &r.breakdown {
            Some(b) => {
                println!(
                    "projected  {:.1} tok/s decode: projection for {} on {} (assumptions \
                     below; a projection, not a measurement); per token T_gpu {:.2} ms, T_cpu \
                     {:.2} ms, T_sync {:.2} ms, waiting for the link {:.2} ms (link busy {:.2} ms)",
                    b.tok_s(),
                    h.real.unwrap_or(h.preset),
                    &h.target.name,
                    b.ms(b.gpu_s),
                    b.ms(b.cpu_s),
                    b.ms(b.sync_s),
                    b.ms(b.link_wait_s),
                    b.ms(b.link_busy_s)
                );
                if let Some(b2) = &r.breakdown_before {
                    println!(
                        "           {:.1} tok/s with the CPU experts before the MoE kernel instead \
                         of beside the GPU's (the engine before its hybrid step)",
                        b2.tok_s()
                    );
                }
                if h.target.name == "laptop-4060" {
                    println!(
                        "           published on the same laptop: the seed {SEED_TOK_S} tok/s, \
                         FreeToken ~{FREETOKEN_TOK_S} tok/s"
                    );
                }
            }
            None => println!("projected  none: a scaled preset has no laptop figure"),
        }
        println!("on a GPU   {}", h.reproduce(row, &h.flags));
    }
    if rows.iter().any(|r| r.r.breakdown.is_some()) {
        println!("assumptions ({}, {}):", h.target.name, h.target.what);
        for s in &h.target.sources {
            println!("  - {s}");
        }
        println!("  - model: {}", MODEL_LINE);
    }
}

const MODEL_LINE: &str = "per layer: dense, then the hybrid step: the GPU experts (hits, and \
    loads once copied) beside the CPU experts, the round trip added to the CPU side; the link \
    serves prefetches and demand loads in order, the loads behind CPU experts only in its idle \
    time (a demand load waits at most one 512 KiB piece); per token + the output head \
    (src/rotary/target.rs)";

fn print_json(h: &Heading, rows: &[Row]) {
    let out: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let (r, s) = (&row.r, &row.r.stats);
            let (cpu, link) = per_token(r);
            let projection = r.breakdown.as_ref().map(|b| {
                serde_json::json!({
                    "kind": "projected",
                    "target": h.target.name,
                    "decode_tok_s": b.tok_s(),
                    "decode_tok_s_cpu_before_gpu": r.breakdown_before.map(|b| b.tok_s()),
                    "gpu_ms": b.ms(b.gpu_s),
                    "cpu_ms": b.ms(b.cpu_s),
                    "sync_ms": b.ms(b.sync_s),
                    "link_wait_ms": b.ms(b.link_wait_s),
                    "link_busy_ms": b.ms(b.link_busy_s),
                    "assumptions": h.target.sources,
                    "model": MODEL_LINE,
                })
            });
            serde_json::json!({
                "kind": "replay",
                "label": row.c.label,
                "model": h.model(),
                "preset": h.preset,
                "quant": h.quant,
                "routing": row.c.routing,
                "cache": format!("{}, {} allocation", row.c.policy.name(), row.c.alloc.name()),
                "vram_budget_bytes": row.budget,
                "n_prompt": h.n_prompt,
                "n_decode": h.n_decode,
                "n_slots": r.n_slots,
                "n_experts_total": r.n_experts_total,
                "hit_rate": s.hit_rate(),
                "prefetch_recall": s.prefetch_recall(),
                "cpu_experts_per_token": cpu,
                "link_bytes_per_token": link,
                "demand_loads": r.demand_loads,
                "prefetch_loads": s.prefetch_loads,
                "behind_loads": s.behind_loads,
                "projection": projection,
                "published": (h.target.name == "laptop-4060").then(|| serde_json::json!({
                    "seed_tok_s": SEED_TOK_S,
                    "freetoken_tok_s": FREETOKEN_TOK_S,
                })),
                "reproduce_on_gpu": h.reproduce(row, &h.flags),
            })
        })
        .collect();
    let v = if out.len() == 1 { out[0].clone() } else { serde_json::json!({ "sweep": out }) };
    println!("{v}");
}

/// The sweep's chart: projected tok/s and hit rate.
fn chart(spec: &str, h: &Heading, rows: &[Row], plot: &std::path::Path) -> Result<()> {
    let vram = spec.starts_with("vram=");
    let points: Vec<SweepPoint> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| SweepPoint {
            label: row.c.label.clone(),
            x: if vram { row.budget as f64 / (1u64 << 30) as f64 } else { i as f64 },
            decode_tok_s: row.r.breakdown.map_or(0.0, |b| b.tok_s()),
            hit_rate: row.r.stats.hit_rate(),
        })
        .collect();
    let title = format!(
        "projected decode on {} and hit rate, {} (replay, {})",
        h.target.name,
        h.model(),
        rows[0].c.routing
    );
    let x_label = if vram { "VRAM budget (GiB)" } else { "configuration" };
    let svg = bench::sweep_svg(&title, x_label, &points);
    std::fs::write(plot, svg).map_err(|e| Error::Io { path: plot.to_path_buf(), source: e })?;
    eprintln!("chart: {}", plot.display());
    Ok(())
}
