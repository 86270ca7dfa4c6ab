//! The CUDA backend's API in a build without nvcc: no device is ever available, and opening
//! one (src/rotary/mod.rs) answers `Error::CudaNotCompiled`, so callers compile and fail with a
//! clear message at run time.

/// Whether this build has CUDA kernels.
pub const COMPILED: bool = false;

/// Whether CUDA device `ordinal` opens: never, without CUDA.
pub fn device_available(_ordinal: usize) -> bool {
    false
}
