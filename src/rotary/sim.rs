//! `--backend sim`: a simulated GPU. Kernels are the host kernels (src/ops/host.rs, as `cpu`
//! runs them); device memory is an arena capped at the budget, and every kernel's operands are
//! checked against its allocations, like a memory sanitizer; the copy engine is a thread of its
//! own that moves bytes at `link_gbps`, demand loads ahead of prefetches; events order it against
//! the compute stream.
//!
//! The compute stream runs on the calling thread: a kernel has finished when `launch` returns,
//! and waiting for a copy event blocks the caller (that wait is the stall a real GPU would see).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::{Addr, Device, Event, Kernel, LinkStats, Stream};
use crate::backend::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::ops::host::{HostKernels, HostMemory};

/// Prefetch copies move in chunks of this many bytes, so a demand load waits at most one.
const PREFETCH_CHUNK: usize = 256 << 10;

struct Job {
    stream: Stream,
    kind: JobKind,
}

enum JobKind {
    /// `queued`: when h2d queued it (the link may start it no earlier).
    Copy {
        dst: usize,
        src: usize,
        bytes: usize,
        queued: Instant,
    },
    Signal(u64),
}

#[derive(Default)]
struct LinkState {
    demand: VecDeque<Job>,
    prefetch: VecDeque<Job>,
    done: HashSet<u64>,
    stats: LinkStats,
    shutdown: bool,
}

struct Link {
    state: Mutex<LinkState>,
    wake: Condvar,
    gbps: f64,
}

pub struct SimDevice {
    budget_bytes: Option<u64>,
    mem: HostMemory,
    kernels: HostKernels,
    peak_bytes: u64,
    link: Arc<Link>,
    worker: Option<JoinHandle<()>>,
    next_event: u64,
    /// References held on each live event (see Device::record), and the stream it was
    /// recorded on.
    refs: std::collections::HashMap<u64, (u32, Stream)>,
    stall: Duration,
}

impl SimDevice {
    /// A simulated device with at most `budget_bytes` of memory (None: unlimited), a host link
    /// of `link_gbps` GB/s and `threads` CPU threads for its kernels.
    pub fn new(
        budget_bytes: Option<u64>,
        link_gbps: f64,
        threads: Option<usize>,
    ) -> Result<SimDevice> {
        if !(link_gbps > 0.0 && link_gbps.is_finite()) {
            return Err(Error::Usage(format!(
                "simulated link speed {link_gbps} GB/s: want a positive number"
            )));
        }
        let link = Arc::new(Link {
            state: Mutex::new(LinkState::default()),
            wake: Condvar::new(),
            gbps: link_gbps,
        });
        let worker_link = Arc::clone(&link);
        let worker = std::thread::Builder::new()
            .name("sim-link".into())
            .spawn(move || link_worker(&worker_link))
            .map_err(|e| Error::Usage(format!("cannot start the sim link thread: {e}")))?;
        Ok(SimDevice {
            budget_bytes,
            mem: HostMemory::default(),
            kernels: HostKernels::new(Box::new(CpuBackend::new(threads)?)),
            peak_bytes: 0,
            link,
            worker: Some(worker),
            next_event: 1,
            refs: std::collections::HashMap::new(),
            stall: Duration::ZERO,
        })
    }

    /// The threads the kernels use.
    pub fn threads(&self) -> usize {
        self.kernels.backend.threads()
    }
}

fn link_worker(link: &Link) {
    let mut last_end: Option<Instant> = None;
    loop {
        let job = {
            let mut st = link.state.lock().expect("link lock");
            loop {
                if let Some(j) = st.demand.pop_front() {
                    break j;
                }
                if let Some(j) = st.prefetch.pop_front() {
                    break j;
                }
                if st.shutdown {
                    return;
                }
                st = link.wake.wait(st).expect("link lock");
            }
        };
        match job.kind {
            JobKind::Signal(ev) => {
                link.state.lock().expect("link lock").done.insert(ev);
                link.wake.notify_all();
            }
            JobKind::Copy { dst, src, bytes, queued } => {
                // On the link from when it was queued or the previous copy's nominal end,
                // whichever is later: a sleep that overslept (tens of µs on a loaded VM, more
                // than a 256 KiB chunk takes at 12 GB/s) delays one copy, not the link's rate.
                let start = last_end.map_or(queued, |end| end.max(queued));
                // SAFETY: h2d's contract: src stays valid until this copy's event completes and
                // dst is an allocation of the device with room for `bytes`; the device outlives
                // the worker (joined in drop).
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
                let copied = Instant::now();
                // The nominal end at the link's speed (or the memcpy's, if slower).
                let end =
                    (start + Duration::from_secs_f64(bytes as f64 / (link.gbps * 1e9))).max(copied);
                if let Some(rest) = end.checked_duration_since(copied) {
                    std::thread::sleep(rest);
                }
                last_end = Some(end);
                let mut st = link.state.lock().expect("link lock");
                st.stats.h2d_bytes += bytes as u64;
                st.stats.busy_seconds += (end - start).as_secs_f64();
                let _ = job.stream;
            }
        }
    }
}

