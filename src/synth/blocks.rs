//! Random weights in the quantized domain: random codes in every block, then the block's scale
//! fields set so that its weights have the tensor's std (and, where the format has a min or a
//! signed scale, zero mean). Fast at any size: no quantizer search runs.
//!
//! The formats with hand-derived scales (F32 F16 BF16 Q8_0 Q4_0 Q4_K Q5_K Q6_K) keep them; every
//! other supported format (read-only in src/quant/) sets its sub-block scales to random values
//! in the upper half of their range, its block scale to 1, measures the block's std through the
//! reference dequantizer and rescales the block scale(s) to the target.

use half::{bf16, f16};

use super::{Dist, Rng};
use crate::quant::{self, GgmlType};

pub(crate) const SQRT3: f32 = 1.732_050_8;
/// RMS of a uniform integer scale drawn from 32..=63 (√E[sc²]).
const SC_RMS: f32 = 48.3;

/// Fill `out` (a whole number of blocks of `ty`) with random weights of distribution `d`.
pub(crate) fn fill_blocks(ty: GgmlType, d: Dist, rng: &mut Rng, out: &mut [u8]) {
    let a = d.sigma * SQRT3; // half-width of a uniform with std σ
    match ty {
        GgmlType::F32 => out
            .chunks_exact_mut(4)
            .for_each(|c| c.copy_from_slice(&(d.center + a * rng.symmetric()).to_le_bytes())),
        GgmlType::F16 => out.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&f16::from_f32(d.center + a * rng.symmetric()).to_le_bytes())
        }),
        GgmlType::BF16 => out.chunks_exact_mut(2).for_each(|c| {
            c.copy_from_slice(&bf16::from_f32(d.center + a * rng.symmetric()).to_le_bytes())
        }),
        _ => {
            rng.fill(out); // random quant codes; the block headers are overwritten below
            assert!(d.center == 0.0, "quantized synth tensors are zero-centred");
            out.chunks_exact_mut(ty.block_bytes()).for_each(|b| {
                center_codes(ty, b);
                set_block_scales(ty, d, rng, b)
            });
        }
    }
}

/// Codes on an even-sized range have one value without a mirror (int8 −128, Q4_0's −8), which
/// biases the mean by half a code; map it to 0. (Q6_K keeps its −0.5-code offset, −σ/37.)
fn center_codes(ty: GgmlType, b: &mut [u8]) {
    match ty {
        GgmlType::Q8_0 => b[2..].iter_mut().filter(|q| **q == 0x80).for_each(|q| *q = 0),
        GgmlType::Q4_0 => b[2..].iter_mut().for_each(|q| {
            let (lo, hi) = (*q & 0x0F, *q >> 4);
            *q = (if lo == 0 { 8 } else { lo }) | (if hi == 0 { 8 } else { hi }) << 4;
        }),
        _ => {}
    }
}

