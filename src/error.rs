//! The one error type of the library. Every variant carries the context a user needs to find
//! the problem: the file, the metadata key, the tensor name, the byte offset.
//! Display is written by hand (no thiserror: it is not on the design card).

use std::fmt;
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
pub enum Error {
    /// An OS-level I/O failure on a named file.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Any error, with the file it came from (wraps the errors of the readers).
    File {
        path: PathBuf,
        source: Box<Error>,
    },

    // --- GGUF container ---------------------------------------------------------------------
    /// The input ended before a field could be read.
    Truncated {
        what: String,
        offset: u64,
        bytes_needed: u64,
        bytes_left: u64,
    },
    BadMagic {
        found: [u8; 4],
    },
    BadVersion {
        version: u32,
    },
    /// A count (of keys, tensors, array elements, string bytes) is over a cap or over what the
    /// remaining bytes could possibly hold. Checked before anything is allocated from it.
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        max: u64,
    },
    /// A key, tensor name or string value that is not valid UTF-8 (policy: rejected).
    InvalidUtf8 {
        what: String,
        offset: u64,
    },
    EmptyKey {
        offset: u64,
    },
    DuplicateKey {
        key: String,
    },
    /// A metadata value type id outside the GGUF enum.
    BadValueType {
        key: String,
        offset: u64,
        type_id: u32,
    },
    /// An array whose elements are arrays (GGUF allows one level only).
    NestedArray {
        key: String,
        offset: u64,
    },
    /// A bool stored as a byte other than 0 or 1.
    BadBool {
        key: String,
        offset: u64,
        byte: u8,
    },
    /// A known key with the wrong value type.
    KeyType {
        key: String,
        expected: String,
        found: String,
    },
    MissingKey {
        key: String,
    },
    /// A key with the right type but a value that cannot be used.
    BadValue {
        key: String,
        reason: String,
    },

    // --- tensors ------------------------------------------------------------------------------
    DuplicateTensor {
        name: String,
    },
    /// Malformed tensor info or data placement (dims, type, offset, size).
    BadTensor {
        name: String,
        offset: u64,
        reason: String,
    },
    UnknownType {
        name: String,
        type_id: u32,
    },
    /// A tensor type the engine does not compute with.
    UnsupportedType {
        name: String,
        ty: String,
    },
    MissingTensor {
        name: String,
    },
    TensorShape {
        name: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },

    // --- safetensors / HF directory -----------------------------------------------------------
    Safetensors {
        reason: String,
    },
    Json {
        what: String,
        reason: String,
    },
    /// An HF directory that asks for something we refuse (unsafe shard path, remote code).
    Refused {
        reason: String,
    },

    // --- tokenizer ----------------------------------------------------------------------------
    Tokenizer {
        reason: String,
    },

    // --- quantization --------------------------------------------------------------------------
    /// A buffer length that is not a whole number of blocks for the type.
    QuantLength {
        ty: String,
        len: usize,
        reason: String,
    },

    // --- running a model ------------------------------------------------------------------------
    /// More tokens than the context holds (prompt + generated, or a prompt alone).
    ContextOverflow {
        n_tokens: usize,
        n_ctx: usize,
    },

    // --- usage / devices ----------------------------------------------------------------------
    /// Bad command-line input (flag value, size string, preset name).
    Usage(String),
    CudaNotCompiled,
    /// A CUDA build on a machine without a usable device (no driver, no GPU).
    NoCudaDevice {
        reason: String,
    },
    /// A CUDA runtime call or kernel launch that failed: which, with the runtime's code.
    Cuda {
        call: String,
        code: i32,
        name: String,
        message: String,
    },
    /// Device memory the plan needs and the device does not have.
    DeviceOutOfMemory {
        what: String,
        bytes_requested: u64,
        bytes_free: u64,
    },
    /// Streaming needs a layer's k experts in device memory at once.
    TooFewSlots {
        slots: usize,
        per_layer: usize,
        need: usize,
    },
}

