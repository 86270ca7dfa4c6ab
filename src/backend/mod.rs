//! Backends: where the heavy arithmetic runs. The host kernels (src/ops/host.rs) call a
//! `Backend` for every matrix product; everything else is O(dim) per token and stays in plain
//! scalar code beside it.
//!
//! - `cpu_ref`: scalar f32, obviously correct. The oracle every other backend is tested against.
//! - `cpu`: fast: activations quantized the way ggml does, SIMD dot products, threads.
//! - `cuda`: the GPU's FFI (kernels in csrc/, generated instances from gen/), driven through
//!   src/rotary/cuda.rs; in a build without nvcc, `cuda_stub` has the same API and answers
//!   `Error::CudaNotCompiled`.

pub mod cpu;
pub mod cpu_ref;
#[cfg(has_cuda)]
pub mod cuda;
#[cfg(not(has_cuda))]
#[path = "cuda_stub.rs"]
pub mod cuda;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// A weight matrix as the file stores it: `rows` rows of `cols` elements, row-major, each row
/// `ty.row_bytes(cols)` bytes (a whole number of blocks). GGUF `ne = {cols, rows}`; safetensors
/// `[rows, cols]` (F32/F16/BF16 share ggml's byte layout). Borrowed from the file mapping.
#[derive(Copy, Clone, Debug)]
pub struct Mat<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Mat<'a> {
    /// A matrix view, checking that `data` holds exactly rows x cols elements of `ty`.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
        name: &str,
    ) -> Result<Mat<'a>> {
        let row_bytes = ty.row_bytes(cols as u64);
        let want = row_bytes.and_then(|r| r.checked_mul(rows as u64));
        if want != Some(data.len() as u64) {
            return Err(Error::BadTensor {
                name: name.to_string(),
                offset: 0,
                reason: format!("{} bytes do not hold {rows} x {cols} {ty}", data.len()),
            });
        }
        Ok(Mat { ty, rows, cols, data })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Rows `start..start + count` as a matrix of their own (an expert of a stacked tensor).
    pub fn rows_slice(&self, start: usize, count: usize) -> Mat<'a> {
        assert!(start + count <= self.rows, "rows {start}+{count} of {}", self.rows);
        let n = self.row_bytes();
        Mat {
            ty: self.ty,
            rows: count,
            cols: self.cols,
            data: &self.data[start * n..(start + count) * n],
        }
    }
}

/// The operations the forward pass hands to a backend.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    /// Threads the backend computes with.
    fn threads(&self) -> usize {
        1
    }

    /// `f(task)` for every task in 0..n_tasks, on the backend's threads (the CPU backend's
    /// pool; in order on the caller by default), returning when all are done. `f` must not
    /// call back into the backend.
    fn for_each_task(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n_tasks).for_each(f);
    }

    /// Whether this is the f32 oracle (sessions then keep an f32 KV cache; others use f16,
    /// as llama.cpp does).
    fn is_reference(&self) -> bool {
        false
    }

    /// `y[t, i] = Σ_j w[i, j] · x[t, j]` for `n` tokens: x is `[n, w.cols]`, y is `[n, w.rows]`,
    /// both row-major f32. The hot operation: every projection and expert goes through it.
    fn matmul(&self, w: &Mat, x: &[f32], n: usize, y: &mut [f32]) -> Result<()>;

    /// Several independent products, each exactly (bit for bit) what `matmul` gives it. A
    /// backend may share work between them: the CPU backend runs the whole batch as one job of
    /// its thread pool and quantizes an x that several products share once (a MoE layer's
    /// experts: one call instead of three per expert).
    fn matmul_batch(&self, jobs: &mut [MatJob]) -> Result<()> {
        for j in jobs {
            self.matmul(&j.w, j.x, j.n, j.y)?;
        }
        Ok(())
    }
}

/// One product of a `matmul_batch`: y = w · x for n tokens, x [n, w.cols], y [n, w.rows].
pub struct MatJob<'a> {
    pub w: Mat<'a>,
    pub x: &'a [f32],
    pub n: usize,
    pub y: &'a mut [f32],
}

/// The thread count a backend uses: the flag, else the physical cores.
pub fn threads_or_default(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(physical_cores).max(1)
}

/// Physical cores (Linux: distinct core_cpus_list entries), else the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list");
        match std::fs::read_to_string(path) {
            Ok(list) => cores.insert(list.trim().to_string()),
            Err(_) => return logical,
        };
    }
    cores.len().max(1)
}

/// Check matmul operand sizes (every backend calls this first: a mismatch is a caller bug).
pub fn check_matmul(w: &Mat, x: &[f32], n: usize, y: &[f32]) {
    assert_eq!(x.len(), n * w.cols, "x is [n, cols]");
    assert_eq!(y.len(), n * w.rows, "y is [n, rows]");
}
