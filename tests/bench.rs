//! The benchmark's arithmetic and chart: the laptop projection follows its printed formula,
//! the sweep chart is a well-formed SVG naming its axes, and the scaled budget's residency
//! matches the planner for the real 30B-A3B shape.

use rotary::bench::{
    project, residency, sweep_svg, SweepPoint, LAPTOP_LINK_GBPS, LAPTOP_VRAM_EFFICIENCY,
    LAPTOP_VRAM_GBPS,
};
use rotary::synth::QuantMix;

#[test]
fn projection_follows_the_formula() {
    // 1.9 GB read per token, 0.43 GB of misses (anchors §6.2: h = 0.6 on the 30B).
    let p = project(1.9e9, 0.43e9);
    let gpu = 1.9e9 / (LAPTOP_VRAM_GBPS * 1e9 * LAPTOP_VRAM_EFFICIENCY);
    let link = 0.43e9 / (LAPTOP_LINK_GBPS * 1e9);
    assert!((p.serial_tok_s - 1.0 / (gpu + link)).abs() < 1e-9);
    assert!((p.overlap_tok_s - 1.0 / gpu.max(link)).abs() < 1e-9);
    assert!(p.serial_tok_s > 20.0 && p.serial_tok_s < 25.0, "{}", p.serial_tok_s);
    assert!(p.formula.contains("11.8 GB/s") && p.formula.contains("256 GB/s"));
    // No misses: the link term vanishes.
    assert_eq!(project(1e9, 0.0).link_ms, 0.0);
}

#[test]
fn sweep_chart_is_svg_with_axes_and_points() {
    let points: Vec<SweepPoint> = [(4.0, 10.0, 0.5), (6.3, 20.0, 0.7), (8.0, 30.0, 0.85)]
        .iter()
        .map(|&(x, t, h)| SweepPoint { label: format!("{x}GiB"), x, decode_tok_s: t, hit_rate: h })
        .collect();
    let svg = sweep_svg("a <title>", "VRAM budget (GiB)", &points);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("a &lt;title&gt;"), "titles are escaped");
    assert!(
        svg.contains("VRAM budget (GiB)")
            && svg.contains("decode tok/s")
            && svg.contains("hit rate")
    );
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert_eq!(svg.matches("<circle").count(), 6);
    for l in ["4GiB", "6.3GiB", "8GiB"] {
        assert!(svg.contains(l));
    }
}

#[test]
fn thirty_b_residency_at_8_and_6_3_gib() {
    let ctx = rotary::inspect::CUDA_CONTEXT_BYTES_ESTIMATE;
    let r8 = residency("qwen3-30b-a3b", QuantMix::Q4KM, 4096, 8 << 30, ctx).expect("plan");
    let r63 =
        residency("qwen3-30b-a3b", QuantMix::Q4KM, 4096, (6.3 * (1u64 << 30) as f64) as u64, ctx)
            .expect("plan");
    // anchors §1: 26-32% at ~6.3 GB; more at 8 GiB.
    assert!((0.25..0.30).contains(&r63), "{r63}");
    assert!((0.34..0.40).contains(&r8), "{r8}");
}
