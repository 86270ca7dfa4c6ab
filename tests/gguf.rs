//! GGUF reader tests: a malformed-input corpus built byte by byte (reliability.md §1.4, §7
//! items 1-6 and 8), a truncation sweep over every proper prefix of a valid file, a seeded
//! mutation loop that must never panic, value round trips through the writer, and the
//! semantic checks of the model config.

use rotary::format::gguf::{self, Array, Gguf, Value, Writer};
use rotary::model::ModelConfig;
use rotary::quant::GgmlType;
use rotary::synth::{self, Preset, QuantMix, SynthOptions};
use rotary::Error;

// ---------------------------------------------------------------------------------------------
// A byte builder for hand-made (and deliberately broken) files.

#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        let mut b = B(b"GGUF".to_vec());
        b.u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn u8(&mut self, v: u8) -> &mut B {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut B {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut B {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut B {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    /// key + type id
    fn key(&mut self, k: &str, ty: u32) -> &mut B {
        self.str(k.as_bytes()).u32(ty)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut B {
        self.key(k, 4).u32(v)
    }
    /// tensor info: name, dims, type id, offset
    fn tensor(&mut self, name: &[u8], dims: &[u64], ty: u32, offset: u64) -> &mut B {
        self.str(name).u32(dims.len() as u32);
        dims.iter().for_each(|&d| {
            self.u64(d);
        });
        self.u32(ty).u64(offset)
    }
    /// pad to 32 and append `n` data bytes
    fn data(&mut self, n: usize) -> &mut B {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, n));
        self
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// Parse, expect an error, and return it (a panic fails the test by itself).
fn reject(bytes: &[u8]) -> Error {
    match gguf::parse(bytes) {
        Ok(_) => panic!("malformed input accepted ({} bytes)", bytes.len()),
        Err(e) => e,
    }
}

macro_rules! expect_err {
    ($bytes:expr, $pat:pat) => {{
        let e = reject(&$bytes);
        assert!(matches!(e.root(), $pat), "wrong error: {e:?}");
        e
    }};
    ($bytes:expr, $pat:pat, names $needle:expr) => {{
        let e = expect_err!($bytes, $pat);
        let msg = e.to_string();
        assert!(msg.contains($needle), "error '{msg}' does not name '{}'", $needle);
        e
    }};
}

fn one_kv(ty: u32, value: &[u8]) -> Vec<u8> {
    let mut b = B::header(3, 0, 1);
    b.key("some.key", ty);
    b.0.extend_from_slice(value);
    b.bytes()
}

fn one_tensor(name: &[u8], dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    B::header(3, 1, 0).tensor(name, dims, ty, offset).data(data).bytes()
}

// ---------------------------------------------------------------------------------------------
// Header

#[test]
fn header_malformed() {
    expect_err!(Vec::<u8>::new(), Error::Truncated { .. }, names "magic");
    expect_err!(b"GGU"[..], Error::Truncated { .. });
    expect_err!(B::header(3, 0, 0).bytes()[..4], Error::Truncated { .. }, names "version");
    let mut bad = B::header(3, 0, 0).bytes();
    bad[..4].copy_from_slice(b"GGML");
    expect_err!(bad, Error::BadMagic { .. });
    for v in [0u32, 1, 4, 0x0300_0000, u32::MAX] {
        expect_err!(B::header(v, 0, 0).bytes(), Error::BadVersion { .. });
    }
    expect_err!(B::header(3, u64::MAX, 0).bytes(), Error::CountTooLarge { .. }, names "n_tensors");
    expect_err!(B::header(3, 0, u64::MAX).bytes(), Error::CountTooLarge { .. }, names "n_kv");
    expect_err!(B::header(3, 0, 1000).bytes(), Error::CountTooLarge { .. }, names "n_kv");
    expect_err!(B::header(3, 100, 0).bytes(), Error::CountTooLarge { .. });
    // Both v2 and v3 parse.
    for v in [2u32, 3] {
        let h = gguf::parse(&B::header(v, 0, 0).bytes()).unwrap();
        assert_eq!(h.version, v);
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and values

#[test]
fn kv_malformed() {
    let mut b = B::header(3, 0, 1);
    b.u64(u64::MAX).u64(0);
    expect_err!(b.bytes(), Error::CountTooLarge { .. }, names "key #0");
    let mut b = B::header(3, 0, 1);
    b.u64(1000).0.extend_from_slice(&[b'a'; 20]);
    expect_err!(b.bytes(), Error::Truncated { .. }, names "key #0");
    let mut b = B::header(3, 0, 1);
    b.kv_u32("", 1);
    expect_err!(b.bytes(), Error::EmptyKey { .. });
    let mut b = B::header(3, 0, 2);
    b.kv_u32("a.b", 1).kv_u32("a.b", 2);
    expect_err!(b.bytes(), Error::DuplicateKey { .. }, names "a.b");
    let mut b = B::header(3, 0, 1);
    b.str(b"bad\xff\xfekey").u32(4).u32(1);
    expect_err!(b.bytes(), Error::InvalidUtf8 { .. });
    for ty in [13u32, 100, u32::MAX] {
        expect_err!(one_kv(ty, &[0; 16]), Error::BadValueType { .. }, names "some.key");
    }
    expect_err!(one_kv(7, &[2]), Error::BadBool { .. }, names "some.key");
    expect_err!(one_kv(8, &[0xff; 8]), Error::CountTooLarge { .. }, names "some.key");
    let mut v = 50u64.to_le_bytes().to_vec();
    v.extend_from_slice(b"short");
    expect_err!(one_kv(8, &v), Error::Truncated { .. }, names "some.key");
    expect_err!(
        one_kv(8, &[4, 0, 0, 0, 0, 0, 0, 0, 0xc3, 0x28, b'a', b'b']),
        Error::InvalidUtf8 { .. }
    );
    expect_err!(one_kv(4, &[1, 2]), Error::Truncated { .. }, names "some.key");
}

fn array_value(elem: u32, count: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = elem.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn array_malformed() {
    // Arrays of arrays, however deep, are refused at the first level.
    let nested = array_value(9, 1, &array_value(4, 1, &[0; 4]));
    expect_err!(one_kv(9, &nested), Error::NestedArray { .. }, names "some.key");
    expect_err!(one_kv(9, &array_value(77, 1, &[0; 8])), Error::BadValueType { .. });
    expect_err!(one_kv(9, &array_value(4, 1 << 40, &[0; 8])), Error::CountTooLarge { .. });
    expect_err!(one_kv(9, &array_value(4, 1000, &[0; 10])), Error::CountTooLarge { .. });
    expect_err!(one_kv(9, &array_value(4, u64::MAX, &[])), Error::CountTooLarge { .. });
    expect_err!(one_kv(9, &array_value(8, 1000, &[0; 64])), Error::CountTooLarge { .. });
    let strings = array_value(8, 2, &[1, 0, 0, 0, 0, 0, 0, 0, b'x', 99, 0, 0, 0, 0, 0, 0, 0]);
    expect_err!(one_kv(9, &strings), Error::Truncated { .. }, names "element 1 of key 'some.key'");
    expect_err!(one_kv(9, &array_value(7, 2, &[1, 5])), Error::BadBool { .. });
}

#[test]
fn well_known_key_types_and_alignment() {
    let mut b = B::header(3, 0, 1);
    b.key("general.alignment", 5).u32(32);
    expect_err!(b.bytes(), Error::KeyType { .. }, names "general.alignment");
    for bad in [0u32, 13, 48, 1 << 21] {
        let mut b = B::header(3, 0, 1);
        b.kv_u32("general.alignment", bad);
        expect_err!(b.bytes(), Error::BadValue { .. }, names "general.alignment");
    }
    let mut b = B::header(3, 0, 1);
    b.key("tokenizer.ggml.scores", 9).0.extend(array_value(5, 1, &[0; 4]));
    expect_err!(b.bytes(), Error::KeyType { .. }, names "tokenizer.ggml.scores");
    let mut b = B::header(3, 0, 1);
    b.key("tokenizer.ggml.token_type", 9).0.extend(array_value(6, 1, &[0; 4]));
    expect_err!(b.bytes(), Error::KeyType { .. }, names "tokenizer.ggml.token_type");
    let mut b = B::header(3, 0, 1);
    b.key("general.architecture", 4).u32(1);
    expect_err!(b.bytes(), Error::KeyType { .. }, names "general.architecture");
    // A custom power-of-two alignment is honoured.
    let mut b = B::header(3, 1, 1);
    b.kv_u32("general.alignment", 64).tensor(b"t", &[16], 0, 0);
    while !b.0.len().is_multiple_of(64) {
        b.u8(0);
    }
    b.0.extend_from_slice(&[0; 64]);
    let h = gguf::parse(&b.bytes()).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
}

// ---------------------------------------------------------------------------------------------
// Tensor infos and data placement

#[test]
fn tensor_info_malformed() {
    expect_err!(one_tensor(b"", &[4], 0, 0, 32), Error::BadTensor { .. });
    expect_err!(one_tensor(&[b'n'; 64], &[4], 0, 0, 32), Error::BadTensor { .. });
    expect_err!(one_tensor(b"bad\xff", &[4], 0, 0, 32), Error::InvalidUtf8 { .. });
    expect_err!(one_tensor(b"t", &[1, 1, 1, 1, 1], 0, 0, 32), Error::BadTensor { .. }, names "n_dims");
    expect_err!(one_tensor(b"t", &[], 0, 0, 32), Error::BadTensor { .. }, names "n_dims");
    expect_err!(one_tensor(b"t", &[u64::MAX], 0, 0, 32), Error::BadTensor { .. }, names "negative");
    let big = 1u64 << 32;
    expect_err!(one_tensor(b"t", &[big, big, big], 0, 0, 32), Error::BadTensor { .. }, names "overflow");
    // 2^61 f64 elements fit in i64 but their 2^64 bytes do not.
    expect_err!(one_tensor(b"t", &[1 << 61], 28, 0, 32), Error::BadTensor { .. }, names "overflow");
    for ty in [4u32, 5, 31, 36, 42, 1000, u32::MAX] {
        expect_err!(one_tensor(b"t", &[32], ty, 0, 256), Error::UnknownType { .. }, names "'t'");
    }
    expect_err!(one_tensor(b"t", &[100, 2], 12, 0, 512), Error::BadTensor { .. }, names "block");
    expect_err!(one_tensor(b"t", &[4], 0, 1, 64), Error::BadTensor { .. }, names "alignment");
    expect_err!(one_tensor(b"t", &[4], 0, 32, 64), Error::BadTensor { .. }, names "contiguous");
    let two = |off2: u64| {
        B::header(3, 2, 0).tensor(b"a", &[16], 0, 0).tensor(b"b", &[16], 0, off2).data(128).bytes()
    };
    gguf::parse(&two(64)).expect("contiguous pair parses");
    expect_err!(two(0), Error::BadTensor { .. }, names "'b'"); // overlap
    expect_err!(two(96), Error::BadTensor { .. }, names "'b'"); // gap
    let dup =
        B::header(3, 2, 0).tensor(b"a", &[8], 0, 0).tensor(b"a", &[8], 0, 32).data(64).bytes();
    expect_err!(dup, Error::DuplicateTensor { .. }, names "'a'");
    // CVE-2025-53630 replica: each size is fine, the running sum wraps.
    let huge = B::header(3, 2, 0)
        .tensor(b"a", &[1 << 60], 27, 0)
        .tensor(b"b", &[1 << 60], 27, 1 << 63)
        .data(64)
        .bytes();
    expect_err!(huge, Error::BadTensor { .. }, names "cumulative");
}

#[test]
fn data_section_malformed() {
    // One byte short of the declared data (a truncated download).
    let mut bytes = one_tensor(b"weights", &[8], 0, 0, 32);
    bytes.pop();
    expect_err!(bytes, Error::Truncated { .. }, names "weights");
    // Data far outside the file.
    let bytes = one_tensor(b"weights", &[1 << 40], 0, 0, 32);
    expect_err!(bytes, Error::Truncated { .. }, names "weights");
    // Zero-element tensors are fine (ggml's ZERO_DIM case).
    let ok = B::header(3, 1, 0).tensor(b"empty", &[0, 4], 0, 0).data(0).bytes();
    let h = gguf::parse(&ok).unwrap();
    assert_eq!(h.tensors[0].n_bytes, 0);
}

// ---------------------------------------------------------------------------------------------
// A valid file with every value type: round trip, every prefix rejected, mutations never panic.

fn every_value_file() -> (Vec<u8>, Vec<(String, Value)>) {
    let kvs: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("test".into())),
        ("v.u8".into(), Value::U8(200)),
        ("v.i8".into(), Value::I8(-5)),
        ("v.u16".into(), Value::U16(65000)),
        ("v.i16".into(), Value::I16(-300)),
        ("v.u32".into(), Value::U32(4_000_000_000)),
        ("v.i32".into(), Value::I32(-7)),
        ("v.f32".into(), Value::F32(1.5)),
        ("v.bool".into(), Value::Bool(true)),
        ("v.str".into(), Value::String("héllo ✓".into())),
        ("v.u64".into(), Value::U64(u64::MAX - 1)),
        ("v.i64".into(), Value::I64(i64::MIN)),
        ("v.f64".into(), Value::F64(-2.25)),
        ("v.arr_i32".into(), Value::Array(Array::I32(vec![1, -2, 3]))),
        ("v.arr_str".into(), Value::Array(Array::String(vec!["a".into(), "".into(), "βγ".into()]))),
        ("v.arr_bool".into(), Value::Array(Array::Bool(vec![true, false]))),
        ("v.arr_f64".into(), Value::Array(Array::F64(vec![0.5]))),
        ("v.arr_empty".into(), Value::Array(Array::U8(vec![]))),
    ];
    let mut w = Writer::new();
    for (k, v) in &kvs {
        w.kv(k, v.clone());
    }
    w.tensor("a", &[64], GgmlType::F32)
        .tensor("b", &[32, 3], GgmlType::Q8_0)
        .tensor("c", &[256], GgmlType::Q4K)
        .tensor("d", &[5], GgmlType::F16);
    let layout = w.layout().unwrap();
    let data: Vec<Vec<u8>> = layout
        .tensor_bytes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect())
        .collect();
    let slices: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    (w.to_bytes(&slices).unwrap(), kvs)
}

#[test]
fn round_trip_every_value_type() {
    let (bytes, kvs) = every_value_file();
    let g = Gguf::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.kvs, kvs);
    assert_eq!(g.tensors.len(), 4);
    let (b, data) = g.tensor("b").unwrap();
    assert_eq!(b.dims, vec![32, 3]);
    assert_eq!(b.ty, GgmlType::Q8_0);
    assert_eq!(data.len(), 3 * 34);
    assert_eq!(data[0], 1); // (0 * 31 + 1) for tensor index 1
    assert_eq!(g.tensor("c").unwrap().1.len(), 144);
    assert!(matches!(g.tensor("zzz").unwrap_err(), Error::MissingTensor { .. }));
    assert_eq!(g.get_u32("v.u8").unwrap(), Some(200));
    assert!(matches!(g.get_u32("v.i8").unwrap_err(), Error::KeyType { .. }));
    assert!(matches!(g.get_str("v.u8").unwrap_err(), Error::KeyType { .. }));
    assert_eq!(g.get_str_array("v.arr_str").unwrap().unwrap().len(), 3);
    assert_eq!(g.get_str("missing").unwrap(), None);
    // Every tensor's data starts aligned in the file.
    for t in &g.tensors {
        assert_eq!((g.data_offset + t.offset) % 32, 0, "{}", t.name);
    }
}

#[test]
fn truncation_sweep_rejects_every_proper_prefix() {
    let (bytes, _) = every_value_file();
    gguf::parse(&bytes).expect("the full file parses");
    for len in 0..bytes.len() {
        assert!(
            gguf::parse(&bytes[..len]).is_err(),
            "prefix of {len}/{} bytes accepted",
            bytes.len()
        );
    }
}

#[test]
fn seeded_mutations_never_panic() {
    let (bytes, _) = every_value_file();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut rejected = 0;
    for _ in 0..20_000 {
        let mut m = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % m.len() as u64) as usize;
            m[i] = match next() % 4 {
                0 => next() as u8,
                1 => 0xff,
                2 => 0,
                _ => m[i] ^ (1 << (next() % 8)),
            };
        }
        if gguf::parse(&m).is_err() {
            rejected += 1;
        }
    }
    assert!(rejected > 1000, "mutations should mostly be caught, {rejected} were");
}

// ---------------------------------------------------------------------------------------------
// Model semantics (item 8 of reliability.md §7) on a synthesized tiny model

/// The tiny preset with a 512-token vocabulary (so tests stay small), zero data.
fn tiny_writer() -> Writer {
    let mut opts = SynthOptions::new(Preset::by_name("tiny").unwrap(), QuantMix::Q8_0, 1);
    opts.vocab = vec![];
    opts.n_vocab = 512;
    synth::plan(&opts).unwrap().0
}

fn check_model(w: &Writer) -> rotary::Result<ModelConfig> {
    let g = Gguf::from_bytes(w.to_bytes_zeroed()?)?;
    let cfg = ModelConfig::from_gguf(&g)?;
    cfg.check_tensors(&g)?;
    Ok(cfg)
}

fn expect_model_err(w: &Writer, needle: &str) -> Error {
    let e = check_model(w).expect_err("malformed model accepted");
    assert!(e.to_string().contains(needle), "'{e}' does not name '{needle}'");
    e
}

#[test]
fn model_semantics() {
    let cfg = check_model(&tiny_writer()).expect("the tiny preset is valid");
    assert_eq!((cfg.n_layers, cfg.dim, cfg.n_experts, cfg.n_experts_used), (4, 256, 8, 2));
    assert_eq!(cfg.n_vocab, 512);

    let mut w = tiny_writer();
    w.kv("qwen3moe.expert_used_count", Value::U32(9));
    expect_model_err(&w, "qwen3moe.expert_used_count");
    let mut w = tiny_writer();
    w.kv("qwen3moe.attention.head_count", Value::U32(0));
    expect_model_err(&w, "qwen3moe.attention.head_count");
    let mut w = tiny_writer();
    w.kv("qwen3moe.attention.head_count_kv", Value::U32(3));
    expect_model_err(&w, "head_count_kv");
    let mut w = tiny_writer();
    w.kv("qwen3moe.expert_count", Value::U32(0));
    expect_model_err(&w, "qwen3moe.expert_count");
    let mut w = tiny_writer();
    w.remove_kv("qwen3moe.embedding_length");
    let e = expect_model_err(&w, "qwen3moe.embedding_length");
    assert!(matches!(e.root(), Error::MissingKey { .. }));
    let mut w = tiny_writer();
    w.kv("qwen3moe.expert_count", Value::String("eight".into()));
    let e = expect_model_err(&w, "qwen3moe.expert_count");
    assert!(matches!(e.root(), Error::KeyType { .. }));
    let mut w = tiny_writer();
    w.kv("general.architecture", Value::String("llama".into()));
    expect_model_err(&w, "llama");
    let mut w = tiny_writer();
    w.kv("tokenizer.ggml.eos_token_id", Value::U32(512));
    expect_model_err(&w, "tokenizer.ggml.eos_token_id");
}

#[test]
fn model_tensor_checks() {
    let mut w = tiny_writer();
    w.tensors_mut().retain(|t| t.name != "blk.2.ffn_up_exps.weight");
    let e = expect_model_err(&w, "blk.2.ffn_up_exps.weight");
    assert!(matches!(e.root(), Error::MissingTensor { .. }));
    let mut w = tiny_writer();
    for t in w.tensors_mut().iter_mut().filter(|t| t.name == "blk.1.ffn_down_exps.weight") {
        t.dims = vec![256, 256, 7]; // one expert short
    }
    let e = expect_model_err(&w, "blk.1.ffn_down_exps.weight");
    assert!(matches!(e.root(), Error::TensorShape { .. }));
    // Types a GGUF may name that the engine cannot run: a clear error naming tensor and type.
    for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::Q8K] {
        let mut w = tiny_writer();
        for t in w.tensors_mut().iter_mut().filter(|t| t.name == "blk.0.attn_q.weight") {
            t.ty = ty;
        }
        let e = expect_model_err(&w, "blk.0.attn_q.weight");
        assert!(matches!(e.root(), Error::UnsupportedType { .. }), "{ty}: {e}");
        assert!(e.to_string().contains(ty.name()), "{ty}: {e}");
    }
    // output.weight is optional (llama.cpp ties it to token_embd).
    let mut w = tiny_writer();
    w.tensors_mut().retain(|t| t.name != "output.weight");
    check_model(&w).expect("a model without output.weight is valid");
    let mut w = tiny_writer();
    w.tensors_mut().retain(|t| t.name != "token_embd.weight");
    expect_model_err(&w, "token_embd.weight");
}

