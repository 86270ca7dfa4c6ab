//! Text ↔ token ids for the Qwen family (byte-level BPE, GPT-2 byte↔unicode map).
//!
//! The BPE itself is the `tokenizers` crate (the reference implementation of HF tokenizers);
//! this file only assembles it. Two sources:
//! - GGUF metadata (`tokenizer.ggml.*`) → [`VocabSpec`] → [`Tokenizer::from_spec`], which
//!   builds Qwen's pipeline: the split regex named by `tokenizer.ggml.pre`, ByteLevel, BPE
//!   without unk or byte fallback. Control tokens (type 3) become special added tokens;
//!   user-defined tokens (type 4) plain added tokens that always match, as in llama.cpp. Like
//!   llama.cpp on the same file, it does not normalize ([`Normalization::Off`]), so our ids
//!   equal llama.cpp's on every input; Qwen's tokenizer.json applies NFC first
//!   ([`Normalization::Nfc`]), and the two agree on all text that is already NFC.
//! - an HF `tokenizer.json` → [`Tokenizer::from_tokenizer_json`].
//! - tiktoken ranks (`base64(bytes) rank` per line) → [`VocabSpec::from_tiktoken`], converted
//!   as llama.cpp's converter does (GPT-2 byte map, one merge per token). The real Qwen3.5/3.6
//!   vocabulary ships only in this form ([`VocabSpec::read_qwen35_tiktoken`]).
//!
//! Special tokens are parsed in the text only when asked (`parse_special`), as llama.cpp does:
//! user text must not be able to inject `<|im_end|>`. Decoding goes through our own table of raw
//! token bytes, so a full decode and a streamed decode ([`StreamDecoder`]) are the same function
//! of the byte sequence: complete characters out, an incomplete tail held back, and every byte of
//! an invalid sequence replaced by one U+FFFD (the HF ByteFallback policy).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

mod tiktoken;

pub use tiktoken::{
    QWEN35_BOS, QWEN35_CHAT_TEMPLATE, QWEN35_EOS, QWEN35_N_VOCAB, QWEN35_PAD, QWEN35_SPECIALS,
};

use crate::error::{Error, Result};
use crate::format::gguf::{Array, Header, Value};
use crate::limits;

pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_PAD: &str = "tokenizer.ggml.padding_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp `llama_token_type` values (`tokenizer.ggml.token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;
/// UNDEFINED 0 … BYTE 6; anything else is a corrupt file.
const TOKEN_TYPE_MAX: i32 = 6;

/// Qwen2/Qwen3 split regex, as in their tokenizer.json (`tokenizer.ggml.pre` = "qwen2").
pub const REGEX_QWEN2: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);
/// Qwen3.5 adds combining marks (\p{M}) to words (`tokenizer.ggml.pre` = "qwen35").
pub const REGEX_QWEN35: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}",
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// Texts of the end-of-generation tokens of the ChatML models, besides `eos`.
const EOG_TEXTS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// Unicode normalization before the split regex.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// NFC, as the `normalizer` of Qwen2/Qwen3's tokenizer.json (the default).
    Nfc,
    /// None, as llama.cpp (its test vectors for `qwen35` keep "e\u{301}" as two tokens).
    Off,
}

/// The tokenizer part of a GGUF's metadata, as plain data (tests build malformed ones directly).
#[derive(Debug, Clone, Default)]
pub struct VocabSpec {
    /// `tokenizer.ggml.model`: only "gpt2" (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`: picks the split regex ("qwen2" or "qwen35").
    pub pre: String,
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    /// "a b" pairs in rank order.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn bad_value(key: &str, reason: String) -> Error {
    Error::BadValue { key: key.to_string(), reason }
}

fn tokenizer_error(reason: impl std::fmt::Display) -> Error {
    Error::Tokenizer { reason: reason.to_string() }
}

/// llama.cpp splits a merge at the first space after the first character: "a b" → ("a", "b").
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let (space, _) = merge.char_indices().skip(1).find(|&(_, c)| c == ' ')?;
    let (a, b) = (&merge[..space], &merge[space + 1..]);
    (!b.is_empty() && !b.contains(' ')).then_some((a, b))
}

