//! The small device trait the forward pass and the rotary drive: memory under a budget, copies
//! on their own streams, events that order them, and the op vocabulary (src/ops/). `HostDevice`
//! (`cpu`, `cpu-ref`: memory is host memory), `SimDevice` (host kernels, a budget, a thread for
//! the copy engine) and `CudaDevice` (csrc/ through the FFI) implement it, so everything above
//! it (the forward, the expert cache, prefetch, the CPU fallback) runs and is tested on
//! machines without a GPU.

use crate::error::Result;
pub use crate::ops::host::Plain;
pub use crate::ops::{Addr, Kernel, KvCache, KvType};

/// Where work is queued. Work on one stream runs in order; streams are ordered against each
/// other only by events.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Kernels, small uploads of tables and activations, downloads.
    Compute,
    /// Demand loads of missed experts.
    Copy,
    /// Speculative loads; never ahead of the demand loads on the link.
    Prefetch,
}

/// An event recorded on a stream: complete when everything queued before it there is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event(pub u64);

/// Bytes moved over the host link and how long the link was busy moving them.
#[derive(Copy, Clone, Debug, Default)]
pub struct LinkStats {
    pub h2d_bytes: u64,
    pub busy_seconds: f64,
}

pub trait Device {
    /// The device, in words.
    fn describe(&self) -> String;

    /// `bytes` of device memory (zeroed), 256-byte aligned. Past the budget:
    /// `Error::DeviceOutOfMemory` naming `what`.
    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr>;

    /// Give back an allocation of `alloc` (the selftest's cases; the engine allocates once and
    /// frees nothing until the device drops).
    fn free(&mut self, addr: Addr);

    /// The most device memory in use at once: this process's allocations plus the device's
    /// own overhead.
    fn peak_bytes(&self) -> u64;

    /// Device memory in use before any allocation of ours (a CUDA context; 0 simulated).
    fn overhead_bytes(&self) -> u64 {
        0
    }

    /// The cap on `peak_bytes`, if any.
    fn budget_bytes(&self) -> Option<u64>;

    /// The largest allocation that fits in the budget now, as the device charges it (None: no
    /// budget). The expert cache, allocated last, is sized from this rather than from the
    /// plan's arithmetic.
    fn largest_alloc(&mut self) -> Result<Option<u64>> {
        Ok(self.budget_bytes().map(|b| b.saturating_sub(self.peak_bytes())))
    }

    /// Host memory the copy engines read at full speed (pinned). Lives as long as the device.
    fn alloc_host(&mut self, bytes: u64, what: &str) -> Result<*mut u8>;

    /// Queue a copy of `bytes` from host `src` to device `dst` on `stream`.
    ///
    /// # Safety
    /// `src..src + bytes` must stay valid and unchanged until the copy completes: for the
    /// Compute stream until this returns (it copies or stages the bytes), for the copy streams
    /// until an event recorded after it on that stream completes. `dst` must be an allocation
    /// of this device with room for `bytes`.
    unsafe fn h2d(&mut self, stream: Stream, dst: Addr, src: *const u8, bytes: usize)
        -> Result<()>;

    /// Copy device memory to the host after everything queued on the compute stream.
    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()>;

    /// Record an event on `stream`. The caller holds one reference to it: `retain` adds one,
    /// `release` drops one; with none left the device may reuse the event.
    fn record(&mut self, stream: Stream) -> Result<Event>;

    fn retain(&mut self, _event: Event) {}

    fn release(&mut self, _event: Event) {}

    /// Later work on `stream` waits for `event`.
    fn wait(&mut self, stream: Stream, event: Event) -> Result<()>;

    /// Block the host until `event` completes.
    fn sync_event(&mut self, event: Event) -> Result<()>;

    /// Whether `event` has completed, without blocking. A device whose work is done when it
    /// is queued (the host devices) answers true.
    fn query(&mut self, _event: Event) -> Result<bool> {
        Ok(true)
    }

    /// Queue a kernel on the compute stream.
    fn launch(&mut self, k: &Kernel) -> Result<()>;

    /// Hand out host bytes (weights in the file mapping) as device memory: a copy into a new
    /// allocation on a GPU and the simulator; the bytes themselves on a host device.
    ///
    /// # Safety
    /// `data` must stay valid and unchanged while the device may read it.
    unsafe fn map(&mut self, data: &[u8], what: &str) -> Result<Addr> {
        let a = self.alloc(data.len().max(1) as u64, what)?;
        // SAFETY: the compute stream consumes the source before h2d returns; `a` holds it.
        unsafe { self.h2d(Stream::Compute, a, data.as_ptr(), data.len())? };
        Ok(a)
    }

    /// Device memory is host memory (`cpu`, `cpu-ref`): `map` copies nothing, so resident
    /// experts need no slots.
    fn is_host(&self) -> bool {
        false
    }

    /// Tokens per micro-batch (workspaces are sized for it): small on a GPU, where VRAM is
    /// the budget; a whole prompt on the host, where weights stream once per batch.
    fn max_batch(&self) -> usize {
        super::plan::UBATCH
    }

    /// How the KV cache stores keys and values on this device.
    fn kv_type(&self) -> KvType {
        KvType::F16
    }

    fn link_stats(&self) -> LinkStats;

    /// The memory bandwidth weight-streaming kernels are held to, measured now: a GPU's
    /// device-to-device copy, the host's read bandwidth on the backend's threads; None where
    /// the device has no memory of its own to measure (the simulator).
    fn peak_gbps(&mut self) -> Result<Option<PeakBandwidth>> {
        Ok(None)
    }

    /// The host link's peak for pinned copies (measured at start on a GPU), GB/s.
    fn link_peak_gbps(&self) -> Option<f64> {
        None
    }

    /// Seconds the host has waited on the copy streams (compute blocked by loads).
    fn stall_seconds(&self) -> f64 {
        0.0
    }
}

/// A measured memory bandwidth and what was measured.
#[derive(Clone, Debug)]
pub struct PeakBandwidth {
    pub gbps: f64,
    /// How: "device copy, read + write", "memory read, 2 threads".
    pub what: String,
}

/// Upload a slice on the compute stream (setup and small per-layer tables).
pub fn upload<T: Copy>(dev: &mut dyn Device, dst: Addr, data: &[T]) -> Result<()> {
    let bytes = std::mem::size_of_val(data);
    // SAFETY: the compute stream consumes the source before h2d returns; dst is the caller's
    // allocation, sized for data (callers allocate from the same shapes).
    unsafe { dev.h2d(Stream::Compute, dst, data.as_ptr().cast(), bytes) }
}

/// Allocate and fill.
pub fn alloc_upload<T: Copy>(dev: &mut dyn Device, data: &[T], what: &str) -> Result<Addr> {
    let a = dev.alloc(std::mem::size_of_val(data).max(1) as u64, what)?;
    upload(dev, a, data)?;
    Ok(a)
}

/// Copy device values into `out` (after everything queued on the compute stream), straight
/// into its memory: the decode loop reads ids and logits this way without a staging buffer.
pub fn download<T: Plain>(dev: &mut dyn Device, src: Addr, out: &mut [T]) -> Result<()> {
    // SAFETY: `out` is a live, exclusively borrowed slice; viewing its memory as bytes is
    // sound for Plain types (no padding, every byte pattern is a valid value).
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(out))
    };
    dev.d2h(src, bytes)
}
