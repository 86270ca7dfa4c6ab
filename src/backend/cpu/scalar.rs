//! Portable dot kernels: one weight row against one activation row, integer sums per block and
//! the scales applied as ggml's generic `ggml_vec_dot_*` do. Always compiled, always tested
//! (ROTARY_CPU_SIMD=off selects them), and the template the SIMD kernels follow.
//!
//! Every kernel takes the row's bytes (`blocks * BYTES`) and the activation blocks of one token.

use half::f16;

use super::act::{ActQ8_0, ActQ8_1};
use crate::quant::{bf16_to_f32, BlockQ8K, BlockQ8_0, QuantBlock, QK8_0, QK_K};

/// x [blocks * 32] as Q8_0 blocks, with ggml's reference quantizer (`quantize_row_q8_0_ref`).
pub(super) fn quantize_q8_0(x: &[f32], out: &mut [ActQ8_0]) {
    assert_eq!(x.len(), out.len() * QK8_0, "x is [blocks * 32]");
    for (x, out) in x.chunks_exact(QK8_0).zip(out) {
        let block = BlockQ8_0::quantize(x);
        *out = ActQ8_0 { d: block.d.to_f32(), qs: block.qs };
    }
}

/// x [blocks * 32] as Q8_1 blocks: the Q8_0 blocks of `quantize_q8_0` and s = d * Σ qs.
pub(super) fn quantize_q8_1(x: &[f32], out: &mut [ActQ8_1]) {
    assert_eq!(x.len(), out.len() * QK8_0, "x is [blocks * 32]");
    for (x, out) in x.chunks_exact(QK8_0).zip(out) {
        let block = BlockQ8_0::quantize(x);
        let d = block.d.to_f32();
        let sum: i32 = block.qs.iter().map(|&q| i32::from(q)).sum();
        *out = ActQ8_1 { d, s: d * sum as f32, qs: block.qs };
    }
}

/// x [blocks * 256] as Q8_K blocks (`quantize_row_q8_K_ref`).
pub(super) fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K, "x is [blocks * 256]");
    for (x, out) in x.chunks_exact(QK_K).zip(out) {
        *out = BlockQ8K::quantize(x);
    }
}

/// The little-endian f16 at `bytes[at..at + 2]`, widened.
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Σ q·y over the elements of q and y (plain loops over fixed chunks, which compilers vectorize).
pub(super) fn dot<Q: Copy + Into<i32>>(q: &[Q], y: &[i8]) -> i32 {
    q.iter().zip(y).map(|(&q, &y)| q.into() * i32::from(y)).sum()
}

/// The 12 packed scale bytes of Q4_K/Q5_K as four little-endian words [scales 0..4, scales
/// 4..8, mins 0..4, mins 4..8] (ggml's `utmp` shuffle: pairs 4..8 take their low 4 bits from
/// bytes 8..12 and their top 2 bits from bytes 0..8). Inlined so the SIMD kernels keep the
/// words in registers.
#[inline(always)]
pub(super) fn unpack_scales_k4(packed: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    [
        w0 & KMASK1,
        (w2 & KMASK2) | (((w0 >> 6) & KMASK3) << 4),
        w1 & KMASK1,
        ((w2 >> 4) & KMASK2) | (((w1 >> 6) & KMASK3) << 4),
    ]
}

/// `unpack_scales_k4` as bytes: [scale 0..8, min 0..8].
fn scales_mins_k4(packed: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(unpack_scales_k4(packed)) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Σ w·x over f32 weights stored as bytes, through `widen` (f32, f16 or bf16 bytes → f32), in
/// eight interleaved partial sums so the compiler can vectorize it.
fn dot_float<const BYTES: usize>(row: &[u8], x: &[f32], widen: impl Fn(&[u8]) -> f32) -> f32 {
    assert_eq!(row.len(), BYTES * x.len(), "row is [cols] of {BYTES}-byte floats");
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8 * BYTES).zip(x.chunks_exact(8));
    for (w, x) in chunks {
        for k in 0..8 {
            acc[k] += widen(&w[k * BYTES..(k + 1) * BYTES]) * x[k];
        }
    }
    let tail = x.len() / 8 * 8;
    let mut sum = acc.iter().sum::<f32>();
    for (w, x) in row[tail * BYTES..].chunks_exact(BYTES).zip(&x[tail..]) {
        sum += widen(w) * x;
    }
    sum
}

pub(super) fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<4>(row, x, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(super) fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<2>(row, x, |b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
}

pub(super) fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    dot_float::<2>(row, x, |b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
}

/// Q8_0 (34 bytes: d f16, qs[32] i8) · Q8_0.
pub(super) fn dot_q8_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 34, "row is [blocks] of Q8_0");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(34).zip(act) {
        let sumi: i32 =
            w[2..].iter().zip(&a.qs).map(|(&q, &y)| i32::from(q as i8) * i32::from(y)).sum();
        sum += sumi as f32 * (f16_at(w, 0) * a.d);
    }
    sum
}

