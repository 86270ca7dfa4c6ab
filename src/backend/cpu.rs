//! The fast CPU backend: ggml's recipe for a matrix-vector product on the CPU. Each activation
//! row is quantized once to the weight type's `vec_dot_type` (Q8_0 for the 32- and 64-element
//! formats, Q8_1 for those with an offset, Q8_K for the 256-element ones, f32 for float
//! weights); every weight row is then dotted with it in integer arithmetic per block, the block
//! scales applied in f32 as ggml does. Rows are split into chunks over a persistent thread pool.
//!
//! - `act`: the quantized activation buffers.
//! - `scalar`: portable kernels, always compiled (ROTARY_CPU_SIMD=off selects them), for the
//!   float types, Q8_0, Q4_0 and Q4_K..Q6_K; `scalar_block32` (Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4,
//!   NVFP4), `scalar_kquant` (Q2_K, Q3_K, IQ4_XS) and `scalar_grid` (IQ3, IQ2, IQ1) for the rest.
//! - `avx2`, `avx2_block32`, `avx2_kquant`, `avx2_grid`: AVX2 + FMA + F16C kernels of the same
//!   families, chosen at run time by feature detection.
//! - `avx512`: AVX-512 + VNNI kernels for Q4_K and Q6_K (the AVX2 ones for every other type),
//!   chosen where the CPU has them.
//! - `amx`: AMX tile kernels for Q8_0 (16 rows at a time, each token a tile column), chosen
//!   where the CPU has AMX-INT8 and Linux grants this process the tile state.
//! - `pool`: the workers; a job starts with one atomic store (and an unpark if they slept).
//!
//! Results do not depend on the thread count: each output element is computed by exactly one
//! task, with the same kernel and the same arithmetic order whichever thread runs it.

mod act;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_block32;
#[cfg(target_arch = "x86_64")]
mod avx2_grid;
#[cfg(target_arch = "x86_64")]
mod avx2_kquant;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pool;
mod scalar;
mod scalar_block32;
mod scalar_grid;
mod scalar_kquant;

use std::sync::{Mutex, PoisonError};

use super::{check_matmul, threads_or_default, Backend, Mat, MatJob};
use crate::error::{Error, Result};
use crate::quant::{BlockQ8K, GgmlType, QK8_0, QK_K};
use act::{ActFormat, ActQ8K16, ActQ8_0, ActQ8_1, Scratch, GROUP_TOKENS};
use pool::Pool;
use scalar_block32 as s32;
use scalar_grid as sgrid;
use scalar_kquant as skq;

/// Which family of dot kernels runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// Portable Rust, any target.
    Scalar,
    /// AVX2 + FMA + F16C (x86_64).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI for Q4_K and Q6_K, the AVX2 kernels for the rest (x86_64).
    Avx512,
    /// `Avx512`, with AMX-INT8 tiles for Q8_0 products (x86_64 Linux).
    Amx,
}

impl Simd {
    /// Every family, best last.
    pub const ALL: [Simd; 4] = [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Amx];

    /// The families this CPU can run.
    pub fn available() -> impl Iterator<Item = Simd> {
        Simd::ALL.into_iter().filter(|s| s.is_available())
    }

    /// The best kernels this CPU can run.
    pub fn detect() -> Simd {
        Simd::available().last().unwrap_or(Simd::Scalar)
    }

    /// Whether this CPU has the instructions these kernels need.
    pub fn is_available(self) -> bool {
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => {
                Simd::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Amx => Simd::Avx512.is_available() && amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Simd::Avx2 | Simd::Avx512 | Simd::Amx => false,
        }
    }

    /// The kernels `ROTARY_CPU_SIMD` asks for: `off` or `scalar`, `avx2`, `avx512`, `amx`, or
    /// `auto` (the default when unset: `detect()`).
    pub fn from_env() -> Result<Simd> {
        let value = std::env::var("ROTARY_CPU_SIMD").unwrap_or_default();
        match value.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Simd::detect()),
            "off" | "scalar" => Ok(Simd::Scalar),
            "avx2" => Ok(Simd::Avx2),
            "avx512" => Ok(Simd::Avx512),
            "amx" => Ok(Simd::Amx),
            other => Err(Error::Usage(format!(
                "ROTARY_CPU_SIMD={other}: want off, scalar, avx2, avx512, amx or auto"
            ))),
        }
    }
}

/// Tokens a multi-token kernel dots with one weight row per pass.
const TOKENS_PER_PASS: usize = 8;
/// Activation bytes of one token block in a many-token matmul (about half of L1d).
const BLOCK_ACT_BYTES: usize = 16 << 10;

