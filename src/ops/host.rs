//! The op vocabulary on host memory: the kernels of the `cpu` and `cpu-ref` devices and of the
//! simulator. Matrix products go to a `Backend` (the fast CPU kernels, or the scalar oracle);
//! the O(dim) steps are the oracle's code; attention is the oracle's arithmetic with each kv
//! head's cache widened once and the heads split over threads; the MoE kernel runs each expert
//! once over the tokens routed to it (a batch in prefill).
//!
//! Memory is a map of regions: allocations it owns and regions it maps (weights in the file
//! mapping, never copied). Every operand of every kernel is checked against them, like a
//! memory sanitizer: an address outside any region, or a range that overruns one, is an error
//! naming both. Inputs are copied out and outputs written back, so in-place kernels never hold
//! a shared and a mutable view of one buffer at once.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::oracle::{rmsnorm_rows, rope_tokens, silu, softmax, split_gate, topk_moe};
use super::{deltanet, Addr, Kernel, KvCache, KvType, MoeStage};
use crate::backend::{Backend, Mat, MatJob};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Plain numbers memory can be viewed as: every bit pattern is a value, no padding.
pub trait Plain: Copy + Default {}
impl Plain for f32 {}
impl Plain for i32 {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for u8 {}

// Device memory holds little-endian values; so does the host this runs on.
const _: () = assert!(cfg!(target_endian = "little"));

/// One region: owned (zeroed u64 words, so 8-byte aligned for any element type) or mapped.
struct Region {
    owned: Option<Box<[u64]>>,
    bytes: usize,
    what: String,
}

/// Host memory handed out as device addresses.
#[derive(Default)]
pub struct HostMemory {
    regions: BTreeMap<usize, Region>,
    owned_bytes: u64,
    /// Host memory handed out as the device's pinned memory (alloc_host), kept alive.
    host: Vec<Box<[u64]>>,
}

impl HostMemory {
    /// `bytes` (rounded up to 256) of zeroed memory.
    pub fn alloc(&mut self, bytes: u64, what: &str) -> Addr {
        let rounded = bytes.max(1).div_ceil(256) * 256;
        let mem = vec![0u64; (rounded / 8) as usize].into_boxed_slice();
        let addr = mem.as_ptr() as usize;
        self.regions.insert(
            addr,
            Region { owned: Some(mem), bytes: rounded as usize, what: what.to_string() },
        );
        self.owned_bytes += rounded;
        addr as Addr
    }

    /// Give back an allocation (a mapped region is forgotten).
    pub fn free(&mut self, addr: Addr) {
        let region =
            self.regions.remove(&(addr as usize)).expect("free of an address never handed out");
        if region.owned.is_some() {
            self.owned_bytes -= region.bytes as u64;
        }
    }

    /// `bytes` of zeroed host memory for the copy engine's sources (a host device's "pinned"
    /// memory: plain memory that lives as long as this).
    pub fn alloc_host(&mut self, bytes: u64) -> *mut u8 {
        let mut mem = vec![0u64; bytes.div_ceil(8) as usize].into_boxed_slice();
        let p = mem.as_mut_ptr().cast::<u8>();
        self.host.push(mem);
        p
    }

    /// Bytes of the allocations this memory owns.
    pub fn owned_bytes(&self) -> u64 {
        self.owned_bytes
    }

    /// Hand out `data` itself as a region: no copy.
    ///
    /// # Safety
    /// `data` must stay valid and unchanged for as long as any kernel may read the address.
    pub unsafe fn map(&mut self, data: &[u8], what: &str) -> Addr {
        let addr = data.as_ptr() as usize;
        if data.is_empty() {
            return addr as Addr;
        }
        self.regions
            .insert(addr, Region { owned: None, bytes: data.len(), what: what.to_string() });
        addr as Addr
    }

    /// `addr..addr + bytes` inside one region, or an error naming the access.
    pub fn check(&self, addr: Addr, bytes: usize, what: &str) -> Result<usize> {
        let a = addr as usize;
        let fail =
            || Error::Usage(format!("{what}: {bytes} bytes at {a:#x} outside any allocation"));
        let (&start, region) = self.regions.range(..=a).next_back().ok_or_else(fail)?;
        if a + bytes > start + region.bytes {
            let reason = if a >= start + region.bytes {
                "lie outside any allocation".to_string()
            } else {
                format!(
                    "at offset {} overrun '{}' ({} bytes)",
                    a - start,
                    region.what,
                    region.bytes
                )
            };
            return Err(Error::Usage(format!("{what}: {bytes} bytes {reason}")));
        }
        let _ = &region.owned; // (owned regions keep their memory alive)
        Ok(a)
    }