impl VocabSpec {
    /// Read the `tokenizer.*` keys of a GGUF header and validate them.
    /// `token_type` may be absent (every token is then normal), as llama.cpp allows.
    pub fn from_gguf(gguf: &Header) -> Result<VocabSpec> {
        let required_str = |key: &str| -> Result<String> {
            let s = gguf.get_str(key)?;
            Ok(s.ok_or_else(|| Error::MissingKey { key: key.to_string() })?.to_string())
        };
        let required_strs = |key: &str| -> Result<Vec<String>> {
            let a = gguf.get_str_array(key)?;
            Ok(a.ok_or_else(|| Error::MissingKey { key: key.to_string() })?.to_vec())
        };
        let model = required_str(KEY_MODEL)?;
        let pre = required_str(KEY_PRE)?;
        let tokens = required_strs(KEY_TOKENS)?;
        let token_types = match gguf.get_i32_array(KEY_TOKEN_TYPE)? {
            Some(t) => t.to_vec(),
            None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
        };
        let spec = VocabSpec {
            model,
            pre,
            tokens,
            token_types,
            merges: required_strs(KEY_MERGES)?,
            bos: gguf.get_u32(KEY_BOS)?,
            eos: gguf.get_u32(KEY_EOS)?,
            pad: gguf.get_u32(KEY_PAD)?,
            add_bos: gguf.get_bool(KEY_ADD_BOS)?.unwrap_or(false),
            chat_template: gguf.get_str(KEY_CHAT_TEMPLATE)?.map(str::to_string),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Every check that needs no BPE build; errors name the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.model != "gpt2" {
            let reason = format!("'{}' is not supported (supported: gpt2)", self.model);
            return Err(bad_value(KEY_MODEL, reason));
        }
        self.regex()?;
        self.validate_tokens()?;
        let n_tokens = self.tokens.len() as u64;
        for (key, id) in [(KEY_BOS, self.bos), (KEY_EOS, self.eos), (KEY_PAD, self.pad)] {
            if let Some(id) = id.filter(|&id| u64::from(id) >= n_tokens) {
                return Err(bad_value(key, format!("token id {id} >= n_tokens {n_tokens}")));
            }
        }
        if let Some(i) = self.merges.iter().position(|m| split_merge(m).is_none()) {
            let reason = format!("merge {i} is {:?}, want \"a b\"", self.merges[i]);
            return Err(bad_value(KEY_MERGES, reason));
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<()> {
        let n_tokens = self.tokens.len();
        if n_tokens == 0 || n_tokens as u64 > limits::VOCAB_MAX {
            let reason = format!("{n_tokens} tokens, want 1..={}", limits::VOCAB_MAX);
            return Err(bad_value(KEY_TOKENS, reason));
        }
        if self.token_types.len() != n_tokens {
            let reason = format!("{} entries, {KEY_TOKENS} has {n_tokens}", self.token_types.len());
            return Err(bad_value(KEY_TOKEN_TYPE, reason));
        }
        if let Some(i) = self.token_types.iter().position(|t| !(0..=TOKEN_TYPE_MAX).contains(t)) {
            let ty = self.token_types[i];
            let reason = format!("token {i} has type {ty}, want 0..={TOKEN_TYPE_MAX}");
            return Err(bad_value(KEY_TOKEN_TYPE, reason));
        }
        let mut seen = HashSet::with_capacity(n_tokens);
        for (id, piece) in self.tokens.iter().enumerate() {
            if piece.len() > limits::TOKEN_PIECE_BYTES_MAX {
                let max = limits::TOKEN_PIECE_BYTES_MAX;
                let reason = format!("token {id} is {} bytes, more than {max}", piece.len());
                return Err(bad_value(KEY_TOKENS, reason));
            }
            if !seen.insert(piece.as_str()) {
                return Err(bad_value(KEY_TOKENS, format!("token {id} {piece:?} is a duplicate")));
            }
        }
        Ok(())
    }

    /// The split regex for `pre`.
    fn regex(&self) -> Result<&'static str> {
        match self.pre.as_str() {
            "qwen2" => Ok(REGEX_QWEN2),
            "qwen35" => Ok(REGEX_QWEN35),
            other => {
                let reason = format!("'{other}' is not supported (supported: qwen2, qwen35)");
                Err(bad_value(KEY_PRE, reason))
            }
        }
    }
}

/// A byte-level BPE tokenizer with the metadata the generation loop needs.
pub struct Tokenizer {
    /// Built with `encode_special_tokens`: it never matches special tokens itself; `encode`
    /// splits them out first when `parse_special` is set.
    inner: tokenizers::Tokenizer,
    /// Special tokens, longest text first (so the first hit at a position is the longest).
    specials: Vec<(String, u32)>,
    pieces: PieceTable,
    bos: Option<u32>,
    eog_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Build the Qwen pipeline from GGUF vocabulary metadata (validated first), without
    /// normalization, as llama.cpp tokenizes the same file.
    pub fn from_spec(spec: &VocabSpec) -> Result<Tokenizer> {
        Tokenizer::from_spec_with(spec, Normalization::Off)
    }

    /// [`Tokenizer::from_spec`] with a choice of normalization. `Off` is llama.cpp's behaviour
    /// (it never normalizes); it differs from HF only on text that is not already NFC.
    pub fn from_spec_with(spec: &VocabSpec, normalization: Normalization) -> Result<Tokenizer> {
        spec.validate()?;
        let pieces = PieceTable::from_spec(spec)?;
        let inner = bpe_pipeline(spec, normalization)?;
        let typed = spec.tokens.iter().zip(&spec.token_types).enumerate();
        let specials = typed
            .filter(|(_, (piece, &ty))| ty == TOKEN_TYPE_CONTROL && !piece.is_empty())
            .map(|(id, (piece, _))| (piece.clone(), id as u32))
            .collect();
        let eog_extra = EOG_TEXTS
            .iter()
            .filter_map(|text| spec.tokens.iter().position(|p| p == text).map(|id| id as u32));
        let eog_ids = spec.eos.into_iter().chain(eog_extra).collect();
        let bos = spec.bos.filter(|_| spec.add_bos);
        Ok(Tokenizer::assemble(inner, specials, pieces, bos, eog_ids, spec.chat_template.clone()))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        mut specials: Vec<(String, u32)>,
        pieces: PieceTable,
        bos: Option<u32>,
        mut eog_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> Tokenizer {
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        eog_ids.sort_unstable();
        eog_ids.dedup();
        Tokenizer { inner, specials, pieces, bos, eog_ids, chat_template }
    }

    /// Load an HF `tokenizer.json` (byte-level BPE only). The chat template, `eos_token` and
    /// BOS policy come from a `tokenizer_config.json` beside it, when there is one.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = crate::format::read_capped(path, limits::JSON_TOKENIZER_BYTES_MAX)?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| tokenizer_error(e).in_file(path))?;
        drop(bytes);
        inner.set_encode_special_tokens(true);
        inner.with_truncation(None).map_err(tokenizer_error)?;
        inner.with_padding(None);

        let added = inner.get_added_tokens_decoder();
        let added_ids: HashSet<u32> = added.keys().copied().collect();
        let pieces = PieceTable::from_hf(&inner, &added_ids).map_err(|e| e.in_file(path))?;
        let specials: Vec<(String, u32)> = added
            .iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(&id, t)| (t.content.clone(), id))
            .collect();

        let config_path = path.with_file_name("tokenizer_config.json");
        let config = TokenizerConfig::read(&config_path)?;
        let id_of = |text: &str| inner.token_to_id(text);
        let eos = config.eos_token.as_deref().and_then(id_of);
        let bos = config.bos_token.as_deref().and_then(id_of).filter(|_| config.add_bos);
        let eog_ids = eos.into_iter().chain(EOG_TEXTS.iter().filter_map(|t| id_of(t))).collect();
        Ok(Tokenizer::assemble(inner, specials, pieces, bos, eog_ids, config.chat_template))
    }

    /// Text → ids. No BOS is added (see [`Tokenizer::bos`]). With `parse_special` false, the
    /// text of a special token is tokenized as plain text; user-defined added tokens (such as
    /// Qwen3's `<think>`) match either way.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (plain, special) = match parse_special {
                true => self.next_special(rest),
                false => (rest.len(), None),
            };
            if plain > 0 {
                let encoding = self.inner.encode_fast(&rest[..plain], false);
                ids.extend_from_slice(encoding.map_err(tokenizer_error)?.get_ids());
            }
            rest = &rest[plain..];
            if let Some((len, id)) = special {
                ids.push(id);
                rest = &rest[len..];
            }
        }
        Ok(ids)
    }

    /// The byte offset of the first special token in `text` and its (length, id), or
    /// (`text.len()`, None). Leftmost match, longest at that position.
    fn next_special(&self, text: &str) -> (usize, Option<(usize, u32)>) {
        if self.specials.is_empty() {
            return (text.len(), None);
        }
        for (start, _) in text.char_indices() {
            let tail = &text[start..];
            if let Some((s, id)) = self.specials.iter().find(|(s, _)| tail.starts_with(s.as_str()))
            {
                return (start, Some((s.len(), *id)));
            }
        }
        (text.len(), None)
    }

    /// Ids → text. Invalid UTF-8 byte runs become one U+FFFD per byte.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut stream = StreamDecoder::new(self);
        let mut text = String::new();
        for &id in ids {
            text.push_str(&stream.push(id)?);
        }
        text.push_str(&stream.flush());
        Ok(text)
    }

    /// Number of token ids (the embedding may be larger: Qwen pads it).
    pub fn n_vocab(&self) -> usize {
        self.pieces.len()
    }

    /// The raw bytes of a token: the GPT-2 byte map inverted, or the text of an added token.
    /// Empty for an id out of range (decode reports those as errors).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.pieces.get(id).unwrap_or(&[])
    }

    /// Ids that end generation: eos, `<|im_end|>`, `<|endoftext|>` (those present), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.contains(&id)
    }

    /// The id a prompt must start with: Some only when the vocabulary asks for a BOS
    /// (`tokenizer.ggml.add_bos_token`; Qwen does not).
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The Jinja chat template, when the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Id of an exact token text (`"<think>"`), regular or added.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}

