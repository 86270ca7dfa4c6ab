//! Q4_0: 32 4-bit quants with one f16 scale, x = d * (q - 8) (ggml `block_q4_0`, 18 bytes).
//! Byte j holds element j in its low nibble and element j + 16 in its high nibble. The
//! reference quantizer maps the value of largest magnitude (sign kept) to -8.

use half::f16;

use super::block::{read_f16, write_f16, QuantBlock};

pub const QK4_0: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(BlockQ4_0::BYTES == 2 + QK4_0 / 2);

impl QuantBlock for BlockQ4_0 {
    const ELEMS: usize = QK4_0;
    const BYTES: usize = 18;

    fn read(bytes: &[u8]) -> Self {
        let mut qs = [0u8; QK4_0 / 2];
        qs.copy_from_slice(&bytes[2..Self::BYTES]);
        BlockQ4_0 { d: read_f16(bytes, 0), qs }
    }

    fn write(&self, out: &mut [u8]) {
        write_f16(out, 0, self.d);
        out[2..Self::BYTES].copy_from_slice(&self.qs);
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        let (lo, hi) = y[..QK4_0].split_at_mut(QK4_0 / 2);
        for ((q, y0), y1) in self.qs.iter().zip(lo).zip(hi) {
            *y0 = (i32::from(q & 0x0f) - 8) as f32 * d;
            *y1 = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK4_0];
        // The first element of largest magnitude, with its sign.
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // (int8_t)(v*id + 8.5f) truncates toward zero; the result is at least 0.5 here.
        let level = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let mut qs = [0u8; QK4_0 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = level(x[j]) | (level(x[j + QK4_0 / 2]) << 4);
        }
        BlockQ4_0 { d: f16::from_f32(d), qs }
    }
}
