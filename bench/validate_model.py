#!/usr/bin/env python3
"""Validate the projection's time model (src/rotary/target.rs) against the simulator.

The model is given the simulator's own speeds, measured here, and must predict the simulator's
measured decode tok/s within 15% over a sweep of 4 budgets:

1. GPU speed: the simulator's "GPU" kernels are this CPU's kernels. One resident run (every
   expert in the budget, nothing to decide) measures its decode tok/s; the replay of the same
   run at gpu=1 GB/s gives the seconds per token at 1 GB/s; their ratio is the GB/s.
2. The link: what the simulator's link thread really moves, measured (its `link_gbps`) in a
   run at the lowest residency with every miss copied (--moe-policy gpu). Its throttle
   (--sim-link-gbps, 12 GB/s) is only a ceiling: the thread's memcpy shares the VM's two cores
   with the kernels and reached about 3.5 GB/s here.
3. The per-layer round trip of a streamed layer (ids down, tables up): one run one slot short
   of every expert (streaming, almost no misses) against the resident one.
4. CPU experts: this CPU's expert speed, measured by one run with every miss on the CPU
   (--moe-policy cpu at the smallest budget of the sweep).
   Each calibration solves the replay's projection (linear in the unknown's inverse) for the
   measured time. The simulator does everything on one set of cores (`serial`): its kernels,
   its CPU experts and its link thread's memcpy.
4. Per budget: the simulator runs with --target custom:... so that its miss policy decides with
   exactly these speeds (the replay's decisions are then the same); the replay at the same slot
   count projects its tok/s.

Usage: bench/validate_model.py [--rotary target/release/rotary] [-n 128] [--json OUT]
Synthesizes small and qwen35-small q4_k_m into ~/.cache/rotary once (about 1 GB each).
"""
import argparse
import json
import os
import re
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--rotary", default="target/release/rotary")
ap.add_argument("-n", type=int, default=128)
ap.add_argument("--link", type=float, default=12.0)
ap.add_argument("--residency", default="15%,25%,40%,60%")
ap.add_argument("--json")
ap.add_argument("--repeat", type=int, default=3, help="simulator runs per point (median)")
ap.add_argument("--models", default="small,qwen35-small")
a = ap.parse_args()

cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "rotary")


def run(args):
    p = subprocess.run([a.rotary] + args, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"rotary {' '.join(args)} failed:\n{p.stderr}")
    return p


def paper(args):
    return json.loads(run(["bench", "--paper", "--json", "-n", str(a.n)] + args).stdout)


