//! What `rotary run` / `logits` / `bench` share: opening a model (or the embedded default),
//! its tokenizer, the generation loop with streamed text and stop conditions, and the stats
//! reported at the end. The CLI only parses flags and prints.

use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::format::gguf::Gguf;
use crate::forward::{Engine, Logits};
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
    session: &mut dyn Engine,
    tok: &Tokenizer,
    prompt: &[u32],
    g: Generation,
) -> Result<GenStats> {
    let mut stats = GenStats { prompt_tokens: prompt.len(), ..GenStats::default() };
    if session.n_past() + prompt.len() > session.n_ctx() {
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
        if session.n_past() >= session.n_ctx() {
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

/// llama-bench-style results: tok/s mean and standard deviation over repetitions.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub pp_tok_s: f64,
    pub pp_tok_s_sd: f64,
    pub tg_tok_s: f64,
    pub tg_tok_s_sd: f64,
    pub pp_tok_s_all: Vec<f64>,
    pub tg_tok_s_all: Vec<f64>,
}

/// Prompt processing of `n_prompt` tokens and generation of `n_gen` tokens, each from an
/// empty context, `reps` times after one warm-up, as llama-bench does. Tokens are fixed
/// pseudo-random ids (the speed of a forward pass does not depend on which tokens).
pub fn bench(
    session: &mut dyn Engine,
    n_vocab: usize,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
) -> Result<BenchResult> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_id = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n_vocab.min(151_643) as u64) as u32
    };
    let prompt: Vec<u32> = (0..n_prompt).map(|_| next_id()).collect();
    let gen: Vec<u32> = (0..n_gen).map(|_| next_id()).collect();
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        session.reset();
        let start = Instant::now();
        if n_prompt > 0 {
            session.forward(&prompt, Logits::Last)?;
        }
        let pp_s = start.elapsed().as_secs_f64();
        session.reset();
        let start = Instant::now();
        for &t in &gen {
            session.forward(&[t], Logits::Last)?;
        }
        let tg_s = start.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(n_prompt as f64 / pp_s.max(1e-9));
            tg.push(n_gen as f64 / tg_s.max(1e-9));
        }
    }
    let (pp_mean, pp_sd) = mean_sd(&pp);
    let (tg_mean, tg_sd) = mean_sd(&tg);
    Ok(BenchResult {
        pp_tok_s: pp_mean,
        pp_tok_s_sd: pp_sd,
        tg_tok_s: tg_mean,
        tg_tok_s_sd: tg_sd,
        pp_tok_s_all: pp,
        tg_tok_s_all: tg,
    })
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (x.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}
