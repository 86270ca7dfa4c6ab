//! The trace-driven replay makes the engine's decisions: on the simulator and in the replay,
//! the same text routing (or the same recorded trace) under the same plan and miss-policy costs
//! gives the same hits, misses, CPU experts, demand loads, prefetches and loads behind, on
//! qwen3moe and qwen35moe.
//! And the projection's time model on hand-made layers has the worked-out answers.

use rotary::model::weights::{ModelFile, Weights};
use rotary::rotary::cache::{Allocation, Policy};
use rotary::rotary::decide::Costs;
use rotary::rotary::plan::UBATCH;
use rotary::rotary::replay::{replay, Protocol, Routes, Shape};
use rotary::rotary::sim::SimDevice;
use rotary::rotary::target::{laptop_4060, Breakdown, LayerWork};
use rotary::rotary::{MoePolicy, Options};
use rotary::routing::text::TextRouting;
use rotary::routing::{Router, RoutingMode, Trace};
use rotary::synth::{Preset, QuantMix, SynthOptions};
use rotary::{Engine, Logits, Session};

/// The tiny presets at Q8_0; the small ones at Q4_K_M (half the bytes, and two expert sizes:
/// two slot classes).
fn quant(preset: &str) -> QuantMix {
    if preset.ends_with("small") {
        QuantMix::Q4KM
    } else {
        QuantMix::Q8_0
    }
}

fn synth(preset: &str) -> ModelFile {
    let opts = SynthOptions::new(Preset::by_name(preset).expect("preset"), quant(preset), 0);
    let bytes = rotary::synth::to_bytes(&opts).expect("synth");
    ModelFile::Gguf(rotary::format::gguf::Gguf::from_bytes(bytes).expect("gguf"))
}

fn same_decisions(preset: &str, slots: u64, policy: Policy, alloc: Allocation, costs: Costs) {
    same_decisions_on(preset, slots, policy, alloc, costs, false)
}

/// `traced`: the text routing's ids written to a trace file first; the simulator reads it with
/// `--routing trace:FILE` and the replay follows the same trace (no prefetch: a trace has no
/// prediction).
fn same_decisions_on(
    preset: &str,
    slots: u64,
    policy: Policy,
    alloc: Allocation,
    costs: Costs,
    traced: bool,
) {
    let file = synth(preset);
    let w = Weights::load(&file).expect("weights");
    let c = &w.cfg;
    let (l, e, k) = (c.n_layers as usize, c.n_experts as usize, c.n_experts_used as usize);
    let n_ctx = 256;
    let probe = Session::new(
        &w,
        Box::new(SimDevice::new(None, 50.0, Some(2)).expect("sim")),
        n_ctx,
        Options::default(),
        "sim",
        &mut |_, _| {},
    )
    .expect("probe");
    let budget = probe.plan.fixed_bytes() + slots * probe.plan.slot_bytes;
    drop(probe);
    let opts = Options {
        policy,
        alloc,
        moe_policy: MoePolicy::Auto,
        costs: Some(costs),
        prefetch: !traced,
        ..Options::default()
    };
    // A prompt of 2 micro-batches and a bit, then 40 decode tokens (the routing does not look
    // at the tokens).
    let (n_prompt, n_decode) = (UBATCH + 5, 40);
    let trace = Trace::text(l, e, k, 3, n_prompt + n_decode);
    let path =
        std::env::temp_dir().join(format!("rotary-replay-{preset}-{}.trace", std::process::id()));
    let (mode, mut routing) = if traced {
        trace.write(&path, e).expect("trace file");
        (RoutingMode::Trace(path.clone()), Routes::trace(trace))
    } else {
        (RoutingMode::Text(3), Routes::Text(TextRouting::new(l, e, k, 3)))
    };
    let dev = SimDevice::new(Some(budget), 50.0, Some(2)).expect("sim");
    let mut s = Session::new(&w, Box::new(dev), n_ctx, opts.clone(), "sim", &mut |_, _| {})
        .expect("session");
    s.set_router(Router::new(mode, l, e, k, 0).expect("router"));
    let prompt: Vec<u32> = (0..n_prompt as u32).map(|i| 1 + i % 200).collect();
    s.forward(&prompt, Logits::Last).expect("prompt");
    let before = s.stats();
    for i in 0..n_decode {
        s.forward(&[7 + i as u32], Logits::Last).expect("decode");
    }
    let sim = s.stats().since(&before);

    let shape = Shape::preset(preset, quant(preset)).expect("shape");
    let _ = std::fs::remove_file(&path);
    let protocol = Protocol { n_prompt, n_decode, ubatch: UBATCH };
    let r = replay(&shape, &s.plan, &opts, &mut routing, protocol, None, &mut |_, _| {})
        .expect("replay");
    let rep = &r.stats;
    println!(
        "{preset} {policy:?} {alloc:?}: sim {sim} | replay hits {} misses {}",
        rep.hits, rep.misses
    );
    // Prefetch runs where a copy beats the CPU (the fast link); on the laptop misses go to
    // the CPU instead.
    let fast_link = costs.link_bytes_per_s * costs.cpu_s_per_byte > 1.0;
    assert!(sim.misses > 0, "{preset}: the case has misses");
    assert_eq!(
        sim.prefetch_loads > 0,
        fast_link && !traced,
        "{preset}: prefetches {}",
        sim.prefetch_loads
    );
    assert_eq!(sim.cpu_experts > 0, !fast_link, "{preset}: CPU experts {}", sim.cpu_experts);
    let what = [
        ("hits", sim.hits, rep.hits),
        ("misses", sim.misses, rep.misses),
        ("CPU experts", sim.cpu_experts, rep.cpu_experts),
        ("GPU experts", sim.gpu_experts, rep.gpu_experts),
        ("prefetch loads", sim.prefetch_loads, rep.prefetch_loads),
        ("loads behind", sim.behind_loads, rep.behind_loads),
        ("prefetch correct", sim.prefetch_correct, rep.prefetch_correct),
    ];
    for (name, a, b) in what {
        assert_eq!(a, b, "{preset} {policy:?} {alloc:?}: {name} sim {a}, replay {b}");
    }
}

