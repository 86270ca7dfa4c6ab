//! AVX2 + FMA + F16C dot kernels (x86_64 only), translated from ggml's
//! `ggml-cpu/arch/x86/quants.c` AVX2 paths: `maddubs` (u8 × i8 → i16 pairs) then `madd` (i16 ×
//! i16 → i32, with the sub-block scale as the second operand for the K-quants), one f32 FMA per
//! block. Same signatures and integer sums as `scalar`; only the f32 summation order differs.
//!
//! # Safety
//! Every kernel here is an `unsafe fn` with `#[target_feature(enable = "avx2,fma,f16c")]`: the
//! caller must have checked those features (`Simd::detect` does, with
//! `is_x86_feature_detected!`). Inside, loads go through raw pointers whose bounds are the
//! `assert_eq!` on the row length at the top of each kernel: block b of the row is read at
//! `row + b * BYTES .. + BYTES`, and activations come from whole, typed blocks.

use std::arch::x86_64::*;

use super::act::{ActQ8_0, ActQ8_1};
use super::scalar::unpack_scales_k4;
use crate::quant::{bf16_to_f32, BlockQ8K, QK8_0, QK_K};

/// The f16 at `p` (unaligned) widened into all 8 lanes. A broadcast load, then F16C: converting
/// a scalar through `_mm_cvtsi32_si128` lets LLVM insert it into a stale register, which chains
/// each block to the previous block's accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_splat(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned()))
}

/// As `f16_splat`, 4 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_splat4(p: *const u8) -> __m128 {
    _mm_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned()))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 32 signed bytes x · y, summed in 4s into 8 f32 lanes (ggml's `mul_sum_i8_pairs_float`:
/// |x| as unsigned times y with x's sign, since `maddubs` wants one unsigned operand).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// 32 i32 lanes (four vectors, in element order) saturated to i8, in element order: the packs
/// interleave 128-bit halves, the permute puts them back (ggml's `quantize_row_q8_0`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32_to_i8(v: [__m256i; 4]) -> __m256i {
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// x [blocks * 32] as Q8_0 blocks, bit for bit as `scalar::quantize_q8_0` (ggml's reference:
/// d = amax / 127 rounded to f16, quants rounded half away from zero).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(x: &[f32], out: &mut [ActQ8_0]) {
    assert_eq!(x.len(), out.len() * QK8_0, "x is [blocks * 32]");
    for (x, out) in x.chunks_exact(QK8_0).zip(out) {
        let (d, q) = quantize_block_q8_0(x);
        _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), q);
        out.d = d;
    }
}

/// x [blocks * 32] as Q8_1 blocks, bit for bit as `scalar::quantize_q8_1`: the Q8_0 blocks and
/// s = d * Σ qs.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_1(x: &[f32], out: &mut [ActQ8_1]) {
    assert_eq!(x.len(), out.len() * QK8_0, "x is [blocks * 32]");
    for (x, out) in x.chunks_exact(QK8_0).zip(out) {
        let (d, q) = quantize_block_q8_0(x);
        _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), q);
        // Σ qs: 1 (unsigned) × q in i16 pairs, then i32 quads, then the 8 lanes.
        let sum16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q);
        let sum32 = _mm256_madd_epi16(sum16, _mm256_set1_epi16(1));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256::<1>(sum32));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
        out.d = d;
        out.s = d * sum as f32;
    }
}

/// One Q8_0 block of the 32 floats at x: (d widened from its f16, the 32 quants in order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block_q8_0(x: &[f32]) -> (f32, __m256i) {
    assert_eq!(x.len(), QK8_0);
    let sign = _mm256_set1_ps(-0.0);
    let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(x.as_ptr().add(8 * k)));
    let abs = v.map(|v| _mm256_andnot_ps(sign, v));
    let amax = hmax_ps(_mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3])));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let q = v.map(|v| _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v, id))));
    (half::f16::from_f32(d).to_f32(), pack_i32_to_i8(q))
}

/// C's `roundf` on 8 lanes: ties away from zero (`_mm256_round_ps` only has ties to even).
/// Exact for |v| < 2^23, where `v - trunc(v)` is exact.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round_half_away(v: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(v, t));
    let away = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
    _mm256_add_ps(t, _mm256_and_ps(away, one))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// x [blocks * 256] as Q8_K blocks, bit for bit as `scalar::quantize_q8_k` (ggml's
