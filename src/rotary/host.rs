//! `--backend cpu` and `--backend cpu-ref`: the device trait on the host. Device memory is host
//! memory: the weights are the file mapping (Device::map copies nothing), uploads and
//! downloads are plain copies, every stream is the calling thread, so an event is complete
//! when it is recorded. The kernels are src/ops/host.rs over the fast CPU backend (`cpu`, f16
//! KV cache as llama.cpp) or the scalar oracle (`cpu-ref`, f32 KV cache: HF to 1e-12).

use super::device::{Addr, Device, Event, Kernel, KvType, LinkStats, PeakBandwidth, Stream};
use crate::backend::cpu::CpuBackend;
use crate::backend::cpu_ref::CpuRef;
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::host::{HostKernels, HostMemory};

/// Tokens per micro-batch on the host: a whole llama-bench prompt, so prefill streams each
/// weight once per 512 tokens as the CPU engine always has.
pub const HOST_UBATCH: usize = 512;

pub struct HostDevice {
    mem: HostMemory,
    kernels: HostKernels,
    kv: KvType,
    next_event: u64,
}

impl HostDevice {
    /// The fast CPU kernels on `threads` threads (default: the physical cores).
    pub fn cpu(threads: Option<usize>) -> Result<HostDevice> {
        Ok(HostDevice::with(Box::new(CpuBackend::new(threads)?), KvType::F16))
    }

    /// The scalar oracle with an exact f32 KV cache.
    pub fn reference() -> HostDevice {
        HostDevice::with(Box::new(CpuRef), KvType::F32)
    }

    fn with(backend: Box<dyn Backend>, kv: KvType) -> HostDevice {
        HostDevice {
            mem: HostMemory::default(),
            kernels: HostKernels::new(backend),
            kv,

            next_event: 1,
        }
    }

    /// The kernels' backend (`cpu` or `cpu-ref`).
    pub fn backend(&self) -> &dyn Backend {
        self.kernels.backend.as_ref()
    }
}

impl Device for HostDevice {
    fn describe(&self) -> String {
        let b = self.backend();
        format!("CPU ({} kernels, {} threads, host memory)", b.name(), b.threads())
    }

    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        Ok(self.mem.alloc(bytes, what))
    }

    fn free(&mut self, addr: Addr) {
        self.mem.free(addr);
    }

    /// Memory read bandwidth on the backend's threads (`backend::cpu::read_gbps`): what a
    /// CPU product streaming its weights from memory can reach at most.
    fn peak_gbps(&mut self) -> Result<Option<PeakBandwidth>> {
        let threads = self.backend().threads();
        Ok(Some(PeakBandwidth {
            gbps: crate::backend::cpu::read_gbps(threads),
            what: format!("memory read, {threads} threads"),
        }))
    }

    /// Workspaces, caches and state (the weights are the mapping, counted by nobody here).
    fn peak_bytes(&self) -> u64 {
        self.mem.owned_bytes()
    }

    fn budget_bytes(&self) -> Option<u64> {
        None
    }

    fn alloc_host(&mut self, bytes: u64, _what: &str) -> Result<*mut u8> {
        Ok(self.mem.alloc_host(bytes))
    }

    unsafe fn h2d(
        &mut self,
        _stream: Stream,
        dst: Addr,
        src: *const u8,
        bytes: usize,
    ) -> Result<()> {
        // SAFETY: the caller's contract keeps src valid for `bytes`; the copy is done now.
        unsafe { self.mem.write_raw(dst, src, bytes, "upload destination") }
    }

    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()> {
        dst.copy_from_slice(self.mem.view::<u8>(src, dst.len(), "download source")?);
        Ok(())
    }

    /// Everything queued has run: every event is complete when recorded.
    fn record(&mut self, _stream: Stream) -> Result<Event> {
        self.next_event += 1;
        Ok(Event(self.next_event))
    }

    fn wait(&mut self, _stream: Stream, _event: Event) -> Result<()> {
        Ok(())
    }

    fn sync_event(&mut self, _event: Event) -> Result<()> {
        Ok(())
    }

    fn launch(&mut self, k: &Kernel) -> Result<()> {
        self.kernels.launch(&mut self.mem, k)
    }

    unsafe fn map(&mut self, data: &[u8], what: &str) -> Result<Addr> {
        // SAFETY: the caller's contract (data outlives every kernel that reads it).
        Ok(unsafe { self.mem.map(data, what) })
    }

    fn is_host(&self) -> bool {
        true
    }

    fn max_batch(&self) -> usize {
        HOST_UBATCH
    }

    fn kv_type(&self) -> KvType {
        self.kv
    }

    fn link_stats(&self) -> LinkStats {
        LinkStats::default()
    }
}