/// A kernel that dots one weight row with 1 to `TOKENS_PER_PASS` tokens' activations
/// ([out.len(), blocks]) into `out`, unpacking each weight block once: bit for bit the
/// one-token kernel per token.
type MultiDot<A> = unsafe fn(&[u8], &[A], &mut [f32]);

/// A kernel that dots one weight row with 16 tokens' transposed activations ([blocks] of
/// `ActQ8K16`): bit for bit the one-token kernel per token.
type Gemm16 = unsafe fn(&[u8], &[ActQ8K16], &mut [f32; GROUP_TOKENS]);

/// Up to 16 Q8_0 rows ([rows, row_bytes]) times up to 16 tokens ([tokens, blocks]) into
/// out[token][row].
type TilesQ8_0 = unsafe fn(&[u8], usize, &[ActQ8_0], &mut [[f32; 16]; GROUP_TOKENS]);

/// One weight type's dot product of a row with one token's activations, by the activation
/// format it takes, and where a family has one, its multi-token kernel. `unsafe`: the SIMD
/// kernels need their CPU features (checked when the backend is built).
#[derive(Clone, Copy)]
enum Dot {
    F32(unsafe fn(&[u8], &[f32]) -> f32),
    Q8_0(unsafe fn(&[u8], &[ActQ8_0]) -> f32, Option<MultiDot<ActQ8_0>>),
    Q8_1(unsafe fn(&[u8], &[ActQ8_1]) -> f32, Option<MultiDot<ActQ8_1>>),
    Q8K(unsafe fn(&[u8], &[BlockQ8K]) -> f32, Option<MultiDot<BlockQ8K>>),
}

impl Dot {
    fn act_format(self) -> ActFormat {
        match self {
            Dot::F32(_) => ActFormat::F32,
            Dot::Q8_0(..) => ActFormat::Q8_0,
            Dot::Q8_1(..) => ActFormat::Q8_1,
            Dot::Q8K(..) => ActFormat::Q8K,
        }
    }
}

/// Every kernel of one SIMD family: the dot product per weight type (the one table the
/// weight type is looked up in) and the activation quantizers.
struct Kernels {
    dots: [(GgmlType, Dot); 24],
    quantize_q8_0: unsafe fn(&[f32], &mut [ActQ8_0]),
    quantize_q8_1: unsafe fn(&[f32], &mut [ActQ8_1]),
    quantize_q8_k: unsafe fn(&[f32], &mut [BlockQ8K]),
    /// The types with a 16-token kernel over transposed Q8_K activations.
    gemm16: &'static [(GgmlType, Gemm16)],
    /// Q8_0, 16 rows and up to 16 tokens at a time (AMX tiles).
    tiles_q8_0: Option<TilesQ8_0>,
}

const SCALAR: Kernels = Kernels {
    dots: [
        (GgmlType::F32, Dot::F32(scalar::dot_f32)),
        (GgmlType::F16, Dot::F32(scalar::dot_f16)),
        (GgmlType::BF16, Dot::F32(scalar::dot_bf16)),
        (GgmlType::Q8_0, Dot::Q8_0(scalar::dot_q8_0, None)),
        (GgmlType::Q4_0, Dot::Q8_0(scalar::dot_q4_0, None)),
        (GgmlType::Q4K, Dot::Q8K(scalar::dot_q4_k, None)),
        (GgmlType::Q5K, Dot::Q8K(scalar::dot_q5_k, None)),
        (GgmlType::Q6K, Dot::Q8K(scalar::dot_q6_k, None)),
        (GgmlType::Q4_1, Dot::Q8_1(s32::dot_q4_1, None)),
        (GgmlType::Q5_0, Dot::Q8_0(s32::dot_q5_0, None)),
        (GgmlType::Q5_1, Dot::Q8_1(s32::dot_q5_1, None)),
        (GgmlType::IQ4NL, Dot::Q8_0(s32::dot_iq4_nl, None)),
        (GgmlType::MXFP4, Dot::Q8_0(s32::dot_mxfp4, None)),
        (GgmlType::NVFP4, Dot::Q8_0(s32::dot_nvfp4, None)),
        (GgmlType::Q2K, Dot::Q8K(skq::dot_q2_k, None)),
        (GgmlType::Q3K, Dot::Q8K(skq::dot_q3_k, None)),
        (GgmlType::IQ4XS, Dot::Q8K(skq::dot_iq4_xs, None)),
        (GgmlType::IQ3XXS, Dot::Q8K(sgrid::dot_iq3_xxs, None)),
        (GgmlType::IQ3S, Dot::Q8K(sgrid::dot_iq3_s, None)),
        (GgmlType::IQ2XXS, Dot::Q8K(sgrid::dot_iq2_xxs, None)),
        (GgmlType::IQ2XS, Dot::Q8K(sgrid::dot_iq2_xs, None)),
        (GgmlType::IQ2S, Dot::Q8K(sgrid::dot_iq2_s, None)),
        (GgmlType::IQ1S, Dot::Q8K(sgrid::dot_iq1_s, None)),
        (GgmlType::IQ1M, Dot::Q8K(sgrid::dot_iq1_m, None)),
    ],
    quantize_q8_0: scalar::quantize_q8_0,
    quantize_q8_1: scalar::quantize_q8_1,
    quantize_q8_k: scalar::quantize_q8_k,
    gemm16: &[],
    tiles_q8_0: None,
};

