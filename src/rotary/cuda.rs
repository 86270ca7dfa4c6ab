//! The rotary's device trait on a real GPU: csrc/ kernels through the checked FFI, a compute
//! stream and two copy streams (demand, prefetch), pinned host memory, events, and a hard cap
//! on the memory this process allocates (the budget minus the context's own overhead).

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;

use super::device::{Addr, Device, Event, Kernel, LinkStats, Stream};
use crate::backend::cuda::device::{check, Device as Gpu};
use crate::backend::cuda::ffi;
use crate::backend::cuda::kernels::{self, gdn_head_order, quant_of};
use crate::error::{Error, Result};

pub struct CudaDevice {
    gpu: Gpu,
    copy: *mut c_void,
    prefetch: *mut c_void,
    budget_bytes: Option<u64>,
    overhead_bytes: u64,
    used_bytes: u64,
    peak_bytes: u64,
    allocs: Vec<*mut c_void>,
    host: Vec<*mut c_void>,
    events: Vec<*mut c_void>,
    /// References held on each event, and the events free for reuse (every decode step records
    /// several: without reuse they would pile up by the hundred thousand).
    refs: Vec<u32>,
    free: Vec<usize>,
    stats: LinkStats,
    link_peak_gbps: Option<f64>,
    /// Per copy stream (demand, prefetch): the start event and bytes of the copies queued
    /// since its last recorded event.
    open_batch: [Option<(*mut c_void, u64)>; 2],
    /// Batches (start, end, bytes) whose time is not yet known; timed lazily by link_stats.
    closed: RefCell<Vec<(*mut c_void, *mut c_void, u64)>>,
    busy_seconds: Cell<f64>,
}

impl CudaDevice {
    /// Device `ordinal`. The budget covers everything: the memory in use when we start (our
    /// CUDA context, measured with cudaMemGetInfo) plus our allocations. Without one, the
    /// budget is what the device has free, less a margin for the driver.
    pub fn open(ordinal: usize, budget_bytes: Option<u64>) -> Result<CudaDevice> {
        const MARGIN: u64 = 256 << 20;
        let gpu = Gpu::open(ordinal)?;
        let (free, total) = gpu.mem_info()?;
        let overhead_bytes = total - free;
        let budget_bytes = Some(budget_bytes.unwrap_or((total - MARGIN.min(free)).max(overhead_bytes)));
        let mut copy = ptr::null_mut();
        let mut prefetch = ptr::null_mut();
        // SAFETY: valid out-pointers; destroyed in drop.
        unsafe {
            check(ffi::rotary_stream_create(&mut copy), "cudaStreamCreate(copy)")?;
            check(ffi::rotary_stream_create(&mut prefetch), "cudaStreamCreate(prefetch)")?;
        }
        Ok(CudaDevice {
            gpu,
            copy,
            prefetch,
            budget_bytes,
            overhead_bytes,
            used_bytes: 0,
            peak_bytes: 0,
            allocs: Vec::new(),
            host: Vec::new(),
            events: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            stats: LinkStats::default(),
            link_peak_gbps: None,
            open_batch: [None, None],
            closed: RefCell::new(Vec::new()),
            busy_seconds: Cell::new(0.0),
        })
        .map(|mut d: CudaDevice| {
            d.link_peak_gbps = d.measure_link().ok();
            d
        })
    }

