#!/usr/bin/env python3
"""Write tests/fixtures/llama/: llama.cpp's logits (through llama-cpp-python) for the GGUFs that
`rotary synth --preset tiny --seed 1` writes, one pair of files per quant mix; with
`--preset qwen35-tiny`, tests/fixtures/llama-qwen35/ for `rotary synth --preset qwen35-tiny
--seed 1` (qwen35moe: Gated DeltaNet, gated attention, shared expert; vocabulary 248,320 with
the specials <|endoftext|> <|im_start|> <|im_end|> at 248044-248046; no f32 cross-check). The forward-pass
tests compare our engine against them; llama.cpp is the reference nobody here wrote.

    python3 -m venv v && v/bin/pip install numpy gguf llama-cpp-python==0.3.36 [torch transformers]
    cargo build --release
    v/bin/python tests/make_llama_fixtures.py [--rotary target/release/rotary]
    v/bin/python tests/make_llama_fixtures.py --pick-tokens   # after synth changes (see TOKENS)
    v/bin/python tests/make_llama_fixtures.py --preset qwen35-tiny
    v/bin/python tests/make_llama_fixtures.py --types     # tests/fixtures/llama-types/

The 24 token ids are fed with llm.eval() in one batch: no tokenizer, no BOS. The default synth
vocabulary maps id b < 256 to byte b; 151643-151645 are <|endoftext|>, <|im_start|>, <|im_end|>.

Files, for each mix M of q8_0 q4_k_m:
    M.json      {"llama_cpp_python", "gguf_sha256", "gguf_bytes", "synth_args", "tokens",
                 "positions": [{"top": [[id, logit] x 64]} per position, best first],
                 "argmax": [id per position],
                 "full_positions": [0, 11, 23],
                 "greedy": 16 ids llama.cpp generates after the tokens (argmax, one at a time),
                 "greedy_top": [[[id, logit] x 8] per greedy step, the logits that chose it]}
    M.full.f16  the full logits of the full_positions rows: 3 x 151936 little-endian f16,
                row-major
With --types, tests/fixtures/llama-types/ gets the same pair for `rotary synth --preset tiny
--seed 1 --quant T`, T each type of TYPES below and the q4_k_xl mix (a "dynamic" file with
IQ4_XS, Q4_K, Q5_K, Q6_K and Q8_0 tensors), with only the last position's full row (the
acceptance: top-1 where llama.cpp's margin > 0.05, last-position NMSE), for the tokens of
TYPE_TEXT, and for each type the first seed from 1 on whose file our cpu and cpu-ref backends
route alike at every position (synth_clear_routing). These files hold synth's
random valid blocks of T, not llama.cpp's quantizer's output: the same bytes run through both
engines, which is what the comparison needs, and they can be rebuilt without llama.cpp.

gguf_sha256 is the synthesized file's: if synth changes, a test sees the fixture is stale.
Rerunning rewrites identical files as long as synth and llama.cpp do not change.

llama.cpp quantizes activations to 8 bits before every quantized matmul; an f32 engine differs
from it by NMSE ~1e-4 (q8_0) to ~1e-3 (q4_k_m). Where a router's 2nd and 3rd expert logits are
that close, the two pick different experts and the logits differ by far more, at that position
and, through attention, after it. With torch + transformers installed the script also runs the
GGUF in transformers (weights dequantized by gguf-py, computed in f32) and prints both: the
smallest router gap and the NMSE per position (a cross-check, not written to the fixture).
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import llama_cpp

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "llama")
MIXES = ["q8_0", "q4_k_m"]
# --types: every type the engine reads beyond MIXES' (tests/fixtures/llama-types/).
# --types feeds text (so `rotary run --prompt` can replay it): its bytes are the token ids.
TYPE_TEXT = "Hello, MoE! A quick test."
TYPES = ["q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "iq4_nl", "iq4_xs", "iq3_xxs", "iq3_s",
         "iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m", "mxfp4", "nvfp4", "q4_k_xl"]
SEED = 1
N_VOCAB = 151_936
TOP_K = 64
GREEDY_TOKENS = 16
GREEDY_TOP_K = 8
FULL_POSITIONS = [0, 11, 23]
# A router gap (2nd minus 3rd expert logit, f32) below this can flip the expert choice under
# llama.cpp's activation quantization (observed flips at gaps 0.003 and 0.019).
ROUTER_GAP_MIN = 0.05
# TEMPLATE with byte positions replaced where needed (--pick-tokens) so that in both mixes every
# router gap at every position is >= ROUTER_GAP_MIN: "Heeee,eMoEec" <|endoftext|> <|im_start|>
# "aeehs" <|im_end|> and the bytes 0, 255, 128, 127. (<|im_start|> cannot come first: its
# layer-2 gap there is 0.003.)
TEMPLATE = (list(b"Hello, MoE!\n") + [151643, 151644] + list(b"user\n")
            + [151645, 0, 255, 128, 127])
TOKENS = ([72, 101, 101, 101, 101, 44, 101, 77, 111, 69, 101, 99, 151643, 151644]
          + [97, 101, 101, 104, 115, 151645, 0, 255, 128, 127])
assert len(TOKENS) == len(TEMPLATE) == 24
assert all(t < 256 or 151643 <= t <= 151645 for t in TOKENS)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def top(row, k):
    """The k largest logits of one row, best first; ties broken by the smaller id."""
    idx = np.lexsort((np.arange(row.size), -row.astype(np.float64)))[:k]
    return [[int(i), float(row[i])] for i in idx]


# qwen35-tiny: picked by --pick-tokens (pick_tokens_greedy from TEMPLATE with Qwen3.5's special
# ids): every router gap of both mixes >= ROUTER_GAP_MIN at every position.
QWEN35_TOKENS = [110, 116, 116, 111, 104, 97, 115, 104, 105, 105, 33, 116, 99, 116, 109, 115, 115,
                 114, 115, 114, 100, 101, 128, 105]
PRESETS = {
    "tiny": dict(out="llama", n_vocab=N_VOCAB, tokens=TOKENS),
    "qwen35-tiny": dict(out="llama-qwen35", n_vocab=248_320, tokens=QWEN35_TOKENS),
}
PRESET = "tiny"


def synth(rotary, mix, tmp, seed=None):
    seed = SEED if seed is None else seed
    synth_args = ["synth", "--preset", PRESET, "--quant", mix, "--seed", str(seed)]
    path = os.path.join(tmp, f"{PRESET}-{mix}-seed{seed}.gguf")
    subprocess.run([rotary, *synth_args, "-o", path], check=True, capture_output=True)
    return synth_args, path


def routing(rotary, path, backend, tmp):
    """The experts our engine's `backend` picks at every position of TYPE_TEXT, per layer."""
    trace = os.path.join(tmp, f"routing-{backend}.txt")
    subprocess.run([rotary, "run", "-m", path, "--backend", backend, "--prompt", TYPE_TEXT,
                    "-n", "1", "--temp", "0", "--record-routing", trace], check=True,
                   capture_output=True)
    with open(trace) as f:
        lines = f.read().splitlines()[1:]
    return [[sorted(map(int, layer.split())) for layer in line.split(";")]
            for line in lines[:len(TOKENS)]]


