//! The plain float formats: F32, F16 and BF16, one element per "block". F16 rounds to nearest
//! even (the `half` crate, as ggml's GGML_FP32_TO_FP16); BF16 rounds as ggml's
//! `ggml_compute_fp32_to_bf16`, which also turns every NaN quiet and keeps its sign.

use half::f16;

pub(super) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (bytes, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
}

pub(super) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, bytes) in src.iter().zip(dst.chunks_exact_mut(4)) {
        bytes.copy_from_slice(&x.to_le_bytes());
    }
}

pub(super) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (bytes, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32();
    }
}

pub(super) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, bytes) in src.iter().zip(dst.chunks_exact_mut(2)) {
        bytes.copy_from_slice(&f16::from_f32(*x).to_bits().to_le_bytes());
    }
}

pub(super) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (bytes, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]));
    }
}

pub(super) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, bytes) in src.iter().zip(dst.chunks_exact_mut(2)) {
        bytes.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
    }
}

/// BF16 is the top half of an f32: widening is exact.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// ggml's f32 → bf16: NaN stays NaN (quiet bit 0x40 forced, sign and top payload kept); every
/// other value rounds to nearest, ties to even (overflow rounds to ±Inf).
pub fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}