    /// `len` values at `addr`, viewed in place.
    pub fn view<T: Plain>(&self, addr: Addr, len: usize, what: &str) -> Result<&[T]> {
        let a = self.check(addr, len * std::mem::size_of::<T>(), what)?;
        assert_eq!(a % std::mem::align_of::<T>(), 0, "{what}: {a:#x} is not aligned");
        // SAFETY: check() proved the range lies inside a live region this memory owns or maps
        // (mapped ones outlive it by map's contract); aligned (asserted); T is Plain.
        Ok(unsafe { std::slice::from_raw_parts(a as *const T, len) })
    }

    /// `len` values at `addr`, copied out.
    pub fn read<T: Plain>(&self, addr: Addr, len: usize, what: &str) -> Result<Vec<T>> {
        Ok(self.view(addr, len, what)?.to_vec())
    }

    pub fn write<T: Plain>(&mut self, addr: Addr, data: &[T], what: &str) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        let a = self.check(addr, bytes, what)?;
        // SAFETY: the destination lies inside a region (checked) and no view of it is alive
        // (views borrow self); the source is the caller's slice, which cannot overlap memory
        // handed out as device addresses while a kernel holds it by value.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().cast::<u8>(), a as *mut u8, bytes) };
        Ok(())
    }

    /// Copy `bytes` from host `src` into `dst`.
    ///
    /// # Safety
    /// `src..src + bytes` must be valid for reads.
    pub unsafe fn write_raw(
        &mut self,
        dst: Addr,
        src: *const u8,
        bytes: usize,
        what: &str,
    ) -> Result<()> {
        let a = self.check(dst, bytes, what)?;
        // SAFETY: destination checked; the source by the caller's contract (ptr::copy allows
        // overlap, in case a caller copies within device memory).
        unsafe { std::ptr::copy(src, a as *mut u8, bytes) };
        Ok(())
    }

    fn mat(
        &self,
        ty: GgmlType,
        addr: Addr,
        rows: usize,
        cols: usize,
        what: &str,
    ) -> Result<Mat<'_>> {
        let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
        Mat::new(ty, rows, cols, self.view(addr, rows * row_bytes, what)?, what)
    }
}

/// Kernels on host memory, with the workspaces they keep between launches.
pub struct HostKernels {
    pub backend: Box<dyn Backend>,
    /// Attention workspaces, one per task (long contexts would otherwise fault in fresh
    /// pages for every layer of every token); a task locks its own, uncontended.
    attn_scratch: Vec<Mutex<Vec<f32>>>,
}

/// Attention work (positions × tokens × q dims) from which the kv heads are split over threads.
const ATTN_PARALLEL_WORK: usize = 1 << 20;

impl HostKernels {
    pub fn new(backend: Box<dyn Backend>) -> HostKernels {
        HostKernels { backend, attn_scratch: Vec::new() }
    }

    /// Run `k` to completion.
    pub fn launch(&mut self, mem: &mut HostMemory, k: &Kernel) -> Result<()> {
        match k {
            Kernel::Gemv { .. }
            | Kernel::TopkMoe { .. }
            | Kernel::Moe { .. }
            | Kernel::Embed { .. } => self.products(mem, k),
            Kernel::GdnConv { .. }
            | Kernel::GdnGates { .. }
            | Kernel::GdnRule { .. }
            | Kernel::GatedNorm { .. } => deltanet_kernel(mem, k),
            _ => self.mixing(mem, k),
        }
    }

