//! AVX2 + FMA + F16C dot kernels for the grid i-quants of `scalar_grid`, after ggml's AVX2
//! paths: 32 elements per step, their grid rows gathered by scalar table loads into one vector
//! (`_mm256_set_epi*`; faster than `vpgatherdd` on AMD cores), the signs applied to the Q8_K
//! quants (`sign_epi8` from the 8-byte sign patterns of `KSIGNS_IQ2XS`, or xor/sub with a
//! mask spread from the sign bits), `maddubs` of the unsigned grid values with the signed
//! quants, `madd` with the odd sub-block scales. Same integer sums as `scalar_grid`; only the
//! f32 summation order differs.
//!
//! # Safety
//! As `avx2`: every kernel is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`
//! that the caller may run only where those features were detected; raw loads stay inside the
//! block ranges that the `assert_eq!` on the row length at the top of each kernel guarantees.

use std::arch::x86_64::*;

use super::avx2::{bit_mask32, dot_tokens, f16_splat, half_both, hsum_ps, load, prefetch};
use super::avx2::{token_rows, SHUFFLE_K4, SHUFFLE_PAIR};
use super::scalar_grid::iq1_m_d;
use crate::quant::grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
};
use crate::quant::BlockQ8K;

/// `KSIGNS_IQ2XS` as 8-byte `sign_epi8` operands: byte j is -1 where bit j is set, else 1.
const SIGNS64: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let mut j = 0;
        while j < 8 {
            let byte: u64 = if KSIGNS_IQ2XS[i] & (1 << j) != 0 { 0xff } else { 0x01 };
            t[i] |= byte << (8 * j);
            j += 1;
        }
        i += 1;
    }
    t
};

/// The sign operands of 32 elements from four 7-bit `KSIGNS_IQ2XS` indices (bits 7l.. of aux).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ksigns4(aux: u32) -> __m256i {
    let s = |l: u32| SIGNS64[((aux >> (7 * l)) & 127) as usize] as i64;
    _mm256_setr_epi64x(s(0), s(1), s(2), s(3))
}

/// Four 8-byte grid rows (table length a power of two; indices wrap, they never exceed it).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows4<const N: usize>(grid: &[u64; N], idx: [usize; 4]) -> __m256i {
    let r = |k: usize| grid[idx[k] & (N - 1)] as i64;
    _mm256_setr_epi64x(r(0), r(1), r(2), r(3))
}

/// Eight 4-byte grid rows (as `rows4`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows8<const N: usize>(grid: &[u32; N], idx: [usize; 8]) -> __m256i {
    let r = |k: usize| grid[idx[k] & (N - 1)] as i32;
    _mm256_setr_epi32(r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_q8(a: &BlockQ8K, at: usize) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr().add(at).cast())
}

/// y negated where `mask` is 0xff.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn negate_where(y: __m256i, mask: __m256i) -> __m256i {
    _mm256_sub_epi8(_mm256_xor_si256(y, mask), mask)
}

/// 2s + 1 for the 16 nibbles s of 8 bytes (byte k: nibbles 2k, 2k + 1), as i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn odd_scales16(p: *const u8) -> __m256i {
    let bytes = _mm_loadl_epi64(p.cast());
    let m4 = _mm_set1_epi8(0x0f);
    let nibbles =
        _mm_unpacklo_epi8(_mm_and_si128(bytes, m4), _mm_and_si128(_mm_srli_epi16::<4>(bytes), m4));
    let s = _mm256_cvtepu8_epi16(nibbles);
    _mm256_or_si256(_mm256_slli_epi16::<1>(s), _mm256_set1_epi16(1))
}

/// The f32 factor of one super-block: its f16 d (at p) times the activations' d.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn d_times(p: *const u8, a: &BlockQ8K) -> __m256 {
    _mm256_mul_ps(f16_splat(p), _mm256_set1_ps(a.d))
}

/// IQ3_XXS (98 bytes: d f16, qs[64], 8 u32 scale-and-signs) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq3_xxs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 98, "row is [blocks] of IQ3_XXS");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(98).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 98);
        let mut sumi = _mm256_setzero_si256();
        for i in 0..8 {
            let grid = rows8(&IQ3XXS_GRID, std::array::from_fn(|j| usize::from(w[2 + 8 * i + j])));
            let aux = wp.add(66 + 4 * i).cast::<u32>().read_unaligned();
            let y = _mm256_sign_epi8(load_q8(a, 32 * i), ksigns4(aux));
            let scale = _mm256_set1_epi16(2 * (aux >> 28) as i16 + 1);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(grid, y), scale));
        }
        acc = _mm256_fmadd_ps(d_times(wp, a), _mm256_cvtepi32_ps(sumi), acc);
    }
    0.25 * hsum_ps(acc)
}

