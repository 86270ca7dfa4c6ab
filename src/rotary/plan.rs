//! The VRAM plan: what must be resident (dense weights, KV cache, workspaces, the device's own
//! overhead), then how many expert slots the rest of the budget holds. The engine allocates
//! exactly these amounts; `rotary inspect --vram-budget` prints the same plan.

use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::units::human_bytes;

/// Tokens per micro-batch: prompts run in slices of this many (workspaces are sized for it).
pub const UBATCH: usize = 64;
/// Rows of logits computed per output projection (the logits workspace holds this many).
pub const LOGITS_ROWS: usize = 8;
/// Positions per KV page.
pub const PAGE_SIZE: usize = 16;
/// Device allocations are rounded up to this (as the simulator does; cudaMalloc aligns too).
pub const ALIGN: u64 = 256;

/// Device memory a CUDA device keeps free for what the first launches load lazily (kernel
/// code, CUDA's default since 12.2, in 2 MiB pages) and for local memory: the plan reserves
/// it, and the expert cache is sized from what cudaMemGetInfo says after every other
/// allocation. The forward loads about 20 kernel instances of tens of KiB each, and the build
/// refuses spills (tests/gen.rs), so 32 MiB is several times what they need.
pub const LAUNCH_RESERVE: u64 = 32 << 20;

pub fn align(bytes: u64) -> u64 {
    bytes.max(1).div_ceil(ALIGN) * ALIGN
}

/// Device bytes of the dense (resident) tensors, given what each takes on the device: every
/// allocation rounded to ALIGN. The plan, the weight upload (src/rotary/upload.rs) and
/// `rotary inspect` all count with this.
pub fn dense_bytes(tensors: impl IntoIterator<Item = u64>) -> u64 {
    tensors.into_iter().map(align).sum()
}

/// Widths of qwen35moe's extra workspaces (all 0 for qwen3moe).
pub struct Qwen35Scratch {
    pub gated: bool,
    pub channels: usize,
    pub inner: usize,
    pub n_v: usize,
}

impl Qwen35Scratch {
    pub fn of(c: &ModelConfig) -> Qwen35Scratch {
        match &c.ssm {
            None => Qwen35Scratch { gated: false, channels: 0, inner: 0, n_v: 0 },
            Some(s) => Qwen35Scratch {
                gated: true,
                channels: (2 * s.n_k_heads * s.state_size + s.inner_size) as usize,
                inner: s.inner_size as usize,
                n_v: s.n_v_heads as usize,
            },
        }
    }
}

/// Row width of the MoE activation workspace [UBATCH * k, width]: the routed experts' FFN, or
/// wider when the shared expert's FFN (one row per token) would not fit in k rows.
pub fn act_ffn(c: &ModelConfig) -> u64 {
    c.expert_ffn_dim.max(c.shared_ffn_dim.div_ceil(c.n_experts_used))
}

/// Bytes of the per-micro-batch workspaces (the engine's Scratch, buffer by buffer).
pub fn scratch_bytes(c: &ModelConfig) -> u64 {
    let u = UBATCH as u64;
    let (dim, q, kv) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let (e, k, ffn) = (c.n_experts, c.n_experts_used, act_ffn(c));
    let g = Qwen35Scratch::of(c);
    let (gq, ch, inner, nv) =
        (if g.gated { q } else { 0 }, g.channels as u64, g.inner as u64, g.n_v as u64);
    let f32s = [
        u * dim,                        // x
        u * dim,                        // h
        u * q,                          // q
        u * kv,                         // k
        u * kv,                         // v
        u * q,                          // o
        u * e,                          // router logits
        u * 2 * k,                      // expert weights (true + predicted)
        u * k * ffn,                    // expert activations
        u * k * dim,                    // expert outputs
        LOGITS_ROWS as u64 * c.n_vocab, // logits
        (u * 2 * gq).max(1),            // gated attention q|gate
        (u * gq).max(1),                // gate
        (u * ch).max(1),                // DeltaNet q|k|v
        (u * inner).max(1),             // DeltaNet z
        (u * nv).max(1),                // DeltaNet beta
        (u * nv).max(1),                // DeltaNet decay
        (u * inner).max(1),             // DeltaNet o
    ];
    let i32s = [u * 2 * k, e + 1, u * k]; // ids (true + predicted), group offsets, pairs
    f32s.iter().chain(&i32s).map(|n| align(n * 4)).sum()
}

/// Bytes of the paged f16 KV cache for `n_ctx` positions (page table included), plus the
/// fp32 conv and recurrent state of the Gated DeltaNet layers (qwen35moe).
pub fn kv_bytes(c: &ModelConfig, n_ctx: usize) -> u64 {
    let n_pages = n_ctx.div_ceil(PAGE_SIZE) as u64;
    let per_layer = align(n_pages * PAGE_SIZE as u64 * c.n_kv_heads * c.head_dim * 2);
    let n_attn = (0..c.n_layers).filter(|&l| c.is_full_attention(l)).count() as u64;
    let recurrent = match &c.ssm {
        None => 0,
        Some(s) => {
            let channels = 2 * s.n_k_heads * s.state_size + s.inner_size;
            let conv = align((s.conv_kernel - 1) * channels * 4);
            let state = align(s.n_v_heads * s.state_size * s.state_size * 4);
            (c.n_layers - n_attn) * (conv + state)
        }
    };
    2 * n_attn * per_layer + align(n_pages * 4) + recurrent
}

