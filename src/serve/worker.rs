//! The engine's own thread: it takes jobs from a bounded queue one at a time, keeps the last
//! sequence's KV cache (and DeltaNet state) as a prompt cache, and streams text back. Nothing
//! here is async; the HTTP side talks to it over channels.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::forward::Engine;
use crate::run::{generate, GenStats, Generation};
use crate::sample::{Sampler, StopStrings};
use crate::tokenizer::Tokenizer;

use super::api::{ApiError, GenRequest};

/// One generation: prompt tokens, settings, where the text goes, and the flag that stops it
/// (a client that went away, or the server shutting down).
pub struct Job {
    pub prompt: Vec<u32>,
    pub gen: GenRequest,
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
    pub cancelled: Arc<AtomicBool>,
    /// The server is stopping: finish after the current token.
    pub shutdown: Arc<AtomicBool>,
}

/// What a job reports, in order: text pieces, then one Done or Error.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Outcome),
    Error(ApiError),
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub prompt_tokens: usize,
    /// Of the prompt, tokens the cache already held (not evaluated again).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// src/run.rs's stop reason: eog, stop, length, context, cancelled.
    pub stop_reason: &'static str,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
}

/// Counters for /metrics, updated by the worker.
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub decode_micros: AtomicU64,
    pub prompt_micros: AtomicU64,
    /// The rotary's stats line and numbers after the last job (device backends).
    pub rotary: Mutex<Option<crate::rotary::Stats>>,
}

/// The tokens the engine holds (its KV cache, as llama-server's prompt cache): a new prompt
/// evaluates only what follows the longest prefix it shares with them.
pub struct PromptCache {
    pub tokens: Vec<u32>,
}

impl PromptCache {
    /// How many of `prompt`'s tokens the engine keeps: the shared prefix (at least one prompt
    /// token must still run, for its logits). The engine rewinds to it when the cache holds
    /// more (the previous answer, re-tokenized differently); a model that cannot rewind
    /// (DeltaNet) keeps it only when the whole cache is the prefix.
    pub fn reuse(&mut self, engine: &mut dyn Engine, prompt: &[u32]) -> usize {
        if self.tokens.len() != engine.n_past() {
            return 0;
        }
        let shared = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        if shared == self.tokens.len() || (shared > 0 && engine.rewind(shared)) {
            self.tokens.truncate(shared);
            shared
        } else {
            0
        }
    }
}

/// Generate for `prompt` on `engine`, reusing what `cache` holds; text goes to `emit` as it is
/// produced; `cancelled` is polled once per token.
pub fn run_job(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    cache: &mut PromptCache,
    job: (&[u32], &GenRequest),
    emit: &mut dyn FnMut(String),
    cancelled: &dyn Fn() -> bool,
    metrics: &Metrics,
) -> Result<Outcome, ApiError> {
    let (prompt, gen) = job;
    let n_ctx = engine.n_ctx();
    let max_new = gen.max_tokens.unwrap_or(n_ctx);
    check_prompt(prompt, n_ctx)?;
    let reuse = cache.reuse(engine, prompt);
    if reuse == 0 {
        engine.reset();
        cache.tokens.clear();
    }
    let mut sampler = Sampler::new(gen.sampling.clone())
        .map_err(|e| ApiError::bad("temperature", e.to_string()))?;
    let mut stops = StopStrings::new(gen.stops.clone());
    let (presence, frequency) = (gen.presence_penalty, gen.frequency_penalty);
    let n_prompt = prompt.len();
    let mut sampled: Vec<u32> = Vec::new();
    let mut counts: std::collections::HashMap<u32, f32> = std::collections::HashMap::new();
    let result = generate(
        engine,
        tok,
        &prompt[reuse..],
        Generation {
            n_predict: max_new.min(n_ctx - n_prompt),
            sample: &mut |logits, history| {
                let id =
                    sample_penalized(&mut sampler, logits, history, presence, frequency, &counts)?;
                *counts.entry(id).or_insert(0.0) += 1.0;
                sampled.push(id);
                Ok(id)
            },
            on_text: &mut |text| {
                let (text, stopped) = stops.push(text);
                if !text.is_empty() {
                    emit(text);
                }
                stopped
            },
            cancelled,
        },
    );
    // What the engine now holds, for the next request's prefix check.
    // (The cache held prompt[..reuse]; every sampled token but the last was evaluated.)
    cache.tokens = prompt.iter().chain(&sampled).take(engine.n_past()).copied().collect();
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            engine.reset();
            cache.tokens.clear();
            return Err(ApiError::new(500, "server_error", e.to_string()));
        }
    };
    emit_held_back(&mut stops, emit);
    let out = outcome(n_prompt, reuse, &stats, stops.is_stopped());
    record_metrics(metrics, &out, engine);
    Ok(out)
}