impl Error {
    /// Attach the file the error came from, unless it already names one.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            Error::File { .. } | Error::Io { .. } => self,
            other => Error::File { path: path.into(), source: Box::new(other) },
        }
    }

    /// The innermost error (under any `File` wrappers); tests match on this.
    pub fn root(&self) -> &Error {
        match self {
            Error::File { source, .. } => source.root(),
            other => other,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

impl fmt::Display for Error {
    /// Over a screen: one message per variant.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Io { path, source } => write!(f, "{}: {source}", path.display()),
            File { path, source } => write!(f, "{}: {source}", path.display()),
            Truncated { what, offset, bytes_needed, bytes_left } => write!(
                f,
                "truncated at offset {offset}: {what} needs {bytes_needed} bytes, \
                 {bytes_left} left (incomplete download?)"
            ),
            BadMagic { found } => {
                write!(f, "not a GGUF file: magic is {found:02x?}, want \"GGUF\"")
            }
            BadVersion { version } => {
                write!(f, "unsupported GGUF version {version} (0x{version:08x}); supported: 2, 3")
            }
            CountTooLarge { what, offset, count, max } => {
                write!(f, "at offset {offset}: {what} is {count}, more than the limit {max}")
            }
            InvalidUtf8 { what, offset } => write!(f, "at offset {offset}: {what} is not UTF-8"),
            EmptyKey { offset } => write!(f, "at offset {offset}: empty metadata key"),
            DuplicateKey { key } => write!(f, "duplicate metadata key '{key}'"),
            BadValueType { key, offset, type_id } => {
                write!(f, "key '{key}' at offset {offset}: unknown value type {type_id}")
            }
            NestedArray { key, offset } => {
                write!(f, "key '{key}' at offset {offset}: arrays of arrays are not allowed")
            }
            BadBool { key, offset, byte } => {
                write!(f, "key '{key}' at offset {offset}: bool byte is {byte}, want 0 or 1")
            }
            KeyType { key, expected, found } => {
                write!(f, "key '{key}' has type {found}, expected {expected}")
            }
            MissingKey { key } => write!(f, "required key '{key}' is missing"),
            BadValue { key, reason } => write!(f, "key '{key}': {reason}"),
            DuplicateTensor { name } => write!(f, "duplicate tensor name '{name}'"),
            BadTensor { name, offset, reason } => {
                write!(f, "tensor '{name}' (info at offset {offset}): {reason}")
            }
            UnknownType { name, type_id } => {
                write!(f, "tensor '{name}': unknown ggml type id {type_id}")
            }
            UnsupportedType { name, ty } => {
                let names: Vec<&str> =
                    crate::quant::GgmlType::supported().map(|t| t.name()).collect();
                write!(
                    f,
                    "tensor '{name}': type {ty} is not supported (supported: {})",
                    names.join(" ")
                )
            }
            MissingTensor { name } => write!(f, "required tensor '{name}' is missing"),
            TensorShape { name, expected, found } => {
                write!(f, "tensor '{name}' has shape {found:?}, expected {expected:?}")
            }
            Safetensors { reason } => write!(f, "safetensors: {reason}"),
            Json { what, reason } => write!(f, "{what}: invalid JSON: {reason}"),
            Refused { reason } => write!(f, "refused: {reason}"),
            Tokenizer { reason } => write!(f, "tokenizer: {reason}"),
            QuantLength { ty, len, reason } => write!(f, "{ty} buffer of {len}: {reason}"),
            ContextOverflow { n_tokens, n_ctx } => write!(
                f,
                "{n_tokens} tokens do not fit the context of {n_ctx} \
                 (raise -c, or shorten the prompt)"
            ),
            Usage(msg) => write!(f, "{msg}"),
            CudaNotCompiled => write!(
                f,
                "built without CUDA ({}); run gen/install-cuda.sh and rebuild",
                env!("ROTARY_CUDA_STATUS")
            ),
            NoCudaDevice { reason } => write!(f, "no CUDA device: {reason}"),
            Cuda { call, code, name, message } => {
                write!(f, "CUDA error in {call}: {name} ({code}): {message}")
            }
            DeviceOutOfMemory { what, bytes_requested, bytes_free } => write!(
                f,
                "device memory: {what} needs {bytes_requested} bytes, {bytes_free} bytes are free"
            ),
            TooFewSlots { slots, per_layer, need } => write!(
                f,
                "VRAM budget: {slots} expert slots fit after the dense part \
                 ({per_layer} per layer), a layer needs {need} (a larger budget, slots shared by \
                 all layers, or missed experts computed on the CPU would run it)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::File { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
