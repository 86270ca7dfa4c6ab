//! GGUF v2/v3 reader (over memmap2, zero-copy tensor views) and writer, as llama.cpp's
//! `ggml/src/gguf.cpp` and gguf-py write them.
//!
//! Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, the key/value pairs, the tensor
//! infos (name, n_dims, ne[n_dims] with ne0 fastest, ggml type, offset), padding to
//! `general.alignment`, then the data section where tensor i starts at its offset.
//!
//! The reader treats every file as hostile (reliability.md §1.4): every count and length is
//! checked against its cap and the bytes left *before* anything is allocated from it; tensors
//! must be contiguous in declaration order (each offset equals the running padded sum), inside
//! the file, with sizes computed by checked arithmetic. Every failure is an `Error` naming the
//! key, tensor or byte offset; no input panics (see fuzz/ and tests/gguf_malformed.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::FileBytes;
use crate::limits;
use crate::quant::GgmlType;

mod writer;

pub use writer::{padding, Layout, TensorSpec, Writer};

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const KEY_ALIGNMENT: &str = "general.alignment";
pub const KEY_ARCHITECTURE: &str = "general.architecture";

// ---------------------------------------------------------------------------------------------
// Values

/// GGUF metadata value type ids.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        const ALL: [ValueType; 13] =
            [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64];
        ALL.get(id as usize).copied()
    }

    /// Encoded size of one scalar of this type (strings: the minimum, an empty string).
    fn min_bytes(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous array (GGUF forbids arrays of arrays).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short type description for error messages: "u32", "[string; 151936]".
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("[{:?}; {}]", a.elem_type(), a.len()).to_lowercase(),
            other => format!("{:?}", other.value_type()).to_lowercase(),
        }
    }

    /// Any integer value that is non-negative, as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Types that well-known keys must have (reliability.md §1.4 item 12). A file that stores, say,
/// `general.alignment` as an i32 is rejected rather than coerced.
const WELL_KNOWN_TYPES: [(&str, ValueType, Option<ValueType>); 16] = [
    (KEY_ALIGNMENT, ValueType::U32, None),
    (KEY_ARCHITECTURE, ValueType::String, None),
    ("general.file_type", ValueType::U32, None),
    ("general.quantization_version", ValueType::U32, None),
    ("tokenizer.ggml.model", ValueType::String, None),
    ("tokenizer.ggml.pre", ValueType::String, None),
    ("tokenizer.ggml.tokens", ValueType::Array, Some(ValueType::String)),
    ("tokenizer.ggml.merges", ValueType::Array, Some(ValueType::String)),
    ("tokenizer.ggml.token_type", ValueType::Array, Some(ValueType::I32)),
    ("tokenizer.ggml.scores", ValueType::Array, Some(ValueType::F32)),
    ("tokenizer.ggml.bos_token_id", ValueType::U32, None),
    ("tokenizer.ggml.eos_token_id", ValueType::U32, None),
    ("tokenizer.ggml.padding_token_id", ValueType::U32, None),
    ("tokenizer.ggml.unknown_token_id", ValueType::U32, None),
    ("tokenizer.ggml.add_bos_token", ValueType::Bool, None),
    ("tokenizer.chat_template", ValueType::String, None),
];

fn check_well_known_type(key: &str, value: &Value) -> Result<()> {
    let Some(&(_, want, want_elem)) = WELL_KNOWN_TYPES.iter().find(|r| r.0 == key) else {
        return Ok(());
    };
    let ok = match (value, want_elem) {
        (Value::Array(a), Some(elem)) => want == ValueType::Array && a.elem_type() == elem,
        (v, None) => v.value_type() == want,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let expected = match want_elem {
        Some(elem) => format!("[{elem:?}]").to_lowercase(),
        None => format!("{want:?}").to_lowercase(),
    };
    Err(Error::KeyType { key: key.to_string(), expected, found: value.type_name() })
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] (ne0) is the fastest-varying, so numpy's shape is the reverse.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time to fit in i64.
        self.dims.iter().product()
    }

    /// Byte size of a tensor of these dims and type; None on overflow or a first dimension
    /// that is not a whole number of blocks.
    pub fn byte_size(ty: GgmlType, dims: &[u64]) -> Option<u64> {
        let ne0 = *dims.first()?;
        let row_bytes = ty.row_bytes(ne0)?;
        let rows = dims[1..].iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        row_bytes.checked_mul(rows)
    }
}

