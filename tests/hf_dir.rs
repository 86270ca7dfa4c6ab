//! HF model-directory tests, each in its own temporary directory: a single-file and a sharded
//! checkpoint, shard names that try to leave the directory (refused), index/shard disagreements,
//! a remote-code config that loads but runs nothing, and the typed config getters (missing keys,
//! bad numbers, keys nested under `text_config`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rotary::format::hf::HfDir;
use rotary::Error;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rotary-hf-{}-{label}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// F32 tensors serialized in the safetensors format: 8-byte LE header length, JSON, data.
fn safetensors(tensors: &[(&str, &[f32])]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, values) in tensors {
        let (start, end) = (data.len(), data.len() + 4 * values.len());
        entries.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{start},{end}]}}",
            serde_json::to_string(name).unwrap(),
            values.len()
        ));
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// `model.safetensors.index.json` mapping each tensor to its shard file name.
fn index(map: &[(&str, &str)]) -> String {
    let json = |s: &str| serde_json::to_string(s).unwrap();
    let entries: Vec<String> =
        map.iter().map(|(t, s)| format!("{}:{}", json(t), json(s))).collect();
    format!("{{\"metadata\":{{\"total_size\":0}},\"weight_map\":{{{}}}}}", entries.join(","))
}

const CONFIG: &str = r#"{
  "architectures": ["Qwen3MoeForCausalLM"],
  "model_type": "qwen3_moe",
  "hidden_size": 2048,
  "num_hidden_layers": 48,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000,
  "tie_word_embeddings": false,
  "sliding_window": null,
  "torch_dtype": "bfloat16"
}"#;

/// A single-file checkpoint with two tensors.
fn single_file_dir(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    dir.write("config.json", CONFIG);
    dir.write("model.safetensors", safetensors(&[("a", &[1.0, 2.0]), ("b", &[-3.5])]));
    dir
}

/// A two-shard checkpoint with the given index entries (tensor -> shard).
fn sharded_dir(label: &str, weight_map: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new(label);
    dir.write("config.json", CONFIG);
    dir.write(SHARD_1, safetensors(&[("a", &[1.0, 2.0]), ("b", &[3.0])]));
    dir.write(SHARD_2, safetensors(&[("c", &[4.0, 5.0, 6.0])]));
    dir.write("model.safetensors.index.json", index(weight_map));
    dir
}

const SHARD_1: &str = "model-00001-of-00002.safetensors";
const SHARD_2: &str = "model-00002-of-00002.safetensors";