/// `quantize_row_q8_K_ref`: iscale = -127 / the value of largest magnitude, quants rounded to
/// nearest even, as `cvtps` does, and the sum of every 16).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K, "x is [blocks * 256]");
    let sign = _mm256_set1_ps(-0.0);
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    for (x, out) in x.chunks_exact(QK_K).zip(out) {
        let p = x.as_ptr();
        // `max(|v|, m)` keeps m when v is NaN, as the reference's `|v| > amax` does.
        let mut vmax = _mm256_setzero_ps();
        for k in 0..QK_K / 8 {
            vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))), vmax);
        }
        let amax = hmax_ps(vmax);
        if amax == 0.0 {
            *out = BlockQ8K::ZERO;
            continue;
        }
        // The first element of largest magnitude, with its sign.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale_scalar = -127.0 / max;
        let iscale = _mm256_set1_ps(iscale_scalar);
        for g in 0..QK_K / 32 {
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                _mm256_cvtps_epi32(_mm256_mul_ps(iscale, _mm256_loadu_ps(p.add(32 * g + 8 * k))))
            });
            let bytes = pack_i32_to_i8(q);
            _mm256_storeu_si256(out.qs.as_mut_ptr().add(32 * g).cast(), bytes);
            // Sums of 4 in 8 lanes, then of 16: lane 0 is elements 0..16, lane 4 is 16..32.
            let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, bytes), ones16);
            let sums = _mm256_hadd_epi32(quads, quads);
            let sums = _mm256_hadd_epi32(sums, sums);
            out.bsums[2 * g] = _mm256_extract_epi32::<0>(sums) as i16;
            out.bsums[2 * g + 1] = _mm256_extract_epi32::<4>(sums) as i16;
        }
        out.d = 1.0 / iscale_scalar;
    }
}

/// A float-weight kernel: 32 elements per step in four FMA chains, scalar tail.
macro_rules! float_dot {
    ($name:ident, $bytes:literal, $load8:expr, $widen:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $name(row: &[u8], x: &[f32]) -> f32 {
            assert_eq!(row.len(), $bytes * x.len(), "row is [cols] of {}-byte floats", $bytes);
            let (w, xp) = (row.as_ptr(), x.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let body = x.len() / 32 * 32;
            for j in (0..body).step_by(32) {
                prefetch(w.add($bytes * j), 32 * $bytes);
                for (k, acc) in acc.iter_mut().enumerate() {
                    let at = j + 8 * k;
                    let wv = $load8(w.add($bytes * at));
                    *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(at)), *acc);
                }
            }
            let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum_ps(acc);
            for (b, x) in row[$bytes * body..].chunks_exact($bytes).zip(&x[body..]) {
                sum += $widen(b) * x;
            }
            sum
        }
    };
}

float_dot!(dot_f32, 4, |p: *const u8| _mm256_loadu_ps(p.cast()), |b: &[u8]| f32::from_le_bytes([
    b[0], b[1], b[2], b[3]
]));
float_dot!(dot_f16, 2, |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())), |b: &[u8]| {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
});
float_dot!(
    dot_bf16,
    2,
    |p: *const u8| {
        let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    },
    |b: &[u8]| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))
);

/// Q8_0 (34 bytes: d f16, qs[32]) · Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 34, "row is [blocks] of Q8_0");
    let w = row.as_ptr();
    let mut acc = _mm256_setzero_ps();
    for (b, a) in act.iter().enumerate() {
        let blk = w.add(34 * b);
        prefetch(blk, 34);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        let qx = _mm256_loadu_si256(blk.add(2).cast());
        let qy = _mm256_loadu_si256(a.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Q4_0 (18 bytes: d f16, qs[16], levels - 8) · Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 18, "row is [blocks] of Q4_0");
    let w = row.as_ptr();
    let (m4, eight) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8));
    let mut acc = _mm256_setzero_ps();
    for (b, a) in act.iter().enumerate() {
        let blk = w.add(18 * b);
        prefetch(blk, 18);
        let d = _mm256_mul_ps(f16_splat(blk), _mm256_set1_ps(a.d));
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let packed = _mm_loadu_si128(blk.add(2).cast());
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
        let qx = _mm256_sub_epi8(_mm256_and_si256(both, m4), eight);
        let qy = _mm256_loadu_si256(a.qs.as_ptr().cast());
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// `_mm256_shuffle_epi8` masks broadcasting 16-bit lane i of each 128-bit half (ggml's
/// `get_scale_shuffle_k4`).
pub(super) const SHUFFLE_K4: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut i = 0;
    while i < 8 {
        let mut b = 0;
        while b < 32 {
            t[i][b] = (2 * i + b % 2) as u8;
            b += 1;
        }
        i += 1;
    }
    t
};

