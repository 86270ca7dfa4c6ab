//! safetensors reader tests: round trips of values written by an independent serializer in this
//! file, a malformed-input corpus (reliability.md §7 item 7) where each case must fail with its
//! own error variant and name the tensor or key, a truncation sweep over every proper prefix of a
//! valid file, and a byte-mutation sweep that must never panic.

use rotary::format::safetensors::{Dtype, Safetensors, SafetensorsFile};
use rotary::Error;

// ---------------------------------------------------------------------------------------------
// An independent serializer (the format, written out by hand)

/// One tensor to write: name, dtype spelling, shape, raw little-endian bytes.
type Spec<'a> = (&'a str, &'a str, &'a [u64], Vec<u8>);

/// 8-byte LE header length, the header, then the data (the header exactly as given).
fn file_from_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Serialize like the reference writer: tensors in the order given, contiguous from offset 0,
/// header padded with spaces to a multiple of 8 bytes.
fn serialize(tensors: &[Spec], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut entries = Vec::new();
    if !metadata.is_empty() {
        let kv: Vec<String> =
            metadata.iter().map(|(k, v)| format!("{}:{}", json_str(k), json_str(v))).collect();
        entries.push(format!("\"__metadata__\":{{{}}}", kv.join(",")));
    }
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let (start, end) = (data.len(), data.len() + bytes.len());
        entries.push(format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{end}]}}",
            json_str(name)
        ));
        data.extend_from_slice(bytes);
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    file_from_header(&header, &data)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a &str always serializes")
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u16_bytes(bits: &[u16]) -> Vec<u8> {
    bits.iter().flat_map(|b| b.to_le_bytes()).collect()
}

/// A small valid file with three tensors and metadata (used by the sweeps).
fn small_file() -> Vec<u8> {
    serialize(
        &[
            ("a.weight", "F32", &[2, 2], f32_bytes(&[1.0, -2.0, 0.5, 3.25])),
            ("b.bias", "BF16", &[3], u16_bytes(&[0x3F80, 0xC000, 0x3F00])),
            ("c", "U8", &[5], vec![1, 2, 3, 4, 5]),
        ],
        &[("format", "pt")],
    )
}