/// A machine whose link copies an expert 4x faster than its CPU computes one (prefetch pays).
const FAST_LINK: Costs = Costs {
    link_bytes_per_s: 40e9,
    cpu_s_per_byte: 1.0 / 10e9,
    gpu_s_per_byte: 1.0 / 100e9,
    serial: false,
};

#[test]
fn replay_makes_the_simulators_decisions_qwen3moe() {
    same_decisions("tiny", 7, Policy::Lru, Allocation::Global, laptop_4060().costs());
    same_decisions("tiny", 12, Policy::Lfru, Allocation::PerLayer, FAST_LINK);
}

#[test]
fn replay_makes_the_simulators_decisions_qwen35moe() {
    same_decisions("qwen35-tiny", 12, Policy::LayerAware, Allocation::Global, FAST_LINK);
    same_decisions("qwen35-tiny", 10, Policy::Lru, Allocation::Global, laptop_4060().costs());
}

/// A recorded trace (any routing mode, `run --record-routing`) replays to the simulator's
/// decisions on it too.
#[test]
fn replay_of_a_trace_makes_the_simulators_decisions() {
    same_decisions_on("tiny", 7, Policy::Lru, Allocation::Global, laptop_4060().costs(), true);
    same_decisions_on(
        "qwen35-tiny",
        12,
        Policy::Lfru,
        Allocation::Global,
        laptop_4060().costs(),
        true,
    );
}

/// The validation models, in memory (about 1 GB each), on the laptop's costs.
#[test]
fn replay_makes_the_simulators_decisions_small_and_qwen35_small() {
    same_decisions("small", 240, Policy::Lru, Allocation::Global, laptop_4060().costs());
    same_decisions("qwen35-small", 160, Policy::Lru, Allocation::Global, laptop_4060().costs());
}