/// Masks broadcasting byte 2i to bytes 0..8 and byte 2i+1 to bytes 8..16 (ggml's
/// `get_scale_shuffle`): the scales of two 16-element sub-blocks.
const SHUFFLE_Q6: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut b = 0;
        while b < 16 {
            t[i][b] = (2 * i + b / 8) as u8;
            b += 1;
        }
        i += 1;
    }
    t
};

/// The min term of a Q4_K/Q5_K super-block, Σ m[sub] * (bsum[2 sub] + bsum[2 sub + 1]), as
/// four i32 lanes, and the 8 scales as i16 in both halves of a 256-bit register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_and_mins_k4(packed: &[u8], a: &BlockQ8K) -> (__m256i, __m128i) {
    let [s0, s1, m0, m1] = unpack_scales_k4(packed).map(|w| w as i32);
    let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(m1, m0, s1, s0));
    let q8sums = _mm256_loadu_si256(a.bsums.as_ptr().cast());
    let lo = _mm256_castsi256_si128(q8sums);
    let q8s = _mm_hadd_epi16(lo, _mm256_extracti128_si256::<1>(q8sums));
    let prod = _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_and_scales), q8s);
    let sc128 = _mm256_castsi256_si128(mins_and_scales);
    (_mm256_set_m128i(sc128, sc128), prod)
}

/// Q4_K (144 bytes: d, dmin f16, scales[12], qs[128]) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 144, "row is [blocks] of Q4_K");
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (w, a) in row.chunks_exact(144).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 144);
        let (scales, mins) = scales_and_mins_k4(&w[4..16], a);
        let dmin = _mm_mul_ps(f16_splat4(wp.add(2)), _mm_set1_ps(-a.d));
        acc_m = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(mins), acc_m);
        let (q4, q8) = (wp.add(16), a.qs.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j]));
            let scale_h = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j + 1]));
            let bits = _mm256_loadu_si256(q4.add(32 * j).cast());
            let q4l = _mm256_and_si256(bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            let q8l = _mm256_loadu_si256(q8.add(64 * j).cast());
            let q8h = _mm256_loadu_si256(q8.add(64 * j + 32).cast());
            let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
            let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        let d = _mm256_mul_ps(f16_splat(wp), _mm256_set1_ps(a.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

/// Q5_K (176 bytes: d, dmin f16, scales[12], qh[32], qs[128]) · Q8_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 176, "row is [blocks] of Q5_K");
    let (m4, m1, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1), _mm256_set1_epi8(2));
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (w, a) in row.chunks_exact(176).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 176);
        let (scales, mins) = scales_and_mins_k4(&w[4..16], a);
        let dmin = _mm_mul_ps(f16_splat4(wp.add(2)), _mm_set1_ps(-a.d));
        acc_m = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(mins), acc_m);
        // Group j's high bits are bits 2j, 2j+1 of qh: shift them down two per group.
        let mut hbits = _mm256_loadu_si256(wp.add(16).cast());
        let (q5, q8) = (wp.add(48), a.qs.as_ptr());
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j]));
            let scale_h = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j + 1]));
            let bits = _mm256_loadu_si256(q5.add(32 * j).cast());
            let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(hbits, m1));
            let hh = _mm256_slli_epi16::<3>(_mm256_and_si256(hbits, m2));
            hbits = _mm256_srli_epi16::<2>(hbits);
            let q5l = _mm256_or_si256(_mm256_and_si256(bits, m4), hl);
            let q5h = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), hh);
            let q8l = _mm256_loadu_si256(q8.add(64 * j).cast());
            let q8h = _mm256_loadu_si256(q8.add(64 * j + 32).cast());
            let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q5l, q8l));
            let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q5h, q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        let d = _mm256_mul_ps(f16_splat(wp), _mm256_set1_ps(a.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) + hsum_ps128(acc_m)
}

