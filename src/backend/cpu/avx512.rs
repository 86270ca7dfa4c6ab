//! AVX-512 (F, BW, VL) + VNNI dot kernels (x86_64 only) for the two K-quants that carry
//! nearly every byte of a `q4_k_m` model, Q4_K and Q6_K; every other type keeps its AVX2
//! kernel in this family. 64 weight codes per step: `maddubs` (u8 × i8 → i16 pairs), then
//! `vpdpwssd` (VNNI) multiplies those pairs by the sub-block scale and adds them into the i32
//! sums in one instruction, where AVX2 needs a `madd` and an `add`. One step of the AVX2 kernel
//! is 32 codes and four instructions per token; here it is 64 codes and three (load, maddubs,
//! dpwssd), and the weight unpacking is shared by up to 8 tokens.
//!
//! Same integer sums as `scalar`; the f32 sums are 16 lanes wide, so against `avx2` and
//! `scalar` only the f32 summation order differs. One token through the multi-token kernel is
//! the one-token kernel, bit for bit.
//!
//! # Safety
//! Every kernel is an `unsafe fn` with `#[target_feature(enable = ...)]` on the features of
//! `Simd::Avx512` (`Simd::is_available` checks them with `is_x86_feature_detected!`). Raw loads
//! stay inside the blocks of the row (the `assert_eq!` on its length at the top of each kernel)
//! and the whole, typed activation blocks of each token (`token_rows`).

use std::arch::x86_64::*;

use super::avx2::{prefetch, token_rows};
use super::scalar::unpack_scales_k4;
use crate::quant::BlockQ8K;

/// `_mm512_shuffle_epi8` masks over the 8 i16 scales of a Q4_K block held in each 128-bit lane:
/// step j (64 codes) gets scale 2j in lanes 0 and 1 (its low nibbles) and 2j + 1 in lanes 2
/// and 3 (its high nibbles).
const SHUFFLE_K4_PAIR: [[u8; 64]; 4] = {
    let mut t = [[0u8; 64]; 4];
    let mut j = 0;
    while j < 4 {
        let mut b = 0;
        while b < 64 {
            let scale = 2 * j + b / 32;
            t[j][b] = (2 * scale + b % 2) as u8;
            b += 1;
        }
        j += 1;
    }
    t
};

/// `_mm512_permutexvar_epi16` indices over the 16 i16 scales of a Q6_K block: step s (64
/// codes, four groups of 16) gets scale 4s + l in 128-bit lane l.
const PERMUTE_Q6: [[u16; 32]; 4] = {
    let mut t = [[0u16; 32]; 4];
    let mut s = 0;
    while s < 4 {
        let mut i = 0;
        while i < 32 {
            t[s][i] = (4 * s + i / 8) as u16;
            i += 1;
        }
        s += 1;
    }
    t
};

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load512<T>(p: *const T) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

/// The f16 at `p` (unaligned) widened into all 16 lanes (F16C; `half`'s conversion checks
/// the CPU's features on every call).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn f16_splat16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_set1_epi16(p.cast::<i16>().read_unaligned()))
}

/// `acc + Σ pairs of a · b` (i16 × i16 → i32 lanes): `vpdpwssd`, written out because LLVM's
/// generic x86-64 tuning splits `_mm512_dpwssd_epi32` back into `vpmaddwd` + `vpaddd` (one more
/// instruction per token and step, the fusion VNNI exists for).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let mut acc = acc;
    // SAFETY: register operands only; the CPU has AVX512_VNNI (this function's features).
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Dots one row with `out.len()` (1 to 8) tokens' activations ([tokens, blocks]) through the
/// multi-token kernel monomorphized for that count.
macro_rules! dot_tokens_512 {
    ($name:ident, $multi:ident) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub(super) unsafe fn $name(row: &[u8], act: &[BlockQ8K], out: &mut [f32]) {
            match out.len() {
                1 => out.copy_from_slice(&$multi::<1>(row, act)),
                2 => out.copy_from_slice(&$multi::<2>(row, act)),
                3 => out.copy_from_slice(&$multi::<3>(row, act)),
                4 => out.copy_from_slice(&$multi::<4>(row, act)),
                5 => out.copy_from_slice(&$multi::<5>(row, act)),
                6 => out.copy_from_slice(&$multi::<6>(row, act)),
                7 => out.copy_from_slice(&$multi::<7>(row, act)),
                8 => out.copy_from_slice(&$multi::<8>(row, act)),
                n => panic!("{n} tokens in one pass: want 1 to 8"),
            }
        }
    };
}

dot_tokens_512!(dot_q4_k_tokens, dot_q4_k_multi);
dot_tokens_512!(dot_q6_k_tokens, dot_q6_k_multi);

/// Q4_K (144 bytes: d, dmin f16, scales[12], qs[128]) · Q8_K: `dot_q4_k_multi` for one token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_q4_k_multi::<1>(row, act)[0]
}

