//! Model hyperparameters read from a file (never hard-coded), their semantic checks, and the
//! table of tensors each architecture needs with the shape each must have.
//!
//! The tensor table is the single source of truth for three users: validation of a loaded file
//! (`check_tensors`), `rotary inspect` (dense vs expert bytes) and `rotary synth` (which writes
//! exactly these tensors). Shapes are in ggml order (ne0 first), as GGUF stores them.

use crate::error::{Error, Result};
use crate::format::gguf::{Header, TensorInfo};
use crate::format::hf::HfDir;
use crate::limits;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen3-30B-A3B and kin: GQA attention with q/k norm, every layer MoE (models.md §1).
    Qwen3Moe,
    /// Qwen3.5/3.6-35B-A3B: Gated DeltaNet + gated attention, MoE with a shared expert (§2).
    Qwen35Moe,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "qwen3moe" => Some(Arch::Qwen3Moe),
            "qwen35moe" => Some(Arch::Qwen35Moe),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Qwen35Moe => "qwen35moe",
        }
    }
}

/// Gated DeltaNet (linear attention) dimensions of qwen35moe.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SsmConfig {
    pub conv_kernel: u64,
    /// Value width: n_v_heads * head_dim (4096).
    pub inner_size: u64,
    /// Per-head k/v dimension (128).
    pub state_size: u64,
    /// Key heads (16).
    pub n_k_heads: u64,
    /// Value heads (32).
    pub n_v_heads: u64,
    /// Every `full_attention_interval`-th layer is full attention (l % 4 == 3).
    pub full_attention_interval: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: u64,
    /// Hidden size (`embedding_length`).
    pub dim: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub head_dim: u64,
    pub n_vocab: u64,
    pub n_experts: u64,
    pub n_experts_used: u64,
    /// Renormalise the top-k router weights to sum to 1 (llama.cpp hard-codes it for both
    /// Qwen MoE archs; HF reads `norm_topk_prob`, whose class default is false).
    pub norm_topk_prob: bool,
    /// Routed expert FFN width (`expert_feed_forward_length`).
    pub expert_ffn_dim: u64,
    /// Shared expert FFN width (qwen35moe), 0 when absent.
    pub shared_ffn_dim: u64,
    pub context_length: u64,
    pub rope_theta: f64,
    /// Rotary dims per head (all of head_dim for qwen3moe, 64 for qwen35moe).
    pub rope_dims: u64,
    pub rms_eps: f64,
    /// Extra blocks after the main stack (qwen35moe MTP: `nextn_predict_layers`); skipped.
    pub n_nextn_layers: u64,
    pub ssm: Option<SsmConfig>,
}

/// What a tensor is for: decides where it lives (VRAM-resident vs rotating) and its type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TensorRole {
    Embedding,
    Output,
    Norm,
    Attention,
    /// Gated DeltaNet projections and small state parameters.
    Ssm,
    Router,
    SharedExpert,
    /// Routed experts: `ffn_{gate,up,down}_exps`, the expert index outermost.
    Expert,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    pub dims: Vec<u64>,
    pub role: TensorRole,
    pub layer: Option<u64>,
}

/// Read a required positive integer hyperparameter `<arch>.<key>` within `1..=max`.
fn hparam(h: &Header, arch: &str, key: &str, max: u64) -> Result<u64> {
    let full = format!("{arch}.{key}");
    let v = h.get_u64(&full)?.ok_or_else(|| Error::MissingKey { key: full.clone() })?;
    if v == 0 || v > max {
        return Err(Error::BadValue { key: full, reason: format!("{v} is not in 1..={max}") });
    }
    Ok(v)
}

fn hparam_or(h: &Header, arch: &str, key: &str, max: u64, default: u64) -> Result<u64> {
    if h.get(&format!("{arch}.{key}")).is_none() {
        return Ok(default);
    }
    hparam(h, arch, key, max)
}

fn hparam_f64(h: &Header, arch: &str, key: &str, default: Option<f64>) -> Result<f64> {
    let full = format!("{arch}.{key}");
    let v = match (h.get_f64(&full)?, default) {
        (Some(v), _) => v,
        (None, Some(d)) => d,
        (None, None) => return Err(Error::MissingKey { key: full }),
    };
    if !v.is_finite() || v <= 0.0 {
        return Err(Error::BadValue { key: full, reason: format!("{v} is not a positive number") });
    }
    Ok(v)
}

