//! `--backend sim`: a simulated GPU. Kernels run on the CPU (the fast CPU backend's matrix
//! products; the same scalar steps as the CPU forward pass); device memory is an arena capped
//! at the budget, and every kernel's operands are checked against its allocations, like a
//! memory sanitizer; the copy engine is a thread of its own that moves bytes at
//! `link_gbps`, demand loads ahead of prefetches; events order it against the compute stream.
//!
//! The compute stream runs on the calling thread: a kernel has finished when `launch` returns,
//! and waiting for a copy event blocks the caller (that wait is the stall a real GPU would see).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use half::f16;

use super::device::{Addr, Device, Event, Kernel, KvCache, LinkStats, Stream};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Mat};
use crate::error::{Error, Result};
use crate::model::deltanet;
use crate::model::qwen3moe::{expert_forward, rmsnorm_rows, rope_tokens, split_gate, topk_moe};
use crate::quant;

/// Prefetch copies move in chunks of this many bytes, so a demand load waits at most one.
const PREFETCH_CHUNK: usize = 256 << 10;

struct Job {
    stream: Stream,
    kind: JobKind,
}

enum JobKind {
    Copy { dst: usize, src: usize, bytes: usize },
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

/// One allocation: its bytes live in `mem` (u64 words: 8-byte aligned for any element type).
struct Alloc {
    /// Owns the bytes kernels reach through their addresses.
    _mem: Box<[u64]>,
    bytes: usize,
    what: String,
}

pub struct SimDevice {
    budget_bytes: Option<u64>,
    allocs: BTreeMap<usize, Alloc>,
    host: Vec<Box<[u64]>>,
    used_bytes: u64,
    peak_bytes: u64,
    link: Arc<Link>,
    worker: Option<JoinHandle<()>>,
    next_event: u64,
    /// References held on each live event (see Device::record).
    refs: std::collections::HashMap<u64, u32>,
    stall: Duration,
    cpu: CpuBackend,
}

impl SimDevice {
    /// A simulated device with at most `budget_bytes` of memory (None: unlimited), a host link
    /// of `link_gbps` GB/s and `threads` CPU threads for its kernels.
    pub fn new(budget_bytes: Option<u64>, link_gbps: f64, threads: Option<usize>) -> Result<SimDevice> {
        if !(link_gbps > 0.0 && link_gbps.is_finite()) {
            return Err(Error::Usage(format!("--sim-link-gbps {link_gbps}: want a positive number")));
        }
        let link = Arc::new(Link { state: Mutex::new(LinkState::default()), wake: Condvar::new(), gbps: link_gbps });
        let worker_link = Arc::clone(&link);
        let worker = std::thread::Builder::new()
            .name("sim-link".into())
            .spawn(move || link_worker(&worker_link))
            .map_err(|e| Error::Usage(format!("cannot start the sim link thread: {e}")))?;
        Ok(SimDevice {
            budget_bytes,
            allocs: BTreeMap::new(),
            host: Vec::new(),
            used_bytes: 0,
            peak_bytes: 0,
            link,
            worker: Some(worker),
            next_event: 1,
            refs: std::collections::HashMap::new(),
            stall: Duration::ZERO,
            cpu: CpuBackend::new(threads)?,
        })
    }

    /// The allocation holding `addr..addr + bytes`, or an error naming the access.
    fn check(&self, addr: Addr, bytes: usize, what: &str) -> Result<(usize, &Alloc)> {
        let a = addr as usize;
        let fail = || Error::Usage(format!("sim: {what} reads/writes {bytes} bytes at {a:#x} outside any allocation"));
        let (&start, alloc) = self.allocs.range(..=a).next_back().ok_or_else(fail)?;
        if a + bytes > start + alloc.bytes {
            return Err(Error::Usage(format!(
                "sim: {what}: {bytes} bytes at offset {} overrun '{}' ({} bytes)",
                a - start,
                alloc.what,
                alloc.bytes
            )));
        }
        Ok((a, alloc))
    }

