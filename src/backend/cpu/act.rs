//! Activation rows in the format ggml's `vec_dot_type` asks for each weight type: Q8_0 for Q8_0
//! and Q4_0 weights, Q8_K for the K-quants, plain f32 for float weights. Quantized once per
//! matmul on the calling thread (by `scalar` or `avx2`) into buffers the backend keeps, so the
//! decode loop allocates nothing once the largest shape has been seen.

use crate::quant::{BlockQ8K, QK8_0, QK_K};

/// Q8_0 activations with the scale widened once: ggml's `block_q8_0` stores d as f16, and so
/// does this (d is the f16-rounded value, exactly), only already converted to f32.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActQ8_0 {
    pub d: f32,
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<ActQ8_0>() == 4 + QK8_0);

impl ActQ8_0 {
    pub(crate) const ZERO: ActQ8_0 = ActQ8_0 { d: 0.0, qs: [0; QK8_0] };
}

/// The activation format a weight type is dotted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    F32,
    Q8_0,
    Q8K,
}

impl ActFormat {
    /// Elements per activation block.
    pub(crate) fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8_0 => QK8_0,
            ActFormat::Q8K => QK_K,
        }
    }
}

/// Reusable quantized-activation buffers (grown, never shrunk).
#[derive(Default)]
pub(crate) struct Scratch {
    q8_0: Vec<ActQ8_0>,
    q8_k: Vec<BlockQ8K>,
}

impl Scratch {
    /// Room for `n_blocks` Q8_0 activation blocks.
    pub(crate) fn q8_0(&mut self, n_blocks: usize) -> &mut [ActQ8_0] {
        if self.q8_0.len() < n_blocks {
            self.q8_0.resize(n_blocks, ActQ8_0::ZERO);
        }
        &mut self.q8_0[..n_blocks]
    }

    /// Room for `n_blocks` Q8_K activation blocks.
    pub(crate) fn q8_k(&mut self, n_blocks: usize) -> &mut [BlockQ8K] {
        if self.q8_k.len() < n_blocks {
            self.q8_k.resize(n_blocks, BlockQ8K::ZERO);
        }
        &mut self.q8_k[..n_blocks]
    }
}