    /// Pinned host → device bandwidth: a 32 MiB copy timed with events (best of 3). Runs
    /// before any allocation of ours; its buffers are freed before returning.
    fn measure_link(&mut self) -> Result<f64> {
        const BYTES: u64 = 32 << 20;
        let (mut host, mut dev) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: valid out-pointers; both freed below.
        unsafe {
            check(ffi::rotary_host_alloc_pinned(&mut host, BYTES), "cudaHostAlloc(link test)")?;
            if let Err(e) = check(ffi::rotary_malloc(&mut dev, BYTES), "cudaMalloc(link test)") {
                ffi::rotary_host_free_pinned(host);
                return Err(e);
            }
        }
        let mut best = f64::MAX;
        let mut result = Ok(());
        for _ in 0..3 {
            let start = crate::backend::cuda::device::Event::new()?;
            let end = crate::backend::cuda::device::Event::new()?;
            start.record(&self.gpu)?;
            // SAFETY: both buffers hold BYTES bytes.
            let code = unsafe { ffi::rotary_memcpy_async(dev, host, BYTES, ffi::RotaryCopyKind::ROTARY_COPY_H2D, self.gpu.stream()) };
            if let Err(e) = check(code, "cudaMemcpyAsync(link test)") {
                result = Err(e);
                break;
            }
            end.record(&self.gpu)?;
            best = best.min(end.elapsed_ms_since(&start)? as f64 / 1e3);
        }
        // SAFETY: allocated above, freed once.
        unsafe {
            ffi::rotary_free(dev);
            ffi::rotary_host_free_pinned(host);
        }
        result.map(|()| BYTES as f64 / best / 1e9)
    }

    fn stream(&self, s: Stream) -> *mut c_void {
        match s {
            Stream::Compute => self.gpu.stream(),
            Stream::Copy => self.copy,
            Stream::Prefetch => self.prefetch,
        }
    }

