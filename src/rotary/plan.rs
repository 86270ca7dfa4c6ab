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
    /// Bytes of one slot: the largest expert (gate + up + down) of any layer, aligned.
    pub slot_bytes: u64,
    pub n_slots: usize,
    pub n_experts_total: usize,
    pub n_ctx: usize,
}

impl Plan {
    /// Plan a budget. `dense_bytes` are the resident tensors' bytes (each aligned), `slot_bytes`
    /// one expert's, `overhead_bytes` the device's own (CUDA context; 0 for the simulator).
    pub fn new(
        c: &ModelConfig,
        n_ctx: usize,
        dense_bytes: u64,
        slot_bytes: u64,
        overhead_bytes: u64,
        budget_bytes: Option<u64>,
    ) -> Result<Plan> {
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
            slot_bytes: align(slot_bytes),
            n_slots: n_experts_total,
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
            plan.n_slots = (((budget - fixed) / plan.slot_bytes) as usize).min(n_experts_total);
        }
        Ok(plan)
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
        self.n_slots as u64 * self.slot_bytes
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
        writeln!(
            f,
            "  expert cache          {:>12}  = {} slots of {} for {} experts ({pct:.1}%)",
            hb(self.expert_cache_bytes()),
            self.n_slots,
            hb(self.slot_bytes),
            self.n_experts_total
        )?;
        writeln!(f, "  total                 {:>12}", hb(self.total_bytes()))
    }
}
