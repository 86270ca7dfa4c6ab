//! Expert residency: which routed experts are in device memory, and how the others arrive.
//!
//! Per layer, the router's ids come to the host (with the next layer's predicted ids, when
//! prefetching). Each needed expert is a cache hit, a demand load (copied into a slot on the
//! copy stream; the compute stream waits on one event per layer), or (CPU fallback) computed
//! on the host from host memory, its output row uploaded: activations cross the link instead
//! of weights. The MoE kernel reads the experts through the layer's pointer table. When every
//! expert fits they are placed at start and no id ever comes to the host.
//!
//! The host side of the copies lives here too: every expert packed once into pinned memory,
//! or a ring of pinned staging buffers that loader threads fill from the file mapping.

use std::collections::VecDeque;
use std::time::Instant;

use super::cache::{layer_range, Allocation, ExpertCache};
use super::decide::{Costs, Decider};
use super::device::{download, upload, Addr, Device, Event, Stream};
use super::options::{MoePolicy, Options, PinMode, Stats};
use super::plan::Plan;
use super::upload::{expert_bytes, DLayer, Scratch};
use crate::backend::cpu::CpuBackend;
use crate::backend::Mat;
use crate::error::{Error, Result};
use crate::model::weights::Weights;
use crate::model::ModelConfig;
use crate::ops::host::{expert_rows, experts_rows, group_pairs};

/// One layer's experts on the device: their bytes and the address of its pointer table.
#[derive(Copy, Clone)]
struct ExpertShape {
    gate_bytes: usize, // one expert's gate (= up) bytes
    down_bytes: usize,
    table: Addr, // [3, n_experts] u64: gate, up, down addresses
}

pub struct Residency<'w> {
    w: &'w Weights<'w>,
    opts: Options,
    n_experts: usize,
    k: usize,
    dim: usize,
    shape: Vec<ExpertShape>,
    /// Every expert in device memory (placed at start): nothing to resolve per layer.
    pub resident: bool,
    n_slots: usize,
    /// The largest slot (the pinned staging buffers' size).
    slot_bytes: u64,
    slots: Addr,
    /// Each slot's offset from `slots` (slots of several sizes: `Plan::classes`).
    slot_offsets: Vec<u64>,
    /// Each layer's equal share of its class's slots.
    per_layer_ranges: Vec<std::ops::Range<usize>>,
    /// The cache and every choice made on it (shared with the trace replay).
    decide: Decider,
    host: HostExperts,
    /// Host mirror of each layer's pointer table.
    tables: Vec<Vec<u64>>,
    /// The previous layer's prediction of each layer's experts, per token.
    predicted: Vec<Option<Vec<Vec<usize>>>>,
    /// The CPU fallback's kernels (streaming only) and their measured seconds per byte of
    /// expert weights (cost model).
    cpu: Option<CpuBackend>,
    cpu_s_per_byte: f64,
    /// The copy-stream event after the latest demand loads (prefetches queue behind it), and
    /// whether the prefetch stream already waits for it.
    last_demand: Option<Event>,
    prefetch_behind_demand: bool,
    /// The CPU experts `resolve` gave the host, from `resolve` until `load_behind_cpu`.
    pending: Option<CpuExperts>,
    /// Loads behind CPU experts waiting on the host for the link to be idle (packed host
    /// memory): `pump` issues them a piece at a time, behind every demand load.
    background: VecDeque<Background>,
    /// Background pieces on the link: their events and bytes.
    bg_in_flight: VecDeque<(Event, u64)>,
    /// Seconds between successive layers' resolves (moving average): the link time the
    /// background may take before the next layer's demand loads come.
    layer_period_s: f64,
    last_resolve: Option<Instant>,
    pinned_bytes: u64,
    pub stats: Stats,
}

