//! Logits → one token id, and stop strings over the streamed text.
//!
//! [`Sampler`] runs llama.cpp's default chain in its order: repetition penalty over the last
//! `repeat_last_n` tokens → top-k → top-p → min-p → temperature → draw. `temp <= 0` is
//! greedy (argmax of the penalized logits, lowest id on ties), as llama.cpp's temperature
//! sampler keeps only the maximum there. Draws come from our own seeded PRNG (xoshiro256**,
//! seeded through splitmix64), so a seed fixes the sequence on every machine.
//!
//! Non-finite logits: NaN counts as -inf (never drawn), +inf as `f32::MAX` (always the maximum);
//! if nothing finite is left, `sample` returns `Error::Usage`.
//!
//! Cost on a 151,936-entry vocabulary: one pass over the logits, then top-k by
//! `select_nth_unstable` (no full sort). Only `top_k = 0` with `top_p < 1` sorts, and then only
//! the tokens that survive min-p. The candidate buffers grow to the vocabulary once and are
//! reused; the greedy path allocates nothing after the first call.
//!
//! [`StopStrings`] cuts the generated text at the first stop string, holding back any tail that
//! could still grow into one, on `char` boundaries.

use std::cmp::Ordering;

use crate::error::{Error, Result};

/// The default seed. llama.cpp's default (`LLAMA_DEFAULT_SEED`) means "random"; ours is fixed so
/// a run is reproducible unless the caller passes its own seed.
pub const SEED_DEFAULT: u64 = 0;

/// Room reserved up front for the distinct ids of the penalty window.
const PENALTY_IDS_RESERVE: usize = 1024;

/// Sampler settings. Defaults are llama.cpp's (`common_params_sampling`), except `seed`.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// Temperature; `<= 0` is greedy.
    pub temp: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; 1.0 = off.
    pub top_p: f32,
    /// Keep tokens with `p >= min_p * p_max`; 0 = off.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this; 1.0 = off.
    pub repeat_penalty: f32,
    /// How many of the last tokens of the history the penalty looks at.
    pub repeat_last_n: usize,
    /// PRNG seed ([`SEED_DEFAULT`] = 0).
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> SamplerParams {
        SamplerParams {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: SEED_DEFAULT,
        }
    }
}