/// i16 lane j: bit j (the qh pair of two IQ3_S sub-blocks against their 16 grid indices).
const BIT16: [u16; 16] = {
    let mut t = [0u16; 16];
    let mut j = 0;
    while j < 16 {
        t[j] = 1 << j;
        j += 1;
    }
    t
};

/// The 8 scales 2s + 1 of an IQ3_S block (nibbles of scales[4] at p), as i16 in both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_iq3_s(p: *const u8) -> __m256i {
    let m4 = _mm_set1_epi8(0x0f);
    let packed = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
    let nibbles = _mm_unpacklo_epi8(
        _mm_and_si128(packed, m4),
        _mm_and_si128(_mm_srli_epi16::<4>(packed), m4),
    );
    let s = _mm_or_si128(_mm_slli_epi16::<1>(_mm_cvtepu8_epi16(nibbles)), _mm_set1_epi16(1));
    _mm256_set_m128i(s, s)
}

/// The 16 grid indices of IQ3_S sub-blocks 2 pair, 2 pair + 1 (qs widened, bit j of the qh
/// pair as 256), out of the vector as four u64s of four (16-bit lane extracts cost more).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn indices_iq3_s(wp: *const u8, pair: usize) -> [u64; 4] {
    let bit = _mm256_loadu_si256(BIT16.as_ptr().cast());
    let low = _mm256_cvtepu8_epi16(_mm_loadu_si128(wp.add(2 + 16 * pair).cast()));
    let qh = _mm256_set1_epi16(wp.add(66 + 2 * pair).cast::<i16>().read_unaligned());
    let high = _mm256_cmpeq_epi16(_mm256_and_si256(qh, bit), bit);
    let idx = _mm256_or_si256(low, _mm256_and_si256(high, _mm256_set1_epi16(256)));
    let (lo, hi) = (_mm256_castsi256_si128(idx), _mm256_extracti128_si256::<1>(idx));
    [
        _mm_cvtsi128_si64(lo),
        _mm_extract_epi64::<1>(lo),
        _mm_cvtsi128_si64(hi),
        _mm_extract_epi64::<1>(hi),
    ]
    .map(|q| q as u64)
}

/// IQ3_S (110 bytes: d f16, qs[64], qh[8], signs[32], scales[4]) · Q8_K: `dot_iq3_s_multi`
/// for one token.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq3_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_iq3_s_multi::<1>(row, act)[0]
}

dot_tokens!(dot_iq3_s_tokens, dot_iq3_s_multi);

/// IQ3_S · Q8_K for T tokens at once (act: [T, blocks]): the grid rows (the bulk of the work)
/// and the sign masks of each sub-block built once for all T.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq3_s_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 110;
    assert_eq!(row.len(), blocks * 110, "row is [blocks] of IQ3_S");
    let rows = token_rows::<T>(act, blocks);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, w) in row.chunks_exact(110).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 110);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let scales = scales_iq3_s(wp.add(106));
        let mut sumi = [_mm256_setzero_si256(); T];
        for pair in 0..4 {
            let quads = indices_iq3_s(wp, pair);
            for k in 0..2 {
                let i = 2 * pair + k;
                let at = |j: usize| (quads[2 * k + j / 4] >> (16 * (j % 4))) as usize;
                let grid = rows8(&IQ3S_GRID, std::array::from_fn(at));
                let signs = bit_mask32(wp.add(74 + 4 * i).cast::<u32>().read_unaligned());
                let scale = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[i]));
                for t in 0..T {
                    let p = _mm256_maddubs_epi16(grid, negate_where(load_q8(a[t], 32 * i), signs));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, scale));
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

