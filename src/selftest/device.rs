//! The case table on a device: inputs uploaded, outputs allocated with guard values on both
//! sides, the case's kernels (the op vocabulary) launched, everything read back and compared
//! with the reference, every buffer freed. Any device runs it: `cpu` and `cpu-ref` (the host
//! kernels), `sim`, `cuda` (each kernel's FFI params built in src/rotary/cuda.rs, only there).

use std::time::Instant;

use super::{cases, compare, inputs, reference, CaseResult, Inputs, Op, Output, Report, Status};
use crate::error::Result;
use crate::ops::{Addr, Kernel, KvCache, MoeStage};
use crate::rotary::device::{alloc_upload, download, upload, Device, Plain, Stream};

/// Elements of guard on each side of an output.
const GUARD: usize = 64;
const GUARD_BITS: u32 = 0x7FBA_DBAD; // a NaN no kernel writes (as an i32: no expert id)

/// An output of 4-byte elements with GUARD elements of a known pattern before and after it.
struct Guarded {
    base: Addr,
    len: usize,
}

impl Guarded {
    fn new<T: Plain>(dev: &mut dyn Device, init: &[T], what: &str) -> Result<Guarded> {
        assert_eq!(std::mem::size_of::<T>(), 4, "guarded outputs hold 4-byte elements");
        let mut bits = vec![GUARD_BITS; init.len() + 2 * GUARD];
        // SAFETY: T is a 4-byte Plain type: its bytes are a u32's.
        let init_bits: &[u32] =
            unsafe { std::slice::from_raw_parts(init.as_ptr().cast(), init.len()) };
        bits[GUARD..GUARD + init.len()].copy_from_slice(init_bits);
        Ok(Guarded { base: alloc_upload(dev, &bits, what)?, len: init.len() })
    }

    /// The output's first element.
    fn at(&self) -> Addr {
        self.base + (GUARD * 4) as u64
    }

    /// The output's bits, and whether both guards are intact.
    fn read(&self, dev: &mut dyn Device) -> Result<(Vec<u32>, bool)> {
        let mut bits = vec![0u32; self.len + 2 * GUARD];
        download(dev, self.base, &mut bits)?;
        let ok = bits[..GUARD].iter().chain(&bits[GUARD + self.len..]).all(|&g| g == GUARD_BITS);
        Ok((bits[GUARD..GUARD + self.len].to_vec(), ok))
    }
}

/// A case on the device: its kernels, its outputs, every buffer it holds.
struct Prepared {
    kernels: Vec<Kernel>,
    out: Guarded,
    /// topk_moe's expert ids.
    ids: Option<Guarded>,
    /// The second output of split_gate, gdn_gates, gdn_conv, gdn_rule (Output::second).
    second: Option<Guarded>,
    buffers: Vec<Addr>,
}

/// Uploads of a case's inputs, remembered to be freed.
struct Uploads<'d> {
    dev: &'d mut dyn Device,
    buffers: Vec<Addr>,
}

impl Uploads<'_> {
    fn data<T: Copy>(&mut self, v: &[T]) -> Result<Addr> {
        let a = alloc_upload(self.dev, v, "selftest input")?;
        self.buffers.push(a);
        Ok(a)
    }

    fn zeros(&mut self, bytes: usize, what: &str) -> Result<Addr> {
        let a = self.dev.alloc(bytes as u64, what)?;
        self.buffers.push(a);
        Ok(a)
    }

    fn guarded<T: Plain>(&mut self, init: &[T], what: &str) -> Result<Guarded> {
        Guarded::new(self.dev, init, what)
    }
}