#[cfg(target_arch = "x86_64")]
const AVX2: Kernels = Kernels {
    dots: [
        (GgmlType::F32, Dot::F32(avx2::dot_f32)),
        (GgmlType::F16, Dot::F32(avx2::dot_f16)),
        (GgmlType::BF16, Dot::F32(avx2::dot_bf16)),
        (GgmlType::Q8_0, Dot::Q8_0(avx2::dot_q8_0, None)),
        (GgmlType::Q4_0, Dot::Q8_0(avx2::dot_q4_0, None)),
        (GgmlType::Q4K, Dot::Q8K(avx2::dot_q4_k, Some(avx2::dot_q4_k_tokens))),
        (GgmlType::Q5K, Dot::Q8K(avx2::dot_q5_k, None)),
        (GgmlType::Q6K, Dot::Q8K(avx2::dot_q6_k, Some(avx2::dot_q6_k_tokens))),
        (GgmlType::Q4_1, Dot::Q8_1(avx2_block32::dot_q4_1, None)),
        (GgmlType::Q5_0, Dot::Q8_0(avx2_block32::dot_q5_0, None)),
        (GgmlType::Q5_1, Dot::Q8_1(avx2_block32::dot_q5_1, None)),
        (GgmlType::IQ4NL, Dot::Q8_0(avx2_block32::dot_iq4_nl, None)),
        (GgmlType::MXFP4, Dot::Q8_0(avx2_block32::dot_mxfp4, None)),
        (GgmlType::NVFP4, Dot::Q8_0(avx2_block32::dot_nvfp4, None)),
        (GgmlType::Q2K, Dot::Q8K(avx2_kquant::dot_q2_k, None)),
        (GgmlType::Q3K, Dot::Q8K(avx2_kquant::dot_q3_k, Some(avx2_kquant::dot_q3_k_tokens))),
        (GgmlType::IQ4XS, Dot::Q8K(avx2_kquant::dot_iq4_xs, Some(avx2_kquant::dot_iq4_xs_tokens))),
        (GgmlType::IQ3XXS, Dot::Q8K(avx2_grid::dot_iq3_xxs, None)),
        (GgmlType::IQ3S, Dot::Q8K(avx2_grid::dot_iq3_s, Some(avx2_grid::dot_iq3_s_tokens))),
        (GgmlType::IQ2XXS, Dot::Q8K(avx2_grid::dot_iq2_xxs, None)),
        (GgmlType::IQ2XS, Dot::Q8K(avx2_grid::dot_iq2_xs, None)),
        (GgmlType::IQ2S, Dot::Q8K(avx2_grid::dot_iq2_s, None)),
        (GgmlType::IQ1S, Dot::Q8K(avx2_grid::dot_iq1_s, None)),
        (GgmlType::IQ1M, Dot::Q8K(avx2_grid::dot_iq1_m, None)),
    ],
    quantize_q8_0: avx2::quantize_q8_0,
    quantize_q8_1: avx2::quantize_q8_1,
    quantize_q8_k: avx2::quantize_q8_k,
    gemm16: &[],
    tiles_q8_0: None,
};

/// AVX2's table with the AVX-512 kernels of Q4_K and Q6_K.
#[cfg(target_arch = "x86_64")]
const AVX512: Kernels = {
    let mut k = AVX2;
    assert!(matches!(k.dots[5].0, GgmlType::Q4K) && matches!(k.dots[7].0, GgmlType::Q6K));
    k.dots[5].1 = Dot::Q8K(avx512::dot_q4_k, Some(avx512::dot_q4_k_tokens));
    k.dots[7].1 = Dot::Q8K(avx512::dot_q6_k, Some(avx512::dot_q6_k_tokens));
    k.gemm16 = &[(GgmlType::Q4K, avx512::gemm16_q4_k), (GgmlType::Q6K, avx512::gemm16_q6_k)];
    k
};

/// AVX-512's table with the AMX tile kernel for Q8_0 (and a one-token Q8_0 kernel in its
/// order, for a product it does not take).
#[cfg(target_arch = "x86_64")]
const AMX: Kernels = {
    let mut k = AVX512;
    assert!(matches!(k.dots[3].0, GgmlType::Q8_0));
    k.dots[3].1 = Dot::Q8_0(amx::dot_q8_0, None);
    k.tiles_q8_0 = Some(amx::gemm_q8_0);
    k
};