impl SamplerParams {
    /// Reject values the chain cannot use, naming the parameter and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: f32, range: &str| {
            Err(Error::Usage(format!("sampler: {name} is {value}, must be {range}")))
        };
        if !self.temp.is_finite() || self.temp < 0.0 {
            return bad("temp", self.temp, "finite and >= 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1] (1 = off)");
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad("min_p", self.min_p, "in [0, 1] (0 = off)");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad("repeat_penalty", self.repeat_penalty, "finite and > 0 (1 = off)");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// PRNG

/// xoshiro256** (Blackman & Vigna), state filled from the seed by splitmix64, as its authors
/// recommend. Not cryptographic; plenty for sampling.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let s = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Rng { s }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// Sampler

/// A token still in the running, with its (penalized, finite) logit.
#[derive(Copy, Clone, Debug)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Most likely first; equal logits by lowest id, so every order is canonical.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// The sampling chain with its PRNG and reusable scratch buffers.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    /// Distinct ids of the penalty window, sorted ascending. Rebuilt every call.
    penalized: Vec<u32>,
    /// The candidates of the current call. Grows to the vocabulary once.
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// Validates `params` and seeds the PRNG with `params.seed`.
    pub fn new(params: SamplerParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler {
            rng: Rng::new(params.seed),
            penalized: Vec::with_capacity(params.repeat_last_n.min(PENALTY_IDS_RESERVE)),
            candidates: Vec::new(),
            params,
        })
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// One token id from `logits` (one per vocabulary entry); `history` is every token so far
    /// (prompt and generated), of which the penalty looks at the last `repeat_last_n`.
    /// Errors on empty logits or when no logit is finite.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Usage("sampler: the logits are empty".into()));
        }
        if u32::try_from(logits.len()).is_err() {
            return Err(Error::Usage(format!(
                "sampler: {} logits, more than u32 ids",
                logits.len()
            )));
        }
        self.collect_penalized(history, logits.len());
        if self.params.temp <= 0.0 {
            return self.greedy(logits);
        }

        self.fill_candidates(logits);
        if self.candidates.is_empty() {
            return Err(all_non_finite(logits.len()));
        }
        self.truncate_top_k();
        let logit_max = self.candidates.iter().map(|c| c.logit).fold(f32::MIN, f32::max);
        // top-p normalizes over everything top-k left, before min-p; take the sum now.
        let top_p_on = self.params.top_p < 1.0;
        let norm = if top_p_on { softmax_norm(&self.candidates, logit_max) } else { 0.0 };
        // min-p before top-p gives the same set as llama.cpp's top-p → min-p: both keep a prefix
        // of the same order, with the same maximum. Doing min-p first shrinks the sort.
        self.truncate_min_p(logit_max);
        if top_p_on {
            self.candidates.sort_unstable_by(by_logit_desc);
            self.truncate_top_p(logit_max, norm);
        }
        Ok(self.draw(logit_max))
    }

    /// The distinct ids in the last `repeat_last_n` tokens of `history`, sorted, each below
    /// `n_vocab` (others cannot be penalized). Empty when the penalty is off.
    fn collect_penalized(&mut self, history: &[u32], n_vocab: usize) {
        self.penalized.clear();
        if self.params.repeat_penalty == 1.0 || self.params.repeat_last_n == 0 {
            return;
        }
        let window = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
        let in_vocab = window.iter().copied().filter(|&id| (id as usize) < n_vocab);
        self.penalized.extend(in_vocab);
        self.penalized.sort_unstable();
        self.penalized.dedup();
    }

    /// Argmax of the penalized logits; the first (lowest id) of equal maxima.
    fn greedy(&self, logits: &[f32]) -> Result<u32> {
        let mut best = Candidate { id: 0, logit: f32::NEG_INFINITY };
        for_each_logit(logits, &self.penalized, self.params.repeat_penalty, |id, logit| {
            if logit > best.logit {
                best = Candidate { id, logit };
            }
        });
        if best.logit == f32::NEG_INFINITY {
            return Err(all_non_finite(logits.len())); // for_each_logit passes no -inf
        }
        Ok(best.id)
    }

    fn fill_candidates(&mut self, logits: &[f32]) {
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.reserve(logits.len());
        for_each_logit(logits, &self.penalized, self.params.repeat_penalty, |id, logit| {
            candidates.push(Candidate { id, logit })
        });
    }

    /// Keep the `top_k` best, sorted best first (cheap: k is small).
    fn truncate_top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 || k >= self.candidates.len() {
            return;
        }
        self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
        self.candidates.truncate(k);
        self.candidates.sort_unstable_by(by_logit_desc);
    }

    /// Keep `p >= min_p * p_max`, i.e. `logit >= logit_max + ln(min_p)` (as llama.cpp).
    fn truncate_min_p(&mut self, logit_max: f32) {
        let min_p = self.params.min_p;
        if min_p <= 0.0 {
            return;
        }
        let logit_min = logit_max + min_p.ln();
        self.candidates.retain(|c| c.logit >= logit_min);
        assert!(!self.candidates.is_empty(), "min-p removed the maximum");
    }

    /// On candidates sorted best first: keep the shortest prefix whose probability (softmax
    /// with normalizer `norm`) reaches `top_p`; at least one.
    fn truncate_top_p(&mut self, logit_max: f32, norm: f64) {
        let top_p = f64::from(self.params.top_p);
        let mut cumulative = 0.0;
        for (i, c) in self.candidates.iter().enumerate() {
            cumulative += (f64::from(c.logit) - f64::from(logit_max)).exp() / norm;
            if cumulative >= top_p {
                self.candidates.truncate(i + 1);
                return;
            }
        }
    }

    /// Draw from softmax(logit / temp) over the candidates.
    fn draw(&mut self, logit_max: f32) -> u32 {
        let temp = f64::from(self.params.temp);
        let weight = |c: &Candidate| ((f64::from(c.logit) - f64::from(logit_max)) / temp).exp();
        let total: f64 = self.candidates.iter().map(weight).sum();
        let target = self.rng.next_f64() * total;
        let mut cumulative = 0.0;
        let mut last_positive = self.candidates[0].id;
        for c in &self.candidates {
            let w = weight(c);
            cumulative += w;
            if target < cumulative {
                return c.id;
            }
            if w > 0.0 {
                last_positive = c.id;
            }
        }
        last_positive // rounding left `target` at the very top
    }
}