impl<'w> Residency<'w> {
    /// Allocate the expert cache (last: it takes what really fits) and place the experts:
    /// all of them when the plan says they fit, else the host source of the copies.
    /// `progress(bytes)` counts expert bytes placed.
    pub fn new(
        w: &'w Weights<'w>,
        dev: &mut dyn Device,
        plan: &mut Plan,
        layers: &[DLayer],
        opts: Options,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Residency<'w>> {
        let c = &w.cfg;
        // The plan's arithmetic is ideal (256-byte rounding); a device charges in its own
        // pages and loads code lazily. The cache gets what really fits now.
        if let Some(room) = dev.largest_alloc()? {
            if room < plan.expert_cache_bytes() {
                plan.fit_cache(room, plan.n_slots);
                check_slots(plan, c, &opts)?;
            }
        }
        let resident = plan.all_resident();
        // A host device reads resident experts where the mapping has them: no slots.
        let slot_space = if resident && dev.is_host() { 0 } else { plan.expert_cache_bytes() };
        let slots = dev.alloc(slot_space.max(1), "expert cache")?;
        let n_layers = c.n_layers as usize;
        let shape = layers
            .iter()
            .map(|l| ExpertShape {
                gate_bytes: l.gate_bytes,
                down_bytes: l.down_bytes,
                table: l.tables,
            })
            .collect();
        let mut r = Residency {
            w,
            n_experts: c.n_experts as usize,
            k: c.n_experts_used as usize,
            dim: c.dim as usize,
            shape,
            resident,
            n_slots: plan.n_slots,
            slot_bytes: plan.slot_bytes,
            slots,
            slot_offsets: slot_offsets(plan),
            per_layer_ranges: layer_ranges(plan, Allocation::PerLayer),
            decide: Decider::new(
                ExpertCache::with_ranges(plan.n_slots, layer_ranges(plan, opts.alloc), opts.policy),
                c.n_experts_used as usize,
                opts.moe_policy,
                opts.load_behind,
                layers.iter().map(|l| (2 * l.gate_bytes + l.down_bytes) as u64).collect(),
            ),
            host: HostExperts::None,
            tables: vec![vec![0u64; 3 * c.n_experts as usize]; n_layers],
            predicted: vec![None; n_layers],
            cpu: None,
            cpu_s_per_byte: 0.0,
            last_demand: None,
            prefetch_behind_demand: false,
            pending: None,
            background: VecDeque::new(),
            bg_in_flight: VecDeque::new(),
            layer_period_s: 0.0,
            last_resolve: None,
            pinned_bytes: 0,
            stats: Stats {
                n_layers: c.n_layers,
                vram_budget_bytes: dev.budget_bytes(),
                ..Stats::default()
            },
            opts,
        };
        r.stats.per_layer_hits = vec![0; n_layers];
        r.stats.per_layer_misses = vec![0; n_layers];
        let mut done = 0u64;
        r.place_experts(dev, &mut done, progress)?;
        if !resident {
            r.cpu = Some(CpuBackend::new(r.opts.threads)?);
            r.calibrate_cpu()?;
        }
        Ok(r)
    }

    /// Per layer, the hits and misses; in total, what the cache counted.
    pub fn fill_stats(&self, s: &mut Stats) {
        for (l, c) in self.decide.cache.per_layer.iter().enumerate() {
            s.per_layer_hits[l] = c.hits;
            s.per_layer_misses[l] = c.misses;
        }
        let t = self.decide.cache.totals();
        (s.hits, s.misses) = (t.hits, t.misses);
    }

    /// Resident: every lookup of these n tokens' k experts hits (counted, no ids on the host).
    pub fn count_resident(&mut self, l: usize, n: usize) {
        self.decide.cache.per_layer[l].hits += (n * self.k) as u64;
        self.stats.gpu_experts += (n * self.k) as u64;
    }

    /// After the layer's MoE launch: each slot it read holds a reference to that compute event
    /// (a refill of the slot waits for it).
    pub fn layer_done(&mut self, dev: &mut dyn Device) -> Result<()> {
        let ev = dev.record(Stream::Compute)?;
        for &slot in &self.decide.used_slots {
            dev.retain(ev);
            if let Some(old) = self.decide.cache.slots[slot].last_read.replace(ev) {
                dev.release(old);
            }
        }
        dev.release(ev);
        self.pump(dev)
    }

    /// Whether the next layer's experts are predicted and loaded ahead.
    pub fn prefetches(&self) -> bool {
        self.opts.prefetch
    }

