//! The CUDA backend (built when build.rs found nvcc: `cfg(has_cuda)`): the kernels of csrc/
//! behind a thin, checked FFI. `cuda_stub.rs` has the same public API for CPU-only builds.
//!
//! - `ffi`: bindgen's view of csrc/include/abi.h.
//! - `device`: device, stream, buffers, events; every runtime error becomes `Error::Cuda`.
//! - `kernels`: one function per kernel entry point.
//! - `ops`: `rotary selftest --backend cuda`.
//!
//! The forward pass on the GPU is the rotary's (src/rotary/), through `rotary::cuda`.

pub mod device;
pub mod ffi;
pub mod kernels;
pub mod ops;

pub use ops::CudaOps;

/// Whether this build has CUDA kernels.
pub const COMPILED: bool = true;
