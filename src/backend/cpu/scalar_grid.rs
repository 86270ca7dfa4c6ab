//! Portable dot kernels for the grid i-quants, each against Q8_K activations: IQ3_XXS, IQ3_S,
//! IQ2_XXS, IQ2_XS, IQ2_S (unsigned grid rows with one sign bit per element), IQ1_S and IQ1_M
//! (rows of -1, 0, 1 shifted by ±1/8). Integer sums per sub-block times its odd integer scale
//! 2s + 1, summed per super-block; the constant factor of each format's scale (1/4 for IQ3_XXS,
//! 1/8 for IQ2 and IQ1) is applied once at the end, as ggml's generic kernels do. IQ1's ±1/8
//! shift is kept in integers by summing 8·grid ± 1. The template for `avx2_grid`.

use super::scalar::f16_at;
use crate::quant::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};
use crate::quant::BlockQ8K;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Σ ±g·y over 8 elements: g the unsigned bytes of `row`, bit j of `signs` negating element j.
fn dot8_signed(row: u64, signs: u8, y: &[i8]) -> i32 {
    (0..8)
        .map(|j| {
            let v = i32::from((row >> (8 * j)) as u8) * i32::from(y[j]);
            if signs & (1 << j) != 0 {
                -v
            } else {
                v
            }
        })
        .sum()
}

/// Σ (8g + delta)·y over 8 elements, g the signed bytes (-1, 0, 1) of an IQ1 grid row.
fn dot8_iq1(row: u64, delta: i32, y: &[i8]) -> i32 {
    (0..8).map(|j| (8 * i32::from((row >> (8 * j)) as u8 as i8) + delta) * i32::from(y[j])).sum()
}

/// The odd scale 2s + 1 of the 4-bit field s.
fn odd(s: u32) -> i32 {
    2 * (s & 0x0f) as i32 + 1
}

/// IQ3_XXS (98 bytes: d f16, qs[64], 8 u32 scale-and-signs) · Q8_K. x = d (2s + 1)/4 g ±1.
pub(super) fn dot_iq3_xxs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 98, "row is [blocks] of IQ3_XXS");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(98).zip(act) {
        let mut sumi = 0i32;
        for i in 0..8 {
            let aux = u32_at(w, 66 + 4 * i);
            let mut dot = 0;
            for l in 0..4 {
                let k = 2 + 8 * i + 2 * l;
                let rows = [IQ3XXS_GRID[usize::from(w[k])], IQ3XXS_GRID[usize::from(w[k + 1])]];
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let row = u64::from(rows[0]) | (u64::from(rows[1]) << 32);
                dot += dot8_signed(row, signs, &a.qs[32 * i + 8 * l..]);
            }
            sumi += odd(aux >> 28) * dot;
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.25 * sum
}

/// IQ3_S (110 bytes: d f16, qs[64], qh[8], signs[32], scales[4]) · Q8_K. x = d (2s + 1) g ±1;
/// grid row k is qs[k] plus bit k % 8 of qh[k / 8] as bit 8.
pub(super) fn dot_iq3_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 110, "row is [blocks] of IQ3_S");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(110).zip(act) {
        let (qs, qh, signs, scales) = (&w[2..66], &w[66..74], &w[74..106], &w[106..110]);
        let mut sumi = 0i32;
        for i in 0..8 {
            let grid = |k: usize| {
                let high = usize::from((qh[i] >> (k % 8)) & 1) << 8;
                u64::from(IQ3S_GRID[usize::from(qs[k]) | high])
            };
            let mut dot = 0;
            for l in 0..4 {
                let k = 8 * i + 2 * l;
                let row = grid(k) | (grid(k + 1) << 32);
                dot += dot8_signed(row, signs[4 * i + l], &a.qs[32 * i + 8 * l..]);
            }
            sumi += odd(u32::from(scales[i / 2] >> (4 * (i % 2)))) * dot;
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    sum
}

/// IQ2_XXS (66 bytes: d f16, 8 pairs of u32) · Q8_K. x = d (2s + 1)/8 g ±1.
pub(super) fn dot_iq2_xxs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 66, "row is [blocks] of IQ2_XXS");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(66).zip(act) {
        let mut sumi = 0i32;
        for i in 0..8 {
            let (aux0, aux1) = (u32_at(w, 2 + 8 * i), u32_at(w, 6 + 8 * i));
            let mut dot = 0;
            for l in 0..4 {
                let row = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xff) as usize];
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                dot += dot8_signed(row, signs, &a.qs[32 * i + 8 * l..]);
            }
            sumi += odd(aux1 >> 28) * dot;
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.125 * sum
}

