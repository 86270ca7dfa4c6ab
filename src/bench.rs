//! `rotary bench --paper`: the published 8 GB benchmark's protocol (a fixed prompt, then 2048
//! greedy decode tokens under a VRAM budget), its result record, the projection of a run to
//! the paper's laptop, budget/policy sweeps and their chart.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::forward::{Engine, Logits};
use crate::rotary::plan::Plan;
use crate::rotary::Stats;
use crate::synth::QuantMix;

/// The protocol's prompt (the paper does not publish its own; any fixed prompt will do).
pub const PAPER_PROMPT: &str = "Write a short story about a lighthouse keeper who finds a map.";
/// Decode tokens of the protocol.
pub const PAPER_DECODE: usize = 2048;
/// The VRAM budget of the paper's GPU.
pub const PAPER_BUDGET: u64 = 8 << 30;

/// The laptop of the published figure (anchors.md §6.1): RTX 4060 Laptop, PCIe 4.0 x8.
pub const LAPTOP_LINK_GBPS: f64 = 11.8;
pub const LAPTOP_VRAM_GBPS: f64 = 256.0;
/// The fraction of VRAM bandwidth a decode step achieves there (an assumption: fully resident
/// decode engines reach 35-40% of peak on big GPUs, anchors §6.1; a small GPU does better).
pub const LAPTOP_VRAM_EFFICIENCY: f64 = 0.6;

/// One protocol run's record (the JSON of `bench --paper --json`).
#[derive(Clone, Debug, Default)]
pub struct PaperResult {
    pub decode_tok_s: f64,
    pub prefill_tok_s: f64,
    pub n_prompt: usize,
    pub n_decode: usize,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub peak_rss_bytes: Option<u64>,
    pub pinned_bytes: u64,
    /// The rotary's stats over the decode tokens only (None on host backends).
    pub stats: Option<Stats>,
    pub routing: String,
    /// The expert cache's policy and allocation ("lru, global"); empty on host backends.
    pub cache: String,
    pub backend: String,
    pub device: String,
    pub model: String,
    pub projection: Option<Projection>,
    /// What differs from the paper's setup, in words (scaled preset, simulator, ...).
    pub note: String,
}

