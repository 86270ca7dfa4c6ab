//! Typed weight views for the forward pass, borrowed from an opened model file (GGUF or an HF
//! directory). Matrices stay in the file's format (`Mat`, zero copy); the small vectors (norms)
//! are dequantized to f32 once at load.

use crate::backend::Mat;
use crate::error::{Error, Result};
use crate::format::gguf::Gguf;
use crate::format::hf::HfDir;
use crate::format::safetensors::Dtype;
use crate::model::{Arch, ModelConfig};
use crate::quant::{self, GgmlType};

/// An opened model file of either format.
pub enum ModelFile {
    Gguf(Gguf),
    Hf(HfDir),
}

impl ModelFile {
    /// A GGUF file, or an HF model directory.
    pub fn open(path: &std::path::Path) -> Result<ModelFile> {
        if path.is_dir() {
            return Ok(ModelFile::Hf(HfDir::open(path)?));
        }
        Ok(ModelFile::Gguf(Gguf::open(path)?))
    }

    /// Hyperparameters with every semantic and tensor check done.
    pub fn config(&self) -> Result<ModelConfig> {
        let cfg = match self {
            ModelFile::Gguf(g) => {
                let cfg = ModelConfig::from_gguf(g)?;
                cfg.check_tensors(g)?;
                cfg
            }
            ModelFile::Hf(d) => {
                let cfg = ModelConfig::from_hf(d)?;
                cfg.check_hf_tensors(d)?;
                cfg
            }
        };
        if cfg.arch != Arch::Qwen3Moe {
            let reason = format!(
                "architecture {} cannot run yet (runnable: qwen3moe; qwen35moe arrives later)",
                cfg.arch.name()
            );
            return Err(Error::BadValue { key: "general.architecture".into(), reason });
        }
        Ok(cfg)
    }

    /// A 2-D (or stacked 3-D) matrix: `rows` = product of the outer dims, `cols` = the
    /// innermost (contiguous) dim.
    fn mat(&self, name: &str) -> Result<Mat<'_>> {
        match self {
            ModelFile::Gguf(g) => {
                let (t, data) = g.tensor(name)?;
                let rows = t.dims[1..].iter().product::<u64>() as usize;
                Mat::new(t.ty, rows, t.dims[0] as usize, data, name)
            }
            ModelFile::Hf(d) => {
                let v = d.tensor(name)?;
                let ty = match v.dtype {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::Bf16 => GgmlType::BF16,
                    other => {
                        return Err(Error::UnsupportedType { name: name.into(), ty: other.to_string() })
                    }
                };
                let cols = *v.shape.last().unwrap_or(&1) as usize;
                let rows = v.shape[..v.shape.len().saturating_sub(1)].iter().product::<u64>() as usize;
                Mat::new(ty, rows, cols, v.data, name)
            }
        }
    }

    /// A vector, dequantized to f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        let m = self.mat(name)?;
        let mut out = vec![0f32; m.rows * m.cols];
        quant::dequantize(m.ty, m.data, &mut out)?;
        Ok(out)
    }
}

/// One routed expert: SwiGLU `down(silu(gate·x) * up·x)`.
pub struct Expert<'a> {
    pub gate: Mat<'a>, // [ffn, dim]
    pub up: Mat<'a>,   // [ffn, dim]
    pub down: Mat<'a>, // [dim, ffn]
}

pub struct Layer<'a> {
    pub attn_norm: Vec<f32>, // [dim]
    pub wq: Mat<'a>,         // [n_heads * head_dim, dim]
    pub wk: Mat<'a>,         // [n_kv_heads * head_dim, dim]
    pub wv: Mat<'a>,         // [n_kv_heads * head_dim, dim]
    pub wo: Mat<'a>,         // [dim, n_heads * head_dim]
    pub q_norm: Vec<f32>,    // [head_dim]
    pub k_norm: Vec<f32>,    // [head_dim]
    pub ffn_norm: Vec<f32>,  // [dim]
    pub router: Mat<'a>,     // [n_experts, dim]
    pub experts: Vec<Expert<'a>>,
}

pub struct Weights<'a> {
    pub cfg: ModelConfig,
    pub token_embd: Mat<'a>, // [n_vocab, dim]
    pub output_norm: Vec<f32>, // [dim]
    pub output: Mat<'a>,     // [n_vocab, dim] (token_embd when tied)
    pub layers: Vec<Layer<'a>>,
}

