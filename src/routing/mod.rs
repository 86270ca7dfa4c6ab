//! Routing modes for benchmarks (`--routing model|text|sticky:P|trace:FILE`), routing traces
//! (`rotary run --record-routing FILE`) and their statistics (`rotary routing-stats`).
//!
//! Random weights route almost uniformly, the worst case for an expert cache, while real
//! Qwen3-30B-A3B decode reuses ~45% of a layer's experts at the next token (anchors.md §8).
//! - `model`: what the router computes.
//! - `text` (`text:SEED`): a seeded synthetic router with the statistics of real text
//!   (src/routing/text.rs); independent of the hidden state, weights from the router.
//! - `sticky:P`: each layer's expert set repeats the previous token's set with probability P,
//!   else the router's choice; weights are the router's probabilities of the chosen experts.
//! - `trace:FILE`: replays recorded expert ids (cycling when the trace is shorter than the run),
//!   weights again from the router.
//!
//! Trace format (text): a header `rotary-routing v1 layers=L k=K [experts=E]`, then one line per
//! token with L groups of K expert ids, groups separated by `;`, ids by spaces.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ops::oracle::top_k;

pub mod stats;
pub mod text;

use text::TextRouting;

/// The seed of `--routing text` unless the mode names one.
pub const TEXT_SEED: u64 = 0x5eed;

#[derive(Clone, Debug)]
pub enum RoutingMode {
    Model,
    /// Text-like synthetic routing with this seed.
    Text(u64),
    Sticky(f64),
    Trace(PathBuf),
}

impl RoutingMode {
    pub fn parse(s: &str) -> Result<RoutingMode> {
        let bad = || {
            Error::Usage(format!(
                "routing mode {s}: want model, text, text:SEED, sticky:P (0 <= P <= 1) or trace:FILE"
            ))
        };
        if s == "model" {
            return Ok(RoutingMode::Model);
        }
        if s == "text" {
            return Ok(RoutingMode::Text(TEXT_SEED));
        }
        if let Some(seed) = s.strip_prefix("text:") {
            return seed.parse().map(RoutingMode::Text).map_err(|_| bad());
        }
        if let Some(p) = s.strip_prefix("sticky:") {
            let p: f64 = p.parse().map_err(|_| bad())?;
            return if (0.0..=1.0).contains(&p) { Ok(RoutingMode::Sticky(p)) } else { Err(bad()) };
        }
        if let Some(f) = s.strip_prefix("trace:") {
            return if f.is_empty() {
                Err(bad())
            } else {
                Ok(RoutingMode::Trace(PathBuf::from(f)))
            };
        }
        Err(bad())
    }

    /// The mode as a result label: "model", "text", "text:7", "sticky:0.45", "trace:FILE".
    pub fn label(&self) -> String {
        match self {
            RoutingMode::Model => "model".into(),
            RoutingMode::Text(TEXT_SEED) => "text".into(),
            RoutingMode::Text(seed) => format!("text:{seed}"),
            RoutingMode::Sticky(p) => format!("sticky:{p}"),
            RoutingMode::Trace(f) => format!("trace:{}", f.display()),
        }
    }
}

/// Recorded expert ids: `tokens[t][l]` holds layer l's k ids for token t.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    pub n_layers: usize,
    pub k: usize,
    /// Experts per layer, when the header says (traces written before it was recorded lack it).
    pub n_experts: Option<usize>,
    pub tokens: Vec<Vec<Vec<usize>>>,
}

/// Most tokens a trace file may hold (a cap on what a file can make us allocate).
const MAX_TRACE_TOKENS: usize = 1 << 20;

