#!/usr/bin/env bash
# A/B speed of two rotary binaries on one model, interleaved in one run (the machines are
# noisy: compare in one run, repeat, report min and median).
#
#   bench/ab.sh OLD_BINARY NEW_BINARY MODEL.gguf [ROUNDS=5] [THREADS=2] [BACKEND=cpu]
#
# Each round runs `rotary bench -p 512 -n 128 -r 3` with OLD then NEW (alternating which goes
# first), and prints pp512 and tg128 tok/s of both; the end prints per test the min and median
# of each binary and the median of the per-round ratios NEW/OLD.
set -euo pipefail
old=$1 new=$2 model=$3 rounds=${4:-5} threads=${5:-2} backend=${6:-cpu}
run() { "$1" bench -m "$model" -p 512 -n 128 -r 3 -t "$threads" --backend "$backend" --json 2>/dev/null; }
out=$(mktemp)
for i in $(seq "$rounds"); do
    if [ $((i % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for which in $order; do
        bin=$old; [ "$which" = new ] && bin=$new
        echo "$i $which $(run "$bin" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["pp_tok_s"], d["tg_tok_s"])')" | tee -a "$out"
    done
done
python3 - "$out" <<'PY'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for i, which, pp, tg in rows:
    by.setdefault(which, {}).setdefault(int(i), (float(pp), float(tg)))
for t, name in [(0, "pp512"), (1, "tg128")]:
    o = [v[t] for v in by["old"].values()]
    n = [v[t] for v in by["new"].values()]
    ratios = [by["new"][i][t] / by["old"][i][t] for i in by["old"]]
    print(f"{name}: old min {min(o):.2f} median {st.median(o):.2f} | new min {min(n):.2f} "
          f"median {st.median(n):.2f} | new/old per round median {st.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
PY
rm -f "$out"