/// llama.cpp's own vocab GGUF, when tests/fetch_data.py has fetched it.
#[test]
fn reads_llama_cpp_vocab_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/llama-vocab/ggml-vocab-qwen2.gguf");
    if !path.exists() {
        println!(
            "SKIP reads_llama_cpp_vocab_file: {} missing (run tests/fetch_data.py)",
            path.display()
        );
        return;
    }
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre").unwrap(), Some("qwen2"));
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap().len(), 151_936);
    assert_eq!(g.get_str_array("tokenizer.ggml.merges").unwrap().unwrap().len(), 151_387);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 1000, 24] {
        assert!(gguf::parse(&bytes[..cut]).is_err(), "prefix {cut} accepted");
    }
}

/// A file written by the PyPI `gguf` package (tests/make_gguf_fixture.py): values, shapes and
/// data as that writer laid them out, and every proper prefix rejected.
#[test]
fn reads_gguf_py_writer_output() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf/gguf_py_small.gguf");
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "qwen3moe");
    assert_eq!(g.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(g.get("test.i32"), Some(&Value::I32(-7)));
    assert_eq!(g.get("test.f32"), Some(&Value::F32(1.5)));
    assert_eq!(g.get("test.f64"), Some(&Value::F64(-2.25)));
    assert_eq!(g.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get_str("test.str").unwrap(), Some("héllo ✓"));
    assert_eq!(g.get("test.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(g.get("test.i64"), Some(&Value::I64(-(1 << 62))));
    let strs = g.get_str_array("test.arr_str").unwrap().unwrap();
    assert_eq!(strs, ["a", "", "βγ"]);
    let (a, data) = g.tensor("a.weight").unwrap();
    assert_eq!((a.dims.as_slice(), a.ty), (&[4u64, 3][..], GgmlType::F32));
    let values: Vec<f32> =
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, (0..12).map(|i| i as f32).collect::<Vec<_>>());
    let (b, _) = g.tensor("b.weight").unwrap();
    assert_eq!((b.dims.as_slice(), b.ty), (&[64u64, 2][..], GgmlType::F16));
    let (c, data) = g.tensor("c.weight").unwrap();
    assert_eq!((c.dims.as_slice(), c.ty, data.len()), (&[64u64, 2][..], GgmlType::Q8_0, 4 * 34));
    let bytes = std::fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        assert!(gguf::parse(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
    }
}
