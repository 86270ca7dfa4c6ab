//! AVX2 + FMA + F16C dot kernels for the formats of `scalar_block32` (Q4_1, Q5_0, Q5_1, IQ4_NL,
//! MXFP4, NVFP4), after ggml's AVX2 paths: the codes of a block unpacked to 32 bytes (a fifth
//! bit from a bit mask, the non-linear levels by `_mm256_shuffle_epi8` from a 16-entry table),
//! `maddubs` + `madd` into i32 lanes, one f32 FMA per block into one of two accumulators. Same
//! integer sums as `scalar_block32`; only the f32 summation order differs.
//!
//! # Safety
//! As `avx2`: every kernel is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`
//! that the caller may run only where those features were detected; raw loads stay inside the
//! block ranges that the `assert_eq!` on the row length at the top of each kernel guarantees.

use std::arch::x86_64::*;

use super::act::{ActQ8_0, ActQ8_1};
use super::avx2::{bit_mask32, f16_splat, f16_splat4, hsum_ps, load128, mul_sum_i8_pairs};
use super::avx2::{nibbles32, prefetch};
use super::scalar_block32::{e8m0_half, UE4M3_HALF};
use crate::quant::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};

/// A 16-entry i8 table in both 128-bit halves, for `_mm256_shuffle_epi8` lookups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn table16(values: &[i8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(load128(&values.map(|v| v as u8)))
}

/// Σ q·y of unsigned codes q (below 128) and signed y, in 8 i32 lanes as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_u8_i8(q: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_qs(qs: &[i8; 32]) -> __m256i {
    _mm256_loadu_si256(qs.as_ptr().cast())
}

/// Σ d·p over the blocks, `block(b, a)` giving block b's f32 scale and lane sums, in two
/// accumulators (even and odd blocks): a small block is quick to unpack, and with one
/// accumulator each block's FMA would wait for the last one's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_blocks<A>(act: &[A], mut block: impl FnMut(usize, &A) -> (__m256, __m256)) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut pairs = act.chunks_exact(2);
    for (k, a) in pairs.by_ref().enumerate() {
        for (j, (acc, a)) in acc.iter_mut().zip(a).enumerate() {
            let (d, p) = block(2 * k + j, a);
            *acc = _mm256_fmadd_ps(d, p, *acc);
        }
    }
    if let [a] = pairs.remainder() {
        let (d, p) = block(act.len() - 1, a);
        acc[0] = _mm256_fmadd_ps(d, p, acc[0]);
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_1 (20 bytes: d, m f16, qs[16]) · Q8_1: d_w d_a Σ q y + m s_a per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1(row: &[u8], act: &[ActQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len() * 20, "row is [blocks] of Q4_1");
    let w = row.as_ptr();
    let mut acc_m = _mm_setzero_ps();
    let sum = sum_blocks(act, |b, a| {
        let blk = w.add(20 * b);
        prefetch(blk, 20);
        acc_m = _mm_fmadd_ps(f16_splat4(blk.add(2)), _mm_set1_ps(a.s), acc_m);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        (d, mul_sum_u8_i8(nibbles32(blk.add(4)), load_qs(&a.qs)))
    });
    sum + _mm_cvtss_f32(acc_m)
}

/// Q5_0 (22 bytes: d f16, qh u32, qs[16]) · Q8_0: q - 16 is the nibble, minus 16 where the
/// fifth bit is clear.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 22, "row is [blocks] of Q5_0");
    let w = row.as_ptr();
    let sixteen = _mm256_set1_epi8(16);
    sum_blocks(act, |b, a| {
        let blk = w.add(22 * b);
        prefetch(blk, 22);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        let high = bit_mask32(blk.add(2).cast::<u32>().read_unaligned());
        let qx = _mm256_sub_epi8(nibbles32(blk.add(6)), _mm256_andnot_si256(high, sixteen));
        (d, mul_sum_i8_pairs(qx, load_qs(&a.qs)))
    })
}