impl ModelConfig {
    /// Hyperparameters from GGUF metadata, with every semantic check that does not need the
    /// tensors. `n_vocab` comes from the token_embd tensor (the padded vocabulary).
    pub fn from_gguf(h: &Header) -> Result<ModelConfig> {
        let arch_name = h.architecture()?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| Error::BadValue {
            key: "general.architecture".to_string(),
            reason: format!("'{arch_name}' is not supported (supported: qwen3moe, qwen35moe)"),
        })?;
        let a = arch_name;
        let dim = hparam(h, a, "embedding_length", limits::DIM_MAX)?;
        let n_heads = hparam(h, a, "attention.head_count", limits::HEADS_MAX)?;
        let n_kv_heads = hparam(h, a, "attention.head_count_kv", limits::HEADS_MAX)?;
        let default_head_dim = dim / n_heads;
        let head_dim = hparam_or(h, a, "attention.key_length", limits::DIM_MAX, default_head_dim)?;
        let n_layers_file = hparam(h, a, "block_count", limits::LAYERS_MAX)?;
        let n_nextn_layers = h.get_u64(&format!("{a}.nextn_predict_layers"))?.unwrap_or(0);
        let ssm = match arch {
            Arch::Qwen3Moe => None,
            Arch::Qwen35Moe => Some(SsmConfig::from_gguf(h, a)?),
        };
        let rope_dims = match arch {
            Arch::Qwen3Moe => head_dim,
            Arch::Qwen35Moe => hparam(h, a, "rope.dimension_count", limits::DIM_MAX)?,
        };
        let n_vocab = match h.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1],
            Some(t) => return Err(shape_err(t, &[dim, 0])),
            None => return Err(Error::MissingTensor { name: "token_embd.weight".into() }),
        };
        let cfg = ModelConfig {
            arch,
            n_layers: n_layers_file.saturating_sub(n_nextn_layers),
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            n_vocab,
            n_experts: hparam(h, a, "expert_count", limits::EXPERTS_MAX)?,
            n_experts_used: hparam(h, a, "expert_used_count", limits::EXPERTS_USED_MAX)?,
            norm_topk_prob: true,
            expert_ffn_dim: hparam(h, a, "expert_feed_forward_length", limits::DIM_MAX)?,
            shared_ffn_dim: match arch {
                Arch::Qwen3Moe => 0,
                Arch::Qwen35Moe => {
                    hparam(h, a, "expert_shared_feed_forward_length", limits::DIM_MAX)?
                }
            },
            context_length: hparam(h, a, "context_length", limits::CONTEXT_MAX)?,
            rope_theta: hparam_f64(h, a, "rope.freq_base", Some(10_000.0))?,
            rope_dims,
            rms_eps: hparam_f64(h, a, "attention.layer_norm_rms_epsilon", None)?,
            n_nextn_layers,
            ssm,
        };
        cfg.validate()?;
        check_special_tokens(h, cfg.n_vocab)?;
        Ok(cfg)
    }

    /// Relationships between hyperparameters (reliability.md §1.4 item 24).
    pub fn validate(&self) -> Result<()> {
        let a = self.arch.name();
        let bad = |key: &str, reason: String| Error::BadValue { key: format!("{a}.{key}"), reason };
        if self.n_vocab == 0 || self.n_vocab > limits::VOCAB_MAX {
            return Err(bad(
                "vocab_size",
                format!("{} is not in 1..={}", self.n_vocab, limits::VOCAB_MAX),
            ));
        }
        if self.n_layers == 0 {
            return Err(bad("block_count", "no layers left after the nextn (MTP) layers".into()));
        }
        if self.n_experts_used > self.n_experts {
            let (used, total) = (self.n_experts_used, self.n_experts);
            return Err(bad("expert_used_count", format!("{used} > expert_count {total}")));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            let (h, kv) = (self.n_heads, self.n_kv_heads);
            return Err(bad(
                "attention.head_count_kv",
                format!("{kv} does not divide head_count {h}"),
            ));
        }
        if !self.rope_dims.is_multiple_of(2) || self.rope_dims > self.head_dim {
            let (r, hd) = (self.rope_dims, self.head_dim);
            return Err(bad(
                "rope.dimension_count",
                format!("{r} must be even and <= head dim {hd}"),
            ));
        }
        if let Some(ssm) = &self.ssm {
            ssm.validate(a)?;
        }
        Ok(())
    }

    pub fn is_full_attention(&self, layer: u64) -> bool {
        match &self.ssm {
            None => true,
            Some(ssm) => (layer + 1).is_multiple_of(ssm.full_attention_interval),
        }
    }

    /// Every tensor the forward pass needs, with its expected shape.
    pub fn tensor_table(&self) -> Vec<TensorDesc> {
        let (dim, vocab) = (self.dim, self.n_vocab);
        let mut table = vec![
            desc("token_embd.weight", &[dim, vocab], TensorRole::Embedding, None),
            desc("output_norm.weight", &[dim], TensorRole::Norm, None),
            desc("output.weight", &[dim, vocab], TensorRole::Output, None),
        ];
        for l in 0..self.n_layers {
            self.layer_tensors(l, &mut table);
        }
        table
    }

    /// The multi-token-prediction block llama.cpp's converter appends to qwen35moe as blk.N
    /// (N = n_layers; `nextn_predict_layers` 1): a gated-attention MoE layer plus the `nextn.*`
    /// projection and norms. The engine accepts and skips it; `synth --mtp` writes it.
    pub fn mtp_tensors(&self) -> Vec<TensorDesc> {
        let (l, dim) = (self.n_layers, self.dim);
        let mut attn = self.clone();
        attn.ssm = attn.ssm.map(|s| SsmConfig { full_attention_interval: 1, ..s });
        let mut out = Vec::new();
        attn.layer_tensors(l, &mut out);
        let mut t = |suffix: &str, dims: &[u64], role| {
            out.push(desc(&format!("blk.{l}.{suffix}"), dims, role, Some(l)))
        };
        t("nextn.eh_proj.weight", &[2 * dim, dim], TensorRole::Attention);
        t("nextn.enorm.weight", &[dim], TensorRole::Norm);
        t("nextn.hnorm.weight", &[dim], TensorRole::Norm);
        t("nextn.shared_head_norm.weight", &[dim], TensorRole::Norm);
        out
    }

    fn layer_tensors(&self, l: u64, out: &mut Vec<TensorDesc>) {
        let (dim, hd) = (self.dim, self.head_dim);
        let (ne, ff) = (self.n_experts, self.expert_ffn_dim);
        let q_width = self.n_heads * hd;
        let kv_width = self.n_kv_heads * hd;
        let mut t = |suffix: &str, dims: &[u64], role| {
            out.push(desc(&format!("blk.{l}.{suffix}"), dims, role, Some(l)))
        };
        use TensorRole::*;
        t("attn_norm.weight", &[dim], Norm);
        if self.is_full_attention(l) {
            // qwen35moe's gated attention packs [q_h | gate_h] per head: twice the q rows.
            let q_rows = if self.ssm.is_some() { 2 * q_width } else { q_width };
            t("attn_q.weight", &[dim, q_rows], Attention);
            t("attn_k.weight", &[dim, kv_width], Attention);
            t("attn_v.weight", &[dim, kv_width], Attention);
            t("attn_output.weight", &[q_width, dim], Attention);
            t("attn_q_norm.weight", &[hd], Norm);
            t("attn_k_norm.weight", &[hd], Norm);
        } else {
            let ssm = self.ssm.as_ref().expect("only qwen35moe has linear-attention layers");
            let qkv = 2 * ssm.n_k_heads * ssm.state_size + ssm.inner_size;
            t("attn_qkv.weight", &[dim, qkv], Ssm);
            t("attn_gate.weight", &[dim, ssm.inner_size], Ssm);
            t("ssm_beta.weight", &[dim, ssm.n_v_heads], Ssm);
            t("ssm_alpha.weight", &[dim, ssm.n_v_heads], Ssm);
            t("ssm_conv1d.weight", &[ssm.conv_kernel, qkv], Ssm);
            t("ssm_dt.bias", &[ssm.n_v_heads], Ssm);
            t("ssm_a", &[ssm.n_v_heads], Ssm);
            t("ssm_norm.weight", &[ssm.state_size], Norm);
            t("ssm_out.weight", &[ssm.inner_size, dim], Ssm);
        }
        match self.arch {
            Arch::Qwen3Moe => t("ffn_norm.weight", &[dim], Norm),
            Arch::Qwen35Moe => t("post_attention_norm.weight", &[dim], Norm),
        }
        t("ffn_gate_inp.weight", &[dim, ne], Router);
        t("ffn_gate_exps.weight", &[dim, ff, ne], Expert);
        t("ffn_up_exps.weight", &[dim, ff, ne], Expert);
        t("ffn_down_exps.weight", &[ff, dim, ne], Expert);
        if self.shared_ffn_dim > 0 {
            let sff = self.shared_ffn_dim;
            t("ffn_gate_inp_shexp.weight", &[dim], Router);
            t("ffn_gate_shexp.weight", &[dim, sff], SharedExpert);
            t("ffn_up_shexp.weight", &[dim, sff], SharedExpert);
            t("ffn_down_shexp.weight", &[sff, dim], SharedExpert);
        }
    }

    /// Check that every required tensor is present with the shape the hyperparameters imply and
    /// a type the engine computes with. `output.weight` may be absent (tied to token_embd).
    pub fn check_tensors(&self, h: &Header) -> Result<()> {
        for want in self.tensor_table() {
            let Some(found) = h.tensor(&want.name) else {
                if want.role == TensorRole::Output {
                    continue;
                }
                return Err(Error::MissingTensor { name: want.name });
            };
            if found.dims != want.dims {
                return Err(shape_err(found, &want.dims));
            }
            if !found.ty.is_supported() {
                return Err(Error::UnsupportedType { name: want.name, ty: found.ty.to_string() });
            }
        }
        Ok(())
    }
}