/// Q4_0 (18 bytes: d f16, qs[16]: element j low nibble, j + 16 high nibble, both - 8) · Q8_0.
pub(super) fn dot_q4_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 18, "row is [blocks] of Q4_0");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(18).zip(act) {
        let (y_lo, y_hi) = a.qs.split_at(16);
        let mut sumi = 0i32;
        for ((&q, &y0), &y1) in w[2..].iter().zip(y_lo).zip(y_hi) {
            sumi += (i32::from(q & 0x0f) - 8) * i32::from(y0);
            sumi += (i32::from(q >> 4) - 8) * i32::from(y1);
        }
        sum += sumi as f32 * (f16_at(w, 0) * a.d);
    }
    sum
}

/// Σ sc[sub] * Σ level·y over the 8 sub-blocks of 32 of a Q4_K/Q5_K super-block, and the min
/// term Σ m[sub] * (bsum[2 sub] + bsum[2 sub + 1]). `sm` is [scale 0..8, min 0..8].
fn sums_k4(levels: &[u8; QK_K], sm: &[u8; 16], a: &BlockQ8K) -> (i32, i32) {
    let mut sumi = 0i32;
    let subs = levels.chunks_exact(32).zip(a.qs.chunks_exact(32));
    for ((l, y), &sc) in subs.zip(&sm[..8]) {
        let dot: i32 = l.iter().zip(y).map(|(&l, &y)| i32::from(l) * i32::from(y)).sum();
        sumi += i32::from(sc) * dot;
    }
    let bsums = a.bsums.chunks_exact(2).map(|b| i32::from(b[0]) + i32::from(b[1]));
    let summ = sm[8..].iter().zip(bsums).map(|(&m, b)| i32::from(m) * b).sum();
    (sumi, summ)
}

/// The 4-bit levels of a Q4_K/Q5_K super-block: group g (64 elements) is bytes 32g..32g+32 of
/// qs, low nibbles first.
fn nibbles_k4(qs: &[u8]) -> [u8; QK_K] {
    let mut levels = [0u8; QK_K];
    for (l, q) in levels.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
        let (lo, hi) = l.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
            (*lo, *hi) = (q & 0x0f, q >> 4);
        }
    }
    levels
}

/// Q4_K (144 bytes: d, dmin f16, scales[12], qs[128]) · Q8_K.
pub(super) fn dot_q4_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 144, "row is [blocks] of Q4_K");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(144).zip(act) {
        let levels = nibbles_k4(&w[16..144]);
        let (sumi, summ) = sums_k4(&levels, &scales_mins_k4(&w[4..16]), a);
        sum += a.d * f16_at(w, 0) * sumi as f32 - a.d * f16_at(w, 2) * summ as f32;
    }
    sum
}

/// Q5_K (176 bytes: d, dmin f16, scales[12], qh[32], qs[128]) · Q8_K.
pub(super) fn dot_q5_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 176, "row is [blocks] of Q5_K");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(176).zip(act) {
        let mut levels = nibbles_k4(&w[48..176]);
        // Element 32k + l takes 16 more when bit k of qh[l] is set.
        for (k, l) in levels.chunks_exact_mut(32).enumerate() {
            for (l, &h) in l.iter_mut().zip(&w[16..48]) {
                *l |= ((h >> k) & 1) << 4;
            }
        }
        let (sumi, summ) = sums_k4(&levels, &scales_mins_k4(&w[4..16]), a);
        sum += a.d * f16_at(w, 0) * sumi as f32 - a.d * f16_at(w, 2) * summ as f32;
    }
    sum
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16] i8, d f16) · Q8_K.
pub(super) fn dot_q6_k(row: &[u8], act: &[BlockQ8K]) -> f32 {
    assert_eq!(row.len(), act.len() * 210, "row is [blocks] of Q6_K");
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(210).zip(act) {
        let q = values_q6_k(&w[..128], &w[128..192]);
        let mut sumi = 0i32;
        let subs = q.chunks_exact(16).zip(a.qs.chunks_exact(16));
        for ((q, y), &sc) in subs.zip(&w[192..208]) {
            let dot: i32 = q.iter().zip(y).map(|(&q, &y)| i32::from(q) * i32::from(y)).sum();
            sumi += i32::from(sc as i8) * dot;
        }
        sum += a.d * f16_at(w, 208) * sumi as f32;
    }
    sum
}

/// The signed values (level - 32) of a Q6_K super-block. In half h (128 elements), element
/// l + 32k takes the low (k < 2) or high nibble of ql[64h + l + 32 (k % 2)] and bits 2k..2k+2
/// of qh[32h + l].
fn values_q6_k(ql: &[u8], qh: &[u8]) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for ((q, ql), qh) in q.chunks_exact_mut(128).zip(ql.chunks_exact(64)).zip(qh.chunks_exact(32)) {
        for (k, q) in q.chunks_exact_mut(32).enumerate() {
            let low_bytes = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            for ((q, &low), &high) in q.iter_mut().zip(low_bytes).zip(qh) {
                let low = if k < 2 { low & 0x0f } else { low >> 4 };
                *q = (low | (((high >> (2 * k)) & 3) << 4)) as i8 - 32;
            }
        }
    }
    q
}