    /// Pinned host memory held (packed experts or the staging ring).
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    /// Resident: every expert into its slot now (on a host device, the table points into
    /// the mapping). Streaming: the host source of the copies.
    /// Over a screen: the three host sources (resident, packed pinned, ring) side by side.
    fn place_experts(
        &mut self,
        dev: &mut dyn Device,
        done: &mut u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let w = self.w;
        if self.resident {
            // Every class holds all of its layers' experts: layer l's are E slots of its class.
            let bases: Vec<usize> = self.per_layer_ranges.iter().map(|r| r.start).collect();
            for (l, layer) in w.layers.iter().enumerate() {
                for (e, x) in layer.experts.iter().enumerate() {
                    let slot = bases[l] + e;
                    let (g, d) = (self.shape[l].gate_bytes, self.shape[l].down_bytes);
                    if dev.is_host() {
                        let name =
                            |part: &str| format!("blk.{l}.ffn_{part}_exps.weight expert {e}");
                        // SAFETY: the weights outlive the device (see upload::place).
                        let parts = unsafe {
                            [
                                dev.map(x.gate.data, &name("gate"))?,
                                dev.map(x.up.data, &name("up"))?,
                                dev.map(x.down.data, &name("down"))?,
                            ]
                        };
                        let n = self.n_experts;
                        (self.tables[l][e], self.tables[l][n + e], self.tables[l][2 * n + e]) =
                            (parts[0], parts[1], parts[2]);
                    } else {
                        let at = self.slot_addr(slot);
                        upload(dev, at, x.gate.data)?;
                        upload(dev, at + g as u64, x.up.data)?;
                        upload(dev, at + 2 * g as u64, x.down.data)?;
                        self.set_table(l, e, slot);
                    }
                    self.decide.cache.insert(slot, l, e);
                    *done += (2 * g + d) as u64;
                }
                progress(*done);
                let t = self.tables[l].clone();
                upload(dev, self.shape[l].table, &t)?;
            }
            return Ok(());
        }
        let per_expert = |s: &ExpertShape| (2 * s.gate_bytes + s.down_bytes) as u64;
        let packed: u64 = self.shape.iter().map(|s| per_expert(s) * self.n_experts as u64).sum();
        let pin_all = match self.opts.pin {
            PinMode::All => true,
            PinMode::Ring => false,
            PinMode::Auto => mem_available().is_some_and(|m| packed < m / 2),
        };
        if pin_all {
            let base = dev.alloc_host(packed, "pinned experts")?;
            self.pinned_bytes = packed;
            let mut offsets = Vec::with_capacity(self.shape.len());
            let mut at = 0usize;
            for (l, layer) in w.layers.iter().enumerate() {
                let mut offs = Vec::with_capacity(layer.experts.len());
                for x in &layer.experts {
                    offs.push(at);
                    for part in [x.gate.data, x.up.data, x.down.data] {
                        // SAFETY: base holds `packed` bytes; the parts of all experts sum to it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(at), part.len())
                        };
                        at += part.len();
                    }
                    *done += per_expert(&self.shape[l]);
                }
                progress(*done);
                offsets.push(offs);
            }
            self.host = HostExperts::Packed { base, offsets };
        } else {
            let n = ring_len(self.n_experts).min(2 * self.n_slots.max(1));
            let staging = (0..n)
                .map(|_| dev.alloc_host(self.slot_bytes, "pinned staging"))
                .collect::<Result<Vec<_>>>()?;
            self.pinned_bytes = n as u64 * self.slot_bytes;
            self.host = HostExperts::Ring { staging, last_copy: vec![None; n], next: 0 };
            *done += packed;
            progress(*done);
        }
        Ok(())
    }

    /// Time one expert on the CPU: the cost model's CPU speed.
    fn calibrate_cpu(&mut self) -> Result<()> {
        let cpu = self.cpu.as_ref().expect("streaming sessions have CPU kernels");
        let x = &self.w.layers[0].experts[0];
        let input = vec![0.5f32; self.dim];
        expert_rows(cpu, [&x.gate, &x.up, &x.down], &input, &[0], 1)?; // warm
        let start = Instant::now();
        expert_rows(cpu, [&x.gate, &x.up, &x.down], &input, &[0], 1)?;
        let (g, d) = expert_bytes(x);
        self.cpu_s_per_byte = start.elapsed().as_secs_f64() / (2 * g + d) as f64;
        Ok(())
    }

    fn slot_addr(&self, slot: usize) -> Addr {
        let n = self.decide.cache.len();
        assert!(slot < n, "slot {slot} of {n}");
        self.slots + self.slot_offsets[slot]
    }

    fn set_table(&mut self, l: usize, e: usize, slot: usize) {
        let n = self.n_experts;
        let at = self.slot_addr(slot);
        let g = self.shape[l].gate_bytes as u64;
        self.tables[l][e] = at;
        self.tables[l][n + e] = at + g;
        self.tables[l][2 * n + e] = at + 2 * g;
    }

    /// Make layer `l`'s experts for these ids available: hits, demand loads into slots, and
    /// the CPU experts' ids marked (−1−e) for the MoE kernel to skip. Updates the layer's
    /// pointer table. Returns whether CPU experts wait for `join_cpu` (the hybrid step: the
    /// caller launches the MoE expert stages first, so the GPU runs the hits and loads while
    /// the host computes them, then the combine).
    /// Over a screen: hits, loads and CPU experts must be ordered against each other here.
    pub fn resolve(
        &mut self,
        dev: &mut dyn Device,
        l: usize,
        n: usize,
        ids: &[i32],
        s: &Scratch,
    ) -> Result<bool> {
        let dim = self.dim;
        let now = Instant::now();
        if let Some(t) = self.last_resolve.replace(now) {
            let dt = (now - t).as_secs_f64();
            self.layer_period_s =
                if self.layer_period_s == 0.0 { dt } else { 0.9 * self.layer_period_s + 0.1 * dt };
        }
        self.score_prediction(l, n, ids);
        let n_experts = self.n_experts as u64;
        assert!(ids.iter().all(|&e| e >= 0 && (e as u64) < n_experts), "router ids {ids:?}");
        let costs = self.costs(dev);
        let d = self.decide.resolve(l, ids, costs);
        for &(e, slot) in &d.hits {
            self.set_table(l, e, slot);
        }
        // The CPU experts start from h as it is now: it comes down before the compute stream
        // queues any wait for a copy, so they run while the copies do (max, not sum).
        let mut h = Vec::new(); // [n, dim] when some expert runs on the CPU
        if !d.cpu.is_empty() {
            h.resize(n * dim, 0f32);
            download(dev, s.h, &mut h)?;
        }
        let mut jobs = Vec::with_capacity(d.loads.len());
        for &(e, slot) in &d.loads {
            self.before_refill(dev, Stream::Copy, slot)?;
            jobs.push((l, e, slot));
            self.set_table(l, e, slot);
        }
        if !jobs.is_empty() {
            self.copy_experts(dev, Stream::Copy, &jobs)?;
            let ev = dev.record(Stream::Copy)?;
            dev.wait(Stream::Compute, ev)?;
            // Prefetches queued from now on start after these demand loads (load_async).
            if let Some(old) = self.last_demand.replace(ev) {
                dev.release(old);
            }
            self.prefetch_behind_demand = false;
        }
        // The hits whose copy may still be landing (a prefetch, a load behind): the compute
        // waits for it. A load behind not yet issued goes now, behind this layer's demand loads.
        for &(_, slot) in &d.hits {
            self.issue_slot(dev, slot)?;
            if let Some(ev) = self.decide.cache.slots[slot].ready.take() {
                dev.wait(Stream::Compute, ev)?;
                dev.release(ev);
            }
        }
        self.pump(dev)?; // background pieces queue behind this layer's demand loads
        let table = std::mem::take(&mut self.tables[l]);
        upload(dev, self.shape[l].table, &table)?;
        self.tables[l] = table;
        let needed = d.hits.len() + d.loads.len() + d.cpu.len();
        self.stats.cpu_experts += d.cpu.len() as u64;
        self.stats.gpu_experts += (needed - d.cpu.len()) as u64;
        if d.cpu.is_empty() {
            return Ok(false);
        }
        let marked: Vec<i32> = ids // [n, k]
            .iter()
            .map(|&e| if d.cpu.contains(&(e as usize)) { -1 - e } else { e })
            .collect();
        upload(dev, s.ids, &marked)?;
        self.pending = Some(CpuExperts { l, ids: marked, cpu: d.cpu, h });
        Ok(true)
    }

    /// The host's half of the hybrid step, while the GPU runs the layer's MoE expert stages:
    /// the CPU experts `resolve` marked, each once over its pairs of h [n, dim] as the MoE
    /// kernel would (same rows, same bits), their output rows up into `out` (activations
    /// cross the link instead of weights). The caller launches the combine next, then
    /// `load_behind_cpu`.
    pub fn join_cpu(&mut self, dev: &mut dyn Device, s: &Scratch) -> Result<()> {
        let CpuExperts { l, ids, h, .. } = self.pending.as_ref().expect("resolve left CPU experts");
        let (l, dim, k) = (*l, self.dim, self.k);
        let cpu_kernels = self.cpu.as_ref().expect("streaming sessions have CPU kernels");
        let on_cpu: Vec<i32> = ids.iter().map(|&e| if e < 0 { -1 - e } else { -1 }).collect();
        let groups = group_pairs(&on_cpu, self.n_experts)?;
        // Every CPU expert of the layer in one `experts_rows` (two pool jobs for the layer, not
        // two per expert: each job's start and tail cost a few microseconds).
        let mats: Vec<(usize, [Mat; 3])> = (groups.iter().enumerate())
            .filter(|(_, pairs)| !pairs.is_empty())
            .map(|(e, _)| (e, self.cpu_mats(l, e)))
            .collect();
        let experts: Vec<([&Mat; 3], &[usize])> =
            (mats.iter()).map(|(e, [g, u, d])| ([g, u, d], groups[*e].as_slice())).collect();
        let ys = experts_rows(cpu_kernels, &experts, h, k)?; // per expert: [pairs, dim]
                                                             // The rows by pair, then up in runs of consecutive pairs (one copy per run).
        let mut rows: Vec<(usize, &[f32])> = Vec::with_capacity(on_cpu.len());
        for ((_, pairs), y) in experts.iter().zip(&ys) {
            rows.extend(pairs.iter().enumerate().map(|(i, &p)| (p, &y[i * dim..(i + 1) * dim])));
        }
        rows.sort_unstable_by_key(|&(p, _)| p);
        let mut run: Vec<f32> = Vec::with_capacity(rows.len() * dim);
        for (i, &(pair, row)) in rows.iter().enumerate() {
            run.extend_from_slice(row);
            let run_ends = rows.get(i + 1).is_none_or(|&(next, _)| next != pair + 1);
            if run_ends {
                let first = pair + 1 - run.len() / dim;
                upload(dev, s.out + (first * dim * 4) as u64, &run)?;
                run.clear();
            }
        }
        Ok(())
    }

    /// Expert e of layer l for the CPU: views of the packed pinned copy when every expert is
    /// pinned (memory this process holds anyway; the file's pages of the experts then need not
    /// stay cached beside it, which on a machine with little RAM to spare would evict and
    /// re-read them), else the file mapping's. The same bytes either way.
    fn cpu_mats(&self, l: usize, e: usize) -> [Mat<'_>; 3] {
        let x = &self.w.layers[l].experts[e];
        let HostExperts::Packed { base, offsets } = &self.host else {
            return [x.gate, x.up, x.down];
        };
        let mut at = offsets[l][e];
        [x.gate, x.up, x.down].map(|m| {
            // SAFETY: the packed copy holds this expert's gate|up|down from offsets[l][e],
            // written once when packed and never again; it lives as long as the device, which
            // outlives this residency (as for the copies from it).
            let data = unsafe { std::slice::from_raw_parts(base.add(at), m.data.len()) };
            at += m.data.len();
            Mat { data, ..m }
        })
    }

    /// After the combine is launched: the loads behind the CPU experts `join_cpu` ran (from the
    /// ring they fill staging buffers first, which must not hold back the combine).
    pub fn load_behind_cpu(&mut self, dev: &mut dyn Device) -> Result<()> {
        let CpuExperts { l, cpu, .. } = self.pending.take().expect("join_cpu ran");
        let behind = self.decide.behind(l, &cpu);
        self.stats.behind_loads += self.load_behind(dev, l, &behind)? as u64;
        Ok(())
    }

    /// Loads behind CPU experts use the link only when it would otherwise be idle: from packed
    /// host memory they wait on the host (`background`) and `pump` issues them; from the ring
    /// they are queued at once behind the demand loads, as prefetches are.
    fn load_behind(
        &mut self,
        dev: &mut dyn Device,
        l: usize,
        placed: &[(usize, usize)],
    ) -> Result<usize> {
        let HostExperts::Packed { base, offsets } = &self.host else {
            return self.load_async(dev, l, placed);
        };
        // SAFETY: offsets[l][e] lies inside the packed buffer, which lives as long as the
        // device and is never written after load.
        let srcs: Vec<*const u8> =
            placed.iter().map(|&(e, _)| unsafe { base.add(offsets[l][e]) }.cast_const()).collect();
        let bytes = 2 * self.shape[l].gate_bytes + self.shape[l].down_bytes;
        for (&(e, slot), src) in placed.iter().zip(srcs) {
            self.before_refill(dev, Stream::Prefetch, slot)?;
            self.set_table(l, e, slot);
            let dst = self.slot_addr(slot);
            self.background.push_back(Background { slot, src, dst, bytes, done: 0 });
        }
        self.pump(dev)?;
        Ok(placed.len())
    }

    /// Issue background pieces while the link has room for them: those on the link are
    /// retired as they complete, and at most the link's share of one layer's time (or one
    /// piece) is on it at once, so the next layer's demand loads find it nearly idle.
    fn pump(&mut self, dev: &mut dyn Device) -> Result<()> {
        while let Some(&(ev, _)) = self.bg_in_flight.front() {
            if !dev.query(ev)? {
                break;
            }
            dev.release(ev);
            self.bg_in_flight.pop_front();
        }
        let link = self.costs(dev).link_bytes_per_s;
        let room = link * self.layer_period_s * BACKGROUND_SHARE;
        while !self.background.is_empty()
            && (self.bg_in_flight.is_empty()
                || (self.bg_in_flight.len() < MAX_BACKGROUND_PIECES
                    && (self.bg_in_flight.iter().map(|&(_, b)| b).sum::<u64>() as f64) < room))
        {
            self.issue_piece(dev, 0)?;
        }
        Ok(())
    }

    /// The next piece of background load `i` (0: the oldest), on the prefetch stream behind
    /// every demand load; the load's last piece makes its slot's `ready` event.
    fn issue_piece(&mut self, dev: &mut dyn Device, i: usize) -> Result<()> {
        let job = &mut self.background[i];
        let n = PREFETCH_CHUNK.min(job.bytes - job.done);
        let (dst, src, slot) = (job.dst + job.done as u64, job.src, job.slot);
        // SAFETY: src + done .. + n lies in the packed pinned buffer (see load_behind), which
        // never changes after load; dst is the slot, of slot_bytes >= bytes.
        let src = unsafe { src.add(job.done) };
        job.done += n;
        let last = job.done == job.bytes;
        self.prefetch_after_demand(dev)?;
        // SAFETY: as above.
        unsafe { dev.h2d(Stream::Prefetch, dst, src, n)? };
        let ev = dev.record(Stream::Prefetch)?;
        self.bg_in_flight.push_back((ev, n as u64));
        if last {
            self.background.remove(i);
            dev.retain(ev);
            if let Some(old) = self.decide.cache.slots[slot].ready.replace(ev) {
                dev.release(old);
            }
        }
        Ok(())
    }

    /// The prefetch stream waits for the latest demand loads (once per batch of them).
    fn prefetch_after_demand(&mut self, dev: &mut dyn Device) -> Result<()> {
        if let (Some(ev), false) = (self.last_demand, self.prefetch_behind_demand) {
            dev.wait(Stream::Prefetch, ev)?;
            self.prefetch_behind_demand = true;
        }
        Ok(())
    }

    /// A slot about to be read whose background load has not all been issued: issue the rest
    /// of that load now (its `ready` event follows), link room or not.
    fn issue_slot(&mut self, dev: &mut dyn Device, slot: usize) -> Result<()> {
        while let Some(i) = self.background.iter().position(|b| b.slot == slot) {
            self.issue_piece(dev, i)?;
        }
        Ok(())
    }

    /// A slot about to be refilled whose background load has not all been issued: the rest is
    /// dropped; pieces already issued may still land, so the slot's `ready` becomes the newest
    /// background piece (the prefetch stream runs them in order) and the refill waits for it.
    fn cancel_slot(&mut self, dev: &mut dyn Device, slot: usize) {
        let Some(i) = self.background.iter().position(|b| b.slot == slot) else { return };
        let job = self.background.remove(i).expect("a queued load");
        if job.done == 0 {
            return;
        }
        if let Some(&(ev, _)) = self.bg_in_flight.back() {
            dev.retain(ev);
            if let Some(old) = self.decide.cache.slots[slot].ready.replace(ev) {
                dev.release(old);
            }
        }
    }

    /// Count how many of the previous layer's predicted experts the router chose.
    fn score_prediction(&mut self, l: usize, n: usize, ids: &[i32]) {
        let k = self.k;
        if let Some(pred) = self.predicted[l].take() {
            for (t, p) in pred.iter().enumerate().take(n) {
                let truth = &ids[t * k..(t + 1) * k];
                self.stats.prefetch_correct +=
                    p.iter().filter(|&&e| truth.contains(&(e as i32))).count() as u64;
                self.stats.prefetch_predicted += k as u64;
            }
        }
    }

    /// What the miss policy weighs: a target's speeds when one is given (the decisions that
    /// machine would make), else this machine's, measured.
    fn costs(&self, dev: &dyn Device) -> Costs {
        self.opts.costs.unwrap_or_else(|| Costs {
            link_bytes_per_s: self.link_bytes_per_s(dev),
            cpu_s_per_byte: self.cpu_s_per_byte,
            gpu_s_per_byte: 0.0,
            serial: false,
        })
    }

    /// The link's measured speed (bytes/s), or the configured estimate before any copy.
    fn link_bytes_per_s(&self, dev: &dyn Device) -> f64 {
        let s = dev.link_stats();
        if s.busy_seconds > 0.01 {
            s.h2d_bytes as f64 / s.busy_seconds
        } else {
            dev.link_peak_gbps().unwrap_or(self.opts.link_gbps) * 1e9
        }
    }

    /// Queue the copies of experts (l, e) into their slots on `stream`: from packed pinned
    /// memory one copy each; in ring mode loader threads first fill staging buffers from the
    /// file mapping in parallel (page faults happen there, on the host, while the device works
    /// through what is already queued).
    fn copy_experts(
        &mut self,
        dev: &mut dyn Device,
        stream: Stream,
        jobs: &[(usize, usize, usize)],
    ) -> Result<()> {
        let w = self.w;
        let sizes: Vec<(Addr, usize)> = jobs
            .iter()
            .map(|&(l, _, slot)| {
                (self.slot_addr(slot), 2 * self.shape[l].gate_bytes + self.shape[l].down_bytes)
            })
            .collect();
        match &mut self.host {
            HostExperts::Packed { base, offsets } => {
                for (&(l, e, _), &(dst, bytes)) in jobs.iter().zip(&sizes) {
                    // SAFETY: the packed buffer lives as long as the device and is never
                    // written after load; offsets[l][e] + bytes lies inside it.
                    let src = unsafe { base.add(offsets[l][e]) };
                    // SAFETY: dst is a slot of slot_bytes >= bytes; src stays valid (above).
                    unsafe { h2d_chunked(dev, stream, dst, src, bytes)? };
                }
                Ok(())
            }
            HostExperts::Ring { staging, last_copy, next } => {
                // Take a staging buffer per job (waiting for the copy that last read it).
                let mut bufs = Vec::with_capacity(jobs.len());
                for _ in jobs {
                    let i = *next;
                    *next = (i + 1) % staging.len();
                    if let Some(ev) = last_copy[i].take() {
                        dev.sync_event(ev)?;
                        dev.release(ev);
                    }
                    bufs.push(i);
                }
                assert!(
                    jobs.len() <= staging.len(),
                    "{} loads for {} staging buffers",
                    jobs.len(),
                    staging.len()
                );
                let fills: Vec<Fill> = jobs
                    .iter()
                    .zip(&bufs)
                    .map(|(&(l, e, _), &i)| {
                        let x = &w.layers[l].experts[e];
                        Fill { dst: staging[i], parts: [x.gate.data, x.up.data, x.down.data] }
                    })
                    .collect();
                load_parallel(&fills);
                for (&i, &(dst, bytes)) in bufs.iter().zip(&sizes) {
                    // SAFETY: the buffer stays unchanged until the event recorded right after
                    // this copy completes (its next use waits for it).
                    unsafe { h2d_chunked(dev, stream, dst, staging[i], bytes)? };
                    last_copy[i] = Some(dev.record(stream)?);
                }
                Ok(())
            }
            HostExperts::None => unreachable!("resident sessions never load experts"),
        }
    }

    /// Order a refill of `slot` on `stream` after everything that touches the slot: the
    /// compute that last read it, and a prefetch still filling it (two copies into one slot on
    /// two streams would land in either order).
    fn before_refill(&mut self, dev: &mut dyn Device, stream: Stream, slot: usize) -> Result<()> {
        self.cancel_slot(dev, slot);
        if let Some(ev) = self.decide.cache.slots[slot].last_read {
            dev.wait(stream, ev)?;
        }
        if let Some(ev) = self.decide.cache.slots[slot].ready.take() {
            dev.wait(stream, ev)?;
            dev.release(ev);
        }
        Ok(())
    }

    /// Speculatively load layer `l`'s predicted experts on the prefetch stream, behind every
    /// demand load; remember the prediction to measure its recall.
    pub fn prefetch(
        &mut self,
        dev: &mut dyn Device,
        l: usize,
        n: usize,
        pred: &[i32],
    ) -> Result<()> {
        let k = self.k;
        let per_token: Vec<Vec<usize>> = (0..n)
            .map(|t| pred[t * k..(t + 1) * k].iter().map(|&e| e as usize).collect())
            .collect();
        let mut want: Vec<usize> = Vec::new();
        for e in per_token.iter().flatten() {
            if !want.contains(e) {
                want.push(*e);
            }
        }
        self.predicted[l] = Some(per_token);
        let costs = self.costs(dev);
        let placed = self.decide.ahead(l, &want, costs);
        self.stats.prefetch_loads += self.load_async(dev, l, &placed)? as u64;
        Ok(())
    }

    /// Copy layer `l`'s experts into the slots the decider gave them, on the prefetch stream
    /// (behind every demand load); each slot's `ready` event orders its first reader after the
    /// copy. Returns how many were queued.
    fn load_async(
        &mut self,
        dev: &mut dyn Device,
        l: usize,
        placed: &[(usize, usize)],
    ) -> Result<usize> {
        if placed.is_empty() {
            return Ok(0);
        }
        for &(e, slot) in placed {
            self.before_refill(dev, Stream::Prefetch, slot)?;
            self.set_table(l, e, slot);
        }
        let jobs: Vec<(usize, usize, usize)> =
            placed.iter().map(|&(e, slot)| (l, e, slot)).collect();
        // Never ahead of a demand load on the link: the two copy streams are peers on a GPU
        // (the simulator serves demand first); this makes the GPU behave the same.
        self.prefetch_after_demand(dev)?;
        self.copy_experts(dev, Stream::Prefetch, &jobs)?;
        let ev = dev.record(Stream::Prefetch)?;
        for &(_, slot) in placed {
            dev.retain(ev);
            self.decide.cache.slots[slot].ready = Some(ev);
        }
        dev.release(ev);
        Ok(placed.len())
    }
}