/// Overwrite the scale fields of one block of random codes so the block's weights are
/// zero-mean with std `d.sigma` (see the module comment).
fn set_block_scales(ty: GgmlType, d: Dist, rng: &mut Rng, b: &mut [u8]) {
    // Std of a uniform code q on 0..n-1 around its mean: √((n²-1)/12).
    let std_u = |n: f32| ((n * n - 1.0) / 12.0).sqrt();
    match ty {
        // w = d·q, q uniform int8.
        GgmlType::Q8_0 => b[0..2].copy_from_slice(&f16::from_f32(d.sigma / 73.6).to_le_bytes()),
        // w = d·(q − 8), q in 0..16 with 0 moved to 8 (center_codes): E[(q − 8)²] = 2·140/16.
        GgmlType::Q4_0 => {
            b[0..2].copy_from_slice(&f16::from_f32(d.sigma / 17.5f32.sqrt()).to_le_bytes())
        }
        // w = d·sc·q − dmin·m with m = sc and dmin = d·(n−1)/2: zero-mean codes.
        GgmlType::Q4K | GgmlType::Q5K => {
            let n = if ty == GgmlType::Q4K { 16.0 } else { 32.0 };
            let scale = d.sigma / (SC_RMS * std_u(n));
            b[0..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
            b[2..4].copy_from_slice(&f16::from_f32(scale * (n - 1.0) / 2.0).to_le_bytes());
            let sc: [u8; 8] = std::array::from_fn(|_| rng.range(32, 63) as u8);
            b[4..16].copy_from_slice(&quant::pack_scale_min_k4(&sc, &sc));
        }
        // w = d·sc·(q − 32), q in 0..64, sc int8 (here 32..63); d is the last 2 bytes.
        GgmlType::Q6K => {
            let scale = d.sigma / (SC_RMS * std_u(64.0));
            for s in &mut b[192..208] {
                *s = rng.range(32, 63) as u8;
            }
            b[208..210].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
        }
        _ => set_read_only_scales(ty, d.sigma, rng, b),
    }
}

/// A random sub-block scale code in the upper half of `0..2^bits` (so the block's std does not
/// hinge on one tiny scale).
fn upper_half(rng: &mut Rng, bits: u32) -> u8 {
    rng.range(1 << (bits - 1), (1 << bits) - 1) as u8
}

/// A random signed 6-bit scale stored with offset 32: 32 ± 8..15 (the sign alternates the
/// sub-blocks' means, which centres Q3_K's −0.5-code and IQ4's level bias).
fn signed6(rng: &mut Rng) -> u8 {
    let r = rng.range(8, 15) as u8;
    if rng.range(0, 1) == 0 {
        32 + r
    } else {
        32 - r
    }
}

fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn get_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Write random sub-block scales and a block scale of 1 (the read-only formats); returns the
/// offsets of the f16 fields that scale the whole block (rescaled together afterwards).
fn set_unit_scales(ty: GgmlType, rng: &mut Rng, b: &mut [u8]) -> &'static [usize] {
    use GgmlType::*;
    let nibbles = |b: &mut [u8], rng: &mut Rng| {
        b.iter_mut().for_each(|x| *x = upper_half(rng, 4) | (upper_half(rng, 4) << 4))
    };
    match ty {
        // x = d·q + m: d = 1, m = 0 here; the mean is removed by the caller.
        Q4_1 | Q5_1 => {
            put_f16(b, 0, 1.0);
            put_f16(b, 2, 0.0);
            &[0]
        }
        Q5_0 | IQ4NL | IQ2XXS | IQ2XS | IQ2S | IQ3XXS | IQ3S | IQ1S | IQ4XS => {
            put_f16(b, 0, 1.0);
            match ty {
                IQ2XXS => (0..8)
                    .for_each(|i| b[9 + 8 * i] = b[9 + 8 * i] & 0x0f | upper_half(rng, 4) << 4),
                IQ3XXS => (0..8)
                    .for_each(|i| b[69 + 4 * i] = b[69 + 4 * i] & 0x0f | upper_half(rng, 4) << 4),
                IQ2XS => nibbles(&mut b[66..74], rng),
                IQ2S => nibbles(&mut b[74..82], rng),
                IQ3S => nibbles(&mut b[106..110], rng),
                IQ1S => (0..8)
                    .for_each(|i| b[35 + 2 * i] = b[35 + 2 * i] & 0x8f | upper_half(rng, 3) << 4),
                IQ4XS => {
                    let ls: [u8; 8] = std::array::from_fn(|_| signed6(rng));
                    let high = (0..8).fold(0u16, |h, i| h | (u16::from(ls[i] >> 4) << (2 * i)));
                    b[2..4].copy_from_slice(&high.to_le_bytes());
                    (0..4).for_each(|i| b[4 + i] = ls[2 * i] & 0x0f | (ls[2 * i + 1] & 0x0f) << 4);
                }
                _ => {}
            }
            &[0]
        }
        // x = d·sc·q − dmin·m with m = sc and dmin = 1.5·d: q in 0..3 averages 1.5.
        Q2K => {
            b[..16].iter_mut().for_each(|x| *x = upper_half(rng, 4) * 0x11);
            put_f16(b, 80, 1.0);
            put_f16(b, 82, 1.5);
            &[80, 82]
        }
        Q3K => {
            let sc: [u8; 16] = std::array::from_fn(|_| signed6(rng));
            b[96..108].fill(0);
            for (i, &v) in sc.iter().enumerate() {
                b[96 + i % 8] |= (v & 0x0f) << (4 * (i / 8));
                b[104 + i % 4] |= (v >> 4) << (2 * (i / 4));
            }
            put_f16(b, 108, 1.0);
            &[108]
        }
        IQ1M => {
            for i in 0..4 {
                let sc = (0..4).fold(0u16, |s, j| s | u16::from(upper_half(rng, 3)) << (3 * j));
                b[48 + 2 * i..50 + 2 * i].copy_from_slice(&sc.to_le_bytes());
            }
            set_iq1_m_d(b, 1.0);
            &[]
        }
        MXFP4 => {
            b[0] = 128; // 2^(e − 128) = 1
            &[]
        }
        NVFP4 => {
            b[..4].fill(0x40); // UE4M3 2.0, halved: 1
            &[]
        }
        other => unreachable!("synth does not write {other}"),
    }
}

