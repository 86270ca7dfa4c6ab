//! Q8_K: the activation format of the K-quant dot products (ggml `block_q8_K`, 292 bytes: d f32,
//! qs[256] i8, bsums[16] i16). x = d * q; bsums[k] is the sum of quants 16k..16k+16, so the
//! `- dmin * m` term of Q4_K/Q5_K costs one 8-term dot per super-block. Never a model tensor:
//! the CPU backend quantizes each activation row into it with ggml's `quantize_row_q8_K_ref`.
//! `#[repr(C)]` with no padding, so SIMD kernels can load `qs` and `bsums` in place.

use super::block::QuantBlock;
use super::kquant::nearest_int;
use super::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(BlockQ8K::BYTES == 4 + QK_K + 2 * (QK_K / 16));
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == BlockQ8K::BYTES);

impl BlockQ8K {
    /// The all-zero block (d = 0): what the quantizer makes of an all-zero input.
    pub const ZERO: BlockQ8K = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
}

impl QuantBlock for BlockQ8K {
    const ELEMS: usize = QK_K;
    const BYTES: usize = 292;

    fn read(bytes: &[u8]) -> Self {
        let d = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let qs = std::array::from_fn(|i| bytes[4 + i] as i8);
        let bsums = std::array::from_fn(|k| {
            let at = 4 + QK_K + 2 * k;
            i16::from_le_bytes([bytes[at], bytes[at + 1]])
        });
        BlockQ8K { d, qs, bsums }
    }

    fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.d.to_le_bytes());
        for (b, q) in out[4..4 + QK_K].iter_mut().zip(&self.qs) {
            *b = *q as u8;
        }
        for (b, s) in out[4 + QK_K..Self::BYTES].chunks_exact_mut(2).zip(&self.bsums) {
            b.copy_from_slice(&s.to_le_bytes());
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        for (y, q) in y[..QK_K].iter_mut().zip(&self.qs) {
            *y = self.d * f32::from(*q);
        }
    }

    /// The value of largest magnitude (sign kept) maps to -127; d = 1 / iscale is kept in f32.
    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            return BlockQ8K::ZERO;
        }
        let iscale = -127.0 / max;
        let qs: [i8; QK_K] = std::array::from_fn(|j| nearest_int(iscale * x[j]).min(127) as i8);
        let bsums = std::array::from_fn(|k| {
            qs[16 * k..16 * k + 16].iter().map(|&q| i16::from(q)).sum::<i16>()
        });
        BlockQ8K { d: 1.0 / iscale, qs, bsums }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_write_read_dequantize() {
        let x: Vec<f32> = (0..QK_K).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let block = BlockQ8K::quantize(&x);
        let mut bytes = [0u8; BlockQ8K::BYTES];
        block.write(&mut bytes);
        assert_eq!(BlockQ8K::read(&bytes), block);
        for (k, &s) in block.bsums.iter().enumerate() {
            let sum: i16 = block.qs[16 * k..16 * k + 16].iter().map(|&q| i16::from(q)).sum();
            assert_eq!(s, sum);
        }
        // The largest magnitude maps to ±127; every value is within half a step.
        assert_eq!(block.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
        let mut y = [0f32; QK_K];
        block.dequantize(&mut y);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 0.5 * block.d.abs() * 1.0001));
        assert_eq!(BlockQ8K::quantize(&[0.0; QK_K]), BlockQ8K::ZERO);
    }
}