/// The time model on hand-made layers: 1 GB/s everywhere makes bytes read as nanoseconds.
#[test]
fn the_time_model_has_the_worked_out_answers() {
    let t = rotary::rotary::target::Target {
        vram_gbps: 1.0,
        gpu_efficiency: 1.0,
        link_gbps: 1.0,
        host_gbps: 1.0,
        sync_s: 0.0,
        cpu_beside_gpu: true,
        ..laptop_4060()
    };
    let mut b = Breakdown::default();
    // CPU experts beside the GPU's (issue 15's hybrid step):
    // Layer 0: dense 10, GPU experts 5, demand 3, CPU 20 → max(10+3+5, 10+20) = 30 (µs·1e-3).
    // Layer 1: prefetched 40 issued at 30, ready at 70; dense 10 → MoE at 40, waits until 70,
    // GPU 5 → 75; CPU none. Head 5 → 80.
    let l0 = LayerWork {
        dense: 10e3,
        gpu_experts: 5e3,
        demand: 3e3,
        cpu_experts: 20e3,
        resolved: true,
        ..Default::default()
    };
    let l1 = LayerWork { dense: 10e3, gpu_experts: 5e3, ahead: 40e3, ..Default::default() };
    b.add_token(&t, &[l0, l1], 5e3);
    assert!((b.total_s - 80e-6).abs() < 1e-12, "{}", b.total_s);
    // The link wait: layer 1 waited 30 beyond its own compute (it would end at 45).
    assert!((b.link_wait_s - 30e-6).abs() < 1e-12, "{}", b.link_wait_s);
    assert!((b.link_busy_s - 43e-6).abs() < 1e-12);
    // Before the hybrid step: layer 0's CPU experts (20, while its demand load flies) before its
    // kernel: 10 + 20 + 5 = 35. Layer 1: its prefetch, issued at 35, is in at 75; MoE at 45
    // waits until 75, then 5 → 80; head → 85.
    let today = rotary::rotary::target::Target { cpu_beside_gpu: false, ..t };
    let mut b = Breakdown::default();
    b.add_token(&today, &[l0, l1], 5e3);
    assert!((b.total_s - 85e-6).abs() < 1e-12, "{}", b.total_s);
    // Layer 0 loads 50 behind its CPU experts (queued at 30, on the link until 80); layer 1's
    // demand load of 3 at 45 waits for the piece on the link, here all of what is left (35 <
    // one 512 KiB piece): demand 80..83, then 5 → 88; head → 93.
    let l0b = LayerWork { behind: 50e3, demand: 0.0, ..l0 };
    let l1b = LayerWork { ahead: 0.0, demand: 3e3, ..l1 };
    let mut b = Breakdown::default();
    b.add_token(&today, &[l0b, l1b], 5e3);
    assert!((b.total_s - 93e-6).abs() < 1e-12, "{}", b.total_s);
    // Loads behind are background: 5 ms of them queued at 30 have drained 15 by layer 1's
    // demand load at 45, which waits for the one piece on the link (512 KiB = 524.288 µs
    // here), not for the rest: 45 + 524.288 + 3, then 5 → 577.288; head → 582.288.
    let l0c = LayerWork { behind: 5e6, ..l0b };
    let mut b = Breakdown::default();
    b.add_token(&today, &[l0c, l1b], 5e3);
    assert!((b.total_s - 582.288e-6).abs() < 1e-12, "{}", b.total_s);
    // The rest (about 4.45 ms) carries into the next token: there each demand load (layer 0's
    // at 10, layer 1's at 552.288) waits one piece, not the backlog: 10 + 524.288 + 3 + 5 =
    // 542.288; 552.288 + 524.288 + 3 + 5 = 1084.576; head → 1089.576 (1671.864 in all).
    b.add_token(&today, &[l0, l1b], 5e3);
    assert!((b.total_s - 1671.864e-6).abs() < 1e-12, "{}", b.total_s);
    // A serial machine (the simulator) adds everything: 10+20+5+3 + 10+5+40 + 5 = 98.
    let serial = rotary::rotary::target::Target { serial: true, ..today };
    let mut b = Breakdown::default();
    b.add_token(&serial, &[l0, l1], 5e3);
    assert!((b.total_s - 98e-6).abs() < 1e-12, "{}", b.total_s);
}