/// Prefill `prompt`, then `n_decode` greedy tokens, timing each. `progress(done, hit_rate)`
/// after each decode token (the hit rate so far, on a device).
pub fn paper_run(
    e: &mut dyn Engine,
    prompt: &[u32],
    n_decode: usize,
    progress: &mut dyn FnMut(usize, Option<f64>),
) -> Result<PaperResult> {
    if prompt.is_empty() || prompt.len() + n_decode > e.n_ctx() {
        return Err(Error::ContextOverflow { n_tokens: prompt.len() + n_decode, n_ctx: e.n_ctx() });
    }
    e.reset();
    let start = Instant::now();
    let mut logits = e.forward(prompt, Logits::Last)?;
    let prefill_s = start.elapsed().as_secs_f64();
    let before = e.rotary_stats();
    let mut lat_ms = Vec::with_capacity(n_decode);
    let start = Instant::now();
    for i in 0..n_decode {
        let next = crate::run::argmax(&logits);
        let t = Instant::now();
        logits = e.forward(&[next], Logits::Last)?;
        lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let hit = match (e.rotary_stats(), &before) {
            (Some(now), Some(b)) => Some(now.since(b).hit_rate()),
            _ => None,
        };
        progress(i + 1, hit);
    }
    let decode_s = start.elapsed().as_secs_f64();
    let stats = match (e.rotary_stats(), before) {
        (Some(after), Some(before)) => Some(after.since(&before)),
        _ => None,
    };
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat_ms
            .get(((lat_ms.len() as f64 * p) as usize).min(lat_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(PaperResult {
        decode_tok_s: n_decode as f64 / decode_s.max(1e-9),
        prefill_tok_s: prompt.len() as f64 / prefill_s.max(1e-9),
        n_prompt: prompt.len(),
        n_decode,
        latency_ms_p50: pct(0.5),
        latency_ms_p99: pct(0.99),
        peak_rss_bytes: crate::run::peak_rss_bytes(),
        stats,
        backend: e.backend_name().to_string(),
        ..PaperResult::default()
    })
}

/// What the same run would give on the paper's laptop: the GPU reads the bytes of one token
/// from VRAM (dense + the k experts of every layer) at LAPTOP_VRAM_GBPS × efficiency, and the
/// misses (loaded or computed on the CPU here) cross a LAPTOP_LINK_GBPS link.
#[derive(Clone, Debug)]
pub struct Projection {
    pub gpu_ms: f64,
    pub link_ms: f64,
    /// Copies and compute one after the other.
    pub serial_tok_s: f64,
    /// Copies hidden under compute (the bound a perfect prefetch reaches).
    pub overlap_tok_s: f64,
    pub formula: String,
}

/// `read_bytes`: bytes a token reads from VRAM when every expert hits; `miss_bytes`: expert
/// bytes per token that had to come over the link (or were computed on the CPU).
pub fn project(read_bytes: f64, miss_bytes: f64) -> Projection {
    let gpu_s = read_bytes / (LAPTOP_VRAM_GBPS * 1e9 * LAPTOP_VRAM_EFFICIENCY);
    let link_s = miss_bytes / (LAPTOP_LINK_GBPS * 1e9);
    Projection {
        gpu_ms: gpu_s * 1e3,
        link_ms: link_s * 1e3,
        serial_tok_s: 1.0 / (gpu_s + link_s),
        overlap_tok_s: 1.0 / gpu_s.max(link_s),
        formula: format!(
            "tok/s = 1 / (T_gpu + T_link) [serial], 1 / max(T_gpu, T_link) [overlap]; T_gpu = \
             {:.0} MB read per token / ({LAPTOP_VRAM_GBPS} GB/s x {LAPTOP_VRAM_EFFICIENCY}); \
             T_link = {:.1} MB of missed experts per token / {LAPTOP_LINK_GBPS} GB/s",
            read_bytes / 1e6,
            miss_bytes / 1e6
        ),
    }
}

impl PaperResult {
    pub fn to_json(&self, budget: Option<u64>) -> serde_json::Value {
        let s = self.stats.as_ref();
        serde_json::json!({
            "kind": if self.backend == "sim" { "simulated" } else { "measured" },
            "decode_tok_s": self.decode_tok_s,
            "prefill_tok_s": self.prefill_tok_s,
            "n_prompt": self.n_prompt,
            "n_decode": self.n_decode,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p99": self.latency_ms_p99,
            "peak_vram_bytes": s.map(|s| s.peak_vram_bytes),
            "vram_budget_bytes": s.and_then(|s| s.vram_budget_bytes).or(budget),
            "peak_rss_bytes": self.peak_rss_bytes,
            "pinned_bytes": self.pinned_bytes,
            "hit_rate": s.map(Stats::hit_rate),
            "h2d_bytes_per_token": s.map(Stats::h2d_bytes_per_token),
            "link_gbps": s.map(Stats::link_gbps),
            "prefetch_recall": s.and_then(Stats::prefetch_recall),
            "cpu_expert_share": s.map(Stats::cpu_expert_share),
            "misses_per_layer_token": s.map(Stats::misses_per_layer_token),
            "routing": self.routing,
            "cache": self.cache,
            "backend": self.backend,
            "device": self.device,
            "model": self.model,
            "note": self.note,
            "laptop_projection": self.projection.as_ref().map(|p| serde_json::json!({
                "serial_tok_s": p.serial_tok_s,
                "overlap_tok_s": p.overlap_tok_s,
                "gpu_ms": p.gpu_ms,
                "link_ms": p.link_ms,
                "formula": p.formula,
                "kind": "projected",
                "label": "projection, not a measurement",
            })),
        })
    }
}

/// The expert residency (slots / experts) a budget gives the real `preset` at `quant`: used
/// to scale a budget to a smaller preset on machines that cannot run the real one.
pub fn residency(
    preset: &str,
    quant: QuantMix,
    n_ctx: usize,
    budget: u64,
    overhead: u64,
) -> Result<f64> {
    let plan = preset_plan(preset, quant, n_ctx, Some(budget), overhead)?;
    Ok(plan.n_slots as f64 / plan.n_experts_total.max(1) as f64)
}

/// The VRAM plan of the real `preset` at `quant` for a budget, from its tensor table (no file).
pub fn preset_plan(
    preset: &str,
    quant: QuantMix,
    n_ctx: usize,
    budget: Option<u64>,
    overhead: u64,
) -> Result<Plan> {
    crate::rotary::replay::Shape::preset(preset, quant)?.plan(n_ctx, budget, overhead)
}

/// One point of a sweep, for the chart.
#[derive(Clone, Debug)]
pub struct SweepPoint {
    pub label: String,
    /// The x value: budget in GiB (or residency %, or the point's index for policies).
    pub x: f64,
    pub decode_tok_s: f64,
    pub hit_rate: f64,
}

/// An SVG chart of decode tok/s (left axis, line) and hit rate (right axis, dashed) against
/// the swept quantity.
pub fn sweep_svg(title: &str, x_label: &str, points: &[SweepPoint]) -> String {
    let c = Chart::new(points);
    let (w, h) = (c.w, c.h);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        w / 2.0,
        xml(title)
    );
    s += &svg_grid(&c);
    s += &svg_axis_labels(&c, x_label, points);
    s += &svg_series(&c, points);
    s += &svg_legend(&c);
    s
}

/// The sweep chart's geometry: canvas size, margins, plot area and axis scales.
struct Chart {
    w: f64,
    h: f64,
    /// Left and top margins.
    ml: f64,
    mt: f64,
    /// Plot area width and height.
    pw: f64,
    ph: f64,
    xmin: f64,
    xspan: f64,
    /// The tok/s axis maximum.
    ymax: f64,
}

impl Chart {
    /// The geometry fitting `points`.
    fn new(points: &[SweepPoint]) -> Chart {
        let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 70.0, 70.0, 50.0, 60.0);
        let (pw, ph) = (w - ml - mr, h - mt - mb);
        let xmin = points.iter().map(|p| p.x).fold(f64::INFINITY, f64::min);
        let xmax = points.iter().map(|p| p.x).fold(f64::NEG_INFINITY, f64::max);
        let xspan = if xmax > xmin { xmax - xmin } else { 1.0 };
        let ymax = nice_max(points.iter().map(|p| p.decode_tok_s).fold(0.0, f64::max));
        Chart { w, h, ml, mt, pw, ph, xmin, xspan, ymax }
    }

    /// The horizontal pixel of swept value `x`.
    fn px(&self, x: f64) -> f64 {
        self.ml + (x - self.xmin) / self.xspan * self.pw
    }

    /// The vertical pixel of decode tok/s `y` (left axis).
    fn py(&self, y: f64) -> f64 {
        self.mt + self.ph - y / self.ymax * self.ph
    }

    /// The vertical pixel of hit rate `r` in [0, 1] (right axis).
    fn pr(&self, r: f64) -> f64 {
        self.mt + self.ph - r * self.ph
    }
}