    /// Matrix products, the router and the embedding.
    fn products(&mut self, mem: &mut HostMemory, k: &Kernel) -> Result<()> {
        match *k {
            Kernel::Gemv { ty, w, x, y, rows, cols, n } => {
                let row_bytes = ty.row_bytes(cols as u64).unwrap_or(0) as usize;
                let wa = mem.check(w, rows * row_bytes, "gemv weights")?;
                let xa = mem.check(x, n * cols * 4, "gemv x")?;
                let ya = mem.check(y, n * rows * 4, "gemv y")?;
                let apart = |a: usize, al: usize, b: usize, bl: usize| a + al <= b || b + bl <= a;
                let y_bytes = n * rows * 4;
                if !apart(ya, y_bytes, xa, n * cols * 4)
                    || !apart(ya, y_bytes, wa, rows * row_bytes)
                {
                    return Err(Error::Usage("gemv: y overlaps x or the weights".into()));
                }
                assert!(xa % 4 == 0 && ya % 4 == 0, "gemv: unaligned activations");
                // SAFETY: the three ranges lie inside live regions (checked), y overlaps neither
                // of the others (checked), both f32 ranges are aligned (asserted), and `mem` is
                // borrowed mutably, so no other view of its memory exists while these do.
                let (wm, xs, ys) = unsafe {
                    (
                        std::slice::from_raw_parts(wa as *const u8, rows * row_bytes),
                        std::slice::from_raw_parts(xa as *const f32, n * cols),
                        std::slice::from_raw_parts_mut(ya as *mut f32, n * rows),
                    )
                };
                self.backend.matmul(&Mat::new(ty, rows, cols, wm, "gemv weights")?, xs, n, ys)
            }
            Kernel::TopkMoe { logits, ids, weights, n, n_experts, k, norm } => {
                let l = mem.view::<f32>(logits, n * n_experts, "topk logits")?;
                let (id_out, w_out) = topk_moe(l, n_experts, k, norm);
                mem.write(ids, &id_out, "topk ids")?;
                mem.write(weights, &w_out, "topk weights")
            }
            Kernel::Moe { .. } => self.moe(mem, k),
            Kernel::Embed { ty, table, tokens, x, n, dim } => {
                let row_bytes = ty.row_bytes(dim as u64).unwrap_or(0) as usize;
                let ids = mem.read::<i32>(tokens, n, "embed tokens")?;
                let mut out = vec![0f32; n * dim]; // [n, dim]
                for (t, &id) in ids.iter().enumerate() {
                    let at = table + (id.max(0) as usize * row_bytes) as u64;
                    let row = mem.view::<u8>(at, row_bytes, "embed table row")?;
                    crate::quant::dequantize(ty, row, &mut out[t * dim..(t + 1) * dim])?;
                }
                mem.write(x, &out, "embed x")
            }
            _ => unreachable!("a product kernel"),
        }
    }

    /// Norms, RoPE, the KV cache, attention and the elementwise steps.
    fn mixing(&mut self, mem: &mut HostMemory, k: &Kernel) -> Result<()> {
        match *k {
            Kernel::RmsNorm { x, w, y, rows, width, eps } => {
                let mut xs = mem.read::<f32>(x, rows * width, "rmsnorm x")?;
                rmsnorm_rows(&mut xs, mem.view(w, width, "rmsnorm w")?, eps);
                mem.write(y, &xs, "rmsnorm y")
            }
            Kernel::Rope { x, inv_freq, n, n_heads, head_dim, rope_dims, pos0 } => {
                let mut xs = mem.read::<f32>(x, n * n_heads * head_dim, "rope x")?;
                rope_tokens(
                    &mut xs,
                    mem.view(inv_freq, rope_dims / 2, "rope inv_freq")?,
                    n,
                    n_heads,
                    head_dim,
                    pos0,
                );
                mem.write(x, &xs, "rope x")
            }
            Kernel::KvStore { cache, k: kk, v, n, pos0 } => {
                for (src, dst, what) in [(kk, cache.k, "k cache"), (v, cache.v, "v cache")] {
                    // [n, kv_width]
                    let rows = mem.read::<f32>(src, n * cache.kv_width, "kv_store k/v")?;
                    for (t, row) in rows.chunks_exact(cache.kv_width).enumerate() {
                        let at = kv_row(mem, &cache, pos0 + t)?;
                        match cache.ty {
                            KvType::F16 => {
                                let h: Vec<u16> =
                                    row.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
                                mem.write(dst + at as u64 * 2, &h, what)?;
                            }
                            KvType::F32 => mem.write(dst + at as u64 * 4, row, what)?,
                        }
                    }
                }
                Ok(())
            }
            Kernel::Attention { cache, q, o, n, n_heads, n_kv_heads, head_dim, pos0, scale } => {
                let g = AttnGeometry { n, pos0, n_heads, n_kv_heads, hd: head_dim, scale };
                let out = self.attention(mem, &cache, q, &g)?;
                mem.write(o, &out, "attention o")
            }
            Kernel::Add { y, x, n } => {
                let mut ys = mem.read::<f32>(y, n, "add y")?;
                ys.iter_mut().zip(mem.view::<f32>(x, n, "add x")?).for_each(|(y, x)| *y += x);
                mem.write(y, &ys, "add y")
            }
            Kernel::SplitGate { qg, q, gate, n, n_heads, head_dim } => {
                let w = n * n_heads * head_dim;
                let (mut qs, mut gs) = (vec![0f32; w], vec![0f32; w]);
                split_gate(mem.view(qg, 2 * w, "split_gate qg")?, head_dim, &mut qs, &mut gs);
                mem.write(q, &qs, "split_gate q")?;
                mem.write(gate, &gs, "split_gate gate")
            }
            Kernel::SigmoidMul { y, g, n } => {
                let mut ys = mem.read::<f32>(y, n, "sigmoid_mul y")?;
                ys.iter_mut()
                    .zip(mem.view::<f32>(g, n, "sigmoid_mul g")?)
                    .for_each(|(y, &g)| *y *= deltanet::sigmoid(g));
                mem.write(y, &ys, "sigmoid_mul y")
            }
            Kernel::Sigmoid { x, n } => {
                let mut xs = mem.read::<f32>(x, n, "sigmoid x")?;
                xs.iter_mut().for_each(|x| *x = deltanet::sigmoid(*x));
                mem.write(x, &xs, "sigmoid x")
            }
            _ => unreachable!("a mixing kernel"),
        }
    }

