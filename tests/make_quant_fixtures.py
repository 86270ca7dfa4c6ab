#!/usr/bin/env python3
"""Writes tests/fixtures/quant/: the reference data tests/quant.rs checks our CPU quant formats
against. The reference is the `gguf` Python package (llama.cpp's gguf-py), an implementation
independent of ours; the test never runs Python.

Setup and rerun (deterministic: fixed seed, so a rerun rewrites identical files):
    python3 -m venv v && v/bin/pip install gguf numpy
    v/bin/python tests/make_quant_fixtures.py

Files, for each type T of TYPES below (little-endian throughout):
    T.deq.in.bin    raw blocks: random bytes, the f16 scale fields set to finite values in
                    ±[1e-3, 1e-1] (F16 data has its NaN patterns replaced; BF16 and F32 keep them)
    T.deq.out.f32   gguf.quants.dequantize of those bytes, as raw f32
    T.q.in.f32      (not for READ_ONLY types) f32 input (random blocks plus edge cases: zeros, ties, sign of the max)
    T.q.out.bin     gguf.quants.quantize of that input, only where the package implements it
                    (gguf 0.19.0: not for the K-quants, the i-quants and NVFP4; their inputs are kept for a
                    rerun)
manifest.json       package versions, element counts, and which types have quantize fixtures
type_sizes.json     every ggml type the package knows: name -> [id, block_elems, block_bytes]
"""

import json
import pathlib
from importlib.metadata import version

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "quant"
SEED = 0x5EED_0001

# The types the engine computes with, and the byte offsets of the f16 scale fields inside one
# block (ggml-common.h: block_q8_0 and block_q4_0 start with d; block_q4_K and block_q5_K start
# with d, dmin; block_q6_K ends with d; the rest below).
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K",
         "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S",
         "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "MXFP4", "NVFP4"]
# ggml-common.h: Q4_1/Q5_1 start with d, m; Q2_K ends with d, dmin; Q3_K ends with d; the
# i-quants but IQ1_M start with d. IQ1_M spreads its f16 over the top nibbles of its last 8
# bytes (handled in dequant_input); MXFP4 and NVFP4 have 8-bit scales, any byte valid.
SCALE_OFFSETS = {"Q8_0": [0], "Q4_0": [0], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
                 "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108],
                 "IQ4_NL": [0], "IQ4_XS": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ2_XXS": [0],
                 "IQ2_XS": [0], "IQ2_S": [0], "IQ1_S": [0], "IQ1_M": [], "MXFP4": [],
                 "NVFP4": []}

# Types the engine reads but does not quantize (synth writes random blocks of them).
READ_ONLY = TYPES[8:]

# Fixture sizes: enough blocks to hit every nibble/bit position many times, small to commit.
PLAIN_ELEMS = 4096
BLOCKS = {"Q8_0": 128, "Q4_0": 128, "Q4_K": 32, "Q5_K": 32, "Q6_K": 32,
          "Q4_1": 128, "Q5_0": 128, "Q5_1": 128, "Q2_K": 32, "Q3_K": 32, "IQ4_NL": 128,
          "IQ4_XS": 32, "IQ3_XXS": 32, "IQ3_S": 32, "IQ2_XXS": 32, "IQ2_XS": 32, "IQ2_S": 32,
          "IQ1_S": 32, "IQ1_M": 32, "MXFP4": 128, "NVFP4": 64}


def qtype(name):
    return GGMLQuantizationType[name]


def sane_scales(rng, count):
    """f16 scale values: random sign, magnitude log-uniform in [1e-3, 1e-1]."""
    mag = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=count))
    sign = rng.choice([-1.0, 1.0], size=count)
    return (sign * mag).astype(np.float16)


def dequant_input(rng, name):
    """Random raw bytes for `name`, with every f16 scale field replaced by a sane value."""
    if name == "F32":
        return rng.integers(0, 256, size=PLAIN_ELEMS * 4, dtype=np.uint8)
    if name == "BF16":
        return rng.integers(0, 256, size=PLAIN_ELEMS * 2, dtype=np.uint8)
    if name == "F16":
        bits = rng.integers(0, 1 << 16, size=PLAIN_ELEMS, dtype=np.uint16)
        # NaN payloads convert differently across f16 libraries (some quiet them): keep Inf and
        # subnormals, turn NaN patterns finite by clearing the top exponent bit.
        nan = (bits & 0x7C00 == 0x7C00) & (bits & 0x03FF != 0)
        bits[nan] &= np.uint16(0xBFFF)
        return bits.astype("<u2").view(np.uint8)
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype(name)]
    n_blocks = BLOCKS[name]
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[name]:
        scales = sane_scales(rng, n_blocks).astype("<f2").view(np.uint8).reshape(n_blocks, 2)
        raw[:, off:off + 2] = scales
    if name == "IQ1_M":  # d's four nibbles are the top nibbles of the 4 u16 scales at byte 48
        d = sane_scales(rng, n_blocks).view(np.uint16).astype(np.uint16)
        sc = raw[:, 48:56].copy().view("<u2").astype(np.uint16) & np.uint16(0x0FFF)
        for i in range(4):
            sc[:, i] |= ((d >> np.uint16(4 * i)) & np.uint16(0xF)) << np.uint16(12)
        raw[:, 48:56] = sc.astype("<u2").view(np.uint8).reshape(n_blocks, 8)
    return raw.reshape(-1)


