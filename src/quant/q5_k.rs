//! Q5_K: Q4_K plus a fifth bit per quant, x = d*sc*q - dmin*m with q in 0..32 (ggml
//! `block_q5_K`, 176 bytes: d, dmin f16, scales[12], qh[32], qs[128]). The 64 elements of group
//! k take their low 4 bits as in Q4_K and their high bit from qh: bit 2k for the first 32,
//! bit 2k+1 for the next 32.

use half::f16;

use super::block::{read_f16, write_f16, QuantBlock};
use super::kquant::{quantize_superblock_k4, scale_min_k4, ScaleSearch};
use super::QK_K;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(BlockQ5K::BYTES == 2 + 2 + 12 + QK_K / 8 + QK_K / 2);

/// The trial scales of `quantize_row_q5_K_ref`.
const SEARCH: ScaleSearch = ScaleSearch { rmin: -0.5, rdelta: 0.1, steps: 15 };

impl QuantBlock for BlockQ5K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 176;

    fn read(bytes: &[u8]) -> Self {
        let mut scales = [0u8; 12];
        scales.copy_from_slice(&bytes[4..16]);
        let mut qh = [0u8; QK_K / 8];
        qh.copy_from_slice(&bytes[16..48]);
        let mut qs = [0u8; QK_K / 2];
        qs.copy_from_slice(&bytes[48..Self::BYTES]);
        BlockQ5K { d: read_f16(bytes, 0), dmin: read_f16(bytes, 2), scales, qh, qs }
    }

    fn write(&self, out: &mut [u8]) {
        write_f16(out, 0, self.d);
        write_f16(out, 2, self.dmin);
        out[4..16].copy_from_slice(&self.scales);
        out[16..48].copy_from_slice(&self.qh);
        out[48..Self::BYTES].copy_from_slice(&self.qs);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        let groups = self.qs.chunks_exact(32).zip(y[..QK_K].chunks_exact_mut(64));
        for (k, (ql, y)) in groups.enumerate() {
            let (sc1, m1) = scale_min_k4(2 * k, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * k + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
            let high = |qh: u8, mask: u8| if qh & mask != 0 { 16 } else { 0 };
            let (lo, hi) = y.split_at_mut(32);
            for (((ql, qh), y1), y2) in ql.iter().zip(&self.qh).zip(lo).zip(hi) {
                *y1 = d1 * f32::from((ql & 0x0f) + high(*qh, u1)) - m1;
                *y2 = d2 * f32::from((ql >> 4) + high(*qh, u2)) - m2;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let sb = quantize_superblock_k4(x, 31, SEARCH);
        let mut qh = [0u8; QK_K / 8];
        let mut qs = [0u8; QK_K / 2];
        for (k, (ql, l)) in qs.chunks_exact_mut(32).zip(sb.levels.chunks_exact(64)).enumerate() {
            let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
            for i in 0..32 {
                let (l1, l2) = (l[i], l[i + 32]);
                if l1 > 15 {
                    qh[i] |= u1;
                }
                if l2 > 15 {
                    qh[i] |= u2;
                }
                ql[i] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
        }
        BlockQ5K { d: sb.d, dmin: sb.dmin, scales: sb.scales, qh, qs }
    }
}
