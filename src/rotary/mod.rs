//! The rotary: MoE models larger than VRAM under a hard VRAM budget. Dense weights stay
//! resident; routed experts rotate through a VRAM cache from pinned host memory, with
//! prefetch and a CPU fallback. Everything drives a small `Device` trait, so the same code
//! runs on a GPU (`cuda`) and on the simulator (`sim`) in CI.
//!
//! - `plan`: the VRAM plan (dense + KV + workspaces + overhead, then expert slots).
//! - `device`: the device trait and the kernel list.
//! - `sim`: the simulated GPU.
//! - `cache`: expert slots and eviction policies.
//! - `engine`: the streamed forward pass, prefetch, CPU fallback, stats.

pub mod cache;
#[cfg(has_cuda)]
pub mod cuda;
pub mod device;
pub mod engine;
pub mod plan;
pub mod sim;

pub use engine::{MoePolicy, Options, PinMode, Stats, StreamSession};

use crate::error::Result;

/// The device of `--backend sim|cuda` with the budget it enforces.
pub fn open_device(
    backend: &str,
    ordinal: usize,
    budget_bytes: Option<u64>,
    sim_link_gbps: f64,
    threads: Option<usize>,
) -> Result<Box<dyn device::Device>> {
    match backend {
        "sim" => Ok(Box::new(sim::SimDevice::new(budget_bytes, sim_link_gbps, threads)?)),
        #[cfg(has_cuda)]
        "cuda" => Ok(Box::new(cuda::CudaDevice::open(ordinal, budget_bytes)?)),
        #[cfg(not(has_cuda))]
        "cuda" => {
            let _ = ordinal;
            Err(crate::Error::CudaNotCompiled)
        }
        other => Err(crate::Error::Usage(format!("backend {other} has no device (sim, cuda)"))),
    }
}
