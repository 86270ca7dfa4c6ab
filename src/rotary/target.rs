//! Target machines (`--target laptop-4060`) and the per-layer time model a projection uses.
//!
//! A projection is labelled as one wherever it is printed: it is this model evaluated on the
//! decisions the rotary made (hits, demand loads, CPU experts, background loads per layer and
//! token), with the target's constants, each of which names its source.
//!
//! The model walks one decode token's layers in order, with the link as two queues:
//!
//! ```text
//! layer l starts at t (the previous layer's end); its prefetch (issued at t) holds the link
//!   until ready = max(t, foreground free) + ahead bytes / link GB/s
//! MoE start  m = t + T_dense      (dense weights + KV or recurrent state, at VRAM GB/s × eff)
//! demand     d = max(m + T_sync, foreground free) + demand bytes / link GB/s  (ids first)
//! GPU side   g = max(d, ready) + T_gpu_experts                 (hits, loads)
//! CPU side   c = m + CPU expert bytes / host GB/s + T_sync (a streamed layer's round trip)
//! layer end  max(g, c); the loads behind the CPU experts join the background at max(d, c)
//! token      Σ layers + T_head (the output head)
//! ```
//!
//! That is the engine's hybrid step (`cpu_beside_gpu`): the MoE kernel's expert stages are
//! launched, the host computes its experts meanwhile, then the combine. The engine before it
//! computed the CPU experts in resolve(), before the layer's MoE kernel: GPU side
//! g = max(c, m + demand, ready) + T_gpu_experts (`cpu_beside_gpu: false`, printed beside the
//! projection for comparison).
//!
//! Prefetches and demand loads are served in the order they were queued (the foreground). The
//! loads behind CPU experts are background: they move only while the foreground is idle, and a
//! foreground copy waits at most for the background piece on the link (PREFETCH_CHUNK), as
//! `Residency::pump` issues them; what is left at a token's end carries into the next. The
//! model does not make a GPU wait for a background load its layer hits (the engine would issue
//! it at once); that is optimistic only while the background drains within a token. A `serial`
//! machine (the simulator) does everything on one set of cores: T_layer = T_dense + T_sync +
//! T_cpu + T_gpu_experts + all its copies.

use crate::error::{Error, Result};

/// A machine to project for: each constant with where it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    pub what: String,
    /// The GPU's memory.
    pub vram_bytes: u64,
    pub vram_gbps: f64,
    /// Share of the VRAM bandwidth decode kernels reach (assumed).
    pub gpu_efficiency: f64,
    /// Pinned host-to-device copies.
    pub link_gbps: f64,
    /// What the CPU's expert GEMV reads from host memory, all cores.
    pub host_gbps: f64,
    pub cores: usize,
    /// Per layer with CPU experts: h down, output rows up, the join.
    pub sync_s: f64,
    /// One set of cores does everything one after the other: kernels, CPU experts and copies
    /// (the simulator, whose "GPU" kernels and link thread are this CPU's).
    pub serial: bool,
    /// The CPU experts run beside the GPU's (the engine's hybrid step); false: before the
    /// layer's MoE kernel is launched (the engine before the hybrid step), for comparison.
    pub cpu_beside_gpu: bool,
    /// One line per constant: its value and source.
    pub sources: Vec<String>,
}

/// The seed's laptop (the published 21.06 tok/s, FreeToken's ~39 tok/s).
pub fn laptop_4060() -> Target {
    let sources = [
        "VRAM 8 GiB, 256 GB/s: 128-bit GDDR6 at 16 Gbps (fpsbench.com, data-check.eu; anchors.md §6.1)",
        "GPU efficiency 0.6 of 256 GB/s: assumed; anchors.md §6.2 puts the 30B-A3B's 7.9 ms at \
         peak at 10-20 ms realistic (0.4-0.8)",
        "link 11.8 GB/s: measured pinned H2D on this laptop's PCIe 4.0 x8 (FreeToken paper table; \
         anchors.md §6.1)",
        "CPU experts 40 GB/s: 2-channel DDR5-5600 is 89.6 GB/s peak, 60-70 STREAM, ~35 for LLM \
         GEMV (anchors.md §6.1, §6.2c; imp #1356 saturates at 4 threads)",
        "cores 8: assumed (a 4060-laptop CPU has 8 or more; bandwidth saturates at ~4)",
        "sync 60 us per streamed layer (its ids come down; CPU experts' rows go up): ~3 ms for \
         48 CPU-GPU round trips (anchors.md §6.2b, imp #1356)",
    ];
    Target {
        name: "laptop-4060".into(),
        what: "RTX 4060 Laptop 8 GB, PCIe 4.0 x8, 2-channel DDR5-5600".into(),
        vram_bytes: 8 << 30,
        vram_gbps: 256.0,
        gpu_efficiency: 0.6,
        link_gbps: 11.8,
        host_gbps: 40.0,
        cores: 8,
        sync_s: 60e-6,
        serial: false,
        cpu_beside_gpu: true,
        sources: sources.iter().map(|s| s.to_string()).collect(),
    }
}

