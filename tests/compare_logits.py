#!/usr/bin/env python3
"""Compare two `rotary logits --json --full-last` outputs (standard library only).

    tests/compare_logits.py GOT.json WANT.json [--max-nmse 5e-4] [--margin 0.05] [--label NAME]
                            [--no-worse-than OTHER.json]

Checks, and prints one line: the last position's full logits agree within NMSE, and the top-1
token agrees at every position where WANT's top-1 leads its runner-up by more than the margin
(a "clear" position). With --no-worse-than, GOT only has to be as close to WANT as OTHER is
(NMSE within 1.5x of OTHER's, top-1 at as many clear positions): for a reference that is
itself approximate, such as the `cpu` backend's 8-bit activations. Exit 1 when a check fails.
Used by .ci/run (emulated CUDA vs cpu-ref and cpu).
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
    ap.add_argument("--no-worse-than")
    a = ap.parse_args()
    got, want = (json.load(open(p)) for p in (a.got, a.want))
    nmse, agree, clear = measure(got, want, a)
    if a.no_worse_than:
        o_nmse, o_agree, _ = measure(json.load(open(a.no_worse_than)), want, a)
        ok = nmse <= 1.5 * o_nmse + 1e-12 and agree >= o_agree
        print(f"{a.label}: last-position NMSE {nmse:.2e} (the other reference: {o_nmse:.2e}), top-1 "
              f"agrees at {agree}/{len(clear)} clear positions (the other: {o_agree}): "
              f"{'ok' if ok else 'FAIL'}")
        sys.exit(0 if ok else 1)
    ok = nmse <= a.max_nmse and agree == len(clear)
    print(f"{a.label}: last-position NMSE {nmse:.2e} (max {a.max_nmse:g}), top-1 agrees at "
          f"{agree}/{len(clear)} clear positions (margin > {a.margin}) of {len(want['positions'])}: "
          f"{'ok' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


def measure(got, want, a):
    """(last-position NMSE, top-1 agreements at clear positions, the clear positions)."""
    if got["tokens"] != want["tokens"]:
        sys.exit(f"{a.label}: the two runs tokenized differently")
    pg, pw = got["positions"], want["positions"]
    clear = [i for i, p in enumerate(pw) if len(p["top"]) > 1 and p["top"][0][1] - p["top"][1][1] > a.margin]
    agree = sum(pg[i]["top"][0][0] == pw[i]["top"][0][0] for i in clear)
    lg, lw = got.get("last_logits"), want.get("last_logits")
    if not lg or not lw or len(lg) != len(lw):
        sys.exit(f"{a.label}: last_logits missing (run with --full-last)")
    nmse = sum((x - y) ** 2 for x, y in zip(lg, lw)) / (sum(y * y for y in lw) or 1.0)
    return nmse, agree, clear


if __name__ == "__main__":
    main()
