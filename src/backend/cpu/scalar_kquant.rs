//! Portable dot kernels for the sub-block-scaled 256-element formats beside Q4_K..Q6_K: Q2_K,
//! Q3_K and IQ4_XS, each against Q8_K activations. Integer sums per sub-block times the
//! sub-block's integer scale, summed per super-block, then the f32 scales as ggml's generic
//! `ggml_vec_dot_*_q8_K` apply them. The template for `avx2_kquant`.

use super::scalar::{dot, f16_at};
use crate::quant::grids::KVALUES_IQ4NL;
use crate::quant::{BlockQ8K, QK_K};

/// The 2-bit codes of a Q2_K/Q3_K super-block in element order: element 128h + 32s + l is
/// bits 2s..2s+2 of qs[32h + l].
fn crumbs(qs: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (q, bytes) in q.chunks_exact_mut(128).zip(qs.chunks_exact(32)) {
        for (s, q) in q.chunks_exact_mut(32).enumerate() {
            for (q, &b) in q.iter_mut().zip(bytes) {
                *q = (b >> (2 * s)) & 3;
            }
        }
    }
    q
}

/// Q2_K (84 bytes: scales[16], qs[64], d, dmin f16) · Q8_K. Sub-block i of 16 has scale
/// scales[i] & 15 and min scales[i] >> 4: x = d sc q - dmin m, so the min term is
/// Σ m · bsums[i].
pub(super) fn dot_q2_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 84, "row is [blocks] of Q2_K");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(84).zip(act) {
        let (scales, q) = (&w[..16], crumbs(&w[16..80]));
        let (mut sumi, mut summ) = (0i32, 0i32);
        let subs = q.chunks_exact(16).zip(a.qs.chunks_exact(16));
        for ((q, y), (&sc, &bsum)) in subs.zip(scales.iter().zip(&a.bsums)) {
            sumi += i32::from(sc & 0x0f) * dot(q, y);
            summ += i32::from(sc >> 4) * i32::from(bsum);
        }
        sum += a.d * f16_at(w, 80) * sumi as f32 - a.d * f16_at(w, 82) * summ as f32;
    }
    sum
}

/// The 16 6-bit scales of a Q3_K block (12 packed bytes), unsigned (the stored value; subtract
/// 32 for the scale), as four little-endian words of four: scale i's low nibble is the low
/// (i < 8) or high nibble of byte i % 8, its top 2 bits are bits 2(i / 4).. of byte 8 + i % 4.
#[inline(always)]
pub(super) fn unpack_scales_q3_k(packed: &[u8]) -> [u32; 4] {
    const LOW: u32 = 0x0f0f_0f0f;
    const TOP: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    [
        (w0 & LOW) | ((w2 & TOP) << 4),
        (w1 & LOW) | (((w2 >> 2) & TOP) << 4),
        ((w0 >> 4) & LOW) | (((w2 >> 4) & TOP) << 4),
        ((w1 >> 4) & LOW) | (((w2 >> 6) & TOP) << 4),
    ]
}

/// Q3_K (110 bytes: hmask[32], qs[64], scales[12], d f16) · Q8_K. Element e = 32g + l is
/// low2 + 4 h - 4 with h bit g of hmask[l], in -4..3; sub-block i of 16 scales it by
/// sc[i] - 32.
pub(super) fn dot_q3_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 110, "row is [blocks] of Q3_K");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(110).zip(act) {
        let hmask = &w[..32];
        let mut q = crumbs(&w[32..96]).map(|q| q as i8 - 4);
        // Group g of 32 takes 4 back where bit g of its hmask byte is set.
        for (g, q) in q.chunks_exact_mut(32).enumerate() {
            for (q, &h) in q.iter_mut().zip(hmask) {
                *q += (((h >> g) & 1) << 2) as i8;
            }
        }
        let words = unpack_scales_q3_k(&w[96..108]);
        let mut sumi = 0i32;
        for (i, (q, y)) in q.chunks_exact(16).zip(a.qs.chunks_exact(16)).enumerate() {
            let sc = i32::from((words[i / 4] >> (8 * (i % 4))) as u8) - 32;
            sumi += sc * dot(q, y);
        }
        sum += a.d * f16_at(w, 108) * sumi as f32;
    }
    sum
}

/// The 8 signed scales of an IQ4_XS block: sub-block i's low nibble is nibble i % 2 of
/// scales_l[i / 2], its top 2 bits are bits 2i.. of scales_h; minus 32.
pub(super) fn scales_iq4_xs(w: &[u8]) -> [i32; 8] {
    let high = u16::from_le_bytes([w[2], w[3]]);
    std::array::from_fn(|i| {
        let low = (w[4 + i / 2] >> (4 * (i % 2))) & 0x0f;
        i32::from(low | ((((high >> (2 * i)) & 3) as u8) << 4)) - 32
    })
}

/// IQ4_XS (136 bytes: d f16, scales_h u16, scales_l[4], qs[128]) · Q8_K. Sub-block i of 32
/// reads qs[16i..16i+16] as IQ4_NL does: x = d (ls - 32) KVALUES_IQ4NL[code].
pub(super) fn dot_iq4_xs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 136, "row is [blocks] of IQ4_XS");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(136).zip(act) {
        let mut sumi = 0i32;
        for (i, ls) in scales_iq4_xs(w).into_iter().enumerate() {
            let qs = &w[8 + 16 * i..24 + 16 * i];
            let mut levels = [0i8; 32];
            let (lo, hi) = levels.split_at_mut(16);
            for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
                *lo = KVALUES_IQ4NL[usize::from(q & 0x0f)];
                *hi = KVALUES_IQ4NL[usize::from(q >> 4)];
            }
            sumi += ls * dot(&levels, &a.qs[32 * i..32 * i + 32]);
        }
        sum += f16_at(w, 0) * a.d * sumi as f32;
    }
    sum
}

const _: () = assert!(QK_K == 256, "the layouts above are for 256-element super-blocks");
