//! Typed weight views for the forward pass, borrowed from an opened model file (GGUF or an HF
//! directory). Matrices stay in the file's format (`Mat`, zero copy); the small vectors (norms)
//! are dequantized to f32 once at load.

use crate::backend::Mat;
use crate::error::{Error, Result};
use crate::format::gguf::Gguf;
use crate::format::hf::HfDir;
use crate::format::safetensors::Dtype;
use crate::model::{Arch, ModelConfig};
use crate::ops::deltanet;
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

    /// The model's bytes copied from the file mapping into anonymous memory, with transparent
    /// huge pages asked for (`--no-mmap`): faster CPU reads of the weights, the file's size in
    /// RAM. `progress(done, total)` in bytes.
    pub fn load_to_memory(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        match self {
            ModelFile::Gguf(g) => g.load_to_memory(progress),
            ModelFile::Hf(d) => d.load_to_memory(progress),
        }
    }

    /// The preset `rotary synth` made this file from (general.name "rotary-synth PRESET ..."):
    /// random weights, whose router picks experts almost uniformly and whose greedy text loops.
    pub fn synth_preset(&self) -> Option<String> {
        match self {
            ModelFile::Gguf(g) => {
                let name = g.header.get_str("general.name").ok().flatten()?;
                name.strip_prefix("rotary-synth ")?.split_whitespace().next().map(str::to_string)
            }
            ModelFile::Hf(_) => None,
        }
    }

    pub fn is_synthesized(&self) -> bool {
        self.synth_preset().is_some()
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
                        return Err(Error::UnsupportedType {
                            name: name.into(),
                            ty: other.to_string(),
                        })
                    }
                };
                let cols = *v.shape.last().unwrap_or(&1) as usize;
                let rows =
                    v.shape[..v.shape.len().saturating_sub(1)].iter().product::<u64>() as usize;
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

/// Softmax attention with q/k RMSNorm. qwen35moe's is gated: `wq` packs [q_h | gate_h] per
/// head (twice the rows) and the output is multiplied by sigmoid(gate) before `wo`.
pub struct Attention<'a> {
    pub wq: Mat<'a>,      // [n_heads * head_dim (* 2 when gated), dim]
    pub wk: Mat<'a>,      // [n_kv_heads * head_dim, dim]
    pub wv: Mat<'a>,      // [n_kv_heads * head_dim, dim]
    pub wo: Mat<'a>,      // [dim, n_heads * head_dim]
    pub q_norm: Vec<f32>, // [head_dim]
    pub k_norm: Vec<f32>, // [head_dim]
    pub gated: bool,
}

/// Gated DeltaNet (qwen35moe linear attention, src/model/deltanet.rs). Value heads are in the
/// order of the weight source (`Weights::gdn`).
pub struct DeltaNet<'a> {
    pub qkv: Mat<'a>,      // [channels = 2·n_k·dk + n_v·dv, dim]
    pub z: Mat<'a>,        // [n_v·dv, dim]
    pub beta: Mat<'a>,     // [n_v, dim]
    pub alpha: Mat<'a>,    // [n_v, dim]
    pub conv: Vec<f32>,    // [channels, conv_kernel]
    pub dt_bias: Vec<f32>, // [n_v]
    pub a: Vec<f32>,       // [n_v]  −exp(A_log)
    pub norm: Vec<f32>,    // [dv]  gated RMSNorm weight (plain)
    pub out: Mat<'a>,      // [dim, n_v·dv]
}

pub enum Mixer<'a> {
    Attention(Attention<'a>),
    DeltaNet(DeltaNet<'a>),
}

/// qwen35moe's always-on expert, scaled per token by sigmoid(gate_inp · h).
pub struct SharedExpert<'a> {
    pub gate_inp: Mat<'a>, // [1, dim]
    pub expert: Expert<'a>,
}

pub struct Layer<'a> {
    pub attn_norm: Vec<f32>, // [dim]
    pub mixer: Mixer<'a>,
    pub ffn_norm: Vec<f32>, // [dim]
    pub router: Mat<'a>,    // [n_experts, dim]
    pub experts: Vec<Expert<'a>>,
    pub shared: Option<SharedExpert<'a>>,
}

impl<'a> Layer<'a> {
    /// The softmax-attention weights (every qwen3moe layer, qwen35moe's full-attention layers).
    pub fn attention(&self) -> Option<&Attention<'a>> {
        match &self.mixer {
            Mixer::Attention(a) => Some(a),
            Mixer::DeltaNet(_) => None,
        }
    }
}