// ---------------------------------------------------------------------------------------------
// The parsed header

#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub alignment: u32,
    /// Key/value pairs in file order.
    pub kvs: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Bytes of the data section that tensors cover, padding included.
    pub data_bytes: u64,
    kv_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// Byte cursor over the input. Every read checks the bytes left first.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(Error::Truncated {
                what: what(),
                offset: self.offset(),
                bytes_needed: n,
                bytes_left: self.left(),
            });
        }
        let start = self.pos;
        self.pos += n as usize; // n ≤ left, so this fits in usize and stays in bounds
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length, then that many UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String, max: u64) -> Result<String> {
        let offset = self.offset();
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > max {
            return Err(Error::CountTooLarge {
                what: format!("length of {}", what()),
                offset,
                count: len,
                max,
            });
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(Error::InvalidUtf8 { what: what(), offset: offset + 8 }),
        }
    }
}

/// Parse and validate a whole GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Header> {
    let mut cur = Cursor { buf: bytes, pos: 0 };
    let magic: [u8; 4] = cur.array(&|| "magic".to_string())?;
    if magic != MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    let version = cur.u32(&|| "version".to_string())?;
    if version != 2 && version != 3 {
        return Err(Error::BadVersion { version });
    }
    let n_tensors = read_count(&mut cur, "n_tensors", limits::GGUF_TENSOR_COUNT_MAX)?;
    let n_kv = read_count(&mut cur, "n_kv", limits::GGUF_KV_COUNT_MAX)?;
    // The smallest possible key/value is 14 bytes (u64 length, one key byte, u32 type, one
    // value byte), the smallest tensor info 33 (one 1-byte name, one dim): a count the file
    // cannot hold is rejected before any allocation sized by it.
    let min_bytes = n_kv * 14 + n_tensors * 33;
    if min_bytes > cur.left() {
        return Err(Error::CountTooLarge {
            what: format!("n_kv = {n_kv} and n_tensors = {n_tensors} (bytes they need)"),
            offset: 16,
            count: min_bytes,
            max: cur.left(),
        });
    }
    let (kvs, kv_index) = read_kvs(&mut cur, n_kv as usize)?;
    let alignment = read_alignment(&kvs, &kv_index)?;
    let (tensors, tensor_index, data_bytes) =
        read_tensor_infos(&mut cur, n_tensors as usize, alignment)?;
    let data_offset = align_up(cur.offset(), alignment as u64)
        .expect("a file offset plus < 1 MiB of padding fits in u64");
    if !tensors.is_empty() {
        check_data_section(bytes.len() as u64, data_offset, data_bytes, &tensors)?;
    }
    Ok(Header { version, alignment, kvs, tensors, data_offset, data_bytes, kv_index, tensor_index })
}

fn read_count(cur: &mut Cursor, what: &str, max: u64) -> Result<u64> {
    let offset = cur.offset();
    let count = cur.u64(&|| what.to_string())?;
    if count > max {
        // Also catches "negative" counts: llama.cpp reads these as int64.
        return Err(Error::CountTooLarge { what: what.to_string(), offset, count, max });
    }
    Ok(count)
}

type KvList = (Vec<(String, Value)>, HashMap<String, usize>);