/// Emit the text the stop strings held back (a possible stop's prefix), unless one matched.
fn emit_held_back(stops: &mut StopStrings, emit: &mut dyn FnMut(String)) {
    if !stops.is_stopped() {
        let rest = stops.flush();
        if !rest.is_empty() {
            emit(rest);
        }
    }
}

/// A finished job's outcome: a matched stop string makes the stop reason "stop".
fn outcome(n_prompt: usize, reuse: usize, stats: &GenStats, stopped: bool) -> Outcome {
    Outcome {
        prompt_tokens: n_prompt,
        cached_tokens: reuse,
        completion_tokens: stats.generated_tokens,
        stop_reason: if stopped { "stop" } else { stats.stop_reason },
        prompt_seconds: stats.prompt_seconds,
        decode_seconds: stats.generate_seconds,
    }
}

/// A job's prompt must be non-empty and leave room in the context for one generated token.
fn check_prompt(prompt: &[u32], n_ctx: usize) -> Result<(), ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::bad(
            "messages",
            format!("the prompt is {} tokens; the context holds {n_ctx}", prompt.len()),
        ));
    }
    Ok(())
}

/// Sample a token, first penalizing the logits of the `counts` tokens when a penalty is set.
fn sample_penalized(
    sampler: &mut Sampler,
    logits: &[f32],
    history: &[u32],
    presence: f32,
    frequency: f32,
    counts: &std::collections::HashMap<u32, f32>,
) -> crate::error::Result<u32> {
    if presence == 0.0 && frequency == 0.0 {
        return sampler.sample(logits, history);
    }
    // OpenAI's penalties over the generated tokens: once for presence, per use for frequency.
    let mut l = logits.to_vec();
    for (&t, &c) in counts {
        if let Some(x) = l.get_mut(t as usize) {
            *x -= presence + frequency * c;
        }
    }
    sampler.sample(&l, history)
}

/// Add a finished job to the /metrics counters, with the engine's latest rotary stats.
fn record_metrics(metrics: &Metrics, out: &Outcome, engine: &dyn Engine) {
    metrics.requests.fetch_add(1, Ordering::Relaxed);
    metrics.prompt_tokens.fetch_add(out.prompt_tokens as u64, Ordering::Relaxed);
    metrics.cached_tokens.fetch_add(out.cached_tokens as u64, Ordering::Relaxed);
    metrics.completion_tokens.fetch_add(out.completion_tokens as u64, Ordering::Relaxed);
    metrics.prompt_micros.fetch_add((out.prompt_seconds * 1e6) as u64, Ordering::Relaxed);
    metrics.decode_micros.fetch_add((out.decode_seconds * 1e6) as u64, Ordering::Relaxed);
    if let Some(s) = engine.rotary_stats() {
        *metrics.rotary.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
    }
}

/// The worker loop: jobs until the queue closes. A job whose client already left is skipped;
/// every other ends with Done or Error on its channel.
pub fn serve_jobs(
    engine: &mut dyn Engine,
    tok: &Tokenizer,
    jobs: std::sync::mpsc::Receiver<Job>,
    metrics: &Metrics,
) {
    let mut cache = PromptCache { tokens: Vec::new() };
    for job in jobs {
        if job.cancelled.load(Ordering::Relaxed) {
            continue;
        }
        let events = job.events.clone();
        let stop = || job.cancelled.load(Ordering::Relaxed) || job.shutdown.load(Ordering::Relaxed);
        let mut emit = |t: String| {
            let _ = events.send(Event::Text(t));
        };
        let event = match run_job(
            engine,
            tok,
            &mut cache,
            (&job.prompt, &job.gen),
            &mut emit,
            &stop,
            metrics,
        ) {
            Ok(o) => Event::Done(o),
            Err(e) => Event::Error(e),
        };
        let _ = job.events.send(event);
    }
}