impl Target {
    /// `laptop-4060`, or a machine given by its speeds:
    /// `custom:gpu=GBPS,link=GBPS,cpu=GBPS[,sync_us=US][,serial]` (GPU efficiency 1; `serial`:
    /// one set of cores does kernels, CPU experts and copies, as in the simulator).
    pub fn by_name(name: &str) -> Result<Target> {
        if name == "laptop-4060" {
            return Ok(laptop_4060());
        }
        let bad = |why: &str| {
            Error::Usage(format!(
                "--target {name}: {why} (want laptop-4060 or \
                 custom:gpu=GBPS,link=GBPS,cpu=GBPS[,sync_us=US][,serial])"
            ))
        };
        let spec = name.strip_prefix("custom:").ok_or_else(|| bad("unknown target"))?;
        let mut t = Target {
            name: name.to_string(),
            what: "a machine given by its speeds".into(),
            vram_bytes: 0,
            vram_gbps: 0.0,
            gpu_efficiency: 1.0,
            link_gbps: 0.0,
            host_gbps: 0.0,
            cores: 0,
            sync_s: 0.0,
            serial: false,
            cpu_beside_gpu: true,
            sources: vec![format!("given on the command line: {spec}")],
        };
        for part in spec.split(',') {
            if part == "serial" {
                t.serial = true;
                continue;
            }
            let (k, v) = part.split_once('=').ok_or_else(|| bad(part))?;
            let v: f64 = v
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(part))?;
            match k {
                "gpu" => t.vram_gbps = v,
                "link" => t.link_gbps = v,
                "cpu" => t.host_gbps = v,
                "sync_us" => t.sync_s = v * 1e-6,
                _ => return Err(bad(part)),
            }
        }
        if t.vram_gbps <= 0.0 || t.link_gbps <= 0.0 || t.host_gbps <= 0.0 {
            return Err(bad("gpu, link and cpu speeds are required and positive"));
        }
        Ok(t)
    }

    /// A machine given by its speeds (not a real one: its projection is no laptop claim).
    pub fn is_custom(&self) -> bool {
        self.name.starts_with("custom:")
    }

    /// Seconds to read `bytes` on the GPU at the assumed efficiency.
    pub fn gpu_s(&self, bytes: f64) -> f64 {
        bytes / (self.vram_gbps * 1e9 * self.gpu_efficiency)
    }

    pub fn link_s(&self, bytes: f64) -> f64 {
        bytes / (self.link_gbps * 1e9)
    }

    pub fn cpu_s(&self, bytes: f64) -> f64 {
        bytes / (self.host_gbps * 1e9)
    }

    /// The miss policy's costs on this machine.
    pub fn costs(&self) -> super::decide::Costs {
        super::decide::Costs {
            link_bytes_per_s: self.link_gbps * 1e9,
            cpu_s_per_byte: 1.0 / (self.host_gbps * 1e9),
            gpu_s_per_byte: self.gpu_s(1.0),
            serial: self.serial,
        }
    }
}

/// What one layer of one token did, in bytes.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct LayerWork {
    /// Dense weights of the layer plus its KV cache (or recurrent state) at this position.
    pub dense: f64,
    /// Experts the GPU computes (hits and demand loads).
    pub gpu_experts: f64,
    pub demand: f64,
    pub cpu_experts: f64,
    /// The layer's experts were resolved on the host (streaming): it pays the sync.
    pub resolved: bool,
    /// Prefetched for this layer (issued when the previous layer ended).
    pub ahead: f64,
    /// Loaded behind this layer's CPU experts.
    pub behind: f64,
}

/// Seconds of a projection, summed over tokens; the breakdown the summary prints.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Breakdown {
    pub tokens: usize,
    /// The GPU's own reading: dense, experts, head.
    pub gpu_s: f64,
    pub cpu_s: f64,
    pub sync_s: f64,
    /// Time the GPU waited for the link (demand loads, late prefetches) beyond what the CPU
    /// side took anyway.
    pub link_wait_s: f64,
    /// Seconds the link was busy.
    pub link_busy_s: f64,
    /// The model's total.
    pub total_s: f64,
    /// The link, carried from token to token (loads behind the last layers drain in the next
    /// token's idle time).
    link: Link,
}

