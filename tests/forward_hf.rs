//! The forward pass against HF transformers: `cpu-ref` on the f32 weights of tiny random
//! Qwen3MoeForCausalLM models (tests/make_hf_fixture.py) must give transformers' logits
//! (NMSE ≤ 1e-6) and its 32 greedy tokens; Qwen3.5-MoE (Gated DeltaNet, gated attention,
//! shared expert; tests/make_hf_qwen35_fixture.py) likewise within NMSE 1e-5. Token-by-token
//! decode must reproduce prefill, so prefill and decode leave the same state.

use std::path::{Path, PathBuf};

use rotary::model::weights::{ModelFile, Weights};
use rotary::rotary::BackendKind;
use rotary::{Engine, Logits, Session};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Reference {
    prompt: Vec<u32>,
    top: Vec<Vec<(u32, f32)>>,
    last_logits: Vec<f32>,
    greedy: Vec<u32>,
}

fn reference(dir: &Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let top = v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let pairs = p["top"].as_array().unwrap();
            pairs
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32))
                .collect()
        })
        .collect();
    let last_logits =
        v["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    Reference { prompt: ids(&v["prompt"]), top, last_logits, greedy: ids(&v["greedy"]) }
}

fn nmse(reference: &[f32], ours: &[f32]) -> f64 {
    assert_eq!(reference.len(), ours.len());
    let num: f64 = reference.iter().zip(ours).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|&a| (a as f64).powi(2)).sum();
    num / den
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn check_fixture(name: &str) {
    check_fixture_within(name, 1e-6);
}

fn check_fixture_within(name: &str, max_nmse: f64) {
    let dir = fixture(name);
    if !dir.exists() {
        println!("SKIP {name}: fixture missing (tests/make_hf_fixture.py)");
        return;
    }
    let r = reference(&dir);
    let file = ModelFile::open(&dir).unwrap();
    let w = Weights::load(&file).unwrap();
    let n_vocab = w.cfg.n_vocab as usize;
    let mut s = Session::open(&w, BackendKind::CpuRef, 128, None).unwrap();
    let logits = s.forward(&r.prompt, Logits::All).unwrap(); // [T, vocab]
    let last = &logits[(r.prompt.len() - 1) * n_vocab..];
    let e = nmse(&r.last_logits, last);
    println!("{name}: last-position logits NMSE vs transformers {e:.3e}");
    assert!(e <= max_nmse, "{name}: NMSE {e}");
    // Per position, transformers' top-8 ids and values.
    for (t, top) in r.top.iter().enumerate() {
        let row = &logits[t * n_vocab..(t + 1) * n_vocab];
        for &(id, v) in top {
            let ours = row[id as usize];
            assert!(
                (ours - v).abs() <= 1e-4 * (1.0 + v.abs()),
                "{name} pos {t} id {id}: {ours} vs {v}"
            );
        }
        assert_eq!(argmax(row), top[0].0, "{name} pos {t}: top-1");
    }
    // 32 greedy tokens, one decode step each.
    let mut next = argmax(last);
    let mut greedy = vec![next];
    while greedy.len() < r.greedy.len() {
        let l = s.forward(&[next], Logits::Last).unwrap();
        next = argmax(&l);
        greedy.push(next);
    }
    assert_eq!(greedy, r.greedy, "{name}: greedy tokens");

    // Decode vs prefill: the prompt one token at a time gives the batched logits.
    let mut s = Session::open(&w, BackendKind::CpuRef, 128, None).unwrap();
    let mut stepped = Vec::with_capacity(logits.len());
    for &tok in &r.prompt {
        stepped.extend(s.forward(&[tok], Logits::Last).unwrap());
    }
    let e = nmse(&logits, &stepped);
    println!("{name}: decode vs prefill NMSE {e:.3e}");
    assert!(e <= 1e-5, "{name}: decode vs prefill NMSE {e}");
}

#[test]
fn matches_transformers_tiny() {
    check_fixture("hf-qwen3moe-tiny");
}

#[test]
fn matches_transformers_tiny_without_topk_renorm() {
    check_fixture("hf-qwen3moe-tiny-nonorm");
}

#[test]
fn matches_transformers_qwen35moe_multimodal_layout() {
    check_fixture_within("hf-qwen35moe-tiny", 1e-5);
}

#[test]
fn matches_transformers_qwen35moe_fused_experts() {
    check_fixture_within("hf-qwen35moe-fused", 1e-5);
}

#[test]
fn matches_transformers_qwen35moe_text_layout() {
    check_fixture_within("hf-qwen35moe-text", 1e-5);
}

#[test]
fn context_overflow_names_both_numbers() {
    let file = ModelFile::open(&fixture("hf-qwen3moe-tiny")).unwrap();
    let w = Weights::load(&file).unwrap();
    let mut s = Session::open(&w, BackendKind::CpuRef, 8, None).unwrap();
    let err = s.forward(&[1; 9], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("9 tokens do not fit the context of 8"), "{err}");
    assert!(
        Session::open(&w, BackendKind::CpuRef, 100_000, None).is_err(),
        "context beyond the model's"
    );
    let err = s.forward(&[600], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("600"), "{err}");
}
