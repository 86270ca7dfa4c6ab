//! A Hugging Face model directory: `config.json`, the safetensors weights (one
//! `model.safetensors`, or shards listed by `model.safetensors.index.json`), and the tokenizer
//! files. This is the second way weights enter the engine, beside GGUF.
//!
//! The directory is hostile input like any file (reliability.md §2, §7 item 9): JSON files are
//! size-capped before they are read and may not repeat a key; shard names in the index are plain
//! file names (no separator, no `..`, not absolute), else `Error::Refused`; every shard is opened
//! once and the index must agree with the shards exactly. `auto_map` / `trust_remote_code` are
//! never honoured: there is no code path that runs anything from the directory, and
//! `config_has_remote_code()` exists only so the CLI can warn.
//!
//! Config getters look up a key at the top level, then under `text_config` (Qwen3.5 nests the
//! language model's hyperparameters there, models.md §2.1), validate the JSON type and range, and
//! name the key in every error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::safetensors::{
    json_type, parse_json_strict, SafetensorsFile, TensorInfo, TensorView,
};
use crate::limits;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Newer transformers versions save the chat template beside tokenizer_config.json.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";
/// The sub-object holding the language model's config in multimodal checkpoints.
pub const TEXT_CONFIG_KEY: &str = "text_config";

/// An opened, validated HF model directory. Tensor data is borrowed from the shard mappings.
pub struct HfDir {
    dir: PathBuf,
    config_path: PathBuf,
    config: Map<String, Value>,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> index into `shards`.
    tensor_shard: HashMap<String, usize>,
    tokenizer_json: Option<PathBuf>,
    chat_template: Option<String>,
}

impl HfDir {
    /// Every shard copied into anonymous memory (`FileBytes::load_to_memory`);
    /// `progress(done, total)` over all of them.
    pub fn load_to_memory(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let total: u64 = self.shards.iter().map(|s| s.bytes().len() as u64).sum();
        let mut before = 0;
        for shard in &mut self.shards {
            let len = shard.bytes().len() as u64;
            shard.load_to_memory(&mut |done, _| progress(before + done, total))?;
            before += len;
        }
        Ok(())
    }

    /// Read `config.json`, open and cross-check the weights, and find the tokenizer files.
    /// Weights: `model.safetensors` if present (as transformers prefers it), else the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfDir> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join(CONFIG_FILE);
        let config = read_json_object(&config_path, limits::JSON_CONFIG_BYTES_MAX)?;
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(INDEX_FILE);
        let (shards, tensor_shard) = if single.is_file() {
            let file = SafetensorsFile::open(&single)?;
            let names = file.header().tensors().iter().map(|t| (t.name.clone(), 0)).collect();
            (vec![file], names)
        } else if index.is_file() {
            open_shards(&dir, &index)?
        } else {
            return Err(Error::Safetensors {
                reason: format!("no {WEIGHTS_FILE} or {INDEX_FILE} in the directory"),
            }
            .in_file(&dir));
        };
        let tokenizer_json = Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file());
        let chat_template = read_chat_template(&dir)?;
        Ok(HfDir { dir, config_path, config, shards, tensor_shard, tokenizer_json, chat_template })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw top-level object of `config.json`.
    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// True when `config.json` asks for custom code (`auto_map`, or `trust_remote_code: true`),
    /// at the top level or in `text_config`. Only for a warning: nothing here runs any code.
    pub fn config_has_remote_code(&self) -> bool {
        let asks = |m: &Map<String, Value>| {
            m.contains_key("auto_map") || m.get("trust_remote_code") == Some(&Value::Bool(true))
        };
        asks(&self.config)
            || matches!(self.config.get(TEXT_CONFIG_KEY), Some(Value::Object(t)) if asks(t))
    }

    /// `tokenizer.json`, when the directory has one.
    pub fn tokenizer_json(&self) -> Option<&Path> {
        self.tokenizer_json.as_deref()
    }

    /// The chat template from `tokenizer_config.json` (or `chat_template.jinja`), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The opened weight files, each once, in file-name order.
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    pub fn tensor_count(&self) -> usize {
        self.tensor_shard.len()
    }

    /// Every tensor name (in no particular order).
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensor_shard.keys().map(String::as_str)
    }

    /// A tensor's header entry (dtype, shape) without touching its data.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let &shard = self.tensor_shard.get(name)?;
        self.shards[shard].header().tensor(name)
    }

    /// A tensor by name, from whichever shard holds it (`Error::MissingTensor` when absent).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let &shard = self
            .tensor_shard
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() }.in_file(&self.dir))?;
        self.shards[shard].tensor(name)
    }
}

// ---------------------------------------------------------------------------------------------
// Typed config getters

/// Follow a dotted key through nested objects; `null` counts as absent.
fn walk<'a>(root: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut v = root.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v).filter(|v| !v.is_null())
}