/// Allocate and upload a case and build its kernels.
/// Over a screen: one short arm per op of the vocabulary (a table, not logic).
fn prepare(dev: &mut dyn Device, op: &Op, i: &Inputs) -> Result<Prepared> {
    let kv_ty = dev.kv_type();
    let mut u = Uploads { dev, buffers: Vec::new() };
    let (mut ids, mut second) = (None, None);
    let (kernels, out) = match *op {
        Op::Gemv { ty, rows, cols, n, copies } => {
            // `copies` of the matrix side by side, each product over the next one: the same
            // result every time, from memory the caches no longer hold.
            let bytes = i.mats[0].len();
            let w = u.zeros(bytes * copies, "gemv weights")?;
            for c in 0..copies {
                upload(u.dev, w + (c * bytes) as u64, &i.mats[0])?;
            }
            let x = u.data(&i.f[0])?;
            let out = u.guarded(&vec![0f32; n * rows], "gemv y")?;
            let y = out.at();
            let gemv =
                |c: usize| Kernel::Gemv { ty, w: w + (c * bytes) as u64, x, y, rows, cols, n };
            ((0..copies).map(gemv).collect(), out)
        }
        Op::Moe { .. } => return prepare_moe(u, op, i),
        Op::TopkMoe { n, n_experts, k, norm } => {
            let logits = u.data(&i.f[0])?;
            let out = u.guarded(&vec![0f32; n * k], "topk weights")?;
            let id = u.guarded(&vec![0i32; n * k], "topk ids")?;
            let kernel =
                Kernel::TopkMoe { logits, ids: id.at(), weights: out.at(), n, n_experts, k, norm };
            ids = Some(id);
            (vec![kernel], out)
        }
        Op::RmsNorm { rows, width } => {
            let (x, w) = (u.data(&i.f[0])?, u.data(&i.f[1])?);
            let out = u.guarded(&vec![0f32; rows * width], "rmsnorm y")?;
            (vec![Kernel::RmsNorm { x, w, y: out.at(), rows, width, eps: 1e-6 }], out)
        }
        Op::Rope { n, n_heads, head_dim, rope_dims, pos0 } => {
            let out = u.guarded(&i.f[0], "rope x")?;
            let inv_freq = u.data(&i.f[1])?;
            (
                vec![Kernel::Rope { x: out.at(), inv_freq, n, n_heads, head_dim, rope_dims, pos0 }],
                out,
            )
        }
        Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, page_size } => {
            // Store every position into the paged cache, then attend.
            let kv_width = n_kv_heads * head_dim;
            let cache_bytes = i.ids.len() * page_size * kv_width * kv_ty.bytes();
            let (k, v) = (u.zeros(cache_bytes, "k cache")?, u.zeros(cache_bytes, "v cache")?);
            let cache =
                KvCache { k, v, page_table: u.data(&i.ids)?, page_size, kv_width, ty: kv_ty };
            let (q, kk, vv) = (u.data(&i.f[0])?, u.data(&i.f[1])?, u.data(&i.f[2])?);
            let out = u.guarded(&vec![0f32; n * n_heads * head_dim], "attention o")?;
            let scale = 1.0 / (head_dim as f32).sqrt();
            let store = Kernel::KvStore { cache, k: kk, v: vv, n: pos0 + n, pos0: 0 };
            let attend = Kernel::Attention {
                cache,
                q,
                o: out.at(),
                n,
                n_heads,
                n_kv_heads,
                head_dim,
                pos0,
                scale,
            };
            (vec![store, attend], out)
        }
        Op::Embed { ty, dim, n, .. } => {
            let (table, tokens) = (u.data(&i.mats[0])?, u.data(&i.ids)?);
            let out = u.guarded(&vec![0f32; n * dim], "embed x")?;
            (vec![Kernel::Embed { ty, table, tokens, x: out.at(), n, dim }], out)
        }
        Op::Add { len } => {
            let out = u.guarded(&i.f[0], "add y")?;
            (vec![Kernel::Add { y: out.at(), x: u.data(&i.f[1])?, n: len }], out)
        }
        Op::SplitGate { n, n_heads, head_dim } => {
            let len = n * n_heads * head_dim;
            let qg = u.data(&i.f[0])?;
            let (out, gate) = (
                u.guarded(&vec![0f32; len], "split_gate q")?,
                u.guarded(&vec![0f32; len], "split_gate gate")?,
            );
            let kernel =
                Kernel::SplitGate { qg, q: out.at(), gate: gate.at(), n, n_heads, head_dim };
            second = Some(gate);
            (vec![kernel], out)
        }
        Op::SigmoidMul { len } => {
            let out = u.guarded(&i.f[0], "sigmoid_mul y")?;
            (vec![Kernel::SigmoidMul { y: out.at(), g: u.data(&i.f[1])?, n: len }], out)
        }
        Op::Sigmoid { len } => {
            let out = u.guarded(&i.f[0], "sigmoid x")?;
            (vec![Kernel::Sigmoid { x: out.at(), n: len }], out)
        }
        Op::GdnConv { .. } | Op::GdnGates { .. } | Op::GdnRule { .. } | Op::GatedNorm { .. } => {
            return prepare_deltanet(u, op, i)
        }
    };
    Ok(Prepared { kernels, out, ids, second, buffers: u.buffers })
}

