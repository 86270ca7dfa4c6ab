#!/usr/bin/env python3
"""Compare two `rotary logits --json --full-last` outputs (standard library only).

    tests/compare_logits.py GOT.json WANT.json [--max-nmse 5e-4] [--margin 0.05] [--label NAME]

Checks, and prints one line: the last position's full logits agree within NMSE, and the top-1
token agrees at every position where WANT's top-1 leads its runner-up by more than the margin
(a "clear" position). Exit 1 when either fails. Used by .ci/run (emulated CUDA vs CPU) and
bench/gpu_session.sh (a real GPU vs CPU).
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("got")
    ap.add_argument("want")
    ap.add_argument("--max-nmse", type=float, default=5e-4)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    got, want = (json.load(open(p)) for p in (a.got, a.want))
    if got["tokens"] != want["tokens"]:
        sys.exit(f"{a.label}: the two runs tokenized differently")
    pg, pw = got["positions"], want["positions"]
    clear = [i for i, p in enumerate(pw) if len(p["top"]) > 1 and p["top"][0][1] - p["top"][1][1] > a.margin]
    agree = sum(pg[i]["top"][0][0] == pw[i]["top"][0][0] for i in clear)
    lg, lw = got.get("last_logits"), want.get("last_logits")
    if not lg or not lw or len(lg) != len(lw):
        sys.exit(f"{a.label}: last_logits missing (run with --full-last)")
    nmse = sum((x - y) ** 2 for x, y in zip(lg, lw)) / (sum(y * y for y in lw) or 1.0)
    ok = nmse <= a.max_nmse and agree == len(clear)
    print(f"{a.label}: last-position NMSE {nmse:.2e} (max {a.max_nmse:g}), top-1 agrees at "
          f"{agree}/{len(clear)} clear positions (margin > {a.margin}) of {len(pw)}: "
          f"{'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