/// The HF pipeline of Qwen's tokenizer.json, from a validated spec: NFC → Split(regex,
/// Isolated) → ByteLevel → BPE (every token in the vocabulary, so added tokens keep their GGUF
/// ids) → ByteLevel decoder. Special-token matching is off (see `Tokenizer::inner`).
fn bpe_pipeline(spec: &VocabSpec, normalization: Normalization) -> Result<tokenizers::Tokenizer> {
    let mut vocab = Vocab::with_capacity(spec.tokens.len());
    for (id, piece) in spec.tokens.iter().enumerate() {
        vocab.insert(piece.clone(), id as u32);
    }
    let merges = spec
        .merges
        .iter()
        .filter_map(|m| split_merge(m))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(false)
        .byte_fallback(false)
        .build()
        .map_err(|e| bad_value(KEY_MERGES, e.to_string()))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    if normalization == Normalization::Nfc {
        inner.with_normalizer(Some(NFC));
    }
    let pattern = SplitPattern::Regex(spec.regex()?.to_string());
    let split =
        Split::new(pattern, SplitDelimiterBehavior::Isolated, false).map_err(tokenizer_error)?;
    let byte_level = ByteLevel::new(false, false, false);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(byte_level),
    ]);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

    let added: Vec<AddedToken> = spec
        .tokens
        .iter()
        .zip(&spec.token_types)
        .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(piece, &ty)| AddedToken::from(piece.clone(), ty == TOKEN_TYPE_CONTROL))
        .map(|token| token.normalized(false))
        .collect();
    inner.add_tokens(&added);
    inner.set_encode_special_tokens(true);
    Ok(inner)
}