impl SsmConfig {
    fn from_gguf(h: &Header, a: &str) -> Result<SsmConfig> {
        // 4 is llama.cpp's default for qwen35moe when the key is absent.
        let interval = h.get_u64(&format!("{a}.full_attention_interval"))?.unwrap_or(4);
        Ok(SsmConfig {
            conv_kernel: hparam(h, a, "ssm.conv_kernel", 16)?,
            inner_size: hparam(h, a, "ssm.inner_size", limits::DIM_MAX)?,
            state_size: hparam(h, a, "ssm.state_size", limits::DIM_MAX)?,
            n_k_heads: hparam(h, a, "ssm.group_count", limits::HEADS_MAX)?,
            n_v_heads: hparam(h, a, "ssm.time_step_rank", limits::HEADS_MAX)?,
            full_attention_interval: interval,
        })
    }

    fn validate(&self, a: &str) -> Result<()> {
        let bad = |key: &str, reason: String| Error::BadValue { key: format!("{a}.{key}"), reason };
        if self.full_attention_interval == 0 {
            return Err(bad("full_attention_interval", "must be at least 1".into()));
        }
        if !self.n_v_heads.is_multiple_of(self.n_k_heads) {
            return Err(bad("ssm.group_count", "key heads must divide value heads".into()));
        }
        if self.n_v_heads * self.state_size != self.inner_size {
            return Err(bad("ssm.inner_size", "must equal time_step_rank * state_size".into()));
        }
        Ok(())
    }
}

