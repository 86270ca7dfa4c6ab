//! Raw bytes → GGUF reader → model config and tensor checks → every tensor view. Any panic,
//! overflow, or allocation beyond libFuzzer's -rss_limit_mb is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotary::format::gguf::Gguf;
use rotary::model::ModelConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else { return };
    let mut sum = 0u64;
    for t in &g.header.tensors {
        sum = sum.wrapping_add(g.tensor_data(t).iter().map(|&b| b as u64).sum::<u64>());
    }
    std::hint::black_box(sum);
    if let Ok(cfg) = ModelConfig::from_gguf(&g) {
        let _ = cfg.check_tensors(&g);
        std::hint::black_box(cfg.tensor_table().len());
    }
    let _ = rotary::inspect::Report::new(&g, Some(8 << 30));
});