impl std::fmt::Debug for Tokenizer {
    /// A summary: the vocabulary itself is far too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab())
            .field("n_specials", &self.specials.len())
            .field("bos", &self.bos)
            .field("eog_ids", &self.eog_ids)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming decode

/// Turns ids into text one at a time. Holds back an incomplete trailing UTF-8 sequence (at most
/// 3 bytes), so no character is ever split; `flush` at the end replaces what is left.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Bytes of an incomplete character, waiting for the rest. Never more than 3.
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> StreamDecoder<'a> {
        StreamDecoder { tokenizer, pending: Vec::with_capacity(8) }
    }

    /// The text newly completed by `id` (possibly empty). Errors on an id out of range.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let Some(bytes) = self.tokenizer.pieces.get(id) else {
            let n_vocab = self.tokenizer.n_vocab();
            return Err(tokenizer_error(format!("token id {id} out of range (n_vocab {n_vocab})")));
        };
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let consumed = utf8_lossy_per_byte(&self.pending, &mut text, false);
        self.pending.drain(..consumed);
        assert!(self.pending.len() < 4, "held back more than one incomplete character");
        Ok(text)
    }

    /// The bytes still held back, each as U+FFFD (empty when the stream ended cleanly).
    pub fn flush(&mut self) -> String {
        let mut text = String::new();
        utf8_lossy_per_byte(&self.pending, &mut text, true);
        self.pending.clear();
        text
    }
}