/// The chart's grid lines, both axes' tick labels and the plot frame.
fn svg_grid(c: &Chart) -> String {
    let (ml, mt, pw, ph) = (c.ml, c.mt, c.pw, c.ph);
    let mut s = String::new();
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let y = mt + ph - f * ph;
        s += &format!(
            "<line x1=\"{ml}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>\n",
            ml + pw
        );
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#1f5fbf\">{:.1}</text>\n",
            ml - 6.0,
            y + 4.0,
            f * c.ymax
        );
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"#c0392b\">{:.0}%</text>\n",
            ml + pw + 6.0,
            y + 4.0,
            f * 100.0
        );
    }
    s += &format!(
        "<rect x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" \
         stroke=\"#333\"/>\n"
    );
    s
}

/// The chart's x tick labels (one per point) and its three axis titles.
fn svg_axis_labels(c: &Chart, x_label: &str, points: &[SweepPoint]) -> String {
    let (ml, mt, pw, ph) = (c.ml, c.mt, c.pw, c.ph);
    let mut s = String::new();
    for p in points {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            c.px(p.x),
            mt + ph + 18.0,
            xml(&p.label)
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        ml + pw / 2.0,
        c.h - 15.0,
        xml(x_label)
    );
    s += &format!(
        "<text transform=\"translate(20,{}) rotate(-90)\" text-anchor=\"middle\" \
         fill=\"#1f5fbf\">decode tok/s</text>\n",
        mt + ph / 2.0
    );
    s += &format!(
        "<text transform=\"translate({},{}) rotate(90)\" text-anchor=\"middle\" \
         fill=\"#c0392b\">expert cache hit rate</text>\n",
        c.w - 18.0,
        mt + ph / 2.0
    );
    s
}

/// The chart's two series: the tok/s line and the dashed hit-rate line, with their markers.
fn svg_series(c: &Chart, points: &[SweepPoint]) -> String {
    let mut s = format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2.5\"/>\n",
        svg_points(points, &|p| (c.px(p.x), c.py(p.decode_tok_s)))
    );
    s += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" \
         stroke-dasharray=\"6,4\"/>\n",
        svg_points(points, &|p| (c.px(p.x), c.pr(p.hit_rate)))
    );
    for p in points {
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#1f5fbf\"/>\n",
            c.px(p.x),
            c.py(p.decode_tok_s)
        );
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#1f5fbf\" \
             font-size=\"11\">{:.1}</text>\n",
            c.px(p.x),
            c.py(p.decode_tok_s) - 8.0,
            p.decode_tok_s
        );
        s += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#c0392b\"/>\n",
            c.px(p.x),
            c.pr(p.hit_rate)
        );
    }
    s
}

/// A polyline's `points` attribute: `f`'s pixel pair for each point.
fn svg_points(points: &[SweepPoint], f: &dyn Fn(&SweepPoint) -> (f64, f64)) -> String {
    points
        .iter()
        .map(|p| {
            let (x, y) = f(p);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The chart's legend (top left of the plot area) and the closing tag.
fn svg_legend(c: &Chart) -> String {
    let (ml, mt) = (c.ml, c.mt);
    let lx = ml + 12.0;
    let mut s = format!(
        "<line x1=\"{lx}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#1f5fbf\" \
         stroke-width=\"2.5\"/>\n",
        mt + 14.0,
        lx + 24.0,
        mt + 14.0
    );
    s += &format!("<text x=\"{}\" y=\"{}\">decode tok/s</text>\n", lx + 30.0, mt + 18.0);
    s += &format!(
        "<line x1=\"{lx}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#c0392b\" stroke-width=\"2\" \
         stroke-dasharray=\"6,4\"/>\n",
        mt + 32.0,
        lx + 24.0,
        mt + 32.0
    );
    s += &format!("<text x=\"{}\" y=\"{}\">hit rate</text>\n</svg>\n", lx + 30.0, mt + 36.0);
    s
}

/// A round axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&m| m >= v * 1.05)
        .unwrap_or(10.0 * mag)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
