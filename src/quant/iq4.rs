//! The non-linear 4-bit formats (ggml `block_iq4_nl`, `block_iq4_xs`): each 4-bit code picks
//! one of 16 levels (`grids::KVALUES_IQ4NL`, -127..113), scaled by the block's d.
//! - IQ4_NL (18 bytes: d f16, qs[16]): 32 elements, byte j holds element j (low nibble) and
//!   j + 16 (high); x = d * level.
//! - IQ4_XS (136 bytes: d f16, scales_h u16, scales_l[4], qs[128]): 256 elements in 8
//!   sub-blocks of 32, laid out as IQ4_NL's qs; sub-block i has a 6-bit scale (low nibble
//!   from scales_l[i/2], high 2 bits from bits 2i..2i+1 of scales_h) minus 32; x = d*ls*level.
//!
//! Dequantization only.

use super::block::f16_at;
use super::grids::KVALUES_IQ4NL;
use super::QK_K;

/// The 32 levels of one 16-byte run of nibbles.
pub(crate) fn levels(qs: &[u8]) -> [i8; 32] {
    std::array::from_fn(|j| {
        let code = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
        KVALUES_IQ4NL[usize::from(code)]
    })
}

pub(super) fn dequantize_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, l) in y.iter_mut().zip(levels(&b[2..18])) {
        *y = d * f32::from(l);
    }
}

/// The 8 signed sub-block scales of an IQ4_XS block.
pub(crate) fn iq4_xs_scales(b: &[u8]) -> [i8; 8] {
    let high = u16::from_le_bytes([b[2], b[3]]);
    std::array::from_fn(|i| {
        let low = (b[4 + i / 2] >> (4 * (i % 2))) & 0x0f;
        let hi = ((high >> (2 * i)) & 3) as u8;
        (low | (hi << 4)) as i8 - 32
    })
}

pub(super) fn dequantize_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = iq4_xs_scales(b);
    for (i, y) in y[..QK_K].chunks_exact_mut(32).enumerate() {
        let dl = d * f32::from(scales[i]);
        for (y, l) in y.iter_mut().zip(levels(&b[8 + 16 * i..8 + 16 * i + 16])) {
            *y = dl * f32::from(l);
        }
    }
}