/// Append the characters of `bytes` to `out`, one U+FFFD per byte of an invalid sequence.
/// An incomplete sequence at the end is left unconsumed, unless `at_end` (then it is invalid).
/// Returns the number of bytes consumed.
fn utf8_lossy_per_byte(bytes: &[u8], out: &mut String, at_end: bool) -> usize {
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return bytes.len();
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("checked prefix"));
                let n_bad = match e.error_len() {
                    Some(n) => n,
                    None if at_end => after.len(),
                    None => return bytes.len() - after.len(),
                };
                out.extend(std::iter::repeat_n('\u{FFFD}', n_bad));
                rest = &after[n_bad..];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw token bytes

/// The bytes of every token in one buffer: token `id` is `bytes[offsets[id]..offsets[id + 1]]`.
struct PieceTable {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl PieceTable {
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let (&start, &end) = (self.offsets.get(id)?, self.offsets.get(id + 1)?);
        Some(&self.bytes[start..end])
    }

    fn build(pieces: impl Iterator<Item = Result<Vec<u8>>>) -> Result<PieceTable> {
        let mut table = PieceTable { bytes: Vec::new(), offsets: vec![0] };
        for piece in pieces {
            table.bytes.extend_from_slice(&piece?);
            table.offsets.push(table.bytes.len());
        }
        Ok(table)
    }

    /// Pieces of a GGUF vocabulary: control and user-defined tokens are raw text, the rest
    /// GPT-2 byte-mapped.
    fn from_spec(spec: &VocabSpec) -> Result<PieceTable> {
        let map = ByteMap::new();
        let mut coverage = ByteCoverage::default();
        let typed = spec.tokens.iter().zip(&spec.token_types).enumerate();
        let pieces = typed.map(|(id, (piece, &ty))| {
            if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                return Ok(piece.as_bytes().to_vec());
            }
            let bytes = map.decode(piece).ok_or_else(|| {
                bad_value(KEY_TOKENS, format!("token {id} {piece:?} is not byte-level BPE"))
            })?;
            coverage.note(&bytes);
            Ok(bytes)
        });
        let table = PieceTable::build(pieces)?;
        coverage.check().map_err(|reason| bad_value(KEY_TOKENS, reason))?;
        Ok(table)
    }

    /// Pieces of an HF tokenizer: added tokens are raw text, the rest GPT-2 byte-mapped.
    /// Ids must be 0..n without gaps.
    fn from_hf(inner: &tokenizers::Tokenizer, added_ids: &HashSet<u32>) -> Result<PieceTable> {
        let vocab = inner.get_vocab(true);
        let n_vocab = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if n_vocab == 0 || n_vocab != vocab.len() || n_vocab as u64 > limits::VOCAB_MAX {
            let n = vocab.len();
            let reason = format!("{n} tokens with ids below {n_vocab}: want ids 0..n, no gaps");
            return Err(tokenizer_error(reason));
        }
        let mut by_id = vec![""; n_vocab];
        for (piece, &id) in &vocab {
            by_id[id as usize] = piece.as_str();
        }
        let map = ByteMap::new();
        let mut coverage = ByteCoverage::default();
        let pieces = by_id.iter().enumerate().map(|(id, piece)| {
            if piece.len() > limits::TOKEN_PIECE_BYTES_MAX {
                return Err(tokenizer_error(format!("token {id} is {} bytes", piece.len())));
            }
            if added_ids.contains(&(id as u32)) {
                return Ok(piece.as_bytes().to_vec());
            }
            let bytes = map.decode(piece).ok_or_else(|| {
                tokenizer_error(format!("token {id} {piece:?}: not a byte-level BPE vocabulary"))
            })?;
            coverage.note(&bytes);
            Ok(bytes)
        });
        let table = PieceTable::build(pieces)?;
        coverage.check().map_err(tokenizer_error)?;
        Ok(table)
    }
}

