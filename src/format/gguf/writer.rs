//! The GGUF v3 writer: llama.cpp's layout (header, tensor infos, padding, then each tensor's
//! data padded to the alignment), for `rotary synth` and the tests.

use super::{align_up, Array, TensorInfo, Value, KEY_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use crate::limits;
use crate::quant::GgmlType;

/// A tensor to be written: name, ggml dims (ne0 first) and type.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

/// Builds GGUF v3 files the way llama.cpp does: header, tensor infos, padding, then each
/// tensor's data padded to the alignment. The header is encoded up front, so data can then be
/// streamed tensor by tensor without holding the model in memory.
#[derive(Default)]
pub struct Writer {
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

/// The encoded header and where each tensor's data goes.
pub struct Layout {
    /// Header, KVs, tensor infos and the padding up to the data section.
    pub header: Vec<u8>,
    /// Byte size of each tensor's data (without padding).
    pub tensor_bytes: Vec<u64>,
    pub alignment: u64,
    /// Total file size.
    pub file_bytes: u64,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    pub fn kv(&mut self, key: &str, value: Value) -> &mut Writer {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), value));
        self
    }

    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> &mut Writer {
        self.tensors.push(TensorSpec { name: name.to_string(), dims: dims.to_vec(), ty });
        self
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Edit the tensor list before `layout` (tests build malformed models this way).
    pub fn tensors_mut(&mut self) -> &mut Vec<TensorSpec> {
        &mut self.tensors
    }

    pub fn remove_kv(&mut self, key: &str) -> &mut Writer {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    /// Encode a whole file with every tensor's data zero-filled.
    pub fn to_bytes_zeroed(&self) -> Result<Vec<u8>> {
        let layout = self.layout()?;
        let zeros: Vec<Vec<u8>> =
            layout.tensor_bytes.iter().map(|&n| vec![0u8; n as usize]).collect();
        let slices: Vec<&[u8]> = zeros.iter().map(|v| v.as_slice()).collect();
        self.to_bytes(&slices)
    }

    pub fn layout(&self) -> Result<Layout> {
        let alignment = match self.kvs.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some(_) => return Err(Error::Usage(format!("{KEY_ALIGNMENT} must be a power of 2"))),
            None => limits::GGUF_ALIGNMENT_DEFAULT as u64,
        };
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            put_string(&mut out, key);
            put_value(&mut out, value);
        }
        let mut tensor_bytes = Vec::with_capacity(self.tensors.len());
        let mut offset = 0u64;
        for t in &self.tensors {
            let size = TensorInfo::byte_size(t.ty, &t.dims).ok_or_else(|| {
                Error::Usage(format!("tensor '{}': {:?} does not fit {}", t.name, t.dims, t.ty))
            })?;
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            tensor_bytes.push(size);
            offset = align_up(offset + size, alignment).expect("model sizes fit in u64");
        }
        let header_len = align_up(out.len() as u64, alignment).expect("small");
        out.resize(header_len as usize, 0);
        Ok(Layout { file_bytes: header_len + offset, header: out, tensor_bytes, alignment })
    }

    /// Encode a whole file in memory; `data[i]` is the data of tensor i.
    pub fn to_bytes(&self, data: &[&[u8]]) -> Result<Vec<u8>> {
        let layout = self.layout()?;
        assert_eq!(data.len(), self.tensors.len(), "one data slice per tensor");
        let mut out = layout.header.clone();
        for (i, d) in data.iter().enumerate() {
            if d.len() as u64 != layout.tensor_bytes[i] {
                return Err(Error::Usage(format!(
                    "tensor '{}': {} data bytes, expected {}",
                    self.tensors[i].name,
                    d.len(),
                    layout.tensor_bytes[i]
                )));
            }
            out.extend_from_slice(d);
            let pad = padding(d.len() as u64, layout.alignment);
            out.resize(out.len() + pad as usize, 0);
        }
        assert_eq!(out.len() as u64, layout.file_bytes);
        Ok(out)
    }
}

/// How many zero bytes pad `written` bytes of tensor data up to the alignment.
pub fn padding(written: u64, alignment: u64) -> u64 {
    align_up(written, alignment).expect("tensor sizes are far below u64::MAX") - written
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
    }
}
