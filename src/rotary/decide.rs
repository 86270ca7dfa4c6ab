//! The rotary's decisions, without a device: per layer, which needed experts hit, which load
//! into which slot and which run on the CPU; which experts load behind a CPU expert (admission
//! on a second miss) and which load ahead (prefetch). `residency.rs` carries them out on a
//! device (copies, events, pointer tables, the CPU experts); `replay.rs` only counts them, so a
//! routing that does not depend on the hidden state can be replayed on a real model's shape
//! without running it. Both call the same code, so they make the same decisions.

use std::collections::VecDeque;

use super::cache::ExpertCache;
use super::options::MoePolicy;

/// Recently CPU-computed experts remembered per layer, in units of top-k (see `ghosts`).
const GHOSTS: usize = 4;

/// What the miss policy weighs: the link's speed, the CPU's and the GPU's, for one expert's
/// bytes.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Costs {
    pub link_bytes_per_s: f64,
    pub cpu_s_per_byte: f64,
    /// The GPU reading an expert (0 where unknown: the GPU's own time is left out).
    pub gpu_s_per_byte: f64,
    /// One set of cores does the kernels, the CPU experts and the copies (the simulator): a
    /// layer takes the sum of its parts, not the longer of its two sides.
    pub serial: bool,
}

impl Costs {
    /// Whether copying an expert and reading it on the GPU takes less than computing it on
    /// the CPU (per byte, so for any expert).
    pub fn copy_beats_cpu(&self) -> bool {
        1.0 / self.link_bytes_per_s + self.gpu_s_per_byte <= self.cpu_s_per_byte
    }
}

/// One layer's experts for a micro-batch: (expert, slot) of the hits and of the demand loads
/// (already entered in the cache), and the experts that run on the CPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub hits: Vec<(usize, usize)>,
    pub loads: Vec<(usize, usize)>,
    pub cpu: Vec<usize>,
}

pub struct Decider {
    pub cache: ExpertCache,
    /// Per layer, the experts most recently computed on the CPU (at most GHOSTS · k): a second
    /// CPU miss of one of them admits it into the cache (load-behind).
    ghosts: Vec<VecDeque<usize>>,
    k: usize,
    moe_policy: MoePolicy,
    load_behind: bool,
    /// One expert's bytes (gate + up + down) at each layer.
    expert_bytes: Vec<u64>,
    /// Slots the current layer's experts occupy (protected from eviction while it runs).
    pub used_slots: Vec<usize>,
}

impl Decider {
    pub fn new(
        cache: ExpertCache,
        k: usize,
        moe_policy: MoePolicy,
        load_behind: bool,
        expert_bytes: Vec<u64>,
    ) -> Decider {
        let n_layers = expert_bytes.len();
        Decider {
            cache,
            ghosts: vec![VecDeque::new(); n_layers],
            k,
            moe_policy,
            load_behind,
            expert_bytes,
            used_slots: Vec::new(),
        }
    }

    /// Layer `l`'s experts for these router ids ([n, k], any order): hits are touched, demand
    /// loads get slots (entered now: the caller copies before the layer reads them), the rest
    /// runs on the CPU.
    pub fn resolve(&mut self, l: usize, ids: &[i32], costs: Costs) -> Decision {
        let mut needed: Vec<usize> = Vec::with_capacity(ids.len());
        for &e in ids {
            assert!(e >= 0, "router id {e}");
            if !needed.contains(&(e as usize)) {
                needed.push(e as usize);
            }
        }
        self.used_slots.clear();
        let mut d = Decision::default();
        let mut misses = Vec::new();
        for &e in &needed {
            match self.cache.lookup(l, e) {
                Some(slot) => {
                    self.used_slots.push(slot);
                    d.hits.push((e, slot));
                }
                None => misses.push(e),
            }
        }
        let (gpu, cpu) = self.split(l, d.hits.len(), &misses, costs);
        for e in gpu {
            let slot = self
                .cache
                .victim(l, &self.used_slots)
                .expect("split() keeps loads within capacity");
            self.cache.insert(slot, l, e);
            self.used_slots.push(slot);
            d.loads.push((e, slot));
        }
        d.cpu = cpu;
        d
    }

