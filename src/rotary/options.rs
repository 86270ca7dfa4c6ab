//! What a rotary session is configured with (typed: the CLI parses flags into these) and what
//! it measured.

use super::cache::{Allocation, Policy};

/// Where missed experts are computed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum MoePolicy {
    /// Always load them into VRAM.
    Gpu,
    /// Always compute them on the CPU (hits still run on the device).
    Cpu,
    /// Per miss, the side the cost model predicts ends the layer first (the GPU's copies and
    /// kernel, or the CPU beside it: both sides work at once).
    Auto,
}

/// Where the copy engine reads experts from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PinMode {
    /// Every expert copied once into pinned host memory, packed (gate|up|down): one copy each.
    All,
    /// A bounded ring of pinned staging buffers filled from the file mapping by loader threads.
    Ring,
    /// All when it fits comfortably in available RAM, else Ring.
    Auto,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub policy: Policy,
    pub alloc: Allocation,
    pub prefetch: bool,
    /// Copy experts that ran on the CPU into the cache behind the compute (admission on miss).
    pub load_behind: bool,
    pub moe_policy: MoePolicy,
    pub pin: PinMode,
    /// The host link's speed before any copy was measured (cost model), GB/s.
    pub link_gbps: f64,
    pub threads: Option<usize>,
    /// At most this many expert slots, whatever the budget leaves (experiments and tests that
    /// need an exact cache size on a device whose charges they cannot predict).
    pub max_slots: Option<usize>,
    /// The miss policy's link and CPU speeds (a `--target`'s), instead of this machine's
    /// measured ones.
    pub costs: Option<super::decide::Costs>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            policy: Policy::Lru,
            alloc: Allocation::Global,
            prefetch: true,
            load_behind: true,
            moe_policy: MoePolicy::Gpu,
            pin: PinMode::Auto,
            link_gbps: 12.0,
            threads: None,
            max_slots: None,
            costs: None,
        }
    }
}

/// What a run measured (`rotary logits --json` "stats", and the end-of-run line).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub tokens: u64,
    pub hits: u64,
    pub misses: u64,
    pub per_layer_hits: Vec<u64>,
    pub per_layer_misses: Vec<u64>,
    pub h2d_bytes: u64,
    pub link_busy_seconds: f64,
    pub stall_seconds: f64,
    pub prefetch_predicted: u64,
    pub prefetch_correct: u64,
    pub prefetch_loads: u64,
    /// Experts computed on the CPU and then copied into the cache behind the compute.
    pub behind_loads: u64,
    pub cpu_experts: u64,
    pub gpu_experts: u64,
    pub peak_vram_bytes: u64,
    pub vram_budget_bytes: Option<u64>,
    pub link_peak_gbps: Option<f64>,
    pub n_layers: u64,
}

impl Stats {
    /// The counters accumulated since `before` (peaks and settings stay as they are now).
    pub fn since(&self, before: &Stats) -> Stats {
        let mut s = self.clone();
        s.tokens -= before.tokens;
        s.hits -= before.hits;
        s.misses -= before.misses;
        s.per_layer_hits.iter_mut().zip(&before.per_layer_hits).for_each(|(a, b)| *a -= b);
        s.per_layer_misses.iter_mut().zip(&before.per_layer_misses).for_each(|(a, b)| *a -= b);
        s.h2d_bytes -= before.h2d_bytes;
        s.link_busy_seconds -= before.link_busy_seconds;
        s.stall_seconds -= before.stall_seconds;
        s.prefetch_predicted -= before.prefetch_predicted;
        s.prefetch_correct -= before.prefetch_correct;
        s.prefetch_loads -= before.prefetch_loads;
        s.behind_loads -= before.behind_loads;
        s.cpu_experts -= before.cpu_experts;
        s.gpu_experts -= before.gpu_experts;
        s
    }

    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
    pub fn misses_per_layer_token(&self) -> f64 {
        self.misses as f64 / (self.n_layers * self.tokens).max(1) as f64
    }
    pub fn h2d_bytes_per_token(&self) -> f64 {
        self.h2d_bytes as f64 / self.tokens.max(1) as f64
    }
    /// Achieved link speed while it was busy.
    pub fn link_gbps(&self) -> f64 {
        if self.link_busy_seconds > 0.0 {
            self.h2d_bytes as f64 / self.link_busy_seconds / 1e9
        } else {
            0.0
        }
    }
    pub fn prefetch_recall(&self) -> Option<f64> {
        (self.prefetch_predicted > 0)
            .then(|| self.prefetch_correct as f64 / self.prefetch_predicted as f64)
    }
    pub fn cpu_expert_share(&self) -> f64 {
        self.cpu_experts as f64 / (self.cpu_experts + self.gpu_experts).max(1) as f64
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peak_vram_bytes": self.peak_vram_bytes,
            "vram_budget_bytes": self.vram_budget_bytes,
            "hit_rate": self.hit_rate(),
            "hit_rate_per_layer": self.per_layer_hits.iter().zip(&self.per_layer_misses)
                .map(|(&h, &m)| h as f64 / (h + m).max(1) as f64).collect::<Vec<_>>(),
            "misses_per_layer_token": self.misses_per_layer_token(),
            "h2d_bytes_per_token": self.h2d_bytes_per_token(),
            "link_gbps": self.link_gbps(),
            "link_peak_gbps": self.link_peak_gbps,
            "stall_seconds": self.stall_seconds,
            "prefetch_recall": self.prefetch_recall(),
            "prefetch_loads": self.prefetch_loads,
            "behind_loads": self.behind_loads,
            "cpu_expert_share": self.cpu_expert_share(),
            "tokens": self.tokens,
        })
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = self.vram_budget_bytes.map_or("none".into(), crate::units::human_bytes);
        write!(
            f,
            "experts: hit {:.1}%, {:.2} misses/layer/token, {:.2} MB H2D/token at {:.1} GB/s \
             (peak {}), prefetch recall {}, CPU share {:.1}% | peak VRAM {} of budget {budget}",
            100.0 * self.hit_rate(),
            self.misses_per_layer_token(),
            self.h2d_bytes_per_token() / 1e6,
            self.link_gbps(),
            self.link_peak_gbps.map_or("?".into(), |g| format!("{g:.1}")),
            self.prefetch_recall().map_or("-".into(), |r| format!("{:.1}%", 100.0 * r)),
            100.0 * self.cpu_expert_share(),
            crate::units::human_bytes(self.peak_vram_bytes),
        )
    }
}
