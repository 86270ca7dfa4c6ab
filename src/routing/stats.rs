//! What a routing really does: statistics of a routing trace (`rotary routing-stats`).
//!
//! Per layer, over tokens t = 1..T (token 0 has no past):
//! - next-token reuse: |S_t ∩ S_{t-1}| / k, averaged;
//! - reuse within W: |S_t ∩ (S_{t-W} ∪ .. ∪ S_{t-1})| / k, averaged (a shorter window at the start);
//! - top-12.5% share: activations of the ceil(E/8) most used experts over all activations;
//! - exact repeats: the share of t whose set equals S_{t-1};
//! - distinct: experts used at least once;
//! - LRU hit rate at residency r: a cold LRU cache of round(r·E) experts (at least 1) replays the
//!   layer's ids in order; hits over accesses.
//!
//! A model's figure is the mean over layers; min and max over layers show the spread.

use super::text::top_share;
use super::Trace;

/// Residencies of the LRU curve (fractions of a layer's experts).
pub const LRU_RESIDENCY: [f64; 6] = [0.05, 0.10, 0.19, 0.25, 0.38, 0.64];

#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    pub reuse_next: f64,
    pub reuse_window: f64,
    pub top_share: f64,
    pub exact_repeats: f64,
    pub distinct: usize,
    /// LRU hit rate at each of LRU_RESIDENCY.
    pub lru: Vec<f64>,
}

/// One statistic over the layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(xs: impl Iterator<Item = f64>) -> Spread {
        let v: Vec<f64> = xs.collect();
        assert!(!v.is_empty(), "a spread of no layers");
        Spread {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TraceStats {
    pub n_experts: usize,
    pub k: usize,
    pub n_tokens: usize,
    pub window: usize,
    pub layers: Vec<LayerStats>,
}

impl TraceStats {
    pub fn reuse_next(&self) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.reuse_next))
    }
    pub fn reuse_window(&self) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.reuse_window))
    }
    pub fn top_share(&self) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.top_share))
    }
    pub fn exact_repeats(&self) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.exact_repeats))
    }
    pub fn distinct(&self) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.distinct as f64))
    }
    /// The LRU hit rate at LRU_RESIDENCY[i], over layers.
    pub fn lru(&self, i: usize) -> Spread {
        Spread::of(self.layers.iter().map(|l| l.lru[i]))
    }
}

/// Hit rate of a cold LRU cache of `capacity` experts replaying `ids` in order.
pub fn lru_hit_rate(ids: impl Iterator<Item = usize>, capacity: usize) -> f64 {
    assert!(capacity > 0, "an LRU of no experts");
    // Most recent last; capacities here are small (at most a layer's experts).
    let mut cache: Vec<usize> = Vec::with_capacity(capacity + 1);
    let (mut hits, mut n) = (0u64, 0u64);
    for e in ids {
        n += 1;
        if let Some(at) = cache.iter().position(|&c| c == e) {
            hits += 1;
            cache.remove(at);
        } else if cache.len() == capacity {
            cache.remove(0);
        }
        cache.push(e);
    }
    hits as f64 / n.max(1) as f64
}

/// One layer's statistics; `sets[t]` is token t's experts at this layer.
pub fn layer_stats(sets: &[Vec<usize>], n_experts: usize, window: usize) -> LayerStats {
    assert!(sets.len() >= 2, "statistics need at least 2 tokens");
    let k = sets[0].len();
    let overlap = |a: &[usize], b: &mut dyn Iterator<Item = usize>| {
        let b: Vec<usize> = b.collect();
        a.iter().filter(|e| b.contains(e)).count() as f64 / k as f64
    };
    let steps = (sets.len() - 1) as f64;
    let mut reuse_next = 0.0;
    let mut reuse_window = 0.0;
    let mut repeats = 0.0;
    for t in 1..sets.len() {
        reuse_next += overlap(&sets[t], &mut sets[t - 1].iter().copied());
        let from = t.saturating_sub(window);
        reuse_window += overlap(&sets[t], &mut sets[from..t].iter().flatten().copied());
        let mut a = sets[t].clone();
        let mut b = sets[t - 1].clone();
        a.sort_unstable();
        b.sort_unstable();
        repeats += f64::from(u8::from(a == b));
    }
    let mut used = vec![false; n_experts];
    sets.iter().flatten().for_each(|&e| used[e] = true);
    let lru = LRU_RESIDENCY
        .iter()
        .map(|r| {
            let cap = ((r * n_experts as f64).round() as usize).max(1);
            lru_hit_rate(sets.iter().flatten().copied(), cap)
        })
        .collect();
    LayerStats {
        reuse_next: reuse_next / steps,
        reuse_window: reuse_window / steps,
        top_share: top_share(sets, n_experts),
        exact_repeats: repeats / steps,
        distinct: used.iter().filter(|&&u| u).count(),
        lru,
    }
}

/// Statistics of every layer of a trace of a model with `n_experts` experts per layer.
pub fn trace_stats(trace: &Trace, n_experts: usize, window: usize) -> crate::Result<TraceStats> {
    if trace.tokens.len() < 2 {
        return Err(crate::Error::Usage(
            "routing statistics need a trace of 2 tokens or more".into(),
        ));
    }
    if let Some(bad) = trace.tokens.iter().flatten().flatten().find(|&&e| e >= n_experts) {
        return Err(crate::Error::Usage(format!(
            "routing trace: expert {bad} of {n_experts} (wrong --experts?)"
        )));
    }
    let layers = (0..trace.n_layers)
        .map(|l| {
            let sets: Vec<Vec<usize>> = trace.tokens.iter().map(|t| t[l].clone()).collect();
            layer_stats(&sets, n_experts, window)
        })
        .collect();
    Ok(TraceStats { n_experts, k: trace.k, n_tokens: trace.tokens.len(), window, layers })
}

/// Published LRU hit rates (residency, hit rate), both on Qwen models:
/// - real text: kekzl/imp PR #2061, 300 tokens from a 512-expert model;
/// - a repetitive bench prompt: imp PR #1374, Qwen3-30B-A3B Q4_K_M, 256 cold decode tokens, 8, 24,
///   49 and 81 experts per layer of 128 (slots for gate, up and down counted ÷ 3).
pub const PUBLISHED_REAL_TEXT: [(f64, f64); 4] =
    [(0.18, 0.435), (0.36, 0.620), (0.54, 0.720), (0.73, 0.789)];
pub const PUBLISHED_BENCH_PROMPT: [(f64, f64); 4] =
    [(8.0 / 128.0, 0.366), (24.0 / 128.0, 0.741), (49.0 / 128.0, 0.894), (81.0 / 128.0, 0.962)];

/// A published curve linearly interpolated at residency r (None outside its measured range).
pub fn published_at(curve: &[(f64, f64)], r: f64) -> Option<f64> {
    curve.windows(2).find(|w| (w[0].0..=w[1].0).contains(&r)).map(|w| {
        let t = (r - w[0].0) / (w[1].0 - w[0].0);
        w[0].1 + t * (w[1].1 - w[0].1)
    })
}
