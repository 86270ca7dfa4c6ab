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

use super::act::{ActQ8K16, GROUP_TOKENS};
use super::avx2::{dot_tokens, prefetch, token_rows};
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

/// `_mm512_shuffle_epi8` masks over the 16 i8 scales of a Q6_K block held in each 128-bit
/// lane: 64 codes from 64s get scale 4s + l in lane l.
const SHUFFLE_Q6_GROUPS: [[u8; 64]; 4] = {
    let mut t = [[0u8; 64]; 4];
    let mut s = 0;
    while s < 4 {
        let mut b = 0;
        while b < 64 {
            t[s][b] = (4 * s + b / 16) as u8;
            b += 1;
        }
        s += 1;
    }
    t
};

/// `_mm512_permutexvar_epi16` indices over the 16 i16 scales of a Q6_K block: the same groups
/// (i16 lane i is bytes 2i, 2i + 1, in 128-bit lane i / 8).
const PERMUTE_Q6: [[u16; 32]; 4] = {
    let mut t = [[0u16; 32]; 4];
    let mut s = 0;
    while s < 4 {
        let mut i = 0;
        while i < 32 {
            t[s][i] = SHUFFLE_Q6_GROUPS[s][2 * i] as u16;
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

/// A VNNI multiply-accumulate on 16 i32 lanes, written out with `asm!` because LLVM's generic
/// x86-64 tuning splits the intrinsics back into `vpmadd*` + `vpaddd` (one more instruction per
/// token and step, the fusion VNNI exists for).
macro_rules! vnni {
    ($(#[$doc:meta])* $name:ident, $insn:literal) => {
        $(#[$doc])*
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn $name(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
            let mut acc = acc;
            // SAFETY: register operands only; the CPU has AVX512_VNNI (this function's
            // features).
            unsafe {
                std::arch::asm!(
                    concat!($insn, " {acc}, {a}, {b}"),
                    acc = inout(zmm_reg) acc,
                    a = in(zmm_reg) a,
                    b = in(zmm_reg) b,
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
            acc
        }
    };
}

vnni!(
    /// `acc + Σ quads of a · b` (u8 × i8 → i32 lanes): `vpdpbusd`.
    dpbusd,
    "vpdpbusd"
);
vnni!(
    /// `acc + Σ pairs of a · b` (i16 × i16 → i32 lanes): `vpdpwssd`.
    dpwssd,
    "vpdpwssd"
);

dot_tokens!(dot_q4_k_tokens, dot_q4_k_multi, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");
dot_tokens!(dot_q6_k_tokens, dot_q6_k_multi, "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");

/// Q4_K (144 bytes: d, dmin f16, scales[12], qs[128]) · Q8_K: `dot_q4_k_multi` for one token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_q4_k_multi::<1>(row, act)[0]
}

/// One Q4_K block's share of a token's sum, in the order every Q4_K kernel of this family
/// keeps (so that 1, 2..8 and 16 tokens at a time give the same bits): the exact integer sums
/// i = Σ scale · code · q and m = Σ min · (sum of 32 q) first, then
/// acc + d_a · (d_w · i - dmin_w · m) with two fused operations.
#[inline]
fn q4_k_block_scalar(acc: f32, i: i32, m: i32, d_w: f32, dmin_w: f32, d_a: f32) -> f32 {
    let f = (-dmin_w).mul_add(m as f32, d_w * i as f32);
    d_a.mul_add(f, acc)
}

/// Q4_K · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once. Step
/// j takes the 32 code bytes of sub-blocks 2j and 2j + 1 broadcast to both 256-bit halves,
/// shifted right by 0 and 4 bits (one 64-bit variable shift), masked to nibbles: the 64 codes
/// in element order, against 64 contiguous activation bytes. The mins term is Σ min · (bsum
/// pair), one 256-bit `madd` against the block sums with each min doubled. Per block the lanes
/// are summed to each token's integers, and the f32 work is `q4_k_block_scalar`'s, lanes being
/// tokens (as in `gemm16_q4_k`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q4_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 144;
    assert_eq!(row.len(), blocks * 144, "row is [blocks] of Q4_K");
    let rows = token_rows::<T>(act, blocks);
    let m4 = _mm512_set1_epi8(0x0f);
    let nibble_shift = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
    let shuffles: [__m512i; 4] = std::array::from_fn(|j| load512(SHUFFLE_K4_PAIR[j].as_ptr()));
    let mut acc = _mm256_setzero_ps();
    let mut acc1 = 0f32;
    for (b, w) in row.chunks_exact(144).enumerate() {
        let wp = w.as_ptr();
        prefetch(wp, 144);
        // SAFETY: b < blocks, and each token's row holds `blocks` blocks (`token_rows`).
        let a: [&BlockQ8K; T] = std::array::from_fn(|t| &*rows[t].add(b));
        let [s0, s1, m0, m1] = unpack_scales_k4(&w[4..16]).map(|w| w as i32);
        let scales = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_setr_epi32(s0, s1, 0, 0)));
        let mins = _mm_setr_epi32(m0, m1, 0, 0);
        let mins_doubled = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
        let prod: [__m256i; T] = std::array::from_fn(|t| {
            let bsums = _mm256_loadu_si256(a[t].bsums.as_ptr().cast());
            _mm256_madd_epi16(mins_doubled, bsums)
        });
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
        let (d_w, dmin_w) = (f16_at(wp), f16_at(wp.add(2)));
        if T == 1 {
            let (i, m) = (_mm512_reduce_add_epi32(sumi[0]), hsum_epi32(prod[0]));
            acc1 = q4_k_block_scalar(acc1, i, m, d_w, dmin_w, a[0].d);
            continue;
        }
        let zero = _mm256_setzero_si256();
        let i = sum_lanes8(std::array::from_fn(|t| if t < T { fold512(sumi[t]) } else { zero }));
        let m = sum_lanes8(std::array::from_fn(|t| if t < T { prod[t] } else { zero }));
        let mut d_a = [0f32; 8];
        for t in 0..T {
            d_a[t] = a[t].d;
        }
        let f = _mm256_mul_ps(_mm256_set1_ps(d_w), _mm256_cvtepi32_ps(i));
        let f = _mm256_fnmadd_ps(_mm256_set1_ps(dmin_w), _mm256_cvtepi32_ps(m), f);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(d_a.as_ptr()), f, acc);
    }
    if T == 1 {
        return [acc1; T];
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc);
    std::array::from_fn(|t| out[t])
}

/// Q4_K · Q8_K for 16 tokens at once, lanes being tokens (act: [blocks] of `ActQ8K16`, the
/// tokens transposed): per block the 256 codes are unpacked once to bytes on the stack, then
/// each 4 codes, broadcast, meet the same 4 quants of all 16 tokens in one `vpdpbusd`; each
/// sub-block's i32 sums times its scale. The quants carry +128 (unsigned for `vpdpbusd`), taken
/// back once per block as 128 · Σ scale · code; the mins term is four `vpdpwssd` of the
/// tokens' sub-block sums against broadcast pairs of mins. The f32 work is
/// `q4_k_block_scalar`'s per lane: each token's result is bit for bit `dot_q4_k`'s.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm16_q4_k(row: &[u8], act: &[ActQ8K16], out: &mut [f32; GROUP_TOKENS]) {
    let blocks = row.len() / 144;
    assert_eq!(row.len(), blocks * 144, "row is [blocks] of Q4_K");
    assert_eq!(act.len(), blocks, "act is [blocks] of 16-token groups");
    #[repr(align(64))]
    struct Codes([u8; 256]);
    let mut codes = Codes([0; 256]);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = _mm512_setzero_ps();
    for (w, a) in row.chunks_exact(144).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 144);
        let [s0, s1, m0, m1] = unpack_scales_k4(&w[4..16]);
        let sc = (u64::from(s0) | u64::from(s1) << 32).to_le_bytes();
        let mn = (u64::from(m0) | u64::from(m1) << 32).to_le_bytes();
        // Codes in element order, and Σ scale · code (i16 lanes: at most 8 · 2 · 15 · 63).
        let mut wsum = _mm256_setzero_si256();
        for j in 0..4 {
            let bits = _mm256_loadu_si256(wp.add(16 + 32 * j).cast());
            let lo = _mm256_and_si256(bits, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            _mm256_store_si256(codes.0.as_mut_ptr().add(64 * j).cast(), lo);
            _mm256_store_si256(codes.0.as_mut_ptr().add(64 * j + 32).cast(), hi);
            let sl = _mm256_maddubs_epi16(lo, _mm256_set1_epi8(sc[2 * j] as i8));
            let sh = _mm256_maddubs_epi16(hi, _mm256_set1_epi8(sc[2 * j + 1] as i8));
            wsum = _mm256_add_epi16(wsum, _mm256_add_epi16(sl, sh));
        }
        let wsum = hsum_epi32(_mm256_madd_epi16(wsum, _mm256_set1_epi16(1)));
        // Eight sub-blocks' sums side by side: eight independent chains of `vpdpbusd`.
        let mut ssum = [_mm512_setzero_si512(); 8];
        for g in 0..8 {
            for (s, sum) in ssum.iter_mut().enumerate() {
                let x = load512(a.q.as_ptr().add(64 * (8 * s + g)));
                let quad = codes.0.as_ptr().add(32 * s + 4 * g).cast::<i32>().read();
                *sum = dpbusd(*sum, x, _mm512_set1_epi32(quad));
            }
        }
        let mut isum = _mm512_set1_epi32(-128 * wsum);
        for (sum, &scale) in ssum.iter().zip(&sc) {
            let scaled = _mm512_mullo_epi32(*sum, _mm512_set1_epi32(i32::from(scale)));
            isum = _mm512_add_epi32(isum, scaled);
        }
        let mut msum = _mm512_setzero_si512();
        for p in 0..4 {
            let pair = i32::from(mn[2 * p]) | i32::from(mn[2 * p + 1]) << 16;
            msum = dpwssd(msum, load512(a.sums.as_ptr().add(32 * p)), _mm512_set1_epi32(pair));
        }
        let (d_w, dmin_w) = (f16_at(wp), f16_at(wp.add(2)));
        let f = _mm512_mul_ps(_mm512_set1_ps(d_w), _mm512_cvtepi32_ps(isum));
        let f = _mm512_fnmadd_ps(_mm512_set1_ps(dmin_w), _mm512_cvtepi32_ps(msum), f);
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.d.as_ptr()), f, acc);
    }
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
}