    /// Routed experts into the residual (abi.h RotaryMoe): each expert once over its pairs,
    /// pairs with a negative id (computed on the host) taken from `out` as they are; then per
    /// token residual += Σ_j weights[t, j] · out[t·k + j]. `Experts` writes the computed rows
    /// into `out` and stops; `Combine` takes every row from `out`.
    fn moe(&mut self, mem: &mut HostMemory, kernel: &Kernel) -> Result<()> {
        let Kernel::Moe {
            stage,
            ty_gate_up,
            ty_down,
            gate,
            up,
            down,
            ids,
            weights,
            x,
            act: _,
            out,
            offsets: _,
            pairs: _,
            residual,
            dim,
            ffn,
            n,
            k,
            n_experts,
        } = *kernel
        else {
            unreachable!("moe() takes a Moe kernel")
        };
        let id = mem.read::<i32>(ids, n * k, "moe ids")?; // [n, k]
                                                          // Each expert in turn, its pairs in order, added straight into the residual: the same
                                                          // order whether it ran here or on the host (id −1−e, its rows waiting in `out`), so a
                                                          // streamed run agrees with a resident one to the bit.
        let expert_of: Vec<i32> = id.iter().map(|&e| if e < 0 { -1 - e } else { e }).collect();
        let groups = group_pairs(&expert_of, n_experts)?;
        let used: Vec<(usize, &Vec<usize>)> =
            groups.iter().enumerate().filter(|(_, p)| !p.is_empty()).collect();
        let mut on_host = Vec::with_capacity(used.len()); // per used expert
        for &(e, pairs) in &used {
            let host = id[pairs[0]] < 0;
            assert!(
                pairs.iter().all(|&p| (id[p] < 0) == host),
                "expert {e} split between host and device"
            );
            on_host.push(host || stage == MoeStage::Combine);
        }
        let mut computed = Vec::new(); // [pairs, dim] per expert computed here
        if stage != MoeStage::Combine {
            let table = |t: Addr| mem.read::<u64>(t, n_experts, "moe expert table"); // [n_experts]
            let (gt, ut, dt) = (table(gate)?, table(up)?, table(down)?);
            // The experts computed here, all in one batch: their weights, then their rows.
            let mut here = Vec::new();
            for (&(e, _), _) in used.iter().zip(&on_host).filter(|(_, &h)| !h) {
                here.push([
                    mem.mat(ty_gate_up, gt[e], ffn, dim, "expert gate")?,
                    mem.mat(ty_gate_up, ut[e], ffn, dim, "expert up")?,
                    mem.mat(ty_down, dt[e], dim, ffn, "expert down")?,
                ]);
            }
            let batch: Vec<([&Mat; 3], &[usize])> = used
                .iter()
                .zip(&on_host)
                .filter(|(_, &h)| !h)
                .zip(&here)
                .map(|((&(_, pairs), _), [g, u, d])| ([g, u, d], pairs.as_slice()))
                .collect();
            let xs = mem.view::<f32>(x, n * dim, "moe x")?; // [n, dim]
            computed = experts_rows(self.backend.as_ref(), &batch, xs, k)?;
        }
        if stage == MoeStage::Experts {
            for ((&(_, pairs), _), y) in
                used.iter().zip(&on_host).filter(|(_, &h)| !h).zip(&computed)
            {
                for (row, &pair) in y.chunks_exact(dim).zip(pairs.iter()) {
                    mem.write(out + (pair * dim * 4) as u64, row, "moe out")?;
                }
            }
            return Ok(());
        }
        let w = mem.read::<f32>(weights, n * k, "moe weights")?; // [n, k]
        let mut res = mem.read::<f32>(residual, n * dim, "moe residual")?; // [n, dim]
        let mut computed = computed.into_iter();
        for (&(_, pairs), &host) in used.iter().zip(&on_host) {
            let y = if host {
                let mut y = Vec::with_capacity(pairs.len() * dim); // [pairs, dim]
                for &pair in pairs {
                    y.extend_from_slice(mem.view::<f32>(
                        out + (pair * dim * 4) as u64,
                        dim,
                        "moe out",
                    )?);
                }
                y
            } else {
                computed.next().expect("one result per expert computed here") // [pairs, dim]
            };
            for (row, &pair) in y.chunks_exact(dim).zip(pairs) {
                let (r, wt) = (&mut res[pair / k * dim..(pair / k + 1) * dim], w[pair]);
                r.iter_mut().zip(row).for_each(|(r, &v)| *r += wt * v);
            }
        }
        mem.write(residual, &res, "moe residual")
    }

