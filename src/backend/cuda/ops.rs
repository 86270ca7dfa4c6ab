//! `rotary selftest --backend cuda`: every op of the case table (src/selftest.rs) on the
//! device. Inputs are uploaded, outputs are allocated with guard values on both sides, the
//! kernel runs, and everything comes back to be compared with the reference.

use super::device::{DevBuf, Device, DeviceCopy, Event};
use super::ffi;
use super::kernels::{self, gdn_head_order, quant_of};
use crate::error::Result;
use crate::selftest::{Inputs, Op, OpsBackend, Output};

/// Elements of guard on each side of an output.
const GUARD: usize = 64;
const GUARD_BITS: u32 = 0x7FBA_DBAD; // a NaN no kernel writes

/// An output buffer with GUARD elements of a known pattern before and after it.
struct Guarded<T: DeviceCopy> {
    buf: DevBuf<T>,
    len: usize,
}

/// Element equality for guard checks: bitwise (the f32 guard is a NaN).
trait GuardEq: DeviceCopy {
    fn same(&self, other: &Self) -> bool;
}
impl GuardEq for f32 {
    fn same(&self, other: &f32) -> bool {
        self.to_bits() == other.to_bits()
    }
}
impl GuardEq for i32 {
    fn same(&self, other: &i32) -> bool {
        self == other
    }
}

impl<T: GuardEq> Guarded<T> {
    fn new(dev: &Device, init: &[T], guard: T, what: &str) -> Result<Guarded<T>> {
        let mut host = vec![guard; init.len() + 2 * GUARD];
        host[GUARD..GUARD + init.len()].copy_from_slice(init);
        Ok(Guarded { buf: dev.upload(&host, what)?, len: init.len() })
    }

    fn ptr(&self) -> *mut T {
        self.buf.ptr_at(GUARD)
    }

    /// The output, and whether both guards are intact.
    fn read(&self, dev: &Device, guard: T) -> Result<(Vec<T>, bool)> {
        let mut host = vec![T::default(); self.len + 2 * GUARD];
        dev.read(&self.buf, 0, &mut host)?;
        let ok = host[..GUARD].iter().chain(&host[GUARD + self.len..]).all(|g| g.same(&guard));
        Ok((host[GUARD..GUARD + self.len].to_vec(), ok))
    }
}

fn guard_f32() -> f32 {
    f32::from_bits(GUARD_BITS)
}

/// A case on the device: its buffers (kept alive), its launch, its outputs.
struct Prepared {
    launch: Launch,
    out: Guarded<f32>,
    ids: Option<Guarded<i32>>,
    /// The second output of split_gate, gdn_gates, gdn_conv, gdn_rule (Output::second).
    second: Option<Guarded<f32>>,
    _f32: Vec<DevBuf<f32>>,
    _u8: Vec<DevBuf<u8>>,
    _i32: Vec<DevBuf<i32>>,
    _u64: Vec<DevBuf<u64>>,
    _u16: Vec<DevBuf<u16>>,
}

enum Launch {
    Gemv(ffi::RotaryGemv),
    Moe(ffi::RotaryMoe),
    TopkMoe(ffi::RotaryTopkMoe),
    RmsNorm(ffi::RotaryRmsNorm),
    Rope(ffi::RotaryRope),
    /// Store every position, then attend.
    Attention(ffi::RotaryKvStore, ffi::RotaryAttention),
    Embed(ffi::RotaryEmbed),
    Add(ffi::RotaryAdd),
    SplitGate(ffi::RotarySplitGate),
    SigmoidMul(ffi::RotarySigmoidMul),
    Sigmoid(ffi::RotarySigmoid),
    GdnConv(ffi::RotaryGdnConv),
    GdnGates(ffi::RotaryGdnGates),
    GdnRule(ffi::RotaryGdnRule),
    GatedNorm(ffi::RotaryGatedNorm),
}

pub struct CudaOps {
    dev: Device,
}