/// 32 · Σ_g scale[g] · bsum[g] over a Q6_K block's 16 groups of 16, as 8 i32 lanes (lane i:
/// groups 2i and 2i + 1): the -32 offset of its levels, from the activations' block sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_offset(scales: __m128i, a: &BlockQ8K) -> __m256i {
    let bsums = _mm256_loadu_si256(a.bsums.as_ptr().cast());
    _mm256_slli_epi32::<5>(_mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), bsums))
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16] i8, d f16) · Q8_K. Levels are 0..64 unsigned
/// for `maddubs`; the -32 offset comes back once per block as 32 · Σ scale · bsum
/// (`q6_offset`), subtracted from the integer sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 210, "row is [blocks] of Q6_K");
    let (m4, m3) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let mut acc = _mm256_setzero_ps();
    for (w, a) in row.chunks_exact(210).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 210);
        let scales = _mm_loadu_si128(wp.add(192).cast());
        let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), q6_offset(scales, a));
        for half in 0..2 {
            let ql = wp.add(64 * half);
            let q8 = a.qs.as_ptr().add(128 * half);
            let ql0 = _mm256_loadu_si256(ql.cast());
            let ql1 = _mm256_loadu_si256(ql.add(32).cast());
            let qh = _mm256_loadu_si256(wp.add(128 + 32 * half).cast());
            // Elements 32k..32k+32 of the half: nibble of ql0/ql1, bits 2k..2k+2 of qh.
            let levels = [
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            ];
            let highs = [
                _mm256_and_si256(qh, m3),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m3),
                _mm256_and_si256(_mm256_srli_epi16::<4>(qh), m3),
                _mm256_and_si256(_mm256_srli_epi16::<6>(qh), m3),
            ];
            for k in 0..4 {
                let q6 = _mm256_or_si256(levels[k], _mm256_slli_epi16::<4>(highs[k]));
                let y = _mm256_loadu_si256(q8.add(32 * k).cast());
                let p = _mm256_maddubs_epi16(q6, y);
                let sc = _mm_shuffle_epi8(scales, load128(&SHUFFLE_Q6[4 * half + k]));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), p));
            }
        }
        let d = _mm256_mul_ps(f16_splat(wp.add(208)), _mm256_set1_ps(a.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

/// Dots one row with `out.len()` (1 to 8) tokens' activations ([tokens, blocks]) through the
/// multi-token kernel monomorphized for that count (compiled for AVX2, or for the features
/// given).
macro_rules! dot_tokens {
    ($name:ident, $multi:ident) => {
        dot_tokens!($name, $multi, "avx2,fma,f16c");
    };
    ($name:ident, $multi:ident, $features:literal) => {
        #[target_feature(enable = $features)]
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

pub(super) use dot_tokens;

dot_tokens!(dot_q4_k_tokens, dot_q4_k_multi);
dot_tokens!(dot_q6_k_tokens, dot_q6_k_multi);

/// The tokens' activation rows of `act` ([T, blocks], token-major) as pointers to their first
/// block, after checking that `act` holds exactly T rows of `blocks`.
#[inline]
pub(super) fn token_rows<const T: usize>(act: &[BlockQ8K], blocks: usize) -> [*const BlockQ8K; T] {
    assert_eq!(act.len(), T * blocks, "act is [{T}, blocks] of Q8_K");
    std::array::from_fn(|t| act[t * blocks..].as_ptr())
}

/// Q4_K · Q8_K for T tokens at once: `dot_q4_k` for each token, bit for bit (the same integer
/// sums and, per token, the same f32 operations in the same order), with each weight block
/// unpacked once for all T. act: [T, blocks].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 144;
    assert_eq!(row.len(), blocks * 144, "row is [blocks] of Q4_K");
    let rows = token_rows::<T>(act, blocks);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut acc_m = [_mm_setzero_ps(); T];
    for (b, w) in row.chunks_exact(144).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 144);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let [s0, s1, m0, m1] = unpack_scales_k4(&w[4..16]).map(|w| w as i32);
        let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(m1, m0, s1, s0));
        let mins = _mm256_extracti128_si256::<1>(mins_and_scales);
        let sc128 = _mm256_castsi256_si128(mins_and_scales);
        let scales = _mm256_set_m128i(sc128, sc128);
        let dmin_w = f16_splat4(wp.add(2));
        for t in 0..T {
            let q8sums = _mm256_loadu_si256(a[t].bsums.as_ptr().cast());
            let lo = _mm256_castsi256_si128(q8sums);
            let q8s = _mm_hadd_epi16(lo, _mm256_extracti128_si256::<1>(q8sums));
            let prod = _mm_madd_epi16(mins, q8s);
            let dmin = _mm_mul_ps(dmin_w, _mm_set1_ps(-a[t].d));
            acc_m[t] = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(prod), acc_m[t]);
        }
        let q4 = wp.add(16);
        let mut sumi = [_mm256_setzero_si256(); T];
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j]));
            let scale_h = _mm256_shuffle_epi8(scales, load(&SHUFFLE_K4[2 * j + 1]));
            let bits = _mm256_loadu_si256(q4.add(32 * j).cast());
            let q4l = _mm256_and_si256(bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            for t in 0..T {
                let q8 = a[t].qs.as_ptr();
                let q8l = _mm256_loadu_si256(q8.add(64 * j).cast());
                let q8h = _mm256_loadu_si256(q8.add(64 * j + 32).cast());
                let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
        }
        let d_w = f16_splat(wp);
        for t in 0..T {
            let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum_ps(acc[t]) + hsum_ps128(acc_m[t]))
}

