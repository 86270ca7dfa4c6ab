//! The 32-element legacy formats beside Q4_0 and Q8_0 (ggml `block_q4_1`, `block_q5_0`,
//! `block_q5_1`). In every one, byte j of qs holds element j in its low nibble and element
//! j + 16 in its high nibble; the 5-bit formats add bit j of the little-endian u32 qh as
//! element j's fifth bit.
//! - Q4_1 (20 bytes: d, m f16, qs[16]): x = d * q + m.
//! - Q5_0 (22 bytes: d f16, qh[4], qs[16]): x = d * (q - 16).
//! - Q5_1 (24 bytes: d, m f16, qh[4], qs[16]): x = d * q + m.
//!
//! Dequantization only: the engine reads these, synth writes random blocks.

use super::block::f16_at;

/// The 32 codes of a block: nibbles of `qs` (16 bytes) plus, when `qh` is given, a fifth bit.
fn codes(qs: &[u8], qh: Option<&[u8]>) -> [u8; 32] {
    let high = qh.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    std::array::from_fn(|j| {
        let nibble = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
        nibble | ((((high >> j) & 1) as u8) << 4)
    })
}

pub(super) fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (y, q) in y.iter_mut().zip(codes(&b[4..20], None)) {
        *y = d * f32::from(q) + m;
    }
}

pub(super) fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, q) in y.iter_mut().zip(codes(&b[6..22], Some(&b[2..6]))) {
        *y = d * f32::from(q as i8 - 16);
    }
}

pub(super) fn dequantize_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (y, q) in y.iter_mut().zip(codes(&b[8..24], Some(&b[4..8]))) {
        *y = d * f32::from(q) + m;
    }
}