impl Trace {
    pub fn load(path: &Path) -> Result<Trace> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { path: path.into(), source: e })?;
        Trace::parse(&text).map_err(|e| e.in_file(path))
    }

    pub fn parse(text: &str) -> Result<Trace> {
        let bad = |line: usize, why: &str| Error::BadValue {
            key: format!("routing trace line {line}"),
            reason: why.into(),
        };
        let mut lines = text.lines();
        let header = lines.next().ok_or_else(|| bad(1, "empty file"))?;
        let mut fields = header.split_whitespace();
        if fields.next() != Some("rotary-routing") || fields.next() != Some("v1") {
            return Err(bad(1, "not a 'rotary-routing v1' header"));
        }
        let mut get = |name: &str| -> Result<usize> {
            let f = fields.next().ok_or_else(|| bad(1, "header lacks layers= and k="))?;
            let v = f.strip_prefix(name).and_then(|v| v.parse().ok());
            v.filter(|&v| v > 0 && v <= 4096).ok_or_else(|| bad(1, &format!("bad {name}")))
        };
        let (n_layers, k) = (get("layers=")?, get("k=")?);
        let n_experts = match fields.next() {
            None => None,
            Some(f) => Some(
                f.strip_prefix("experts=")
                    .and_then(|v| v.parse().ok())
                    .filter(|&v: &usize| v >= k && v <= 1 << 16)
                    .ok_or_else(|| bad(1, "bad experts="))?,
            ),
        };
        let mut tokens = Vec::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if tokens.len() >= MAX_TRACE_TOKENS {
                return Err(bad(i + 2, "too many tokens"));
            }
            let groups: Vec<&str> = line.split(';').collect();
            if groups.len() != n_layers {
                return Err(bad(i + 2, &format!("{} layer groups, want {n_layers}", groups.len())));
            }
            let mut tok = Vec::with_capacity(n_layers);
            for g in groups {
                let ids: Vec<usize> = g
                    .split_whitespace()
                    .map(|s| s.parse())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|_| bad(i + 2, "an expert id is not a number"))?;
                if ids.len() != k {
                    return Err(bad(i + 2, &format!("{} ids in a group, want {k}", ids.len())));
                }
                tok.push(ids);
            }
            tokens.push(tok);
        }
        if tokens.is_empty() {
            return Err(bad(2, "no tokens"));
        }
        if let Some(e) = n_experts {
            if let Some(&id) = tokens.iter().flatten().flatten().find(|&&id| id >= e) {
                return Err(bad(1, &format!("expert {id} in a trace of experts={e}")));
            }
        }
        Ok(Trace { n_layers, k, n_experts, tokens })
    }

    /// `n_tokens` tokens of text routing, without a model: what `--routing text:SEED` chooses.
    pub fn text(n_layers: usize, n_experts: usize, k: usize, seed: u64, n_tokens: usize) -> Trace {
        let mut r = TextRouting::new(n_layers, n_experts, k, seed);
        let tokens = (0..n_tokens).map(|_| (0..n_layers).map(|l| r.next(l)).collect()).collect();
        Trace { n_layers, k, n_experts: Some(n_experts), tokens }
    }
}

/// One token's line of a trace file: layer groups separated by `;`, ids by spaces.
fn token_line(tok: &[Vec<usize>]) -> String {
    let groups: Vec<String> =
        tok.iter().map(|g| g.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" ")).collect();
    groups.join(";")
}

fn header(n_layers: usize, n_experts: usize, k: usize) -> String {
    format!("rotary-routing v1 layers={n_layers} k={k} experts={n_experts}")
}

impl Trace {
    /// Write the trace in the format `Trace::load` reads.
    pub fn write(&self, path: &Path, n_experts: usize) -> Result<()> {
        let mut text = header(self.n_layers, n_experts, self.k);
        for tok in &self.tokens {
            text.push('\n');
            text.push_str(&token_line(tok));
        }
        text.push('\n');
        std::fs::write(path, text).map_err(|e| Error::Io { path: path.into(), source: e })
    }
}

/// Writes a trace as tokens are routed: one line per token once all its layers are known.
pub struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// pending[t][l]: tokens of the current batch whose layers are still being routed.
    pending: Vec<Vec<Vec<usize>>>,
    n_layers: usize,
}

impl Recorder {
    pub fn create(path: &Path, n_layers: usize, n_experts: usize, k: usize) -> Result<Recorder> {
        let io = |e| Error::Io { path: path.into(), source: e };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        writeln!(out, "{}", header(n_layers, n_experts, k)).map_err(io)?;
        Ok(Recorder { out, path: path.into(), pending: Vec::new(), n_layers })
    }

    fn record(&mut self, layer: usize, ids: &[usize], n: usize, k: usize) -> Result<()> {
        if layer == 0 {
            self.pending = vec![Vec::with_capacity(self.n_layers); n];
        }
        for (t, tok) in self.pending.iter_mut().enumerate() {
            tok.push(ids[t * k..(t + 1) * k].to_vec());
        }
        if layer + 1 == self.n_layers {
            let io = |e| Error::Io { path: self.path.clone(), source: e };
            for tok in std::mem::take(&mut self.pending) {
                writeln!(self.out, "{}", token_line(&tok)).map_err(io)?;
            }
            self.out.flush().map_err(io)?;
        }
        Ok(())
    }
}

/// Chooses experts per layer for a batch of tokens, by mode; records what it chose.
pub struct Router {
    mode: RoutingMode,
    trace: Option<Trace>,
    text: Option<TextRouting>,
    /// The previous token's experts at each layer (sticky).
    prev: Vec<Option<Vec<usize>>>,
    /// Tokens routed so far at each layer (trace position).
    routed: Vec<usize>,
    rng: u64,
    recorder: Option<Recorder>,
    k: usize,
}

