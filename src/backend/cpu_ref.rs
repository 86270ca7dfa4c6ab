//! The reference backend: each weight row dequantized to f32 with the bit-exact dequantizers of
//! src/quant, then a plain f32 dot product. No SIMD, no threads, nothing clever: the oracle.

use super::{check_matmul, Backend, Mat};
use crate::error::Result;
use crate::quant;

pub struct CpuRef;

impl Backend for CpuRef {
    fn name(&self) -> &'static str {
        "cpu-ref"
    }

    fn is_reference(&self) -> bool {
        true
    }

    fn matmul(&self, w: &Mat, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        check_matmul(w, x, n, y);
        let mut row = vec![0f32; w.cols]; // [cols]
        for i in 0..w.rows {
            quant::dequantize(w.ty, w.row(i), &mut row)?;
            for t in 0..n {
                let xt = &x[t * w.cols..(t + 1) * w.cols];
                let mut acc = 0f32;
                for j in 0..w.cols {
                    acc += row[j] * xt[j];
                }
                y[t * w.rows + i] = acc;
            }
        }
        Ok(())
    }
}
