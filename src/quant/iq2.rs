//! The 2-bit i-quants (ggml `block_iq2_xxs`, `block_iq2_xs`, `block_iq2_s`): 256 elements,
//! every 8 of them one row of a lattice grid (values 8, 25, 43; `grids::IQ2*_GRID`) with 8
//! signs, times a 4-bit scale: db = d * (0.5 + s) * 0.25, x = db * grid[j] * ±1.
//! - IQ2_XXS (66 bytes: d f16, qs as 16 u32): sub-block i of 32 reads the pair
//!   (aux0, aux1) = (u32[2i], u32[2i+1]): byte l of aux0 indexes the grid for elements
//!   32i + 8l .. +8, bits 7l..7l+7 of aux1 index `KSIGNS_IQ2XS`, aux1 >> 28 is the scale.
//! - IQ2_XS (74 bytes: d f16, qs as 32 u16, scales[8]): u16 k covers elements 8k..8k+8, its
//!   low 9 bits a grid row of 512, its top 7 a `KSIGNS_IQ2XS` index; elements 16i..16i+16 take
//!   nibble i % 2 of scales[i / 2].
//! - IQ2_S (82 bytes: d f16, qs[32], signs[32], qh[8], scales[8]): grid row k of 1024 is
//!   qs[k] plus bits 2(k%4).. of qh[k/4] as bits 8-9; bit j of signs[k] is element 8k + j's
//!   sign; scales as IQ2_XS.
//!
//! Dequantization only.

use super::block::f16_at;
use super::grids::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, KSIGNS_IQ2XS};
use super::QK_K;

/// Eight elements: db * grid row values * the signs in `signs` (bit j set: negative).
pub(crate) fn grid8(y: &mut [f32], db: f32, row: u64, signs: u8) {
    for (j, y) in y[..8].iter_mut().enumerate() {
        let g = f32::from((row >> (8 * j)) as u8);
        let s = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
        *y = db * g * s;
    }
}

/// The scale of a 4-bit code s: d * (0.5 + s) * 0.25.
fn db(d: f32, s: u32) -> f32 {
    d * (0.5 + s as f32) * 0.25
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn dequantize_iq2_xxs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, y) in y[..QK_K].chunks_exact_mut(32).enumerate() {
        let (aux0, aux1) = (u32_at(b, 2 + 8 * i), u32_at(b, 6 + 8 * i));
        let dl = db(d, aux1 >> 28);
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let row = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xff) as usize];
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            grid8(y, dl, row, signs);
        }
    }
}

/// The scale nibble of elements 16i..16i+16 in IQ2_XS / IQ2_S.
fn nibble(scales: &[u8], i: usize) -> u32 {
    u32::from((scales[i / 2] >> (4 * (i % 2))) & 0x0f)
}

pub(super) fn dequantize_iq2_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for (k, y) in y[..QK_K].chunks_exact_mut(8).enumerate() {
        let q = u16::from_le_bytes([b[2 + 2 * k], b[3 + 2 * k]]);
        let row = IQ2XS_GRID[usize::from(q & 511)];
        grid8(y, db(d, nibble(scales, k / 2)), row, KSIGNS_IQ2XS[usize::from(q >> 9)]);
    }
}

pub(super) fn dequantize_iq2_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for (k, y) in y[..QK_K].chunks_exact_mut(8).enumerate() {
        let high = usize::from((qh[k / 4] >> (2 * (k % 4))) & 3);
        let row = IQ2S_GRID[usize::from(qs[k]) | (high << 8)];
        grid8(y, db(d, nibble(scales, k / 2)), row, signs[k]);
    }
}
