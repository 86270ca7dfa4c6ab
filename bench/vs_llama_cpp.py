#!/usr/bin/env python3
"""Rotary vs llama.cpp on the same GGUF, same threads, interleaved (A B A B ...), so both see the
same machine noise. Prints both figures and the ratio, llama-bench style (pp = prompt
processing of -p tokens from an empty context, tg = -n tokens generated one at a time).

    cargo build --release
    ./target/release/rotary synth --preset small --quant q4_k_m -o /tmp/small-q4km.gguf
    v/bin/python bench/vs_llama_cpp.py -m /tmp/small-q4km.gguf -t 2 -p 64 -n 32 -r 5

--alone runs every llama.cpp round first, then every rotary round, for models too large to be
held twice (llama.cpp repacks its weights into its own memory on AVX-512/AMX CPUs).

Needs llama-cpp-python==0.3.36 and numpy (built without AMX on CPUs where its AMX kernels
crash: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AMX_INT8=OFF"). Writes --json FILE.
"""
import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import time

import llama_cpp


def llama_round(llm, prompt, gen):
    llm.reset()
    llm._ctx.memory_clear(True) if hasattr(llm._ctx, "memory_clear") else None
    t = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t)
    llm.reset()
    llm._ctx.memory_clear(True) if hasattr(llm._ctx, "memory_clear") else None
    t = time.perf_counter()
    for tok in gen:
        llm.eval([tok])
    tg = len(gen) / (time.perf_counter() - t)
    return pp, tg


def rotary_round(args):
    cmd = [args.rotary, "bench", "-m", args.model, "-p", str(args.p), "-n", str(args.n), "-r", "1",
           "-t", str(args.t), "--backend", args.backend, "--json"] + shlex.split(args.rotary_args)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["pp_tok_s"], r["tg_tok_s"]


def machine():
    """This CPU's model name, cores and its SIMD flags that the engines use."""
    info = {"cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name") and "cpu" not in info:
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags") and "flags" not in info:
                have = set(line.split(":", 1)[1].split())
                want = ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8"]
                info["flags"] = [f for f in want if f in have]
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            info["thp"] = f.read().strip()
    except OSError:
        pass
    return info


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return None


def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rotary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "rotary"))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--rotary-args", default="",
                    help="more flags for `rotary bench` (e.g. \"--no-mmap\")")
    ap.add_argument("--alone", action="store_true",
                    help="every llama.cpp round first, its model freed, then every rotary round: for "
                         "models that do not fit in RAM twice (llama.cpp repacks its weights into "
                         "memory of its own on CPUs with AVX-512 or AMX, beside the file's pages)")
    args = ap.parse_args()

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=max(512, args.p + args.n + 8), n_batch=512,
                          n_threads=args.t, n_threads_batch=args.t, verbose=False)
    n_vocab = llm.n_vocab()
    state = 12345
    ids = []
    for _ in range(args.p + args.n):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        ids.append((state >> 33) % min(n_vocab, 151643))
    prompt, gen = ids[: args.p], ids[args.p:]
    res = {"llama_pp": [], "llama_tg": [], "rotary_pp": [], "rotary_tg": []}

    def llama():
        pp, tg = llama_round(llm, prompt, gen)
        res["llama_pp"].append(pp)
        res["llama_tg"].append(tg)

    def rotary():
        pp, tg = rotary_round(args)
        res["rotary_pp"].append(pp)
        res["rotary_tg"].append(tg)

    llama_round(llm, prompt, gen)  # warm-up
    if args.alone:
        for _ in range(args.r):
            llama()
        del llm
        gc.collect()
        rotary_round(args)  # warm-up
        for _ in range(args.r):
            rotary()
    else:
        rotary_round(args)
        for _ in range(args.r):
            llama()
            rotary()
    s = {k: summary(v) for k, v in res.items()}
    how = "rounds, each engine alone" if args.alone else "interleaved rounds"
    print(f"model {args.model}, threads {args.t}, pp{args.p} / tg{args.n}, {args.r} {how}")
    print(f"{'':10} {'pp tok/s (median, min)':>26} {'tg tok/s (median, min)':>26}")
    for who in ("llama", "rotary"):
        pp, tg = s[f"{who}_pp"], s[f"{who}_tg"]
        print(f"{who:10} {pp['median']:>16.2f} {pp['min']:>9.2f} {tg['median']:>16.2f} {tg['min']:>9.2f}")
    ratio_pp = s["rotary_pp"]["median"] / s["llama_pp"]["median"]
    ratio_tg = s["rotary_tg"]["median"] / s["llama_tg"]["median"]
    print(f"ratio rotary/llama.cpp: prefill {ratio_pp:.3f}x, decode {ratio_tg:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "llama_cpp_python": llama_cpp.__version__, "raw": res,
                       "summary": s, "ratio_pp": ratio_pp, "ratio_tg": ratio_tg,
                       "machine": machine(), "rotary_commit": commit()}, f, indent=1)


if __name__ == "__main__":
    main()
