//! Q8_0: 32 signed 8-bit quants with one f16 scale, x = d * q (ggml `block_q8_0`, 34 bytes).
//! The reference quantizer picks d = max|x| / 127 and rounds half away from zero.

use half::f16;

use super::block::{read_f16, write_f16, QuantBlock};

pub const QK8_0: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

const _: () = assert!(BlockQ8_0::BYTES == 2 + QK8_0);

impl QuantBlock for BlockQ8_0 {
    const ELEMS: usize = QK8_0;
    const BYTES: usize = 34;

    fn read(bytes: &[u8]) -> Self {
        let mut qs = [0i8; QK8_0];
        for (q, b) in qs.iter_mut().zip(&bytes[2..Self::BYTES]) {
            *q = *b as i8;
        }
        BlockQ8_0 { d: read_f16(bytes, 0), qs }
    }

    fn write(&self, out: &mut [u8]) {
        write_f16(out, 0, self.d);
        for (b, q) in out[2..Self::BYTES].iter_mut().zip(&self.qs) {
            *b = *q as u8;
        }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, q) in y[..QK8_0].iter_mut().zip(&self.qs) {
            *y = f32::from(*q) * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK8_0];
        // ggml's MAX(amax, |v|): a NaN makes the scale NaN, as in C.
        let amax = x.iter().fold(0.0f32, |amax, v| if amax > v.abs() { amax } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK8_0];
        for (q, v) in qs.iter_mut().zip(x) {
            // f32::round is C's roundf (half away from zero); `as` saturates like the C cast
            // does for every in-range value.
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 { d: f16::from_f32(d), qs }
    }
}