impl Simd {
    fn kernels(self) -> &'static Kernels {
        match self {
            Simd::Scalar => &SCALAR,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => &AVX2,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => &AVX512,
            #[cfg(target_arch = "x86_64")]
            Simd::Amx => &AMX,
            #[cfg(not(target_arch = "x86_64"))]
            Simd::Avx2 | Simd::Avx512 | Simd::Amx => {
                unreachable!("{self:?} is never available off x86_64")
            }
        }
    }
}

/// What one call may reuse from the last: the workers and the activation buffers (one per
/// distinct x of a batch).
struct State {
    pool: Pool,
    scratch: Vec<Scratch>,
}

pub struct CpuBackend {
    simd: Simd,
    threads: usize,
    /// Locked for a whole matmul: concurrent callers take turns on the one pool.
    state: Mutex<State>,
}

impl CpuBackend {
    /// `threads` threads (default: the physical cores); kernels from `ROTARY_CPU_SIMD`, else
    /// the best this CPU has. Errors: a bad `ROTARY_CPU_SIMD`, a thread that cannot start.
    pub fn new(threads: Option<usize>) -> Result<CpuBackend> {
        CpuBackend::with_simd(threads, Simd::from_env()?)
    }

    /// As `new`, with the kernels named. Errors: `simd` not available on this CPU.
    pub fn with_simd(threads: Option<usize>, simd: Simd) -> Result<CpuBackend> {
        if !simd.is_available() {
            return Err(Error::Usage(format!("cpu backend: this CPU cannot run {simd:?} kernels")));
        }
        let threads = threads_or_default(threads);
        let pool = Pool::new(threads)?;
        assert_eq!(pool.threads(), threads);
        let state = Mutex::new(State { pool, scratch: Vec::new() });
        Ok(CpuBackend { simd, threads, state })
    }

    pub fn simd(&self) -> Simd {
        self.simd
    }

