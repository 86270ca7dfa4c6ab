//! The 3-bit i-quants (ggml `block_iq3_xxs`, `block_iq3_s`): 256 elements, every 4 of them one
//! row of a grid (`grids::IQ3XXS_GRID`, `IQ3S_GRID`), with one sign per element.
//! - IQ3_XXS (98 bytes: d f16, qs[64], 8 u32 scales-and-signs): grid row k of 256 is qs[k]
//!   (elements 4k..4k+4); sub-block i of 32 takes aux = u32 i: aux >> 28 is its scale,
//!   db = d * (0.5 + s) * 0.5, and bits 7l..7l+7 index `KSIGNS_IQ2XS` for elements
//!   32i + 8l .. +8.
//! - IQ3_S (110 bytes: d f16, qs[64], qh[8], signs[32], scales[4]): grid row k of 512 is qs[k]
//!   plus bit k%8 of qh[k/8] as bit 8; bit j of signs[k] is element 8k + j's sign; sub-block i
//!   of 32 has the scale nibble i%2 of scales[i/2], db = d * (1 + 2s).
//!
//! x = db * grid value * ±1. Dequantization only.

use super::block::f16_at;
use super::grids::{IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS};
use super::QK_K;

/// Four elements: db * grid row values * the low 4 bits of `signs`.
fn grid4(y: &mut [f32], db: f32, row: u32, signs: u8) {
    for (j, y) in y[..4].iter_mut().enumerate() {
        let g = f32::from((row >> (8 * j)) as u8);
        let s = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
        *y = db * g * s;
    }
}

pub(super) fn dequantize_iq3_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for (i, y) in y[..QK_K].chunks_exact_mut(32).enumerate() {
        let at = 66 + 4 * i;
        let aux = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let k = 8 * i + 2 * l;
            grid4(&mut y[..4], db, IQ3XXS_GRID[usize::from(qs[k])], signs);
            grid4(&mut y[4..], db, IQ3XXS_GRID[usize::from(qs[k + 1])], signs >> 4);
        }
    }
}

pub(super) fn dequantize_iq3_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for (i, y) in y[..QK_K].chunks_exact_mut(32).enumerate() {
        let s = (scales[i / 2] >> (4 * (i % 2))) & 0x0f;
        let db = d * f32::from(1 + 2 * s);
        for (k4, y) in y.chunks_exact_mut(4).enumerate() {
            let k = 8 * i + k4;
            let row = usize::from(qs[k]) | (usize::from((qh[k / 8] >> (k % 8)) & 1) << 8);
            let sign = signs[k / 2] >> (4 * (k % 2));
            grid4(y, db, IQ3S_GRID[row], sign);
        }
    }
}
