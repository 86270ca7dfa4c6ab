//! The 1.5- and 1.75-bit i-quants (ggml `block_iq1_s`, `block_iq1_m`): 256 elements, every 8
//! one row of an 11-bit grid of values -1, 0, 1 (`grids::IQ1S_GRID`), shifted by ±delta
//! (`IQ1S_DELTA`, 0.125): x = dl * (grid[j] + delta).
//! - IQ1_S (50 bytes: d f16, qs[32], qh as 8 u16): sub-block i of 32 takes qh[i]: row k = 4i + l
//!   is qs[k] plus bits 3l..3l+3 of qh[i] as bits 8-10; bits 12-14 are the scale s,
//!   dl = d * (2s + 1); bit 15 set makes delta negative.
//! - IQ1_M (56 bytes: qs[32], qh[16], scales as 4 u16): row k is qs[k] plus the low 3 bits of
//!   nibble k%2 of qh[k/2] as bits 8-10, the nibble's bit 3 making delta negative; elements
//!   16m..16m+16 take the 3-bit scale s at bits 3(m%4).. of scales u16 m/4, dl = d * (2s + 1);
//!   d is the f16 assembled from the top nibbles of the four scales u16s.
//!
//! Dequantization only.

use super::block::f16_at;
use super::grids::{IQ1S_DELTA, IQ1S_GRID};
use super::QK_K;

/// Eight elements: dl * (grid row value + delta).
fn grid8(y: &mut [f32], dl: f32, row: u64, delta: f32) {
    for (j, y) in y[..8].iter_mut().enumerate() {
        *y = dl * (f32::from((row >> (8 * j)) as u8 as i8) + delta);
    }
}

pub(super) fn dequantize_iq1_s(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, y) in y[..QK_K].chunks_exact_mut(32).enumerate() {
        let qh = u16::from_le_bytes([b[34 + 2 * i], b[35 + 2 * i]]);
        let dl = d * f32::from(2 * ((qh >> 12) & 7) + 1);
        let delta = if qh & 0x8000 == 0 { IQ1S_DELTA } else { -IQ1S_DELTA };
        for (l, y) in y.chunks_exact_mut(8).enumerate() {
            let row = usize::from(b[2 + 4 * i + l]) | (usize::from((qh >> (3 * l)) & 7) << 8);
            grid8(y, dl, IQ1S_GRID[row], delta);
        }
    }
}

/// The four scale u16s of an IQ1_M block and its d (an f16 spread over their top nibbles).
pub(crate) fn iq1_m_scales(b: &[u8]) -> ([u16; 4], f32) {
    let sc: [u16; 4] = std::array::from_fn(|i| u16::from_le_bytes([b[48 + 2 * i], b[49 + 2 * i]]));
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    (sc, half::f16::from_bits(bits).to_f32())
}

pub(super) fn dequantize_iq1_m(b: &[u8], y: &mut [f32]) {
    let (qs, qh) = (&b[0..32], &b[32..48]);
    let (sc, d) = iq1_m_scales(b);
    for (k, y) in y[..QK_K].chunks_exact_mut(8).enumerate() {
        let m = k / 2; // the 16-element group
        let s = (sc[m / 4] >> (3 * (m % 4))) & 7;
        let dl = d * f32::from(2 * s + 1);
        let nib = (qh[k / 2] >> (4 * (k % 2))) & 0x0f;
        let row = usize::from(qs[k]) | (usize::from(nib & 7) << 8);
        let delta = if nib & 8 == 0 { IQ1S_DELTA } else { -IQ1S_DELTA };
        grid8(y, dl, IQ1S_GRID[row], delta);
    }
}