def median_sim(args, key="decode_tok_s"):
    """The simulator's decode tok/s (or another figure of its JSON): the median of --repeat runs
    (the machine is noisy), with the last run's stdout and stderr."""
    tps, p = [], None
    for _ in range(a.repeat):
        p = run(["bench", "--paper", "--json", "-n", str(a.n)] + args)
        v = json.loads(p.stdout)
        rows = v["sweep"] if "sweep" in v else [v]
        tps.append([r[key] for r in rows])
    med = [sorted(col)[len(col) // 2] for col in zip(*tps)]
    return med, p


out = []
for m in a.models.split(","):
    f = os.path.join(cache, f"{m}-q4_k_m-seed0.gguf")
    if not os.path.exists(f):
        run(["synth", "--preset", m, "--quant", "q4_k_m", "-o", f])
    sim = ["-m", f, "--backend", "sim", "--sim-link-gbps", str(a.link)]
    resident = median_sim(sim + ["--vram-budget", "64GiB"])[0][0]
    low = a.residency.split(",")[0]
    link = median_sim(sim + ["--moe-policy", "gpu", "--sweep", f"vram={low}", "--plot", os.devnull],
                      key="link_gbps")[0][0]
    unit = f"custom:gpu=1,link={link:.4f},cpu=1,serial"
    p1 = paper(["--preset", m, "--vram-budget", "64GiB", "--target", unit])["projection"]
    gbps = resident / p1["decode_tok_s"]

    def solve(t_meas, t_of, x1, x2):
        """x with t_of(x) = t_meas, t_of linear in x (two evaluations)."""
        t1, t2 = t_of(x1), t_of(x2)
        return x1 + (t_meas - t1) * (x2 - x1) / (t2 - t1)

    def t_replay(target, slots, extra=()):
        r = paper(["--preset", m, "--vram-budget", "64GiB", "--cache-slots", str(slots),
                   "--target", target] + list(extra))
        return 1 / r["projection"]["decode_tok_s"]

    # The round trip: one slot short of every expert.
    probe = run(["bench", "--paper", "--json", "-n", str(a.n)] + sim + ["--vram-budget", "64GiB"])
    total = int(re.findall(r"expert slots of (\d+)", probe.stderr)[0])
    guess = f"custom:gpu={gbps:.4f},link={link:.4f},cpu={gbps:.4f},serial"
    short = median_sim(sim + ["--vram-budget", "64GiB", "--cache-slots", str(total - 1),
                              "--target", guess])[0][0]
    sync_us = solve(1 / short,
                    lambda us: t_replay(f"{guess},sync_us={us}", total - 1), 0.0, 100.0)
    sync_us = max(sync_us, 0.0)
    # The CPU experts: every miss on the CPU at the lowest residency.
    # (no prefetch: then nothing crosses the link).
    med, cpu_run = median_sim(sim + ["--moe-policy", "cpu", "--no-prefetch", "--sweep",
                                     f"vram={low}", "--plot", os.devnull])
    t_meas = 1 / med[0]
    low_slots = re.findall(r"\| (\d+) expert slots", cpu_run.stderr)[0]
    per_gb = solve(t_meas, lambda inv: t_replay(
        f"custom:gpu={gbps:.4f},link={link:.4f},cpu={1 / inv},sync_us={sync_us:.2f},serial",
        low_slots, ["--moe-policy", "cpu", "--no-prefetch"]), 1.0, 0.5)
    cpu_gbps = 1 / per_gb
    target = f"custom:gpu={gbps:.4f},link={link:.4f},cpu={cpu_gbps:.4f},sync_us={sync_us:.2f},serial"
    print(f"{m}: resident {resident:.2f} tok/s on the simulator -> its kernels read {gbps:.2f} GB/s; "
          f"its link moves {link:.2f} GB/s (throttle {a.link}); "
          f"streamed layer round trip {sync_us:.0f} us; every miss on the CPU at {low}: "
          f"{1 / t_meas:.2f} tok/s -> CPU experts {cpu_gbps:.2f} GB/s")
    med, p = median_sim(sim + ["--target", target, "--sweep", "vram=" + a.residency,
                               "--plot", os.devnull])
    rows = json.loads(p.stdout)["sweep"]
    for row, tps in zip(rows, med):
        row["decode_tok_s"] = tps
    slots = [int(s) for s in re.findall(r"\| (\d+) expert slots", p.stderr)]
    assert len(slots) == len(rows), p.stderr
    for row, n_slots in zip(rows, slots):
        rep = paper(["--preset", m, "--vram-budget", "64GiB", "--cache-slots", str(n_slots),
                     "--target", target])
        got, want = rep["projection"]["decode_tok_s"], row["decode_tok_s"]
        err = got / want - 1
        r = dict(model=m, residency=row["label"], slots=n_slots, sim_tok_s=want, model_tok_s=got,
                 error=err, sim_hit=row["hit_rate"], replay_hit=rep["hit_rate"],
                 sim_cpu_share=row["cpu_expert_share"], gpu_gbps=gbps, cpu_gbps=cpu_gbps,
                 link_gbps=link,
                 sync_us=sync_us)
        out.append(r)
        print(f"  {row['label']:>5} {n_slots:4d} slots: simulator {want:6.2f} tok/s, model {got:6.2f} "
              f"({100 * err:+.1f}%), hit {100 * row['hit_rate']:.1f}% / {100 * rep['hit_rate']:.1f}%")
worst = max(abs(r["error"]) for r in out)
print(f"worst error {100 * worst:.1f}% ({'within' if worst <= 0.15 else 'OUTSIDE'} 15%)")
if a.json:
    json.dump(out, open(a.json, "w"), indent=1)
sys.exit(0 if worst <= 0.15 else 1)