fn open_err(dir: &Path) -> Error {
    match HfDir::open(dir) {
        Ok(_) => panic!("{} opened, expected an error", dir.display()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Weights

#[test]
fn single_file_checkpoint() {
    let dir = single_file_dir("single");
    let hf = HfDir::open(&dir.0).unwrap();
    assert_eq!(hf.shards().len(), 1);
    assert_eq!(hf.tensor_count(), 2);
    assert_eq!(hf.tensor("a").unwrap().to_f32_vec().unwrap(), [1.0, 2.0]);
    assert_eq!(hf.tensor("b").unwrap().shape, &[1]);
    assert_eq!(hf.tensor_info("a").unwrap().shape, [2]);
    let missing = |e: &Error| matches!(e, Error::MissingTensor { name } if name == "model.norm.w");
    let e = hf.tensor("model.norm.w").err().unwrap();
    assert!(missing(e.root()), "{e}");
    assert!(hf.tokenizer_json().is_none());
    assert!(hf.chat_template().is_none());
    assert!(!hf.config_has_remote_code());
}

#[test]
fn sharded_checkpoint() {
    let dir = sharded_dir("sharded", &[("a", SHARD_1), ("b", SHARD_1), ("c", SHARD_2)]);
    let hf = HfDir::open(&dir.0).unwrap();
    assert_eq!(hf.shards().len(), 2, "each shard opened once");
    let mut names: Vec<&str> = hf.tensor_names().collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(hf.tensor("b").unwrap().to_f32_vec().unwrap(), [3.0]);
    assert_eq!(hf.tensor("c").unwrap().to_f32_vec().unwrap(), [4.0, 5.0, 6.0]);
}

#[test]
fn traversal_shard_names_are_refused() {
    let dir = TempDir::new("traversal");
    dir.write("config.json", CONFIG);
    // A real, valid file one level up: "../x.safetensors" must be refused, not merely missing.
    let outside = dir.0.with_extension("x.safetensors");
    std::fs::write(&outside, safetensors(&[("a", &[1.0])])).unwrap();
    std::fs::create_dir_all(dir.0.join("a")).unwrap();
    dir.write("a/b.safetensors", safetensors(&[("a", &[1.0])]));
    let outside_name = format!("../{}", outside.file_name().unwrap().to_string_lossy());
    let names = [
        "../x.safetensors",
        outside_name.as_str(),
        "/etc/passwd",
        "a/b.safetensors",
        "a\\b.safetensors",
        "..",
        "",
        "x\u{0}.safetensors",
        "C:x.safetensors",
    ];
    for name in names {
        dir.write("model.safetensors.index.json", index(&[("model.embed_tokens.weight", name)]));
        let e = open_err(&dir.0);
        assert!(matches!(e.root(), Error::Refused { .. }), "{name:?}: {e}");
        assert!(e.to_string().contains("model.embed_tokens.weight"), "{e}");
    }
    std::fs::remove_file(&outside).unwrap();
}

/// An index/shard disagreement: what it is, the weight_map, the expected root error, and a
/// string its message must contain.
type WeightMap = &'static [(&'static str, &'static str)];
type AgreeCase = (&'static str, WeightMap, fn(&Error) -> bool, &'static str);

#[test]
fn index_and_shards_must_agree() {
    let cases: [AgreeCase; 4] = [
        (
            "index names a tensor its shard lacks",
            &[("a", SHARD_1), ("b", SHARD_1), ("c", SHARD_2), ("d", SHARD_2)],
            |e| matches!(e, Error::MissingTensor { name } if name == "d"),
            "'d'",
        ),
        (
            "shard tensor absent from the index",
            &[("a", SHARD_1), ("c", SHARD_2)],
            |e| matches!(e, Error::Safetensors { .. }),
            "tensor 'b'",
        ),
        (
            "index places a tensor in the wrong shard",
            &[("a", SHARD_1), ("b", SHARD_2), ("c", SHARD_2)],
            |e| matches!(e, Error::Safetensors { .. }),
            "tensor 'b'",
        ),
        (
            "shard file missing",
            &[("a", SHARD_1), ("b", SHARD_1), ("c", "model-x.safetensors")],
            |e| matches!(e, Error::Io { .. }),
            "model-x.safetensors",
        ),
    ];
    for (what, map, want, mentions) in cases {
        let dir = sharded_dir("agree", map);
        let e = open_err(&dir.0);
        assert!(want(e.root()), "{what}: {e:?}");
        assert!(e.to_string().contains(mentions), "{what}: {e}");
    }
}

#[test]
fn duplicate_tensor_across_shards_is_an_error() {
    let dir = sharded_dir("dup", &[("a", SHARD_1), ("b", SHARD_1), ("c", SHARD_2)]);
    dir.write(SHARD_2, safetensors(&[("b", &[9.0]), ("c", &[4.0, 5.0, 6.0])]));
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::DuplicateTensor { name } if name == "b"), "{e}");
    // The same tensor listed twice in weight_map is a duplicate JSON key.
    let dir = sharded_dir("dup-index", &[("a", SHARD_1), ("b", SHARD_1), ("c", SHARD_2)]);
    let text = index(&[("a", SHARD_1), ("b", SHARD_1), ("c", SHARD_2), ("b", SHARD_2)]);
    dir.write("model.safetensors.index.json", text);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::DuplicateKey { key } if key == "weight_map.b"), "{e}");
}

#[test]
fn bad_weight_files_are_errors() {
    let dir = TempDir::new("noweights");
    dir.write("config.json", CONFIG);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    dir.write("model.safetensors.index.json", "{\"weight_map\":{\"a\":3}}");
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "weight_map.a"), "{e}");
    dir.write("model.safetensors.index.json", "{\"metadata\":{}}");
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::MissingKey { key } if key == "weight_map"), "{e}");
    dir.write("model.safetensors", b"\x02\0\0\0\0\0\0\0{}\0");
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Config, tokenizer files, remote code

#[test]
fn remote_code_config_loads_but_nothing_runs() {
    let dir = single_file_dir("remote");
    let marker = dir.0.join("executed");
    let code = format!("open({:?}, 'w').write('ran')\n", marker.display().to_string());
    dir.write("modeling_evil.py", &code);
    dir.write("configuration_evil.py", &code);
    let config = CONFIG.replacen(
        '{',
        r#"{"auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilModel"}, "trust_remote_code": true,"#,
        1,
    );
    dir.write("config.json", config);
    let hf = HfDir::open(&dir.0).unwrap();
    assert!(hf.config_has_remote_code());
    assert_eq!(hf.config_u64("hidden_size").unwrap(), 2048);
    assert_eq!(hf.tensor("a").unwrap().to_f32_vec().unwrap(), [1.0, 2.0]);
    assert!(!marker.exists(), "remote code ran");
}

