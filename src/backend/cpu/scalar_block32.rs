//! Portable dot kernels for the 32-element formats beside Q8_0 and Q4_0, and NVFP4: Q4_1, Q5_0,
//! Q5_1, IQ4_NL, MXFP4 (one Q8_0 or Q8_1 activation block per weight block) and NVFP4 (64
//! elements, two Q8_0 blocks). Integer sums per block (per 16-element sub-block for NVFP4), the
//! scales applied in f32 as ggml's generic `ggml_vec_dot_*` do. The template for
//! `avx2_block32`.
//!
//! NVFP4 takes Q8_0 activations, as in ggml: its four 16-element sub-blocks nest in the 32-element
//! Q8_0 blocks, so each sub-block is one integer sum under one product of scales; Q8_K would
//! put an outlier's coarse scale on 256 activations instead of 32 for no gain in the kernel.

use super::act::{ActQ8_0, ActQ8_1};
use super::scalar::{dot, f16_at};
use crate::quant::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};
use crate::quant::QK8_0;

/// The 32 codes of a 16-byte run of nibbles: byte j holds element j (low nibble) and j + 16
/// (high); with `high`, bit j of that u32 adds 16 to element j (the 5-bit formats).
fn codes(qs: &[u8], high: u32) -> [u8; QK8_0] {
    let mut codes = [0u8; QK8_0];
    let (lo, hi) = codes.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
        (*lo, *hi) = (q & 0x0f, q >> 4);
    }
    for (j, c) in codes.iter_mut().enumerate() {
        *c |= (((high >> j) & 1) as u8) << 4;
    }
    codes
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Σ w·y over one block, w given as 32 values through `value`.
fn dot32(codes: &[u8; QK8_0], y: &[i8; QK8_0], value: impl Fn(u8) -> i32) -> i32 {
    codes.iter().zip(y).map(|(&c, &y)| value(c) * i32::from(y)).sum()
}

/// ggml_e8m0_to_fp32_half: 2^(e - 128), e < 2 as the subnormals 2^-128 and 2^-127.
pub(super) fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { u32::from(e - 1) << 23 };
    f32::from_bits(bits)
}

/// NVFP4's unsigned E4M3 scale bytes (bias 7), halved as `KVALUES_MXFP4`'s doubled levels need:
/// (1 + m/8) 2^(e-8), subnormals m 2^-10. Bit 7 is not part of the value, but only 0 and 0x7f
/// read as 0 (gguf-py's and ggml's `ue4m3_to_fp32`), so 0xff is 240.
pub(super) const UE4M3_HALF: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut x = 1;
    while x < 256 {
        let (exp, man) = ((x >> 3) & 0x0f, x & 7);
        t[x] = if exp == 0 {
            man as f32 / 1024.0
        } else {
            f32::from_bits((((exp + 119) << 23) | (man << 20)) as u32)
        };
        x += 1;
    }
    t[0x7f] = 0.0;
    t
};

/// Q4_1 (20 bytes: d, m f16, qs[16]; x = d q + m) · Q8_1.
pub(super) fn dot_q4_1(row: &[u8], act: &[ActQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len() * 20, "row is [blocks] of Q4_1");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(20).zip(act) {
        let sumi = dot32(&codes(&w[4..20], 0), &a.qs, i32::from);
        sum += f16_at(w, 0) * a.d * sumi as f32 + f16_at(w, 2) * a.s;
    }
    sum
}

/// Q5_0 (22 bytes: d f16, qh u32, qs[16]; x = d (q - 16)) · Q8_0.
pub(super) fn dot_q5_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 22, "row is [blocks] of Q5_0");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(22).zip(act) {
        let sumi = dot32(&codes(&w[6..22], u32_at(w, 2)), &a.qs, |q| i32::from(q) - 16);
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    sum
}

/// Q5_1 (24 bytes: d, m f16, qh u32, qs[16]; x = d q + m) · Q8_1.
pub(super) fn dot_q5_1(row: &[u8], act: &[ActQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len() * 24, "row is [blocks] of Q5_1");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(24).zip(act) {
        let sumi = dot32(&codes(&w[8..24], u32_at(w, 4)), &a.qs, i32::from);
        sum += f16_at(w, 0) * a.d * sumi as f32 + f16_at(w, 2) * a.s;
    }
    sum
}

/// IQ4_NL (18 bytes: d f16, qs[16]; x = d KVALUES_IQ4NL[code]) · Q8_0.
pub(super) fn dot_iq4_nl(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 18, "row is [blocks] of IQ4_NL");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(18).zip(act) {
        let sumi = dot32(&codes(&w[2..18], 0), &a.qs, |c| i32::from(KVALUES_IQ4NL[usize::from(c)]));
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    sum
}

/// MXFP4 (17 bytes: e u8, qs[16]; x = e8m0_half(e) KVALUES_MXFP4[code]) · Q8_0.
pub(super) fn dot_mxfp4(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 17, "row is [blocks] of MXFP4");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(17).zip(act) {
        let sumi = dot32(&codes(&w[1..17], 0), &a.qs, |c| i32::from(KVALUES_MXFP4[usize::from(c)]));
        sum += e8m0_half(w[0]) * a.d * sumi as f32;
    }
    sum
}

/// NVFP4 (36 bytes: 4 UE4M3 scales, qs[32]) · Q8_0, two activation blocks per weight block.
/// Sub-block s (16 elements) reads qs[8s..8s+8], element j in the low nibble, j + 8 in the high.
pub(super) fn dot_nvfp4(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len() * 2, act.len() * 36, "row is [blocks] of NVFP4");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(36).zip(act.chunks_exact(2)) {
        for s in 0..4 {
            let (qs, a) = (&w[4 + 8 * s..12 + 8 * s], &a[s / 2]);
            let mut levels = [0i8; 16];
            let (lo, hi) = levels.split_at_mut(8);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
                *lo = KVALUES_MXFP4[usize::from(q & 0x0f)];
                *hi = KVALUES_MXFP4[usize::from(q >> 4)];
            }
            let sumi = dot(&levels, &a.qs[16 * (s % 2)..16 * (s % 2) + 16]);
            sum += UE4M3_HALF[usize::from(w[s])] * a.d * sumi as f32;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, GgmlType};

    #[test]
    fn scale_tables_match_the_dequantizers() {
        // Every code 2 (level 2): each element is twice its block's (sub-block's) scale.
        for x in 0..=255u8 {
            let mut nvfp4 = [0x22u8; 36];
            nvfp4[..4].fill(x);
            let mut y = [0f32; 64];
            dequantize(GgmlType::NVFP4, &nvfp4, &mut y).unwrap();
            let want = 2.0 * UE4M3_HALF[usize::from(x)];
            assert!(y.iter().all(|v| v.to_bits() == want.to_bits()), "UE4M3 {x:#04x}: {y:?}");
            let mut mxfp4 = [0x22u8; 17];
            mxfp4[0] = x;
            let mut y = [0f32; 32];
            dequantize(GgmlType::MXFP4, &mxfp4, &mut y).unwrap();
            let want = 2.0 * e8m0_half(x);
            assert!(y.iter().all(|v| v.to_bits() == want.to_bits()), "E8M0 {x}: {y:?}");
        }
    }
}