/// The odd scale of elements 16m..16m+16 in IQ2_XS / IQ2_S: nibble m % 2 of scales[m / 2].
fn scale16(scales: &[u8], m: usize) -> i32 {
    odd(u32::from(scales[m / 2] >> (4 * (m % 2))))
}

/// IQ2_XS (74 bytes: d f16, 32 u16 (9-bit grid row, 7-bit sign index), scales[8]) · Q8_K.
pub(super) fn dot_iq2_xs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 74, "row is [blocks] of IQ2_XS");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(74).zip(act) {
        let mut sumi = 0i32;
        for m in 0..16 {
            let mut dot = 0;
            for k in 2 * m..2 * m + 2 {
                let q = u16_at(w, 2 + 2 * k);
                let signs = KSIGNS_IQ2XS[usize::from(q >> 9)];
                dot += dot8_signed(IQ2XS_GRID[usize::from(q & 511)], signs, &a.qs[8 * k..]);
            }
            sumi += scale16(&w[66..74], m) * dot;
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.125 * sum
}

/// IQ2_S (82 bytes: d f16, qs[32], signs[32], qh[8], scales[8]) · Q8_K. Grid row k is qs[k]
/// plus bits 2(k % 4).. of qh[k / 4] as bits 8-9; signs[k] holds its 8 signs.
pub(super) fn dot_iq2_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 82, "row is [blocks] of IQ2_S");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(82).zip(act) {
        let (qs, signs, qh) = (&w[2..34], &w[34..66], &w[66..74]);
        let mut sumi = 0i32;
        for m in 0..16 {
            let mut dot = 0;
            for k in 2 * m..2 * m + 2 {
                let high = usize::from((qh[k / 4] >> (2 * (k % 4))) & 3) << 8;
                let row = IQ2S_GRID[usize::from(qs[k]) | high];
                dot += dot8_signed(row, signs[k], &a.qs[8 * k..]);
            }
            sumi += scale16(&w[74..82], m) * dot;
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.125 * sum
}

/// IQ1_S (50 bytes: d f16, qs[32], 8 u16 qh) · Q8_K. x = d (2s + 1) (g ± 1/8): the grid term
/// is 8 Σ (2s + 1) Σ g·y and the shift ±Σ (2s + 1) (bsums of the sub-block), both integers.
pub(super) fn dot_iq1_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 50, "row is [blocks] of IQ1_S");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(50).zip(act) {
        let mut sumi = 0i32;
        for i in 0..8 {
            let qh = u32::from(u16_at(w, 34 + 2 * i));
            let mut dot = 0;
            for l in 0..4 {
                let index = usize::from(w[2 + 4 * i + l]) | (((qh >> (3 * l)) & 7) as usize) << 8;
                dot += dot8_iq1(IQ1S_GRID[index], 0, &a.qs[32 * i + 8 * l..]);
            }
            let ysum = i32::from(a.bsums[2 * i]) + i32::from(a.bsums[2 * i + 1]);
            let shift = if qh & 0x8000 == 0 { ysum } else { -ysum };
            sumi += odd(qh >> 12 & 7) * (dot + shift);
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.125 * sum
}

/// The d of an IQ1_M block: an f16 spread over the top nibbles of its four scale u16s.
pub(super) fn iq1_m_d(w: &[u8]) -> u16 {
    let sc: [u16; 4] = std::array::from_fn(|i| u16_at(w, 48 + 2 * i));
    (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)
}

/// IQ1_M (56 bytes: qs[32], qh[16], 4 u16 scales) · Q8_K. Row k (8 elements) takes bits 8-10
/// of its index and the sign of its ±1/8 shift from nibble k % 2 of qh[k / 2]; elements
/// 16m..16m+16 take the 3-bit scale at bits 3(m % 4).. of scale u16 m / 4.
pub(super) fn dot_iq1_m(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 56, "row is [blocks] of IQ1_M");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(56).zip(act) {
        let d = half::f16::from_bits(iq1_m_d(w)).to_f32();
        let mut sumi = 0i32;
        for m in 0..16 {
            let s = u32::from(u16_at(w, 48 + 2 * (m / 4)) >> (3 * (m % 4)));
            let mut dot = 0;
            for k in 2 * m..2 * m + 2 {
                let nibble = (w[32 + k / 2] >> (4 * (k % 2))) & 0x0f;
                let index = usize::from(w[k]) | (usize::from(nibble & 7) << 8);
                let delta = if nibble & 8 == 0 { 1 } else { -1 };
                dot += dot8_iq1(IQ1S_GRID[index], delta, &a.qs[8 * k..]);
            }
            sumi += odd(s & 7) * dot;
        }
        sum += d * a.d * sumi as f32;
    }
    0.125 * sum
}
