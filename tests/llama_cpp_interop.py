#!/usr/bin/env python3
"""Interop proof: llama.cpp (through llama-cpp-python) loads a GGUF that `rotary synth` wrote and
computes finite logits. Not part of CI (it needs llama-cpp-python, which compiles llama.cpp).

    python3 -m venv v && v/bin/pip install numpy llama-cpp-python==0.3.36
    cargo build --release
    v/bin/python tests/llama_cpp_interop.py                      # synthesizes tiny q4_k_m
    v/bin/python tests/llama_cpp_interop.py --file big.gguf      # an existing file

Exit status 0 only if every position's logits are finite and not all equal.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import llama_cpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", help="an existing GGUF (default: synthesize one)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--quant", default="q4_k_m")
    ap.add_argument("--rotary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "rotary"))
    ap.add_argument("--prompt", default="Hello, world! The quick brown fox")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    path = args.file
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), f"{args.preset}-{args.quant}.gguf")
        subprocess.run([args.rotary, "synth", "--preset", args.preset, "--quant", args.quant, "-o", path], check=True)

    t0 = time.time()
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_batch=128, logits_all=True,
                          n_threads=args.threads, verbose=False)
    t_load = time.time() - t0
    tokens = llm.tokenize(args.prompt.encode(), add_bos=False, special=False)
    t0 = time.time()
    llm.eval(tokens)
    t_eval = time.time() - t0
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finite = bool(np.isfinite(logits).all())
    spread = float(logits.std(axis=1).min())
    print(f"file {path}")
    print(f"llama.cpp {llama_cpp.__version__}: loaded in {t_load:.1f} s, {len(tokens)} tokens evaluated in {t_eval:.2f} s")
    print(f"logits {logits.shape}: finite={finite} min per-position std={spread:.4f} "
          f"absmax={np.abs(logits).max():.3f}")
    ok = finite and spread > 0
    print("OK" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