fn read_kvs(cur: &mut Cursor, n_kv: usize) -> Result<KvList> {
    let mut kvs = Vec::with_capacity(n_kv);
    let mut index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key_offset = cur.offset();
        let key = cur.string(&|| format!("key #{i}"), limits::GGUF_STRING_BYTES_MAX)?;
        if key.is_empty() {
            return Err(Error::EmptyKey { offset: key_offset });
        }
        if index.contains_key(&key) {
            return Err(Error::DuplicateKey { key });
        }
        let value = read_value(cur, &key)?;
        check_well_known_type(&key, &value)?;
        index.insert(key.clone(), kvs.len());
        kvs.push((key, value));
    }
    Ok((kvs, index))
}

fn read_value_type(cur: &mut Cursor, key: &str) -> Result<ValueType> {
    let offset = cur.offset();
    let type_id = cur.u32(&|| format!("value type of key '{key}'"))?;
    ValueType::from_id(type_id).ok_or_else(|| Error::BadValueType {
        key: key.to_string(),
        offset,
        type_id,
    })
}

fn read_value(cur: &mut Cursor, key: &str) -> Result<Value> {
    let ty = read_value_type(cur, key)?;
    if ty != ValueType::Array {
        return read_scalar(cur, key, ty);
    }
    let elem_offset = cur.offset();
    let elem = read_value_type(cur, key)?;
    if elem == ValueType::Array {
        return Err(Error::NestedArray { key: key.to_string(), offset: elem_offset });
    }
    let count_offset = cur.offset();
    let count = cur.u64(&|| format!("array length of key '{key}'"))?;
    let fits = cur.left() / elem.min_bytes();
    if count > limits::GGUF_ARRAY_ELEMENTS_MAX || count > fits {
        return Err(Error::CountTooLarge {
            what: format!("array length of key '{key}'"),
            offset: count_offset,
            count,
            max: fits.min(limits::GGUF_ARRAY_ELEMENTS_MAX),
        });
    }
    read_array(cur, key, elem, count as usize).map(Value::Array)
}

fn read_array(cur: &mut Cursor, key: &str, elem: ValueType, n: usize) -> Result<Array> {
    // `n` was checked against the bytes left, so these allocations are bounded by the file.
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            let what = || format!("array of key '{key}'");
            let size = std::mem::size_of::<$t>();
            let bytes = cur.take((n * size) as u64, &what)?;
            let values =
                bytes.chunks_exact(size).map(|c| <$t>::from_le_bytes(c.try_into().unwrap()));
            Array::$variant(values.collect())
        }};
    }
    Ok(match elem {
        ValueType::U8 => fixed!(U8, u8),
        ValueType::I8 => fixed!(I8, i8),
        ValueType::U16 => fixed!(U16, u16),
        ValueType::I16 => fixed!(I16, i16),
        ValueType::U32 => fixed!(U32, u32),
        ValueType::I32 => fixed!(I32, i32),
        ValueType::F32 => fixed!(F32, f32),
        ValueType::U64 => fixed!(U64, u64),
        ValueType::I64 => fixed!(I64, i64),
        ValueType::F64 => fixed!(F64, f64),
        ValueType::Bool => {
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(read_bool(cur, key)?);
            }
            Array::Bool(values)
        }
        ValueType::String => {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                let what = || format!("element {i} of key '{key}'");
                values.push(cur.string(&what, limits::GGUF_STRING_BYTES_MAX)?);
            }
            Array::String(values)
        }
        ValueType::Array => unreachable!("nested arrays are rejected by the caller"),
    })
}

fn read_bool(cur: &mut Cursor, key: &str) -> Result<bool> {
    let offset = cur.offset();
    let [byte] = cur.array::<1>(&|| format!("value of key '{key}'"))?;
    match byte {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::BadBool { key: key.to_string(), offset, byte }),
    }
}