/// Lane t of the result: the sum of the 8 i32 lanes of v[t] (three rounds of pairwise adds,
/// then the two halves).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn sum_lanes8(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let q0 = _mm256_hadd_epi32(h01, h23);
    let q1 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256::<0x20>(q0, q1);
    let hi = _mm256_permute2x128_si256::<0x31>(q0, q1);
    _mm256_add_epi32(lo, hi)
}

/// The sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

/// The f16 at `p` (unaligned) as f32, through F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned())))
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16] i8, d f16) · Q8_K: `dot_q6_k_multi` for one
/// token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    dot_q6_k_multi::<1>(row, act)[0]
}

/// The 128 codes (0..64) of half `half` of the Q6_K block at wp, in element order as two
/// vectors of 64: the 64 ql bytes' low nibbles are elements 0..64 and their high nibbles 64..128;
/// the 32 qh bytes, broadcast and shifted by 0 and 2 bits per 256-bit half, give their top two
/// bits (bits 0..2 and 4..6 of each byte).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn q6_codes(wp: *const u8, half: usize) -> [__m512i; 2] {
    let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let ql = load512(wp.add(64 * half));
    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(128 + 32 * half).cast()));
    let qh = _mm512_srlv_epi64(qh, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2));
    [
        _mm512_or_si512(
            _mm512_and_si512(ql, m4),
            _mm512_and_si512(_mm512_slli_epi16::<4>(qh), m30),
        ),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
            _mm512_and_si512(qh, m30),
        ),
    ]
}

