//! `rotary inspect`: what a model file holds and what it costs to run: architecture,
//! hyperparameters, tensors by type, dense vs expert bytes, expert bytes read per token, and
//! (with a VRAM budget) how much is left for the expert cache.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::error::{Error, Result};
use crate::format::gguf::{Gguf, Value};
use crate::format::hf::HfDir;
use crate::model::{ModelConfig, TensorDesc, TensorRole};
use crate::units::human_bytes;

/// Bytes a CUDA context and the cuBLAS-free kernel images take before any allocation of ours
/// (typical for a driver 5xx context on Ada/Hopper; the rotary issue measures it instead).
pub const CUDA_CONTEXT_BYTES_ESTIMATE: u64 = 320 << 20;
/// Context length assumed for the KV-cache line of the budget plan.
pub const PLAN_CONTEXT: u64 = 4096;

#[derive(Clone, Debug, Default)]
pub struct TypeCount {
    pub tensors: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub path: String,
    pub file_bytes: u64,
    /// "GGUF v3, alignment 32, 27 keys" or "HF directory, 2 safetensors shard(s)".
    pub format: String,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub config: Option<ModelConfig>,
    /// Why the file is not runnable, when it is not (unsupported arch, bad tensors).
    pub problem: Option<String>,
    /// Other things a user should know (remote code ignored, ...).
    pub notes: Vec<String>,
    pub by_type: BTreeMap<String, TypeCount>,
    pub n_tensors: usize,
    pub tensor_bytes: u64,
    pub expert_bytes: u64,
    pub embedding_bytes: u64,
    pub output_bytes: u64,
    /// Routed expert bytes read per token with no cache (top-k of every layer).
    pub expert_bytes_per_token: u64,
    /// Bytes of one expert (gate + up + down), averaged over layers.
    pub expert_bytes_avg: u64,
    /// With --vram-budget: the rotary's plan (the same numbers the engine allocates).
    pub plan: Option<crate::rotary::plan::Plan>,
    /// Resident tensors' bytes, each rounded to the device allocation granularity.
    pub dense_aligned_bytes: u64,
    /// The largest expert (gate + up + down) of any layer: one cache slot.
    /// One expert's bytes (gate + up + down) per layer.
    pub layer_expert_bytes: Vec<u64>,
}

/// One tensor as the report sees it: name, type name, bytes.
struct TensorEntry {
    name: String,
    ty: String,
    n_bytes: u64,
}

impl Report {
    /// Report on a GGUF file.
    pub fn new(g: &Gguf, budget_bytes: Option<u64>) -> Result<Report> {
        let h = &g.header;
        let tensors = h.tensors.iter().map(|t| TensorEntry {
            name: t.name.clone(),
            ty: t.ty.name().to_string(),
            n_bytes: t.n_bytes,
        });
        let checked = ModelConfig::from_gguf(h)
            .and_then(|c| c.check_tensors(h).map(|_| (c.tensor_table(), c)));
        let format =
            format!("GGUF v{}, alignment {}, {} keys", h.version, h.alignment, h.kvs.len());
        let mut r =
            Report::build(g.path().display().to_string(), format, tensors.collect(), checked);
        r.file_bytes = g.file_bytes();
        r.architecture = h.get_str("general.architecture")?.map(str::to_string);
        r.name = h.get_str("general.name")?.map(str::to_string);
        r.with_plan(budget_bytes)
    }

    /// Report on an HF model directory (config.json + safetensors shards).
    pub fn from_hf(dir: &HfDir, budget_bytes: Option<u64>) -> Result<Report> {
        let tensors = dir.tensor_names().filter_map(|name| dir.tensor_info(name)).map(|t| {
            TensorEntry { name: t.name.clone(), ty: t.dtype.to_string(), n_bytes: t.n_bytes() }
        });
        let tied = dir.config_bool_opt("tie_word_embeddings")?.unwrap_or(false);
        let checked = ModelConfig::from_hf(dir).and_then(|c| {
            let (prefix, fused) = ModelConfig::hf_layout(dir);
            c.check_hf_tensors(dir).map(|_| (c.hf_tensor_table(prefix, tied, fused), c))
        });
        let format = format!("HF directory, {} safetensors shard(s)", dir.shards().len());
        let mut r =
            Report::build(dir.dir().display().to_string(), format, tensors.collect(), checked);
        r.file_bytes = dir.shards().iter().map(|s| s.bytes().len() as u64).sum();
        r.architecture = dir.config_str_opt("model_type")?.map(str::to_string);
        if dir.config_has_remote_code() {
            r.notes.push("config.json asks for remote code (auto_map): ignored".into());
        }
        r.with_plan(budget_bytes)
    }

