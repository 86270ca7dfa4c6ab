//! AVX2 + FMA + F16C dot kernels for the formats of `scalar_kquant` (Q2_K, Q3_K, IQ4_XS), after
//! ggml's AVX2 paths: 32 codes per step unpacked to bytes, `maddubs` against the Q8_K quants,
//! then `madd` with the sub-block scales broadcast by byte shuffles, i32 lanes summed per
//! super-block and one f32 FMA per super-block. Same integer sums as `scalar_kquant`; only the
//! f32 summation order differs.
//!
//! # Safety
//! As `avx2`: every kernel is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`
//! that the caller may run only where those features were detected; raw loads stay inside the
//! block ranges that the `assert_eq!` on the row length at the top of each kernel guarantees.

use std::arch::x86_64::*;

use super::avx2::{dot_tokens, f16_splat, half_both, hsum_ps, load, load128, prefetch};
use super::avx2::{token_rows, SHUFFLE_K4, SHUFFLE_PAIR};
use crate::quant::grids::KVALUES_IQ4NL;
use crate::quant::BlockQ8K;

/// The four 2-bit fields of 32 bytes, field s (bits 2s..2s+2) of byte l as byte l of vector s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn crumbs(bits: __m256i) -> [__m256i; 4] {
    let m3 = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(bits, m3),
        _mm256_and_si256(_mm256_srli_epi16::<2>(bits), m3),
        _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m3),
        _mm256_and_si256(_mm256_srli_epi16::<6>(bits), m3),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_q8(a: &BlockQ8K, at: usize) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr().add(at).cast())
}

/// Q2_K (84 bytes: scales[16], qs[64], d, dmin f16) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q2_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 84, "row is [blocks] of Q2_K");
    let m4 = _mm_set1_epi8(0x0f);
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (w, a) in row.chunks_exact(84).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 84);
        let packed = _mm_loadu_si128(wp.cast());
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
        let bsums = _mm256_loadu_si256(a.bsums.as_ptr().cast());
        let dmin = _mm256_mul_ps(f16_splat(wp.add(82)), _mm256_set1_ps(-a.d));
        acc_m = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, bsums)), acc_m);
        let scales = _mm256_cvtepu8_epi16(_mm_and_si128(packed, m4));
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let sc = half_both(scales, h);
            let q2 = crumbs(_mm256_loadu_si256(wp.add(16 + 32 * h).cast()));
            for (s, q2) in q2.into_iter().enumerate() {
                let p = _mm256_maddubs_epi16(q2, load_q8(a, 128 * h + 32 * s));
                let scale = _mm256_shuffle_epi8(sc, load(&SHUFFLE_PAIR[s]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
            }
        }
        let d = _mm256_mul_ps(f16_splat(wp.add(80)), _mm256_set1_ps(a.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps(acc_m)
}

/// The 16 scales of a Q3_K block (12 packed bytes at p) minus 32, as i16 lanes: the low
/// nibbles of bytes 0..8 then their high nibbles, or'd with bits 2(i / 4).. of byte 8 + i % 4
/// (a variable 32-bit shift per group of four). `scalar_kquant::unpack_scales_q3_k` in SIMD,
/// several times cheaper than building the vector from its words.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_q3_k(p: *const u8) -> __m256i {
    let m4 = _mm_set1_epi8(0x0f);
    let low8 = _mm_loadl_epi64(p.cast());
    let lows =
        _mm_unpacklo_epi64(_mm_and_si128(low8, m4), _mm_and_si128(_mm_srli_epi16::<4>(low8), m4));
    let top4 = _mm_set1_epi32(p.add(8).cast::<i32>().read_unaligned());
    let tops = _mm_and_si128(_mm_srlv_epi32(top4, _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    let sc = _mm_or_si128(lows, _mm_slli_epi16::<4>(tops));
    _mm256_cvtepi8_epi16(_mm_sub_epi8(sc, _mm_set1_epi8(32)))
}

/// Q3_K (110 bytes: hmask[32], qs[64], scales[12], d f16) · Q8_K: `dot_q3_k_multi` for one
/// token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q3_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_q3_k_multi::<1>(row, act)[0]
}

dot_tokens!(dot_q3_k_tokens, dot_q3_k_multi);

/// Q3_K · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once. The
/// codes go to `maddubs` unsigned, low2 + 4 h in 0..8; the -4 comes back as -4 Σ sc bsum, one
/// `madd` per block and token. The high bit of group g (32 elements) is bit g of each hmask
/// byte, taken as bit 0 of the mask shifted right g times: 16-bit shifts carry bits of the
/// next byte only into bits that have already been used.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q3_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 110;
    assert_eq!(row.len(), blocks * 110, "row is [blocks] of Q3_K");
    let rows = token_rows::<T>(act, blocks);
    let four = _mm256_set1_epi8(4);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, w) in row.chunks_exact(110).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 110);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let scales = scales_q3_k(wp.add(96));
        let mut sumi: [__m256i; T] = std::array::from_fn(|t| {
            let bsums = _mm256_loadu_si256(a[t].bsums.as_ptr().cast());
            let offset = _mm256_slli_epi32::<2>(_mm256_madd_epi16(scales, bsums));
            _mm256_sub_epi32(_mm256_setzero_si256(), offset)
        });
        let mut hmask = _mm256_loadu_si256(wp.cast());
        for h in 0..2 {
            let sc = half_both(scales, h);
            let q2 = crumbs(_mm256_loadu_si256(wp.add(32 + 32 * h).cast()));
            for (s, q2) in q2.into_iter().enumerate() {
                let high = _mm256_and_si256(_mm256_slli_epi16::<2>(hmask), four);
                hmask = _mm256_srli_epi16::<1>(hmask);
                let q3 = _mm256_or_si256(q2, high);
                let scale = _mm256_shuffle_epi8(sc, load(&SHUFFLE_PAIR[s]));
                for t in 0..T {
                    let p = _mm256_maddubs_epi16(q3, load_q8(a[t], 128 * h + 32 * s));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(scale, p));
                }
            }
        }
        let d_w = f16_splat(wp.add(108));
        for t in 0..T {
            let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum_ps(acc[t]))
}