/// Q6_K · Q8_K for T tokens at once (act: [T, blocks]), each weight block unpacked once
/// (`q6_codes`). Levels are 0..64 unsigned for `maddubs`; the -32 offset is 32 · Σ scale · bsum per block, as in `avx2::dot_q6_k`. Per
/// block the lanes are summed to each token's integer i, then acc + d_a · (d_w · i) per token
/// (lanes being tokens, as in `gemm16_q6_k`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot_q6_k_multi<const T: usize>(row: &[u8], act: &[BlockQ8K]) -> [f32; T] {
    let blocks = row.len() / 210;
    assert_eq!(row.len(), blocks * 210, "row is [blocks] of Q6_K");
    let rows = token_rows::<T>(act, blocks);
    let permutes: [__m512i; 4] = std::array::from_fn(|s| load512(PERMUTE_Q6[s].as_ptr()));
    let mut acc = _mm256_setzero_ps();
    let mut acc1 = 0f32;
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
            let q6 = q6_codes(wp, half);
            for (k, q6) in q6.into_iter().enumerate() {
                let s = 2 * half + k;
                let scale = _mm512_permutexvar_epi16(permutes[s], scales);
                for t in 0..T {
                    let p = _mm512_maddubs_epi16(q6, load512(a[t].qs.as_ptr().add(64 * s)));
                    sumi[t] = dpwssd(sumi[t], scale, p);
                }
            }
        }
        let d_w = f16_at(wp.add(208));
        if T == 1 {
            acc1 = a[0].d.mul_add(d_w * _mm512_reduce_add_epi32(sumi[0]) as f32, acc1);
            continue;
        }
        let zero = _mm256_setzero_si256();
        let i = sum_lanes8(std::array::from_fn(|t| if t < T { fold512(sumi[t]) } else { zero }));
        let mut d_a = [0f32; 8];
        for t in 0..T {
            d_a[t] = a[t].d;
        }
        let f = _mm256_mul_ps(_mm256_set1_ps(d_w), _mm256_cvtepi32_ps(i));
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(d_a.as_ptr()), f, acc);
    }
    if T == 1 {
        return [acc1; T];
    }
    let mut out = [0f32; 8];
    _mm256_storeu_ps(out.as_mut_ptr(), acc);
    std::array::from_fn(|t| out[t])
}

