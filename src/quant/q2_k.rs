//! Q2_K and Q3_K: the 2- and 3-bit K-quants, 256 elements in 16 sub-blocks of 16 (ggml
//! `block_q2_K`, `block_q3_K`). Both take their 2 low bits the same way: each half h of 128
//! elements reads 32 bytes of qs, element 128h + 32s + l from bits 2s..2s+1 of qs[32h + l].
//! - Q2_K (84 bytes: scales[16], qs[64], d, dmin f16): sub-block i has a 4-bit scale (low
//!   nibble of scales[i]) and a 4-bit min (high nibble); x = d*sc*q - dmin*m.
//! - Q3_K (110 bytes: hmask[32], qs[64], scales[12], d f16): element 32b + l takes its third
//!   bit from bit b of hmask[l], and a clear bit subtracts 4 (q in -4..3); 16 signed 6-bit
//!   scales (low nibbles from scales[0..8], high 2 bits from scales[8..12]), x = d*(sc-32)*q.
//!
//! Dequantization only.

use super::block::f16_at;
use super::QK_K;

/// Bits 2s..2s+1 of qs[32h + l] for element e = 128h + 32s + l.
fn low2(qs: &[u8], e: usize) -> u8 {
    let (h, s, l) = (e / 128, (e / 32) % 4, e % 32);
    (qs[32 * h + l] >> (2 * s)) & 3
}

pub(super) fn dequantize_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, y) in y[..QK_K].iter_mut().enumerate() {
        let sc = scales[e / 16];
        let dl = d * f32::from(sc & 0x0f);
        let ml = dmin * f32::from(sc >> 4);
        *y = dl * f32::from(low2(qs, e)) - ml;
    }
}

/// The 16 signed scales of a Q3_K block from its 12 packed bytes.
pub(crate) fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { packed[i] & 0x0f } else { packed[i - 8] >> 4 };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

pub(super) fn dequantize_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (e, y) in y[..QK_K].iter_mut().enumerate() {
        let dl = d * f32::from(scales[e / 16]);
        let high = (hmask[e % 32] >> (e / 32)) & 1;
        let q = low2(qs, e) as i8 - if high == 0 { 4 } else { 0 };
        *y = dl * f32::from(q);
    }
}