impl CudaOps {
    pub fn open(ordinal: usize) -> Result<CudaOps> {
        Ok(CudaOps { dev: Device::open(ordinal)? })
    }

    fn prepare(&self, op: &Op, i: &Inputs) -> Result<Prepared> {
        let d = &self.dev;
        let (mut f, mut u8s, mut i32s, mut u64s, mut u16s) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut ids, mut second) = (None, None);
        let up_f = |v: &[f32], f: &mut Vec<DevBuf<f32>>| -> Result<*mut f32> {
            let b = d.upload(v, "selftest input")?;
            let p = b.mut_ptr();
            f.push(b);
            Ok(p)
        };
        let (launch, out) = match *op {
            Op::Gemv { ty, rows, cols, n } => {
                let w = d.upload(&i.mats[0], "selftest weights")?;
                let out = Guarded::new(d, &vec![0f32; n * rows], guard_f32(), "selftest output")?;
                let p = ffi::RotaryGemv {
                    quant: quant_of(ty, "selftest")?,
                    w: w.ptr().cast(),
                    x: up_f(&i.f[0], &mut f)?,
                    y: out.ptr(),
                    rows: rows as i32,
                    cols: cols as i32,
                    n_tokens: n as i32,
                };
                u8s.push(w);
                (Launch::Gemv(p), out)
            }
            Op::Moe { ty_gate_up, ty_down, dim, ffn, n_experts, k, n } => {
                let rb_gu = ty_gate_up.row_bytes(dim as u64).unwrap_or(0) as usize;
                let rb_d = ty_down.row_bytes(ffn as u64).unwrap_or(0) as usize;
                let mut tables = Vec::new();
                for (m, stride) in i.mats.iter().zip([ffn * rb_gu, ffn * rb_gu, dim * rb_d]) {
                    let b = d.upload(m, "selftest experts")?;
                    let addrs: Vec<u64> = (0..n_experts).map(|e| b.addr() + (e * stride) as u64).collect();
                    tables.push(d.upload(&addrs, "selftest expert table")?);
                    u8s.push(b);
                }
                let out = Guarded::new(d, &i.f[1], guard_f32(), "selftest residual")?;
                let id_buf = d.upload(&i.ids, "selftest ids")?;
                let act = d.alloc::<f32>(n * k * ffn, "moe act")?;
                let outs = d.alloc::<f32>(n * k * dim, "moe out")?;
                let offsets = d.alloc::<i32>(n_experts + 1, "moe offsets")?;
                let pairs = d.alloc::<i32>(n * k, "moe pairs")?;
                let p = ffi::RotaryMoe {
                    quant_gate_up: quant_of(ty_gate_up, "selftest")?,
                    quant_down: quant_of(ty_down, "selftest")?,
                    gate: tables[0].ptr().cast(),
                    up: tables[1].ptr().cast(),
                    down: tables[2].ptr().cast(),
                    ids: id_buf.ptr(),
                    weights: up_f(&i.f[2], &mut f)?,
                    x: up_f(&i.f[0], &mut f)?,
                    act: act.mut_ptr(),
                    out: outs.mut_ptr(),
                    group_offsets: offsets.mut_ptr(),
                    group_pairs: pairs.mut_ptr(),
                    residual: out.ptr(),
                    dim: dim as i32,
                    ffn: ffn as i32,
                    n_tokens: n as i32,
                    k: k as i32,
                    n_experts: n_experts as i32,
                };
                u64s.extend(tables);
                i32s.extend([id_buf, offsets, pairs]);
                f.extend([act, outs]);
                (Launch::Moe(p), out)
            }
            Op::TopkMoe { n, n_experts, k, renorm } => {
                let out = Guarded::new(d, &vec![0f32; n * k], guard_f32(), "topk weights")?;
                let id_out = Guarded::new(d, &vec![0i32; n * k], GUARD_BITS as i32, "topk ids")?;
                let p = ffi::RotaryTopkMoe {
                    logits: up_f(&i.f[0], &mut f)?,
                    ids: id_out.ptr(),
                    weights: out.ptr(),
                    n_tokens: n as i32,
                    n_experts: n_experts as i32,
                    k: k as i32,
                    norm: if renorm {
                        ffi::RotaryTopkNorm::ROTARY_TOPK_RENORM
                    } else {
                        ffi::RotaryTopkNorm::ROTARY_TOPK_SOFTMAX
                    },
                };
                ids = Some(id_out);
                (Launch::TopkMoe(p), out)
            }
            Op::RmsNorm { rows, width } => {
                let out = Guarded::new(d, &vec![0f32; rows * width], guard_f32(), "rmsnorm out")?;
                let p = ffi::RotaryRmsNorm {
                    x: up_f(&i.f[0], &mut f)?,
                    w: up_f(&i.f[1], &mut f)?,
                    y: out.ptr(),
                    rows: rows as i32,
                    width: width as i32,
                    eps: 1e-6,
                };
                (Launch::RmsNorm(p), out)
            }
            Op::Rope { n, n_heads, head_dim, rope_dims, pos0 } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "rope x")?;
                let p = ffi::RotaryRope {
                    x: out.ptr(),
                    inv_freq: up_f(&i.f[1], &mut f)?,
                    n_tokens: n as i32,
                    n_heads: n_heads as i32,
                    head_dim: head_dim as i32,
                    rope_dims: rope_dims as i32,
                    pos0: pos0 as i32,
                };
                (Launch::Rope(p), out)
            }
            Op::Attention { n, n_heads, n_kv_heads, head_dim, pos0, page_size } => {
                let kv_width = n_kv_heads * head_dim;
                let n_pages = i.ids.len();
                let kc = d.alloc::<u16>(n_pages * page_size * kv_width, "k cache")?;
                let vc = d.alloc::<u16>(n_pages * page_size * kv_width, "v cache")?;
                let table = d.upload(&i.ids, "page table")?;
                let cache = ffi::RotaryKvCache {
                    k: kc.mut_ptr(),
                    v: vc.mut_ptr(),
                    page_table: table.ptr(),
                    page_size: page_size as i32,
                    kv_width: kv_width as i32,
                };
                let store = ffi::RotaryKvStore {
                    cache,
                    k: up_f(&i.f[1], &mut f)?,
                    v: up_f(&i.f[2], &mut f)?,
                    n_tokens: (pos0 + n) as i32,
                    pos0: 0,
                };
                let out = Guarded::new(d, &vec![0f32; n * n_heads * head_dim], guard_f32(), "attn out")?;
                let attn = ffi::RotaryAttention {
                    cache,
                    q: up_f(&i.f[0], &mut f)?,
                    o: out.ptr(),
                    n_tokens: n as i32,
                    n_heads: n_heads as i32,
                    n_kv_heads: n_kv_heads as i32,
                    head_dim: head_dim as i32,
                    pos0: pos0 as i32,
                    scale: 1.0 / (head_dim as f32).sqrt(),
                };
                u16s.extend([kc, vc]);
                i32s.push(table);
                (Launch::Attention(store, attn), out)
            }
            Op::Embed { ty, dim, n, .. } => {
                let table = d.upload(&i.mats[0], "embedding table")?;
                let tokens = d.upload(&i.ids, "tokens")?;
                let out = Guarded::new(d, &vec![0f32; n * dim], guard_f32(), "embed out")?;
                let p = ffi::RotaryEmbed {
                    quant: quant_of(ty, "selftest")?,
                    table: table.ptr().cast(),
                    tokens: tokens.ptr(),
                    x: out.ptr(),
                    n_tokens: n as i32,
                    dim: dim as i32,
                };
                u8s.push(table);
                i32s.push(tokens);
                (Launch::Embed(p), out)
            }
            Op::Add { len } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "add y")?;
                let p = ffi::RotaryAdd { y: out.ptr(), x: up_f(&i.f[1], &mut f)?, n: len as i64 };
                (Launch::Add(p), out)
            }
            Op::SplitGate { n, n_heads, head_dim } => {
                let len = n * n_heads * head_dim;
                let out = Guarded::new(d, &vec![0f32; len], guard_f32(), "split_gate q")?;
                let gate = Guarded::new(d, &vec![0f32; len], guard_f32(), "split_gate gate")?;
                let p = ffi::RotarySplitGate {
                    qg: up_f(&i.f[0], &mut f)?,
                    q: out.ptr(),
                    gate: gate.ptr(),
                    n_tokens: n as i32,
                    n_heads: n_heads as i32,
                    head_dim: head_dim as i32,
                };
                second = Some(gate);
                (Launch::SplitGate(p), out)
            }
            Op::SigmoidMul { len } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "sigmoid_mul y")?;
                let p = ffi::RotarySigmoidMul { y: out.ptr(), g: up_f(&i.f[1], &mut f)?, n: len as i64 };
                (Launch::SigmoidMul(p), out)
            }
            Op::Sigmoid { len } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "sigmoid x")?;
                (Launch::Sigmoid(ffi::RotarySigmoid { x: out.ptr(), n: len as i64 }), out)
            }
            Op::GdnConv { n, channels, kernel } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "gdn_conv x")?;
                let state = Guarded::new(d, &i.f[1], guard_f32(), "gdn_conv state")?;
                let p = ffi::RotaryGdnConv {
                    x: out.ptr(),
                    state: state.ptr(),
                    w: up_f(&i.f[2], &mut f)?,
                    n_tokens: n as i32,
                    channels: channels as i32,
                    kernel: kernel as i32,
                };
                second = Some(state);
                (Launch::GdnConv(p), out)
            }
            Op::GdnGates { n, n_v } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "gdn_gates beta")?;
                let alpha = Guarded::new(d, &i.f[1], guard_f32(), "gdn_gates alpha")?;
                let p = ffi::RotaryGdnGates {
                    beta: out.ptr(),
                    alpha: alpha.ptr(),
                    dt_bias: up_f(&i.f[2], &mut f)?,
                    a: up_f(&i.f[3], &mut f)?,
                    n_tokens: n as i32,
                    n_v_heads: n_v as i32,
                };
                second = Some(alpha);
                (Launch::GdnGates(p), out)
            }
            Op::GdnRule { n, n_k, n_v, head_k, head_v, tiled, .. } => {
                let out = Guarded::new(d, &vec![0f32; n * n_v * head_v], guard_f32(), "gdn_rule o")?;
                let state = Guarded::new(d, &i.f[3], guard_f32(), "gdn_rule state")?;
                let p = ffi::RotaryGdnRule {
                    qkv: up_f(&i.f[0], &mut f)?,
                    beta: up_f(&i.f[1], &mut f)?,
                    decay: up_f(&i.f[2], &mut f)?,
                    state: state.ptr(),
                    o: out.ptr(),
                    n_tokens: n as i32,
                    n_k_heads: n_k as i32,
                    n_v_heads: n_v as i32,
                    head_k: head_k as i32,
                    head_v: head_v as i32,
                    order: gdn_head_order(if tiled { crate::ops::HeadOrder::Tiled } else { crate::ops::HeadOrder::Grouped }),
                };
                second = Some(state);
                (Launch::GdnRule(p), out)
            }
            Op::GatedNorm { rows, width } => {
                let out = Guarded::new(d, &i.f[0], guard_f32(), "gated_norm x")?;
                let p = ffi::RotaryGatedNorm {
                    x: out.ptr(),
                    z: up_f(&i.f[1], &mut f)?,
                    w: up_f(&i.f[2], &mut f)?,
                    rows: rows as i32,
                    width: width as i32,
                    eps: 1e-6,
                };
                (Launch::GatedNorm(p), out)
            }
        };
        Ok(Prepared { launch, out, ids, second, _f32: f, _u8: u8s, _i32: i32s, _u64: u64s, _u16: u16s })
    }

    fn launch(&self, p: &Prepared) -> Result<()> {
        let d = &self.dev;
        // SAFETY: every pointer in the params was set by prepare() from a buffer that `p`
        // keeps alive, sized for the case's dimensions.
        unsafe {
            match &p.launch {
                Launch::Gemv(x) => kernels::gemv(d, x),
                Launch::Moe(x) => kernels::moe(d, x),
                Launch::TopkMoe(x) => kernels::topk_moe(d, x),
                Launch::RmsNorm(x) => kernels::rmsnorm(d, x),
                Launch::Rope(x) => kernels::rope_neox(d, x),
                Launch::Attention(s, a) => {
                    kernels::kv_store(d, s)?;
                    kernels::attention(d, a)
                }
                Launch::Embed(x) => kernels::embed(d, x),
                Launch::Add(x) => kernels::add(d, x),
                Launch::SplitGate(x) => kernels::split_gate(d, x),
                Launch::SigmoidMul(x) => kernels::sigmoid_mul(d, x),
                Launch::Sigmoid(x) => kernels::sigmoid(d, x),
                Launch::GdnConv(x) => kernels::gdn_conv(d, x),
                Launch::GdnGates(x) => kernels::gdn_gates(d, x),
                Launch::GdnRule(x) => kernels::gdn_rule(d, x),
                Launch::GatedNorm(x) => kernels::gated_norm(d, x),
            }
        }
    }
}

