//! Compile-time facts about the GPU kernels of this build: ptxas's resource report for every
//! kernel instance and SM (registers, static shared memory, stack, spills), kept by build.rs
//! from the nvcc build, and the theoretical occupancy each gives on its SM (`rotary kernels`).
//! The emulated and CPU-only builds compile no SASS: their report is empty.

/// One kernel instance compiled for one SM, as ptxas reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelResources {
    pub sm: u32,
    /// Demangled when the build machine had c++filt:
    /// `void gemv_kernel<QuantQ4_K, 8, 1>(RotaryGemv)`.
    pub name: String,
    pub registers: u32,
    pub smem_static_bytes: u64,
    pub stack_bytes: u64,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
}

impl KernelResources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }

    /// The kernel's base name (`gemv_kernel`), without return type, template arguments or
    /// parameters.
    pub fn base_name(&self) -> &str {
        let head = self.name.split(['<', '(']).next().unwrap_or(&self.name);
        head.rsplit(' ').next().unwrap_or(head)
    }

    /// Threads per block as launched (csrc/ launchers): WARPS * 32 for the templated
    /// instances (their second template argument after the format), else the launcher's
    /// constant (the largest, where it varies). None for a kernel this table does not know.
    pub fn block_threads(&self) -> Option<u32> {
        let base = self.base_name();
        if matches!(base, "gemv_kernel" | "moe_pair_kernel" | "moe_grouped_kernel") {
            // WARPS is the first integer among the top-level template arguments (the format
            // may itself be a template, the MoE stage is an enum cast).
            return template_args(&self.name)
                .iter()
                .find_map(|a| a.parse::<u32>().ok())
                .map(|w| w * 32);
        }
        Some(match base {
            "embed_kernel" | "gdn_conv_kernel" | "gdn_rule_kernel" | "topk_moe_kernel"
            | "attention_kernel" | "gated_norm_kernel" => 128,
            "rope_neox_kernel" => 64,
            "rmsnorm_kernel" | "kv_store_kernel" | "add_kernel" | "split_gate_kernel"
            | "sigmoid_mul_kernel" | "sigmoid_kernel" | "gdn_gates_kernel" | "moe_group_kernel"
            | "moe_combine_kernel" => 256,
            _ => return None,
        })
    }

    /// Dynamic shared memory per block at the largest shape the launcher accepts.
    pub fn dynamic_smem_bytes(&self) -> u64 {
        // gdn_rule: the state slice [head_k, 32] + q, k + 2 partial sums [4, 32], f32, at
        // head_k = ROTARY_MAX_GDN_HEAD_K (256).
        if self.base_name() == "gdn_rule_kernel" {
            4 * (256 * 32 + 2 * 256 + 2 * 4 * 32)
        } else {
            0
        }
    }
}

/// The top-level template arguments of `name<...>` ("QuantHalf<(RotaryQuant)1, F16Bits>", "4",
/// "8"), trimmed.
fn template_args(name: &str) -> Vec<String> {
    let Some(open) = name.find('<') else { return Vec::new() };
    let (mut depth, mut args, mut cur) = (0usize, Vec::new(), String::new());
    for ch in name[open + 1..].chars() {
        match ch {
            '<' => depth += 1,
            '>' if depth == 0 => break,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    args.push(cur.trim().to_string());
    args
}

/// What one SM offers (CUDA C Programming Guide, "Compute Capabilities", table of technical
/// specifications): sm_89 (Ada, the RTX 40 laptops) and sm_90 (Hopper, H100/H200).
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    pub max_warps: u32,
    pub max_blocks: u32,
    pub registers: u32,
    pub smem_bytes: u64,
    /// Shared memory the system reserves per resident block.
    pub smem_reserved_per_block: u64,
}

pub fn sm_limits(sm: u32) -> Option<SmLimits> {
    match sm {
        89 => Some(SmLimits {
            max_warps: 48,
            max_blocks: 24,
            registers: 65536,
            smem_bytes: 100 << 10,
            smem_reserved_per_block: 1024,
        }),
        90 => Some(SmLimits {
            max_warps: 64,
            max_blocks: 32,
            registers: 65536,
            smem_bytes: 228 << 10,
            smem_reserved_per_block: 1024,
        }),
        _ => None,
    }
}

/// Resident blocks per SM and the theoretical occupancy (resident warps / max warps) of a
/// kernel with `threads` per block: the least of the warp, block, register and shared-memory
/// limits. Registers are allocated per warp in units of 256.
pub fn occupancy(k: &KernelResources, threads: u32, lim: &SmLimits) -> (u32, f64) {
    let warps = threads.div_ceil(32).max(1);
    let by_warps = lim.max_warps / warps;
    let regs_per_warp = (k.registers.max(1) * 32).div_ceil(256) * 256;
    let by_regs = (lim.registers / regs_per_warp) / warps;
    let smem = k.smem_static_bytes + k.dynamic_smem_bytes();
    let by_smem = if smem == 0 {
        u32::MAX
    } else {
        (lim.smem_bytes / (smem + lim.smem_reserved_per_block)) as u32
    };
    let blocks = by_warps.min(by_regs).min(by_smem).min(lim.max_blocks);
    (blocks, f64::from(blocks * warps) / f64::from(lim.max_warps))
}

/// The report build.rs kept (empty for the emulated and CPU-only builds).
pub fn report() -> Vec<KernelResources> {
    parse_report(include_str!(env!("ROTARY_KERNEL_REPORT")))
}

/// Rows of `sm \t name \t registers \t smem \t stack \t spill stores \t spill loads`
/// ("sm_89" or "89"); malformed rows are skipped.
pub fn parse_report(tsv: &str) -> Vec<KernelResources> {
    tsv.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 7 {
                return None;
            }
            let n = |i: usize| f[i].trim().parse::<u64>().ok();
            Some(KernelResources {
                sm: f[0].trim().trim_start_matches("sm_").parse().ok()?,
                name: f[1].to_string(),
                registers: n(2)? as u32,
                smem_static_bytes: n(3)?,
                stack_bytes: n(4)?,
                spill_store_bytes: n(5)?,
                spill_load_bytes: n(6)?,
            })
        })
        .collect()
}

/// The kernels whose spills CI refuses: the products and attention, where a spill costs
/// bandwidth on every token.
pub fn is_hot(k: &KernelResources) -> bool {
    matches!(
        k.base_name(),
        "gemv_kernel" | "moe_pair_kernel" | "moe_grouped_kernel" | "attention_kernel"
    )
}
