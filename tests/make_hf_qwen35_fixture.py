#!/usr/bin/env python3
"""Write tiny Qwen3.5-MoE fixtures with random weights, saved by HF transformers itself
(config.json + model.safetensors), and transformers' own outputs on a fixed prompt
(reference.json, same fields as tests/make_hf_fixture.py). Deterministic (torch.manual_seed).

    tests/fixtures/hf-qwen35moe-tiny/   Qwen3_5MoeForConditionalGeneration (the layout of the
        released checkpoints: text_config, `model.language_model.*`, a (tiny) vision tower that
        the engine ignores): dim 64, 4 layers (3 Gated DeltaNet + 1 gated attention), DeltaNet
        2 k heads / 4 v heads of 16, conv 4; attention 4 q / 2 kv heads of 32, RoPE on 8 dims;
        8 experts top-2, expert FFN 32, shared expert FFN 48; vocab 512; seed 0
    tests/fixtures/hf-qwen35moe-text/   Qwen3_5MoeForCausalLM (text-only layout, `model.*`):
        dim 96, 8 layers, DeltaNet 2 k heads / 6 v heads (3 per k head), attention 6 q / 1 kv
        head of 32 (RoPE on 16 dims), 16 experts top-4, vocab 384; seed 1
    tests/fixtures/hf-qwen35moe-fused/  hf-qwen35moe-tiny with fused expert tensors
        (`mlp.experts.gate_up_proj` / `down_proj`, the layout of the released checkpoints)

Norms are zero-centred in HF (x̂·(1+w)); they are perturbed, and so are dt_bias, A_log and the
gated norm, so a convention slip shows. A_log spans a wide range so some heads forget fast.

    python3 -m venv v && v/bin/pip install torch transformers safetensors
    v/bin/python tests/make_hf_qwen35_fixture.py
"""
import os

import torch
from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration
from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeForCausalLM

from make_hf_fixture import write_reference

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def text_config(vocab, dim, layers, nk, nv, dk, heads, kv, hd, rope_factor, experts, topk, ff, sff):
    return dict(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=layers,
        layer_types=["full_attention" if i % 4 == 3 else "linear_attention" for i in range(layers)],
        linear_num_key_heads=nk, linear_num_value_heads=nv, linear_key_head_dim=dk,
        linear_value_head_dim=dk, linear_conv_kernel_dim=4,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
        num_experts=experts, num_experts_per_tok=topk, moe_intermediate_size=ff,
        shared_expert_intermediate_size=sff, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0,
                             partial_rotary_factor=rope_factor, mrope_section=[1, 1, 2] if hd * rope_factor == 8 else [2, 3, 3],
                             mrope_interleaved=True),
        tie_word_embeddings=False, initializer_range=0.15, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )


SPECS = [
    dict(name="hf-qwen35moe-tiny", seed=0, multimodal=True,
         prompt=[3, 141, 59, 265, 358, 97, 93, 238, 46, 264, 33, 83, 7, 400],
         text=text_config(512, 64, 4, 2, 4, 16, 4, 2, 32, 0.25, 8, 2, 32, 48)),
    dict(name="hf-qwen35moe-text", seed=1, multimodal=False,
         prompt=[5, 377, 12, 200, 383, 64, 128, 9, 301, 77, 250, 31, 190, 4, 333, 100, 21],
         text=text_config(384, 96, 8, 2, 6, 16, 6, 1, 32, 0.5, 16, 4, 32, 32)),
]


def perturb(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # plain weight, init 1
            elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(0.2 * torch.randn_like(p))  # zero-centred, init 0
            elif name.endswith("dt_bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(-2.0, 1.5))


def write(name, seed, multimodal, prompt, text):
    out = os.path.join(FIXTURES, name)
    torch.manual_seed(seed)
    if multimodal:
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                      out_hidden_size=text["hidden_size"], num_position_embeddings=16)
        cfg = Qwen3_5MoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)
        model = Qwen3_5MoeForConditionalGeneration(cfg)
    else:
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**text))
    model = model.eval().to(torch.float32)
    perturb(model)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    write_reference(model, prompt, out)


def write_fused(src_name, name):
    """`src_name`'s model with the experts stored as the released checkpoints store them (models.md
    §2.3): `mlp.experts.gate_up_proj` [E, 2·ffn, dim] (gate rows first) and
    `mlp.experts.down_proj` [E, dim, ffn] instead of one tensor per expert. Same weights, so the
    same reference.json."""
    import shutil
    from safetensors.torch import load_file, save_file

    src, out = os.path.join(FIXTURES, src_name), os.path.join(FIXTURES, name)
    os.makedirs(out, exist_ok=True)
    for f in ("config.json", "generation_config.json", "reference.json"):
        shutil.copy(os.path.join(src, f), os.path.join(out, f))
    t = load_file(os.path.join(src, "model.safetensors"))
    fused, experts = {}, {}
    for k, v in t.items():
        parts = k.split(".mlp.experts.")
        if len(parts) == 2 and parts[1].split(".")[0].isdigit():
            e, proj = parts[1].split(".")[:2]
            experts.setdefault(parts[0], {}).setdefault(proj, {})[int(e)] = v
        else:
            fused[k] = v
    for layer, projs in experts.items():
        n = len(projs["gate_proj"])
        stack = lambda p: torch.stack([projs[p][e] for e in range(n)])
        fused[f"{layer}.mlp.experts.gate_up_proj"] = torch.cat([stack("gate_proj"), stack("up_proj")], 1).contiguous()
        fused[f"{layer}.mlp.experts.down_proj"] = stack("down_proj").contiguous()
    save_file(fused, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    # transformers reads this layout as the same model: the same logits as reference.json.
    import json
    ref = json.load(open(os.path.join(out, "reference.json")))
    model = Qwen3_5MoeForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        last = model(torch.tensor([ref["prompt"]])).logits[0, -1]
    err = (last - torch.tensor(ref["last_logits"])).abs().max().item()
    assert err < 1e-5, f"transformers reads {out} differently: max |d| {err}"
    print("wrote", out, sorted(os.listdir(out)), f"(transformers reloads it: max |d| {err:.1e})")


def main():
    for spec in SPECS:
        write(**spec)
    write_fused("hf-qwen35moe-tiny", "hf-qwen35moe-fused")


if __name__ == "__main__":
    main()