def block_edge_cases(block):
    """Edge-case blocks of `block` elements for the 32-element formats (Q8_0, Q4_0)."""
    cases = [np.zeros(block)]
    # Max |x| reached by +3 first and -3 later: Q4_0 keeps the sign of the first one.
    tie = np.linspace(-1, 1, block)
    tie[5], tie[10] = 3.0, -3.0
    cases.append(tie)
    # Negative max; the rest positive.
    neg = np.abs(np.linspace(-2, 2, block))
    neg[7] = -4.0
    cases.append(neg)
    # Q8_0 scale 1.0 exactly (amax 127): x.5 ties round away from zero.
    q8 = np.array([127.0] + [k + 0.5 for k in range(-15, 16)])[:block]
    cases.append(q8)
    # Q4_0 scale 1.0 exactly (max -8): ties at x + 8.5, and the clamp at 15.
    q4 = np.array([-8.0] + [k * 0.5 for k in range(-15, 16)])[:block]
    cases.append(q4)
    # Constant block, tiny block, huge block (the f16 scale overflows to Inf).
    cases += [np.full(block, 0.25), np.linspace(-1e-30, 1e-30, block),
              np.linspace(-1e7, 1e7, block)]
    return [np.asarray(c, dtype=np.float32) for c in cases]


def float_edge_cases():
    """Specials and rounding ties for F16/BF16."""
    one = np.float32(1.0)
    vals = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 65504.0, 65520.0, 1e5, 6e-8, 3e-8, 1e-10,
            3.4028235e38, -3.4028235e38, 1.17549435e-38, 1e-45,
            one + np.float32(2.0 ** -11), one + np.float32(3 * 2.0 ** -11),   # f16 ties
            one + np.float32(2.0 ** -8), one + np.float32(3 * 2.0 ** -8)]     # bf16 ties
    return np.array(vals, dtype=np.float32)


def quant_input(rng, name):
    """f32 input: log-uniform-scaled normal data plus the edge cases."""
    if name in ("F32", "F16", "BF16"):
        scale = np.exp(rng.uniform(np.log(1e-8), np.log(1e5), size=PLAIN_ELEMS))
        x = (rng.standard_normal(PLAIN_ELEMS) * scale).astype(np.float32)
        edges = float_edge_cases()
        x[:len(edges)] = edges
        if name == "BF16":  # the package quantizes BF16 NaNs as ggml does (quiet, sign kept)
            nan_bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFFFFFF], dtype=np.uint32)
            x[len(edges):len(edges) + 4] = nan_bits.view(np.float32)
        return x
    block_elems, _ = GGML_QUANT_SIZES[qtype(name)]
    n_blocks = BLOCKS[name]
    scale = np.exp(rng.uniform(np.log(1e-3), np.log(1e2), size=(n_blocks, 1)))
    x = (rng.standard_normal((n_blocks, block_elems)) * scale).astype(np.float32)
    if block_elems == 32:
        for i, case in enumerate(block_edge_cases(block_elems)):
            x[i] = case
    return x.reshape(-1)


def can_quantize(name):
    """Whether the package implements quantize for `name` (K-quants: it raises)."""
    probe = np.linspace(-1, 1, GGML_QUANT_SIZES[qtype(name)][0] * 2, dtype=np.float32)
    try:
        quants.quantize(probe.reshape(1, -1), qtype(name))
    except NotImplementedError:
        return False
    return True


def as_bytes(arr, name):
    if name == "F32":
        return np.asarray(arr, dtype="<f4").tobytes()
    if name == "F16":
        return np.asarray(arr, dtype="<f2").tobytes()
    return np.asarray(arr, dtype=np.uint8).tobytes()


def write_type(rng, name, manifest):
    raw = dequant_input(rng, name)
    deq = quants.dequantize(raw, qtype(name)).astype("<f4")
    (OUT / f"{name}.deq.in.bin").write_bytes(raw.tobytes())
    (OUT / f"{name}.deq.out.f32").write_bytes(deq.tobytes())
    entry = {"deq_elems": int(deq.size), "quantize": can_quantize(name)}

    if name in READ_ONLY:  # the engine has no quantizer for these: dequantize fixtures only
        manifest["types"][name] = entry
        return
    x = quant_input(rng, name)
    (OUT / f"{name}.q.in.f32").write_bytes(x.astype("<f4").tobytes())
    entry["q_elems"] = int(x.size)
    stale = OUT / f"{name}.q.out.bin"
    if entry["quantize"]:
        q = quants.quantize(x.reshape(1, -1), qtype(name))
        stale.write_bytes(as_bytes(q.reshape(-1), name))
    elif stale.exists():
        stale.unlink()
    manifest["types"][name] = entry


def write_type_sizes():
    sizes = {}
    for t in GGMLQuantizationType:
        if t in GGML_QUANT_SIZES:
            block_elems, block_bytes = GGML_QUANT_SIZES[t]
            sizes[t.name] = [int(t.value), int(block_elems), int(block_bytes)]
    text = json.dumps(sizes, indent=1, sort_keys=True) + "\n"
    (OUT / "type_sizes.json").write_text(text)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = {"gguf": version("gguf"), "numpy": np.__version__, "seed": SEED, "types": {}}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for name in TYPES:
            write_type(rng, name, manifest)
    write_type_sizes()
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT} ({total} bytes)")
    for name, entry in manifest["types"].items():
        print(f"  {name:5} quantize in package: {entry['quantize']}")


if __name__ == "__main__":
    main()