/// Expert slots of one size: the layers whose experts take `slot_bytes` (aligned), and how
/// many slots they share. A file with one type for every expert has one class; a "dynamic"
/// quant (Q4_K_M's Q6_K ffn_down in some layers, IQ4_XS/Q4_K/Q5_K mixes) has a few. Slots sized
/// for the largest expert would waste the difference in every other layer.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotClass {
    pub slot_bytes: u64,
    pub layers: Vec<usize>,
    pub n_slots: usize,
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// None: no budget (everything resident if the device holds it).
    pub budget_bytes: Option<u64>,
    pub dense_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    /// Per-layer pointer tables of the experts (3 × n_experts addresses) and small vectors.
    pub tables_bytes: u64,
    pub overhead_bytes: u64,
    /// Bytes of the largest slot: the largest expert (gate + up + down) of any layer, aligned
    /// (the one slot size when every layer's experts have the same size).
    pub slot_bytes: u64,
    /// The slots by size, in the cache's order (class c's slots follow class c − 1's).
    pub classes: Vec<SlotClass>,
    /// Σ classes' n_slots.
    pub n_slots: usize,
    /// One expert's aligned bytes per layer (what the classes are made from).
    layer_slot_bytes: Vec<u64>,
    /// Experts a token uses per layer: the fewest slots a class may have.
    k: usize,
    pub n_experts_total: usize,
    pub n_ctx: usize,
}

impl Plan {
    /// Plan a budget. `dense_bytes` are the resident tensors' bytes (each aligned),
    /// `expert_bytes[l]` one expert's of layer l, `overhead_bytes` the device's own (CUDA
    /// context; 0 for the simulator).
    pub fn new(
        c: &ModelConfig,
        n_ctx: usize,
        dense_bytes: u64,
        expert_bytes: &[u64],
        overhead_bytes: u64,
        budget_bytes: Option<u64>,
    ) -> Result<Plan> {
        assert_eq!(expert_bytes.len() as u64, c.n_layers, "one expert size per layer");
        let n_experts_total = (c.n_layers * c.n_experts) as usize;
        // Per layer: the expert pointer table, and qwen35moe's shared-expert table and ids.
        let shared = if c.shared_ffn_dim > 0 { align(3 * 8) + align(UBATCH as u64 * 4) } else { 0 };
        let tables_bytes =
            c.n_layers * (align(3 * c.n_experts * 8) + shared) + 2 * align(c.head_dim * 4);
        let mut plan = Plan {
            budget_bytes,
            dense_bytes,
            kv_bytes: kv_bytes(c, n_ctx),
            scratch_bytes: scratch_bytes(c),
            tables_bytes,
            overhead_bytes,
            slot_bytes: expert_bytes.iter().map(|&b| align(b)).max().unwrap_or(0),
            classes: size_classes(expert_bytes, c.n_experts as usize),
            n_slots: n_experts_total,
            layer_slot_bytes: expert_bytes.iter().map(|&b| align(b)).collect(),
            k: c.n_experts_used as usize,
            n_experts_total,
            n_ctx,
        };
        if let Some(budget) = budget_bytes {
            let fixed = plan.fixed_bytes();
            if fixed > budget {
                return Err(Error::Usage(format!(
                    "VRAM budget {} is too small: dense weights {} + KV cache {} ({} tokens) + \
                     workspaces {} + device overhead {} need {} before any expert is cached",
                    human_bytes(budget),
                    human_bytes(plan.dense_bytes),
                    human_bytes(plan.kv_bytes),
                    n_ctx,
                    human_bytes(plan.scratch_bytes + plan.tables_bytes),
                    human_bytes(overhead_bytes),
                    human_bytes(fixed)
                )));
            }
            plan.fit_cache(budget - fixed, usize::MAX);
        }
        Ok(plan)
    }

    /// Give the expert cache at most `bytes` and `max_slots` slots, every layer the same share
    /// of its experts as far as whole slots allow: slots go one at a time to the class whose
    /// layers hold the fewest per layer, while they fit. With one class: ⌊bytes / slot⌋. When
    /// so few slots fit that a class would hold fewer than one layer's experts (a layer could
    /// not take a whole micro-batch's, as one shared pool lets it: fewer than one
    /// layer's experts), every layer shares one pool of the largest size instead.
    pub fn fit_cache(&mut self, bytes: u64, max_slots: usize) {
        let n_experts = self.n_experts_total / self.layer_slot_bytes.len().max(1);
        self.classes = size_classes(&self.layer_slot_bytes, n_experts);
        self.fill_classes(bytes, max_slots, n_experts);
        // A class must hold a whole layer's experts: a shared pool lets one layer take every
        // slot for a micro-batch that needs them all, and classes should not take that away.
        if self.classes.len() > 1 && self.classes.iter().any(|c| c.n_slots < n_experts.max(self.k))
        {
            let layers = (0..self.layer_slot_bytes.len()).collect();
            self.classes = vec![SlotClass { slot_bytes: self.slot_bytes, layers, n_slots: 0 }];
            self.fill_classes(bytes, max_slots, n_experts);
        }
    }

