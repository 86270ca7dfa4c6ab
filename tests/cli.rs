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
    if cfg!(has_cuda) {
        // The compiled SMs and nvcc's version, e.g. "cuda: sm_89 sm_90 + compute_89 PTX (nvcc 13.0.88)".
        assert!(out.contains("cuda: sm_") && out.contains("nvcc"), "{out}");
    } else {
        assert!(out.contains("cuda: not compiled"), "{out}");
    }
}

#[test]
fn inspect_embedded_default() {
    let o = rotary(&["inspect", "--vram-budget", "1GiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "architecture  qwen3moe",
        "layers        4",
        "experts       8 per layer, top-2",
        "expert bytes / token",
        "expert cache",
    ] {
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
    // Read into memory (--no-mmap) or mapped: the same logits, to the bit.
    let logits = |extra: &[&str]| {
        let mut args = vec!["logits", "-m", p, "--backend", "cpu", "-p", "Hi there", "--json"];
        args.extend_from_slice(extra);
        let o = rotary(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(logits(&["--no-mmap"]), logits(&[]));

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
    let vocab =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama-vocab/ggml-vocab-qwen2.gguf");
    if !vocab.exists() {
        println!(
            "SKIP tokenize_with_llama_cpp_vocab: {} missing (run tests/fetch_data.py)",
            vocab.display()
        );
        return;
    }
    let o = rotary(&["tokenize", "-m", vocab.to_str().unwrap(), "Hello, world!"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "9707 11 1879 0");
}

#[test]
fn run_streams_and_reports_speeds() {
    let o = rotary(&["run", "--backend", "cpu-ref", "-p", "Hello", "-n", "6", "--temp", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("Hello"), "{out}");
    assert!(out.len() > "Hello".len() + 6, "six tokens were generated: {out}");
    let err = stderr(&o);
    for needle in ["prompt: 5 tokens", "decode: 6 tokens", "tok/s", "peak RSS"] {
        assert!(err.contains(needle), "missing '{needle}' in: {err}");
    }
    // Same seed, same text; greedy ignores the seed.
    let a = rotary(&["run", "--backend", "cpu-ref", "-n", "5", "--seed", "7"]);
    let b = rotary(&["run", "--backend", "cpu-ref", "-n", "5", "--seed", "7"]);
    assert_eq!(stdout(&a), stdout(&b));
}

#[test]
fn run_rejects_bad_input_clearly() {
    let o = rotary(&["run", "--backend", "cpu-ref", "-c", "4", "-p", "a long prompt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("13 tokens do not fit the context of 4"), "{}", stderr(&o));
    let o = rotary(&["run", "--backend", "cpu-ref", "--top-p", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("top_p"), "{}", stderr(&o));
    let o = rotary(&["run", "--backend", "gpu9000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--backend gpu9000: want cpu, cpu-ref, sim or cuda"),
        "{}",
        stderr(&o)
    );
    let o = rotary(&["run", "--think", "on"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--think needs --chat"), "{}", stderr(&o));
}

#[test]
fn logits_json_schema() {
    let o = rotary(&[
        "logits",
        "--backend",
        "cpu-ref",
        "-p",
        "Hi!",
        "--top",
        "3",
        "--json",
        "--full-last",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["tokens"], serde_json::json!([72, 105, 33]));
    let positions = v["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 3);
    assert_eq!(positions[0]["top"].as_array().unwrap().len(), 3);
    assert_eq!(v["last_logits"].as_array().unwrap().len(), 151_936);
}

#[test]
fn bench_json_fields() {
    let o = rotary(&["bench", "--backend", "cpu-ref", "-p", "4", "-n", "2", "-r", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in ["pp_tok_s", "tg_tok_s", "pp_tok_s_sd", "tg_tok_s_sd", "threads", "backend", "model"]
    {
        assert!(!v[key].is_null(), "missing {key} in {v}");
    }
    assert!(v["tg_tok_s"].as_f64().unwrap() > 0.0);
    // The embedded tiny model (Q8_0): 40.25 MiB of dense weights (its output 39.41 MiB) and
    // k = 2 experts of 4 layers per token, 1,671,168 bytes (`rotary inspect`).
    let bytes = v["weight_bytes_per_token"].as_u64().unwrap();
    assert_eq!(bytes, 42_206_208 + 1_671_168, "{v}");
    let gbps = bytes as f64 * v["tg_tok_s"].as_f64().unwrap() / 1e9;
    assert!((v["tg_weight_gbps"].as_f64().unwrap() - gbps).abs() < 1e-3 + gbps * 1e-6, "{v}");
    assert!(v["read_gbps"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn run_with_hf_directory_without_tokenizer_is_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-qwen3moe-tiny");
    let o = rotary(&["run", "--backend", "cpu-ref", "-m", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tokenizer.json"), "{}", stderr(&o));
}

/// `synth --vocab`: the real Qwen tokenizer from llama.cpp's vocab GGUF ends up in the model.
#[test]
fn synth_with_real_vocab() {
    let vocab =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llama-vocab/ggml-vocab-qwen2.gguf");
    if !vocab.exists() {
        println!(
            "SKIP synth_with_real_vocab: {} missing (run tests/fetch_data.py)",
            vocab.display()
        );
        return;
    }
    let dir = temp_dir("vocab");
    let out = dir.join("tiny-qwen-vocab.gguf");
    let (v, o) = (vocab.to_str().unwrap(), out.to_str().unwrap());
    let r = rotary(&["synth", "--preset", "tiny", "--quant", "q8_0", "--vocab", v, "-o", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = rotary(&["tokenize", "-m", o, "Hello, world!"]);
    assert_eq!(stdout(&r).trim(), "9707 11 1879 0");
    let r = rotary(&["inspect", o, "--kv"]);
    assert!(stdout(&r).contains("\"qwen2\""), "{}", stdout(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn selftest_cpu_prints_a_table_and_json() {
    let o = rotary(&["selftest", "--backend", "cpu", "-t", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("gemv") && out.contains("Q4_K") && out.contains("pass"), "{out}");
    let o = rotary(&["selftest", "--backend", "cpu", "-t", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["device"].as_str().is_some_and(|d| d.starts_with("CPU")));
    let cases = v["cases"].as_array().expect("cases");
    for c in cases {
        for key in ["op", "quant", "shape", "backend", "max_nmse", "status"] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
        assert_ne!(c["status"], "fail", "{c}");
    }
    assert!(cases.iter().any(|c| c["status"] == "pass"));
    // --filter: only the cases whose line has the text; none is an error.
    let o = rotary(&["selftest", "--backend", "cpu", "-t", "2", "--filter", "rmsnorm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("pass")).collect();
    assert!(!rows.is_empty() && rows.iter().all(|l| l.starts_with("rmsnorm")), "{rows:?}");
    let o = rotary(&["selftest", "--backend", "cpu", "--filter", "no-such-op"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no case matches --filter"), "{}", stderr(&o));
}

#[test]
fn cuda_without_a_device_is_a_clear_error() {
    // On machines without a GPU (CI), or builds without nvcc: a one-line error, exit 1.
    if Command::new("nvidia-smi").output().is_ok_and(|o| o.status.success()) {
        println!("SKIP cuda error test: this machine has a GPU");
        return;
    }
    for args in [&["selftest"][..], &["run", "--backend", "cuda", "-n", "2"][..]] {
        let o = rotary(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains("no CUDA device") || err.contains("built without CUDA"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let o = rotary(&["selftest", "--backend", "tpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--backend tpu"), "{}", stderr(&o));
}

#[test]
fn sim_backend_streams_under_a_budget_with_identical_logits() {
    // The issue's command: tiny q8_0 (the embedded default) under 64MiB vs no budget; and a
    // budget small enough that experts really rotate (-c 256, 47MiB: 5 slots for 32 experts).
    let prompt = "Once upon a time there was a little girl";
    let run = |extra: &[&str]| {
        let mut args = vec!["logits", "--backend", "sim", "-p", prompt, "--json"];
        args.extend_from_slice(extra);
        let o = rotary(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let resident = run(&[]);
    let budget64 = run(&["--vram-budget", "64MiB"]);
    let streamed = run(&["-c", "256", "--vram-budget", "47MiB"]);
    let small_ctx = run(&["-c", "256"]);
    assert_eq!(resident["positions"], budget64["positions"]);
    assert_eq!(small_ctx["positions"], streamed["positions"]);
    assert_eq!(resident["positions"], streamed["positions"]);
    let stats = &streamed["stats"];
    for key in [
        "peak_vram_bytes",
        "vram_budget_bytes",
        "hit_rate",
        "misses_per_layer_token",
        "h2d_bytes_per_token",
        "link_gbps",
        "prefetch_recall",
        "cpu_expert_share",
    ] {
        assert!(stats.get(key).is_some(), "stats lack {key}: {stats}");
    }
    assert!(stats["misses_per_layer_token"].as_f64().unwrap() > 0.0, "{stats}");
    assert!(stats["peak_vram_bytes"].as_u64().unwrap() <= 47 << 20, "{stats}");
    assert!(stats["vram_budget_bytes"].as_u64() == Some(47 << 20));
    // A budget below the dense part, and a budget without a device backend: clear errors.
    let o = rotary(&["logits", "--backend", "sim", "-p", "hi", "--vram-budget", "16MiB"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("too small"), "{}", stderr(&o));
    let o = rotary(&["run", "--vram-budget", "1GiB", "-n", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--backend cuda or sim"), "{}", stderr(&o));
    let o = rotary(&["run", "--backend", "sim", "--cache-policy", "fifo", "-n", "1"]);
    assert!(stderr(&o).contains("--cache-policy fifo"), "{}", stderr(&o));
}

#[test]
fn bench_paper_runs_scaled_on_the_simulator_and_sweeps() {
    let cache = temp_dir("paper-cache");
    let paper = |extra: &[&str]| {
        let mut args = vec!["bench", "--paper", "--preset", "tiny", "--quant", "q8_0", "-n", "12"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_rotary"))
            .args(&args)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .expect("run")
    };
    let o = paper(&["--json", "--backend", "sim"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    for key in [
        "decode_tok_s",
        "prefill_tok_s",
        "n_decode",
        "latency_ms_p50",
        "latency_ms_p99",
        "peak_vram_bytes",
        "vram_budget_bytes",
        "peak_rss_bytes",
        "pinned_bytes",
        "hit_rate",
        "h2d_bytes_per_token",
        "link_gbps",
        "prefetch_recall",
        "cpu_expert_share",
        "routing",
        "backend",
        "device",
        "model",
    ] {
        assert!(v.get(key).is_some(), "{key} missing: {v}");
    }
    assert_eq!(v["n_decode"], 12);
    // A synthesized file routes like text by default, and says so; a scaled preset's run has
    // simulator figures and no laptop number.
    assert_eq!(v["routing"], "text");
    assert_eq!(v["kind"], "simulated");
    let note = v["note"].as_str().unwrap();
    assert!(note.contains("simulated GPU") && note.contains("routing text by default"), "{v}");
    assert!(note.contains("no laptop projection") && v["laptop_projection"].is_null(), "{v}");
    assert!(v["peak_vram_bytes"].as_u64() <= v["vram_budget_bytes"].as_u64());
    assert!(cache.join("rotary/tiny-q8_0-seed0.gguf").exists(), "the preset is cached");
    // A sweep over residency and routing modes draws its chart.
    let plot = cache.join("sweep.svg");
    let o = paper(&[
        "--backend",
        "sim",
        "--routing",
        "sticky:0.45",
        "--sweep",
        "vram=25%,100%",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("== bench --paper 25% ==") && out.contains("routing    sticky:0.45"),
        "{out}"
    );
    let svg = std::fs::read_to_string(&plot).expect("chart written");
    assert!(svg.contains("<polyline") && svg.contains("residency"));
    // The CPU engine runs the protocol too (the llama.cpp CPU peer's counterpart).
    let o = paper(&["--backend", "cpu", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["hit_rate"].is_null() && v["decode_tok_s"].as_f64().unwrap() > 0.0);
    let o = paper(&["--sweep", "colour=red"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--sweep colour=red"), "{}", stderr(&o));
    std::fs::remove_dir_all(&cache).ok();
}

/// Without a GPU, `bench --paper` replays the paper's model: the real shape's tensor table, text
/// routing, a projection for the laptop with its assumptions; a scaled preset gets no laptop
/// figure; a routing that needs the hidden state is refused.
#[test]
fn bench_paper_without_a_gpu_replays_the_real_shape() {
    let paper = |extra: &[&str]| rotary(&[&["bench", "--paper"][..], extra].concat());
    let o = paper(&["--preset", "qwen3-30b-a3b", "-n", "48", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["kind"], "replay");
    assert_eq!(v["routing"], "text");
    assert_eq!(v["n_decode"], 48);
    assert_eq!(v["vram_budget_bytes"], 6_764_573_491u64);
    let p = &v["projection"];
    assert_eq!(p["kind"], "projected");
    assert_eq!(p["target"], "laptop-4060");
    assert!(p["decode_tok_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(p["assumptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("11.8")));
    for key in ["hit_rate", "cpu_experts_per_token", "link_bytes_per_token", "reproduce_on_gpu"] {
        assert!(v.get(key).is_some_and(|x| !x.is_null()), "{key} missing: {v}");
    }
    assert!(v["reproduce_on_gpu"].as_str().unwrap().contains("--backend cuda"));
    // The one-screen summary says what it is in its first line.
    let o = paper(&["--preset", "qwen35-35b-a3b", "-n", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let first = out.lines().next().unwrap_or("");
    assert!(first.contains("no GPU") && first.contains("a projection, not a measurement"), "{out}");
    for line in ["hit rate", "CPU ", "link ", "projected", "21.06", "on a GPU", "assumptions"] {
        assert!(out.contains(line), "{line} missing: {out}");
    }
    // A scaled preset: counts, no laptop figure.
    let o = paper(&["--preset", "tiny", "--quant", "q8_0", "-n", "8", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["projection"].is_null() && v["model"].as_str().unwrap().contains("scaled"), "{v}");
    let o = paper(&["--routing", "model", "-n", "8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not depend on the hidden state"), "{}", stderr(&o));
    // A recorded trace replays; one of another shape, or too short for -n, is refused by name.
    let dir = std::env::temp_dir().join(format!("rotary-cli-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let small = dir.join("two-layers.trace");
    std::fs::write(&small, "rotary-routing v1 layers=2 k=2 experts=8\n0 1;2 3\n1 2;3 4\n")
        .expect("trace");
    let spec = format!("trace:{}", small.display());
    let o = paper(&["--preset", "qwen3-30b-a3b", "--routing", &spec, "-n", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("routing trace") && stderr(&o).contains("48 layers"),
        "{}",
        stderr(&o)
    );
    let o = paper(&["--preset", "tiny", "--quant", "q8_0", "--routing", &spec, "-n", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("2 tokens; -n 2"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `synth --vocab X.tiktoken`: the real Qwen3.5/3.6 vocabulary, built from its tiktoken ranks.
#[test]
fn synth_with_qwen35_tiktoken() {
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen35/qwen3_6.tiktoken");
    if !vocab.exists() {
        let path = vocab.display();
        println!("SKIP synth_with_qwen35_tiktoken: {path} missing (run tests/fetch_data.py)");
        return;
    }
    let dir = temp_dir("tiktoken");
    let out = dir.join("tiny-qwen35-vocab.gguf");
    let (v, o) = (vocab.to_str().unwrap(), out.to_str().unwrap());
    let r = rotary(&["synth", "--preset", "tiny", "--quant", "q8_0", "--vocab", v, "-o", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = rotary(&["tokenize", "-m", o, "Hello!"]);
    assert_eq!(stdout(&r).trim(), "9419 0", "{}", stderr(&r));
    let r = rotary(&["inspect", o, "--kv"]);
    assert!(stdout(&r).contains("\"qwen35\""), "{}", stdout(&r));
    // A broken rank file is refused with the file and line named.
    let bad = dir.join("bad.tiktoken");
    std::fs::write(&bad, "IQ== 0\nIg== 2\n").unwrap();
    let r = rotary(&["synth", "--preset", "tiny", "--vocab", bad.to_str().unwrap(), "-o", o]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("bad.tiktoken") && stderr(&r).contains("line 2"), "{}", stderr(&r));
    std::fs::remove_dir_all(&dir).unwrap();
}
