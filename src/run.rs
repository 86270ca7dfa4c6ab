//! What `rotary run` / `logits` / `bench` share: opening a model (or the embedded default),
//! its tokenizer, the generation loop with streamed text and stop conditions, and the stats
//! reported at the end. The CLI only parses flags and prints.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::format::gguf::Gguf;
use crate::model::qwen3moe::{Logits, Session};
use crate::model::weights::ModelFile;
use crate::synth::{self, Preset, QuantMix, SynthOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer, VocabSpec};

/// The embedded default model: the `tiny` preset at Q8_0, synthesized in memory (no file).
pub fn embedded_default() -> Result<Gguf> {
    let opts = SynthOptions::new(Preset::by_name("tiny")?, QuantMix::Q8_0, 0);
    Gguf::from_bytes(synth::to_bytes(&opts)?)
}

/// `path`, or the embedded default when there is none.
pub fn open_model(path: Option<&Path>) -> Result<ModelFile> {
    match path {
        Some(p) => ModelFile::open(p),
        None => Ok(ModelFile::Gguf(embedded_default()?)),
    }
}

/// The tokenizer that ships with a model: GGUF metadata, or the HF directory's tokenizer.json.
pub fn tokenizer_for(file: &ModelFile) -> Result<Tokenizer> {
    match file {
        ModelFile::Gguf(g) => {
            let spec = VocabSpec::from_gguf(g).map_err(|e| e.in_file(g.path()))?;
            Tokenizer::from_spec(&spec).map_err(|e| e.in_file(g.path()))
        }
        ModelFile::Hf(d) => match d.tokenizer_json() {
            Some(json) => Tokenizer::from_tokenizer_json(json),
            None => Err(Error::MissingKey { key: "tokenizer.json".into() }.in_file(d.dir())),
        },
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Timings of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub generate_seconds: f64,
    /// Why generation ended: "eog", "length", "stop", "context".
    pub stop_reason: &'static str,
}

impl GenStats {
    pub fn prompt_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_seconds.max(1e-9)
    }

    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens as f64 / self.generate_seconds.max(1e-9)
    }
}

/// Picks the next token from the logits and the tokens so far.
pub type SampleFn<'a> = &'a mut dyn FnMut(&[f32], &[u32]) -> Result<u32>;

/// What the loop needs besides the session: how to pick a token and when to stop.
pub struct Generation<'a> {
    pub n_predict: usize,
    pub sample: SampleFn<'a>,
    /// Receives text as soon as it is complete UTF-8; returns true to stop (a stop string).
    pub on_text: &'a mut dyn FnMut(&str) -> bool,
    /// Polled once per token; true stops generation (Ctrl-C).
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Prefill `prompt`, then generate up to `g.n_predict` tokens, streaming text through
/// `g.on_text`. Stops at an end-of-generation token, the length, a stop string, the context
/// end, or cancellation; the stats say which.
pub fn generate(
    session: &mut Session,
    tok: &Tokenizer,
    prompt: &[u32],
    g: Generation,
) -> Result<GenStats> {
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..GenStats::default() };
    if session.n_past + prompt.len() > session.n_ctx() {
        return Err(Error::ContextOverflow { n_tokens: prompt.len(), n_ctx: session.n_ctx() });
    }
    let start = Instant::now();
    let mut logits = session.forward(prompt, Logits::Last)?;
    stats.prompt_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut history = prompt.to_vec();
    let mut decoder = StreamDecoder::new(tok);
    stats.stop_reason = "length";
    while stats.generated_tokens < g.n_predict {
        if (g.cancelled)() {
            stats.stop_reason = "cancelled";
            break;
        }
        let next = (g.sample)(&logits, &history)?;
        stats.generated_tokens += 1;
        history.push(next);
        if tok.is_eog(next) {
            stats.stop_reason = "eog";
            break;
        }
        if (g.on_text)(&decoder.push(next)?) {
            stats.stop_reason = "stop";
            break;
        }
        if session.n_past >= session.n_ctx() {
            stats.stop_reason = "context";
            break;
        }
        if stats.generated_tokens < g.n_predict {
            logits = session.forward(&[next], Logits::Last)?;
        }
    }
    (g.on_text)(&decoder.flush());
    stats.generate_seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// Greedy choice: the highest logit, lowest id on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