fn read_scalar(cur: &mut Cursor, key: &str, ty: ValueType) -> Result<Value> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.array(&what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.array(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.array(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.array(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.array(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.array(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.array(&what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.array(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.array(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.array(&what)?)),
        ValueType::Bool => Value::Bool(read_bool(cur, key)?),
        ValueType::String => Value::String(cur.string(&what, limits::GGUF_STRING_BYTES_MAX)?),
        ValueType::Array => unreachable!("arrays are read by read_value"),
    })
}

fn read_alignment(kvs: &[(String, Value)], index: &HashMap<String, usize>) -> Result<u32> {
    let Some(&i) = index.get(KEY_ALIGNMENT) else {
        return Ok(limits::GGUF_ALIGNMENT_DEFAULT);
    };
    let Value::U32(alignment) = kvs[i].1 else {
        unreachable!("check_well_known_type admits only u32 for {KEY_ALIGNMENT}");
    };
    if alignment == 0 || !alignment.is_power_of_two() || alignment > limits::GGUF_ALIGNMENT_MAX {
        return Err(Error::BadValue {
            key: KEY_ALIGNMENT.to_string(),
            reason: format!(
                "{alignment} is not a power of two in 1..={}",
                limits::GGUF_ALIGNMENT_MAX
            ),
        });
    }
    Ok(alignment)
}

type TensorList = (Vec<TensorInfo>, HashMap<String, usize>, u64);

fn read_tensor_infos(cur: &mut Cursor, n: usize, alignment: u32) -> Result<TensorList> {
    let mut tensors = Vec::with_capacity(n);
    let mut index = HashMap::with_capacity(n);
    // The running end of the data section, relative to its start: tensor i must start exactly
    // at the aligned end of tensor i-1 (no gaps, no overlap, declaration order).
    let mut data_end: u64 = 0;
    for i in 0..n {
        let info_offset = cur.offset();
        let name = cur.string(&|| format!("name of tensor #{i}"), limits::GGUF_STRING_BYTES_MAX)?;
        let bad =
            |reason: String| Error::BadTensor { name: name.clone(), offset: info_offset, reason };
        if name.is_empty() || name.len() > limits::GGUF_TENSOR_NAME_BYTES_MAX {
            let max = limits::GGUF_TENSOR_NAME_BYTES_MAX;
            return Err(bad(format!("name length {} is not in 1..={max}", name.len())));
        }
        if index.contains_key(&name) {
            return Err(Error::DuplicateTensor { name });
        }
        let dims = read_dims(cur, &name, info_offset)?;
        let type_id = cur.u32(&|| format!("type of tensor '{name}'"))?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| Error::UnknownType { name: name.clone(), type_id })?;
        if dims[0] % ty.block_elems() as u64 != 0 {
            let be = ty.block_elems();
            return Err(bad(format!(
                "ne0 = {} is not a multiple of the {ty} block ({be})",
                dims[0]
            )));
        }
        let n_bytes = TensorInfo::byte_size(ty, &dims)
            .ok_or_else(|| bad(format!("byte size of {dims:?} x {ty} overflows")))?;
        let offset = cur.u64(&|| format!("offset of tensor '{name}'"))?;
        if offset % alignment as u64 != 0 {
            return Err(bad(format!("offset {offset} is not a multiple of alignment {alignment}")));
        }
        if offset != data_end {
            return Err(bad(format!(
                "offset {offset}, expected {data_end}: tensor data must be contiguous, \
                 in order, without gaps or overlap"
            )));
        }
        data_end = offset
            .checked_add(n_bytes)
            .and_then(|end| align_up(end, alignment as u64))
            .ok_or_else(|| bad("cumulative data size overflows".to_string()))?;
        index.insert(name.clone(), tensors.len());
        tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
    }
    Ok((tensors, index, data_end))
}

fn read_dims(cur: &mut Cursor, name: &str, info_offset: u64) -> Result<Vec<u64>> {
    let bad =
        |reason: String| Error::BadTensor { name: name.to_string(), offset: info_offset, reason };
    let n_dims = cur.u32(&|| format!("n_dims of tensor '{name}'"))?;
    if n_dims == 0 || n_dims as usize > limits::GGUF_DIMS_MAX {
        return Err(bad(format!("n_dims = {n_dims}, want 1..={}", limits::GGUF_DIMS_MAX)));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        let ne = cur.u64(&|| format!("ne[{d}] of tensor '{name}'"))?;
        if ne > i64::MAX as u64 {
            return Err(bad(format!("ne[{d}] = {} is negative", ne as i64)));
        }
        dims.push(ne);
    }
    // The element count must be representable in int64 (as ggml requires).
    let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    match n_elements {
        Some(n) if n <= i64::MAX as u64 => Ok(dims),
        _ => Err(bad(format!("element count of {dims:?} overflows"))),
    }
}

fn check_data_section(
    file_bytes: u64,
    data_offset: u64,
    data_bytes: u64,
    tensors: &[TensorInfo],
) -> Result<()> {
    let end = data_offset.checked_add(data_bytes);
    if end.is_some_and(|end| end <= file_bytes) {
        return Ok(());
    }
    // Name the first tensor whose data is not in the file.
    let bytes_left = file_bytes.saturating_sub(data_offset);
    let missing = tensors.iter().find(|t| t.offset.saturating_add(t.n_bytes) > bytes_left);
    let what = match missing {
        Some(t) => format!("data of tensor '{}'", t.name),
        None => "padding after the last tensor".to_string(),
    };
    Err(Error::Truncated {
        what,
        offset: file_bytes.min(data_offset),
        bytes_needed: data_bytes,
        bytes_left,
    })
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}

// ---------------------------------------------------------------------------------------------
// Header accessors

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index.get(key).map(|&i| &self.kvs[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match f(value) {
            Some(v) => Ok(Some(v)),
            None => Err(Error::KeyType {
                key: key.to_string(),
                expected: expected.to_string(),
                found: value.type_name(),
            }),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "integer in u32 range", |v| v.as_u64().and_then(|x| x.try_into().ok()))
    }

    /// Any non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "non-negative integer", |v| v.as_u64())
    }

    /// f32 or f64 (or an integer, converted).
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "float", |v| v.as_f64())
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.typed(key, "[string]", |v| match v {
            Value::Array(Array::String(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        self.typed(key, "[i32]", |v| match v {
            Value::Array(Array::I32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        self.typed(key, "[f32]", |v| match v {
            Value::Array(Array::F32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// `general.architecture`, required.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str(KEY_ARCHITECTURE)?
            .ok_or_else(|| Error::MissingKey { key: KEY_ARCHITECTURE.to_string() })
    }
}

// ---------------------------------------------------------------------------------------------
// A GGUF file: storage + validated header

/// A validated GGUF file. Tensor data is borrowed straight from the mapping (zero copy).
pub struct Gguf {
    path: PathBuf,
    storage: FileBytes,
    pub header: Header,
}

impl Gguf {
    /// Map and validate `path`. Errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let storage = FileBytes::map(path)?;
        let header = parse(storage.as_slice()).map_err(|e| e.in_file(path))?;
        Ok(Gguf { path: path.to_path_buf(), storage, header })
    }

    /// Validate an in-memory GGUF image (tests, fuzzing, the embedded default model).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        let header = parse(&bytes).map_err(|e| e.in_file("<memory>"))?;
        Ok(Gguf { path: PathBuf::from("<memory>"), storage: FileBytes::Owned(bytes), header })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }

    /// The file's bytes copied into anonymous memory (`FileBytes::load_to_memory`).
    pub fn load_to_memory(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        self.storage.load_to_memory(&self.path, progress)
    }

    pub fn file_bytes(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// The bytes of a tensor of this file (bounds were checked by `parse`).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + t.offset) as usize;
        let end = start + t.n_bytes as usize;
        assert!(end <= self.bytes().len(), "tensor '{}' was validated to lie in the file", t.name);
        &self.bytes()[start..end]
    }

    /// A tensor by name, with its data.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        Ok((info, self.tensor_data(info)))
    }
}

impl std::ops::Deref for Gguf {
    type Target = Header;
    fn deref(&self) -> &Header {
        &self.header
    }
}
