//! The CUDA backend (built when build.rs found nvcc: `cfg(has_cuda)`): the kernels of csrc/
//! behind a thin, checked FFI. `cuda_stub.rs` has the same public API for CPU-only builds.
//!
//! - `ffi`: bindgen's view of csrc/include/abi.h.
//! - `device`: the GPU, its stream, buffers, events; every runtime error becomes `Error::Cuda`.
//! - `kernels`: one function per kernel entry point.
//!
//! The device trait on the GPU (and every kernel's FFI params) is src/rotary/cuda.rs.

pub mod device;
pub mod ffi;
pub mod kernels;

/// Whether this build has CUDA kernels.
pub const COMPILED: bool = true;

/// Whether CUDA device `ordinal` opens (a GPU is there and usable).
pub fn device_available(ordinal: usize) -> bool {
    device::Gpu::open(ordinal).is_ok()
}