/// Q6_K · Q8_K for 16 tokens at once, lanes being tokens (act: [blocks] of `ActQ8K16`), as
/// `gemm16_q4_k`: the codes (0..64) unpacked once per block, each 4 broadcast against the same
/// 4 quants (+128) of the 16 tokens, sixteen independent chains (one per group of 16), each
/// group's sums times its signed scale. Taken back per block: 128 · Σ scale · code (weights)
/// and the levels' -32, 32 · Σ scale · (sum of the group's quants) (eight `vpdpwssd` against
/// broadcast scale pairs). Then acc + d_a · (d_w · i): bit for bit `dot_q6_k` per token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm16_q6_k(row: &[u8], act: &[ActQ8K16], out: &mut [f32; GROUP_TOKENS]) {
    let blocks = row.len() / 210;
    assert_eq!(row.len(), blocks * 210, "row is [blocks] of Q6_K");
    assert_eq!(act.len(), blocks, "act is [blocks] of 16-token groups");
    #[repr(align(64))]
    struct Codes([u8; 256]);
    let mut codes = Codes([0; 256]);
    let shuffles: [__m512i; 4] = std::array::from_fn(|s| load512(SHUFFLE_Q6_GROUPS[s].as_ptr()));
    let ones = _mm512_set1_epi16(1);
    let mut acc = _mm512_setzero_ps();
    for (w, a) in row.chunks_exact(210).zip(act) {
        let wp = w.as_ptr();
        prefetch(wp, 210);
        let sc: [i8; 16] = std::array::from_fn(|g| *wp.add(192 + g) as i8);
        let scales8 = _mm512_broadcast_i32x4(_mm_loadu_si128(wp.add(192).cast()));
        // Codes in element order (as `dot_q6_k_multi` unpacks them), and Σ scale · code.
        let mut wsum = _mm512_setzero_si512();
        for half in 0..2 {
            let q6 = q6_codes(wp, half);
            for (k, q6) in q6.into_iter().enumerate() {
                let s = 2 * half + k;
                _mm512_store_si512(codes.0.as_mut_ptr().add(64 * s).cast(), q6);
                let scale = _mm512_shuffle_epi8(scales8, shuffles[s]);
                let pairs = _mm512_maddubs_epi16(q6, scale);
                wsum = _mm512_add_epi32(wsum, _mm512_madd_epi16(pairs, ones));
            }
        }
        let wsum = _mm512_reduce_add_epi32(wsum);
        let mut ssum = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            for (g, sum) in ssum.iter_mut().enumerate() {
                let x = load512(a.q.as_ptr().add(64 * (4 * g + q)));
                let quad = codes.0.as_ptr().add(16 * g + 4 * q).cast::<i32>().read();
                *sum = dpbusd(*sum, x, _mm512_set1_epi32(quad));
            }
        }
        let mut offset = _mm512_setzero_si512();
        for p in 0..8 {
            let pair = i32::from(sc[2 * p] as i16 as u16) | i32::from(sc[2 * p + 1]) << 16;
            let sums = load512(a.sums16.as_ptr().add(32 * p));
            offset = dpwssd(offset, sums, _mm512_set1_epi32(pair));
        }
        let mut isum =
            _mm512_sub_epi32(_mm512_set1_epi32(-128 * wsum), _mm512_slli_epi32::<5>(offset));
        for (sum, &scale) in ssum.iter().zip(&sc) {
            let scaled = _mm512_mullo_epi32(*sum, _mm512_set1_epi32(i32::from(scale)));
            isum = _mm512_add_epi32(isum, scaled);
        }
        let f = _mm512_mul_ps(_mm512_set1_ps(f16_at(wp.add(208))), _mm512_cvtepi32_ps(isum));
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.d.as_ptr()), f, acc);
    }
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
}

/// The 16 i32 lanes folded to 8 (lane i + lane i + 8).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fold512(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}
