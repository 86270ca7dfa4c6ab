//! safetensors reader: the HF weight format, validated as hostile input, with zero-copy tensor
//! views into a memory map.
//!
//! Layout (huggingface/safetensors README): u64 LE `N`, then `N` bytes of UTF-8 JSON that start
//! with `{` (trailing 0x20 padding allowed), then the data section. The JSON maps each tensor name
//! to `{"dtype", "shape", "data_offsets": [start, end]}` (offsets relative to the data section),
//! plus an optional `"__metadata__"` string->string map.
//!
//! Checks (reliability.md §2 and §7 item 7), each a typed `Error`, never a panic, and never an
//! allocation sized by a number that was not checked: header under 8 bytes, over the 100 MB cap
//! or past the end; not UTF-8; not starting with `{`; invalid JSON; a key repeated at any depth
//! (serde_json silently keeps the last one, so an auditor and a loader could read different
//! tensors); unknown dtype; shape product overflow; `end - start != numel * dtype_size`; tensors,
//! sorted by offset, not contiguous from 0 (each must start where the previous one ended, which
//! also pins down zero-size tensors); trailing bytes after the last tensor (anti-polyglot).
//!
//! An offset that is valid in the file may still be misaligned for its dtype, so tensor data is
//! only ever exposed as `&[u8]` and converted by copying (`to_f32_vec`), never cast to `&[f32]`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::format::FileBytes;
use crate::limits;

/// Bytes of the little-endian u64 header length that opens every file.
pub const LEN_PREFIX_BYTES: u64 = 8;
/// The reserved top-level key holding free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

// ---------------------------------------------------------------------------------------------
// Dtypes

/// The element types of the safetensors spec that this reader knows. F8 types parse (their
/// sizes are known) but nothing computes with them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    F8E4M3,
    F8E5M2,
}

impl Dtype {
    pub const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::Bf16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
    ];

    /// The spelling used in the JSON header ("BF16", "F8_E4M3", ...).
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            Bf16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
            F8E4M3 => "F8_E4M3",
            F8E5M2 => "F8_E5M2",
        }
    }

    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    pub fn size_bytes(self) -> u64 {
        use Dtype::*;
        match self {
            Bool | U8 | I8 | F8E4M3 | F8E5M2 => 1,
            I16 | U16 | F16 | Bf16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Header

/// One validated tensor entry of the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major (numpy order: the last dimension is the fastest).
    pub shape: Vec<u64>,
    /// `[start, end)` in bytes, relative to the start of the data section.
    pub data_offsets: [u64; 2],
    /// Byte offset in the file of this tensor's key in the JSON header (for error messages).
    pub info_offset: u64,
}

impl TensorInfo {
    /// Product of the shape (1 for a rank-0 tensor); cannot overflow, `parse` checked it.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn n_bytes(&self) -> u64 {
        self.data_offsets[1] - self.data_offsets[0]
    }
}