/// Q4_K · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once. Step
/// j takes the 32 code bytes of sub-blocks 2j and 2j + 1 broadcast to both 256-bit halves,
/// shifted right by 0 and 4 bits (one 64-bit variable shift), masked to nibbles: the 64 codes
/// in element order, against 64 contiguous activation bytes. The mins term is Σ min · (bsum
/// pair), one 256-bit `madd` against the block sums with each min doubled.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q4_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 144;
    assert_eq!(row.len(), blocks * 144, "row is [blocks] of Q4_K");
    let rows = token_rows::<T>(act, blocks);
    let m4 = _mm512_set1_epi8(0x0f);
    let nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    let shuffles: [__m512i; 4] = std::array::from_fn(|j| load512(SHUFFLE_K4_PAIR[j].as_ptr()));
    let mut acc = [_mm512_setzero_ps(); T];
    let mut acc_m = [_mm256_setzero_ps(); T];
    for (b, w) in row.chunks_exact(144).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 144);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let [s0, s1, m0, m1] = unpack_scales_k4(&w[4..16]).map(|w| w as i32);
        let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_setr_epi32(s0, s1, 0, 0)));
        let mins = _mm_setr_epi32(m0, m1, 0, 0);
        let mins_doubled = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
        let (d_w, dmin_w) = (f16_splat16(wp), f16_splat16(wp.add(2)));
        let dmin_w = _mm512_castps512_ps256(dmin_w);
        for t in 0..T {
            let bsums = _mm256_loadu_si256(a[t].bsums.as_ptr().cast());
            let prod = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins_doubled, bsums));
            let dmin = _mm256_mul_ps(dmin_w, _mm256_set1_ps(a[t].d));
            acc_m[t] = _mm256_fnmadd_ps(dmin, prod, acc_m[t]);
        }
        let mut sumi = [_mm512_setzero_si512(); T];
        for (j, shuffle) in shuffles.iter().enumerate() {
            let bits = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(16 + 32 * j).cast()));
            let q4 = _mm512_and_si512(_mm512_srlv_epi64(bits, nibble_shift), m4);
            let scale = _mm512_shuffle_epi8(scales, *shuffle);
            for t in 0..T {
                let p = _mm512_maddubs_epi16(q4, load512(a[t].qs.as_ptr().add(64 * j)));
                sumi[t] = dpwssd(sumi[t], scale, p);
            }
        }
        for t in 0..T {
            let d = _mm512_mul_ps(d_w, _mm512_set1_ps(a[t].d));
            acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]) + hsum256(acc_m[t]))
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16] i8, d f16) · Q8_K: `dot_q6_k_multi` for one
/// token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_q6_k_multi::<1>(row, act)[0]
}

/// Q6_K · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once. Per
/// half (128 codes): the 64 ql bytes' low nibbles are elements 0..64 and their high nibbles
/// 64..128; the 32 qh bytes, broadcast and shifted by 0 and 2 bits per 256-bit half, give
/// their top two bits (bits 0..2 and 4..6 of each byte). Levels are 0..64 unsigned for
/// `maddubs`; the -32 offset is 32 · Σ scale · bsum per block, as in `avx2::dot_q6_k`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q6_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 210;
    assert_eq!(row.len(), blocks * 210, "row is [blocks] of Q6_K");
    let rows = token_rows::<T>(act, blocks);
    let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let qh_shift = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
    let permutes: [__m512i; 4] = std::array::from_fn(|s| load512(PERMUTE_Q6[s].as_ptr()));
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, w) in row.chunks_exact(210).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 210);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let scales8 = _mm_loadu_si128(wp.add(192).cast());
        let scales = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(scales8));
        let mut sumi: [__m512i; T] = std::array::from_fn(|t| {
            let bsums = _mm256_loadu_si256(a[t].bsums.as_ptr().cast());
            let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales8), bsums);
            let offset = _mm256_slli_epi32::<5>(offset);
            _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offset))
        });
        for half in 0..2 {
            let ql = load512(wp.add(64 * half));
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(128 + 32 * half).cast()));
            let qh = _mm512_srlv_epi64(qh, qh_shift);
            let q6 = [
                _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_and_si512(_mm512_slli_epi16::<4>(qh), m30),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_and_si512(qh, m30),
                ),
            ];
            for (k, q6) in q6.into_iter().enumerate() {
                let s = 2 * half + k;
                let scale = _mm512_permutexvar_epi16(permutes[s], scales);
                for t in 0..T {
                    let p = _mm512_maddubs_epi16(q6, load512(a[t].qs.as_ptr().add(64 * s)));
                    sumi[t] = dpwssd(sumi[t], scale, p);
                }
            }
        }
        let d_w = f16_splat16(wp.add(208));
        for t in 0..T {
            let d = _mm512_mul_ps(d_w, _mm512_set1_ps(a[t].d));
            acc[t] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| _mm512_reduce_add_ps(acc[t]))
}
