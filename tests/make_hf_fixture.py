#!/usr/bin/env python3
"""Write tiny Qwen3MoeForCausalLM fixtures with random weights, saved by HF transformers itself
(config.json + model.safetensors), and transformers' own outputs on a fixed prompt
(reference.json). The reader tests and the forward-pass tests compare against them.
Deterministic (torch.manual_seed): a rerun rewrites identical files.

    tests/fixtures/hf-qwen3moe-tiny/         norm_topk_prob=True: dim 64, 3 layers, 8 experts
                                             top-2, 4 q / 2 kv heads of 32, expert FFN 32,
                                             vocab 512, seed 0
    tests/fixtures/hf-qwen3moe-tiny-nonorm/  norm_topk_prob=False: dim 128, 2 layers, 16 experts
                                             top-4, 4 q / 1 kv head of 32, expert FFN 64,
                                             vocab 384, seed 1

reference.json: {"transformers", "torch", "prompt",
                 "positions": [{"top": [[id, logit] x 8]} per prompt position, best first],
                 "last_logits": [vocab floats of the last position],
                 "greedy": [32 ids model.generate picks greedily after the prompt],
                 "all_logits": [[vocab floats] per prompt position]}

    python3 -m venv v && v/bin/pip install torch transformers safetensors
    v/bin/python tests/make_hf_fixture.py
"""
import json
import os

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
import transformers

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
COMMON = dict(
    decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=256,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
    initializer_range=0.15, use_sliding_window=False, bos_token_id=1, eos_token_id=2,
    pad_token_id=0,
)
FIXTURE_SPECS = [
    dict(
        name="hf-qwen3moe-tiny", seed=0,
        prompt=[3, 141, 59, 265, 358, 97, 93, 238, 46, 264, 33, 83],
        config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=192, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        ),
    ),
    dict(
        # Routing weights that do not sum to 1 (no renormalisation over the top-k), GQA 4:1.
        name="hf-qwen3moe-tiny-nonorm", seed=1,
        prompt=[5, 377, 12, 200, 383, 64, 128, 9, 301, 77, 250, 31, 190, 4, 333, 100],
        config=dict(
            vocab_size=384, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
            num_experts=16, num_experts_per_tok=4, norm_topk_prob=False,
        ),
    ),
]
GREEDY_TOKENS = 32
TOP_K = 8


def write_fixture(name, seed, prompt, config):
    out = os.path.join(FIXTURES, name)
    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(**config, **COMMON)
    model = Qwen3MoeForCausalLM(cfg).eval().to(torch.float32)
    with torch.no_grad():
        # Norm weights initialise to exactly 1; perturb them so a missing or misplaced norm shows.
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight") or pname.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_reference(model, prompt, out)


def write_reference(model, prompt, out):
    """transformers' outputs on `prompt` into out/reference.json (the fields of the docstring)."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        logits = model(ids).logits[0].float()  # [T, vocab]
        greedy = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    top = torch.topk(logits, TOP_K, dim=-1)
    ref = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompt": prompt,
        "positions": [{"top": [[int(i), float(v)] for i, v in zip(ti, tv)]}
                      for ti, tv in zip(top.indices.tolist(), top.values.tolist())],
        "last_logits": [float(x) for x in logits[-1].tolist()],
        "greedy": greedy,
        "all_logits": [[float(x) for x in row] for row in logits.tolist()],
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print("wrote", out, sorted(os.listdir(out)))


def main():
    for spec in FIXTURE_SPECS:
        write_fixture(**spec)


if __name__ == "__main__":
    main()
