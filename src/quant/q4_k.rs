//! Q4_K: super-blocks of 256 elements in 8 sub-blocks of 32, x = d*sc*q - dmin*m with 4-bit q
//! and a 6-bit (sc, m) pair per sub-block (ggml `block_q4_K`, 144 bytes: d, dmin f16, scales[12]
//! packed as `kquant::scale_min_k4` reads them, qs[128]). Each 64 elements share 32 bytes of qs:
//! the first 32 in the low nibbles, the next 32 in the high nibbles.

use half::f16;

use super::block::{read_f16, write_f16, QuantBlock};
use super::kquant::{quantize_superblock_k4, scale_min_k4, ScaleSearch};
use super::QK_K;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(BlockQ4K::BYTES == 2 + 2 + 12 + QK_K / 2);

/// The trial scales of `quantize_row_q4_K_ref`.
const SEARCH: ScaleSearch = ScaleSearch { rmin: -1.0, rdelta: 0.1, steps: 20 };

impl QuantBlock for BlockQ4K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 144;

    fn read(bytes: &[u8]) -> Self {
        let mut scales = [0u8; 12];
        scales.copy_from_slice(&bytes[4..16]);
        let mut qs = [0u8; QK_K / 2];
        qs.copy_from_slice(&bytes[16..Self::BYTES]);
        BlockQ4K { d: read_f16(bytes, 0), dmin: read_f16(bytes, 2), scales, qs }
    }

    fn write(&self, out: &mut [u8]) {
        write_f16(out, 0, self.d);
        write_f16(out, 2, self.dmin);
        out[4..16].copy_from_slice(&self.scales);
        out[16..Self::BYTES].copy_from_slice(&self.qs);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let min = self.dmin.to_f32();
        let groups = self.qs.chunks_exact(32).zip(y[..QK_K].chunks_exact_mut(64));
        for (k, (q, y)) in groups.enumerate() {
            let (sc1, m1) = scale_min_k4(2 * k, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * k + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = y.split_at_mut(32);
            for ((q, y1), y2) in q.iter().zip(lo).zip(hi) {
                *y1 = d1 * f32::from(q & 0x0f) - m1;
                *y2 = d2 * f32::from(q >> 4) - m2;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let sb = quantize_superblock_k4(x, 15, SEARCH);
        let mut qs = [0u8; QK_K / 2];
        for (q, l) in qs.chunks_exact_mut(32).zip(sb.levels.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = l[i] | (l[i + 32] << 4);
            }
        }
        BlockQ4K { d: sb.d, dmin: sb.dmin, scales: sb.scales, qs }
    }
}
