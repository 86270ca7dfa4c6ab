//! The rotary's device trait on a real GPU: csrc/ kernels through the checked FFI, a compute
//! stream and two copy streams (demand, prefetch), pinned host memory, events, and a hard cap
//! on the device memory in use, measured as the driver charges it (cudaMemGetInfo: the
//! context, allocations in the driver's pages, lazily loaded kernel code).
//!
//! Events come from two pools: sync-only events (cudaEventDisableTiming) for ordering, reused
//! once released, and timing events for the link's batches and the compute stream's waits on
//! copies, reused once timed. Both stay bounded over any number of tokens.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;

mod launch;

use crate::backend::cuda::device::{check, Gpu};
use crate::backend::cuda::ffi;
use crate::error::{Error, Result};
use crate::rotary::device::{Addr, Device, Event, Kernel, LinkStats, PeakBandwidth, Stream};
use crate::rotary::plan::LAUNCH_RESERVE;
use launch::launch;

/// The driver's page for device memory, and the largest allocation it packs into shared
/// pages (the emulated runtime models the same).
const DRIVER_PAGE: u64 = 2 << 20;
const SMALL_ALLOC: u64 = 1 << 20;

/// An interval timed by two timing events recorded on one stream.
struct Span {
    start: *mut c_void,
    end: *mut c_void,
    /// A batch of copies on the link (busy time); otherwise a compute-stream wait (stall).
    link: bool,
}

pub struct CudaDevice {
    gpu: Gpu,
    copy: *mut c_void,
    prefetch: *mut c_void,
    budget_bytes: Option<u64>,
    overhead_bytes: u64,
    /// The most the device had in use (total - free) at any measurement.
    peak_bytes: Cell<u64>,
    allocs: Vec<*mut c_void>,
    host: Vec<(*mut c_void, u64)>,
    /// Sync-only events by id, the stream each was last recorded on, references held on each,
    /// and the ids free for reuse (every decode step records several).
    events: Vec<*mut c_void>,
    recorded_on: Vec<Stream>,
    refs: Vec<u32>,
    free: Vec<usize>,
    /// Every timing event created, and those free for reuse.
    timing: Vec<*mut c_void>,
    timing_free: RefCell<Vec<*mut c_void>>,
    stats: LinkStats,
    link_peak_gbps: Option<f64>,
    /// Per copy stream (demand, prefetch): the timing event before the first copy queued
    /// since its last recorded event.
    open_batch: [Option<*mut c_void>; 2],
    /// Spans whose time is not yet known; timed (and their events freed) lazily.
    closed: RefCell<Vec<Span>>,
    busy_seconds: Cell<f64>,
    /// Seconds the compute stream stood waiting for copies (timed spans), and the host for
    /// copy events.
    stall_seconds: Cell<f64>,
}

/// Timed spans waiting at most this many before the oldest are waited for.
const MAX_OPEN_SPANS: usize = 64;