/// Which byte values have a single-byte regular token. All 256 must: with no unk token and no
/// byte fallback, BPE silently drops a byte it has no token for, and encoding stops being
/// lossless.
struct ByteCoverage([bool; 256]);

impl Default for ByteCoverage {
    fn default() -> Self {
        ByteCoverage([false; 256])
    }
}

impl ByteCoverage {
    fn note(&mut self, piece: &[u8]) {
        if let [b] = *piece {
            self.0[b as usize] = true;
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        match self.0.iter().position(|&covered| !covered) {
            Some(b) => Err(format!("byte 0x{b:02x} has no single-byte token")),
            None => Ok(()),
        }
    }
}

/// The GPT-2 byte↔unicode map, inverted: printable Latin-1 bytes stand for themselves, the
/// other 68 bytes were moved to U+0100.. in byte order.
struct ByteMap {
    /// byte_of[c] for c < 0x144; None for chars that stand for no byte.
    byte_of: [Option<u8>; 0x144],
}

/// GPT-2's byte → char map (the alphabet of byte-level BPE vocabularies): printable Latin-1
/// bytes stand for themselves, the other 68 move to U+0100.. in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next_moved = 0x100;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let c = if printable { u32::from(b) } else { next_moved };
        next_moved += u32::from(!printable);
        map[b as usize] = char::from_u32(c).expect("U+0000..U+0143 are chars");
    }
    assert_eq!(next_moved, 0x144, "GPT-2 moves exactly 68 bytes");
    map
}

impl ByteMap {
    fn new() -> ByteMap {
        let mut byte_of = [None; 0x144];
        for (b, c) in byte_to_unicode().into_iter().enumerate() {
            byte_of[c as usize] = Some(b as u8);
        }
        ByteMap { byte_of }
    }

    fn decode(&self, piece: &str) -> Option<Vec<u8>> {
        piece.chars().map(|c| *self.byte_of.get(c as usize)?).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// The parts of an HF `tokenizer_config.json` the engine uses. Absent file: all defaults.
#[derive(Default)]
struct TokenizerConfig {
    chat_template: Option<String>,
    eos_token: Option<String>,
    bos_token: Option<String>,
    add_bos: bool,
}

impl TokenizerConfig {
    fn read(path: &Path) -> Result<TokenizerConfig> {
        if !path.is_file() {
            return Ok(TokenizerConfig::default());
        }
        let bytes = crate::format::read_capped(path, limits::JSON_CONFIG_BYTES_MAX)?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Json { what: path.display().to_string(), reason: e.to_string() })?;
        // A token is "text" or {"content": "text", ...} (AddedToken form).
        let token = |key: &str| -> Option<String> {
            let v = json.get(key)?;
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some(text.to_string())
        };
        Ok(TokenizerConfig {
            chat_template: json.get("chat_template").and_then(|v| v.as_str()).map(String::from),
            eos_token: token("eos_token"),
            bos_token: token("bos_token"),
            add_bos: json.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
        })
    }
}
