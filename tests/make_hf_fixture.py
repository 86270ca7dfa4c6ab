#!/usr/bin/env python3
"""Write tests/fixtures/hf-qwen3moe-tiny/: a tiny Qwen3MoeForCausalLM with random weights, saved by
HF transformers itself (config.json + model.safetensors), and transformers' own outputs on a fixed
prompt (reference.json: per-position logits top-k, the full last-position logits, 32 greedy
tokens). The reader tests and, from the CPU-engine issue on, the forward-pass tests compare
against it. Deterministic (torch.manual_seed).

    python3 -m venv v && v/bin/pip install torch transformers safetensors
    v/bin/python tests/make_hf_fixture.py
"""
import json
import os

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
import transformers

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "hf-qwen3moe-tiny")
PROMPT = [3, 141, 59, 265, 358, 97, 93, 238, 46, 264, 33, 83]

torch.manual_seed(0)
cfg = Qwen3MoeConfig(
    vocab_size=512, hidden_size=64, intermediate_size=192, moe_intermediate_size=32,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
    mlp_only_layers=[], max_position_embeddings=256, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=False, initializer_range=0.15, use_sliding_window=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
model = Qwen3MoeForCausalLM(cfg).eval().to(torch.float32)
with torch.no_grad():
    # Norm weights initialise to exactly 1; perturb them so a missing or misplaced norm shows.
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT, safe_serialization=True)

with torch.no_grad():
    ids = torch.tensor([PROMPT])
    logits = model(ids).logits[0].float()  # [T, vocab]
    greedy = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(PROMPT):].tolist()
top = torch.topk(logits, 8, dim=-1)
ref = {
    "transformers": transformers.__version__,
    "torch": torch.__version__,
    "prompt": PROMPT,
    "positions": [{"top": [[int(i), float(v)] for i, v in zip(ti, tv)]}
                  for ti, tv in zip(top.indices.tolist(), top.values.tolist())],
    "last_logits": [float(x) for x in logits[-1].tolist()],
    "greedy": greedy,
}
with open(os.path.join(OUT, "reference.json"), "w") as f:
    json.dump(ref, f)
print("wrote", OUT, sorted(os.listdir(OUT)))