/// The 8 scales of an IQ4_XS block minus 32, as i16 in both 128-bit halves: the low nibbles
/// interleaved from scales_l's bytes, the top 2 bits of scale i shifted up from bits 2i.. of
/// scales_h by a multiply (i16 lane i times 2^(14 - 2i), then >> 14).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_iq4_xs(wp: *const u8) -> __m256i {
    let high = wp.add(2).cast::<i16>().read_unaligned();
    let low = _mm_cvtsi32_si128(wp.add(4).cast::<i32>().read_unaligned());
    let m4 = _mm_set1_epi8(0x0f);
    let low =
        _mm_unpacklo_epi8(_mm_and_si128(low, m4), _mm_and_si128(_mm_srli_epi16::<4>(low), m4));
    let shifts = _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1);
    let top = _mm_srli_epi16::<14>(_mm_mullo_epi16(_mm_set1_epi16(high), shifts));
    let sc = _mm_or_si128(_mm_cvtepu8_epi16(low), _mm_slli_epi16::<4>(top));
    let sc = _mm_sub_epi16(sc, _mm_set1_epi16(32));
    _mm256_set_m128i(sc, sc)
}

/// IQ4_XS (136 bytes: d f16, scales_h u16, scales_l[4], qs[128]) · Q8_K: `dot_iq4_xs_multi`
/// for one token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_xs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_iq4_xs_multi::<1>(row, act)[0]
}

dot_tokens!(dot_iq4_xs_tokens, dot_iq4_xs_multi);

/// IQ4_XS · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once.
/// Each 32-byte load of qs holds two sub-blocks; lane permutes pair each one's low and high
/// nibbles. The levels are signed: `maddubs` takes their magnitudes and the quants signed by
/// them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_xs_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 136;
    assert_eq!(row.len(), blocks * 136, "row is [blocks] of IQ4_XS");
    let rows = token_rows::<T>(act, blocks);
    let values = _mm256_broadcastsi128_si256(load128(&KVALUES_IQ4NL.map(|v| v as u8)));
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, w) in row.chunks_exact(136).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 136);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let scales = scales_iq4_xs(wp);
        let mut sumi = [_mm256_setzero_si256(); T];
        for pair in 0..4 {
            let bits = _mm256_loadu_si256(wp.add(8 + 32 * pair).cast());
            let lo = _mm256_shuffle_epi8(values, _mm256_and_si256(bits, m4));
            let hi =
                _mm256_shuffle_epi8(values, _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4));
            let subs = [
                _mm256_permute2x128_si256::<0x20>(lo, hi),
                _mm256_permute2x128_si256::<0x31>(lo, hi),
            ];
            for (k, q) in subs.into_iter().enumerate() {
                let i = 2 * pair + k;
                let magnitude = _mm256_sign_epi8(q, q);
                let scale = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[i]));
                for t in 0..T {
                    let y = _mm256_sign_epi8(load_q8(a[t], 32 * i), q);
                    let p = _mm256_maddubs_epi16(magnitude, y);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(scale, p));
                }
            }
        }
        let d_w = f16_splat(wp);
        for t in 0..T {
            let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum_ps(acc[t]))
}
