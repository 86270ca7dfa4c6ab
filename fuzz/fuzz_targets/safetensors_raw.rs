//! Raw bytes → safetensors header parser → every tensor view converted to f32. Any panic,
//! overflow, or allocation beyond libFuzzer's -rss_limit_mb is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotary::format::safetensors::Safetensors;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = Safetensors::new(data) else { return };
    let Ok(header) = Safetensors::parse(data) else { unreachable!("new() parsed it") };
    for info in header.tensors() {
        if let Ok(view) = st.tensor(&info.name) {
            let _ = std::hint::black_box(view.to_f32_vec());
        }
    }
});