#[test]
fn config_getters_validate_and_name_the_key() {
    let dir = single_file_dir("getters");
    let hf = HfDir::open(&dir.0).unwrap();
    assert_eq!(hf.config_u64("num_hidden_layers").unwrap(), 48);
    assert_eq!(hf.config_f64("rms_norm_eps").unwrap(), 1e-6);
    assert_eq!(hf.config_f64("rope_theta").unwrap(), 1e6, "integers read as floats");
    assert!(!hf.config_bool("tie_word_embeddings").unwrap());
    assert_eq!(hf.config_str("model_type").unwrap(), "qwen3_moe");
    assert_eq!(hf.config_u64_opt("num_experts").unwrap(), None);
    assert_eq!(hf.config_u64_opt("sliding_window").unwrap(), None, "null counts as absent");

    let e = hf.config_u64("num_experts").unwrap_err();
    assert!(matches!(e.root(), Error::MissingKey { key } if key == "num_experts"), "{e}");
    assert!(e.to_string().contains("num_experts") && e.to_string().contains("config.json"), "{e}");
    let e = hf.config_u64("rms_norm_eps").unwrap_err();
    assert!(matches!(e.root(), Error::BadValue { key, .. } if key == "rms_norm_eps"), "{e}");
    let e = hf.config_u64("model_type").unwrap_err();
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "model_type"), "{e}");
    let e = hf.config_bool("hidden_size").unwrap_err();
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "hidden_size"), "{e}");
    let e = hf.config_str("architectures").unwrap_err();
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "architectures"), "{e}");

    dir.write("config.json", CONFIG.replace("2048", "-2048"));
    let e = HfDir::open(&dir.0).unwrap().config_u64("hidden_size").unwrap_err();
    assert!(matches!(e.root(), Error::BadValue { key, .. } if key == "hidden_size"), "{e}");
    assert!(e.to_string().contains("-2048"), "{e}");
}

#[test]
fn nested_text_config_lookup() {
    let dir = single_file_dir("nested");
    dir.write(
        "config.json",
        r#"{"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
            "tie_word_embeddings": false,
            "text_config": {"hidden_size": 2048, "num_experts": 256, "rms_norm_eps": 1e-6,
                            "model_type": "qwen3_5_moe_text", "tie_word_embeddings": true,
                            "head_dim": "256", "rope_theta": null},
            "vision_config": {"hidden_size": 1152}}"#,
    );
    let hf = HfDir::open(&dir.0).unwrap();
    assert_eq!(hf.config_u64("hidden_size").unwrap(), 2048);
    assert_eq!(hf.config_u64("num_experts").unwrap(), 256);
    assert_eq!(hf.config_f64("rms_norm_eps").unwrap(), 1e-6);
    assert_eq!(hf.config_str("model_type").unwrap(), "qwen3_5_moe", "top level wins");
    assert!(!hf.config_bool("tie_word_embeddings").unwrap(), "top level wins");
    let e = hf.config_u64("head_dim").unwrap_err();
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "text_config.head_dim"), "{e}");
    let e = hf.config_f64("rope_theta").unwrap_err();
    assert!(matches!(e.root(), Error::MissingKey { key } if key == "rope_theta"), "{e}");

    dir.write("config.json", r#"{"text_config": 7}"#);
    let e = HfDir::open(&dir.0).unwrap().config_u64("hidden_size").unwrap_err();
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "text_config"), "{e}");
}

#[test]
fn malformed_config_files() {
    let dir = single_file_dir("badconfig");
    dir.write("config.json", r#"{"hidden_size": 1, "hidden_size": 2}"#);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::DuplicateKey { key } if key == "hidden_size"), "{e}");
    dir.write("config.json", r#"{"text_config": {"a": 1, "a": 1}}"#);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::DuplicateKey { key } if key == "text_config.a"), "{e}");
    dir.write("config.json", "[1, 2]");
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::Json { .. }) && e.to_string().contains("config.json"), "{e}");
    dir.write("config.json", "{\"a\": ");
    assert!(matches!(open_err(&dir.0).root(), Error::Json { .. }));
    dir.write("config.json", b"{\"a\": \"\xff\"}");
    assert!(matches!(open_err(&dir.0).root(), Error::InvalidUtf8 { offset: 7, .. }));
    let big = format!("{{\"pad\": \"{}\"}}", " ".repeat(4 << 20));
    dir.write("config.json", big);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::CountTooLarge { max, .. } if *max == 4 << 20), "{e}");
    std::fs::remove_file(dir.0.join("config.json")).unwrap();
    let e = open_err(&dir.0);
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("config.json"), "{e}");
}

#[test]
fn tokenizer_files_and_chat_template() {
    let dir = single_file_dir("tokenizer");
    dir.write("tokenizer.json", "{}");
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen3/tokenizer_config.json");
    std::fs::copy(&real, dir.0.join("tokenizer_config.json")).unwrap();
    let hf = HfDir::open(&dir.0).unwrap();
    assert_eq!(hf.tokenizer_json(), Some(dir.0.join("tokenizer.json").as_path()));
    assert!(hf.chat_template().unwrap().contains("<|im_start|>"));

    // No template in tokenizer_config.json: chat_template.jinja is the fallback.
    dir.write("tokenizer_config.json", r#"{"bos_token": null}"#);
    dir.write("chat_template.jinja", "{{ messages }}");
    assert_eq!(HfDir::open(&dir.0).unwrap().chat_template(), Some("{{ messages }}"));
    // Older list form: the entry named "default".
    dir.write(
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "D"}]}"#,
    );
    assert_eq!(HfDir::open(&dir.0).unwrap().chat_template(), Some("D"));
    dir.write("tokenizer_config.json", r#"{"chat_template": 3}"#);
    let e = open_err(&dir.0);
    assert!(matches!(e.root(), Error::KeyType { key, .. } if key == "chat_template"), "{e}");
}