/// A validated header: every tensor lies in the data section, contiguously, and the data section
/// ends exactly where the last tensor ends.
#[derive(Clone, Debug)]
pub struct SafetensorsHeader {
    /// `N`, the length of the JSON header in bytes.
    pub header_bytes: u64,
    /// `__metadata__` (empty when absent).
    pub metadata: BTreeMap<String, String>,
    /// Sorted by data offset (then name).
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl SafetensorsHeader {
    /// File offset of the data section: 8 + N.
    pub fn data_offset(&self) -> u64 {
        LEN_PREFIX_BYTES + self.header_bytes
    }

    /// Every tensor, sorted by data offset.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A view of `info`'s bytes in `file` (the whole file this header was parsed from). Errors,
    /// rather than panics, if `file` is not that file.
    pub fn view<'a>(&'a self, file: &'a [u8], info: &'a TensorInfo) -> Result<TensorView<'a>> {
        let start = self.data_offset().checked_add(info.data_offsets[0]);
        let end = self.data_offset().checked_add(info.data_offsets[1]);
        let range = start
            .zip(end)
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        let data = range.and_then(|r| file.get(r)).ok_or_else(|| Error::BadTensor {
            name: info.name.clone(),
            offset: info.info_offset,
            reason: "data lies outside the buffer given (not the file of this header?)".into(),
        })?;
        Ok(TensorView { name: &info.name, dtype: info.dtype, shape: &info.shape, data })
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor views

/// A tensor's name, dtype, shape and raw little-endian bytes, borrowed from the file.
#[derive(Copy, Clone, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    /// Exactly `n_elements * dtype.size_bytes()` bytes; not necessarily aligned for the dtype.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The values as f32, copied element by element with `from_le_bytes` (the data may be
    /// misaligned, so it is never reinterpreted in place). F32, F16 and BF16 only.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let d = self.data;
        match self.dtype {
            Dtype::F32 => Ok(d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()),
            Dtype::F16 => Ok(d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            Dtype::Bf16 => Ok(d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()),
            other => Err(Error::UnsupportedType {
                name: self.name.to_string(),
                ty: format!("safetensors {other} (to_f32 converts F32, F16, BF16)"),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A validated safetensors image borrowed from memory.
pub struct Safetensors<'a> {
    pub header: SafetensorsHeader,
    bytes: &'a [u8],
}

impl<'a> Safetensors<'a> {
    /// Validate a whole file image and return its header. Pure (no I/O): the fuzzing entry point.
    pub fn parse(bytes: &[u8]) -> Result<SafetensorsHeader> {
        let (header_bytes, text) = split_header(bytes)?;
        let json =
            parse_json_strict(text, "safetensors header", LEN_PREFIX_BYTES, duplicate_error)?;
        let Value::Object(entries) = json.value else {
            // split_header saw '{' and serde_json accepted one value: this is an object.
            return Err(Error::Safetensors { reason: "JSON header is not an object".into() });
        };
        if entries.len() > limits::SAFETENSORS_TENSOR_COUNT_MAX + 1 {
            return Err(Error::CountTooLarge {
                what: "safetensors tensor count".into(),
                offset: LEN_PREFIX_BYTES,
                count: entries.len() as u64,
                max: limits::SAFETENSORS_TENSOR_COUNT_MAX as u64,
            });
        }
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, value) in &entries {
            if name == METADATA_KEY {
                metadata = parse_metadata(value)?;
                continue;
            }
            let info_offset = json.key_offsets.get(name).copied().unwrap_or(LEN_PREFIX_BYTES);
            tensors.push(parse_tensor_info(name, value, info_offset)?);
        }
        tensors.sort_by(|a, b| a.data_offsets.cmp(&b.data_offsets).then(a.name.cmp(&b.name)));
        let data_offset = LEN_PREFIX_BYTES + header_bytes;
        check_layout(&tensors, data_offset, bytes.len() as u64 - data_offset)?;
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(SafetensorsHeader { header_bytes, metadata, tensors, index })
    }

    /// Validate `bytes` and keep them for tensor views.
    pub fn new(bytes: &'a [u8]) -> Result<Safetensors<'a>> {
        Ok(Safetensors { header: Safetensors::parse(bytes)?, bytes })
    }

    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        self.header.view(self.bytes, info)
    }
}

/// Check the length prefix, the header bounds, UTF-8 and the opening brace; return `N` and the
/// header text.
fn split_header(bytes: &[u8]) -> Result<(u64, &str)> {
    let Some(prefix) = bytes.get(..LEN_PREFIX_BYTES as usize) else {
        return Err(Error::Truncated {
            what: "safetensors header length (u64 LE)".into(),
            offset: 0,
            bytes_needed: LEN_PREFIX_BYTES,
            bytes_left: bytes.len() as u64,
        });
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(prefix);
    let n = u64::from_le_bytes(le);
    if n > limits::SAFETENSORS_HEADER_BYTES_MAX {
        return Err(Error::CountTooLarge {
            what: "safetensors header length".into(),
            offset: 0,
            count: n,
            max: limits::SAFETENSORS_HEADER_BYTES_MAX,
        });
    }
    let file_bytes = bytes.len() as u64;
    let end = n.checked_add(LEN_PREFIX_BYTES).ok_or_else(|| Error::Safetensors {
        reason: format!("header length {n} + 8 overflows u64"),
    })?;
    if end > file_bytes {
        return Err(Error::Truncated {
            what: "safetensors JSON header".into(),
            offset: LEN_PREFIX_BYTES,
            bytes_needed: n,
            bytes_left: file_bytes - LEN_PREFIX_BYTES,
        });
    }
    // In range: end <= bytes.len(), checked just above.
    let raw = &bytes[LEN_PREFIX_BYTES as usize..end as usize];
    let text = std::str::from_utf8(raw).map_err(|e| Error::InvalidUtf8 {
        what: "safetensors JSON header".into(),
        offset: LEN_PREFIX_BYTES + e.valid_up_to() as u64,
    })?;
    match raw.first() {
        Some(b'{') => Ok((n, text)),
        Some(&b) => Err(Error::Safetensors {
            reason: format!("JSON header must start with '{{', found byte 0x{b:02x} at offset 8"),
        }),
        None => Err(Error::Safetensors { reason: "JSON header is empty (N = 0)".into() }),
    }
}

/// A repeated top-level key of a safetensors header is a duplicate tensor name, a repeated key
/// inside a tensor's entry is a bad tensor, and one inside `__metadata__` a duplicate key.
fn duplicate_error(path: &[String], top_key_offset: u64) -> Error {
    match path {
        [name] if name != METADATA_KEY => Error::DuplicateTensor { name: name.clone() },
        [name, field @ ..] if name != METADATA_KEY => Error::BadTensor {
            name: name.clone(),
            offset: top_key_offset,
            reason: format!("key '{}' appears twice in its entry", field.join(".")),
        },
        _ => Error::DuplicateKey { key: path.join(".") },
    }
}

/// `__metadata__` must be an object whose values are all strings.
fn parse_metadata(value: &Value) -> Result<BTreeMap<String, String>> {
    let Value::Object(map) = value else {
        return Err(Error::KeyType {
            key: METADATA_KEY.into(),
            expected: "object of strings".into(),
            found: json_type(value).into(),
        });
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let Value::String(s) = v else {
            return Err(Error::KeyType {
                key: format!("{METADATA_KEY}.{k}"),
                expected: "string".into(),
                found: json_type(v).into(),
            });
        };
        out.insert(k.clone(), s.clone());
    }
    Ok(out)
}

/// Validate one `{"dtype", "shape", "data_offsets"}` entry on its own (placement in the file is
/// `check_layout`'s job).
fn parse_tensor_info(name: &str, value: &Value, info_offset: u64) -> Result<TensorInfo> {
    let bad =
        |reason: String| Error::BadTensor { name: name.to_string(), offset: info_offset, reason };
    let Value::Object(fields) = value else {
        return Err(bad(format!("entry is {}, expected an object", json_type(value))));
    };
    let known = |k: &&String| matches!(k.as_str(), "dtype" | "shape" | "data_offsets");
    if let Some(k) = fields.keys().find(|k| !known(k)) {
        return Err(bad(format!("unknown field '{k}' (allowed: dtype, shape, data_offsets)")));
    }
    let dtype = match fields.get("dtype") {
        Some(Value::String(s)) => Dtype::from_name(s).ok_or_else(|| {
            let known: Vec<&str> = Dtype::ALL.iter().map(|d| d.name()).collect();
            bad(format!("unknown dtype '{s}' (known: {})", known.join(" ")))
        })?,
        Some(v) => return Err(bad(format!("dtype is {}, expected a string", json_type(v)))),
        None => return Err(bad("missing field 'dtype'".into())),
    };
    let shape = u64_array(fields.get("shape"), "shape").map_err(bad)?;
    let offsets = u64_array(fields.get("data_offsets"), "data_offsets").map_err(bad)?;
    let [start, end] = offsets[..] else {
        let n = offsets.len();
        return Err(bad(format!("data_offsets has {n} entries, expected [start, end]")));
    };
    if end < start {
        return Err(bad(format!("data_offsets [{start}, {end}]: end is before start")));
    }
    let n_elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let n_bytes = n_elements.and_then(|n| n.checked_mul(dtype.size_bytes())).ok_or_else(|| {
        bad(format!("shape {shape:?} of {dtype} overflows: byte count exceeds u64"))
    })?;
    if end - start != n_bytes {
        return Err(bad(format!(
            "data_offsets [{start}, {end}] span {} bytes, but shape {shape:?} of {dtype} needs \
             {n_bytes}",
            end - start
        )));
    }
    Ok(TensorInfo { name: name.to_string(), dtype, shape, data_offsets: [start, end], info_offset })
}

/// A JSON array of non-negative integers (its length is bounded by the header already read).
fn u64_array(value: Option<&Value>, field: &str) -> std::result::Result<Vec<u64>, String> {
    let items = match value {
        Some(Value::Array(items)) => items,
        Some(v) => return Err(format!("{field} is {}, expected an array", json_type(v))),
        None => return Err(format!("missing field '{field}'")),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_u64() {
            Some(x) => out.push(x),
            None => return Err(format!("{field}[{i}] is {item}, expected a non-negative integer")),
        }
    }
    Ok(out)
}

/// Tensors (sorted by offset) must tile the data section exactly: the first starts at 0, each
/// starts where the previous ended, and the last ends at the end of the file.
fn check_layout(tensors: &[TensorInfo], data_offset: u64, data_bytes: u64) -> Result<()> {
    let mut next_start = 0u64;
    let mut previous: Option<&str> = None;
    for t in tensors {
        let [start, end] = t.data_offsets;
        if start != next_start {
            let relation = if start < next_start { "overlaps" } else { "leaves a gap after" };
            let reason = match previous {
                None => format!("data starts at {start}; the first tensor must start at 0"),
                Some(p) => format!(
                    "data [{start}, {end}) {relation} tensor '{p}', which ends at {next_start} \
                     (each tensor must start where the previous one ends)"
                ),
            };
            return Err(Error::BadTensor { name: t.name.clone(), offset: t.info_offset, reason });
        }
        if end > data_bytes {
            return Err(Error::Truncated {
                what: format!("data of tensor '{}'", t.name),
                offset: data_offset + start,
                bytes_needed: end - start,
                bytes_left: data_bytes - start,
            });
        }
        next_start = end;
        previous = Some(&t.name);
    }
    if next_start != data_bytes {
        let after = previous.map(|p| format!(" '{p}'")).unwrap_or_default();
        return Err(Error::Safetensors {
            reason: format!(
                "{} trailing bytes after the last tensor{after} at file offset {} (the data \
                 section must end where the last tensor ends)",
                data_bytes - next_start,
                data_offset + next_start
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strict JSON (shared with hf.rs)

/// A parsed JSON document in which no object repeats a key, with the byte offset of each
/// top-level key (for error messages).
pub(crate) struct StrictJson {
    pub value: Value,
    pub key_offsets: HashMap<String, u64>,
}

/// Parse `text` with serde_json, then reject any object (at any depth) that repeats a key:
/// serde_json's map would silently keep the last value. `base_offset` is added to the reported
/// key offsets; `duplicate` turns the key path of a repeated key, and the offset of the top-level
/// key it lies under, into the error.
pub(crate) fn parse_json_strict(
    text: &str,
    what: &str,
    base_offset: u64,
    duplicate: fn(&[String], u64) -> Error,
) -> Result<StrictJson> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::Json { what: what.to_string(), reason: e.to_string() })?;
    let key_offsets =
        scan_keys(text, base_offset).map_err(|(path, offset)| duplicate(&path, offset))?;
    Ok(StrictJson { value, key_offsets })
}

/// One open object or array while scanning.
struct Frame {
    /// Keys seen so far; `None` for an array.
    keys: Option<HashSet<String>>,
    /// The next string in this object is a key (after `{` or `,`).
    expect_key: bool,
    /// The last key read (the name of a nested value), or "[]" in an array.
    current: String,
}

/// Walk text that serde_json has already accepted; return the top-level key offsets, or the
/// key path of the first repeated key with the offset of the top-level key it lies under.
fn scan_keys(
    text: &str,
    base_offset: u64,
) -> std::result::Result<HashMap<String, u64>, (Vec<String>, u64)> {
    let bytes = text.as_bytes();
    let mut top = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame {
                keys: Some(HashSet::new()),
                expect_key: true,
                current: String::new(),
            }),
            b'[' => stack.push(Frame { keys: None, expect_key: false, current: "[]".into() }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(f) = stack.last_mut() {
                    f.expect_key = f.keys.is_some();
                }
            }
            b'"' => {
                let Some(end) = string_end(bytes, i) else { break };
                let depth = stack.len();
                if let Some((frame, outer)) = stack.split_last_mut().filter(|(f, _)| f.expect_key) {
                    let key = decode_json_string(&text[i..=end]);
                    if !frame.keys.get_or_insert_with(HashSet::new).insert(key.clone()) {
                        let mut path: Vec<String> =
                            outer.iter().map(|f| f.current.clone()).collect();
                        let top_key = path.first().unwrap_or(&key);
                        let offset = top.get(top_key).copied().unwrap_or(base_offset);
                        path.push(key);
                        return Err((path, offset));
                    }
                    if depth == 1 {
                        top.insert(key.clone(), base_offset + i as u64);
                    }
                    frame.expect_key = false;
                    frame.current = key;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(top)
}

/// Index of the closing quote of the string opening at `open`.
fn string_end(bytes: &[u8], open: usize) -> Option<usize> {
    let mut j = open + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return Some(j),
            _ => j += 1,
        }
    }
    None
}

/// The value of a JSON string literal (quotes included), escapes resolved.
fn decode_json_string(literal: &str) -> String {
    let inner = &literal[1..literal.len() - 1];
    if !inner.contains('\\') {
        return inner.to_string();
    }
    serde_json::from_str::<String>(literal).unwrap_or_else(|_| inner.to_string())
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---------------------------------------------------------------------------------------------
// A safetensors file

/// A validated safetensors file. Tensor data is borrowed straight from the mapping (zero copy).
pub struct SafetensorsFile {
    path: PathBuf,
    storage: FileBytes,
    header: SafetensorsHeader,
}

impl SafetensorsFile {
    /// Map and validate `path`. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile> {
        let path = path.as_ref();
        let storage = FileBytes::map(path)?;
        let header = Safetensors::parse(storage.as_slice()).map_err(|e| e.in_file(path))?;
        Ok(SafetensorsFile { path: path.to_path_buf(), storage, header })
    }

    /// Validate an in-memory image (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SafetensorsFile> {
        let header = Safetensors::parse(&bytes).map_err(|e| e.in_file("<memory>"))?;
        let path = PathBuf::from("<memory>");
        Ok(SafetensorsFile { path, storage: FileBytes::Owned(bytes), header })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &SafetensorsHeader {
        &self.header
    }

    /// The file's bytes copied into anonymous memory (`FileBytes::load_to_memory`).
    pub fn load_to_memory(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        self.storage.load_to_memory(&self.path, progress)
    }

    pub fn bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }

    /// A tensor by name (`Error::MissingTensor` when absent).
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        self.header.view(self.bytes(), info).map_err(|e| e.in_file(&self.path))
    }

    /// Every tensor, in data-offset order.
    pub fn tensors(&self) -> impl Iterator<Item = Result<TensorView<'_>>> {
        self.header.tensors().iter().map(|t| self.header.view(self.bytes(), t))
    }
}