    /// Causal GQA attention over the paged cache: token t sees positions 0..=pos0 + t. Each kv
    /// head's cached keys and values are widened to f32 once and serve its group of q heads;
    /// long contexts split the kv heads over the backend's threads.
    fn attention(
        &mut self,
        mem: &HostMemory,
        c: &KvCache,
        q: Addr,
        g: &AttnGeometry,
    ) -> Result<Vec<f32>> {
        let (n, hd, n_kv_heads) = (g.n, g.hd, g.n_kv_heads);
        let q_width = g.n_heads * hd;
        let mut qs = mem.read::<f32>(q, n * q_width, "attention q")?; // [n, n_heads * head_dim]
        qs.iter_mut().for_each(|x| *x = c.ty.round(*x)); // q meets k at k's precision
        let n_all = g.pos0 + n;
        // Element offsets of every position's row: [n_all].
        let pages = mem.view::<i32>(c.page_table, n_all.div_ceil(c.page_size), "page table")?;
        let rows = (0..n_all).map(|p| page_row(pages, c, p)).collect::<Result<Vec<_>>>()?;
        let n_pages_elems = rows.iter().max().map_or(0, |&r| r + c.kv_width);
        let (kc, vc) = (
            CacheView::of(mem, c.k, c.ty, n_pages_elems)?,
            CacheView::of(mem, c.v, c.ty, n_pages_elems)?,
        );
        let work = n_all * n * q_width;
        // One task per kv head on the backend's threads when there is enough work, else one.
        let per = if work >= ATTN_PARALLEL_WORK { 1 } else { n_kv_heads };
        let n_jobs = n_kv_heads.div_ceil(per);
        if self.attn_scratch.len() < n_jobs {
            self.attn_scratch.resize_with(n_jobs, Default::default);
        }
        let (qs, rows, (kc, vc)) = (&qs, &rows, (&kc, &vc));
        let slots: Vec<Mutex<Vec<f32>>> = (0..n_jobs).map(|_| Mutex::default()).collect();
        let scratch = &self.attn_scratch;
        self.backend.for_each_task(n_jobs, &|job| {
            let heads = job * per..((job + 1) * per).min(n_kv_heads);
            let mut buf = scratch[job].lock().unwrap_or_else(PoisonError::into_inner);
            let part = attend_kv_heads(kc, vc, qs, rows, g, heads, &mut buf);
            *slots[job].lock().unwrap_or_else(PoisonError::into_inner) = part;
        });
        let parts: Vec<Vec<f32>> = slots
            .into_iter()
            .map(|s| s.into_inner().unwrap_or_else(PoisonError::into_inner))
            .collect();
        // parts[i] is [n, its heads * head_dim]; interleave into o [n, n_heads * head_dim].
        let mut o = vec![0f32; n * q_width];
        let mut head0 = 0;
        for part in &parts {
            let w = part.len() / n;
            for t in 0..n {
                o[t * q_width + head0 * hd..][..w].copy_from_slice(&part[t * w..(t + 1) * w]);
            }
            head0 += w / hd;
        }
        Ok(o)
    }
}