/// IQ2_XXS (66 bytes: d f16, 8 pairs of u32) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq2_xxs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 66, "row is [blocks] of IQ2_XXS");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(66).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 66);
        let mut sumi = _mm256_setzero_si256();
        for i in 0..8 {
            let aux0 = wp.add(2 + 8 * i).cast::<u32>().read_unaligned();
            let aux1 = wp.add(6 + 8 * i).cast::<u32>().read_unaligned();
            let grid =
                rows4(&IQ2XXS_GRID, std::array::from_fn(|l| (aux0 >> (8 * l)) as u8 as usize));
            let y = _mm256_sign_epi8(load_q8(a, 32 * i), ksigns4(aux1));
            let scale = _mm256_set1_epi16(2 * (aux1 >> 28) as i16 + 1);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(grid, y), scale));
        }
        acc = _mm256_fmadd_ps(d_times(wp, a), _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

/// IQ2_XS (74 bytes: d f16, 32 u16 (9-bit grid row, 7-bit sign index), scales[8]) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq2_xs(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 74, "row is [blocks] of IQ2_XS");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(74).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 74);
        let scales = odd_scales16(wp.add(66));
        let halves = [half_both(scales, 0), half_both(scales, 1)];
        let mut sumi = _mm256_setzero_si256();
        for i in 0..8 {
            let q: [u16; 4] =
                std::array::from_fn(|l| wp.add(2 + 8 * i + 2 * l).cast::<u16>().read_unaligned());
            let grid = rows4(&IQ2XS_GRID, q.map(|q| usize::from(q & 511)));
            let signs = q.map(|q| SIGNS64[usize::from(q >> 9)] as i64);
            let signs = _mm256_setr_epi64x(signs[0], signs[1], signs[2], signs[3]);
            let p = _mm256_maddubs_epi16(grid, _mm256_sign_epi8(load_q8(a, 32 * i), signs));
            let scale = _mm256_shuffle_epi8(halves[i / 4], load(&SHUFFLE_PAIR[i % 4]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
        }
        acc = _mm256_fmadd_ps(d_times(wp, a), _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

/// IQ2_S (82 bytes: d f16, qs[32], signs[32], qh[8], scales[8]) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq2_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 82, "row is [blocks] of IQ2_S");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(82).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 82);
        let scales = odd_scales16(wp.add(74));
        let halves = [half_both(scales, 0), half_both(scales, 1)];
        let mut sumi = _mm256_setzero_si256();
        for i in 0..8 {
            // Row 4i + l: qs[4i + l], bits 2l.. of qh[i] as bits 8-9.
            let qh = usize::from(w[66 + i]);
            let idx = std::array::from_fn(|l| {
                usize::from(w[2 + 4 * i + l]) | ((qh << (8 - 2 * l)) & 0x300)
            });
            let grid = rows4(&IQ2S_GRID, idx);
            let signs = bit_mask32(wp.add(34 + 4 * i).cast::<u32>().read_unaligned());
            let p = _mm256_maddubs_epi16(grid, negate_where(load_q8(a, 32 * i), signs));
            let scale = _mm256_shuffle_epi8(halves[i / 4], load(&SHUFFLE_PAIR[i % 4]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
        }
        acc = _mm256_fmadd_ps(d_times(wp, a), _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}

/// `IQ1S_GRID` plus one: bytes 0, 1, 2, unsigned for `maddubs`.
static IQ1S_ROWS: [u64; 2048] = {
    let mut t = [0u64; 2048];
    let mut n = 0;
    while n < 2048 {
        let mut j = 0;
        while j < 8 {
            let g = (IQ1S_GRID[n] >> (8 * j)) as u8;
            t[n] |= (g.wrapping_add(1) as u64) << (8 * j);
            j += 1;
        }
        n += 1;
    }
    t
};

/// IQ1_S (50 bytes: d f16, qs[32], 8 u16 qh) · Q8_K, as (2s + 1) (8 Σ (g + 1)·y + (±1 - 8) Σ y)
/// per sub-block: the rows of `IQ1S_ROWS` go straight to `maddubs`; the shift, and the 8 Σ y
/// that the + 1 adds, are (±1 - 8)(2s + 1) times the sub-block's two bsums, one `madd` per
/// block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq1_s(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 50, "row is [blocks] of IQ1_S");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(50).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 50);
        let qh8 = _mm_loadu_si128(wp.add(34).cast());
        let odd = _mm_or_si128(
            _mm_and_si128(_mm_srli_epi16::<11>(qh8), _mm_set1_epi16(14)),
            _mm_set1_epi16(1),
        );
        let negative = _mm_srai_epi16::<15>(qh8);
        let signed = _mm_sub_epi16(_mm_xor_si128(odd, negative), negative);
        let shifted = _mm_sub_epi16(signed, _mm_slli_epi16::<3>(odd));
        let pairs = _mm256_set_m128i(
            _mm_unpackhi_epi16(shifted, shifted),
            _mm_unpacklo_epi16(shifted, shifted),
        );
        let bsums = _mm256_loadu_si256(a.bsums.as_ptr().cast());
        let shift = _mm256_madd_epi16(pairs, bsums);
        let scales = _mm256_set_m128i(odd, odd);
        let mut sumi = _mm256_setzero_si256();
        for i in 0..8 {
            let qh = usize::from(wp.add(34 + 2 * i).cast::<u16>().read_unaligned());
            let idx = std::array::from_fn(|l| {
                usize::from(w[2 + 4 * i + l]) | (((qh >> (3 * l)) & 7) << 8)
            });
            let p = _mm256_maddubs_epi16(rows4(&IQ1S_ROWS, idx), load_q8(a, 32 * i));
            let scale = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[i]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
        }
        let total = _mm256_add_epi32(_mm256_slli_epi32::<3>(sumi), shift);
        acc = _mm256_fmadd_ps(d_times(wp, a), _mm256_cvtepi32_ps(total), acc);
    }
    0.125 * hsum_ps(acc)
}

/// IQ1_M's rows with their shift folded in, offset to be unsigned: entry n (11-bit grid index
/// plus the shift's sign as bit 11, the low 12 bits of index | nibble << 8) holds the bytes
/// 8g ± 1 + 9, in 0..=18, so one `maddubs` with the quants sums a row; the + 9 comes back as
/// 9 Σ (2s + 1) bsums per block.
static IQ1M_ROWS: [u64; 4096] = {
    let mut t = [0u64; 4096];
    let mut n = 0;
    while n < 4096 {
        let row = IQ1S_GRID[n & 2047];
        let shift: i32 = if n & 2048 == 0 { 1 } else { -1 };
        let mut j = 0;
        while j < 8 {
            let g = ((row >> (8 * j)) as u8 as i8) as i32;
            t[n] |= ((8 * g + shift + 9) as u64) << (8 * j);
            j += 1;
        }
        n += 1;
    }
    t
};

/// The 16 scales 2s + 1 of an IQ1_M block: lane m takes bits 3(m % 4).. of scale u16 m / 4,
/// brought to bits 13..16 by a multiply by 2^(13 - 3(m % 4)).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_iq1_m(wp: *const u8) -> __m256i {
    let sc = _mm256_broadcastsi128_si256(_mm_loadl_epi64(wp.add(48).cast()));
    let pick = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7,
        6, 7,
    );
    let sc = _mm256_shuffle_epi8(sc, pick);
    let up = _mm256_setr_epi16(
        1 << 13,
        1 << 10,
        1 << 7,
        1 << 4,
        1 << 13,
        1 << 10,
        1 << 7,
        1 << 4,
        1 << 13,
        1 << 10,
        1 << 7,
        1 << 4,
        1 << 13,
        1 << 10,
        1 << 7,
        1 << 4,
    );
    let s = _mm256_srli_epi16::<13>(_mm256_mullo_epi16(sc, up));
    _mm256_or_si256(_mm256_slli_epi16::<1>(s), _mm256_set1_epi16(1))
}

/// IQ1_M (56 bytes: qs[32], qh[16], 4 u16 scales) · Q8_K, as Σ (8g ± 1)·y: each row's 12-bit
/// index (qs byte, qh nibble) picks its 8 bytes of `IQ1M_ROWS`, shift included.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq1_m(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 56, "row is [blocks] of IQ1_M");
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(56).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 56);
        let scales = scales_iq1_m(wp);
        let halves = [half_both(scales, 0), half_both(scales, 1)];
        let bsums = _mm256_loadu_si256(a.bsums.as_ptr().cast());
        let offset = _mm256_madd_epi16(scales, bsums);
        let mut sumi = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            _mm256_add_epi32(offset, _mm256_slli_epi32::<3>(offset)),
        );
        for i in 0..8 {
            // Rows 4i..4i+4 take the four nibbles of qh[2i], qh[2i + 1] in order.
            let qh = usize::from(wp.add(32 + 2 * i).cast::<u16>().read_unaligned());
            let idx = std::array::from_fn(|l| {
                usize::from(w[4 * i + l]) | (((qh >> (4 * l)) & 0x0f) << 8)
            });
            let rows = rows4(&IQ1M_ROWS, idx);
            let p = _mm256_maddubs_epi16(rows, load_q8(a, 32 * i));
            let scale = _mm256_shuffle_epi8(halves[i / 4], load(&SHUFFLE_PAIR[i % 4]));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p));
        }
        let d = _mm256_cvtph_ps(_mm_set1_epi16(iq1_m_d(w) as i16));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(a.d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    0.125 * hsum_ps(acc)
}