/// Q6_K · Q8_K for T tokens at once: `dot_q6_k` for each token, bit for bit, with each weight
/// block unpacked once for all T. act: [T, blocks].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 210;
    assert_eq!(row.len(), blocks * 210, "row is [blocks] of Q6_K");
    let rows = token_rows::<T>(act, blocks);
    let (m4, m3) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, w) in row.chunks_exact(210).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 210);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let scales = _mm_loadu_si128(wp.add(192).cast());
        let mut sumi: [__m256i; T] = std::array::from_fn(|t| {
            _mm256_sub_epi32(_mm256_setzero_si256(), q6_offset(scales, a[t]))
        });
        for half in 0..2 {
            let ql = wp.add(64 * half);
            let ql0 = _mm256_loadu_si256(ql.cast());
            let ql1 = _mm256_loadu_si256(ql.add(32).cast());
            let qh = _mm256_loadu_si256(wp.add(128 + 32 * half).cast());
            let levels = [
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            ];
            let highs = [
                _mm256_and_si256(qh, m3),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m3),
                _mm256_and_si256(_mm256_srli_epi16::<4>(qh), m3),
                _mm256_and_si256(_mm256_srli_epi16::<6>(qh), m3),
            ];
            for k in 0..4 {
                let q6 = _mm256_or_si256(levels[k], _mm256_slli_epi16::<4>(highs[k]));
                let sc = _mm_shuffle_epi8(scales, load128(&SHUFFLE_Q6[4 * half + k]));
                let sc = _mm256_cvtepi8_epi16(sc);
                for t in 0..T {
                    let y = _mm256_loadu_si256(a[t].qs.as_ptr().add(128 * half + 32 * k).cast());
                    let p = _mm256_maddubs_epi16(q6, y);
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(sc, p));
                }
            }
        }
        let d_w = f16_splat(wp.add(208));
        for t in 0..T {
            let d = _mm256_mul_ps(d_w, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum_ps(acc[t]))
}

/// `_mm256_shuffle_epi8` masks broadcasting 16-bit lane 2k of each 128-bit half to the low
/// half and lane 2k + 1 to the high half: over 16 i16 scales held in both halves, the scales
/// of the two 16-element sub-blocks of 32 elements (the 16-scale K-quants and i-quants).
pub(super) const SHUFFLE_PAIR: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut b = 0;
        while b < 32 {
            t[k][b] = (4 * k + 2 * (b / 16) + b % 2) as u8;
            b += 1;
        }
        k += 1;
    }
    t
};

/// The 128-bit half `h` of 16 i16 scales, in both halves of a 256-bit register (for
/// `SHUFFLE_PAIR`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn half_both(scales: __m256i, h: usize) -> __m256i {
    let half =
        if h == 0 { _mm256_castsi256_si128(scales) } else { _mm256_extracti128_si256::<1>(scales) };
    _mm256_set_m128i(half, half)
}

/// The 16 nibbles at p as 32 bytes in element order: low nibbles (elements 0..16), then high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles32(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Byte j of the result takes byte j / 8 of a broadcast u32 (`bit_mask32`).
const BYTE_OF_BIT: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut j = 0;
    while j < 32 {
        t[j] = (j / 8) as u8;
        j += 1;
    }
    t
};

/// The 32 bits of `bits` as 32 bytes, byte j 0xff where bit j is set and 0 where not.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bit_mask32(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), load(&BYTE_OF_BIT));
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load(bytes: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(bytes.as_ptr().cast())
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load128(bytes: &[u8; 16]) -> __m128i {
    _mm_loadu_si128(bytes.as_ptr().cast())
}

/// Bytes ahead of the block being computed that the kernels prefetch: far enough to hide
/// DRAM latency at the rate a core consumes blocks, near enough to still be in L1.
const PREFETCH_AHEAD: usize = 2048;

/// Prefetch the `bytes` that lie `PREFETCH_AHEAD` past `p` (a prefetch never faults, even past
/// the end of the weights, and `wrapping_add` keeps the address computation defined).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn prefetch(p: *const u8, bytes: usize) {
    let mut at = 0;
    while at < bytes {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + at).cast());
        at += 64;
    }
}