/// Routed experts: each of gate, up, down stacked over experts in one buffer, and a table of
/// each expert's address in it.
fn prepare_moe(mut u: Uploads, op: &Op, i: &Inputs) -> Result<Prepared> {
    let Op::Moe { ty_gate_up, ty_down, dim, ffn, n_experts, k, n, split } = *op else {
        unreachable!("a moe case")
    };
    let rb_gu = ty_gate_up.row_bytes(dim as u64).unwrap_or(0) as usize;
    let rb_d = ty_down.row_bytes(ffn as u64).unwrap_or(0) as usize;
    let mut tables = Vec::new();
    for (m, stride) in i.mats.iter().zip([ffn * rb_gu, ffn * rb_gu, dim * rb_d]) {
        let base = u.data(m)?;
        let addrs: Vec<u64> = (0..n_experts).map(|e| base + (e * stride) as u64).collect();
        tables.push(u.data(&addrs)?);
    }
    let out = u.guarded(&i.f[1], "moe residual")?;
    let (ids, weights, x) = (u.data(&i.ids)?, u.data(&i.f[2])?, u.data(&i.f[0])?);
    let (act, scratch_out) =
        (u.zeros(n * k * ffn * 4, "moe act")?, u.zeros(n * k * dim * 4, "moe out")?);
    let (offsets, pairs) =
        (u.zeros((n_experts + 1) * 4, "moe offsets")?, u.zeros(n * k * 4, "moe pairs")?);
    let kernel = |stage| Kernel::Moe {
        stage,
        ty_gate_up,
        ty_down,
        gate: tables[0],
        up: tables[1],
        down: tables[2],
        ids,
        weights,
        x,
        act,
        out: scratch_out,
        offsets,
        pairs,
        residual: out.at(),
        dim,
        ffn,
        n,
        k,
        n_experts,
    };
    let kernels = if split {
        vec![kernel(MoeStage::Experts), kernel(MoeStage::Combine)]
    } else {
        vec![kernel(MoeStage::All)]
    };
    Ok(Prepared { kernels, out, ids: None, second: None, buffers: u.buffers })
}

/// Gated DeltaNet's ops: the states they advance come back as the second output.
fn prepare_deltanet(mut u: Uploads, op: &Op, i: &Inputs) -> Result<Prepared> {
    let (kernel, out, second) = match *op {
        Op::GdnConv { n, channels, kernel } => {
            let (out, state) =
                (u.guarded(&i.f[0], "gdn_conv x")?, u.guarded(&i.f[1], "gdn_conv state")?);
            let w = u.data(&i.f[2])?;
            (
                Kernel::GdnConv { x: out.at(), state: state.at(), w, n, channels, kernel },
                out,
                Some(state),
            )
        }
        Op::GdnGates { n, n_v } => {
            let (out, alpha) =
                (u.guarded(&i.f[0], "gdn_gates beta")?, u.guarded(&i.f[1], "gdn_gates alpha")?);
            let (dt_bias, a) = (u.data(&i.f[2])?, u.data(&i.f[3])?);
            (
                Kernel::GdnGates { beta: out.at(), alpha: alpha.at(), dt_bias, a, n, n_v },
                out,
                Some(alpha),
            )
        }
        Op::GdnRule { n, n_k, n_v, head_k, head_v, order, .. } => {
            let (qkv, beta, decay) = (u.data(&i.f[0])?, u.data(&i.f[1])?, u.data(&i.f[2])?);
            let out = u.guarded(&vec![0f32; n * n_v * head_v], "gdn_rule o")?;
            let state = u.guarded(&i.f[3], "gdn_rule state")?;
            let kernel = Kernel::GdnRule {
                qkv,
                beta,
                decay,
                state: state.at(),
                o: out.at(),
                n,
                n_k,
                n_v,
                head_k,
                head_v,
                order,
            };
            (kernel, out, Some(state))
        }
        Op::GatedNorm { rows, width } => {
            let out = u.guarded(&i.f[0], "gated_norm x")?;
            let (z, w) = (u.data(&i.f[1])?, u.data(&i.f[2])?);
            (Kernel::GatedNorm { x: out.at(), z, w, rows, width, eps: 1e-6 }, out, None)
        }
        _ => unreachable!("a DeltaNet case"),
    };
    Ok(Prepared { kernels: vec![kernel], out, ids: None, second, buffers: u.buffers })
}

