//! The expert cache: VRAM slots keyed by (layer, expert), allocated globally (any layer may
//! take any slot) or per layer (each layer owns an equal share), with a pluggable eviction
//! policy:
//! - `Lru`: the least recently used expert goes.
//! - `Lfru`: frequency with ageing (an access adds 1; scores halve every `LFRU_HALF_LIFE`
//!   accesses of the cache): experts used often but not in the last few tokens survive a
//!   burst of one-off experts (vLLM PR #37190 measured LFRU with 8 slots beating LRU with 16).
//! - `LayerAware`: layer-sequential "least stale" (SpecMD, arXiv 2602.03921): a decode step
//!   visits layers in order, so the expert whose layer comes back last (the layer just run)
//!   goes first; LRU among equals.

use std::collections::HashMap;

use super::device::Event;

const LFRU_HALF_LIFE: f64 = 512.0;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Lru,
    Lfru,
    LayerAware,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lfru => "lfru",
            Policy::LayerAware => "layer",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Allocation {
    Global,
    PerLayer,
}

impl Allocation {
    pub fn name(self) -> &'static str {
        match self {
            Allocation::Global => "global",
            Allocation::PerLayer => "layer",
        }
    }
}

/// The slots of `class` (a range of the cache) that member `i` of its `n` layers may use: all
/// of them (global), or an equal share (per layer).
pub fn layer_range(
    alloc: Allocation,
    class: std::ops::Range<usize>,
    n: usize,
    i: usize,
) -> std::ops::Range<usize> {
    match alloc {
        Allocation::Global => class,
        Allocation::PerLayer => {
            let per = class.len() / n.max(1);
            class.start + i * per..class.start + (i + 1) * per
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Slot {
    pub key: Option<(usize, usize)>,
    last_use: u64,
    score: f64,
    scored_at: u64,
    /// The copy that fills the slot, while it may still be in flight.
    pub ready: Option<Event>,
    /// The last compute that read the slot (a refill must wait for it).
    pub last_read: Option<Event>,
}

#[derive(Copy, Clone, Debug, Default)]
pub struct LayerCounts {
    pub hits: u64,
    pub misses: u64,
}

pub struct ExpertCache {
    pub slots: Vec<Slot>,
    map: HashMap<(usize, usize), usize>,
    policy: Policy,
    /// The slots each layer may use.
    ranges: Vec<std::ops::Range<usize>>,
    n_layers: usize,
    clock: u64,
    pub per_layer: Vec<LayerCounts>,
}

impl ExpertCache {
    /// `n_slots` slots of one size for `n_layers` layers, shared or split evenly by `alloc`.
    pub fn new(n_slots: usize, n_layers: usize, policy: Policy, alloc: Allocation) -> ExpertCache {
        let ranges = (0..n_layers).map(|l| layer_range(alloc, 0..n_slots, n_layers, l)).collect();
        ExpertCache::with_ranges(n_slots, ranges, policy)
    }

    /// `n_slots` slots, layer l taking `ranges[l]` (the plan's size classes: each layer uses
    /// the slots of its experts' size).
    pub fn with_ranges(
        n_slots: usize,
        ranges: Vec<std::ops::Range<usize>>,
        policy: Policy,
    ) -> ExpertCache {
        assert!(ranges.iter().all(|r| r.end <= n_slots), "layer ranges within the slots");
        let n_layers = ranges.len();
        ExpertCache {
            slots: vec![Slot::default(); n_slots],
            map: HashMap::new(),
            policy,
            ranges,
            n_layers: n_layers.max(1),
            clock: 0,
            per_layer: vec![LayerCounts::default(); n_layers],
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The slots layer `l` may use.
    fn range(&self, layer: usize) -> std::ops::Range<usize> {
        self.ranges[layer].clone()
    }

    /// Slots layer `l` may use (for admission checks).
    pub fn capacity(&self, layer: usize) -> usize {
        self.range(layer).len()
    }

    /// The slot holding (layer, expert), without touching it.
    pub fn peek(&self, layer: usize, expert: usize) -> Option<usize> {
        self.map.get(&(layer, expert)).copied()
    }

    /// Look (layer, expert) up for use now: counts a hit or a miss and touches on a hit.
    pub fn lookup(&mut self, layer: usize, expert: usize) -> Option<usize> {
        let slot = self.peek(layer, expert);
        match slot {
            Some(s) => {
                self.per_layer[layer].hits += 1;
                self.touch(s);
            }
            None => self.per_layer[layer].misses += 1,
        }
        slot
    }

    fn touch(&mut self, s: usize) {
        self.clock += 1;
        let now = self.clock;
        let slot = &mut self.slots[s];
        let age = (now - slot.scored_at) as f64;
        slot.score = slot.score * (-age / LFRU_HALF_LIFE).exp2() + 1.0;
        slot.scored_at = now;
        slot.last_use = now;
    }

    /// A slot for a new expert of `layer`: an empty one, else the policy's victim among slots
    /// not in `protected`. None when every candidate is protected.
    pub fn victim(&self, layer: usize, protected: &[usize]) -> Option<usize> {
        let range = self.range(layer);
        if let Some(s) =
            range.clone().find(|&s| self.slots[s].key.is_none() && !protected.contains(&s))
        {
            return Some(s);
        }
        let now = self.clock;
        let cost = |s: usize| -> (f64, u64) {
            let slot = &self.slots[s];
            let lru = slot.last_use;
            match self.policy {
                Policy::Lru => (0.0, lru),
                Policy::Lfru => {
                    let age = (now - slot.scored_at) as f64;
                    (slot.score * (-age / LFRU_HALF_LIFE).exp2(), lru)
                }
                Policy::LayerAware => {
                    // Layers until this slot's layer runs again (0 = the next layer).
                    let l = slot.key.map_or(0, |k| k.0);
                    let dist = (l + self.n_layers - layer - 1) % self.n_layers;
                    (-(dist as f64), lru)
                }
            }
        };
        range.filter(|s| !protected.contains(s)).min_by(|&a, &b| {
            let (ca, cb) = (cost(a), cost(b));
            ca.0.total_cmp(&cb.0).then(ca.1.cmp(&cb.1))
        })
    }

    /// Put (layer, expert) in `slot`, evicting what was there; returns the evicted key.
    pub fn insert(&mut self, slot: usize, layer: usize, expert: usize) -> Option<(usize, usize)> {
        let old = self.slots[slot].key.take();
        if let Some(k) = old {
            self.map.remove(&k);
        }
        // The slot's events stay: the caller orders the refill after them (before_refill).
        self.slots[slot] = Slot {
            key: Some((layer, expert)),
            last_read: self.slots[slot].last_read,
            ready: self.slots[slot].ready.take(),
            ..Slot::default()
        };
        self.map.insert((layer, expert), slot);
        self.touch(slot);
        old
    }

    pub fn totals(&self) -> LayerCounts {
        self.per_layer.iter().fold(LayerCounts::default(), |a, c| LayerCounts {
            hits: a.hits + c.hits,
            misses: a.misses + c.misses,
        })
    }
}
