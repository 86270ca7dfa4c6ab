//! The small device trait the rotary drives: memory under a budget, copies on their own
//! streams, events that order them, and the kernels of the forward pass. `SimDevice` (CPU
//! kernels, threads for the copy engines) and `CudaDevice` (csrc/ through the FFI) implement it,
//! so everything above it (the streamed forward, the expert cache, prefetch, the CPU fallback)
//! runs and is tested on machines without a GPU.

use crate::error::Result;
use crate::quant::GgmlType;

/// A device address: a CUDA device pointer, or for the simulator a host pointer into memory
/// the simulator owns. Kernels receive addresses, as the CUDA kernels receive pointers.
pub type Addr = u64;

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

/// The paged f16 KV cache of one layer (RotaryKvCache).
#[derive(Copy, Clone, Debug)]
pub struct KvCache {
    pub k: Addr,          // [n_pages, page_size, kv_width] f16
    pub v: Addr,          // [n_pages, page_size, kv_width] f16
    pub page_table: Addr, // [n_pages] i32
    pub page_size: usize,
    pub kv_width: usize,
}

/// The kernels of abi.h, with the same contracts (see csrc/include/abi.h), in Rust terms.
/// Sizes are element counts; every address is 16-byte aligned.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// y [n, rows] = W [rows, cols] · x [n, cols].
    Gemv { ty: GgmlType, w: Addr, x: Addr, y: Addr, rows: usize, cols: usize, n: usize },
    /// logits [n, n_experts] → ids [n, k] i32, weights [n, k].
    TopkMoe { logits: Addr, ids: Addr, weights: Addr, n: usize, n_experts: usize, k: usize, renorm: bool },
    /// Routed experts into the residual. A negative id −1−e marks a pair whose `out` row the
    /// host already wrote (computed on the CPU): the expert stages skip it, the combine adds it.
    Moe {
        ty_gate_up: GgmlType,
        ty_down: GgmlType,
        gate: Addr,      // [n_experts] u64 addresses of [ffn, dim]
        up: Addr,        // [n_experts] u64 addresses of [ffn, dim]
        down: Addr,      // [n_experts] u64 addresses of [dim, ffn]
        ids: Addr,       // [n, k] i32
        weights: Addr,   // [n, k] f32
        x: Addr,         // [n, dim]
        act: Addr,       // [n * k, ffn]
        out: Addr,       // [n * k, dim]
        offsets: Addr,   // [n_experts + 1] i32
        pairs: Addr,     // [n * k] i32
        residual: Addr,  // [n, dim]
        dim: usize,
        ffn: usize,
        n: usize,
        k: usize,
        n_experts: usize,
    },
    RmsNorm { x: Addr, w: Addr, y: Addr, rows: usize, width: usize, eps: f32 },
    Rope { x: Addr, inv_freq: Addr, n: usize, n_heads: usize, head_dim: usize, rope_dims: usize, pos0: usize },
    KvStore { cache: KvCache, k: Addr, v: Addr, n: usize, pos0: usize },
    Attention {
        cache: KvCache,
        q: Addr,
        o: Addr,
        n: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        pos0: usize,
        scale: f32,
    },
    Add { y: Addr, x: Addr, n: usize },
    /// Gated attention (qwen35moe): qg [n, n_heads, 2 * head_dim] = [q_h | gate_h] per head →
    /// q, gate [n, n_heads * head_dim].
    SplitGate { qg: Addr, q: Addr, gate: Addr, n: usize, n_heads: usize, head_dim: usize },
    /// y[i] *= sigmoid(g[i]), i < n.
    SigmoidMul { y: Addr, g: Addr, n: usize },
    /// x[i] = sigmoid(x[i]), i < n (the shared expert's per-token weight).
    Sigmoid { x: Addr, n: usize },
    /// Gated DeltaNet causal conv + SiLU in place on x [n, channels]; state [kernel-1, channels]
    /// (previous inputs, oldest first) advanced by n; w [channels, kernel] f32.
    GdnConv { x: Addr, state: Addr, w: Addr, n: usize, channels: usize, kernel: usize },
    /// beta [n, n_v] ← sigmoid(beta); alpha [n, n_v] ← exp(a · softplus(alpha + dt_bias)).
    GdnGates { beta: Addr, alpha: Addr, dt_bias: Addr, a: Addr, n: usize, n_v: usize },
    /// The gated delta rule over n tokens (src/model/deltanet.rs `delta_rule`): qkv [n,
    /// 2·n_k·dk + n_v·dv] convolved, beta/decay [n, n_v], state [n_v, dk, dv] f32 updated,
    /// o [n, n_v·dv]. Value head h reads key head h % n_k (tiled) or h / (n_v / n_k).
    GdnRule {
        qkv: Addr,
        beta: Addr,
        decay: Addr,
        state: Addr,
        o: Addr,
        n: usize,
        n_k: usize,
        n_v: usize,
        head_k: usize,
        head_v: usize,
        tiled: bool,
    },
    /// x [rows, width] ← rmsnorm(x) · w · silu(z), w [width] (plain weight), in place.
    GatedNorm { x: Addr, z: Addr, w: Addr, rows: usize, width: usize, eps: f32 },
}

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
    unsafe fn h2d(&mut self, stream: Stream, dst: Addr, src: *const u8, bytes: usize) -> Result<()>;

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

    /// Queue a kernel on the compute stream.
    fn launch(&mut self, k: &Kernel) -> Result<()>;

    fn link_stats(&self) -> LinkStats;

    /// The host link's peak for pinned copies (measured at start on a GPU), GB/s.
    fn link_peak_gbps(&self) -> Option<f64> {
        None
    }

    /// Seconds the host has waited on the copy streams (compute blocked by loads).
    fn stall_seconds(&self) -> f64 {
        0.0
    }
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

/// Plain numbers a device buffer can be read into: every bit pattern is a value.
pub trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for i32 {}

// Device memory holds little-endian values; so does the host this runs on.
const _: () = assert!(cfg!(target_endian = "little"));

/// Copy device values into `out` (after everything queued on the compute stream), straight
/// into its memory: the decode loop reads ids and logits this way without a staging buffer.
pub fn download<T: Plain>(dev: &mut dyn Device, src: Addr, out: &mut [T]) -> Result<()> {
    // SAFETY: `out` is a live, exclusively borrowed slice; viewing its memory as bytes is
    // sound for Plain types (no padding, every byte pattern is a valid value).
    let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(out)) };
    dev.d2h(src, bytes)
}
