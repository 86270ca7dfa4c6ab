//! Activation rows in the format ggml's `vec_dot_type` asks for each weight type: Q8_0 for the
//! 32- and 64-element formats without an offset (Q8_0, Q4_0, Q5_0, IQ4_NL, MXFP4, NVFP4), Q8_1
//! for those with one (Q4_1, Q5_1), Q8_K for the K-quants and the 256-element i-quants, plain
//! f32 for float weights. Quantized once per
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

/// Q8_1 activations: the Q8_0 block (same d, same quants) and s = d * Σ qs, what the weight
/// offset m of Q4_1/Q5_1 multiplies (Σ (d_w q + m) · d_a y = d_w d_a Σ q y + m s). ggml's
/// `block_q8_1` stores s as f16; here it is exact (an f32 product of the f16 d and an integer
/// below 2^12), so the kernel computes exactly the product with the dequantized activations.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActQ8_1 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<ActQ8_1>() == 8 + QK8_0);

impl ActQ8_1 {
    pub(crate) const ZERO: ActQ8_1 = ActQ8_1 { d: 0.0, s: 0.0, qs: [0; QK8_0] };
}

/// The activation format a weight type is dotted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActFormat {
    /// Elements per activation block.
    pub(crate) fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8_0 | ActFormat::Q8_1 => QK8_0,
            ActFormat::Q8K => QK_K,
        }
    }
}

/// Reusable quantized-activation buffers (grown, never shrunk).
#[derive(Default)]
pub(crate) struct Scratch {
    q8_0: Vec<ActQ8_0>,
    q8_1: Vec<ActQ8_1>,
    q8_k: Vec<BlockQ8K>,
    /// The Q8_K blocks' first whole groups of 16 tokens, transposed (`ActQ8K16`), and how many
    /// of them the last `transpose_q8_k16` wrote (0 after each `q8_k`: none stale is handed out).
    q8_k16: Vec<ActQ8K16>,
    q8_k16_len: usize,
}

impl Scratch {
    /// Room for `n_blocks` Q8_0 activation blocks.
    pub(crate) fn q8_0(&mut self, n_blocks: usize) -> &mut [ActQ8_0] {
        if self.q8_0.len() < n_blocks {
            self.q8_0.resize(n_blocks, ActQ8_0::ZERO);
        }
        &mut self.q8_0[..n_blocks]
    }

    /// Room for `n_blocks` Q8_1 activation blocks.
    pub(crate) fn q8_1(&mut self, n_blocks: usize) -> &mut [ActQ8_1] {
        if self.q8_1.len() < n_blocks {
            self.q8_1.resize(n_blocks, ActQ8_1::ZERO);
        }
        &mut self.q8_1[..n_blocks]
    }

    /// Room for `n_blocks` Q8_K activation blocks.
    pub(crate) fn q8_k(&mut self, n_blocks: usize) -> &mut [BlockQ8K] {
        self.q8_k16_len = 0;
        if self.q8_k.len() < n_blocks {
            self.q8_k.resize(n_blocks, BlockQ8K::ZERO);
        }
        &mut self.q8_k[..n_blocks]
    }

    /// The first `groups` × 16 tokens of the `total` Q8_K blocks last quantized here ([n,
    /// blocks]) into `q8_k16`, transposed.
    pub(crate) fn transpose_q8_k16(&mut self, total: usize, blocks: usize, groups: usize) {
        ActQ8K16::transpose(&self.q8_k[..total], blocks, groups, &mut self.q8_k16);
        self.q8_k16_len = groups * blocks;
    }

    /// What the last `transpose_q8_k16` since the last `q8_k` wrote ([groups, blocks]; empty if
    /// none).
    pub(crate) fn q8_k16_done(&self) -> &[ActQ8K16] {
        &self.q8_k16[..self.q8_k16_len]
    }

    /// The Q8_0 blocks last quantized here.
    pub(crate) fn q8_0_done(&self) -> &[ActQ8_0] {
        &self.q8_0
    }

    /// The Q8_1 blocks last quantized here.
    pub(crate) fn q8_1_done(&self) -> &[ActQ8_1] {
        &self.q8_1
    }

    /// The Q8_K blocks last quantized here.
    pub(crate) fn q8_k_done(&self) -> &[BlockQ8K] {
        &self.q8_k
    }
}

/// Tokens per group of `ActQ8K16`: the i32 lanes of an AVX-512 register.
pub(crate) const GROUP_TOKENS: usize = 16;

/// One Q8_K block of 16 tokens, transposed for a product whose lanes are tokens (the AVX-512
/// many-token kernels): every 4 quants of a token side by side with the same 4 of the others,
/// offset by 128 to be unsigned (`vpdpbusd` wants one unsigned operand; the kernel takes
/// 128 · Σ weights back), the tokens' scales, and their sums over each 32 quants, in pairs.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActQ8K16 {
    /// [64 quads][16 tokens][4]: quants 4q..4q+4 of token t at 64 q + 4 t, plus 128.
    pub q: [u8; QK_K * GROUP_TOKENS],
    /// [16 tokens]: the blocks' d.
    pub d: [f32; GROUP_TOKENS],
    /// [4 pairs][16 tokens][2]: Σ of the 32 quants of sub-blocks 2p and 2p + 1 of token t at
    /// 32 p + 2 t and 32 p + 2 t + 1.
    pub sums: [i16; 4 * GROUP_TOKENS * 2],
    /// [8 pairs][16 tokens][2]: the block sums (16 quants each) 2p and 2p + 1 of token t at
    /// 32 p + 2 t and 32 p + 2 t + 1.
    pub sums16: [i16; 8 * GROUP_TOKENS * 2],
}

impl ActQ8K16 {
    const ZERO: ActQ8K16 = ActQ8K16 {
        q: [0; QK_K * GROUP_TOKENS],
        d: [0.0; GROUP_TOKENS],
        sums: [0; 128],
        sums16: [0; 256],
    };

    /// The first `groups` × 16 tokens of `act` ([n, blocks] of Q8_K) as [groups, blocks] of
    /// transposed blocks, into `out` (grown, never shrunk).
    pub(crate) fn transpose(act: &[BlockQ8K], blocks: usize, groups: usize, out: &mut Vec<Self>) {
        assert!(act.len() >= groups * GROUP_TOKENS * blocks, "act is [n, blocks] of Q8_K");
        if out.len() < groups * blocks {
            out.resize(groups * blocks, ActQ8K16::ZERO);
        }
        for g in 0..groups {
            for b in 0..blocks {
                let o = &mut out[g * blocks + b];
                for t in 0..GROUP_TOKENS {
                    let a = &act[(g * GROUP_TOKENS + t) * blocks + b];
                    o.d[t] = a.d;
                    for (quad, q) in a.qs.chunks_exact(4).enumerate() {
                        let at = quad * 64 + 4 * t;
                        for (k, &v) in q.iter().enumerate() {
                            o.q[at + k] = (v as u8) ^ 0x80;
                        }
                    }
                    for s in 0..8 {
                        let (p, k) = (s / 2, s % 2);
                        o.sums[32 * p + 2 * t + k] = a.bsums[2 * s] + a.bsums[2 * s + 1];
                    }
                    for (g, &sum) in a.bsums.iter().enumerate() {
                        o.sums16[32 * (g / 2) + 2 * t + g % 2] = sum;
                    }
                }
            }
        }
    }
}