/// Speculative copies go in pieces of at most this many bytes: a demand copy queued on the
/// other stream waits for one piece on the shared link, not for a whole batch of experts.
pub const PREFETCH_CHUNK: usize = 512 << 10;

/// `dev.h2d`, in PREFETCH_CHUNK pieces on the prefetch stream.
///
/// # Safety
/// As `Device::h2d`.
unsafe fn h2d_chunked(
    dev: &mut dyn Device,
    stream: Stream,
    dst: Addr,
    src: *const u8,
    bytes: usize,
) -> Result<()> {
    let piece = if stream == Stream::Prefetch { PREFETCH_CHUNK } else { bytes.max(1) };
    let mut at = 0;
    while at < bytes {
        let n = piece.min(bytes - at);
        // SAFETY: the caller's contract covers [src, src + bytes) and [dst, dst + bytes).
        unsafe { dev.h2d(stream, dst + at as u64, src.add(at), n)? };
        at += n;
    }
    Ok(())
}

/// Streaming needs the k experts of a token's layer in VRAM at once (unless every miss runs on
/// the CPU).
pub fn check_slots(plan: &Plan, c: &ModelConfig, opts: &Options) -> Result<()> {
    let k = c.n_experts_used as usize;
    let per_layer = layer_ranges(plan, opts.alloc).iter().map(|r| r.len()).min().unwrap_or(0);
    if !plan.all_resident() && opts.moe_policy != MoePolicy::Cpu && per_layer < k {
        return Err(Error::TooFewSlots { slots: plan.n_slots, per_layer, need: k });
    }
    Ok(())
}

