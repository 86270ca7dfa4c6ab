#!/usr/bin/env python3
"""The paper protocol (a fixed prompt, then N greedy decode tokens) on rotary and on llama.cpp,
same GGUF, same machine, same threads, interleaved (A B A B ...) so both see the same noise.
Prints both decode figures and the ratio, min and median over rounds.

On this project's CPU machines: rotary's CPU engine against llama.cpp's CPU build.

    cargo build --release
    ./target/release/rotary synth --preset small --quant q4_k_m -o /tmp/small-q4km.gguf
    v/bin/python bench/paper_vs_llama_cpp.py -m /tmp/small-q4km.gguf -t 2 -n 2048 -r 3

Needs llama-cpp-python==0.3.36 and numpy (on CPUs whose AMX kernels crash, build it with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AMX_INT8=OFF"). On a GPU machine use
bench/llama_gpu_ncmoe.sh for llama.cpp's `-ngl 99 --n-cpu-moe N` under the same VRAM budget.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import llama_cpp
import numpy as np

# Must match src/bench.rs PAPER_PROMPT.
PROMPT = "Write a short story about a lighthouse keeper who finds a map."


def llama_round(llm, n):
    llm.reset()
    prompt = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    t = time.perf_counter()
    llm.eval(prompt)
    prefill = len(prompt) / (time.perf_counter() - t)
    n_vocab = llm.n_vocab()

    def last_logits():
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    t = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(last_logits()))
        llm.eval([tok])
    return prefill, n / (time.perf_counter() - t), len(prompt)


def rotary_round(args):
    cmd = [args.rotary, "bench", "--paper", "-m", args.model, "-n", str(args.n), "-t", str(args.t),
           "--backend", args.backend, "--json"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return r["prefill_tok_s"], r["decode_tok_s"], r["n_prompt"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-n", type=int, default=2048)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--rotary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "rotary"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n + 256, n_threads=args.t, n_threads_batch=args.t,
                          n_batch=512, verbose=False, logits_all=False)
    ours, theirs = [], []
    for i in range(args.r):
        ours.append(rotary_round(args))
        theirs.append(llama_round(llm, args.n))
        print(f"round {i + 1}: rotary decode {ours[-1][1]:.2f} tok/s, llama.cpp {theirs[-1][1]:.2f} tok/s", flush=True)
    med = lambda xs: statistics.median(xs)
    res = {
        "model": args.model, "threads": args.t, "n_decode": args.n, "rounds": args.r, "backend": args.backend,
        "prompt_tokens": {"rotary": ours[0][2], "llama.cpp": theirs[0][2]},
        "rotary": {"decode_tok_s_median": med([o[1] for o in ours]), "decode_tok_s_min": min(o[1] for o in ours),
                   "prefill_tok_s_median": med([o[0] for o in ours])},
        "llama.cpp": {"decode_tok_s_median": med([t[1] for t in theirs]), "decode_tok_s_min": min(t[1] for t in theirs),
                      "prefill_tok_s_median": med([t[0] for t in theirs])},
    }
    res["decode_ratio"] = res["rotary"]["decode_tok_s_median"] / res["llama.cpp"]["decode_tok_s_median"]
    print(f"decode (median of {args.r}): rotary {res['rotary']['decode_tok_s_median']:.2f} tok/s, "
          f"llama.cpp {res['llama.cpp']['decode_tok_s_median']:.2f} tok/s, ratio {res['decode_ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