pub struct Weights<'a> {
    pub cfg: ModelConfig,
    pub token_embd: Mat<'a>,   // [n_vocab, dim]
    pub output_norm: Vec<f32>, // [dim]
    pub output: Mat<'a>,       // [n_vocab, dim] (token_embd when tied)
    pub layers: Vec<Layer<'a>>,
    /// Gated DeltaNet shape with the value-head order of this file (qwen35moe only).
    pub gdn: Option<deltanet::Shape>,
}

impl<'a> Weights<'a> {
    pub fn load(file: &'a ModelFile) -> Result<Weights<'a>> {
        let cfg = file.config()?;
        match file {
            ModelFile::Gguf(_) => Weights::load_gguf(file, cfg),
            ModelFile::Hf(_) => Weights::load_hf(file, cfg),
        }
    }

    /// The DeltaNet shape of `cfg` with value heads tiled (GGUF) or grouped (HF).
    fn gdn_shape(cfg: &ModelConfig, tiled: bool) -> Option<deltanet::Shape> {
        cfg.ssm.as_ref().map(|s| deltanet::Shape {
            n_k_heads: s.n_k_heads as usize,
            n_v_heads: s.n_v_heads as usize,
            head_k: s.state_size as usize,
            head_v: s.state_size as usize,
            conv_kernel: s.conv_kernel as usize,
            tiled,
        })
    }

    /// GGUF: llama.cpp's names; qwen35moe norms carry the +1 already (plain x̂·w here too).
    /// Over a screen: one line per tensor of the architecture's table, read in order.
    fn load_gguf(f: &'a ModelFile, cfg: ModelConfig) -> Result<Weights<'a>> {
        let token_embd = f.mat("token_embd.weight")?;
        let output = match f.mat("output.weight") {
            Ok(m) => m,
            Err(Error::MissingTensor { .. }) => token_embd,
            Err(e) => return Err(e),
        };
        let ff = cfg.expert_ffn_dim as usize;
        let dim = cfg.dim as usize;
        let gated = cfg.arch == Arch::Qwen35Moe;
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
            let mixer = if cfg.is_full_attention(l) {
                Mixer::Attention(Attention {
                    wq: f.mat(&name("attn_q.weight"))?,
                    wk: f.mat(&name("attn_k.weight"))?,
                    wv: f.mat(&name("attn_v.weight"))?,
                    wo: f.mat(&name("attn_output.weight"))?,
                    q_norm: f.vector(&name("attn_q_norm.weight"))?,
                    k_norm: f.vector(&name("attn_k_norm.weight"))?,
                    gated,
                })
            } else {
                Mixer::DeltaNet(DeltaNet {
                    qkv: f.mat(&name("attn_qkv.weight"))?,
                    z: f.mat(&name("attn_gate.weight"))?,
                    beta: f.mat(&name("ssm_beta.weight"))?,
                    alpha: f.mat(&name("ssm_alpha.weight"))?,
                    conv: f.vector(&name("ssm_conv1d.weight"))?,
                    dt_bias: f.vector(&name("ssm_dt.bias"))?,
                    a: f.vector(&name("ssm_a"))?,
                    norm: f.vector(&name("ssm_norm.weight"))?,
                    out: f.mat(&name("ssm_out.weight"))?,
                })
            };
            let shared = match cfg.shared_ffn_dim {
                0 => None,
                _ => Some(SharedExpert {
                    gate_inp: f.mat(&name("ffn_gate_inp_shexp.weight"))?,
                    expert: Expert {
                        gate: f.mat(&name("ffn_gate_shexp.weight"))?,
                        up: f.mat(&name("ffn_up_shexp.weight"))?,
                        down: f.mat(&name("ffn_down_shexp.weight"))?,
                    },
                }),
            };
            let ffn_norm = match cfg.arch {
                Arch::Qwen3Moe => f.vector(&name("ffn_norm.weight"))?,
                Arch::Qwen35Moe => f.vector(&name("post_attention_norm.weight"))?,
            };
            layers.push(Layer {
                attn_norm: f.vector(&name("attn_norm.weight"))?,
                mixer,
                ffn_norm,
                router: f.mat(&name("ffn_gate_inp.weight"))?,
                experts,
                shared,
            });
        }
        let output_norm = f.vector("output_norm.weight")?;
        let gdn = Weights::gdn_shape(&cfg, true);
        Ok(Weights { cfg, token_embd, output_norm, output, layers, gdn })
    }

    /// HF: Qwen3 (`model.*`), Qwen3.5 (`model.*` or `model.language_model.*`). Qwen3.5's
    /// zero-centred norms become x̂·(1+w) by adding 1 here (all but the DeltaNet's gated norm),
    /// and A_log becomes a = −exp(A_log), so the forward pass is the GGUF one.
    /// Over a screen: one line per tensor of the architecture's table, read in order.
    fn load_hf(f: &'a ModelFile, cfg: ModelConfig) -> Result<Weights<'a>> {
        let ModelFile::Hf(dir) = f else { unreachable!("load_hf on an HF directory") };
        let (prefix, fused) = ModelConfig::hf_layout(dir);
        let q35 = cfg.arch == Arch::Qwen35Moe;
        let norm = |n: &str| -> Result<Vec<f32>> {
            let mut v = f.vector(n)?;
            if q35 {
                v.iter_mut().for_each(|w| *w += 1.0);
            }
            Ok(v)
        };
        let token_embd = f.mat(&format!("{prefix}embed_tokens.weight"))?;
        let output = match f.mat("lm_head.weight") {
            Ok(m) => m,
            Err(Error::MissingTensor { .. }) => token_embd,
            Err(e) => return Err(e),
        };
        let (ff, dim) = (cfg.expert_ffn_dim as usize, cfg.dim as usize);
        let mut layers = Vec::with_capacity(cfg.n_layers as usize);
        for l in 0..cfg.n_layers {
            let name = |s: &str| format!("{prefix}layers.{l}.{s}");
            let mut experts = Vec::with_capacity(cfg.n_experts as usize);
            if fused {
                // [E, 2·ffn, dim]: expert e's gate rows, then its up rows; down [E, dim, ffn].
                let gate_up = f.mat(&name("mlp.experts.gate_up_proj"))?;
                let down = f.mat(&name("mlp.experts.down_proj"))?;
                for e in 0..cfg.n_experts as usize {
                    experts.push(Expert {
                        gate: gate_up.rows_slice(2 * e * ff, ff),
                        up: gate_up.rows_slice((2 * e + 1) * ff, ff),
                        down: down.rows_slice(e * dim, dim),
                    });
                }
            } else {
                for e in 0..cfg.n_experts {
                    experts.push(Expert {
                        gate: f.mat(&name(&format!("mlp.experts.{e}.gate_proj.weight")))?,
                        up: f.mat(&name(&format!("mlp.experts.{e}.up_proj.weight")))?,
                        down: f.mat(&name(&format!("mlp.experts.{e}.down_proj.weight")))?,
                    });
                }
            }
            let mixer = if cfg.is_full_attention(l) {
                Mixer::Attention(Attention {
                    wq: f.mat(&name("self_attn.q_proj.weight"))?,
                    wk: f.mat(&name("self_attn.k_proj.weight"))?,
                    wv: f.mat(&name("self_attn.v_proj.weight"))?,
                    wo: f.mat(&name("self_attn.o_proj.weight"))?,
                    q_norm: norm(&name("self_attn.q_norm.weight"))?,
                    k_norm: norm(&name("self_attn.k_norm.weight"))?,
                    gated: q35,
                })
            } else {
                let a_log = f.vector(&name("linear_attn.A_log"))?;
                Mixer::DeltaNet(DeltaNet {
                    qkv: f.mat(&name("linear_attn.in_proj_qkv.weight"))?,
                    z: f.mat(&name("linear_attn.in_proj_z.weight"))?,
                    beta: f.mat(&name("linear_attn.in_proj_b.weight"))?,
                    alpha: f.mat(&name("linear_attn.in_proj_a.weight"))?,
                    conv: f.vector(&name("linear_attn.conv1d.weight"))?,
                    dt_bias: f.vector(&name("linear_attn.dt_bias"))?,
                    a: a_log.iter().map(|&x| -x.exp()).collect(),
                    norm: f.vector(&name("linear_attn.norm.weight"))?,
                    out: f.mat(&name("linear_attn.out_proj.weight"))?,
                })
            };
            let shared = match cfg.shared_ffn_dim {
                0 => None,
                _ => Some(SharedExpert {
                    gate_inp: f.mat(&name("mlp.shared_expert_gate.weight"))?,
                    expert: Expert {
                        gate: f.mat(&name("mlp.shared_expert.gate_proj.weight"))?,
                        up: f.mat(&name("mlp.shared_expert.up_proj.weight"))?,
                        down: f.mat(&name("mlp.shared_expert.down_proj.weight"))?,
                    },
                }),
            };
            layers.push(Layer {
                attn_norm: norm(&name("input_layernorm.weight"))?,
                mixer,
                ffn_norm: norm(&name("post_attention_layernorm.weight"))?,
                router: f.mat(&name("mlp.gate.weight"))?,
                experts,
                shared,
            });
        }
        let output_norm = norm(&format!("{prefix}norm.weight"))?;
        let gdn = Weights::gdn_shape(&cfg, false);
        Ok(Weights { cfg, token_embd, output_norm, output, layers, gdn })
    }
}