impl<'a> Weights<'a> {
    pub fn load(file: &'a ModelFile) -> Result<Weights<'a>> {
        let cfg = file.config()?;
        match file {
            ModelFile::Gguf(_) => Weights::load_gguf(file, cfg),
            ModelFile::Hf(_) => Weights::load_hf(file, cfg),
        }
    }

    fn load_gguf(f: &'a ModelFile, cfg: ModelConfig) -> Result<Weights<'a>> {
        let token_embd = f.mat("token_embd.weight")?;
        let output = match f.mat("output.weight") {
            Ok(m) => m,
            Err(Error::MissingTensor { .. }) => token_embd,
            Err(e) => return Err(e),
        };
        let ff = cfg.expert_ffn_dim as usize;
        let dim = cfg.dim as usize;
        let mut layers = Vec::with_capacity(cfg.n_layers as usize);
        for l in 0..cfg.n_layers {
            let name = |s: &str| format!("blk.{l}.{s}");
            let (gate, up, down) = (
                f.mat(&name("ffn_gate_exps.weight"))?,
                f.mat(&name("ffn_up_exps.weight"))?,
                f.mat(&name("ffn_down_exps.weight"))?,
            );
            // Stacked experts: expert e is rows e*ffn.. of gate/up, rows e*dim.. of down.
            let experts = (0..cfg.n_experts as usize)
                .map(|e| Expert {
                    gate: gate.rows_slice(e * ff, ff),
                    up: up.rows_slice(e * ff, ff),
                    down: down.rows_slice(e * dim, dim),
                })
                .collect();
            layers.push(Layer {
                attn_norm: f.vector(&name("attn_norm.weight"))?,
                wq: f.mat(&name("attn_q.weight"))?,
                wk: f.mat(&name("attn_k.weight"))?,
                wv: f.mat(&name("attn_v.weight"))?,
                wo: f.mat(&name("attn_output.weight"))?,
                q_norm: f.vector(&name("attn_q_norm.weight"))?,
                k_norm: f.vector(&name("attn_k_norm.weight"))?,
                ffn_norm: f.vector(&name("ffn_norm.weight"))?,
                router: f.mat(&name("ffn_gate_inp.weight"))?,
                experts,
            });
        }
        let output_norm = f.vector("output_norm.weight")?;
        Ok(Weights { cfg, token_embd, output_norm, output, layers })
    }

    fn load_hf(f: &'a ModelFile, cfg: ModelConfig) -> Result<Weights<'a>> {
        let token_embd = f.mat("model.embed_tokens.weight")?;
        let output = match f.mat("lm_head.weight") {
            Ok(m) => m,
            Err(Error::MissingTensor { .. }) => token_embd,
            Err(e) => return Err(e),
        };
        let mut layers = Vec::with_capacity(cfg.n_layers as usize);
        for l in 0..cfg.n_layers {
            let name = |s: &str| format!("model.layers.{l}.{s}");
            let mut experts = Vec::with_capacity(cfg.n_experts as usize);
            for e in 0..cfg.n_experts {
                experts.push(Expert {
                    gate: f.mat(&name(&format!("mlp.experts.{e}.gate_proj.weight")))?,
                    up: f.mat(&name(&format!("mlp.experts.{e}.up_proj.weight")))?,
                    down: f.mat(&name(&format!("mlp.experts.{e}.down_proj.weight")))?,
                });
            }
            layers.push(Layer {
                attn_norm: f.vector(&name("input_layernorm.weight"))?,
                wq: f.mat(&name("self_attn.q_proj.weight"))?,
                wk: f.mat(&name("self_attn.k_proj.weight"))?,
                wv: f.mat(&name("self_attn.v_proj.weight"))?,
                wo: f.mat(&name("self_attn.o_proj.weight"))?,
                q_norm: f.vector(&name("self_attn.q_norm.weight"))?,
                k_norm: f.vector(&name("self_attn.k_norm.weight"))?,
                ffn_norm: f.vector(&name("post_attention_layernorm.weight"))?,
                router: f.mat(&name("mlp.gate.weight"))?,
                experts,
            });
        }
        let output_norm = f.vector("model.norm.weight")?;
        Ok(Weights { cfg, token_embd, output_norm, output, layers })
    }
}