    fn build(
        path: String,
        format: String,
        tensors: Vec<TensorEntry>,
        checked: Result<(Vec<TensorDesc>, ModelConfig)>,
    ) -> Report {
        let mut by_type: BTreeMap<String, TypeCount> = BTreeMap::new();
        for t in &tensors {
            let e = by_type.entry(t.ty.clone()).or_default();
            e.tensors += 1;
            e.bytes += t.n_bytes;
        }
        let mut r = Report {
            path,
            file_bytes: 0,
            format,
            architecture: None,
            name: None,
            config: None,
            problem: None,
            notes: vec![],
            by_type,
            n_tensors: tensors.len(),
            tensor_bytes: tensors.iter().map(|t| t.n_bytes).sum(),
            expert_bytes: 0,
            embedding_bytes: 0,
            output_bytes: 0,
            expert_bytes_per_token: 0,
            expert_bytes_avg: 0,
            plan: None,
            dense_aligned_bytes: 0,
            layer_expert_bytes: Vec::new(),
        };
        match checked {
            Ok((table, cfg)) => {
                r.account_roles(&tensors, &table, &cfg);
                r.config = Some(cfg);
            }
            Err(e) => r.problem = Some(e.to_string()),
        }
        r
    }

    fn with_plan(mut self, budget_bytes: Option<u64>) -> Result<Report> {
        let Some(budget) = budget_bytes else { return Ok(self) };
        match self.config.clone() {
            Some(cfg) => self.plan = Some(self.budget_plan(&cfg, budget)?),
            None => {
                let why = self.problem.clone().unwrap_or_default();
                return Err(Error::Usage(format!("cannot plan a VRAM budget: {why}")));
            }
        }
        Ok(self)
    }

    fn account_roles(&mut self, tensors: &[TensorEntry], table: &[TensorDesc], cfg: &ModelConfig) {
        let bytes: HashMap<&str, u64> =
            tensors.iter().map(|t| (t.name.as_str(), t.n_bytes)).collect();
        let mut per_layer_experts: HashMap<u64, u64> = HashMap::new();
        let mut resident = Vec::new(); // bytes of each dense tensor
        for want in table {
            let Some(&n_bytes) = bytes.get(want.name.as_str()) else { continue };
            match want.role {
                TensorRole::Expert => {
                    self.expert_bytes += n_bytes;
                    *per_layer_experts.entry(want.layer.unwrap_or(0)).or_default() += n_bytes;
                }
                TensorRole::Embedding => self.embedding_bytes += n_bytes,
                role => {
                    if role == TensorRole::Output {
                        self.output_bytes += n_bytes;
                    }
                    // Norms and the DeltaNet's small parameters are placed as f32 vectors.
                    let vector = role == TensorRole::Norm
                        || ["ssm_conv1d.weight", "ssm_dt.bias", "ssm_a"]
                            .iter()
                            .any(|s| want.name.ends_with(s));
                    resident.push(if vector {
                        want.dims.iter().product::<u64>() * 4
                    } else {
                        n_bytes
                    });
                }
            }
        }
        self.dense_aligned_bytes = crate::rotary::plan::dense_bytes(resident);
        self.layer_expert_bytes = (0..cfg.n_layers)
            .map(|l| per_layer_experts.get(&l).copied().unwrap_or(0) / cfg.n_experts.max(1))
            .collect();
        // Every layer reads n_experts_used experts; expert e of a layer is 1/n_experts of it.
        let per_layer_all = self.expert_bytes / cfg.n_layers;
        self.expert_bytes_avg = per_layer_all / cfg.n_experts;
        self.expert_bytes_per_token = self.expert_bytes / cfg.n_experts * cfg.n_experts_used;
    }

    /// Everything that is neither a routed expert nor the embedding table.
    pub fn dense_resident_bytes(&self) -> u64 {
        self.tensor_bytes - self.expert_bytes - self.embedding_bytes
    }

    fn budget_plan(
        &self,
        cfg: &ModelConfig,
        budget_bytes: u64,
    ) -> Result<crate::rotary::plan::Plan> {
        let n_ctx = PLAN_CONTEXT.min(cfg.context_length) as usize;
        crate::rotary::plan::Plan::new(
            cfg,
            n_ctx,
            self.dense_aligned_bytes,
            &self.layer_expert_bytes,
            CUDA_CONTEXT_BYTES_ESTIMATE,
            Some(budget_bytes),
        )
    }
}