/// Each slot's byte offset in the cache: the classes' slots one after another.
fn slot_offsets(plan: &Plan) -> Vec<u64> {
    let mut out = Vec::with_capacity(plan.n_slots);
    for (k, (_, base)) in plan.classes.iter().zip(plan.class_starts()) {
        out.extend((0..k.n_slots as u64).map(|i| base + i * k.slot_bytes));
    }
    out
}

/// The slots each layer may use: its class's, shared or split among the class's layers.
pub(crate) fn layer_ranges(plan: &Plan, alloc: Allocation) -> Vec<std::ops::Range<usize>> {
    let n_layers = plan.classes.iter().map(|k| k.layers.len()).sum();
    let mut ranges = vec![0..0; n_layers];
    for (k, (start, _)) in plan.classes.iter().zip(plan.class_starts()) {
        let class = start..start + k.n_slots;
        for (i, &l) in k.layers.iter().enumerate() {
            ranges[l] = layer_range(alloc, class.clone(), k.layers.len(), i);
        }
    }
    ranges
}

/// Share of the layer period the background loads may hold the link for at once.
const BACKGROUND_SHARE: f64 = 0.5;

/// At most this many background pieces on the link at once (16 MiB): each is an event and a
/// timed span on a GPU, whose pools stay small.
const MAX_BACKGROUND_PIECES: usize = 32;