/// The host link in the model: the copies the GPU waits for (prefetch, demand loads) in the
/// order they were queued; the loads behind CPU experts in the background, in the link's idle
/// time, a foreground copy waiting at most for the background piece on the link
/// (`Residency::pump`).
#[derive(Copy, Clone, Debug, Default, PartialEq)]
struct Link {
    /// When the foreground copies queued so far are done.
    free: f64,
    /// The time up to which the background's progress is counted.
    at: f64,
    /// Seconds of background copies left.
    backlog: f64,
}

impl Link {
    /// The background moves in the idle time up to `to`.
    fn drain(&mut self, to: f64) {
        let from = self.at.max(self.free);
        if to > from {
            self.backlog = (self.backlog - (to - from)).max(0.0);
        }
        self.at = self.at.max(to);
    }

    /// A foreground copy of `secs` queued at `at` (after the foreground copies before it, or
    /// one background piece of `piece` seconds if one is on the link): when it is done.
    fn foreground(&mut self, at: f64, secs: f64, piece: f64) -> f64 {
        self.drain(at);
        // A background piece holds the link only if no foreground copy does.
        let wait = if at >= self.free { piece.min(self.backlog) } else { 0.0 };
        self.backlog -= wait;
        self.free = at.max(self.free) + wait + secs;
        self.at = self.free;
        self.free
    }

    fn background(&mut self, at: f64, secs: f64) {
        self.drain(at);
        self.backlog += secs;
    }

    /// The next token starts at `end`: times from there.
    fn shift(&mut self, end: f64) {
        self.drain(end);
        (self.free, self.at) = ((self.free - end).max(0.0), (self.at - end).max(0.0));
    }
}

impl Breakdown {
    pub fn tok_s(&self) -> f64 {
        self.tokens as f64 / self.total_s.max(1e-12)
    }

    /// Milliseconds per token of a part.
    pub fn ms(&self, part: f64) -> f64 {
        1e3 * part / self.tokens.max(1) as f64
    }

    /// Add one token: its layers' work in order and its head bytes.
    pub fn add_token(&mut self, t: &Target, layers: &[LayerWork], head: f64) {
        let mut now = 0.0f64;
        for w in layers {
            let link = t.link_s(w.ahead + w.demand + w.behind);
            // A layer that resolves on the host (streaming) pays one round trip: its ids come
            // down, and the CPU experts' rows go up.
            let sync = if w.resolved { t.sync_s } else { 0.0 };
            let (dense, gpu, cpu) =
                (t.gpu_s(w.dense), t.gpu_s(w.gpu_experts), t.cpu_s(w.cpu_experts));
            let (end, compute_end) = if t.serial {
                // One set of cores does everything, copies included (the simulator: its link
                // thread copies with memcpy beside kernels that use every core).
                let end = now + dense + sync + cpu + gpu + link;
                (end, end - link)
            } else {
                // The link: the layer's prefetch (queued when the previous layer ended), then
                // its demand loads (queued once its ids are on the host), in order; what loads
                // behind its CPU experts in the background.
                let piece = t.link_s(super::residency::PREFETCH_CHUNK as f64);
                let link = &mut self.link;
                let ready = if w.ahead > 0.0 {
                    link.foreground(now, t.link_s(w.ahead), piece)
                } else {
                    now
                };
                let moe = now + dense;
                let demand_done = if w.demand > 0.0 {
                    link.foreground(moe + sync, t.link_s(w.demand), piece)
                } else {
                    moe + sync
                };
                let cpu_end = moe + cpu + sync;
                if w.behind > 0.0 {
                    link.background(demand_done.max(cpu_end), t.link_s(w.behind));
                }
                if t.cpu_beside_gpu {
                    let gpu_end = demand_done.max(ready) + gpu;
                    // Without the link the GPU side would end at m + T_sync + T_gpu_experts.
                    (gpu_end.max(cpu_end), (moe + sync + gpu).max(cpu_end))
                } else {
                    // Before the hybrid step: the CPU experts (while the copies fly), then the kernel.
                    (cpu_end.max(demand_done).max(ready) + gpu, cpu_end + gpu)
                }
            };
            // The wait is what the link added beyond the compute.
            self.link_wait_s += end - compute_end;
            self.gpu_s += dense + gpu;
            self.cpu_s += cpu;
            self.sync_s += sync;
            self.link_busy_s += link;
            now = end;
        }
        now += t.gpu_s(head);
        self.link.shift(now);
        self.gpu_s += t.gpu_s(head);
        self.total_s += now;
        self.tokens += 1;
    }
}
