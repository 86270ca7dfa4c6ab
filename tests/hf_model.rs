//! Model config and tensor checks on an HF directory written by transformers itself
//! (tests/make_hf_fixture.py → tests/fixtures/hf-qwen3moe-tiny), and the same directory with
//! config.json edited into something wrong.

use std::path::{Path, PathBuf};

use rotary::format::hf::HfDir;
use rotary::inspect::Report;
use rotary::model::{Arch, ModelConfig};
use rotary::Error;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-qwen3moe-tiny")
}

#[test]
fn transformers_fixture_config_and_tensors() {
    let dir = HfDir::open(fixture()).unwrap();
    let cfg = ModelConfig::from_hf(&dir).unwrap();
    assert_eq!(cfg.arch, Arch::Qwen3Moe);
    assert_eq!(
        (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim),
        (3, 64, 4, 2, 32)
    );
    assert_eq!((cfg.n_experts, cfg.n_experts_used, cfg.expert_ffn_dim), (8, 2, 32));
    assert_eq!((cfg.n_vocab, cfg.context_length), (512, 256));
    assert!(cfg.norm_topk_prob);
    assert_eq!(cfg.rope_theta, 1e6, "read from rope_parameters.rope_theta (transformers 5)");
    cfg.check_hf_tensors(&dir).unwrap();
    let report = Report::from_hf(&dir, Some(1 << 30)).unwrap();
    assert_eq!(report.n_tensors, 3 + 3 * (9 + 3 * 8));
    assert_eq!(report.expert_bytes, 3 * 8 * 3 * 32 * 64 * 4);
}

type Config = serde_json::Map<String, serde_json::Value>;
type Edit = Box<dyn FnOnce(&mut Config)>;

/// A copy of the fixture with config.json edited by `edit`.
fn edited(tag: &str, edit: impl FnOnce(&mut Config)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rotary-hfmodel-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let mut config: Config = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), serde_json::to_string(&config).unwrap()).unwrap();
    dir
}

fn check(dir: &Path) -> rotary::Result<()> {
    let hf = HfDir::open(dir)?;
    ModelConfig::from_hf(&hf)?.check_hf_tensors(&hf)
}

#[test]
fn edited_configs_are_rejected_by_name() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "topk",
            Box::new(|c| {
                c.insert("num_experts_per_tok".into(), 9.into());
            }),
            "expert_used_count",
        ),
        (
            "type",
            Box::new(|c| {
                c.insert("model_type".into(), "llama".into());
            }),
            "model_type",
        ),
        (
            "ffn",
            Box::new(|c| {
                c.insert("moe_intermediate_size".into(), 16.into());
            }),
            "gate_proj",
        ),
        (
            "heads",
            Box::new(|c| {
                c.insert("num_attention_heads".into(), 0.into());
            }),
            "num_attention_heads",
        ),
        (
            "layers",
            Box::new(|c| {
                c.insert("num_hidden_layers".into(), 4.into());
            }),
            "model.layers.3",
        ),
        (
            "noexp",
            Box::new(|c| {
                c.remove("num_local_experts");
            }),
            "num_experts or num_local_experts",
        ),
        (
            "sparse",
            Box::new(|c| {
                c.insert("decoder_sparse_step".into(), 2.into());
            }),
            "decoder_sparse_step",
        ),
        (
            "theta",
            Box::new(|c| {
                c.insert("rope_parameters".into(), serde_json::json!({"rope_theta": -1.0}));
            }),
            "rope_theta",
        ),
    ];
    for (tag, edit, needle) in cases {
        let dir = edited(tag, edit);
        let err = check(&dir).expect_err(tag);
        assert!(err.to_string().contains(needle), "{tag}: '{err}' does not name '{needle}'");
        assert!(!matches!(err.root(), Error::Io { .. }), "{tag}: {err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
