//! The VRAM plan of the real shapes from their tensor tables (no file, no device): expert slots
//! by size class on mixed-type files.

use rotary::synth::QuantMix;

/// Slots sized per class waste under 5% of the expert cache on mixed files of the real
/// shapes at the paper's budget (one slot size, the largest expert, wasted 5-10% there), and
/// every layer gets the same share of its experts within one slot.
#[test]
fn slot_classes_fill_the_cache_on_mixed_files() {
    let budget = (6.3 * (1u64 << 30) as f64) as u64;
    for preset in ["qwen3-30b-a3b", "qwen35-35b-a3b"] {
        for mix in [QuantMix::Q4KM, QuantMix::Q4KXL] {
            let plan = rotary::bench::preset_plan(preset, mix, 4096, Some(budget), 0).unwrap();
            let room = budget - plan.fixed_bytes();
            let used = plan.expert_cache_bytes();
            let one_size = room / plan.slot_bytes * plan.slot_bytes;
            // What the experts cached under one slot size really need.
            let avg = plan.classes.iter().map(|k| k.slot_bytes * k.layers.len() as u64).sum::<u64>()
                as f64
                / plan.classes.iter().map(|k| k.layers.len()).sum::<usize>() as f64;
            let one_size_waste = 1.0 - (room / plan.slot_bytes) as f64 * avg / one_size as f64;
            let waste = 1.0 - used as f64 / room as f64;
            println!(
                "{preset} {}: {} classes, {} slots ({:.1}% of experts), cache waste {:.2}% \
                 (one slot size: {} slots, {:.1}% waste)",
                mix.name(),
                plan.classes.len(),
                plan.n_slots,
                100.0 * plan.n_slots as f64 / plan.n_experts_total as f64,
                100.0 * waste,
                room / plan.slot_bytes,
                100.0 * one_size_waste
            );
            assert!(waste < 0.05, "{preset} {}: {waste}", mix.name());
            let shares: Vec<f64> =
                plan.classes.iter().map(|k| k.n_slots as f64 / k.layers.len() as f64).collect();
            let (lo, hi) = shares.iter().fold((f64::MAX, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
            assert!(hi - lo <= 1.0, "{preset} {}: per-layer shares {shares:?}", mix.name());
        }
    }
}
