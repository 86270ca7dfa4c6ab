//! `rotary synth`: the files it writes are valid models of the preset's shape, deterministic
//! from the seed, with weights of the intended statistics, typed as llama.cpp's mixes type them,
//! and the same whether streamed to disk or built in memory.

use rotary::format::gguf::Gguf;
use rotary::model::{ModelConfig, TensorRole};
use rotary::quant::{self, GgmlType};
use rotary::synth::{self, Preset, QuantMix, SynthOptions};
use rotary::tokenizer::{Tokenizer, VocabSpec};

fn tiny(mix: QuantMix, seed: u64) -> Gguf {
    let opts = SynthOptions::new(Preset::by_name("tiny").unwrap(), mix, seed);
    Gguf::from_bytes(synth::to_bytes(&opts).unwrap()).unwrap()
}

#[test]
fn presets_are_valid_models() {
    for mix in [QuantMix::Q8_0, QuantMix::Q4KM, QuantMix::Q6K, QuantMix::F16] {
        let g = tiny(mix, 3);
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        cfg.check_tensors(&g).unwrap();
        assert_eq!((cfg.n_layers, cfg.dim, cfg.n_experts, cfg.n_experts_used), (4, 256, 8, 2));
        assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.head_dim), (4, 2, 64));
        assert_eq!((cfg.n_vocab, cfg.context_length), (151_936, 40_960));
        assert_eq!(cfg.rope_theta, 1e6);
        assert!((cfg.rms_eps - 1e-6).abs() < 1e-12);
    }
}

#[test]
fn deterministic_from_seed() {
    let opts = |seed| SynthOptions::new(Preset::by_name("tiny").unwrap(), QuantMix::Q4KM, seed);
    let a = synth::to_bytes(&opts(7)).unwrap();
    let b = synth::to_bytes(&opts(7)).unwrap();
    let c = synth::to_bytes(&opts(8)).unwrap();
    assert!(a == b, "same seed, same bytes");
    assert_eq!(a.len(), c.len());
    let ga = Gguf::from_bytes(a).unwrap();
    let gc = Gguf::from_bytes(c).unwrap();
    let name = "blk.1.ffn_up_exps.weight";
    assert_ne!(ga.tensor(name).unwrap().1, gc.tensor(name).unwrap().1, "seeds differ");
}

/// Every weight tensor dequantizes to finite values with mean ≈ 0 and std ≈ 1/√fan_in.
#[test]
fn weights_have_the_intended_statistics() {
    let named = [QuantMix::Q8_0, QuantMix::Q4KM, QuantMix::Q6K, QuantMix::F16, QuantMix::Q4KXL];
    let uniform = GgmlType::supported().map(QuantMix::Uniform);
    for mix in named.into_iter().chain(uniform) {
        let g = tiny(mix, 11);
        let cfg = ModelConfig::from_gguf(&g).unwrap();
        for want in cfg.tensor_table() {
            let (t, data) = g.tensor(&want.name).unwrap();
            let mut values = vec![0f32; t.n_elements() as usize];
            quant::dequantize(t.ty, data, &mut values).unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{} has non-finite values", t.name);
            let n = values.len() as f64;
            let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
            let std = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let (want_mean, want_std) = match want.role {
                TensorRole::Norm => (1.0, 0.05),
                TensorRole::Embedding => (0.0, 1.0),
                _ => (0.0, 1.0 / (t.dims[0] as f64).sqrt()),
            };
            let what = format!("{} ({}, {mix:?})", t.name, t.ty);
            // Sampling error: 5 standard errors of the mean and of the std, plus 5% for the
            // quantization of the block scales and Q6_K's documented −σ/37 offset.
            let mean_tol = 5.0 * want_std / n.sqrt() + 0.03 * want_std;
            let std_tol = 0.05 + 5.0 / (2.0 * n).sqrt();
            assert!((mean - want_mean).abs() < mean_tol, "{what}: mean {mean}");
            assert!((std / want_std - 1.0).abs() < std_tol, "{what}: std {std}, want {want_std}");
        }
    }
}

/// The Q4_K_M mix of the real Qwen3-30B-A3B shape against models.md §4: ffn_down_exps is
/// Q6_K in exactly 24 of 48 layers, and top-8 experts cost 1,097,072,640 bytes per token.
#[test]
fn q4_k_m_mix_matches_llama_cpp_rule() {
    let opts = SynthOptions::new(Preset::by_name("qwen3-30b-a3b").unwrap(), QuantMix::Q4KM, 0);
    let (writer, table) = synth::plan(&opts).unwrap();
    let layout = writer.layout().unwrap();
    let specs = writer.tensors();
    let down_q6k = specs
        .iter()
        .filter(|t| t.name.ends_with("ffn_down_exps.weight") && t.ty == GgmlType::Q6K)
        .count();
    assert_eq!(down_q6k, 24);
    let ty = |name: &str| specs.iter().find(|t| t.name == name).unwrap().ty;
    assert_eq!(ty("output.weight"), GgmlType::Q6K);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.0.ffn_gate_inp.weight"), GgmlType::F32);
    assert_eq!(ty("blk.0.attn_v.weight"), GgmlType::Q6K); // layer 0 < 48/8
    assert_eq!(ty("blk.6.attn_v.weight"), GgmlType::Q4K);
    assert_eq!(ty("blk.8.attn_v.weight"), GgmlType::Q6K); // (8 - 6) % 3 == 2
    let expert_bytes: u64 = table
        .iter()
        .zip(&layout.tensor_bytes)
        .filter(|(d, _)| d.role == TensorRole::Expert)
        .map(|(_, &b)| b)
        .sum();
    assert_eq!(expert_bytes / 128 * 8, 1_097_072_640);
    assert_eq!(specs.len(), 579, "3 + 48 x 12 tensors, as a real Qwen3-30B-A3B GGUF");
}