/// IQ1_M's d: an f16 spread over the top nibbles of its four scale u16s.
fn set_iq1_m_d(b: &mut [u8], d: f32) {
    let bits = f16::from_f32(d).to_bits();
    for i in 0..4 {
        let at = 48 + 2 * i;
        let sc = u16::from_le_bytes([b[at], b[at + 1]]) & 0x0fff | ((bits >> (4 * i)) & 0xf) << 12;
        b[at..at + 2].copy_from_slice(&sc.to_le_bytes());
    }
}

/// The read-only formats: unit scales, then the block scale(s) rescaled so the block's std is
/// `sigma` (measured through the reference dequantizer) and, for Q4_1/Q5_1, its mean 0.
fn set_read_only_scales(ty: GgmlType, sigma: f32, rng: &mut Rng, b: &mut [u8]) {
    let fields = set_unit_scales(ty, rng, b);
    let mut y = [0f32; quant::QK_K];
    let y = &mut y[..ty.block_elems()];
    quant::dequantize(ty, b, y).expect("one whole block of a supported type");
    let n = y.len() as f32;
    let mean = y.iter().sum::<f32>() / n;
    let std = (y.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n).sqrt();
    let f = if std > 0.0 && std.is_finite() { sigma / std } else { 0.0 };
    for &at in fields {
        put_f16(b, at, get_f16(b, at) * f);
    }
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 => put_f16(b, 2, -mean * f),
        // Levels without a mirror (Q5_0's −16, IQ4_NL's −127..113): a random sign of d per
        // block makes the tensor zero-mean.
        GgmlType::Q5_0 | GgmlType::IQ4NL if rng.range(0, 1) == 1 => put_f16(b, 0, -get_f16(b, 0)),
        GgmlType::IQ1M => set_iq1_m_d(b, f),
        GgmlType::MXFP4 => b[0] = e8m0_for(f, rng),
        GgmlType::NVFP4 => b[..4].fill(nearest_ue4m3_half(f)),
        _ => {}
    }
}

/// An E8M0 exponent e (scale 2^(e − 128)) for the scale `f`: one of the two powers of two around
/// it, the upper with the probability that makes E[scale²] = f², so the tensor's std is the
/// target although each block's scale is a power of two.
fn e8m0_for(f: f32, rng: &mut Rng) -> u8 {
    let lo = f.max(1e-30).log2().floor();
    let p = (f * f / 4f32.powf(lo) - 1.0) / 3.0;
    let up = ((rng.next() >> 40) as f32 / (1u64 << 24) as f32) < p;
    (128.0 + lo + if up { 1.0 } else { 0.0 }).clamp(2.0, 254.0) as u8
}

/// The UE4M3 code whose halved value is nearest `v` (1..=0x7E: the non-zero codes).
fn nearest_ue4m3_half(v: f32) -> u8 {
    let err = |c: u8| (quant::ue4m3_half(c) - v).abs();
    (1u8..=0x7e).min_by(|&a, &b| err(a).total_cmp(&err(b))).expect("non-empty range")
}