/// Calls `f(id, logit)`, in id order, for every token whose logit, after the NaN/inf policy and
/// the penalty, is not -inf. `penalized` is sorted, distinct and in range: the runs between its
/// ids are tight loops.
fn for_each_logit(logits: &[f32], penalized: &[u32], penalty: f32, mut f: impl FnMut(u32, f32)) {
    let mut start = 0;
    for &id in penalized {
        for_each_in_run(logits, start, id as usize, &mut f);
        let logit = sanitize(logits[id as usize]);
        // llama.cpp: the sign decides, so the penalty always makes the token less likely.
        let logit = sanitize(if logit <= 0.0 { logit * penalty } else { logit / penalty });
        if logit != f32::NEG_INFINITY {
            f(id, logit);
        }
        start = id as usize + 1;
    }
    for_each_in_run(logits, start, logits.len(), &mut f);
}

/// The unpenalized part of [`for_each_logit`], over `logits[start..end]`.
fn for_each_in_run(logits: &[f32], start: usize, end: usize, f: &mut impl FnMut(u32, f32)) {
    for (i, &raw) in logits[start..end].iter().enumerate() {
        let logit = sanitize(raw);
        if logit != f32::NEG_INFINITY {
            f((start + i) as u32, logit);
        }
    }
}

/// NaN → -inf, +inf → `f32::MAX`; finite values and -inf pass through.
fn sanitize(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else if logit == f32::INFINITY {
        f32::MAX
    } else {
        logit
    }
}

/// Σ exp(logit - logit_max): the softmax denominator (≥ 1, the maximum contributes 1).
fn softmax_norm(candidates: &[Candidate], logit_max: f32) -> f64 {
    let max = f64::from(logit_max);
    candidates.iter().map(|c| (f64::from(c.logit) - max).exp()).sum()
}

fn all_non_finite(n_vocab: usize) -> Error {
    Error::Usage(format!("sampler: all {n_vocab} logits are non-finite (NaN or -inf)"))
}

// ---------------------------------------------------------------------------------------------
// Stop strings

/// Cuts streamed text at the first occurrence of any stop string. Text that could still be the
/// start of a stop string is held back until the next chunk decides; the stop string itself is
/// never emitted. Empty stop strings are ignored.
#[derive(Clone, Debug)]
pub struct StopStrings {
    stops: Vec<String>,
    /// Longest stop string, in bytes.
    stop_bytes_max: usize,
    /// Text not yet emitted: a tail that is a proper prefix of some stop string.
    held: String,
    stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> StopStrings {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let stop_bytes_max = stops.iter().map(String::len).max().unwrap_or(0);
        StopStrings { stops, stop_bytes_max, held: String::new(), stopped: false }
    }

    /// Feed the next chunk. Returns the text safe to emit now and whether a stop string was
    /// found; after a stop, every call returns `("", true)`.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.held.push_str(text);
        if let Some(at) = self.first_match() {
            let mut emit = std::mem::take(&mut self.held);
            emit.truncate(at);
            self.stopped = true;
            return (emit, true);
        }
        let keep_from = self.held_tail_start();
        let tail = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, tail), false)
    }

    /// The held-back text, at the end of the stream (empty after a stop).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Byte offset in `held` of the earliest stop string. A match cannot start in text already
    /// emitted: any tail that could begin one was held back.
    fn first_match(&self) -> Option<usize> {
        self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min()
    }

    /// Start of the longest tail of `held` that is a proper prefix of a stop string (on a char
    /// boundary), or `held.len()` when there is none.
    fn held_tail_start(&self) -> usize {
        let len = self.held.len();
        let lowest = len.saturating_sub(self.stop_bytes_max.saturating_sub(1));
        (lowest..len)
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|stop| stop.starts_with(&self.held[i..])))
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// First outputs against the authors' C code (xoshiro256starstar.c seeded by splitmix64.c,
    /// compiled with gcc).
    #[test]
    fn xoshiro256starstar_matches_reference() {
        let cases: [(u64, [u64; 4]); 2] = [
            (0, [0x99ec5f36cb75f2b4, 0xbf6e1f784956452a, 0x1a5f849d4933e6e0, 0x6aa594f1262d2d2c]),
            (42, [0x15780b2e0c2ec716, 0x6104d9866d113a7e, 0xae17533239e499a1, 0xecb8ad4703b360a1]),
        ];
        for (seed, expected) in cases {
            let mut rng = Rng::new(seed);
            let got = [rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64()];
            assert_eq!(got, expected, "seed {seed}");
        }
    }
}