    /// Which misses load into VRAM and which run on the CPU. Loads never exceed the slots the
    /// layer may use beside its hits; what does not fit runs on the CPU whatever the policy.
    ///
    /// Under `auto` each miss goes where the layer ends first (the hybrid step): the GPU side
    /// is its demand copies, then its kernel over the hits and loads; the CPU side runs its
    /// experts meanwhile. On a serial machine the layer is the sum of both, so a miss goes to
    /// the cheaper side.
    fn split(
        &self,
        l: usize,
        hits: usize,
        misses: &[usize],
        costs: Costs,
    ) -> (Vec<usize>, Vec<usize>) {
        let room = self.cache.capacity(l).saturating_sub(self.used_slots.len());
        let (mut gpu, mut cpu) = (Vec::new(), Vec::new());
        let bytes = self.expert_bytes[l] as f64;
        let (copy, on_gpu, on_cpu) = (
            bytes / costs.link_bytes_per_s,
            bytes * costs.gpu_s_per_byte,
            bytes * costs.cpu_s_per_byte,
        );
        let mut t_link = 0.0f64; // the demand copies so far
        let mut t_gpu = hits as f64 * on_gpu; // the kernel over hits and loads
        let mut t_cpu = 0.0f64;
        for &e in misses {
            let to_gpu = gpu.len() < room
                && match self.moe_policy {
                    MoePolicy::Gpu => true,
                    MoePolicy::Cpu => false,
                    MoePolicy::Auto if costs.serial => costs.copy_beats_cpu(),
                    MoePolicy::Auto => {
                        let ends_gpu = (t_link + copy + t_gpu + on_gpu).max(t_cpu);
                        let ends_cpu = (t_link + t_gpu).max(t_cpu + on_cpu);
                        ends_gpu <= ends_cpu
                    }
                };
            if to_gpu {
                (t_link, t_gpu) = (t_link + copy, t_gpu + on_gpu);
                gpu.push(e);
            } else {
                t_cpu += on_cpu;
                cpu.push(e);
            }
        }
        (gpu, cpu)
    }

    /// Admission on a second miss: of the experts that just ran on the CPU, those that ran
    /// there recently too are entered into slots (the caller copies them behind the compute),
    /// so their next reuse hits. One-off misses cost no link traffic.
    pub fn behind(&mut self, l: usize, cpu: &[usize]) -> Vec<(usize, usize)> {
        if cpu.is_empty() || !self.load_behind || self.moe_policy == MoePolicy::Cpu {
            return Vec::new();
        }
        let ghosts = &mut self.ghosts[l];
        let again: Vec<usize> = cpu.iter().copied().filter(|e| ghosts.contains(e)).collect();
        for &e in cpu {
            ghosts.retain(|&g| g != e);
            ghosts.push_back(e);
        }
        while ghosts.len() > GHOSTS * self.k {
            ghosts.pop_front();
        }
        let used = self.used_slots.clone();
        self.place(l, &again, used)
    }

    /// Whether prefetching pays: a prefetch is an early demand load, so under the
    /// auto miss policy it is worth the link only where a copy beats computing the expert on
    /// the CPU (on the 4060 laptop the CPU reads an expert ~3x faster than the link copies it:
    /// prefetches would only queue in front of the loads that matter).
    pub fn prefetch_pays(&self, costs: Costs) -> bool {
        self.moe_policy != MoePolicy::Auto || costs.copy_beats_cpu()
    }

    /// Prefetch: layer `l`'s predicted experts (those not cached) get slots, as many as the
    /// layer can hold without evicting its own predicted experts; none where it does not pay.
    pub fn ahead(&mut self, l: usize, want: &[usize], costs: Costs) -> Vec<(usize, usize)> {
        if !self.prefetch_pays(costs) {
            return Vec::new();
        }
        let protected: Vec<usize> = want.iter().filter_map(|&e| self.cache.peek(l, e)).collect();
        self.place(l, want, protected)
    }

    /// Enter layer `l`'s `experts` (those not cached) into slots other than `protected`, as
    /// many as the layer may hold.
    fn place(
        &mut self,
        l: usize,
        experts: &[usize],
        mut protected: Vec<usize>,
    ) -> Vec<(usize, usize)> {
        let mut placed = Vec::new();
        for &e in experts {
            if self.cache.peek(l, e).is_some() || protected.len() >= self.cache.capacity(l) {
                continue;
            }
            let Some(slot) = self.cache.victim(l, &protected) else { break };
            self.cache.insert(slot, l, e);
            protected.push(slot);
            placed.push((e, slot));
        }
        placed
    }
}