def synth_clear_routing(rotary, mix, tmp):
    """--types: the first seed from SEED on whose file our f32 engine (cpu-ref) and our 8-bit
    one (cpu, activations quantized as ggml does) choose the same experts at every position:
    no router decision there is close enough for 8-bit rounding to flip it, so llama.cpp's
    logits are a fair reference at every position."""
    for seed in range(SEED, SEED + 16):
        synth_args, path = synth(rotary, mix, tmp, seed)
        if routing(rotary, path, "cpu", tmp) == routing(rotary, path, "cpu-ref", tmp):
            print(f"{mix}: seed {seed} routes alike on cpu and cpu-ref")
            return synth_args, path
        print(f"{mix}: seed {seed}: a router decision differs between cpu and cpu-ref")
    raise SystemExit(f"{mix}: no seed in {SEED}..{SEED + 15} routes alike")


def eval_logits(path):
    """llama.cpp's f32 logits for TOKENS, [len(TOKENS), N_VOCAB], and its greedy continuation."""
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2,
                          verbose=False)
    assert llm.n_vocab() == N_VOCAB, (llm.n_vocab(), N_VOCAB)
    llm.eval(TOKENS)
    logits = np.array(llm.scores[: len(TOKENS)], dtype=np.float32)
    greedy, greedy_top = [], []
    row = logits[-1]
    for _ in range(GREEDY_TOKENS):
        greedy_top.append(top(row, GREEDY_TOP_K))
        tok = greedy_top[-1][0][0]
        greedy.append(tok)
        llm.eval([tok])
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    llm.close()
    return logits, greedy, greedy_top