    fn bytes(&self, addr: Addr, bytes: usize, what: &str) -> Result<&[u8]> {
        let (a, _) = self.check(addr, bytes, what)?;
        // SAFETY: check() proved a..a+bytes lies inside a live allocation owned by self.
        Ok(unsafe { std::slice::from_raw_parts(a as *const u8, bytes) })
    }

    fn f32s(&self, addr: Addr, n: usize, what: &str) -> Result<Vec<f32>> {
        let b = self.bytes(addr, n * 4, what)?;
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn i32s(&self, addr: Addr, n: usize, what: &str) -> Result<Vec<i32>> {
        let b = self.bytes(addr, n * 4, what)?;
        Ok(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn write<T: Copy>(&mut self, addr: Addr, data: &[T], what: &str) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        let (a, _) = self.check(addr, bytes, what)?;
        // SAFETY: the destination range is inside an allocation (checked); the source is a
        // live slice; they cannot overlap (data is host memory of the caller).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), a as *mut u8, bytes) };
        Ok(())
    }

    fn mat(&self, ty: quant::GgmlType, addr: Addr, rows: usize, cols: usize, what: &str) -> Result<Mat<'_>> {
        let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
        Mat::new(ty, rows, cols, self.bytes(addr, rows * row_bytes, what)?, what)
    }

    fn matmul(&self, m: &Mat, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut y = vec![0f32; n * m.rows];
        self.cpu.matmul(m, x, n, &mut y)?;
        Ok(y)
    }

    fn kernel(&mut self, k: &Kernel) -> Result<()> {
        match *k {
            Kernel::Gemv { ty, w, x, y, rows, cols, n } => {
                let xs = self.f32s(x, n * cols, "gemv x")?;
                let out = self.matmul(&self.mat(ty, w, rows, cols, "gemv weights")?, &xs, n)?;
                self.write(y, &out, "gemv y")
            }
            Kernel::TopkMoe { logits, ids, weights, n, n_experts, k, renorm } => {
                let l = self.f32s(logits, n * n_experts, "topk logits")?;
                let (id_out, w_out) = topk_moe(&l, n_experts, k, renorm);
                self.write(ids, &id_out, "topk ids")?;
                self.write(weights, &w_out, "topk weights")
            }
            Kernel::Moe { .. } => self.moe(k),
            Kernel::RmsNorm { x, w, y, rows, width, eps } => {
                let mut xs = self.f32s(x, rows * width, "rmsnorm x")?;
                let ws = self.f32s(w, width, "rmsnorm w")?;
                rmsnorm_rows(&mut xs, &ws, eps);
                self.write(y, &xs, "rmsnorm y")
            }
            Kernel::Rope { x, inv_freq, n, n_heads, head_dim, rope_dims, pos0 } => {
                let mut xs = self.f32s(x, n * n_heads * head_dim, "rope x")?;
                let f = self.f32s(inv_freq, rope_dims / 2, "rope inv_freq")?;
                rope_tokens(&mut xs, &f, n, n_heads, head_dim, pos0);
                self.write(x, &xs, "rope x")
            }
            Kernel::KvStore { cache, k: kk, v, n, pos0 } => {
                let ks = self.f32s(kk, n * cache.kv_width, "kv_store k")?;
                let vs = self.f32s(v, n * cache.kv_width, "kv_store v")?;
                for t in 0..n {
                    let at = self.kv_row(&cache, pos0 + t)?;
                    let row = |s: &[f32]| -> Vec<u16> {
                        s[t * cache.kv_width..(t + 1) * cache.kv_width].iter().map(|&x| f16::from_f32(x).to_bits()).collect()
                    };
                    let (kr, vr) = (row(&ks), row(&vs));
                    self.write(cache.k + at as u64 * 2, &kr, "k cache")?;
                    self.write(cache.v + at as u64 * 2, &vr, "v cache")?;
                }
                Ok(())
            }
            Kernel::Attention { cache, q, o, n, n_heads, n_kv_heads, head_dim, pos0, scale } => {
                let out = self.attention(&cache, q, n, n_heads, n_kv_heads, head_dim, pos0, scale)?;
                self.write(o, &out, "attention o")
            }
            Kernel::Add { y, x, n } => {
                let mut ys = self.f32s(y, n, "add y")?;
                let xs = self.f32s(x, n, "add x")?;
                ys.iter_mut().zip(&xs).for_each(|(y, x)| *y += x);
                self.write(y, &ys, "add y")
            }
            Kernel::SplitGate { qg, q, gate, n, n_heads, head_dim } => {
                let w = n * n_heads * head_dim;
                let both = self.f32s(qg, 2 * w, "split_gate qg")?;
                let (mut qs, mut gs) = (vec![0f32; w], vec![0f32; w]);
                split_gate(&both, head_dim, &mut qs, &mut gs);
                self.write(q, &qs, "split_gate q")?;
                self.write(gate, &gs, "split_gate gate")
            }
            Kernel::SigmoidMul { y, g, n } => {
                let mut ys = self.f32s(y, n, "sigmoid_mul y")?;
                let gs = self.f32s(g, n, "sigmoid_mul g")?;
                ys.iter_mut().zip(&gs).for_each(|(y, &g)| *y *= deltanet::sigmoid(g));
                self.write(y, &ys, "sigmoid_mul y")
            }
            Kernel::Sigmoid { x, n } => {
                let mut xs = self.f32s(x, n, "sigmoid x")?;
                xs.iter_mut().for_each(|x| *x = deltanet::sigmoid(*x));
                self.write(x, &xs, "sigmoid x")
            }
            Kernel::GdnConv { x, state, w, n, channels, kernel } => {
                let mut xs = self.f32s(x, n * channels, "gdn_conv x")?;
                let mut st = self.f32s(state, (kernel - 1) * channels, "gdn_conv state")?;
                let ws = self.f32s(w, channels * kernel, "gdn_conv w")?;
                deltanet::conv_silu(&mut xs, &mut st, &ws, n, channels, kernel);
                self.write(x, &xs, "gdn_conv x")?;
                self.write(state, &st, "gdn_conv state")
            }
            Kernel::GdnGates { beta, alpha, dt_bias, a, n, n_v } => {
                let mut bs = self.f32s(beta, n * n_v, "gdn_gates beta")?;
                let mut al = self.f32s(alpha, n * n_v, "gdn_gates alpha")?;
                let dt = self.f32s(dt_bias, n_v, "gdn_gates dt_bias")?;
                let av = self.f32s(a, n_v, "gdn_gates a")?;
                deltanet::gates(&mut bs, &mut al, &dt, &av);
                self.write(beta, &bs, "gdn_gates beta")?;
                self.write(alpha, &al, "gdn_gates alpha")
            }
            Kernel::GdnRule { qkv, beta, decay, state, o, n, n_k, n_v, head_k, head_v, tiled } => {
                let sh = deltanet::Shape { n_k_heads: n_k, n_v_heads: n_v, head_k, head_v, conv_kernel: 1, tiled };
                let xs = self.f32s(qkv, n * sh.channels(), "gdn_rule qkv")?;
                let bs = self.f32s(beta, n * n_v, "gdn_rule beta")?;
                let ds = self.f32s(decay, n * n_v, "gdn_rule decay")?;
                let mut st = self.f32s(state, sh.state_len(), "gdn_rule state")?;
                let mut out = vec![0f32; n * sh.inner()];
                deltanet::delta_rule(&xs, &bs, &ds, &mut st, &sh, n, &mut out);
                self.write(state, &st, "gdn_rule state")?;
                self.write(o, &out, "gdn_rule o")
            }
            Kernel::GatedNorm { x, z, w, rows, width, eps } => {
                let mut xs = self.f32s(x, rows * width, "gated_norm x")?;
                let zs = self.f32s(z, rows * width, "gated_norm z")?;
                let ws = self.f32s(w, width, "gated_norm w")?;
                deltanet::gated_norm(&mut xs, &zs, &ws, eps);
                self.write(x, &xs, "gated_norm x")
            }
        }
    }

    /// Element index of position `pos` in a cache tensor.
    fn kv_row(&self, c: &KvCache, pos: usize) -> Result<usize> {
        let page = self.i32s(c.page_table + (pos / c.page_size * 4) as u64, 1, "page table")?[0];
        Ok((page as usize * c.page_size + pos % c.page_size) * c.kv_width)
    }

    /// Causal GQA attention over the f16 cache, as the CPU engine computes it.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        c: &KvCache,
        q: Addr,
        n: usize,
        n_heads: usize,
        n_kv_heads: usize,
        hd: usize,
        pos0: usize,
        scale: f32,
    ) -> Result<Vec<f32>> {
        let qs = self.f32s(q, n * n_heads * hd, "attention q")?;
        let n_pos = pos0 + n;
        // Gather the cached rows: [n_pos, kv_width] each, already f16 values.
        let (mut ks, mut vs) = (Vec::with_capacity(n_pos * c.kv_width), Vec::with_capacity(n_pos * c.kv_width));
        for p in 0..n_pos {
            let at = self.kv_row(c, p)? as u64 * 2;
            let load = |base: Addr| -> Result<Vec<f32>> {
                let b = self.bytes(base + at, c.kv_width * 2, "kv cache")?;
                Ok(b.chunks_exact(2).map(|h| f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32()).collect())
            };
            ks.extend(load(c.k)?);
            vs.extend(load(c.v)?);
        }
        Ok(crate::selftest::attention_reference(&qs, &ks, &vs, n, n_heads, n_kv_heads, hd, pos0, scale))
    }

