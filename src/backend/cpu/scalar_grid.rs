//! Portable dot kernels for the grid i-quants, each against Q8_K activations: IQ3_XXS, IQ3_S,
//! IQ2_XXS, IQ2_XS, IQ2_S (unsigned grid rows with one sign bit per element), IQ1_S and IQ1_M
//! (rows of -1, 0, 1 shifted by ±1/8). Integer sums per sub-block times its odd integer scale
//! 2s + 1, summed per super-block; the constant factor of each format's scale (1/4 for IQ3_XXS,
//! 1/8 for IQ2 and IQ1) is applied once at the end, as ggml's generic kernels do. IQ1's ±1/8
//! shift is kept in integers by summing 8·grid ± 1. The template for `avx2_grid`.

use super::scalar::{dot, f16_at};
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

/// Eight grid values ±g into v: g the bytes of `row` (below 128), bit j of `signs` negating
/// element j (branch-free: g xor -1, plus 1).
fn signed8(v: &mut [i8], row: u64, signs: u8) {
    for (j, v) in v[..8].iter_mut().enumerate() {
        let g = (row >> (8 * j)) as u8 as i8;
        let negative = -(((signs >> j) & 1) as i8);
        *v = (g ^ negative) - negative;
    }
}

/// Eight IQ1 values 8g + delta into v, g the signed bytes (-1, 0, 1) of a grid row.
fn shifted8(v: &mut [i8], row: u64, delta: i8) {
    for (j, v) in v[..8].iter_mut().enumerate() {
        *v = 8 * ((row >> (8 * j)) as u8 as i8) + delta;
    }
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
        for (i, y) in a.qs.chunks_exact(32).enumerate() {
            let aux = u32_at(w, 66 + 4 * i);
            let mut v = [0i8; 32];
            for (l, v) in v.chunks_exact_mut(8).enumerate() {
                let k = 2 + 8 * i + 2 * l;
                let rows = [IQ3XXS_GRID[usize::from(w[k])], IQ3XXS_GRID[usize::from(w[k + 1])]];
                let row = u64::from(rows[0]) | (u64::from(rows[1]) << 32);
                signed8(v, row, KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize]);
            }
            sumi += odd(aux >> 28) * dot(&v, y);
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
        for (i, y) in a.qs.chunks_exact(32).enumerate() {
            let grid = |k: usize| {
                let high = usize::from((qh[i] >> (k % 8)) & 1) << 8;
                u64::from(IQ3S_GRID[usize::from(qs[k]) | high])
            };
            let mut v = [0i8; 32];
            for (l, v) in v.chunks_exact_mut(8).enumerate() {
                let k = 8 * i + 2 * l;
                signed8(v, grid(k) | (grid(k + 1) << 32), signs[4 * i + l]);
            }
            sumi += odd(u32::from(scales[i / 2] >> (4 * (i % 2)))) * dot(&v, y);
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
        for (i, y) in a.qs.chunks_exact(32).enumerate() {
            let (aux0, aux1) = (u32_at(w, 2 + 8 * i), u32_at(w, 6 + 8 * i));
            let mut v = [0i8; 32];
            for (l, v) in v.chunks_exact_mut(8).enumerate() {
                let row = IQ2XXS_GRID[((aux0 >> (8 * l)) & 0xff) as usize];
                signed8(v, row, KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize]);
            }
            sumi += odd(aux1 >> 28) * dot(&v, y);
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    0.125 * sum
}

/// The odd scale of elements 16m..16m+16 in IQ2_XS / IQ2_S: nibble m % 2 of scales[m / 2].
fn scale16(scales: &[u8], m: usize) -> i32 {
    odd(u32::from(scales[m / 2] >> (4 * (m % 2))))
}

/// Σ over the 16 groups of 16 of a 256-element block: scale16 times the dot of the values.
fn sum_groups16(v: &[i8; 256], scales: &[u8], a: &BlockQ8K) -> i32 {
    let groups = v.chunks_exact(16).zip(a.qs.chunks_exact(16));
    groups.enumerate().map(|(m, (v, y))| scale16(scales, m) * dot(v, y)).sum()
}

/// IQ2_XS (74 bytes: d f16, 32 u16 (9-bit grid row, 7-bit sign index), scales[8]) · Q8_K.
pub(super) fn dot_iq2_xs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 74, "row is [blocks] of IQ2_XS");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(74).zip(act) {
        let mut v = [0i8; 256];
        for (k, v) in v.chunks_exact_mut(8).enumerate() {
            let q = u16_at(w, 2 + 2 * k);
            signed8(v, IQ2XS_GRID[usize::from(q & 511)], KSIGNS_IQ2XS[usize::from(q >> 9)]);
        }
        sum += f16_at(w, 0) * a.d * sum_groups16(&v, &w[66..74], a) as f32;
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
        let mut v = [0i8; 256];
        for (k, v) in v.chunks_exact_mut(8).enumerate() {
            let high = usize::from((qh[k / 4] >> (2 * (k % 4))) & 3) << 8;
            signed8(v, IQ2S_GRID[usize::from(qs[k]) | high], signs[k]);
        }
        sum += f16_at(w, 0) * a.d * sum_groups16(&v, &w[74..82], a) as f32;
    }
    0.125 * sum
}

/// IQ1_S (50 bytes: d f16, qs[32], 8 u16 qh) · Q8_K. x = d (2s + 1) (g ± 1/8): per sub-block
/// of 32, 8 Σ g·y plus ± Σ y (its two bsums), times 2s + 1, all integers; / 8 at the end.
pub(super) fn dot_iq1_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 50, "row is [blocks] of IQ1_S");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(50).zip(act) {
        let mut sumi = 0i32;
        for (i, y) in a.qs.chunks_exact(32).enumerate() {
            let qh = u32::from(u16_at(w, 34 + 2 * i));
            let mut v = [0i8; 32];
            for (l, v) in v.chunks_exact_mut(8).enumerate() {
                let index = usize::from(w[2 + 4 * i + l]) | (((qh >> (3 * l)) & 7) as usize) << 8;
                shifted8(v, IQ1S_GRID[index], 0);
            }
            let ysum = i32::from(a.bsums[2 * i]) + i32::from(a.bsums[2 * i + 1]);
            let shift = if qh & 0x8000 == 0 { ysum } else { -ysum };
            sumi += odd(qh >> 12 & 7) * (dot(&v, y) + shift);
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
        let mut v = [0i8; 256];
        for (k, v) in v.chunks_exact_mut(8).enumerate() {
            let nibble = (w[32 + k / 2] >> (4 * (k % 2))) & 0x0f;
            let index = usize::from(w[k]) | (usize::from(nibble & 7) << 8);
            shifted8(v, IQ1S_GRID[index], if nibble & 8 == 0 { 1 } else { -1 });
        }
        let groups = v.chunks_exact(16).zip(a.qs.chunks_exact(16)).enumerate();
        let sumi: i32 = groups
            .map(|(m, (v, y))| {
                let s = u32::from(u16_at(w, 48 + 2 * (m / 4)) >> (3 * (m % 4)));
                odd(s & 7) * dot(v, y)
            })
            .sum();
        sum += d * a.d * sumi as f32;
    }
    0.125 * sum
}