    fn fill_classes(&mut self, bytes: u64, max_slots: usize, n_experts: usize) {
        self.classes.iter_mut().for_each(|k| k.n_slots = 0);
        let (mut left, mut total) = (bytes, 0usize);
        while total < max_slots {
            let share = |k: &SlotClass| k.n_slots as f64 / k.layers.len() as f64;
            let open = self.classes.iter_mut().filter(|k| {
                k.slot_bytes <= left && k.n_slots < k.layers.len() * n_experts && k.slot_bytes > 0
            });
            let Some(k) = open.min_by(|a, b| share(a).total_cmp(&share(b))) else { break };
            k.n_slots += 1;
            left -= k.slot_bytes;
            total += 1;
        }
        self.n_slots = total;
    }

    /// The bytes the budget leaves the expert cache (unbounded without a budget).
    pub fn cache_room(&self) -> u64 {
        self.budget_bytes.map_or(u64::MAX, |b| b.saturating_sub(self.fixed_bytes()))
    }

    /// Cache bytes that give every layer the fraction `f` of its experts (rounded up).
    pub fn cache_bytes_for(&self, f: f64) -> u64 {
        let n_experts = self.n_experts_total / self.layer_slot_bytes.len().max(1);
        let slots = |k: &SlotClass| (f * (k.layers.len() * n_experts) as f64).ceil() as u64;
        self.classes.iter().map(|k| slots(k) * k.slot_bytes).sum()
    }

    /// The first slot of each class and its address offset in the cache.
    pub fn class_starts(&self) -> Vec<(usize, u64)> {
        let (mut slot, mut off) = (0usize, 0u64);
        self.classes
            .iter()
            .map(|k| {
                let start = (slot, off);
                slot += k.n_slots;
                off += k.n_slots as u64 * k.slot_bytes;
                start
            })
            .collect()
    }

    /// Everything but the expert slots.
    pub fn fixed_bytes(&self) -> u64 {
        self.dense_bytes
            + self.kv_bytes
            + self.scratch_bytes
            + self.tables_bytes
            + self.overhead_bytes
    }

    pub fn expert_cache_bytes(&self) -> u64 {
        self.classes.iter().map(|k| k.n_slots as u64 * k.slot_bytes).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.fixed_bytes() + self.expert_cache_bytes()
    }

    /// Whether every expert has a slot (no streaming).
    pub fn all_resident(&self) -> bool {
        self.n_slots >= self.n_experts_total
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hb = human_bytes;
        let budget = self.budget_bytes.map_or("none".into(), hb);
        writeln!(f, "VRAM plan (budget {budget}, context {} tokens):", self.n_ctx)?;
        writeln!(f, "  dense weights         {:>12}", hb(self.dense_bytes))?;
        writeln!(f, "  KV cache + state      {:>12}", hb(self.kv_bytes))?;
        writeln!(f, "  workspaces + tables   {:>12}", hb(self.scratch_bytes + self.tables_bytes))?;
        writeln!(f, "  device overhead       {:>12}", hb(self.overhead_bytes))?;
        let pct = 100.0 * self.n_slots as f64 / self.n_experts_total.max(1) as f64;
        let sizes: Vec<String> = self
            .classes
            .iter()
            .map(|k| format!("{} of {} ({} layers)", k.n_slots, hb(k.slot_bytes), k.layers.len()))
            .collect();
        let sizes = if self.classes.len() == 1 {
            format!("{} slots of {}", self.n_slots, hb(self.slot_bytes))
        } else {
            format!("{} slots: {}", self.n_slots, sizes.join(", "))
        };
        writeln!(
            f,
            "  expert cache          {:>12}  = {sizes} for {} experts ({pct:.1}%)",
            hb(self.expert_cache_bytes()),
            self.n_experts_total
        )?;
        writeln!(f, "  total                 {:>12}", hb(self.total_bytes()))
    }
}

/// The layers grouped by their experts' aligned size, in order of first appearance; every class
/// starts with all of its experts' slots (no budget).
fn size_classes(expert_bytes: &[u64], n_experts: usize) -> Vec<SlotClass> {
    let mut classes: Vec<SlotClass> = Vec::new();
    for (l, &b) in expert_bytes.iter().enumerate() {
        let slot_bytes = align(b);
        match classes.iter_mut().find(|k| k.slot_bytes == slot_bytes) {
            Some(k) => k.layers.push(l),
            None => classes.push(SlotClass { slot_bytes, layers: vec![l], n_slots: 0 }),
        }
    }
    classes.iter_mut().for_each(|k| k.n_slots = k.layers.len() * n_experts);
    classes
}
