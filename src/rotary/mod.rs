//! The rotary: MoE models larger than VRAM under a hard VRAM budget. Dense weights stay
//! resident; routed experts rotate through a VRAM cache from pinned host memory, with
//! prefetch and a CPU fallback. Everything drives a small `Device` trait, so the same code
//! runs on a GPU (`cuda`), on the simulator (`sim`) in CI, and on the host (`cpu`, `cpu-ref`).
//!
//! - `plan`: the VRAM plan (dense + KV + workspaces + overhead, then expert slots).
//! - `device`: the device trait; `host`, `sim`, `cuda`: its implementations.
//! - `upload`: the dense weights and workspaces on a device.
//! - `cache`: expert slots and eviction policies.
//! - `decide`: the rotary's choices on the cache (hits, loads, CPU experts, behind, ahead).
//! - `residency`: hits, demand loads, prefetch, the CPU fallback, the pinned host side.
//! - `options`: typed options, and the stats a run measured.
//! - `target`: machines to project for and the per-layer time model; `replay`: the cache and
//!   miss policy on a routing trace, without kernels (real shapes in seconds).

pub mod cache;
#[cfg(has_cuda)]
pub mod cuda;
pub mod decide;
pub mod device;
pub mod host;
pub mod options;
pub mod plan;
pub mod replay;
pub mod residency;
pub mod sim;
pub mod target;
pub mod upload;

pub use options::{MoePolicy, Options, PinMode, Stats};

use crate::error::Result;

/// Where the forward pass runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The fast CPU kernels on host memory.
    Cpu,
    /// The scalar oracle on host memory (f32 KV cache).
    CpuRef,
    /// The simulated GPU (host kernels, a budget, a throttled link).
    Sim,
    /// The GPU (csrc/ kernels).
    Cuda,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::CpuRef => "cpu-ref",
            BackendKind::Sim => "sim",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether the backend has device memory of its own (a budget, a link).
    pub fn is_device(self) -> bool {
        matches!(self, BackendKind::Sim | BackendKind::Cuda)
    }
}

/// The device of a backend, with the budget it enforces (sim, cuda).
pub fn open_device(
    kind: BackendKind,
    ordinal: usize,
    budget_bytes: Option<u64>,
    sim_link_gbps: f64,
    threads: Option<usize>,
) -> Result<Box<dyn device::Device>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(host::HostDevice::cpu(threads)?)),
        BackendKind::CpuRef => Ok(Box::new(host::HostDevice::reference())),
        BackendKind::Sim => {
            Ok(Box::new(sim::SimDevice::new(budget_bytes, sim_link_gbps, threads)?))
        }
        #[cfg(has_cuda)]
        BackendKind::Cuda => Ok(Box::new(cuda::CudaDevice::open(ordinal, budget_bytes)?)),
        #[cfg(not(has_cuda))]
        BackendKind::Cuda => {
            let _ = ordinal;
            Err(crate::Error::CudaNotCompiled)
        }
    }
}