impl Prepared {
    fn launch(&self, dev: &mut dyn Device) -> Result<()> {
        self.kernels.iter().try_for_each(|k| dev.launch(k))
    }

    /// The outputs (downloads wait for the compute stream).
    fn read(&self, dev: &mut dyn Device) -> Result<Output> {
        let (values, ok) = self.out.read(dev)?;
        let (ids, ids_ok) = match &self.ids {
            Some(g) => g.read(dev)?,
            None => (Vec::new(), true),
        };
        let (second, second_ok) = match &self.second {
            Some(g) => g.read(dev)?,
            None => (Vec::new(), true),
        };
        Ok(Output {
            values: values.into_iter().map(f32::from_bits).collect(),
            ids: ids.into_iter().map(|b| b as i32).collect(),
            second: second.into_iter().map(f32::from_bits).collect(),
            guards_ok: ok && ids_ok && second_ok,
        })
    }

    fn free(self, dev: &mut dyn Device) {
        let outputs = [Some(self.out), self.ids, self.second].into_iter().flatten().map(|g| g.base);
        self.buffers.into_iter().chain(outputs).for_each(|a| dev.free(a));
    }

    /// Seconds per evaluation: the median of 5 timed batches of up to 20 (as many as fit in
    /// about 20 ms, after 3 warm-ups), each ended by a host wait for the compute stream (on a
    /// GPU the launches' own latency is included: a bound, close for the large perf shapes).
    /// In-place ops (moe's residual, the DeltaNet states) drift over repeats; timing does not
    /// care.
    fn time(&self, dev: &mut dyn Device) -> Result<f64> {
        let sync = |dev: &mut dyn Device| -> Result<()> {
            let ev = dev.record(Stream::Compute)?;
            dev.sync_event(ev)?;
            dev.release(ev);
            Ok(())
        };
        let start = Instant::now();
        self.launch(dev)?;
        sync(dev)?;
        let once = start.elapsed().as_secs_f64();
        for _ in 0..2 {
            self.launch(dev)?;
        }
        sync(dev)?;
        let batch = ((0.02 / once) as usize).clamp(1, 20);
        let mut per_iter = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..batch {
                self.launch(dev)?;
            }
            sync(dev)?;
            per_iter.push(start.elapsed().as_secs_f64() / batch as f64);
        }
        per_iter.sort_by(f64::total_cmp);
        Ok(per_iter[per_iter.len() / 2])
    }
}

/// Run every case on `dev` (named `backend` in the report). `perf`: also the large shapes,
/// and GB/s for the products against the device's peak memory bandwidth. `filter`: only the
/// cases whose op, format or shape contains that text.
pub fn run(
    dev: &mut dyn Device,
    backend: &'static str,
    perf: bool,
    filter: Option<&str>,
) -> Result<Report> {
    let peak = if perf { dev.peak_gbps()? } else { None };
    let mut results = Vec::new();
    for (idx, case) in cases(perf).iter().enumerate() {
        let op = &case.op;
        let line = format!("{} {} {}", op.name(), op.quant(), op.shape());
        if filter.is_some_and(|f| !line.contains(f)) {
            continue;
        }
        let input = inputs(op, 1000 + idx as u64 * 17)?;
        let mut r = CaseResult {
            op: op.name(),
            quant: op.quant(),
            shape: op.shape(),
            backend,
            nmse: None,
            max_nmse: op.max_nmse(),
            status: Status::Skip,
            note: String::new(),
            gbps: None,
            peak_fraction: None,
        };
        let p = prepare(dev, op, &input)?;
        p.launch(dev)?;
        let got = p.read(dev)?;
        (r.nmse, r.status, r.note) = compare(op, &got, &reference(op, &input)?);
        if perf && r.status == Status::Pass {
            if let Some(bytes) = op.weight_bytes() {
                let gbps = bytes as f64 / p.time(dev)? / 1e9;
                r.gbps = Some(gbps);
                r.peak_fraction = peak.as_ref().map(|p| gbps / p.gbps);
            }
        }
        p.free(dev);
        results.push(r);
    }
    Ok(Report { device: dev.describe(), peak, cases: results })
}
