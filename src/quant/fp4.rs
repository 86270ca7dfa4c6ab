//! The FP4 (E2M1) formats. Codes index `grids::KVALUES_MXFP4`, the E2M1 values doubled, so
//! both formats store their scales halved.
//! - MXFP4 (ggml `block_mxfp4`, 17 bytes: e u8, qs[16]): 32 elements, byte j holds element j
//!   (low nibble) and j + 16 (high); the scale is the E8M0 exponent e, halved
//!   (ggml_e8m0_to_fp32_half); x = d * level.
//! - NVFP4 (ggml `block_nvfp4`, 36 bytes: d[4] UE4M3, qs[32]): 64 elements in 4 sub-blocks of
//!   16, each with its own unsigned E4M3 scale (bias 7, halved); sub-block s reads qs[8s..8s+8],
//!   element j (low nibble) and j + 8 (high).
//!
//! Dequantization only.

use super::grids::KVALUES_MXFP4;

/// ggml_e8m0_to_fp32_half: 2^(e - 128), with e < 2 as the subnormals 2^-128 and 2^-127.
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { u32::from(e - 1) << 23 };
    f32::from_bits(bits)
}

/// An unsigned E4M3 scale (bias 7), halved; 0 and 0x7F read as 0 (gguf-py's ue4m3_to_fp32).
/// Bit 7 is not part of the value.
pub fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    let (exp, man) = (i32::from((x >> 3) & 0x0f), f32::from(x & 7));
    let raw = if exp == 0 { man * 2f32.powi(-9) } else { (1.0 + man / 8.0) * 2f32.powi(exp - 7) };
    raw * 0.5
}

fn level(qs: &[u8], j: usize, half: usize) -> f32 {
    let code = if j < half { qs[j] & 0x0f } else { qs[j - half] >> 4 };
    f32::from(KVALUES_MXFP4[usize::from(code)])
}

pub(super) fn dequantize_mxfp4(b: &[u8], y: &mut [f32]) {
    let d = e8m0_half(b[0]);
    for (j, y) in y[..32].iter_mut().enumerate() {
        *y = d * level(&b[1..17], j, 16);
    }
}

pub(super) fn dequantize_nvfp4(b: &[u8], y: &mut [f32]) {
    for (s, y) in y[..64].chunks_exact_mut(16).enumerate() {
        let d = ue4m3_half(b[s]);
        let qs = &b[4 + 8 * s..12 + 8 * s];
        for (j, y) in y.iter_mut().enumerate() {
            *y = d * level(qs, j, 8);
        }
    }
}