# ---------------------------------------------------------------------------------------------
# The f32 cross-check: transformers' Qwen3MoeForCausalLM on gguf-py's dequantized weights.

def with_router_gaps(model, k):
    """A function giving, for a token list, the model's logits [T, vocab] and the smallest gap
    between the k-th and (k+1)-th router logit over the layers, per position [T]."""
    import torch

    gaps = {}

    def hook(layer):
        def record(mod, inp, _out):
            x = inp[0].reshape(-1, inp[0].shape[-1])
            s = torch.sort(x @ mod.weight.T, -1, descending=True).values
            gaps[layer] = s[:, k - 1] - s[:, k]
        return record

    for i, layer in enumerate(model.model.layers):
        layer.mlp.gate.register_forward_hook(hook(i))

    def run(tokens):
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].double().numpy()
        return logits, torch.stack(list(gaps.values())).min(0).values.double().numpy()

    return run


def f32_model(path):
    """The GGUF as a transformers model (f32), and a function giving, for a token list, the
    logits [T, vocab] and the smallest router gap over the layers per position [T]."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    r = GGUFReader(path)

    def kv(key):
        f = r.fields[f"qwen3moe.{key}"]
        return f.parts[f.data[0]][0].item()

    n_layers = kv("block_count")
    cfg = Qwen3MoeConfig(
        vocab_size=N_VOCAB, hidden_size=kv("embedding_length"),
        moe_intermediate_size=kv("expert_feed_forward_length"), num_hidden_layers=n_layers,
        num_attention_heads=kv("attention.head_count"),
        num_key_value_heads=kv("attention.head_count_kv"), head_dim=kv("attention.key_length"),
        num_experts=kv("expert_count"), num_experts_per_tok=kv("expert_used_count"),
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        max_position_embeddings=kv("context_length"), rope_theta=kv("rope.freq_base"),
        rms_norm_eps=kv("attention.layer_norm_rms_epsilon"), tie_word_embeddings=False)
    t = {x.name: torch.from_numpy(np.ascontiguousarray(dequantize(x.data, x.tensor_type),
                                                        dtype=np.float32)) for x in r.tensors}
    sd = {"model.embed_tokens.weight": t["token_embd.weight"],
          "model.norm.weight": t["output_norm.weight"], "lm_head.weight": t["output.weight"]}
    names = [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
             ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
             ("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm"),
             ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
             ("ffn_gate_inp", "mlp.gate")]
    for i in range(n_layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        for ours, theirs in names:
            sd[f"{h}{theirs}.weight"] = t[f"{g}{ours}.weight"]
        # transformers 5 fuses the experts: gate_up_proj [n_experts, 2 * ffn, dim].
        sd[h + "mlp.experts.gate_up_proj"] = torch.cat(
            [t[g + "ffn_gate_exps.weight"], t[g + "ffn_up_exps.weight"]], 1)
        sd[h + "mlp.experts.down_proj"] = t[g + "ffn_down_exps.weight"]
    model = Qwen3MoeForCausalLM(cfg).eval()
    model.load_state_dict(sd, strict=True)

    return with_router_gaps(model, cfg.num_experts_per_tok)


def f32_model_qwen35(path):
    """f32_model for qwen35moe: transformers' Qwen3_5MoeForCausalLM on the GGUF's weights, with
    llama.cpp's converter undone (models.md §2.3): norms w' = 1 + w (all but ssm_norm),
    ssm_a = -exp(A_log), value heads from GGUF's tiled order (head j uses key head j % n_k) back
    to HF's grouped order (head h uses key head h // (n_v / n_k))."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig
    from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeForCausalLM

    r = GGUFReader(path)

    def kv(key):
        f = r.fields[f"qwen35moe.{key}"]
        return f.parts[f.data[0]][0].item()

    n_layers, interval = kv("block_count"), kv("full_attention_interval")
    nk, nv, dk = kv("ssm.group_count"), kv("ssm.time_step_rank"), kv("ssm.state_size")
    head_dim = kv("attention.key_length")
    cfg = Qwen3_5MoeTextConfig(
        vocab_size=N_VOCAB, hidden_size=kv("embedding_length"), num_hidden_layers=n_layers,
        layer_types=["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                     for i in range(n_layers)],
        linear_num_key_heads=nk, linear_num_value_heads=nv, linear_key_head_dim=dk,
        linear_value_head_dim=dk, linear_conv_kernel_dim=kv("ssm.conv_kernel"),
        num_attention_heads=kv("attention.head_count"),
        num_key_value_heads=kv("attention.head_count_kv"), head_dim=head_dim,
        num_experts=kv("expert_count"), num_experts_per_tok=kv("expert_used_count"),
        moe_intermediate_size=kv("expert_feed_forward_length"),
        shared_expert_intermediate_size=kv("expert_shared_feed_forward_length"),
        max_position_embeddings=4096, rms_norm_eps=kv("attention.layer_norm_rms_epsilon"),
        rope_parameters=dict(rope_type="default", rope_theta=kv("rope.freq_base"),
                             partial_rotary_factor=kv("rope.dimension_count") / head_dim),
        tie_word_embeddings=False)
    t = {x.name: torch.from_numpy(np.ascontiguousarray(dequantize(x.data, x.tensor_type),
                                                        dtype=np.float32)) for x in r.tensors}
    # HF value head h = key head kh, slot i (h = kh * ratio + i) is GGUF head i * nk + kh.
    ratio = nv // nk
    perm = torch.tensor([(h % ratio) * nk + h // ratio for h in range(nv)])

    def heads(x, width, dim=0):  # reorder blocks of `width` along dim from GGUF to HF order
        shape = list(x.shape)
        y = x.reshape(*shape[:dim], nv, width, *shape[dim + 1:])
        return y.index_select(dim, perm).reshape(shape)

    def v_part(x, dim=0):  # q|k|v channels: only the v part is reordered
        qk = 2 * nk * dk
        a, b = x.narrow(dim, 0, qk), x.narrow(dim, qk, x.shape[dim] - qk)
        return torch.cat([a, heads(b, dk, dim)], dim)

    sd = {"model.embed_tokens.weight": t["token_embd.weight"],
          "model.norm.weight": t["output_norm.weight"] - 1, "lm_head.weight": t["output.weight"]}
    for i in range(n_layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        sd[h + "input_layernorm.weight"] = t[g + "attn_norm.weight"] - 1
        sd[h + "post_attention_layernorm.weight"] = t[g + "post_attention_norm.weight"] - 1
        if (i + 1) % interval == 0:
            for ours, theirs in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"),
                                 ("attn_output", "o_proj")]:
                sd[f"{h}self_attn.{theirs}.weight"] = t[f"{g}{ours}.weight"]
            sd[h + "self_attn.q_norm.weight"] = t[g + "attn_q_norm.weight"] - 1
            sd[h + "self_attn.k_norm.weight"] = t[g + "attn_k_norm.weight"] - 1
        else:
            la = h + "linear_attn."
            sd[la + "in_proj_qkv.weight"] = v_part(t[g + "attn_qkv.weight"])
            sd[la + "in_proj_z.weight"] = heads(t[g + "attn_gate.weight"], dk)
            sd[la + "in_proj_b.weight"] = heads(t[g + "ssm_beta.weight"], 1)
            sd[la + "in_proj_a.weight"] = heads(t[g + "ssm_alpha.weight"], 1)
            sd[la + "conv1d.weight"] = v_part(t[g + "ssm_conv1d.weight"]).unsqueeze(1)
            sd[la + "dt_bias"] = heads(t[g + "ssm_dt.bias"], 1)
            sd[la + "A_log"] = torch.log(-heads(t[g + "ssm_a"], 1))
            sd[la + "norm.weight"] = t[g + "ssm_norm.weight"]
            sd[la + "out_proj.weight"] = heads(t[g + "ssm_out.weight"], dk, dim=1)
        sd[h + "mlp.gate.weight"] = t[g + "ffn_gate_inp.weight"]
        sd[h + "mlp.experts.gate_up_proj"] = torch.cat(
            [t[g + "ffn_gate_exps.weight"], t[g + "ffn_up_exps.weight"]], 1)
        sd[h + "mlp.experts.down_proj"] = t[g + "ffn_down_exps.weight"]
        sd[h + "mlp.shared_expert_gate.weight"] = t[g + "ffn_gate_inp_shexp.weight"].reshape(1, -1)
        for ours, theirs in [("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")]:
            sd[f"{h}mlp.shared_expert.{theirs}.weight"] = t[f"{g}ffn_{ours}_shexp.weight"]
    model = Qwen3_5MoeForCausalLM(cfg).eval()
    model.load_state_dict(sd, strict=True)

    return with_router_gaps(model, cfg.num_experts_per_tok)


def f32_check(path, logits, greedy):
    try:
        run = f32_model(path) if PRESET == "tiny" else f32_model_qwen35(path)
    except ImportError as e:
        print(f"  SKIP f32 cross-check: {e}")
        return
    ref, gap = run(TOKENS + greedy)
    n = len(TOKENS)
    d = ref[:n] - logits
    nmse = (d ** 2).sum(1) / (logits.astype(np.float64) ** 2).sum(1)
    agree = int((ref[:n].argmax(1) == logits.argmax(1)).sum())
    g_agree = int((ref[n - 1:n - 1 + len(greedy)].argmax(1) == np.array(greedy)).sum())
    print(f"  f32 cross-check: router gap min {gap[:n].min():.4f} (greedy steps "
          f"{gap[n:].min():.4f}); NMSE vs llama.cpp min {nmse.min():.2e} median "
          f"{np.median(nmse):.2e} max {nmse.max():.2e}; argmax agree {agree}/{n}, "
          f"greedy (teacher-forced) {g_agree}/{len(greedy)}")
    if gap[:n].min() < ROUTER_GAP_MIN:
        print(f"  WARNING: router gap {gap[:n].min():.4f} < {ROUTER_GAP_MIN} at positions "
              f"{np.flatnonzero(gap[:n] < ROUTER_GAP_MIN).tolist()}: rerun --pick-tokens")
    return ref[:n]


def pick_tokens(paths):
    """TEMPLATE, each byte position keeping its byte or taking the first of ALTERNATIVES whose
    router gaps in every mix are >= ROUTER_GAP_MIN (depth-first, backtracking)."""
    runs = [(f32_model if PRESET == "tiny" else f32_model_qwen35)(p) for p in paths]
    alternatives = list(b"etaoinshrdlucmfwypvbgkjqxz .,!?0123456789ETAOINSHRDLU") + [128, 127]

    def ok(tokens):
        return all(run(tokens)[1][-1] >= ROUTER_GAP_MIN for run in runs)

    def extend(tokens):
        if len(tokens) == len(TEMPLATE):
            return tokens
        t = TEMPLATE[len(tokens)]
        fixed = t >= 256 or t in (0, 255)  # specials and the two extreme bytes stay
        for c in [t] + ([] if fixed else [a for a in alternatives if a != t]):
            found = ok(tokens + [c]) and extend(tokens + [c])
            if found:
                return found
        return None

    return extend([])


def pick_tokens_greedy(paths):
    """pick_tokens for deep models (qwen35-tiny: 8 layers, gaps under ROUTER_GAP_MIN are common):
    position by position (a causal model's gaps at t depend on tokens 0..t only), keep
    TEMPLATE's token or take the first alternative, special tokens included, whose gaps in every
    mix are >= ROUTER_GAP_MIN; failing that, the one with the widest gap. No backtracking."""
    runs = [f32_model_qwen35(p) for p in paths]
    alternatives = (list(b"etaoinshrdlucmfwypvbgkjqxz .,!?0123456789ETAOINSHRDLU") + [128, 127]
                    + [248044, 248045, 248046])
    tokens = []
    for t in TEMPLATE:
        best, best_gap = None, -1.0
        for c in [t] + [a for a in alternatives if a != t]:
            gap = min(run(tokens + [c])[1][-1] for run in runs)
            if gap > best_gap:
                best, best_gap = c, gap
            if gap >= ROUTER_GAP_MIN:
                break
        tokens.append(best)
        print(f"  position {len(tokens) - 1}: token {best}, router gap {best_gap:.4f}", flush=True)
    return tokens


def write_mix(mix, synth_args, path):
    logits, greedy, greedy_top = eval_logits(path)
    assert logits.shape == (len(TOKENS), N_VOCAB) and np.isfinite(logits).all()
    # A second run must give the same logits, or the fixture is noise.
    again, _, _ = eval_logits(path)
    rerun_max_diff = float(np.abs(again - logits).max())

    full = logits[FULL_POSITIONS].astype("<f2")
    f16_err = np.abs(full.astype(np.float64) - logits[FULL_POSITIONS])
    f16_nmse = (f16_err ** 2).sum() / (logits[FULL_POSITIONS].astype(np.float64) ** 2).sum()
    assert np.isfinite(full).all()

    ref = {
        "llama_cpp_python": llama_cpp.__version__,
        "gguf_sha256": sha256(path),
        "gguf_bytes": os.path.getsize(path),
        "synth_args": synth_args,
        "tokens": TOKENS,
        "positions": [{"top": top(row, TOP_K)} for row in logits],
        "argmax": [int(np.argmax(row)) for row in logits],
        "full_positions": FULL_POSITIONS,
        "greedy": greedy,
        "greedy_top": greedy_top,
    }
    with open(os.path.join(OUT, f"{mix}.json"), "w") as f:
        json.dump(ref, f)
    with open(os.path.join(OUT, f"{mix}.full.f16"), "wb") as f:
        f.write(full.tobytes())

    srt = np.sort(logits, axis=1)
    margins = srt[:, -1] - srt[:, -2]
    greedy_margins = [s[0][1] - s[1][1] for s in greedy_top]
    print(f"{mix}: gguf sha256 {ref['gguf_sha256']} ({ref['gguf_bytes']} bytes)")
    print(f"  logits std {logits.std(axis=1).min():.3f}..{logits.std(axis=1).max():.3f}, "
          f"|max| {np.abs(logits).max():.3f}; rerun max diff {rerun_max_diff:g}")
    print(f"  top-1 margins: min {margins.min():.4f} median {np.median(margins):.4f} "
          f"max {margins.max():.4f}; greedy steps min {min(greedy_margins):.4f} "
          f"median {float(np.median(greedy_margins)):.4f}")
    print(f"  argmax {ref['argmax']}")
    print(f"  greedy {greedy}")
    print(f"  f16: max abs err {f16_err.max():.3e} (|logit| max "
          f"{np.abs(logits[FULL_POSITIONS]).max():.3f}), NMSE {f16_nmse:.2e}")
    ref = f32_check(path, logits, greedy)
    if PRESET != "tiny" and ref is not None:
        # transformers on the GGUF's own weights (f32, converter undone): the Rust test holds
        # cpu-ref to it tightly, which pins the GGUF conventions (norms +1, tiled value heads,
        # ssm_a) on a reference nobody here wrote.
        hf = ref[FULL_POSITIONS].astype("<f2")
        with open(os.path.join(OUT, f"{mix}.hf.f16"), "wb") as f:
            f.write(hf.tobytes())
        print(f"  wrote {mix}.hf.f16: transformers f32 logits at {FULL_POSITIONS}")
    return rerun_max_diff


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rotary", default=os.path.join(here, "..", "target", "release", "rotary"))
    ap.add_argument("--pick-tokens", action="store_true",
                    help="print a TOKENS list for the current synth (needs torch, transformers)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--types", action="store_true",
                    help="write tests/fixtures/llama-types/ (one file per type of TYPES)")
    args = ap.parse_args()
    global PRESET, OUT, N_VOCAB, TOKENS, TEMPLATE, MIXES, FULL_POSITIONS
    PRESET = args.preset
    p = PRESETS[PRESET]
    OUT = os.path.join(os.path.dirname(OUT), p["out"])
    N_VOCAB, TOKENS = p["n_vocab"], p["tokens"]
    if PRESET != "tiny":
        TEMPLATE = [248044 + (t - 151643) if t >= 151643 else t for t in TEMPLATE]
    if args.types:
        assert PRESET == "tiny", "--types is for the tiny preset"
        OUT = os.path.join(os.path.dirname(OUT), "llama-types")
        TOKENS = list(TYPE_TEXT.encode())
        MIXES, FULL_POSITIONS = TYPES, [len(TOKENS) - 1]
    with tempfile.TemporaryDirectory() as tmp:
        make = synth_clear_routing if args.types else synth
        files = [(mix, *make(args.rotary, mix, tmp)) for mix in MIXES]
        if args.pick_tokens:
            pick = pick_tokens if PRESET == "tiny" else pick_tokens_greedy
            print("TOKENS =", pick([path for _, _, path in files]))
            return
        os.makedirs(OUT, exist_ok=True)
        diffs = [write_mix(mix, synth_args, path) for mix, synth_args, path in files]
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.join(OUT, name)}: {os.path.getsize(os.path.join(OUT, name))} bytes")
    if max(diffs) != 0.0:
        print("llama.cpp is not deterministic run to run: fixtures are noisy", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