impl Router {
    pub fn new(
        mode: RoutingMode,
        n_layers: usize,
        n_experts: usize,
        k: usize,
        seed: u64,
    ) -> Result<Router> {
        let trace = match &mode {
            RoutingMode::Trace(p) => {
                let t = Trace::load(p)?;
                if t.n_layers != n_layers || t.k != k {
                    return Err(Error::Usage(format!(
                        "routing trace {}: {} layers, k={}; the model has {n_layers} layers, k={k}",
                        p.display(),
                        t.n_layers,
                        t.k
                    )));
                }
                Some(t)
            }
            _ => None,
        };
        let text = match mode {
            RoutingMode::Text(_) if k == 0 || k > n_experts || n_layers == 0 => {
                return Err(Error::Usage(format!(
                    "text routing: {n_layers} layers, k={k} of {n_experts} experts"
                )))
            }
            RoutingMode::Text(seed) => Some(TextRouting::new(n_layers, n_experts, k, seed)),
            _ => None,
        };
        Ok(Router {
            mode,
            trace,
            text,
            prev: vec![None; n_layers],
            routed: vec![0; n_layers],
            rng: seed | 1,
            recorder: None,
            k,
        })
    }

    pub fn record_to(&mut self, r: Recorder) {
        self.recorder = Some(r);
    }

    pub fn mode(&self) -> &RoutingMode {
        &self.mode
    }

    /// Whether the router's own top-k stands (model mode): callers may skip the host round trip.
    pub fn is_model(&self) -> bool {
        matches!(self.mode, RoutingMode::Model)
    }

    pub fn is_recording(&self) -> bool {
        self.recorder.is_some()
    }

    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Layer `layer`'s experts for n tokens: `ids` and `weights` are [n, k] outputs, `probs`
    /// [n, n_experts] the router's softmax probabilities; weights are the probabilities of the
    /// chosen experts (renormalised if `renorm`).
    pub fn route(
        &mut self,
        layer: usize,
        probs: &[f32],
        renorm: bool,
        ids: &mut [usize],
        weights: &mut [f32],
    ) -> Result<()> {
        let k = self.k;
        let n = ids.len() / k;
        assert!(
            n > 0 && ids.len() == n * k && weights.len() == n * k,
            "ids and weights are [n, k]"
        );
        let n_experts = probs.len() / n;
        for t in 0..n {
            let p = &probs[t * n_experts..(t + 1) * n_experts];
            let chosen: Vec<usize> = match &self.mode {
                RoutingMode::Model => top_k(p, k).into_iter().map(|(e, _)| e).collect(),
                RoutingMode::Sticky(stick) => {
                    let stick = *stick;
                    match self.prev[layer].clone() {
                        Some(prev) if self.uniform() < stick => prev,
                        _ => top_k(p, k).into_iter().map(|(e, _)| e).collect(),
                    }
                }
                RoutingMode::Text(_) => {
                    let text = self.text.as_mut().expect("text mode has its generator");
                    let ids = text.next(layer);
                    if let Some(&bad) = ids.iter().find(|&&e| e >= n_experts) {
                        return Err(Error::Usage(format!(
                            "text routing: expert {bad} of {n_experts} (router built for more)"
                        )));
                    }
                    ids
                }
                RoutingMode::Trace(_) => {
                    let tr = self.trace.as_ref().expect("trace mode has a trace");
                    let at = self.routed[layer] % tr.tokens.len();
                    let ids = tr.tokens[at][layer].clone();
                    if let Some(&bad) = ids.iter().find(|&&e| e >= n_experts) {
                        return Err(Error::Usage(format!(
                            "routing trace: expert {bad} of {n_experts}"
                        )));
                    }
                    ids
                }
            };
            self.routed[layer] += 1;
            let sum: f32 = chosen.iter().map(|&e| p[e]).sum();
            for (j, &e) in chosen.iter().enumerate() {
                ids[t * k + j] = e;
                weights[t * k + j] = if renorm { p[e] / sum } else { p[e] };
            }
            self.prev[layer] = Some(chosen);
        }
        if let Some(r) = &mut self.recorder {
            r.record(layer, ids, n, k)?;
        }
        Ok(())
    }

    /// A synthetic router's prediction of `layer`'s experts for the next n tokens ([n, k] ids),
    /// for the prefetcher; None where the model's own predictor is the right one (model,
    /// sticky, trace modes).
    pub fn predict(&mut self, layer: usize, n: usize) -> Option<Vec<i32>> {
        let text = self.text.as_mut()?;
        let sets = text.predict(layer, n);
        Some(sets.into_iter().flatten().map(|e| e as i32).collect())
    }

    /// Forget the sequence (sticky and text history); trace positions and random streams
    /// continue.
    pub fn reset(&mut self) {
        self.prev.iter_mut().for_each(|p| *p = None);
        if let Some(t) = &mut self.text {
            t.reset();
        }
    }
}