/// Token ids named in the tokenizer metadata must index the embedding (item 23).
fn check_special_tokens(h: &Header, n_vocab: u64) -> Result<()> {
    const KEYS: [&str; 6] = ["bos", "eos", "padding", "unknown", "eot", "sep"];
    for k in KEYS {
        let key = format!("tokenizer.ggml.{k}_token_id");
        if let Some(id) = h.get_u64(&key)? {
            if id >= n_vocab {
                return Err(Error::BadValue { key, reason: format!("{id} >= n_vocab {n_vocab}") });
            }
        }
    }
    if let Some(tokens) = h.get_str_array("tokenizer.ggml.tokens")? {
        if tokens.len() as u64 > n_vocab {
            let n = tokens.len();
            let reason = format!("{n} tokens but token_embd has {n_vocab} rows");
            return Err(Error::BadValue { key: "tokenizer.ggml.tokens".into(), reason });
        }
    }
    Ok(())
}

fn desc(name: &str, dims: &[u64], role: TensorRole, layer: Option<u64>) -> TensorDesc {
    TensorDesc { name: name.to_string(), dims: dims.to_vec(), role, layer }
}

fn shape_err(found: &TensorInfo, expected: &[u64]) -> Error {
    Error::TensorShape {
        name: found.name.clone(),
        expected: expected.to_vec(),
        found: found.dims.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// HF directories (config.json + safetensors)

/// A positive integer from config.json within 1..=max, named on error.
fn hf_int(dir: &HfDir, key: &str, max: u64) -> Result<u64> {
    let v = dir.config_u64(key)?;
    hf_check(key, v, max)
}

/// The first of several spellings that is present (transformers renamed keys across versions).
fn hf_int_any(dir: &HfDir, keys: &[&str], max: u64) -> Result<u64> {
    for key in keys {
        if let Some(v) = dir.config_u64_opt(key)? {
            return hf_check(key, v, max);
        }
    }
    Err(Error::MissingKey { key: keys.join(" or ") })
}

fn hf_f64_any(dir: &HfDir, keys: &[&str]) -> Result<Option<f64>> {
    for key in keys {
        if let Some(v) = dir.config_f64_opt(key)? {
            return positive(v, key).map(Some);
        }
    }
    Ok(None)
}

fn hf_check(key: &str, v: u64, max: u64) -> Result<u64> {
    if v == 0 || v > max {
        return Err(Error::BadValue {
            key: key.into(),
            reason: format!("{v} is not in 1..={max}"),
        });
    }
    Ok(v)
}

impl ModelConfig {
    /// Hyperparameters of an HF directory: `Qwen3MoeForCausalLM` (`model_type` qwen3_moe), or
    /// the text part of `Qwen3_5MoeForConditionalGeneration` / `Qwen3_5MoeForCausalLM`
    /// (qwen3_5_moe, qwen3_5_moe_text; keys under `text_config` when nested).
    /// Only `config.json` is read: `auto_map` and remote code are never consulted.
    /// Over a screen: one line per hyperparameter, each checked where it is read.
    pub fn from_hf(dir: &HfDir) -> Result<ModelConfig> {
        let model_type = dir.config_str("model_type")?;
        let arch = match model_type {
            "qwen3_moe" => Arch::Qwen3Moe,
            "qwen3_5_moe" | "qwen3_5_moe_text" => Arch::Qwen35Moe,
            _ => {
                let reason = format!(
                    "'{model_type}' is not supported from HF files (supported: \
                    qwen3_moe, qwen3_5_moe, qwen3_5_moe_text)"
                );
                return Err(Error::BadValue { key: "model_type".into(), reason });
            }
        };
        // Dense layers between MoE layers are not part of any Qwen3 MoE checkpoint.
        if dir.config_u64_opt("decoder_sparse_step")?.unwrap_or(1) != 1 {
            let reason = "only decoder_sparse_step = 1 (every layer MoE) is supported".into();
            return Err(Error::BadValue { key: "decoder_sparse_step".into(), reason });
        }
        let dim = hf_int(dir, "hidden_size", limits::DIM_MAX)?;
        let n_heads = hf_int(dir, "num_attention_heads", limits::HEADS_MAX)?;
        let head_dim = match dir.config_u64_opt("head_dim")? {
            Some(_) => hf_int(dir, "head_dim", limits::DIM_MAX)?,
            None => dim / n_heads,
        };
        let n_layers = hf_int(dir, "num_hidden_layers", limits::LAYERS_MAX)?;
        let (ssm, rope_dims, shared_ffn_dim, norm_topk_prob) = match arch {
            Arch::Qwen3Moe => {
                (None, head_dim, 0, dir.config_bool_opt("norm_topk_prob")?.unwrap_or(false))
            }
            Arch::Qwen35Moe => {
                let factor = hf_f64_any(
                    dir,
                    &["rope_parameters.partial_rotary_factor", "partial_rotary_factor"],
                )?
                .unwrap_or(1.0);
                let rope_dims = (head_dim as f64 * factor).round() as u64;
                let ssm = SsmConfig {
                    conv_kernel: hf_int(dir, "linear_conv_kernel_dim", 16)?,
                    inner_size: hf_int(dir, "linear_num_value_heads", limits::HEADS_MAX)?
                        * hf_int(dir, "linear_value_head_dim", limits::DIM_MAX)?,
                    state_size: hf_int(dir, "linear_key_head_dim", limits::DIM_MAX)?,
                    n_k_heads: hf_int(dir, "linear_num_key_heads", limits::HEADS_MAX)?,
                    n_v_heads: hf_int(dir, "linear_num_value_heads", limits::HEADS_MAX)?,
                    full_attention_interval: hf_attention_interval(dir, n_layers)?,
                };
                if hf_int(dir, "linear_value_head_dim", limits::DIM_MAX)? != ssm.state_size {
                    let reason = "must equal linear_key_head_dim (one state size)".into();
                    return Err(Error::BadValue { key: "linear_value_head_dim".into(), reason });
                }
                // The Qwen3.5 router always renormalises (the attribute was removed).
                (
                    Some(ssm),
                    rope_dims,
                    hf_int(dir, "shared_expert_intermediate_size", limits::DIM_MAX)?,
                    true,
                )
            }
        };
        let cfg = ModelConfig {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads: hf_int(dir, "num_key_value_heads", limits::HEADS_MAX)?,
            head_dim,
            n_vocab: hf_int(dir, "vocab_size", limits::VOCAB_MAX)?,
            n_experts: hf_int_any(dir, &["num_experts", "num_local_experts"], limits::EXPERTS_MAX)?,
            n_experts_used: hf_int(dir, "num_experts_per_tok", limits::EXPERTS_USED_MAX)?,
            norm_topk_prob,
            expert_ffn_dim: hf_int(dir, "moe_intermediate_size", limits::DIM_MAX)?,
            shared_ffn_dim,
            context_length: hf_int(dir, "max_position_embeddings", limits::CONTEXT_MAX)?,
            rope_theta: hf_f64_any(dir, &["rope_theta", "rope_parameters.rope_theta"])?
                .unwrap_or(10_000.0),
            rope_dims,
            rms_eps: positive(dir.config_f64_opt("rms_norm_eps")?.unwrap_or(1e-6), "rms_norm_eps")?,
            n_nextn_layers: 0,
            ssm,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// HF tensor names with their safetensors (row-major, numpy-order) shapes, each paired with
    /// the role it plays. `prefix` is `model.` or `model.language_model.` (Qwen3.5's multimodal
    /// checkpoints). Qwen3 stores one 2-D tensor per expert; Qwen3.5 as transformers saves it
    /// too (`fused_experts` false) or as fused `gate_up_proj` [E, 2·ffn, dim] and `down_proj`.
    pub fn hf_tensor_table(
        &self,
        prefix: &str,
        tied_embeddings: bool,
        fused_experts: bool,
    ) -> Vec<TensorDesc> {
        let (dim, hd, ff) = (self.dim, self.head_dim, self.expert_ffn_dim);
        let mut table = vec![
            desc(
                &format!("{prefix}embed_tokens.weight"),
                &[self.n_vocab, dim],
                TensorRole::Embedding,
                None,
            ),
            desc(&format!("{prefix}norm.weight"), &[dim], TensorRole::Norm, None),
        ];
        if !tied_embeddings {
            table.push(desc("lm_head.weight", &[self.n_vocab, dim], TensorRole::Output, None));
        }
        let gated = self.arch == Arch::Qwen35Moe;
        for l in 0..self.n_layers {
            let mut t = |suffix: &str, dims: &[u64], role| {
                table.push(desc(&format!("{prefix}layers.{l}.{suffix}"), dims, role, Some(l)))
            };
            use TensorRole::*;
            t("input_layernorm.weight", &[dim], Norm);
            if self.is_full_attention(l) {
                let q_rows = self.n_heads * hd * if gated { 2 } else { 1 };
                t("self_attn.q_proj.weight", &[q_rows, dim], Attention);
                t("self_attn.k_proj.weight", &[self.n_kv_heads * hd, dim], Attention);
                t("self_attn.v_proj.weight", &[self.n_kv_heads * hd, dim], Attention);
                t("self_attn.o_proj.weight", &[dim, self.n_heads * hd], Attention);
                t("self_attn.q_norm.weight", &[hd], Norm);
                t("self_attn.k_norm.weight", &[hd], Norm);
            } else {
                let ssm = self.ssm.as_ref().expect("only qwen35moe has linear-attention layers");
                let qkv = 2 * ssm.n_k_heads * ssm.state_size + ssm.inner_size;
                t("linear_attn.in_proj_qkv.weight", &[qkv, dim], Ssm);
                t("linear_attn.in_proj_z.weight", &[ssm.inner_size, dim], Ssm);
                t("linear_attn.in_proj_b.weight", &[ssm.n_v_heads, dim], Ssm);
                t("linear_attn.in_proj_a.weight", &[ssm.n_v_heads, dim], Ssm);
                t("linear_attn.conv1d.weight", &[qkv, 1, ssm.conv_kernel], Ssm);
                t("linear_attn.dt_bias", &[ssm.n_v_heads], Ssm);
                t("linear_attn.A_log", &[ssm.n_v_heads], Ssm);
                t("linear_attn.norm.weight", &[ssm.state_size], Norm);
                t("linear_attn.out_proj.weight", &[dim, ssm.inner_size], Ssm);
            }
            t("post_attention_layernorm.weight", &[dim], Norm);
            t("mlp.gate.weight", &[self.n_experts, dim], Router);
            if fused_experts {
                t("mlp.experts.gate_up_proj", &[self.n_experts, 2 * ff, dim], Expert);
                t("mlp.experts.down_proj", &[self.n_experts, dim, ff], Expert);
            } else {
                for e in 0..self.n_experts {
                    t(&format!("mlp.experts.{e}.gate_proj.weight"), &[ff, dim], Expert);
                    t(&format!("mlp.experts.{e}.up_proj.weight"), &[ff, dim], Expert);
                    t(&format!("mlp.experts.{e}.down_proj.weight"), &[dim, ff], Expert);
                }
            }
            if self.shared_ffn_dim > 0 {
                let sff = self.shared_ffn_dim;
                t("mlp.shared_expert_gate.weight", &[1, dim], Router);
                t("mlp.shared_expert.gate_proj.weight", &[sff, dim], SharedExpert);
                t("mlp.shared_expert.up_proj.weight", &[sff, dim], SharedExpert);
                t("mlp.shared_expert.down_proj.weight", &[dim, sff], SharedExpert);
            }
        }
        table
    }

    /// Where an HF directory keeps the text model's tensors, and whether its experts are fused.
    pub fn hf_layout(dir: &HfDir) -> (&'static str, bool) {
        let prefix = if dir.tensor_info("model.language_model.embed_tokens.weight").is_some() {
            "model.language_model."
        } else {
            "model."
        };
        let fused =
            dir.tensor_info(&format!("{prefix}layers.0.mlp.experts.gate_up_proj")).is_some();
        (prefix, fused)
    }

    /// Every tensor of an HF directory present, shaped as config.json implies, in a dtype
    /// the engine computes with (F32, F16, BF16).
    pub fn check_hf_tensors(&self, dir: &HfDir) -> Result<()> {
        let tied = dir.config_bool_opt("tie_word_embeddings")?.unwrap_or(false);
        let (prefix, fused) = ModelConfig::hf_layout(dir);
        for want in self.hf_tensor_table(prefix, tied, fused) {
            let Some(found) = dir.tensor_info(&want.name) else {
                return Err(Error::MissingTensor { name: want.name });
            };
            if found.shape != want.dims {
                let (expected, found) = (want.dims, found.shape.clone());
                return Err(Error::TensorShape { name: want.name, expected, found });
            }
            use crate::format::safetensors::Dtype;
            if !matches!(found.dtype, Dtype::F32 | Dtype::F16 | Dtype::Bf16) {
                return Err(Error::UnsupportedType {
                    name: want.name,
                    ty: found.dtype.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The full-attention interval of a Qwen3.5 config: `full_attention_interval`, checked against
/// `layer_types` when both exist (the engine supports the periodic pattern only).
fn hf_attention_interval(dir: &HfDir, n_layers: u64) -> Result<u64> {
    let types = dir.config_str_array_opt("layer_types")?;
    let interval = match dir.config_u64_opt("full_attention_interval")? {
        Some(_) => hf_int(dir, "full_attention_interval", limits::LAYERS_MAX)?,
        None => match &types {
            Some(t) => {
                t.iter().position(|x| *x == "full_attention").map_or(n_layers + 1, |i| i as u64 + 1)
            }
            None => 4,
        },
    };
    if let Some(t) = types {
        let want = |l: u64| {
            if (l + 1).is_multiple_of(interval) {
                "full_attention"
            } else {
                "linear_attention"
            }
        };
        let ok =
            t.len() as u64 == n_layers && t.iter().enumerate().all(|(l, x)| *x == want(l as u64));
        if !ok {
            let reason = format!(
                "must be linear_attention with every {interval}th layer full_attention, \
                {n_layers} entries"
            );
            return Err(Error::BadValue { key: "layer_types".into(), reason });
        }
    }
    Ok(interval)
}

fn positive(v: f64, key: &str) -> Result<f64> {
    if v > 0.0 && v.is_finite() {
        return Ok(v);
    }
    Err(Error::BadValue { key: key.into(), reason: format!("{v} is not a positive number") })
}