    fn moe(&mut self, k: &Kernel) -> Result<()> {
        let Kernel::Moe {
            ty_gate_up, ty_down, gate, up, down, ids, weights, x, act: _, out, offsets: _, pairs: _,
            residual, dim, ffn, n, k, n_experts,
        } = *k
        else {
            unreachable!("moe() takes a Moe kernel")
        };
        let id = self.i32s(ids, n * k, "moe ids")?;
        let w = self.f32s(weights, n * k, "moe weights")?;
        let xs = self.f32s(x, n * dim, "moe x")?;
        let table = |t: Addr| -> Result<Vec<u64>> {
            let b = self.bytes(t, n_experts * 8, "moe expert table")?;
            Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        };
        let (gt, ut, dt) = (table(gate)?, table(up)?, table(down)?);
        let mut outs = self.f32s(out, n * k * dim, "moe out")?;
        for pair in 0..n * k {
            let e = id[pair];
            if e < 0 {
                continue; // computed on the host; its out row is already there
            }
            let e = e as usize;
            if e >= n_experts {
                return Err(Error::Usage(format!("sim: moe: expert id {e} of {n_experts}")));
            }
            let xt = &xs[pair / k * dim..(pair / k + 1) * dim];
            let y = expert_forward(
                &self.cpu,
                &self.mat(ty_gate_up, gt[e], ffn, dim, "expert gate")?,
                &self.mat(ty_gate_up, ut[e], ffn, dim, "expert up")?,
                &self.mat(ty_down, dt[e], dim, ffn, "expert down")?,
                xt,
            )?;
            outs[pair * dim..(pair + 1) * dim].copy_from_slice(&y);
        }
        self.write(out, &outs, "moe out")?;
        let mut res = self.f32s(residual, n * dim, "moe residual")?;
        for t in 0..n {
            let mut acc = vec![0f32; dim];
            for j in 0..k {
                let pair = t * k + j;
                let o = &outs[pair * dim..(pair + 1) * dim];
                acc.iter_mut().zip(o).for_each(|(a, &o)| *a += w[pair] * o);
            }
            res[t * dim..(t + 1) * dim].iter_mut().zip(&acc).for_each(|(r, a)| *r += a);
        }
        self.write(residual, &res, "moe residual")
    }