#[test]
fn streamed_file_equals_in_memory_image() {
    let opts = SynthOptions::new(Preset::by_name("tiny").unwrap(), QuantMix::Q6K, 5);
    let dir = std::env::temp_dir().join(format!("rotary-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let mut last = (0, 0);
    let stats = synth::write(&opts, &path, &mut |done, total| last = (done, total)).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len() as u64, stats.file_bytes);
    assert_eq!(last, (stats.file_bytes, stats.file_bytes), "progress reaches the total");
    assert!(on_disk == synth::to_bytes(&opts).unwrap());
    assert!(!path.with_extension("gguf.partial").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The default byte-level vocabulary is a working tokenizer with Qwen3's special ids.
#[test]
fn byte_level_vocab_tokenizes() {
    let g = tiny(QuantMix::Q8_0, 0);
    let tok = Tokenizer::from_spec(&VocabSpec::from_gguf(&g).unwrap()).unwrap();
    let ids = tok.encode("Hé<|im_end|>", true).unwrap();
    assert_eq!(ids, vec![b'H' as u32, 0xC3, 0xA9, 151_645]);
    assert_eq!(tok.decode(&ids).unwrap(), "Hé<|im_end|>");
    assert_eq!(tok.token_to_id("<think>"), Some(151_667));
}

#[test]
fn bad_options_are_usage_errors() {
    assert!(Preset::by_name("huge").is_err());
    assert!(QuantMix::by_name("tq1_0").is_err(), "a type the engine cannot run");
    assert!(QuantMix::by_name("q9_k").is_err());
    assert_eq!(QuantMix::by_name("IQ3_S").unwrap(), QuantMix::Uniform(GgmlType::IQ3S));
    assert_eq!(QuantMix::by_name("q4_k_xl").unwrap(), QuantMix::Q4KXL);
}

/// qwen35moe presets: the real shape's hyperparameters and tensor count (models.md §2.3: 733
/// tensors, 753 with the MTP block), and the MTP block accepted and skipped: the same logits.
#[test]
fn qwen35_presets_and_the_mtp_block() {
    let p = Preset::by_name("qwen35-35b-a3b").unwrap();
    let cfg = p.config(p.n_vocab());
    cfg.validate().unwrap();
    assert_eq!((cfg.n_layers, cfg.dim, cfg.n_experts, cfg.n_experts_used), (40, 2048, 256, 8));
    assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_dims), (16, 2, 256, 64));
    assert_eq!((cfg.n_vocab, cfg.shared_ffn_dim, cfg.rope_theta), (248_320, 512, 1e7));
    let ssm = cfg.ssm.unwrap();
    assert_eq!((ssm.n_k_heads, ssm.n_v_heads, ssm.state_size, ssm.conv_kernel), (16, 32, 128, 4));
    assert_eq!((0..40).filter(|&l| cfg.is_full_attention(l)).count(), 10);
    assert_eq!(cfg.tensor_table().len(), 733);
    assert_eq!(cfg.tensor_table().len() + cfg.mtp_tensors().len(), 753);

    use rotary::model::weights::{ModelFile, Weights};
    use rotary::rotary::BackendKind;
    use rotary::{Engine, Logits, Session};
    let mut logits = Vec::new();
    for mtp in [false, true] {
        let mut opts =
            SynthOptions::new(Preset::by_name("qwen35-tiny").unwrap(), QuantMix::Q8_0, 2);
        opts.mtp = mtp;
        let g = Gguf::from_bytes(synth::to_bytes(&opts).unwrap()).unwrap();
        assert_eq!(g.tensors.len(), if mtp { 169 } else { 149 });
        let file = ModelFile::Gguf(g);
        let w = Weights::load(&file).unwrap();
        assert_eq!((w.cfg.n_layers, w.cfg.n_nextn_layers), (8, u64::from(mtp)));
        let mut s = Session::open(&w, BackendKind::CpuRef, 32, Some(1)).unwrap();
        logits.push(s.forward(&[72, 101, 108, 108, 111, 248045], Logits::Last).unwrap());
    }
    assert!(logits[0] == logits[1], "the MTP block changed the main model's logits");
    let mut opts = SynthOptions::new(Preset::by_name("tiny").unwrap(), QuantMix::Q8_0, 2);
    opts.mtp = true;
    assert!(synth::to_bytes(&opts).is_err(), "qwen3moe has no MTP block");
}