/// Q5_1 (24 bytes: d, m f16, qh u32, qs[16]) · Q8_1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_1(row: &[u8], act: &[ActQ8_1]) -> f32 {
    assert_eq!(row.len(), act.len() * 24, "row is [blocks] of Q5_1");
    let w = row.as_ptr();
    let sixteen = _mm256_set1_epi8(16);
    let mut acc_m = _mm_setzero_ps();
    let sum = sum_blocks(act, |b, a| {
        let blk = w.add(24 * b);
        prefetch(blk, 24);
        acc_m = _mm_fmadd_ps(f16_splat4(blk.add(2)), _mm_set1_ps(a.s), acc_m);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        let high = bit_mask32(blk.add(4).cast::<u32>().read_unaligned());
        let qx = _mm256_or_si256(nibbles32(blk.add(8)), _mm256_and_si256(high, sixteen));
        (d, mul_sum_u8_i8(qx, load_qs(&a.qs)))
    });
    sum + _mm_cvtss_f32(acc_m)
}

/// IQ4_NL (18 bytes: d f16, qs[16]) · Q8_0, the levels looked up by `shuffle_epi8`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_nl(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 18, "row is [blocks] of IQ4_NL");
    let w = row.as_ptr();
    let values = table16(&KVALUES_IQ4NL);
    sum_blocks(act, |b, a| {
        let blk = w.add(18 * b);
        prefetch(blk, 18);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        let qx = _mm256_shuffle_epi8(values, nibbles32(blk.add(2)));
        (d, mul_sum_i8_pairs(qx, load_qs(&a.qs)))
    })
}

/// MXFP4 (17 bytes: e u8, qs[16]) · Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_mxfp4(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 17, "row is [blocks] of MXFP4");
    let w = row.as_ptr();
    let values = table16(&KVALUES_MXFP4);
    sum_blocks(act, |b, a| {
        let blk = w.add(17 * b);
        prefetch(blk, 17);
        let d = _mm256_set1_ps(e8m0_half(*blk) * a.d);
        let qx = _mm256_shuffle_epi8(values, nibbles32(blk.add(1)));
        (d, mul_sum_i8_pairs(qx, load_qs(&a.qs)))
    })
}

/// NVFP4 (36 bytes: 4 UE4M3 scales, qs[32]) · Q8_0, two activation blocks per weight block.
/// The 32 code bytes hold sub-blocks 0 and 2 (low nibbles of bytes 0..8 and 16..24 are their
/// first halves) in the two 128-bit lanes, and 1 and 3; 64-bit unpacks put each sub-block's
/// halves together and lane permutes put sub-blocks 0, 1 and 2, 3 beside their activations.
/// Lanes 0..4 of each `mul_sum_i8_pairs` are one sub-block, 4..8 the next.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_nvfp4(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len() * 2, act.len() * 36, "row is [blocks] of NVFP4");
    let w = row.as_ptr();
    let (values, m4) = (table16(&KVALUES_MXFP4), _mm256_set1_epi8(0x0f));
    let mut acc = _mm256_setzero_ps();
    for (b, a) in act.chunks_exact(2).enumerate() {
        let blk = w.add(36 * b);
        prefetch(blk, 36);
        let bits = _mm256_loadu_si256(blk.add(4).cast());
        let lo = _mm256_shuffle_epi8(values, _mm256_and_si256(bits, m4));
        let hi = _mm256_shuffle_epi8(values, _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4));
        let (even, odd) = (_mm256_unpacklo_epi64(lo, hi), _mm256_unpackhi_epi64(lo, hi));
        let halves = [
            _mm256_permute2x128_si256::<0x20>(even, odd),
            _mm256_permute2x128_si256::<0x31>(even, odd),
        ];
        for (h, (qx, a)) in halves.into_iter().zip(a).enumerate() {
            let sc = |s: usize| _mm_set1_ps(UE4M3_HALF[usize::from(*blk.add(s))]);
            let d = _mm256_mul_ps(_mm256_set_m128(sc(2 * h + 1), sc(2 * h)), _mm256_set1_ps(a.d));
            acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, load_qs(&a.qs)), acc);
        }
    }
    hsum_ps(acc)
}