impl OpsBackend for CudaOps {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        self.dev.info.to_string()
    }

    fn run(&mut self, op: &Op, input: &Inputs) -> Result<Option<Output>> {
        let p = self.prepare(op, input)?;
        self.launch(&p)?;
        self.dev.sync()?;
        let (values, ok) = p.out.read(&self.dev, guard_f32())?;
        let (ids, ids_ok) = match &p.ids {
            Some(g) => g.read(&self.dev, GUARD_BITS as i32)?,
            None => (Vec::new(), true),
        };
        let (second, second_ok) = match &p.second {
            Some(g) => g.read(&self.dev, guard_f32())?,
            None => (Vec::new(), true),
        };
        Ok(Some(Output { values, ids, second, guards_ok: ok && ids_ok && second_ok }))
    }

    fn time(&mut self, op: &Op, input: &Inputs) -> Result<Option<f64>> {
        let p = self.prepare(op, input)?;
        // In-place ops (moe's residual, the DeltaNet states) drift over repeats; timing does not
        // care.
        for _ in 0..3 {
            self.launch(&p)?;
        }
        let (start, end) = (Event::new()?, Event::new()?);
        let mut per_iter = Vec::new();
        for _ in 0..5 {
            start.record(&self.dev)?;
            for _ in 0..20 {
                self.launch(&p)?;
            }
            end.record(&self.dev)?;
            per_iter.push(end.elapsed_ms_since(&start)? as f64 / 1e3 / 20.0);
        }
        per_iter.sort_by(f64::total_cmp);
        Ok(Some(per_iter[per_iter.len() / 2]))
    }

    fn copy_gbps(&mut self) -> Result<Option<f64>> {
        let bytes = 512usize << 20;
        let src = self.dev.alloc::<u8>(bytes, "copy bandwidth source")?;
        let dst = self.dev.alloc::<u8>(bytes, "copy bandwidth destination")?;
        let (start, end) = (Event::new()?, Event::new()?);
        let mut best = f64::MAX;
        for _ in 0..5 {
            start.record(&self.dev)?;
            // SAFETY: both buffers hold `bytes` bytes.
            let code = unsafe {
                ffi::rotary_memcpy_async(
                    dst.mut_ptr().cast(),
                    src.ptr().cast(),
                    bytes as u64,
                    ffi::RotaryCopyKind::ROTARY_COPY_D2D,
                    self.dev.stream(),
                )
            };
            super::device::check(code, "cudaMemcpyAsync(D2D)")?;
            end.record(&self.dev)?;
            best = best.min(end.elapsed_ms_since(&start)? as f64 / 1e3);
        }
        // A device copy reads and writes every byte.
        Ok(Some(2.0 * bytes as f64 / best / 1e9))
    }
}