/// A load behind CPU experts, waiting for the link (`Residency::pump`).
struct Background {
    slot: usize,
    /// The expert's packed bytes in pinned memory, and its slot.
    src: *const u8,
    dst: Addr,
    bytes: usize,
    /// Bytes already issued.
    done: usize,
}

/// One layer's CPU experts between `resolve` and `join_cpu`.
struct CpuExperts {
    l: usize,
    /// The layer's ids [n, k], the CPU experts' marked −1−e.
    ids: Vec<i32>,
    /// The CPU experts in the decider's order (load-behind takes them so).
    cpu: Vec<usize>,
    /// The normed hidden state [n, dim], downloaded before the layer's copies were queued.
    h: Vec<f32>,
}

/// Where the copy engine reads experts.
enum HostExperts {
    /// Pinned, packed gate|up|down per expert; offsets[l][e].
    Packed { base: *mut u8, offsets: Vec<Vec<usize>> },
    /// Pinned staging buffers filled from the mapping; the copy that last read each.
    Ring { staging: Vec<*mut u8>, last_copy: Vec<Option<Event>>, next: usize },
    /// Every expert is resident: no host source needed after load.
    None,
}

/// Staging buffers of the ring: a full micro-batch's loads for one layer (at most one per
/// slot a layer may use, at most every expert) and the next layer's prefetches.
fn ring_len(n_experts: usize) -> usize {
    2 * n_experts
}

/// Loader threads per batch of staging fills.
const LOADERS: usize = 4;

/// One staging fill: the expert's three parts, back to back, into `dst`.
struct Fill<'a> {
    dst: *mut u8,
    parts: [&'a [u8]; 3],
}

// SAFETY: each Fill writes a distinct staging buffer that no copy reads until it is queued
// after load_parallel returns; the parts are shared read-only views of the file mapping.
unsafe impl Send for Fill<'_> {}
unsafe impl Sync for Fill<'_> {}

/// Fill staging buffers from the mapping, on up to LOADERS threads.
fn load_parallel(fills: &[Fill]) {
    let fill = |f: &Fill| {
        let mut at = 0;
        for part in f.parts {
            // SAFETY: dst holds slot_bytes >= the expert's bytes and is not read by any copy
            // until this returns (see Fill).
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), f.dst.add(at), part.len()) };
            at += part.len();
        }
    };
    if fills.len() <= 1 {
        fills.iter().for_each(fill);
        return;
    }
    let per = fills.len().div_ceil(LOADERS);
    std::thread::scope(|s| {
        for chunk in fills.chunks(per) {
            s.spawn(move || chunk.iter().for_each(fill));
        }
    });
}

/// Available RAM (Linux MemAvailable), if known.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}
