//! The `rotary` binary as a user drives it: exit codes, what reaches stdout/stderr, errors that
//! name the file, and the embedded default that works without any model file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rotary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotary")).args(args).output().expect("run rotary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rotary-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn version_reports_cuda_status() {
    let o = rotary(&["--version"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("rotary 0."), "{out}");
    assert!(out.contains("cuda: not compiled"), "{out}");
}

#[test]
fn inspect_embedded_default() {
    let o = rotary(&["inspect", "--vram-budget", "1GiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in ["architecture  qwen3moe", "layers        4", "experts       8 per layer, top-2",
        "expert bytes / token", "expert cache"] {
        assert!(out.contains(needle), "missing '{needle}' in:\n{out}");
    }
    assert!(stderr(&o).contains("embedded tiny model"));
}

#[test]
fn budget_and_flag_errors_are_clear() {
    let o = rotary(&["inspect", "--vram-budget", "100MiB"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("VRAM budget 100.00 MiB is too small"), "{}", stderr(&o));
    let o = rotary(&["inspect", "--vram-budget", "8XB"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad size '8XB'"), "{}", stderr(&o));
    let o = rotary(&["inspect", "--frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2");
    let o = rotary(&["synth", "--preset", "nope", "-o", "/tmp/never.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown preset 'nope'"), "{}", stderr(&o));
    assert!(!Path::new("/tmp/never.gguf").exists());
}

#[test]
fn synth_inspect_tokenize_round_trip() {
    let dir = temp_dir("synth");
    let path = dir.join("tiny.gguf");
    let p = path.to_str().unwrap();
    let o = rotary(&["synth", "--preset", "tiny", "--quant", "q8_0", "--seed", "3", "-o", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("MB/s"), "synth reports its speed: {}", stderr(&o));
    let o = rotary(&["inspect", p, "--kv", "--tensors"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rotary-synth tiny q8_0 seed 3"), "{out}");
    assert!(out.contains("blk.3.ffn_down_exps.weight"), "{out}");
    assert!(out.contains("tokenizer.ggml.tokens"), "{out}");
    let o = rotary(&["tokenize", "-m", p, "--json", "Hi<|im_end|>"]);
    assert_eq!(stdout(&o).trim(), r#"{"ids": [72, 105, 151645]}"#);
    let o = rotary(&["tokenize", "-m", p, "--no-parse-special", "<|im_end|>"]);
    assert!(!stdout(&o).contains("151645"), "special text stays text: {}", stdout(&o));

    // A truncated copy: an error naming the file, no panic.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let o = rotary(&["inspect", cut.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_named() {
    let o = rotary(&["inspect", "/nonexistent/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/model.gguf"), "{}", stderr(&o));
}

#[test]
fn tokenize_with_llama_cpp_vocab() {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama-vocab/ggml-vocab-qwen2.gguf");
    if !vocab.exists() {
        println!("SKIP tokenize_with_llama_cpp_vocab: {} missing (run tests/fetch_data.py)", vocab.display());
        return;
    }
    let o = rotary(&["tokenize", "-m", vocab.to_str().unwrap(), "Hello, world!"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "9707 11 1879 0");
}