fn value_summary(v: &Value) -> String {
    match v {
        Value::String(s) if s.chars().count() > 60 => {
            format!("\"{}…\" ({} bytes)", short(s, 57), s.len())
        }
        Value::String(s) => format!("\"{}\"", short(s, 60)),
        Value::Array(_) => v.type_name(),
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
        Value::Bool(b) => format!("{b}"),
        other => other.as_u64().map_or_else(|| format!("{other:?}"), |u| u.to_string()),
    }
}

fn short(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect::<String>().replace('\n', "\\n")
}

/// All metadata, arrays summarised: for `inspect --kv`.
pub fn kv_lines(g: &Gguf) -> Vec<String> {
    g.header.kvs.iter().map(|(k, v)| format!("  {k:<48} {}", value_summary(v))).collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hb = human_bytes;
        writeln!(
            f,
            "file          {} ({}, {} bytes)",
            self.path,
            hb(self.file_bytes),
            self.file_bytes
        )?;
        writeln!(f, "format        {}, {} tensors", self.format, self.n_tensors)?;
        if let Some(name) = &self.name {
            writeln!(f, "name          {name}")?;
        }
        let arch = self.architecture.as_deref().unwrap_or("(none)");
        writeln!(f, "architecture  {arch}")?;
        if let Some(c) = &self.config {
            writeln!(f, "layers        {} (+{} nextn/MTP, skipped)", c.n_layers, c.n_nextn_layers)?;
            writeln!(
                f,
                "dim           {}   vocab {}   context {}",
                c.dim, c.n_vocab, c.context_length
            )?;
            writeln!(
                f,
                "attention     {} q heads / {} kv heads x {} (rope {} dims, theta {}), \
                 rms eps {:e}",
                c.n_heads, c.n_kv_heads, c.head_dim, c.rope_dims, c.rope_theta, c.rms_eps as f32
            )?;
            if let Some(s) = &c.ssm {
                let n_attn = (0..c.n_layers).filter(|&l| c.is_full_attention(l)).count() as u64;
                let state = (c.n_layers - n_attn) * s.n_v_heads * s.state_size * s.state_size * 4;
                writeln!(
                    f,
                    "mixers        {} gated attention (every {}th layer) + {} Gated DeltaNet: \
                     {} k / {} v heads x {}, conv {}, fp32 state {}",
                    n_attn,
                    s.full_attention_interval,
                    c.n_layers - n_attn,
                    s.n_k_heads,
                    s.n_v_heads,
                    s.state_size,
                    s.conv_kernel,
                    human_bytes(state)
                )?;
            }
            write!(
                f,
                "experts       {} per layer, top-{}, ffn {}",
                c.n_experts, c.n_experts_used, c.expert_ffn_dim
            )?;
            if c.shared_ffn_dim > 0 {
                write!(f, ", shared expert ffn {}", c.shared_ffn_dim)?;
            }
            writeln!(f)?;
        }
        if let Some(p) = &self.problem {
            writeln!(f, "not runnable  {p}")?;
        }
        for note in &self.notes {
            writeln!(f, "note          {note}")?;
        }
        writeln!(f, "tensors by type:")?;
        for (ty, c) in &self.by_type {
            writeln!(f, "  {ty:<8} {:>5} tensors  {:>12}", c.tensors, hb(c.bytes))?;
        }
        if self.config.is_some() {
            self.fmt_costs(f)?;
        }
        Ok(())
    }
}

impl Report {
    fn fmt_costs(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hb = human_bytes;
        let dense = self.dense_resident_bytes();
        writeln!(f, "bytes:")?;
        writeln!(
            f,
            "  routed experts        {:>12}  ({} per expert on average)",
            hb(self.expert_bytes),
            hb(self.expert_bytes_avg)
        )?;
        writeln!(
            f,
            "  dense, VRAM-resident  {:>12}  (incl. output {})",
            hb(dense),
            hb(self.output_bytes)
        )?;
        writeln!(
            f,
            "  token embedding       {:>12}  (host-resident: one row per token)",
            hb(self.embedding_bytes)
        )?;
        writeln!(
            f,
            "  expert bytes / token  {:>12}  ({} bytes, no cache hits)",
            hb(self.expert_bytes_per_token),
            self.expert_bytes_per_token
        )?;
        if let Some(p) = &self.plan {
            write!(f, "{p}")?;
            writeln!(
                f,
                "  (device overhead: a CUDA context estimate; a run on the GPU measures it)"
            )?;
        }
        Ok(())
    }
}