impl Device for SimDevice {
    fn describe(&self) -> String {
        let budget = self.budget_bytes.map_or("unlimited".into(), crate::units::human_bytes);
        format!(
            "sim (CPU kernels, {} threads; memory {budget}; link {} GB/s)",
            self.threads(),
            self.link.gbps
        )
    }

    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        let rounded = bytes.max(1).div_ceil(256) * 256;
        let used = self.mem.owned_bytes();
        if let Some(budget) = self.budget_bytes {
            if used + rounded > budget {
                return Err(Error::DeviceOutOfMemory {
                    what: what.to_string(),
                    bytes_requested: rounded,
                    bytes_free: budget - used,
                });
            }
        }
        let addr = self.mem.alloc(rounded, what);
        self.peak_bytes = self.peak_bytes.max(self.mem.owned_bytes());
        Ok(addr)
    }

    fn free(&mut self, addr: Addr) {
        self.mem.free(addr);
    }

    fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    fn budget_bytes(&self) -> Option<u64> {
        self.budget_bytes
    }

    fn alloc_host(&mut self, bytes: u64, _what: &str) -> Result<*mut u8> {
        Ok(self.mem.alloc_host(bytes))
    }

    unsafe fn h2d(
        &mut self,
        stream: Stream,
        dst: Addr,
        src: *const u8,
        bytes: usize,
    ) -> Result<()> {
        self.mem.check(dst, bytes, "h2d destination")?;
        if stream == Stream::Compute {
            // SAFETY: dst range checked; src valid for bytes by the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, bytes) };
            return Ok(());
        }
        let now = Instant::now();
        let mut st = self.link.state.lock().expect("link lock");
        let (mut off, chunk) =
            (0, if stream == Stream::Prefetch { PREFETCH_CHUNK } else { bytes.max(1) });
        while off < bytes {
            let b = chunk.min(bytes - off);
            let job = Job {
                stream,
                kind: JobKind::Copy {
                    dst: dst as usize + off,
                    src: src as usize + off,
                    bytes: b,
                    queued: now,
                },
            };
            if stream == Stream::Prefetch {
                st.prefetch.push_back(job)
            } else {
                st.demand.push_back(job)
            }
            off += b;
        }
        drop(st);
        self.link.wake.notify_all();
        Ok(())
    }

    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()> {
        dst.copy_from_slice(self.mem.view::<u8>(src, dst.len(), "d2h source")?);
        Ok(())
    }

    fn record(&mut self, stream: Stream) -> Result<Event> {
        let ev = self.next_event;
        self.next_event += 1;
        self.refs.insert(ev, (1, stream));
        let mut st = self.link.state.lock().expect("link lock");
        match stream {
            // The compute stream is synchronous: everything before is done.
            Stream::Compute => {
                st.done.insert(ev);
            }
            Stream::Copy => st.demand.push_back(Job { stream, kind: JobKind::Signal(ev) }),
            Stream::Prefetch => st.prefetch.push_back(Job { stream, kind: JobKind::Signal(ev) }),
        }
        drop(st);
        self.link.wake.notify_all();
        Ok(Event(ev))
    }

    fn wait(&mut self, stream: Stream, event: Event) -> Result<()> {
        let (_, on) = *self.refs.get(&event.0).expect("wait on a released event");
        // Compute work is complete when its event is recorded, each copy queue runs in order,
        // and the link serves every demand copy queued before a prefetch copy first: a copy
        // stream is then already ordered after the event, except the demand stream after a
        // prefetch. Otherwise the host blocks until the event completes (compute work is issued
        // by this thread; a copy stream's next copies are held back: stronger than needed,
        // never weaker).
        let implied = match stream {
            Stream::Compute => false,
            Stream::Prefetch => true,
            Stream::Copy => on != Stream::Prefetch,
        };
        if implied {
            return Ok(());
        }
        self.sync_event(event)
    }

    fn retain(&mut self, event: Event) {
        let (r, _) = self.refs.get_mut(&event.0).expect("retain of a released event");
        *r += 1;
    }

    fn release(&mut self, event: Event) {
        let (r, _) = self.refs.get_mut(&event.0).expect("release of a released event");
        *r -= 1;
        if *r == 0 {
            self.refs.remove(&event.0);
            // Forgotten once done (a pending one is marked done later and stays: a few entries).
            self.link.state.lock().expect("link lock").done.remove(&event.0);
        }
    }

    fn sync_event(&mut self, event: Event) -> Result<()> {
        assert!(self.refs.contains_key(&event.0), "wait on a released event {}", event.0);
        let start = Instant::now();
        let mut st = self.link.state.lock().expect("link lock");
        while !st.done.contains(&event.0) {
            st = self.link.wake.wait(st).expect("link lock");
        }
        drop(st);
        self.stall += start.elapsed();
        Ok(())
    }

    fn query(&mut self, event: Event) -> Result<bool> {
        assert!(self.refs.contains_key(&event.0), "query of a released event {}", event.0);
        Ok(self.link.state.lock().expect("link lock").done.contains(&event.0))
    }

    fn launch(&mut self, k: &Kernel) -> Result<()> {
        self.kernels.launch(&mut self.mem, k).map_err(|e| match e {
            Error::Usage(m) => Error::Usage(format!("sim: {m}")),
            other => other,
        })
    }

    fn link_stats(&self) -> LinkStats {
        self.link.state.lock().expect("link lock").stats
    }

    fn link_peak_gbps(&self) -> Option<f64> {
        Some(self.link.gbps)
    }

    fn stall_seconds(&self) -> f64 {
        self.stall.as_secs_f64()
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.link.state.lock().expect("link lock").shutdown = true;
        self.link.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