impl HfDir {
    /// The value of `key` at the top level, else in `text_config`, with its qualified name.
    /// A dotted key walks nested objects (`rope_parameters.rope_theta`, transformers 5).
    /// A `null` value counts as absent (HF configs write `"sliding_window": null`).
    fn lookup(&self, key: &str) -> Result<Option<(String, &Value)>> {
        if let Some(v) = walk(&self.config, key) {
            return Ok(Some((key.to_string(), v)));
        }
        match self.config.get(TEXT_CONFIG_KEY) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(text)) => {
                Ok(walk(text, key).map(|v| (format!("{TEXT_CONFIG_KEY}.{key}"), v)))
            }
            Some(other) => Err(Error::KeyType {
                key: TEXT_CONFIG_KEY.into(),
                expected: "object".into(),
                found: json_type(other).into(),
            }
            .in_file(&self.config_path)),
        }
    }

    /// Look `key` up and convert it with `f` (given the qualified key name for errors).
    fn typed<'a, T>(
        &'a self,
        key: &str,
        f: impl FnOnce(&str, &'a Value) -> Result<T>,
    ) -> Result<Option<T>> {
        let Some((qualified, value)) = self.lookup(key)? else { return Ok(None) };
        f(&qualified, value).map(Some).map_err(|e| e.in_file(&self.config_path))
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| Error::MissingKey { key: key.to_string() }.in_file(&self.config_path))
    }

    /// A non-negative integer (`2.0`, `-1` and strings are errors naming the key).
    pub fn config_u64_opt(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, |qualified, v| match v {
            Value::Number(n) => n.as_u64().ok_or_else(|| Error::BadValue {
                key: qualified.to_string(),
                reason: format!("is {n}, expected a non-negative integer"),
            }),
            other => Err(type_error(qualified, "non-negative integer", other)),
        })
    }

    /// A finite number (integers are converted).
    pub fn config_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, |qualified, v| match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            Some(x) => Err(Error::BadValue {
                key: qualified.to_string(),
                reason: format!("is {x}, expected a finite number"),
            }),
            None => Err(type_error(qualified, "number", v)),
        })
    }

    pub fn config_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, |qualified, v| match v {
            Value::Bool(b) => Ok(*b),
            other => Err(type_error(qualified, "bool", other)),
        })
    }

    pub fn config_str_opt(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, |qualified, v| match v {
            Value::String(s) => Ok(s.as_str()),
            other => Err(type_error(qualified, "string", other)),
        })
    }

    /// An array of strings (any other element is an error naming the key).
    pub fn config_str_array_opt(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, |qualified, v| match v {
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().ok_or_else(|| type_error(qualified, "array of strings", v)))
                .collect(),
            other => Err(type_error(qualified, "array of strings", other)),
        })
    }

    /// Required variants: `Error::MissingKey` naming the key when absent (or null).
    pub fn config_u64(&self, key: &str) -> Result<u64> {
        self.required(key, self.config_u64_opt(key)?)
    }

    pub fn config_f64(&self, key: &str) -> Result<f64> {
        self.required(key, self.config_f64_opt(key)?)
    }

    pub fn config_bool(&self, key: &str) -> Result<bool> {
        self.required(key, self.config_bool_opt(key)?)
    }

    pub fn config_str(&self, key: &str) -> Result<&str> {
        self.required(key, self.config_str_opt(key)?)
    }
}

