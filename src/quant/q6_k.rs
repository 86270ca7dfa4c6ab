//! Q6_K: super-blocks of 256 elements in 16 sub-blocks of 16, x = d * sc * (q - 32) with 6-bit
//! q and a signed 8-bit sc per sub-block (ggml `block_q6_K`, 210 bytes: ql[128] low 4 bits,
//! qh[64] high 2 bits, scales[16] i8, d f16 last). Each half of 128 elements uses 64 bytes of
//! ql (elements l and l+64 share byte l, l+32 and l+96 share byte l+32) and 32 bytes of qh
//! (the high bits of elements l, l+32, l+64, l+96 at bit 0, 2, 4, 6 of byte l).

use half::f16;

use super::block::{read_f16, write_f16, QuantBlock};
use super::kquant::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::QK_K;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = assert!(BlockQ6K::BYTES == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2);

impl QuantBlock for BlockQ6K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 210;

    fn read(bytes: &[u8]) -> Self {
        let mut ql = [0u8; QK_K / 2];
        ql.copy_from_slice(&bytes[..128]);
        let mut qh = [0u8; QK_K / 4];
        qh.copy_from_slice(&bytes[128..192]);
        let scales = std::array::from_fn(|i| bytes[192 + i] as i8);
        BlockQ6K { ql, qh, scales, d: read_f16(bytes, 208) }
    }

    fn write(&self, out: &mut [u8]) {
        out[..128].copy_from_slice(&self.ql);
        out[128..192].copy_from_slice(&self.qh);
        for (b, s) in out[192..208].iter_mut().zip(&self.scales) {
            *b = *s as u8;
        }
        write_f16(out, 208, self.d);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (half, y) in y[..QK_K].chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * half..64 * half + 64];
            let qh = &self.qh[32 * half..32 * half + 32];
            let sc = &self.scales[8 * half..8 * half + 8];
            for l in 0..32 {
                let is = l / 16;
                let q = |low: u8, shift: u32| {
                    let six = low | (((qh[l] >> shift) & 3) << 4);
                    f32::from(six as i8 - 32)
                };
                y[l] = d * f32::from(sc[is]) * q(ql[l] & 0x0f, 0);
                y[l + 32] = d * f32::from(sc[is + 2]) * q(ql[l + 32] & 0x0f, 2);
                y[l + 64] = d * f32::from(sc[is + 4]) * q(ql[l] >> 4, 4);
                y[l + 96] = d * f32::from(sc[is + 6]) * q(ql[l + 32] >> 4, 6);
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut levels = [0u8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for (ib, scale) in scales.iter_mut().enumerate() {
            let range = 16 * ib..16 * ib + 16;
            *scale = make_qx_quants(32, &x[range.clone()], &mut levels[range]);
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = *scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            let (ql, qh) = ([0; QK_K / 2], [0; QK_K / 4]);
            return BlockQ6K { ql, qh, scales: [0; QK_K / 16], d: f16::ZERO };
        }

        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        // C stores MIN(127, nearest_int(..)) into an int8_t (wrapping below -128).
        let qscales: [i8; QK_K / 16] =
            std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
        for (ib, &sc) in qscales.iter().enumerate() {
            let dl = d.to_f32() * f32::from(sc);
            if dl == 0.0 {
                continue;
            }
            for i in 16 * ib..16 * ib + 16 {
                levels[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
            }
        }
        let (ql, qh) = pack(&levels);
        BlockQ6K { ql, qh, scales: qscales, d }
    }
}

/// Split levels 0..64 into the low-nibble and high-2-bit arrays.
fn pack(levels: &[u8; QK_K]) -> ([u8; QK_K / 2], [u8; QK_K / 4]) {
    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for half in 0..2 {
        let l = &levels[128 * half..128 * half + 128];
        let ql = &mut ql[64 * half..64 * half + 64];
        let qh = &mut qh[32 * half..32 * half + 32];
        for i in 0..32 {
            ql[i] = (l[i] & 0x0f) | ((l[i + 64] & 0x0f) << 4);
            ql[i + 32] = (l[i + 32] & 0x0f) | ((l[i + 96] & 0x0f) << 4);
            qh[i] = (l[i] >> 4)
                | ((l[i + 32] >> 4) << 2)
                | ((l[i + 64] >> 4) << 4)
                | ((l[i + 96] >> 4) << 6);
        }
    }
    (ql, qh)
}