    /// The dot kernel for `w`'s type, after checking that `w` holds whole activation blocks.
    fn dot_for(&self, w: &Mat) -> Result<Dot> {
        let Some(&(_, dot)) = self.simd.kernels().dots.iter().find(|(ty, _)| *ty == w.ty) else {
            let ty = w.ty.name().to_string();
            return Err(Error::UnsupportedType { name: "<cpu matmul weight>".to_string(), ty });
        };
        check_weight(w, dot.act_format())?;
        Ok(dot)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn matmul(&self, w: &Mat, x: &[f32], n: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_batch(&mut [MatJob { w: *w, x, n, y }])
    }

    fn for_each_task(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pool.run(n_tasks, f);
    }

    /// One pool job for the whole batch: tasks of whole rows of every product; each distinct
    /// (x, activation format) quantized once on the calling thread first.
    fn matmul_batch(&self, jobs: &mut [MatJob]) -> Result<()> {
        let mut dots = Vec::with_capacity(jobs.len());
        for j in jobs.iter_mut() {
            check_matmul(&j.w, j.x, j.n, j.y);
            dots.push(self.dot_for(&j.w)?);
            if j.w.cols == 0 {
                j.y.fill(0.0); // empty sums
            }
        }
        let kernels = self.simd.kernels();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { pool, scratch } = &mut *state;
        // Distinct (x, format) pairs in first-seen order (the same slice: same address and
        // length), and which one each job reads.
        let mut keys: Vec<(&[f32], ActFormat)> = Vec::new();
        let mut act_of = Vec::with_capacity(jobs.len());
        for (j, dot) in jobs.iter().zip(&dots) {
            let format = dot.act_format();
            let same = |&(x, f): &(&[f32], ActFormat)| std::ptr::eq(x, j.x) && f == format;
            let at = match keys.iter().position(same) {
                Some(at) => at,
                None => {
                    keys.push((j.x, format));
                    if scratch.len() < keys.len() {
                        scratch.push(Scratch::default());
                    }
                    // SAFETY: kernels of `self.simd`, whose CPU features `with_simd` checked.
                    unsafe { scratch[keys.len() - 1].quantize(kernels, format, j.x) };
                    keys.len() - 1
                }
            };
            act_of.push(at);
        }
        // The 16-token kernels, and their transposed activations: one layout per x, the first
        // job's that takes them (a job sharing x with other rows per token keeps its own
        // kernels).
        let mut gemms: Vec<Option<Gemm16>> = jobs
            .iter()
            .map(|j| {
                let found = kernels.gemm16.iter().find(|(ty, _)| *ty == j.w.ty);
                found.map(|&(_, g)| g).filter(|_| j.n >= GROUP_TOKENS && j.w.cols > 0)
            })
            .collect();
        for (k, &(x, format)) in keys.iter().enumerate() {
            let takers: Vec<usize> =
                (0..jobs.len()).filter(|&i| act_of[i] == k && gemms[i].is_some()).collect();
            let Some(&first) = takers.first() else { continue };
            assert_eq!(format, ActFormat::Q8K, "16-token kernels take Q8_K activations");
            let layout = |i: usize| (jobs[i].w.cols / QK_K, jobs[i].n / GROUP_TOKENS);
            let (blocks, groups) = layout(first);
            scratch[k].transpose_q8_k16(x.len() / QK_K, blocks, groups);
            for i in takers.into_iter().filter(|&i| layout(i) != (blocks, groups)) {
                gemms[i] = None;
            }
        }
        // The tile kernel for Q8_0 weights, where the family has one.
        let tiles: Vec<Option<TilesQ8_0>> = jobs
            .iter()
            .map(|j| kernels.tiles_q8_0.filter(|_| j.w.ty == GgmlType::Q8_0 && j.w.cols > 0))
            .collect();
        let acts: Vec<ActRef> =
            keys.iter().zip(scratch.iter()).map(|(&(x, f), s)| s.view(f, x)).collect();
        // Tasks: (job, first row), whole rows of one product each.
        let threads = pool.threads();
        let mut tasks: Vec<(usize, usize, usize)> = Vec::new(); // (job, start, end)
        for (i, j) in jobs.iter().enumerate() {
            let (rows, n) = (j.w.rows, j.n);
            if rows == 0 || j.w.cols == 0 || n == 0 {
                continue;
            }
            let per = rows_per_task(rows, j.w.data.len() / rows, n, threads);
            tasks.extend((0..rows).step_by(per).map(|s| (i, s, (s + per).min(rows))));
        }
        let outs: Vec<OutPtr> = jobs.iter_mut().map(|j| OutPtr::new(j.y)).collect();
        let jobs = &*jobs;
        pool.run(tasks.len(), &|task| {
            let (i, start, end) = tasks[task];
            let (j, y) = (&jobs[i], &outs[i]);
            match (dots[i], acts[act_of[i]]) {
                (Dot::F32(f), ActRef::F32(a)) => rows_task(&j.w, a, 0, j.n, f, None, y, start..end),
                (Dot::Q8_0(f, m), ActRef::Q8_0(a)) => match tiles[i] {
                    Some(tile) => tile_task(&j.w, a, j.n, tile, y, start..end),
                    None => rows_task(&j.w, a, 0, j.n, f, m, y, start..end),
                },
                (Dot::Q8_1(f, m), ActRef::Q8_1(a)) => {
                    rows_task(&j.w, a, 0, j.n, f, m, y, start..end)
                }
                (Dot::Q8K(f, m), ActRef::Q8K(a, a16)) => {
                    let rows = start..end;
                    let done = match gemms[i] {
                        Some(gemm) => {
                            gemm_task(&j.w, a16, j.n / GROUP_TOKENS, gemm, y, rows.clone())
                        }
                        None => 0,
                    };
                    let per_token = a.len() / j.n;
                    rows_task(&j.w, &a[done * per_token..], done, j.n - done, f, m, y, rows);
                }
                _ => unreachable!("activations quantized for the job's own kernel"),
            }
        });
        Ok(())
    }
}

/// A job's activations, quantized (or the f32 x itself): [n, blocks per row].
#[derive(Clone, Copy)]
enum ActRef<'a> {
    F32(&'a [f32]),
    Q8_0(&'a [ActQ8_0]),
    Q8_1(&'a [ActQ8_1]),
    /// The blocks, and the first whole groups of 16 tokens transposed where a 16-token kernel
    /// takes them (else empty).
    Q8K(&'a [BlockQ8K], &'a [ActQ8K16]),
}

impl Scratch {
    /// x quantized into this scratch in `format` (nothing to do for f32).
    ///
    /// # Safety
    /// `kernels` must be a family whose CPU features this CPU has.
    unsafe fn quantize(&mut self, kernels: &Kernels, format: ActFormat, x: &[f32]) {
        let blocks = x.len() / format.block_elems();
        match format {
            ActFormat::F32 => {}
            ActFormat::Q8_0 => (kernels.quantize_q8_0)(x, self.q8_0(blocks)),
            ActFormat::Q8_1 => (kernels.quantize_q8_1)(x, self.q8_1(blocks)),
            ActFormat::Q8K => (kernels.quantize_q8_k)(x, self.q8_k(blocks)),
        }
    }

    /// What `quantize(format, x)` left here (x itself for f32).
    fn view<'a>(&'a self, format: ActFormat, x: &'a [f32]) -> ActRef<'a> {
        let blocks = x.len() / format.block_elems();
        match format {
            ActFormat::F32 => ActRef::F32(x),
            ActFormat::Q8_0 => ActRef::Q8_0(&self.q8_0_done()[..blocks]),
            ActFormat::Q8_1 => ActRef::Q8_1(&self.q8_1_done()[..blocks]),
            ActFormat::Q8K => ActRef::Q8K(&self.q8_k_done()[..blocks], self.q8_k16_done()),
        }
    }
}

/// This machine's memory read bandwidth with `threads` threads, in GB/s: each thread sums its
/// share of a 512 MiB buffer (written first, so that its pages exist), the best of 3. What a
/// memory-bound decode can reach at most.
pub fn read_gbps(threads: usize) -> f64 {
    let words = (512usize << 20) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for part in buf.chunks(chunk) {
                s.spawn(move || std::hint::black_box(sum_words(part)));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

/// Σ words (wrapping), in 16 lanes; compiled for AVX2 where the CPU has it, so that the sum
/// is not what limits the read.
fn sum_words(words: &[u64]) -> u64 {
    #[inline(always)]
    fn sum(words: &[u64]) -> u64 {
        let mut acc = [0u64; 16];
        for c in words.chunks_exact(16) {
            acc.iter_mut().zip(c).for_each(|(a, &v)| *a = a.wrapping_add(v));
        }
        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sum_avx2(words: &[u64]) -> u64 {
        sum(words)
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected just above.
        return unsafe { sum_avx2(words) };
    }
    sum(words)
}

/// Whether `w.data` holds exactly rows x cols of its type, in whole activation blocks too (a
/// `Mat` built with `Mat::new` always does; its fields are public, so check again).
fn check_weight(w: &Mat, act: ActFormat) -> Result<()> {
    let row_bytes = w.ty.row_bytes(w.cols as u64);
    let want = row_bytes.and_then(|r| r.checked_mul(w.rows as u64));
    if want != Some(w.data.len() as u64) || !w.cols.is_multiple_of(act.block_elems()) {
        return Err(Error::QuantLength {
            ty: w.ty.name().to_string(),
            len: w.data.len(),
            reason: format!("want {want:?} bytes for a {} x {} matrix", w.rows, w.cols),
        });
    }
    Ok(())
}

/// Weight bytes (times tokens) a task streams at least, so that claiming it (one contended
/// atomic) is small beside its work; a matmul smaller than this runs on the caller alone.
const TASK_BYTES_MIN: usize = 32 << 10;
/// Tasks per thread at most: two, so that a thread that starts late, or shares its core, has
/// one to lose to the others (the pool steals), while each thread's share stays one
/// contiguous stretch of rows. Each further task costs a streaming read ~0.4 us: on a 2-core
/// Xeon a Q4_K expert GEMV from cold memory ran at 21.5 GB/s with 8 tasks per thread and
/// 24.7 with 2 (huge pages; 19 and 20.5 with 4 KiB pages).
const TASKS_PER_THREAD: usize = 2;
/// Rows per task are a multiple of this, so two tasks never write one cache line of y.
const TASK_ROWS_ALIGN: usize = 64 / std::mem::size_of::<f32>();

fn rows_per_task(rows: usize, row_bytes: usize, n: usize, threads: usize) -> usize {
    let by_work = TASK_BYTES_MIN / (row_bytes * n).max(1);
    let by_balance = rows.div_ceil(TASKS_PER_THREAD * threads);
    by_work.max(by_balance).max(1).next_multiple_of(TASK_ROWS_ALIGN)
}

/// `y[t, i] = dot(w row i, act[t])` for rows i in `rows` and every token t. With a `multi`
/// kernel and several tokens: token blocks (whose activations stay in L1) outside, the rows
/// inside, `TOKENS_PER_PASS` tokens per kernel call (the last pass takes what is left).
/// act: [n, blocks per row]; y: [n, w.rows].
#[allow(clippy::too_many_arguments)]
fn rows_task<A>(
    w: &Mat,
    act: &[A],
    t0: usize,
    n: usize,
    dot: unsafe fn(&[u8], &[A]) -> f32,
    multi: Option<MultiDot<A>>,
    y: &OutPtr,
    rows: std::ops::Range<usize>,
) {
    if n == 0 {
        return;
    }
    let row_bytes = w.data.len() / w.rows;
    let act_per_token = act.len() / n;
    assert_eq!(act_per_token * n, act.len(), "act is [n, blocks]");
    assert_eq!(y.len, (t0 + n) * w.rows, "y is [t0 + n, rows]");
    let row = |i: usize| &w.data[i * row_bytes..(i + 1) * row_bytes];
    // One token (decode) takes the one-token kernel: nothing to share.
    if let Some(multi) = multi.filter(|_| n > 1) {
        let block_tokens = (BLOCK_ACT_BYTES / (act_per_token * std::mem::size_of::<A>()).max(1))
            .max(1)
            .next_multiple_of(TOKENS_PER_PASS);
        let pass = TOKENS_PER_PASS * act_per_token;
        for (b, block) in act.chunks(block_tokens * act_per_token).enumerate() {
            for i in rows.clone() {
                for (p, a) in block.chunks(pass).enumerate() {
                    let mut values = [0f32; TOKENS_PER_PASS];
                    let values = &mut values[..a.len() / act_per_token];
                    // SAFETY: as for `dot` below; `multi` comes from the same family.
                    unsafe { multi(row(i), a, values) };
                    let first = t0 + b * block_tokens + p * TOKENS_PER_PASS;
                    y.write_strided(first * w.rows + i, w.rows, values);
                }
            }
        }
        return;
    }
    for i in rows {
        for (t, a) in act.chunks_exact(act_per_token).enumerate() {
            // SAFETY: `dot` comes from `self.simd.kernels()`, and `with_simd` refused to build
            // a backend whose kernels' CPU features `Simd::is_available` did not detect.
            let value = unsafe { dot(row(i), a) };
            y.write((t0 + t) * w.rows + i, value);
        }
    }
}

/// Rows `rows` of w times the first `groups` × 16 tokens (a16: [groups, blocks], transposed)
/// through a 16-token kernel, a group's activations kept in cache over the rows. Returns the
/// tokens done.
fn gemm_task(
    w: &Mat,
    a16: &[ActQ8K16],
    groups: usize,
    gemm: Gemm16,
    y: &OutPtr,
    rows: std::ops::Range<usize>,
) -> usize {
    let (row_bytes, blocks) = (w.data.len() / w.rows, w.cols / QK_K);
    assert_eq!(a16.len(), groups * blocks, "a16 is [groups, blocks] of transposed Q8_K");
    for (g, group) in a16.chunks_exact(blocks).enumerate() {
        for i in rows.clone() {
            let mut values = [0f32; GROUP_TOKENS];
            // SAFETY: `gemm` comes from `self.simd.kernels()`, whose CPU features `with_simd`
            // checked.
            unsafe { gemm(&w.data[i * row_bytes..(i + 1) * row_bytes], group, &mut values) };
            y.write_strided(g * GROUP_TOKENS * w.rows + i, w.rows, &values);
        }
    }
    groups * GROUP_TOKENS
}

/// Rows `rows` of w (Q8_0) times all `n` tokens (act: [n, blocks]) through a tile kernel, 16
/// rows and up to 16 tokens at a time.
fn tile_task(
    w: &Mat,
    act: &[ActQ8_0],
    n: usize,
    tile: TilesQ8_0,
    y: &OutPtr,
    rows: std::ops::Range<usize>,
) {
    let (row_bytes, blocks) = (w.data.len() / w.rows, w.cols / QK8_0);
    assert_eq!(act.len(), n * blocks, "act is [n, blocks]");
    assert_eq!(y.len, n * w.rows, "y is [n, rows]");
    #[cfg(target_arch = "x86_64")]
    amx::prefetch_l2(&w.data[rows.start * row_bytes..(rows.start + 16).min(rows.end) * row_bytes]);
    for start in rows.clone().step_by(16) {
        let end = (start + 16).min(rows.end);
        let chunk = &w.data[start * row_bytes..end * row_bytes];
        for (g, group) in act.chunks(GROUP_TOKENS * blocks).enumerate() {
            let mut out = [[0f32; 16]; GROUP_TOKENS];
            // SAFETY: `tile` comes from `self.simd.kernels()`, whose CPU features (and AMX
            // permission) `with_simd` checked.
            unsafe { tile(chunk, row_bytes, group, &mut out) };
            for (t, o) in out.iter().enumerate().take(group.len() / blocks) {
                let token = g * GROUP_TOKENS + t;
                y.write_strided(token * w.rows + start, 1, &o[..end - start]);
            }
        }
    }
}

/// The output matrix shared by the tasks of one matmul, each writing only its own rows.
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint elements (task k owns rows k*rows_per_task.., for every token),
// and `Pool::run` returns only after every task is done, while the `&mut [f32]` is borrowed.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn new(y: &mut [f32]) -> OutPtr {
        OutPtr { ptr: y.as_mut_ptr(), len: y.len() }
    }

    /// values[k] to index + k · stride, one bounds check for all.
    fn write_strided(&self, index: usize, stride: usize, values: &[f32]) {
        let Some(last) = values.len().checked_sub(1) else { return };
        assert!(index + last * stride < self.len, "y {index} + {last} x {stride} of {}", self.len);
        for (k, &value) in values.iter().enumerate() {
            // SAFETY: in bounds (the last one checked above) of a live `&mut [f32]`; no other
            // task writes these elements and nobody reads y until the matmul returns.
            unsafe { self.ptr.add(index + k * stride).write(value) }
        }
    }

    fn write(&self, index: usize, value: f32) {
        assert!(index < self.len, "y index {index} of {}", self.len);
        // SAFETY: in bounds (checked above) of a live `&mut [f32]`; no other task writes
        // `index` and nobody reads y until the matmul returns.
        unsafe { self.ptr.add(index).write(value) }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Random blocks, an all-zero block, exact .5 ties, and a magnitude tie of both signs.
    fn inputs() -> Vec<f32> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut x: Vec<f32> = (0..4 * 256)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 22) as f32 - 2.0
            })
            .collect();
        x[256..512].fill(0.0);
        // Block 2: amax 127, so d = 1 and every half-integer is a tie.
        for (i, v) in x[512..768].iter_mut().enumerate() {
            *v = (i as f32 - 128.0) / 2.0 + 0.25 * (i % 2) as f32;
        }
        x[512] = -127.0;
        x[768 + 3] = -5.0;
        x[768 + 9] = 5.0;
        x
    }

    #[test]
    fn avx2_quantizers_match_scalar_bit_for_bit() {
        if !Simd::Avx2.is_available() {
            return;
        }
        let x = inputs();
        let (mut a, mut b) = (vec![ActQ8_0::ZERO; x.len() / 32], vec![ActQ8_0::ZERO; x.len() / 32]);
        scalar::quantize_q8_0(&x, &mut a);
        // SAFETY: AVX2 + FMA + F16C detected just above.
        unsafe { avx2::quantize_q8_0(&x, &mut b) };
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!((a.d.to_bits(), a.qs), (b.d.to_bits(), b.qs), "Q8_0 block {i}");
        }
        let (mut a, mut b) = (vec![ActQ8_1::ZERO; x.len() / 32], vec![ActQ8_1::ZERO; x.len() / 32]);
        scalar::quantize_q8_1(&x, &mut a);
        // SAFETY: as above.
        unsafe { avx2::quantize_q8_1(&x, &mut b) };
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            let bits = |a: &ActQ8_1| (a.d.to_bits(), a.s.to_bits(), a.qs);
            assert_eq!(bits(a), bits(b), "Q8_1 block {i}");
        }
        let (mut a, mut b) =
            (vec![BlockQ8K::ZERO; x.len() / 256], vec![BlockQ8K::ZERO; x.len() / 256]);
        scalar::quantize_q8_k(&x, &mut a);
        // SAFETY: as above.
        unsafe { avx2::quantize_q8_k(&x, &mut b) };
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert_eq!(a.d.to_bits(), b.d.to_bits(), "Q8_K block {i} d");
            assert_eq!((a.qs, a.bsums), (b.qs, b.bsums), "Q8_K block {i}");
        }
    }

    #[test]
    fn avx2_multi_token_kernels_match_one_token_bit_for_bit() {
        if !Simd::Avx2.is_available() {
            return;
        }
        // TOKENS_PER_PASS tokens of 256: the 4 of `inputs()`, then those scaled and reversed.
        let mut x = inputs();
        for t in 0..TOKENS_PER_PASS.saturating_sub(4) {
            let more: Vec<f32> =
                x[t % 4 * 256..][..256].iter().rev().map(|v| v * 1.5 + 0.25).collect();
            x.extend(more);
        }
        x.truncate(TOKENS_PER_PASS * 256);
        let mut act = vec![BlockQ8K::ZERO; x.len() / 256];
        scalar::quantize_q8_k(&x, &mut act);
        // Every Q8_K kernel of the AVX2 table that has a multi-token form.
        for &(ty, dot) in &AVX2.dots {
            let Dot::Q8K(one, Some(multi)) = dot else { continue };
            let row = if crate::quant::has_quantizer(ty) {
                let mut row = vec![0u8; ty.row_bytes(256).unwrap() as usize];
                let w: Vec<f32> = x[..256].iter().rev().map(|v| v * 0.37 - 0.1).collect();
                crate::quant::quantize(ty, &w, &mut row).unwrap();
                row
            } else {
                crate::synth::random_matrix(ty, 1, 256, 0.05, 7).unwrap()
            };
            for n in 1..=TOKENS_PER_PASS {
                let mut got = [0f32; TOKENS_PER_PASS];
                // SAFETY: AVX2 + FMA + F16C detected above.
                unsafe { multi(&row, &act[..n], &mut got[..n]) };
                for t in 0..n {
                    // SAFETY: as above.
                    let want = unsafe { one(&row, &act[t..t + 1]) };
                    assert_eq!(want.to_bits(), got[t].to_bits(), "{ty} n={n} token {t}");
                }
            }
        }
    }
}