fn parse_err(bytes: &[u8]) -> Error {
    match Safetensors::parse(bytes) {
        Ok(h) => panic!("expected an error, parsed {} tensors", h.tensors().len()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Valid files

#[test]
fn round_trip_f32_f16_bf16() {
    // f16 and bf16 bit patterns written by hand, not by the `half` crate the reader uses.
    let f16_bits = [0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0000, 0x0001, 0x3E00];
    let f16_values = [1.0, -2.0, 0.5, 65504.0, 0.0, 2f32.powi(-24), 1.5];
    let bf16_values = [1.0f32, -2.0, 0.15625, 3.0e38_f32, -0.0];
    let bf16_values: Vec<f32> =
        bf16_values.iter().map(|v| f32::from_bits(v.to_bits() & 0xFFFF_0000)).collect();
    let bf16_bits: Vec<u16> = bf16_values.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let f32_values = [0.1f32, -7.5, f32::MAX, f32::MIN_POSITIVE, 1e-45];
    let bytes = serialize(
        &[
            ("x.f32", "F32", &[5], f32_bytes(&f32_values)),
            ("x.f16", "F16", &[7], u16_bytes(&f16_bits)),
            ("x.bf16", "BF16", &[5, 1], u16_bytes(&bf16_bits)),
        ],
        &[("format", "pt"), ("note", "a \"quoted\" value")],
    );
    let st = Safetensors::new(&bytes).expect("valid file");
    assert_eq!(st.header.metadata.get("note").map(String::as_str), Some("a \"quoted\" value"));
    let f32_view = st.tensor("x.f32").unwrap();
    assert_eq!((f32_view.dtype, f32_view.shape), (Dtype::F32, &[5u64][..]));
    assert_eq!(f32_view.to_f32_vec().unwrap(), f32_values);
    assert_eq!(st.tensor("x.f16").unwrap().to_f32_vec().unwrap(), f16_values);
    let bf16 = st.tensor("x.bf16").unwrap();
    assert_eq!(bf16.shape, &[5, 1]);
    assert_eq!(bf16.to_f32_vec().unwrap(), bf16_values);
}

#[test]
fn misaligned_f32_is_read_by_copy() {
    // A 1-byte tensor first puts the F32 data at an odd file offset.
    let bytes = serialize(
        &[("pad", "U8", &[1], vec![7]), ("w", "F32", &[3], f32_bytes(&[1.5, -0.25, 8.0]))],
        &[],
    );
    let st = Safetensors::new(&bytes).unwrap();
    let w = st.tensor("w").unwrap();
    assert_eq!(w.data.as_ptr() as usize % 2, 1, "the test wants a misaligned tensor");
    assert_eq!(w.to_f32_vec().unwrap(), [1.5, -0.25, 8.0]);
}

#[test]
fn edge_cases_that_are_valid() {
    // No tensors at all.
    let empty = file_from_header("{}", &[]);
    assert_eq!(Safetensors::parse(&empty).unwrap().tensors().len(), 0);
    // Rank-0 scalar, zero-size tensors at the start and at the end, every known dtype.
    let mut specs: Vec<Spec> = vec![
        ("empty.first", "F32", &[0, 4], vec![]),
        ("scalar", "F64", &[], 2.5f64.to_le_bytes().to_vec()),
    ];
    let names: Vec<String> = Dtype::ALL.iter().map(|d| format!("t.{}", d.name())).collect();
    for (d, name) in Dtype::ALL.iter().zip(&names) {
        specs.push((name, d.name(), &[2], vec![0u8; 2 * d.size_bytes() as usize]));
    }
    specs.push(("zz.empty.last", "BF16", &[3, 0], vec![]));
    let bytes = serialize(&specs, &[]);
    let st = Safetensors::new(&bytes).unwrap();
    assert_eq!(st.header.tensors().len(), specs.len());
    assert_eq!(st.tensor("scalar").unwrap().shape, &[] as &[u64]);
    assert_eq!(st.tensor("scalar").unwrap().n_elements(), 1);
    assert!(st.tensor("empty.first").unwrap().to_f32_vec().unwrap().is_empty());
    // Trailing 0x20 padding of the header is allowed by the spec.
    let padded = file_from_header("{}      ", &[]);
    assert!(Safetensors::parse(&padded).is_ok());
}

#[test]
fn known_but_unsupported_dtype_and_missing_tensor() {
    let bytes = serialize(&[("q", "F8_E4M3", &[4], vec![0x38; 4])], &[]);
    let st = Safetensors::new(&bytes).unwrap();
    let q = st.tensor("q").unwrap();
    assert_eq!(q.dtype, Dtype::F8E4M3);
    let e = q.to_f32_vec().unwrap_err();
    assert!(matches!(e.root(), Error::UnsupportedType { name, .. } if name == "q"), "{e}");
    let e = st.tensor("nope").unwrap_err();
    assert!(matches!(e.root(), Error::MissingTensor { name } if name == "nope"), "{e}");
}

#[test]
fn file_backed_open_and_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("rotary-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.safetensors");
    std::fs::write(&good, small_file()).unwrap();
    let file = SafetensorsFile::open(&good).unwrap();
    assert_eq!(file.tensor("a.weight").unwrap().to_f32_vec().unwrap(), [1.0, -2.0, 0.5, 3.25]);
    assert_eq!(file.tensors().count(), 3);

    let bad = dir.join("bad.safetensors");
    let mut bytes = small_file();
    bytes.push(0);
    std::fs::write(&bad, &bytes).unwrap();
    let e = SafetensorsFile::open(&bad).err().expect("trailing byte");
    assert!(e.to_string().contains("bad.safetensors"), "{e}");
    assert!(matches!(e.root(), Error::Safetensors { .. }), "{e}");

    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = SafetensorsFile::open(&empty).err().expect("empty file");
    assert!(matches!(e.root(), Error::Truncated { .. }), "{e}");

    let e = SafetensorsFile::open(dir.join("absent.safetensors")).err().expect("absent");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Malformed corpus

/// One malformed input: what it is, the bytes, the expected root variant, and a string the
/// message must contain (the tensor or key it is about).
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    want: fn(&Error) -> bool,
    mentions: &'static str,
}

fn case(
    what: &'static str,
    bytes: Vec<u8>,
    want: fn(&Error) -> bool,
    mentions: &'static str,
) -> Case {
    Case { what, bytes, want, mentions }
}

/// A file whose single tensor "w" has the given JSON entry and `data_len` zero bytes of data.
fn one(entry: &str, data_len: usize) -> Vec<u8> {
    file_from_header(&format!("{{\"w\":{entry}}}"), &vec![0u8; data_len])
}

/// Two F32 tensors of one element, "a" and "b", at the given data_offsets.
fn two(a: &str, b: &str, data_len: usize) -> Vec<u8> {
    let header = format!("{{\"a\":{},\"b\":{}}}", w_f32("[1]", a), w_f32("[1]", b));
    file_from_header(&header, &vec![0; data_len])
}

fn w_f32(shape: &str, offsets: &str) -> String {
    format!("{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":{offsets}}}")
}

fn is_truncated(e: &Error) -> bool {
    matches!(e, Error::Truncated { .. })
}

fn is_safetensors(e: &Error) -> bool {
    matches!(e, Error::Safetensors { .. })
}

fn is_json(e: &Error) -> bool {
    matches!(e, Error::Json { .. })
}

fn is_bad_w(e: &Error) -> bool {
    matches!(e, Error::BadTensor { name, .. } if name == "w")
}

fn is_bad_b(e: &Error) -> bool {
    matches!(e, Error::BadTensor { name, .. } if name == "b")
}

fn header_cases() -> Vec<Case> {
    let huge = |n: u64| [&n.to_le_bytes()[..], b"{}"].concat();
    let mut not_utf8 = file_from_header("{\"w\":1}", &[]);
    not_utf8[10] = 0xFF;
    let mut nul_padded = file_from_header("{}", &[]);
    nul_padded[0] = 4;
    nul_padded.extend_from_slice(&[0, 0]);
    let deep = file_from_header(&format!("{{\"w\":{}", "[".repeat(100_000)), &[]);
    vec![
        case("empty file", vec![], is_truncated, "header length"),
        case("7 bytes", vec![2, 0, 0, 0, 0, 0, 0], is_truncated, "header length"),
        case(
            "N over the 100 MB cap",
            huge(100_000_001),
            |e| matches!(e, Error::CountTooLarge { count: 100_000_001, .. }),
            "header length",
        ),
        case(
            "N = u64::MAX",
            huge(u64::MAX),
            |e| matches!(e, Error::CountTooLarge { .. }),
            "header length",
        ),
        case("N past the end", huge(3), is_truncated, "JSON header"),
        case(
            "header not UTF-8",
            not_utf8,
            |e| matches!(e, Error::InvalidUtf8 { offset: 10, .. }),
            "JSON header",
        ),
        case("header starts with a space", file_from_header(" {}", &[]), is_safetensors, "'{'"),
        case("header is an array", file_from_header("[]", &[]), is_safetensors, "'{'"),
        case("empty header (N = 0)", file_from_header("", &[]), is_safetensors, "empty"),
        case("NUL padding", nul_padded, is_json, "trailing"),
        case("invalid JSON", file_from_header("{\"w\":", &[]), is_json, "EOF"),
        case("JSON nested 100k deep", deep, is_json, "recursion"),
    ]
}

fn duplicate_and_metadata_cases() -> Vec<Case> {
    let (a, b) = (w_f32("[1]", "[0,4]"), w_f32("[1]", "[4,8]"));
    let dup = file_from_header(&format!("{{\"w\":{a},\"w\":{b}}}"), &[0; 8]);
    let escaped = file_from_header(&format!("{{\"w\":{a},\"\\u0077\":{b}}}"), &[0; 8]);
    let dup_field =
        one("{\"dtype\":\"F32\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    let dup_meta = file_from_header("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", &[]);
    let meta_number = file_from_header("{\"__metadata__\":{\"k\":1}}", &[]);
    let meta_array = file_from_header("{\"__metadata__\":[\"k\"]}", &[]);
    vec![
        case(
            "duplicate tensor name",
            dup,
            |e| matches!(e, Error::DuplicateTensor { name } if name == "w"),
            "'w'",
        ),
        case(
            "duplicate name via \\u escape",
            escaped,
            |e| matches!(e, Error::DuplicateTensor { name } if name == "w"),
            "'w'",
        ),
        case("duplicate field in an entry", dup_field, is_bad_w, "key 'dtype' appears twice"),
        case(
            "duplicate metadata key",
            dup_meta,
            |e| matches!(e, Error::DuplicateKey { key } if key == "__metadata__.k"),
            "__metadata__.k",
        ),
        case(
            "metadata value not a string",
            meta_number,
            |e| matches!(e, Error::KeyType { key, .. } if key == "__metadata__.k"),
            "__metadata__.k",
        ),
        case(
            "metadata not an object",
            meta_array,
            |e| matches!(e, Error::KeyType { key, .. } if key == "__metadata__"),
            "__metadata__",
        ),
    ]
}

fn entry_cases() -> Vec<Case> {
    let u8_entry = |extra: &str| {
        one(&format!("{{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]{extra}}}"), 1)
    };
    let f4 = one("{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}", 1);
    let dtype_number = one("{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}", 4);
    let no_shape = one("{\"dtype\":\"U8\",\"data_offsets\":[0,1]}", 1);
    let overflow = one(&w_f32("[4294967296,4294967296,2]", "[0,0]"), 0);
    let bytes_overflow = one(&w_f32("[4611686018427387904]", "[0,0]"), 0);
    vec![
        case("unknown dtype", f4, is_bad_w, "unknown dtype 'F4'"),
        case("dtype not a string", dtype_number, is_bad_w, "dtype is number"),
        case("entry not an object", one("[1,2]", 0), is_bad_w, "expected an object"),
        case("unknown field", u8_entry(",\"x\":0"), is_bad_w, "unknown field 'x'"),
        case("missing shape", no_shape, is_bad_w, "missing field 'shape'"),
        case("negative dim", one(&w_f32("[-1]", "[0,4]"), 4), is_bad_w, "shape[0] is -1"),
        case("fractional dim", one(&w_f32("[1.5]", "[0,4]"), 4), is_bad_w, "shape[0] is 1.5"),
        case("shape product overflow", overflow, is_bad_w, "overflows"),
        case("byte count overflow", bytes_overflow, is_bad_w, "overflows"),
        case("data_offsets of one entry", one(&w_f32("[1]", "[0]"), 4), is_bad_w, "1 entries"),
        case("data_offsets end < start", one(&w_f32("[0]", "[4,0]"), 4), is_bad_w, "before start"),
        case("size != numel * dtype", one(&w_f32("[2]", "[0,4]"), 4), is_bad_w, "needs 8"),
        case("negative offset", one(&w_f32("[1]", "[-4,0]"), 4), is_bad_w, "data_offsets[0]"),
    ]
}

fn layout_cases() -> Vec<Case> {
    let zero_inside = file_from_header(
        &format!("{{\"a\":{},\"z\":{}}}", w_f32("[2]", "[0,8]"), w_f32("[0]", "[4,4]")),
        &[0; 8],
    );
    let far = one(&w_f32("[1]", "[18446744073709551610,18446744073709551614]"), 4);
    vec![
        case("first tensor not at 0", one(&w_f32("[1]", "[4,8]"), 8), is_bad_w, "start at 0"),
        case("gap between tensors", two("[0,4]", "[8,12]", 12), is_bad_b, "gap after tensor 'a'"),
        case("overlapping tensors", two("[0,4]", "[2,6]", 6), is_bad_b, "overlaps tensor 'a'"),
        case("same offsets twice", two("[0,4]", "[0,4]", 4), is_bad_b, "overlaps tensor 'a'"),
        case(
            "zero-size tensor inside another",
            zero_inside,
            |e| matches!(e, Error::BadTensor { name, .. } if name == "z"),
            "overlaps tensor 'a'",
        ),
        case("trailing bytes", two("[0,4]", "[4,8]", 9), is_safetensors, "last tensor 'b'"),
        case("data past the end", two("[0,4]", "[4,8]", 6), is_truncated, "tensor 'b'"),
        case("offset near u64::MAX", far, is_bad_w, "start at 0"),
    ]
}

#[test]
fn malformed_corpus_gives_specific_errors() {
    let groups = [header_cases(), duplicate_and_metadata_cases(), entry_cases(), layout_cases()];
    let cases: Vec<Case> = groups.into_iter().flatten().collect();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for c in &cases {
        let result = std::panic::catch_unwind(|| Safetensors::parse(&c.bytes).map(|_| ()));
        let outcome = match result {
            Err(_) => "panicked".to_string(),
            Ok(Ok(())) => "parsed without error".to_string(),
            Ok(Err(e)) if !(c.want)(e.root()) => format!("wrong error: {e:?}"),
            Ok(Err(e)) if !e.to_string().contains(c.mentions) => {
                format!("message does not mention {:?}: {e}", c.mentions)
            }
            Ok(Err(_)) => continue,
        };
        failures.push(format!("{}: {outcome}", c.what));
    }
    let n = cases.len();
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Sweeps

#[test]
fn every_proper_prefix_is_truncated() {
    let bytes = small_file();
    Safetensors::parse(&bytes).expect("the full file is valid");
    for len in 0..bytes.len() {
        let e = parse_err(&bytes[..len]);
        assert!(matches!(e.root(), Error::Truncated { .. }), "prefix of {len} bytes: {e}");
    }
}

#[test]
fn byte_mutations_never_panic() {
    let bytes = small_file();
    let (mut tried, mut accepted) = (0, 0);
    for i in 0..bytes.len() {
        for v in [0x00, 0xFF, b'{', b'"', b'9', b',', b'\\', bytes[i] ^ 1] {
            let mut m = bytes.clone();
            m[i] = v;
            tried += 1;
            accepted += Safetensors::parse(&m).is_ok() as usize;
        }
    }
    // Mutated data bytes and name characters stay valid, structural ones must not.
    assert!(accepted * 2 < tried, "{accepted} of {tried} mutations accepted");
}

#[test]
fn wrong_header_length_is_rejected() {
    let bytes = small_file();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    for wrong in [0, 1, n - 9, n - 1, n + 1, n + 2, n + 8] {
        let mut m = bytes.clone();
        m[..8].copy_from_slice(&wrong.to_le_bytes());
        parse_err(&m);
    }
}