impl CudaDevice {
    /// Device `ordinal`. The budget covers everything: the memory in use when we start (our
    /// CUDA context, measured with cudaMemGetInfo) plus our allocations. Without one, the
    /// budget is what the device has free, less a margin for the driver.
    pub fn open(ordinal: usize, budget_bytes: Option<u64>) -> Result<CudaDevice> {
        const MARGIN: u64 = 256 << 20;
        let gpu = Gpu::open(ordinal)?;
        let (free, total) = gpu.mem_info()?;
        let overhead_bytes = total - free + LAUNCH_RESERVE;
        let budget_bytes =
            Some(budget_bytes.unwrap_or((total - MARGIN.min(free)).max(overhead_bytes)));
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
            peak_bytes: Cell::new(total - free),
            allocs: Vec::new(),
            host: Vec::new(),
            events: Vec::new(),
            recorded_on: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            timing: Vec::new(),
            timing_free: RefCell::new(Vec::new()),
            stats: LinkStats::default(),
            link_peak_gbps: None,
            open_batch: [None, None],
            closed: RefCell::new(Vec::new()),
            busy_seconds: Cell::new(0.0),
            stall_seconds: Cell::new(0.0),
        })
        .and_then(|mut d: CudaDevice| {
            // Only a sticky error (the device is unusable) stops here; a failed measurement
            // (no room for its buffers) leaves the configured link speed in charge.
            d.link_peak_gbps = match d.measure_link() {
                Ok(gbps) => Some(gbps),
                Err(e) => {
                    d.gpu.sync().map_err(|_| e)?;
                    None
                }
            };
            Ok(d)
        })
    }

    /// Pinned host → device bandwidth: an 8 MiB copy timed with events (best of 3). Runs
    /// before any allocation of ours (its buffers count in the peak); they are freed on every
    /// path, and a failure leaves no last error behind for the next launch to report.
    fn measure_link(&mut self) -> Result<f64> {
        const BYTES: u64 = 8 << 20;
        struct Buffers(*mut c_void, *mut c_void);
        impl Drop for Buffers {
            fn drop(&mut self) {
                // SAFETY: null or allocated below, freed once; the frees wait for the device.
                unsafe {
                    if !self.1.is_null() {
                        ffi::rotary_free(self.1);
                    }
                    if !self.0.is_null() {
                        ffi::rotary_host_free_pinned(self.0);
                    }
                }
            }
        }
        let mut b = Buffers(ptr::null_mut(), ptr::null_mut());
        let result = (|| {
            // SAFETY: valid out-pointers; freed by `b`.
            unsafe {
                check(ffi::rotary_host_alloc_pinned(&mut b.0, BYTES), "cudaHostAlloc(link test)")?;
                check(ffi::rotary_malloc(&mut b.1, BYTES), "cudaMalloc(link test)")?;
            }
            self.measure_in_use()?;
            let mut best = f64::MAX;
            for _ in 0..3 {
                let start = crate::backend::cuda::device::Event::new()?;
                let end = crate::backend::cuda::device::Event::new()?;
                start.record(&self.gpu)?;
                // SAFETY: both buffers hold BYTES bytes.
                let code = unsafe {
                    ffi::rotary_memcpy_async(
                        b.1,
                        b.0,
                        BYTES,
                        ffi::RotaryCopyKind::ROTARY_COPY_H2D,
                        self.gpu.stream(),
                    )
                };
                check(code, "cudaMemcpyAsync(link test)")?;
                end.record(&self.gpu)?;
                best = best.min(end.elapsed_ms_since(&start)? as f64 / 1e3);
            }
            Ok(BYTES as f64 / best / 1e9)
        })();
        if result.is_err() {
            // SAFETY: no arguments; clears the error the failed call recorded.
            unsafe { ffi::rotary_get_last_error() };
        }
        result
    }

    /// Device memory in use now (total - free), remembered as the peak if it is one.
    fn measure_in_use(&self) -> Result<u64> {
        let (free, total) = self.gpu.mem_info()?;
        let used = total - free;
        self.peak_bytes.set(self.peak_bytes.get().max(used));
        Ok(used)
    }

    /// A timing event from the pool.
    fn timing_event(&mut self) -> Result<*mut c_void> {
        if let Some(e) = self.timing_free.borrow_mut().pop() {
            return Ok(e);
        }
        let mut e = ptr::null_mut();
        // SAFETY: valid out-pointer; destroyed in drop (kept in `timing`).
        check(unsafe { ffi::rotary_event_create_timing(&mut e) }, "cudaEventCreate(timing)")?;
        self.timing.push(e);
        Ok(e)
    }

    /// Time the spans that have finished (all of them with `wait`): their seconds go to the
    /// link's busy time or the stall time, their events back to the pool.
    fn time_spans(&self, wait: bool) -> Result<()> {
        let mut closed = self.closed.borrow_mut();
        let mut keep = Vec::new();
        for span in closed.drain(..) {
            if wait {
                // SAFETY: a live event.
                check(unsafe { ffi::rotary_event_synchronize(span.end) }, "cudaEventSynchronize")?;
            } else {
                // SAFETY: a live event. A not-ready answer leaves no last error (abi.h).
                match unsafe { ffi::rotary_event_query(span.end) } {
                    0 => {}
                    code if code == ffi::ROTARY_NOT_READY as i32 => {
                        keep.push(span);
                        continue;
                    }
                    code => return check(code, "cudaEventQuery"),
                }
            }
            let mut ms = 0f32;
            // SAFETY: both events recorded on one stream and complete (start before end).
            check(
                unsafe { ffi::rotary_event_elapsed_ms(&mut ms, span.start, span.end) },
                "cudaEventElapsedTime",
            )?;
            let seconds = ms.max(0.0) as f64 / 1e3;
            let sum = if span.link { &self.busy_seconds } else { &self.stall_seconds };
            sum.set(sum.get() + seconds);
            self.timing_free.borrow_mut().extend([span.start, span.end]);
        }
        *closed = keep;
        Ok(())
    }

    /// Keep a span to time later, waiting for the oldest when too many are open.
    fn close_span(&mut self, span: Span) -> Result<()> {
        self.closed.borrow_mut().push(span);
        if self.closed.borrow().len() > MAX_OPEN_SPANS {
            self.time_spans(false)?;
            if self.closed.borrow().len() > MAX_OPEN_SPANS {
                self.time_spans(true)?;
            }
        }
        Ok(())
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

    /// Checked against what the device has in use as the driver counts it: an allocation
    /// over 1 MiB takes whole 2 MiB pages; a smaller one shares a 2 MiB chunk, which it may
    /// have to open. Measured again after the allocation; one that took more than it may is
    /// given back.
    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        let rounded = bytes.max(1).div_ceil(256) * 256;
        let pages = if rounded > SMALL_ALLOC {
            rounded.div_ceil(DRIVER_PAGE) * DRIVER_PAGE
        } else {
            rounded
        };
        let budget = self.budget_bytes.unwrap_or(u64::MAX).saturating_sub(LAUNCH_RESERVE);
        let used = self.measure_in_use()?; // (makes the device current)
        let oom = |free: u64| Error::DeviceOutOfMemory {
            what: what.into(),
            bytes_requested: rounded,
            bytes_free: free,
        };
        if used + pages > budget {
            return Err(oom(budget.saturating_sub(used)));
        }
        let mut p = ptr::null_mut();
        // SAFETY: valid out-pointer; freed in drop.
        let code = unsafe { ffi::rotary_malloc(&mut p, rounded) };
        if code != 0 {
            // SAFETY: no arguments; the failed cudaMalloc's error must not fail the next launch.
            unsafe { ffi::rotary_get_last_error() };
            let (free, _) = self.gpu.mem_info()?;
            return Err(oom(free));
        }
        let after = self.measure_in_use()?;
        if after > budget {
            // SAFETY: allocated just above, freed once.
            unsafe { ffi::rotary_free(p) };
            self.measure_in_use()?;
            return Err(oom(budget.saturating_sub(used)));
        }
        self.allocs.push(p);
        // SAFETY: p holds `rounded` bytes.
        check(
            unsafe { ffi::rotary_memset_async(p, 0, rounded, self.gpu.stream()) },
            "cudaMemsetAsync",
        )?;
        Ok(p as Addr)
    }

    fn free(&mut self, addr: Addr) {
        let p = addr as *mut c_void;
        let at =
            self.allocs.iter().position(|&a| a == p).expect("free of an address never allocated");
        self.allocs.swap_remove(at);
        // SAFETY: allocated by alloc(), freed once (removed from allocs above); cudaFree waits
        // for the device to finish with it.
        unsafe { ffi::rotary_free(p) };
    }

    fn peak_bytes(&self) -> u64 {
        // Lazily loaded kernel code arrives with first launches: measure now too.
        let _ = self.measure_in_use();
        self.peak_bytes.get()
    }

    fn largest_alloc(&mut self) -> Result<Option<u64>> {
        let Some(budget) = self.budget_bytes else { return Ok(None) };
        let used = self.measure_in_use()?;
        let room = budget.saturating_sub(LAUNCH_RESERVE).saturating_sub(used);
        Ok(Some(room / DRIVER_PAGE * DRIVER_PAGE))
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
        self.host.push((p, bytes.max(1)));
        Ok(p.cast())
    }

    unsafe fn h2d(
        &mut self,
        stream: Stream,
        dst: Addr,
        src: *const u8,
        bytes: usize,
    ) -> Result<()> {
        self.gpu.make_current()?;
        let s = self.stream(stream);
        if stream == Stream::Compute {
            // Compute-stream uploads return with the source staged only when it is pageable:
            // one from our pinned memory would be read later, while the caller reuses it.
            let (at, end) = (src as u64, src as u64 + bytes as u64);
            assert!(
                !self.host.iter().any(|&(p, n)| at < p as u64 + n && end > p as u64),
                "upload on the compute stream from pinned memory the device owns"
            );
        } else {
            self.stats.h2d_bytes += bytes as u64;
            let b = if stream == Stream::Copy { 0 } else { 1 };
            if self.open_batch[b].is_none() {
                // A batch starts: a timing event before its first copy on the stream.
                let e = self.timing_event()?;
                // SAFETY: live event and stream.
                check(unsafe { ffi::rotary_event_record(e, s) }, "cudaEventRecord")?;
                self.open_batch[b] = Some(e);
            }
        }
        // SAFETY: the caller's contract (see the trait) keeps src valid until the copy is done.
        let code = unsafe {
            ffi::rotary_memcpy_async(
                dst as *mut c_void,
                src.cast(),
                bytes as u64,
                ffi::RotaryCopyKind::ROTARY_COPY_H2D,
                s,
            )
        };
        check(code, "cudaMemcpyAsync(H2D)")?;
        // No sync for compute-stream uploads: from pageable memory cudaMemcpyAsync has staged
        // the bytes when it returns (CUDA's documented API sync behaviour), so the caller may
        // free the slice at once; the decode loop keeps one host sync per layer (the ids).
        Ok(())
    }

    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()> {
        self.gpu.make_current()?;
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
        self.gpu.make_current()?;
        let b = match stream {
            Stream::Copy => Some(0),
            Stream::Prefetch => Some(1),
            Stream::Compute => None,
        };
        if let Some(start) = b.and_then(|b| self.open_batch[b].take()) {
            // The batch's end comes first: whoever waits for the event returned below can
            // time the batch at once.
            let end = self.timing_event()?;
            // SAFETY: live event and stream.
            check(
                unsafe { ffi::rotary_event_record(end, self.stream(stream)) },
                "cudaEventRecord",
            )?;
            self.close_span(Span { start, end, link: true })?;
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let mut e = ptr::null_mut();
                // SAFETY: valid out-pointer; destroyed in drop (a sync-only event).
                check(unsafe { ffi::rotary_event_create(&mut e) }, "cudaEventCreate")?;
                self.events.push(e);
                self.recorded_on.push(stream);
                self.refs.push(0);
                self.events.len() - 1
            }
        };
        let e = self.events[id];
        // SAFETY: live event and stream; nobody references a freed event, so re-recording it
        // changes no one's ordering.
        check(unsafe { ffi::rotary_event_record(e, self.stream(stream)) }, "cudaEventRecord")?;
        self.refs[id] = 1;
        self.recorded_on[id] = stream;
        Ok(Event(id as u64))
    }

    fn retain(&mut self, event: Event) {
        let r = &mut self.refs[event.0 as usize];
        assert!(*r > 0, "retain of a released event");
        *r += 1;
    }

    fn release(&mut self, event: Event) {
        let id = event.0 as usize;
        assert!(self.refs[id] > 0, "release of a released event");
        self.refs[id] -= 1;
        if self.refs[id] == 0 {
            self.free.push(id);
        }
    }

    /// A compute-stream wait on a copy is bracketed by two timing events: the time between
    /// them is the compute stream standing still for the link (stall_seconds).
    fn wait(&mut self, stream: Stream, event: Event) -> Result<()> {
        self.gpu.make_current()?;
        let on = self.stream(stream);
        let timed =
            stream == Stream::Compute && self.recorded_on[event.0 as usize] != Stream::Compute;
        let start = if timed { Some(self.timing_event()?) } else { None };
        if let Some(start) = start {
            // SAFETY: live event and stream.
            check(unsafe { ffi::rotary_event_record(start, on) }, "cudaEventRecord")?;
        }
        // SAFETY: live stream and event.
        check(
            unsafe { ffi::rotary_stream_wait_event(on, self.event(event)) },
            "cudaStreamWaitEvent",
        )?;
        if let Some(start) = start {
            let end = self.timing_event()?;
            // SAFETY: live event and stream.
            check(unsafe { ffi::rotary_event_record(end, on) }, "cudaEventRecord")?;
            self.close_span(Span { start, end, link: false })?;
        }
        Ok(())
    }

    /// The host's own waits on copy events count as stall too.
    fn sync_event(&mut self, event: Event) -> Result<()> {
        self.gpu.make_current()?;
        let started = std::time::Instant::now();
        // SAFETY: live event.
        check(unsafe { ffi::rotary_event_synchronize(self.event(event)) }, "cudaEventSynchronize")?;
        if self.recorded_on[event.0 as usize] != Stream::Compute {
            self.stall_seconds.set(self.stall_seconds.get() + started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn query(&mut self, event: Event) -> Result<bool> {
        self.gpu.make_current()?;
        // SAFETY: a live event. A not-ready answer leaves no last error (abi.h).
        match unsafe { ffi::rotary_event_query(self.event(event)) } {
            0 => Ok(true),
            code if code == ffi::ROTARY_NOT_READY as i32 => Ok(false),
            code => check(code, "cudaEventQuery").map(|_| false),
        }
    }

    fn launch(&mut self, k: &Kernel) -> Result<()> {
        launch(&self.gpu, k) // every launcher makes the device current
    }

    /// Bytes queued on the copy streams, and the time the completed batches took (from the
    /// event before a batch's first copy to the event after its last; both streams' batches
    /// are added, so overlapping demand and prefetch batches count twice: an upper bound).
    /// Batches still in flight are asked with cudaEventQuery, whose not-ready answer leaves no
    /// last error behind (a leftover one would fail the next kernel launch).
    fn link_stats(&self) -> LinkStats {
        // A failure here is a device error the next checked call reports.
        let _ = self.gpu.make_current().and_then(|()| self.time_spans(false));
        LinkStats { h2d_bytes: self.stats.h2d_bytes, busy_seconds: self.busy_seconds.get() }
    }

    fn stall_seconds(&self) -> f64 {
        let _ = self.gpu.make_current().and_then(|()| self.time_spans(false));
        self.stall_seconds.get()
    }

    fn link_peak_gbps(&self) -> Option<f64> {
        self.link_peak_gbps
    }

    /// Device-to-device copy of 512 MiB timed with events, best of 5 (read + write).
    fn peak_gbps(&mut self) -> Result<Option<PeakBandwidth>> {
        let bytes = 512u64 << 20;
        let (src, dst) = (
            self.alloc(bytes, "copy bandwidth source")?,
            self.alloc(bytes, "copy bandwidth destination")?,
        );
        let mut best = f64::MAX;
        let result = (|| {
            for _ in 0..5 {
                let start = crate::backend::cuda::device::Event::new()?;
                let end = crate::backend::cuda::device::Event::new()?;
                start.record(&self.gpu)?;
                // SAFETY: both allocations hold `bytes` bytes.
                let code = unsafe {
                    ffi::rotary_memcpy_async(
                        dst as *mut c_void,
                        src as *const c_void,
                        bytes,
                        ffi::RotaryCopyKind::ROTARY_COPY_D2D,
                        self.gpu.stream(),
                    )
                };
                check(code, "cudaMemcpyAsync(D2D)")?;
                end.record(&self.gpu)?;
                best = best.min(end.elapsed_ms_since(&start)? as f64 / 1e3);
            }
            let gbps = 2.0 * bytes as f64 / best / 1e9;
            Ok(Some(PeakBandwidth { gbps, what: "device copy, read + write".into() }))
        })();
        self.free(src);
        self.free(dst);
        result
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // (sync makes the device current)
        let _ = self.gpu.sync();
        // SAFETY: every handle was created by this device and is released once.
        unsafe {
            for &e in self.events.iter().chain(&self.timing) {
                ffi::rotary_event_destroy(e);
            }
            for &p in &self.allocs {
                ffi::rotary_free(p);
            }
            for &(p, _) in &self.host {
                ffi::rotary_host_free_pinned(p);
            }
            ffi::rotary_stream_destroy(self.copy);
            ffi::rotary_stream_destroy(self.prefetch);
        }
    }
}