    fn event(&self, e: Event) -> *mut c_void {
        self.events[e.0 as usize]
    }
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        self.gpu.info.to_string()
    }

    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        let rounded = bytes.max(1).div_ceil(256) * 256;
        if let Some(budget) = self.budget_bytes {
            if self.overhead_bytes + self.used_bytes + rounded > budget {
                let free = budget.saturating_sub(self.overhead_bytes + self.used_bytes);
                return Err(Error::DeviceOutOfMemory { what: what.into(), bytes_requested: rounded, bytes_free: free });
            }
        }
        let mut p = ptr::null_mut();
        // SAFETY: valid out-pointer; freed in drop.
        let code = unsafe { ffi::rotary_malloc(&mut p, rounded) };
        if code != 0 {
            let (free, _) = self.gpu.mem_info()?;
            return Err(Error::DeviceOutOfMemory { what: what.into(), bytes_requested: rounded, bytes_free: free });
        }
        self.allocs.push(p);
        // SAFETY: p holds `rounded` bytes.
        check(unsafe { ffi::rotary_memset_async(p, 0, rounded, self.gpu.stream()) }, "cudaMemsetAsync")?;
        self.used_bytes += rounded;
        self.peak_bytes = self.peak_bytes.max(self.used_bytes);
        Ok(p as Addr)
    }

    fn peak_bytes(&self) -> u64 {
        self.overhead_bytes + self.peak_bytes
    }

    fn overhead_bytes(&self) -> u64 {
        self.overhead_bytes
    }

    fn budget_bytes(&self) -> Option<u64> {
        self.budget_bytes
    }

    fn alloc_host(&mut self, bytes: u64, what: &str) -> Result<*mut u8> {
        let mut p = ptr::null_mut();
        // SAFETY: valid out-pointer; freed in drop.
        let code = unsafe { ffi::rotary_host_alloc_pinned(&mut p, bytes.max(1)) };
        check(code, &format!("cudaHostAlloc({what}, {bytes} bytes)"))?;
        self.host.push(p);
        Ok(p.cast())
    }

    unsafe fn h2d(&mut self, stream: Stream, dst: Addr, src: *const u8, bytes: usize) -> Result<()> {
        let s = self.stream(stream);
        if stream != Stream::Compute {
            self.stats.h2d_bytes += bytes as u64;
            let b = if stream == Stream::Copy { 0 } else { 1 };
            match &mut self.open_batch[b] {
                Some((_, n)) => *n += bytes as u64,
                None => {
                    // A batch starts: an event before its first copy on the stream.
                    let mut e = ptr::null_mut();
                    // SAFETY: valid out-pointer; destroyed in drop (kept in events).
                    check(unsafe { ffi::rotary_event_create(&mut e) }, "cudaEventCreate")?;
                    self.events.push(e);
                    self.refs.push(u32::MAX);
                    // SAFETY: live event and stream.
                    check(unsafe { ffi::rotary_event_record(e, s) }, "cudaEventRecord")?;
                    self.open_batch[b] = Some((e, bytes as u64));
                }
            }
        }
        // SAFETY: the caller's contract (see the trait) keeps src valid until the copy is done.
        let code = unsafe {
            ffi::rotary_memcpy_async(dst as *mut c_void, src.cast(), bytes as u64, ffi::RotaryCopyKind::ROTARY_COPY_H2D, s)
        };
        check(code, "cudaMemcpyAsync(H2D)")?;
        // No sync for compute-stream uploads: from pageable memory cudaMemcpyAsync has staged
        // the bytes when it returns (CUDA's documented API sync behaviour), so the caller may
        // free the slice at once; the decode loop keeps one host sync per layer (the ids).
        Ok(())
    }

    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: dst is a live writable slice; src a device allocation of at least its size.
        let code = unsafe {
            ffi::rotary_memcpy_async(
                dst.as_mut_ptr().cast(),
                src as *const c_void,
                dst.len() as u64,
                ffi::RotaryCopyKind::ROTARY_COPY_D2H,
                self.gpu.stream(),
            )
        };
        check(code, "cudaMemcpyAsync(D2H)")?;
        self.gpu.sync()
    }

    fn record(&mut self, stream: Stream) -> Result<Event> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let mut e = ptr::null_mut();
                // SAFETY: valid out-pointer; destroyed in drop.
                check(unsafe { ffi::rotary_event_create(&mut e) }, "cudaEventCreate")?;
                self.events.push(e);
                self.refs.push(0);
                self.events.len() - 1
            }
        };
        let e = self.events[id];
        // SAFETY: live event and stream; nobody references a freed event, so re-recording it
        // changes no one's ordering.
        check(unsafe { ffi::rotary_event_record(e, self.stream(stream)) }, "cudaEventRecord")?;
        self.refs[id] = 1;
        let b = match stream {
            Stream::Copy => Some(0),
            Stream::Prefetch => Some(1),
            Stream::Compute => None,
        };
        if let Some((start, bytes)) = b.and_then(|b| self.open_batch[b].take()) {
            // The batch's end must stay this recording: a private event, never freed.
            let mut end = ptr::null_mut();
            // SAFETY: valid out-pointer; kept in `events` (refs never reach 0), destroyed in drop.
            check(unsafe { ffi::rotary_event_create(&mut end) }, "cudaEventCreate")?;
            // SAFETY: live event and stream.
            check(unsafe { ffi::rotary_event_record(end, self.stream(stream)) }, "cudaEventRecord")?;
            self.events.push(end);
            self.refs.push(u32::MAX);
            self.closed.borrow_mut().push((start, end, bytes));
        }
        Ok(Event(id as u64))
    }

    fn retain(&mut self, event: Event) {
        let r = &mut self.refs[event.0 as usize];
        assert!(*r > 0, "retain of a released event");
        *r = r.saturating_add(1);
    }

    fn release(&mut self, event: Event) {
        let id = event.0 as usize;
        assert!(self.refs[id] > 0, "release of a released event");
        if self.refs[id] != u32::MAX {
            self.refs[id] -= 1;
            if self.refs[id] == 0 {
                self.free.push(id);
            }
        }
    }

    fn wait(&mut self, stream: Stream, event: Event) -> Result<()> {
        // SAFETY: live stream and event.
        check(unsafe { ffi::rotary_stream_wait_event(self.stream(stream), self.event(event)) }, "cudaStreamWaitEvent")
    }

    fn sync_event(&mut self, event: Event) -> Result<()> {
        // SAFETY: live event.
        check(unsafe { ffi::rotary_event_synchronize(self.event(event)) }, "cudaEventSynchronize")
    }

    fn launch(&mut self, k: &Kernel) -> Result<()> {
        launch(&self.gpu, k)
    }

    /// Bytes queued on the copy streams, and the time the completed batches took (from the
    /// event before a batch's first copy to the event after its last; both streams' batches
    /// are added, so overlapping demand and prefetch batches count twice: an upper bound).
    fn link_stats(&self) -> LinkStats {
        let mut closed = self.closed.borrow_mut();
        closed.retain(|&(start, end, _)| {
            let mut ms = 0f32;
            // SAFETY: live events; a batch not finished yet answers cudaErrorNotReady.
            let code = unsafe { ffi::rotary_event_elapsed_ms(&mut ms, start, end) };
            if code == 0 {
                self.busy_seconds.set(self.busy_seconds.get() + ms as f64 / 1e3);
            }
            code != 0
        });
        LinkStats { h2d_bytes: self.stats.h2d_bytes, busy_seconds: self.busy_seconds.get() }
    }

    fn link_peak_gbps(&self) -> Option<f64> {
        self.link_peak_gbps
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.gpu.sync();
        // SAFETY: every handle was created by this device and is released once.
        unsafe {
            for &e in &self.events {
                ffi::rotary_event_destroy(e);
            }
            for &p in &self.allocs {
                ffi::rotary_free(p);
            }
            for &p in &self.host {
                ffi::rotary_host_free_pinned(p);
            }
            ffi::rotary_stream_destroy(self.copy);
            ffi::rotary_stream_destroy(self.prefetch);
        }
    }
}

