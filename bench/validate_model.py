#!/usr/bin/env python3
"""Validate the projection's time model (src/rotary/target.rs) against the simulator.

The model is given the simulator's own speeds, measured here, and must predict the simulator's
measured decode tok/s within 15% over a sweep of 4 budgets:

1. GPU speed: the simulator's "GPU" kernels are this CPU's kernels. One resident run (every
   expert in the budget, nothing to decide) measures its decode tok/s; the replay of the same
   run at gpu=1 GB/s gives the seconds per token at 1 GB/s; their ratio is the GB/s.
2. The link: the simulator's throttle (--sim-link-gbps, 12 GB/s).
3. CPU experts: this CPU's expert speed, measured by one run with every miss on the CPU
   (--moe-policy cpu at the smallest budget of the sweep): the replay's projection is
   A + B / cpu_gbps seconds per token, solved for the measured time. They run one after the
   other with the GPU kernels (`serial`: the simulator has one set of cores).
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


out = []
for m in a.models.split(","):
    f = os.path.join(cache, f"{m}-q4_k_m-seed0.gguf")
    if not os.path.exists(f):
        run(["synth", "--preset", m, "--quant", "q4_k_m", "-o", f])
    sim = ["-m", f, "--backend", "sim", "--sim-link-gbps", str(a.link)]
    resident = paper(sim + ["--vram-budget", "64GiB"])["decode_tok_s"]
    unit = f"custom:gpu=1,link={a.link},cpu=1,serial"
    p1 = paper(["--preset", m, "--vram-budget", "64GiB", "--target", unit])["projection"]
    gbps = resident / p1["decode_tok_s"]
    low = a.residency.split(",")[0]
    cpu_run = run(["bench", "--paper", "--json", "-n", str(a.n)] + sim +
                  ["--moe-policy", "cpu", "--sweep", f"vram={low}", "--plot", os.devnull])
    t_meas = 1 / json.loads(cpu_run.stdout)["decode_tok_s"]
    low_slots = re.findall(r"\| (\d+) expert slots", cpu_run.stderr)[0]

    def t_at(cpu):
        t = f"custom:gpu={gbps:.4f},link={a.link},cpu={cpu},serial"
        r = paper(["--preset", m, "--vram-budget", "64GiB", "--cache-slots", low_slots,
                   "--moe-policy", "cpu", "--target", t])
        return 1 / r["projection"]["decode_tok_s"]

    t1, t2 = t_at(1.0), t_at(2.0)
    b_ = 2 * (t1 - t2)
    cpu_gbps = b_ / (t_meas - (t1 - b_))
    target = f"custom:gpu={gbps:.4f},link={a.link},cpu={cpu_gbps:.4f},serial"
    print(f"{m}: resident {resident:.2f} tok/s on the simulator -> its kernels read {gbps:.2f} GB/s; "
          f"every miss on the CPU at {low}: {1 / t_meas:.2f} tok/s -> CPU experts {cpu_gbps:.2f} GB/s")
    p = run(["bench", "--paper", "--json", "-n", str(a.n)] + sim +
            ["--target", target, "--sweep", "vram=" + a.residency, "--plot", os.devnull])
    rows = json.loads(p.stdout)["sweep"]
    slots = [int(s) for s in re.findall(r"\| (\d+) expert slots", p.stderr)]
    assert len(slots) == len(rows), p.stderr
    for row, n_slots in zip(rows, slots):
        rep = paper(["--preset", m, "--vram-budget", "64GiB", "--cache-slots", str(n_slots),
                     "--target", target])
        got, want = rep["projection"]["decode_tok_s"], row["decode_tok_s"]
        err = got / want - 1
        r = dict(model=m, residency=row["label"], slots=n_slots, sim_tok_s=want, model_tok_s=got,
                 error=err, sim_hit=row["hit_rate"], replay_hit=rep["hit_rate"],
                 sim_cpu_share=row["cpu_expert_share"], gpu_gbps=gbps, cpu_gbps=cpu_gbps)
        out.append(r)
        print(f"  {row['label']:>5} {n_slots:4d} slots: simulator {want:6.2f} tok/s, model {got:6.2f} "
              f"({100 * err:+.1f}%), hit {100 * row['hit_rate']:.1f}% / {100 * rep['hit_rate']:.1f}%")
worst = max(abs(r["error"]) for r in out)
print(f"worst error {100 * worst:.1f}% ({'within' if worst <= 0.15 else 'OUTSIDE'} 15%)")
if a.json:
    json.dump(out, open(a.json, "w"), indent=1)
sys.exit(0 if worst <= 0.15 else 1)