/// Gated DeltaNet's kernels (they need no backend: O(state) per token).
fn deltanet_kernel(mem: &mut HostMemory, k: &Kernel) -> Result<()> {
    match *k {
        Kernel::GdnConv { x, state, w, n, channels, kernel } => {
            let mut xs = mem.read::<f32>(x, n * channels, "gdn_conv x")?;
            let mut st = mem.read::<f32>(state, (kernel - 1) * channels, "gdn_conv state")?;
            deltanet::conv_silu(
                &mut xs,
                &mut st,
                mem.view(w, channels * kernel, "gdn_conv w")?,
                n,
                channels,
                kernel,
            );
            mem.write(x, &xs, "gdn_conv x")?;
            mem.write(state, &st, "gdn_conv state")
        }
        Kernel::GdnGates { beta, alpha, dt_bias, a, n, n_v } => {
            let mut bs = mem.read::<f32>(beta, n * n_v, "gdn_gates beta")?;
            let mut al = mem.read::<f32>(alpha, n * n_v, "gdn_gates alpha")?;
            deltanet::gates(
                &mut bs,
                &mut al,
                mem.view(dt_bias, n_v, "gdn_gates dt_bias")?,
                mem.view(a, n_v, "gdn_gates a")?,
            );
            mem.write(beta, &bs, "gdn_gates beta")?;
            mem.write(alpha, &al, "gdn_gates alpha")
        }
        Kernel::GdnRule { qkv, beta, decay, state, o, n, n_k, n_v, head_k, head_v, order } => {
            let sh = deltanet::Shape::of_rule(n_k, n_v, head_k, head_v, order);
            let mut st = mem.read::<f32>(state, sh.state_len(), "gdn_rule state")?;
            let mut out = vec![0f32; n * sh.inner()]; // [n, n_v·dv]
            let xs = mem.view(qkv, n * sh.channels(), "gdn_rule qkv")?;
            let (bs, ds) = (
                mem.view(beta, n * n_v, "gdn_rule beta")?,
                mem.view(decay, n * n_v, "gdn_rule decay")?,
            );
            deltanet::delta_rule(xs, bs, ds, &mut st, &sh, n, &mut out);
            mem.write(state, &st, "gdn_rule state")?;
            mem.write(o, &out, "gdn_rule o")
        }
        Kernel::GatedNorm { x, z, w, rows, width, eps } => {
            let mut xs = mem.read::<f32>(x, rows * width, "gated_norm x")?;
            deltanet::gated_norm(
                &mut xs,
                mem.view(z, rows * width, "gated_norm z")?,
                mem.view(w, width, "gated_norm w")?,
                eps,
            );
            mem.write(x, &xs, "gated_norm x")
        }
        _ => unreachable!("a DeltaNet kernel"),
    }
}

/// Each expert's pairs (indices into [n, k]) in ascending order; negative ids (computed on the
/// host) belong to none.
pub fn group_pairs(ids: &[i32], n_experts: usize) -> Result<Vec<Vec<usize>>> {
    let mut groups = vec![Vec::new(); n_experts];
    for (pair, &e) in ids.iter().enumerate() {
        if e < 0 {
            continue;
        }
        let list = groups
            .get_mut(e as usize)
            .ok_or_else(|| Error::Usage(format!("moe: expert id {e} of {n_experts}")))?;
        list.push(pair);
    }
    Ok(groups)
}

/// One expert over the tokens of `pairs` (x rows pair / k):
/// down · (silu(gate · x) ⊙ (up · x)), [pairs, dim]. The MoE kernel and the rotary's CPU
/// fallback both run experts through this (or `experts_rows`), with the same pairs, so a
/// streamed run agrees with a resident one to the bit.
pub fn expert_rows(
    b: &dyn Backend,
    weights: [&Mat; 3],
    x: &[f32],
    pairs: &[usize],
    k: usize,
) -> Result<Vec<f32>> {
    Ok(experts_rows(b, &[(weights, pairs)], x, k)?.pop().expect("one expert in, one out"))
}