fn type_error(key: &str, expected: &str, found: &Value) -> Error {
    let (key, expected, found) = (key.to_string(), expected.to_string(), json_type(found).into());
    Error::KeyType { key, expected, found }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Read a text file of at most `max` bytes; the size is checked before anything is allocated,
/// and the read itself is bounded (the file may grow in between).
fn read_text_capped(path: &Path, max: u64) -> Result<String> {
    let buf = crate::format::read_capped(path, max)?;
    String::from_utf8(buf).map_err(|e| {
        let offset = e.utf8_error().valid_up_to() as u64;
        Error::InvalidUtf8 { what: "JSON text".into(), offset }.in_file(path)
    })
}

/// A capped JSON file whose top level is an object and whose objects never repeat a key.
fn read_json_object(path: &Path, max: u64) -> Result<Map<String, Value>> {
    let text = read_text_capped(path, max)?;
    let what = path.file_name().map_or("JSON".into(), |n| n.to_string_lossy().into_owned());
    let json = parse_json_strict(&text, &what, 0, |p, _| Error::DuplicateKey { key: p.join(".") })
        .map_err(|e| e.in_file(path))?;
    match json.value {
        Value::Object(map) => Ok(map),
        other => Err(Error::Json {
            what,
            reason: format!("top level is {}, expected an object", json_type(&other)),
        }
        .in_file(path)),
    }
}

/// `chat_template` of tokenizer_config.json: a string, or (older format) a list of
/// `{name, template}` from which the one named "default" is taken. Falls back to
/// chat_template.jinja. Both files are optional; a malformed one is an error.
fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    if path.is_file() {
        let config = read_json_object(&path, limits::JSON_CONFIG_BYTES_MAX)?;
        let template = match config.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            Some(other) => {
                return Err(type_error("chat_template", "string", other).in_file(&path));
            }
        };
        if template.is_some() {
            return Ok(template);
        }
    }
    let jinja = dir.join(CHAT_TEMPLATE_FILE);
    if jinja.is_file() {
        return read_text_capped(&jinja, limits::JSON_CONFIG_BYTES_MAX).map(Some);
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Sharded weights

/// A shard file name from the index must name a file in the directory itself.
fn check_shard_name(tensor: &str, shard: &str) -> Result<()> {
    let problem = if shard.is_empty() {
        Some("is empty")
    } else if shard.contains('/') || shard.contains('\\') {
        Some("contains a path separator")
    } else if shard.contains("..") {
        Some("contains '..'")
    } else if shard.contains('\0') {
        Some("contains a NUL byte")
    } else if shard.contains(':') || Path::new(shard).is_absolute() {
        Some("is an absolute or drive path")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(Error::Refused {
            reason: format!(
                "shard file name {shard:?} for tensor '{tensor}' {why}; only plain file names \
                 in the model directory are accepted"
            ),
        }),
    }
}

/// The `weight_map` of the index as (tensor, shard file name) pairs, names checked.
fn read_weight_map(index_path: &Path) -> Result<Vec<(String, String)>> {
    let index = read_json_object(index_path, limits::JSON_INDEX_BYTES_MAX)?;
    let in_index = |e: Error| e.in_file(index_path);
    let map = match index.get("weight_map") {
        Some(Value::Object(map)) => map,
        Some(other) => return Err(in_index(type_error("weight_map", "object", other))),
        None => return Err(in_index(Error::MissingKey { key: "weight_map".into() })),
    };
    if map.is_empty() || map.len() > limits::SAFETENSORS_TENSOR_COUNT_MAX {
        return Err(in_index(Error::BadValue {
            key: "weight_map".into(),
            reason: format!(
                "has {} tensors, expected 1 to {}",
                map.len(),
                limits::SAFETENSORS_TENSOR_COUNT_MAX
            ),
        }));
    }
    let mut pairs = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let Value::String(shard) = shard else {
            let key = format!("weight_map.{tensor}");
            return Err(in_index(type_error(&key, "string (a shard file name)", shard)));
        };
        check_shard_name(tensor, shard).map_err(in_index)?;
        pairs.push((tensor.clone(), shard.clone()));
    }
    Ok(pairs)
}

/// Open every shard named by the index once, and check that the index and the shards list
/// exactly the same tensors, each in exactly one shard.
fn open_shards(
    dir: &Path,
    index_path: &Path,
) -> Result<(Vec<SafetensorsFile>, HashMap<String, usize>)> {
    let weight_map = read_weight_map(index_path)?;
    let mut shard_ids: BTreeMap<&str, usize> =
        weight_map.iter().map(|(_, s)| (&s[..], 0)).collect();
    if shard_ids.len() > limits::SAFETENSORS_SHARDS_MAX {
        return Err(Error::CountTooLarge {
            what: "distinct shard files in weight_map".into(),
            offset: 0,
            count: shard_ids.len() as u64,
            max: limits::SAFETENSORS_SHARDS_MAX as u64,
        }
        .in_file(index_path));
    }
    let mut shards = Vec::with_capacity(shard_ids.len());
    for (id, (name, slot)) in shard_ids.iter_mut().enumerate() {
        *slot = id;
        shards.push(SafetensorsFile::open(dir.join(name))?);
    }
    let expected: HashMap<&str, usize> =
        weight_map.iter().map(|(t, s)| (&t[..], shard_ids[&s[..]])).collect();
    let mut found: HashMap<String, usize> = HashMap::with_capacity(expected.len());
    for (id, shard) in shards.iter().enumerate() {
        for t in shard.header().tensors() {
            if found.insert(t.name.clone(), id).is_some() {
                return Err(Error::DuplicateTensor { name: t.name.clone() }.in_file(shard.path()));
            }
            let reason = match expected.get(t.name.as_str()) {
                Some(&want) if want == id => continue,
                Some(&want) => format!("the index places it in {}", shards[want].path().display()),
                None => "it is not in the index weight_map".to_string(),
            };
            let (name, here) = (&t.name, shard.path().display());
            let reason = format!("tensor '{name}' is in shard {here}, but {reason}");
            return Err(Error::Safetensors { reason }.in_file(index_path));
        }
    }
    for (tensor, shard) in &weight_map {
        if !found.contains_key(tensor) {
            let path = dir.join(shard);
            return Err(Error::MissingTensor { name: tensor.clone() }.in_file(path));
        }
    }
    Ok((shards, found))
}