/// The FFI params of a kernel, launched on the compute stream.
fn launch(gpu: &Gpu, k: &Kernel) -> Result<()> {
    let p = |a: Addr| a as *mut f32;
    let cache = |c: &super::device::KvCache| ffi::RotaryKvCache {
        k: c.k as *mut u16,
        v: c.v as *mut u16,
        page_table: c.page_table as *const i32,
        page_size: c.page_size as i32,
        kv_width: c.kv_width as i32,
    };
    // SAFETY: the engine builds every kernel from allocations sized by the plan (the
    // simulator checks the same kernels' extents against its allocations in CI).
    unsafe {
        match *k {
            Kernel::Gemv { ty, w, x, y, rows, cols, n } => kernels::gemv(gpu, &ffi::RotaryGemv {
                quant: quant_of(ty, "gemv")?,
                w: w as *const c_void,
                x: p(x),
                y: p(y),
                rows: rows as i32,
                cols: cols as i32,
                n_tokens: n as i32,
            }),
            Kernel::TopkMoe { logits, ids, weights, n, n_experts, k, renorm } => kernels::topk_moe(gpu, &ffi::RotaryTopkMoe {
                logits: p(logits),
                ids: ids as *mut i32,
                weights: p(weights),
                n_tokens: n as i32,
                n_experts: n_experts as i32,
                k: k as i32,
                norm: if renorm { ffi::RotaryTopkNorm::ROTARY_TOPK_RENORM } else { ffi::RotaryTopkNorm::ROTARY_TOPK_SOFTMAX },
            }),
            Kernel::Moe {
                ty_gate_up, ty_down, gate, up, down, ids, weights, x, act, out, offsets, pairs, residual,
                dim, ffn, n, k, n_experts,
            } => kernels::moe(gpu, &ffi::RotaryMoe {
                quant_gate_up: quant_of(ty_gate_up, "moe gate/up")?,
                quant_down: quant_of(ty_down, "moe down")?,
                gate: gate as *const *const c_void,
                up: up as *const *const c_void,
                down: down as *const *const c_void,
                ids: ids as *const i32,
                weights: p(weights),
                x: p(x),
                act: p(act),
                out: p(out),
                group_offsets: offsets as *mut i32,
                group_pairs: pairs as *mut i32,
                residual: p(residual),
                dim: dim as i32,
                ffn: ffn as i32,
                n_tokens: n as i32,
                k: k as i32,
                n_experts: n_experts as i32,
            }),
            Kernel::RmsNorm { x, w, y, rows, width, eps } => kernels::rmsnorm(gpu, &ffi::RotaryRmsNorm {
                x: p(x),
                w: p(w),
                y: p(y),
                rows: rows as i32,
                width: width as i32,
                eps,
            }),
            Kernel::Rope { x, inv_freq, n, n_heads, head_dim, rope_dims, pos0 } => kernels::rope_neox(gpu, &ffi::RotaryRope {
                x: p(x),
                inv_freq: p(inv_freq),
                n_tokens: n as i32,
                n_heads: n_heads as i32,
                head_dim: head_dim as i32,
                rope_dims: rope_dims as i32,
                pos0: pos0 as i32,
            }),
            Kernel::KvStore { cache: c, k: kk, v, n, pos0 } => kernels::kv_store(gpu, &ffi::RotaryKvStore {
                cache: cache(&c),
                k: p(kk),
                v: p(v),
                n_tokens: n as i32,
                pos0: pos0 as i32,
            }),
            Kernel::Attention { cache: c, q, o, n, n_heads, n_kv_heads, head_dim, pos0, scale } => {
                kernels::attention(gpu, &ffi::RotaryAttention {
                    cache: cache(&c),
                    q: p(q),
                    o: p(o),
                    n_tokens: n as i32,
                    n_heads: n_heads as i32,
                    n_kv_heads: n_kv_heads as i32,
                    head_dim: head_dim as i32,
                    pos0: pos0 as i32,
                    scale,
                })
            }
            Kernel::Add { y, x, n } => kernels::add(gpu, &ffi::RotaryAdd { y: p(y), x: p(x), n: n as i64 }),
            Kernel::SplitGate { qg, q, gate, n, n_heads, head_dim } => kernels::split_gate(gpu, &ffi::RotarySplitGate {
                qg: p(qg),
                q: p(q),
                gate: p(gate),
                n_tokens: n as i32,
                n_heads: n_heads as i32,
                head_dim: head_dim as i32,
            }),
            Kernel::SigmoidMul { y, g, n } => {
                kernels::sigmoid_mul(gpu, &ffi::RotarySigmoidMul { y: p(y), g: p(g), n: n as i64 })
            }
            Kernel::Sigmoid { x, n } => kernels::sigmoid(gpu, &ffi::RotarySigmoid { x: p(x), n: n as i64 }),
            Kernel::GdnConv { x, state, w, n, channels, kernel } => kernels::gdn_conv(gpu, &ffi::RotaryGdnConv {
                x: p(x),
                state: p(state),
                w: p(w),
                n_tokens: n as i32,
                channels: channels as i32,
                kernel: kernel as i32,
            }),
            Kernel::GdnGates { beta, alpha, dt_bias, a, n, n_v } => kernels::gdn_gates(gpu, &ffi::RotaryGdnGates {
                beta: p(beta),
                alpha: p(alpha),
                dt_bias: p(dt_bias),
                a: p(a),
                n_tokens: n as i32,
                n_v_heads: n_v as i32,
            }),
            Kernel::GdnRule { qkv, beta, decay, state, o, n, n_k, n_v, head_k, head_v, tiled } => {
                kernels::gdn_rule(gpu, &ffi::RotaryGdnRule {
                    qkv: p(qkv),
                    beta: p(beta),
                    decay: p(decay),
                    state: p(state),
                    o: p(o),
                    n_tokens: n as i32,
                    n_k_heads: n_k as i32,
                    n_v_heads: n_v as i32,
                    head_k: head_k as i32,
                    head_v: head_v as i32,
                    order: gdn_head_order(tiled),
                })
            }
            Kernel::GatedNorm { x, z, w, rows, width, eps } => kernels::gated_norm(gpu, &ffi::RotaryGatedNorm {
                x: p(x),
                z: p(z),
                w: p(w),
                rows: rows as i32,
                width: width as i32,
                eps,
            }),
        }
    }
}