/// `expert_rows` for several experts at once, bit for bit: every gate and up product in one
/// `matmul_batch` (an expert's gate and up share its gathered x), then every down in another.
/// Returns each expert's [pairs, dim] in the order given.
pub fn experts_rows(
    b: &dyn Backend,
    experts: &[([&Mat; 3], &[usize])],
    x: &[f32],
    k: usize,
) -> Result<Vec<Vec<f32>>> {
    // Per expert: xe [m, dim], g and u [m, ffn], y [m, dim].
    let mut xe = Vec::with_capacity(experts.len());
    let (mut g, mut u, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for &([gate, _, down], pairs) in experts {
        let (dim, m, ffn) = (gate.cols, pairs.len(), gate.rows);
        let mut rows = Vec::with_capacity(m * dim);
        pairs.iter().for_each(|&p| rows.extend_from_slice(&x[p / k * dim..(p / k + 1) * dim]));
        xe.push(rows);
        g.push(vec![0f32; m * ffn]);
        u.push(vec![0f32; m * ffn]);
        y.push(vec![0f32; m * down.rows]);
    }
    let mut jobs = Vec::with_capacity(2 * experts.len());
    for (((&([gate, up, _], pairs), xe), g), u) in experts.iter().zip(&xe).zip(&mut g).zip(&mut u) {
        let n = pairs.len();
        jobs.push(MatJob { w: *gate, x: xe, n, y: g });
        jobs.push(MatJob { w: *up, x: xe, n, y: u });
    }
    b.matmul_batch(&mut jobs)?;
    drop(jobs);
    for (g, u) in g.iter_mut().zip(&u) {
        g.iter_mut().zip(u).for_each(|(g, &u)| *g = silu(*g) * u);
    }
    let mut jobs: Vec<MatJob> = experts
        .iter()
        .zip(&g)
        .zip(&mut y)
        .map(|((&([_, _, down], pairs), g), y)| MatJob { w: *down, x: g, n: pairs.len(), y })
        .collect();
    b.matmul_batch(&mut jobs)?;
    Ok(y)
}

impl KvType {
    /// Round `x` to what the cache's dot products see.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvType::F32 => x,
            KvType::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// `round` of every element (the `half` crate's slice conversion: F16C where the CPU has
    /// it, the same values either way).
    pub fn round_slice(self, xs: &mut [f32]) {
        if self == KvType::F32 {
            return;
        }
        let mut h = [f16::ZERO; 64];
        for chunk in xs.chunks_mut(h.len()) {
            let h = &mut h[..chunk.len()];
            h.convert_from_f32_slice(chunk);
            h.convert_to_f32_slice(chunk);
        }
    }
}

/// Element index of position `pos` in a cache tensor.
fn kv_row(mem: &HostMemory, c: &KvCache, pos: usize) -> Result<usize> {
    let page = mem.view::<i32>(c.page_table + (pos / c.page_size * 4) as u64, 1, "page table")?;
    page_row(page, c, pos % c.page_size)
}

/// Element index of position `pos` given the page table from its page on (`pages[0]` holds
/// position `pos` when `pos < page_size`).
fn page_row(pages: &[i32], c: &KvCache, pos: usize) -> Result<usize> {
    let page = pages[pos / c.page_size];
    if page < 0 {
        return Err(Error::Usage(format!("page table: page {page} for position {pos}")));
    }
    Ok((page as usize * c.page_size + pos % c.page_size) * c.kv_width)
}

/// One cache tensor, viewed in place.
enum CacheView<'a> {
    F16(&'a [u16]),
    F32(&'a [f32]),
}

impl<'a> CacheView<'a> {
    fn of(mem: &'a HostMemory, addr: Addr, ty: KvType, len: usize) -> Result<CacheView<'a>> {
        Ok(match ty {
            KvType::F16 => CacheView::F16(mem.view(addr, len, "kv cache")?),
            KvType::F32 => CacheView::F32(mem.view(addr, len, "kv cache")?),
        })
    }

    /// The `width` values at element `at`, widened to f32 (exactly) into `dst`, with the CPU's
    /// f16 conversion instructions where it has them.
    fn gather(&self, at: usize, dst: &mut [f32]) {
        match self {
            CacheView::F32(c) => dst.copy_from_slice(&c[at..at + dst.len()]),
            CacheView::F16(c) => {
                // SAFETY: u16 and f16 have one layout (f16 is repr(transparent) over u16).
                let h: &[f16] =
                    unsafe { std::slice::from_raw_parts(c[at..].as_ptr().cast(), dst.len()) };
                h.convert_to_f32_slice(dst);
            }
        }
    }

    /// Σ a[i] · b[i]: in order for the exact f32 cache (the reference), in 8 lanes for the f16
    /// cache (vectorised; the lanes change only the rounding of the sum).
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            CacheView::F32(_) => a.iter().zip(b).map(|(a, b)| a * b).sum(),
            CacheView::F16(_) => {
                let mut acc = [0f32; 8];
                let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
                let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
                for (x, y) in ac.zip(bc) {
                    for i in 0..8 {
                        acc[i] += x[i] * y[i];
                    }
                }
                acc.iter().sum::<f32>() + tail
            }
        }
    }

    fn ty(&self) -> KvType {
        match self {
            CacheView::F16(_) => KvType::F16,
            CacheView::F32(_) => KvType::F32,
        }
    }
}

/// The shape of one attention call.
struct AttnGeometry {
    n: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    hd: usize,
    scale: f32,
}

/// Attention for the q heads of kv heads `kv_heads`: returns [n, their q heads * head_dim].
/// `rows[p]` is position p's element offset; `buf` is this thread's workspace (grown as
/// needed, never shrunk). The same code compiled twice: for AVX2 (chosen at run time where the
/// CPU has it) and for the baseline; both do the same f32 operations in the same order (Rust
/// never fuses a multiply and an add), so they agree to the bit.
fn attend_kv_heads(
    kc: &CacheView,
    vc: &CacheView,
    q: &[f32],
    rows: &[usize],
    g: &AttnGeometry,
    kv_heads: std::ops::Range<usize>,
    buf: &mut Vec<f32>,
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected just above.
        return unsafe { attend_kv_heads_avx2(kc, vc, q, rows, g, kv_heads, buf) };
    }
    attend_kv_heads_impl(kc, vc, q, rows, g, kv_heads, buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_kv_heads_avx2(
    kc: &CacheView,
    vc: &CacheView,
    q: &[f32],
    rows: &[usize],
    g: &AttnGeometry,
    kv_heads: std::ops::Range<usize>,
    buf: &mut Vec<f32>,
) -> Vec<f32> {
    attend_kv_heads_impl(kc, vc, q, rows, g, kv_heads, buf)
}

/// Per kv head: its keys and values widened to f32 once; per token, the scores of all the
/// group's q heads in one pass over the keys (each key row read once for the group), softmax,
/// the weights rounded to the cache's precision, then one pass over the values.
#[inline(always)]
fn attend_kv_heads_impl(
    kc: &CacheView,
    vc: &CacheView,
    q: &[f32],
    rows: &[usize],
    g: &AttnGeometry,
    kv_heads: std::ops::Range<usize>,
    buf: &mut Vec<f32>,
) -> Vec<f32> {
    let (n, hd) = (g.n, g.hd);
    let q_width = g.n_heads * hd;
    let group = g.n_heads / g.n_kv_heads;
    let n_all = g.pos0 + n;
    let width = kv_heads.len() * group * hd;
    let mut out = vec![0f32; n * width]; // [n, heads here * head_dim]
    let need = n_all * (2 * hd + group);
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let (kf, rest) = buf.split_at_mut(n_all * hd); // [n_all, head_dim] one kv head's keys
    let (vf, rest) = rest.split_at_mut(n_all * hd); // [n_all, head_dim] one kv head's values
    let scores = &mut rest[..group * n_all]; // [group, n_all]
    for (i, kv_head) in kv_heads.enumerate() {
        for (p, &row) in rows.iter().enumerate() {
            kc.gather(row + kv_head * hd, &mut kf[p * hd..(p + 1) * hd]);
            vc.gather(row + kv_head * hd, &mut vf[p * hd..(p + 1) * hd]);
        }
        for t in 0..n {
            let n_seen = g.pos0 + t + 1;
            let q0 = t * q_width + kv_head * group * hd; // the group's q heads, [group, hd]
            let qs = &q[q0..q0 + group * hd];
            for (p, k) in kf[..n_seen * hd].chunks_exact(hd).enumerate() {
                for (j, qh) in qs.chunks_exact(hd).enumerate() {
                    scores[j * n_all + p] = kc.dot(qh, k) * g.scale;
                }
            }
            for sj in scores.chunks_exact_mut(n_all) {
                softmax(&mut sj[..n_seen]);
                vc.ty().round_slice(&mut sj[..n_seen]);
            }
            let o0 = t * width + i * group * hd;
            let oh = &mut out[o0..o0 + group * hd]; // [group, hd]
            for (p, v) in vf[..n_seen * hd].chunks_exact(hd).enumerate() {
                for (j, o) in oh.chunks_exact_mut(hd).enumerate() {
                    let w = scores[j * n_all + p];
                    o.iter_mut().zip(v).for_each(|(o, &v)| *o += w * v);
                }
            }
        }
    }
    out
}