    /// The threads the kernels use (the CPU fallback uses the same backend).
    pub fn cpu(&self) -> &CpuBackend {
        &self.cpu
    }
}

fn link_worker(link: &Link) {
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
            JobKind::Copy { dst, src, bytes } => {
                let start = Instant::now();
                // SAFETY: h2d's contract: src stays valid until this copy's event completes and
                // dst is an allocation of the device with room for `bytes`; the device outlives
                // the worker (joined in drop).
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
                let target = Duration::from_secs_f64(bytes as f64 / (link.gbps * 1e9));
                if let Some(rest) = target.checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
                let mut st = link.state.lock().expect("link lock");
                st.stats.h2d_bytes += bytes as u64;
                st.stats.busy_seconds += start.elapsed().as_secs_f64();
                let _ = job.stream;
            }
        }
    }
}

impl Device for SimDevice {
    fn describe(&self) -> String {
        let budget = self.budget_bytes.map_or("unlimited".into(), crate::inspect::human_bytes);
        format!("sim (CPU kernels, {} threads; memory {budget}; link {} GB/s)", self.cpu.threads(), self.link.gbps)
    }

    fn alloc(&mut self, bytes: u64, what: &str) -> Result<Addr> {
        let rounded = bytes.max(1).div_ceil(256) * 256;
        if let Some(budget) = self.budget_bytes {
            if self.used_bytes + rounded > budget {
                return Err(Error::DeviceOutOfMemory {
                    what: what.to_string(),
                    bytes_requested: rounded,
                    bytes_free: budget - self.used_bytes,
                });
            }
        }
        let mem = vec![0u64; (rounded / 8) as usize].into_boxed_slice();
        let addr = mem.as_ptr() as usize;
        self.allocs.insert(addr, Alloc { _mem: mem, bytes: rounded as usize, what: what.to_string() });
        self.used_bytes += rounded;
        self.peak_bytes = self.peak_bytes.max(self.used_bytes);
        Ok(addr as Addr)
    }

    fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    fn budget_bytes(&self) -> Option<u64> {
        self.budget_bytes
    }

    fn alloc_host(&mut self, bytes: u64, _what: &str) -> Result<*mut u8> {
        let mut mem = vec![0u64; bytes.div_ceil(8) as usize].into_boxed_slice();
        let p = mem.as_mut_ptr().cast::<u8>();
        self.host.push(mem);
        Ok(p)
    }

    unsafe fn h2d(&mut self, stream: Stream, dst: Addr, src: *const u8, bytes: usize) -> Result<()> {
        self.check(dst, bytes, "h2d destination")?;
        if stream == Stream::Compute {
            // SAFETY: dst range checked; src valid for bytes by the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, bytes) };
            return Ok(());
        }
        let mut st = self.link.state.lock().expect("link lock");
        let (mut off, chunk) = (0, if stream == Stream::Prefetch { PREFETCH_CHUNK } else { bytes.max(1) });
        while off < bytes {
            let b = chunk.min(bytes - off);
            let job = Job { stream, kind: JobKind::Copy { dst: dst as usize + off, src: src as usize + off, bytes: b } };
            if stream == Stream::Prefetch { st.prefetch.push_back(job) } else { st.demand.push_back(job) }
            off += b;
        }
        drop(st);
        self.link.wake.notify_all();
        Ok(())
    }

    fn d2h(&mut self, src: Addr, dst: &mut [u8]) -> Result<()> {
        let b = self.bytes(src, dst.len(), "d2h source")?;
        dst.copy_from_slice(b);
        Ok(())
    }

    fn record(&mut self, stream: Stream) -> Result<Event> {
        let ev = self.next_event;
        self.next_event += 1;
        self.refs.insert(ev, 1);
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
        // Compute work is issued by this thread, so it waits here; a copy stream waiting on an
        // event is ordered by holding back its next copies until the event completes (the
        // host blocks briefly: stronger ordering than needed, never weaker).
        let _ = stream;
        self.sync_event(event)
    }

    fn retain(&mut self, event: Event) {
        let r = self.refs.get_mut(&event.0).expect("retain of a released event");
        *r += 1;
    }

    fn release(&mut self, event: Event) {
        let r = self.refs.get_mut(&event.0).expect("release of a released event");
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

    fn launch(&mut self, k: &Kernel) -> Result<()> {
        self.kernel(k)
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
