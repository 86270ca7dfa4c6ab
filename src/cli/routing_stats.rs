//! `rotary routing-stats`: the statistics of a routing trace, or of `--routing text` for a
//! preset's shape, beside the published figures (src/routing/stats.rs).

use std::path::PathBuf;

use rotary::routing::stats::{
    published_at, trace_stats, Spread, TraceStats, LRU_RESIDENCY, PUBLISHED_BENCH_PROMPT,
    PUBLISHED_REAL_TEXT,
};
use rotary::routing::{RoutingMode, Trace};
use rotary::synth::Preset;
use rotary::{Error, Result};

pub struct Args {
    pub trace: Option<PathBuf>,
    pub experts: Option<usize>,
    pub preset: Option<String>,
    pub routing: String,
    pub n_tokens: usize,
    pub write: Option<PathBuf>,
}

/// Most tokens --preset may route (the statistics are quadratic in nothing, but a typo of
/// -n 1e9 should not take an hour).
const MAX_TOKENS: usize = 1 << 16;

pub fn cmd_routing_stats(a: &Args, window: usize, json: bool) -> Result<()> {
    if window == 0 || window > 256 {
        return Err(Error::Usage(format!("--window {window}: want 1..=256 tokens")));
    }
    let (trace, n_experts, source) = match (&a.trace, &a.preset) {
        (Some(path), None) => {
            let t = Trace::load(path)?;
            let e = match (t.n_experts, a.experts) {
                (Some(e), None) => e,
                (_, Some(e)) if e >= t.k && e <= 1 << 16 => e,
                (_, Some(e)) => return Err(Error::Usage(format!("--experts {e}: want k..=65536"))),
                (None, None) => {
                    return Err(Error::Usage(format!(
                    "{}: the header does not say how many experts a layer has; pass --experts N",
                    path.display()
                )))
                }
            };
            (t, e, path.display().to_string())
        }
        (None, Some(name)) => {
            let p = Preset::by_name(name)?;
            let RoutingMode::Text(seed) = RoutingMode::parse(&a.routing)? else {
                return Err(Error::Usage(format!(
                    "--routing {} with --preset: only text or text:SEED route without a model \
                     (record another mode with `run --record-routing FILE`)",
                    a.routing
                )));
            };
            if a.n_tokens < 2 || a.n_tokens > MAX_TOKENS {
                return Err(Error::Usage(format!("-n {}: want 2..={MAX_TOKENS}", a.n_tokens)));
            }
            let (l, e, k) = (p.n_layers as usize, p.n_experts as usize, p.n_experts_used as usize);
            let t = Trace::text(l, e, k, seed, a.n_tokens);
            if let Some(w) = &a.write {
                t.write(w, e)?;
            }
            (t, e, format!("{} shape, routing {}", p.name, RoutingMode::Text(seed).label()))
        }
        _ => return Err(Error::Usage("give a TRACE file or --preset NAME (one of them)".into())),
    };
    let st = trace_stats(&trace, n_experts, window)?;
    if json {
        println!("{}", to_json(&st, &source));
    } else {
        print_table(&st, &source);
    }
    Ok(())
}

fn pct(s: Spread) -> String {
    format!("{:5.1}%  [{:.1} .. {:.1}]", 100.0 * s.mean, 100.0 * s.min, 100.0 * s.max)
}

fn print_table(st: &TraceStats, source: &str) {
    println!(
        "routing statistics: {source}: {} layers, {} experts, k={}, {} tokens",
        st.layers.len(),
        st.n_experts,
        st.k,
        st.n_tokens
    );
    println!("{:<24} {:<24} published", "per layer", "mean  [min .. max]");
    let rows = [
        ("next-token reuse", pct(st.reuse_next()), "~45% (trace study cited in imp PR #1374)"),
        (
            &*format!("reuse within {}", st.window),
            pct(st.reuse_window()),
            "~80% within 8 (same study)",
        ),
        ("top-12.5% share", pct(st.top_share()), "41% (imp PR #2061, real text, 512 experts)"),
        ("exact top-k repeats", pct(st.exact_repeats()), "rare (vLLM captures of Qwen3.6)"),
    ];
    for (name, v, src) in rows {
        println!("{name:<24} {v:<24} {src}");
    }
    let d = st.distinct();
    println!(
        "{:<24} {:<24}",
        "distinct experts",
        format!("{:5.1}  [{} .. {}] of {}", d.mean, d.min, d.max, st.n_experts)
    );
    println!("LRU hit rate (cold, per layer) by residency; published: real text (imp PR #2061) | bench prompt (imp PR #1374)");
    for (i, r) in LRU_RESIDENCY.iter().enumerate() {
        let cap = ((r * st.n_experts as f64).round() as usize).max(1);
        let p = |c: &[(f64, f64)]| {
            published_at(c, *r).map_or("  -  ".to_string(), |h| format!("{:.1}%", 100.0 * h))
        };
        println!(
            "  {:>4.0}% ({cap:>3} experts)   {:<24} {} | {}",
            100.0 * r,
            pct(st.lru(i)),
            p(&PUBLISHED_REAL_TEXT),
            p(&PUBLISHED_BENCH_PROMPT)
        );
    }
}

fn to_json(st: &TraceStats, source: &str) -> serde_json::Value {
    let s = |s: Spread| serde_json::json!({ "mean": s.mean, "min": s.min, "max": s.max });
    let lru: Vec<serde_json::Value> = LRU_RESIDENCY
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = s(st.lru(i));
            v["residency"] = serde_json::json!(r);
            v
        })
        .collect();
    serde_json::json!({
        "source": source,
        "n_layers": st.layers.len(),
        "n_experts": st.n_experts,
        "k": st.k,
        "n_tokens": st.n_tokens,
        "window": st.window,
        "reuse_next": s(st.reuse_next()),
        "reuse_window": s(st.reuse_window()),
        "top_share": s(st.top_share()),
        "exact_repeats": s(st.exact_repeats()),
        "distinct": s(st.distinct()),
        "lru": lru,
    })
}
