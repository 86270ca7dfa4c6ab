#!/usr/bin/env bash
# Everything the GPU issue asks for, for a machine with an NVIDIA GPU and no Rust: build here
# (`cargo build --release` with nvcc; ROTARY_CUDA_ARCH=90 for an H100/H200), carry
# target/release/rotary there, then run one part per command (each stays under 10 minutes).
# Results (JSON, logs, the sweep chart) go to $OUT (default ./gpu-out); models to $MODELS
# (default /tmp/rotary-models, never under $OUT: they are large).
#
#   bench/gpu_session.sh all       # ONE command, ends in < 9 min wall (guards it itself; for a
#                                  # lent machine with 15 min of device time in all): see below
#   bench/gpu_session.sh check     # selftest --perf --json; cuda vs cpu logits, streamed vs
#                                  # resident, on tiny and small
#   bench/gpu_session.sh paper     # 30B-A3B q4_k_m at 6.3 GiB: model and sticky:0.45, sweep
#   bench/gpu_session.sh paper35   # Qwen3.5-35B-A3B shape q4_k_m at 6.3 GiB: model, sticky:0.45
#   bench/gpu_session.sh peer SDIST  # llama.cpp -ngl 99 --n-cpu-moe N at 6.3 GiB (builds it)
#
# `all`, in order, each step under `timeout` with min(its cap, time left before DEADLINE_S=510
# after the start), skipped ("skipped: no time" in session.log) when less than MIN_STEP_S=15
# (or the step's whole cap, if smaller) is left.
# Estimates for one H200 (none measured yet; caps in brackets):
#   version, nvidia-smi, selftest --json (cuda, no --perf)        ~0.5 min [5 s, 10 s, 120 s]
#   synth qwen3-30b-a3b (~17 GB) and qwen35-35b-a3b (~21 GB) q4_k_m into $MODELS, in the
#     background from the start, in parallel (disk-bound)         ~1-3 min [360 s each]
#   tiny and qwen35-tiny q8_0: logits cpu, cuda, cuda -c 256, cuda streamed (15% of the
#     expert slots); cuda vs cpu and streamed vs resident compared ~0.5 min [60 s each]
#   bench --paper -n 512 --json at 6.3 GiB, --routing model and sticky:0.45, on the 30B then
#     the 35B (each gets at most an equal share of the time left) ~3-4 min [150 s each]
#   selftest --perf --json, only with time to spare              [<= 120 s]
# Then $OUT/summary.json: each step's name, rc ("skipped" when not run), seconds, and its key
# numbers (paper: tok/s, hit rate, H2D bytes/token, ...; logits: top-1 agreement and NMSE);
# per-step timings in session.log. $OUT stays small (no models; last-position logits dropped).
# Dry run without a GPU (a CPU build; sim instead of cuda, small presets, short runs):
#   BACKEND=sim PAPER_PRESETS="small qwen35-small" PAPER_N=32 bench/gpu_session.sh all
# Overrides: ROTARY, OUT, MODELS, BACKEND (cuda), SELFTEST_BACKEND (cuda; cpu under sim),
# PAPER_PRESETS ("qwen3-30b-a3b qwen35-35b-a3b"), PAPER_N (512), PAPER_VRAM (6.3GiB),
# CHECK_PRESETS ("tiny qwen35-tiny"), DEADLINE_S (510), MIN_STEP_S (15).
set -uo pipefail
cd "$(dirname "$0")/.."
R=${ROTARY:-./target/release/rotary}
OUT=${OUT:-gpu-out}
MODELS=${MODELS:-/tmp/rotary-models}
mkdir -p "$OUT" "$MODELS"
PROMPT="The history of the lighthouse begins with"
BACKEND=${BACKEND:-cuda}

run() { # name, command...: log stdout/stderr, keep going on failure, record the exit code
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/session.log"
    "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    echo "rc=$? $name" | tee -a "$OUT/session.log"
}

model() { # preset quant: synthesize once
    local f="$MODELS/$1-$2.gguf"
    [ -f "$f" ] || "$R" synth --preset "$1" --quant "$2" -o "$f" 2>> "$OUT/synth.log"
    echo "$f"
}

compare() { # a.json b.json label: NMSE of all logits' top lists and top-1 agreement; one JSON
    # line per comparison in $OUT/compare.jsonl (for summary.json)
    python3 - "$1" "$2" "$3" "$OUT/compare.jsonl" <<'PY' | tee -a "$OUT/session.log"
import json, sys
try:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
    pa, pb = a["positions"], b["positions"]
except (OSError, ValueError, KeyError) as e:
    print(f"{sys.argv[3]}: cannot compare ({e})")
    sys.exit(0)
agree = sum(x["top"][0][0] == y["top"][0][0] for x, y in zip(pa, pb))
num = sum((x["top"][0][1] - y["top"][0][1]) ** 2 for x, y in zip(pa, pb))
den = sum(y["top"][0][1] ** 2 for y in pb) or 1.0
la, lb = a.get("last_logits"), b.get("last_logits")
full = sum((x - y) ** 2 for x, y in zip(la, lb)) / (sum(y * y for y in lb) or 1.0) if la and lb else None
print(f"{sys.argv[3]}: top-1 agree {agree}/{len(pa)}, top-1 logit NMSE {num / den:.2e}, last-position NMSE {full}")
with open(sys.argv[4], "a") as f:
    f.write(json.dumps({"label": sys.argv[3], "top1_agree": agree, "positions": len(pa),
                        "top1_logit_nmse": num / den, "last_position_nmse": full}) + "\n")
PY
}

streamed_budget() { # resident.err: a --vram-budget for that run's plan minus all but 15% of its
    # expert slots (at least 2); nothing when the plan is not in the file
    python3 - "$1" 2>/dev/null <<'PY'
import re, sys
units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
text = open(sys.argv[1]).read()
size = lambda m: float(m.group(1)) * units[m.group(2)]
total = size(re.search(r"total\s+([\d.]+) (\w+)", text))
m = re.search(r"expert cache\s+([\d.]+) (\w+)\s+= (\d+) slots of ([\d.]+) (\w+)", text)
cache, slots = float(m.group(1)) * units[m.group(2)], int(m.group(3))
slot = float(m.group(4)) * units[m.group(5)]
print(int(total - cache + max(2, int(0.15 * slots)) * slot + slot))
PY
}

# --- `all`: every step under `timeout`, within DEADLINE_S of the start ----------------------
T0=$(date +%s)
DEADLINE_S=${DEADLINE_S:-510}
MIN_STEP_S=${MIN_STEP_S:-15}
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }

skip() { # name why: log and record a step that did not run
    echo "-- $1: skipped: $2" | tee -a "$OUT/session.log"
    printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >> "$OUT/steps.tsv"
}

step() { # name cap command...: run under timeout min(cap, time left), or skip when too little
    # is left; stdout/stderr to $OUT/name.out/.err; one line per step in steps.tsv
    local name=$1 cap=$2 t0 t1 rc; shift 2
    local rest need; rest=$(left)
    need=$(( cap < MIN_STEP_S ? cap : MIN_STEP_S ))
    (( rest < cap )) && cap=$rest
    if (( rest < need )); then
        skip "$name" "no time (${rest}s left)"
        return 1
    fi
    echo "== $name [cap ${cap}s, at $(( $(date +%s) - T0 ))s]: $*" | tee -a "$OUT/session.log"
    t0=$(date +%s%N)
    timeout -k 5 "$cap" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    rc=$?
    t1=$(date +%s%N)
    local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    local note=""
    (( rc == 124 || rc == 137 )) && note="timed out after ${cap}s"
    echo "rc=$rc $name ${secs}s${note:+ ($note)}" | tee -a "$OUT/session.log"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "$cap" "$note" >> "$OUT/steps.tsv"
    return $rc
}

drop_last_logits() { # file...: replace the whole last-position logit vector by its length
    python3 - "$@" <<'PY'
import json, sys
for path in sys.argv[1:]:
    try:
        v = json.load(open(path))
    except (OSError, ValueError):
        continue
    if isinstance(v, dict) and "last_logits" in v:
        v["last_logits_len"] = len(v.pop("last_logits") or [])
        json.dump(v, open(path, "w"))
PY
}

case "${1:-}" in
all)
    # A fresh $OUT/steps.tsv and compare.jsonl: summary.json describes this session only.
    rm -f "$OUT/steps.tsv" "$OUT/compare.jsonl"
    echo "== all: $(date -u +%FT%TZ), deadline ${DEADLINE_S}s, backend $BACKEND, $R" | tee -a "$OUT/session.log"
    [ "$BACKEND" = sim ] && st_backend=cpu || st_backend=$BACKEND
    st_backend=${SELFTEST_BACKEND:-$st_backend}
    quant=q4_k_m
    read -r p30 p35 <<< "${PAPER_PRESETS:-qwen3-30b-a3b qwen35-35b-a3b}"
    # The big models first, in the background: disk-bound, they overlap everything below.
    declare -A synth_pid
    for p in $p30 $p35; do
        f="$MODELS/$p-$quant.gguf"
        if [ -f "$f" ]; then
            echo "-- synth-$p: cached $f" | tee -a "$OUT/session.log"
        else
            step "synth-$p" 360 "$R" synth --preset "$p" --quant "$quant" -o "$f" &
            synth_pid[$p]=$!
        fi
    done
    step version 10 "$R" --version
    step nvidia-smi 10 nvidia-smi
    step gpu 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,pcie.link.gen.max,pcie.link.width.max --format=csv
    step selftest 120 "$R" selftest --backend "$st_backend" --json
    for p in ${CHECK_PRESETS:-tiny qwen35-tiny}; do
        m="$MODELS/$p-q8_0.gguf"
        [ -f "$m" ] || step "synth-$p" 60 "$R" synth --preset "$p" --quant q8_0 -o "$m"
        [ -f "$m" ] || { skip "logits-$p" "no model $m"; continue; }
        b=$BACKEND
        step "logits-$p-cpu" 60 "$R" logits -m "$m" --backend cpu -p "$PROMPT" --json --full-last
        step "logits-$p-$b" 60 "$R" logits -m "$m" --backend "$b" -p "$PROMPT" --json --full-last
        step "logits-$p-$b-c256" 60 "$R" logits -m "$m" --backend "$b" -c 256 -p "$PROMPT" --json --full-last
        budget=$(streamed_budget "$OUT/logits-$p-$b-c256.err")
        if [ -n "$budget" ]; then
            step "logits-$p-$b-streamed" 60 "$R" logits -m "$m" --backend "$b" -c 256 --vram-budget "$budget" -p "$PROMPT" --json --full-last
        else
            skip "logits-$p-$b-streamed" "no plan in logits-$p-$b-c256.err"
        fi
        compare "$OUT/logits-$p-$b.out" "$OUT/logits-$p-cpu.out" "$p $b vs cpu"
        compare "$OUT/logits-$p-$b-streamed.out" "$OUT/logits-$p-$b-c256.out" "$p $b streamed vs resident"
        drop_last_logits "$OUT"/logits-"$p"-*.out
    done
    # The paper runs: each at most an equal share of the time left, so a slow first run cannot
    # starve the 35B. A model still being synthesized is waited for (its synth has a timeout).
    n_left=4
    for p in $p30 $p35; do
        if [ -n "${synth_pid[$p]:-}" ] && kill -0 "${synth_pid[$p]}" 2>/dev/null; then
            echo "-- waiting for synth-$p ($(left)s left)" | tee -a "$OUT/session.log"
            wait "${synth_pid[$p]}"
        fi
        f="$MODELS/$p-$quant.gguf"
        for routing in model sticky:0.45; do
            name="paper-$p-${routing/:/}"
            if [ ! -f "$f" ]; then
                skip "$name" "no model $f"
            else
                rest=$(left)
                share=$(( rest / n_left ))
                (( share > 150 )) && share=150
                (( share < MIN_STEP_S )) && share=$MIN_STEP_S # step() still stops at the deadline
                for q in $p30 $p35; do # say so when a synthesis is still writing beside the run
                    pid=${synth_pid[$q]:-}
                    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "-- $name: synth-$q still running beside it" | tee -a "$OUT/session.log"
                done
                step "$name" "$share" "$R" bench --paper -m "$f" --backend "$BACKEND" --vram-budget "${PAPER_VRAM:-6.3GiB}" --routing "$routing" -n "${PAPER_N:-512}" --json
            fi
            n_left=$(( n_left - 1 ))
        done
    done
    # Only with time to spare: the timed large shapes.
    if (( $(left) >= 60 + MIN_STEP_S )); then
        step selftest-perf $(( $(left) - 10 < 120 ? $(left) - 10 : 120 )) "$R" selftest --backend "$st_backend" --perf --json
    else
        skip selftest-perf "no time to spare ($(left)s left)"
    fi
    wait
    python3 - "$OUT" "$T0" "$DEADLINE_S" "$BACKEND" "$R" <<'PY' | tee -a "$OUT/session.log"
import json, os, sys, time
out, t0, deadline, backend, rotary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
PAPER = ["decode_tok_s", "prefill_tok_s", "n_prompt", "n_decode", "latency_ms_p50", "latency_ms_p99",
         "hit_rate", "h2d_bytes_per_token", "link_gbps", "prefetch_recall", "cpu_expert_share",
         "misses_per_layer_token", "peak_vram_bytes", "vram_budget_bytes", "pinned_bytes",
         "peak_rss_bytes", "routing", "backend", "device", "note"]

def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".out")))
    except (OSError, ValueError):
        return None

def first_lines(name, n, ext=".out"):
    try:
        return [l.rstrip() for l in open(os.path.join(out, name + ext)).readlines()[:n]]
    except OSError:
        return []

steps = []
for line in open(os.path.join(out, "steps.tsv")):
    name, rc, secs, cap, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
    s = {"name": name, "rc": rc if rc == "skipped" else int(rc), "seconds": float(secs), "cap_s": int(cap)}
    if note:
        s["note"] = note
    v = load(name) if rc != "skipped" else None
    if name.startswith("paper-") and isinstance(v, dict):
        s.update({k: v.get(k) for k in PAPER})
        proj = v.get("laptop_projection") or {}
        s["laptop_overlap_tok_s"] = proj.get("overlap_tok_s")
    elif name.startswith("selftest") and isinstance(v, dict):
        cases = v.get("cases", [])
        counts = {}
        for c in cases:
            counts[c.get("status")] = counts.get(c.get("status"), 0) + 1
        s["device"], s["peak_gbps"], s["cases"] = v.get("device"), v.get("peak_gbps"), counts
        bad = [c for c in cases if c.get("status") not in ("pass", "skip")]
        s["not_passed"] = [{k: c.get(k) for k in ("op", "quant", "shape", "status", "nmse", "note")} for c in bad[:20]]
        if "gbps" in json.dumps(cases):
            s["gbps_best"] = max((c["gbps"] for c in cases if c.get("gbps")), default=None)
    elif name in ("version", "gpu"):
        s["text"] = first_lines(name, 4)
    elif name.startswith("synth-") and rc != "skipped":
        s["text"] = first_lines(name, 2, ".err")  # "wrote F (N bytes, ...) in S s: R MB/s"
    steps.append(s)
compares = [json.loads(l) for l in open(os.path.join(out, "compare.jsonl"))] if os.path.exists(os.path.join(out, "compare.jsonl")) else []
summary = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "deadline_s": deadline,
           "wall_s": int(time.time()) - t0, "backend": backend, "rotary": rotary,
           "steps": steps, "compares": compares}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
bad = [s["name"] for s in steps if s["rc"] != 0]
print(f"summary.json: {len(steps)} steps, {len(bad)} not ok {bad}, wall {summary['wall_s']}s")
PY
    ;;
paper35)
    m=$(model qwen35-35b-a3b q4_k_m)
    for routing in model sticky:0.45; do
        run "paper35-${routing/:/}" "$R" bench --paper -m "$m" --backend cuda --vram-budget 6.3GiB --routing "$routing" -n 512 --json
    done
    ;;
check)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    "$R" --version > "$OUT/version.txt"
    run selftest "$R" selftest --backend cuda --perf --json
    for spec in "tiny q8_0" "small q4_k_m" "qwen35-tiny q8_0"; do
        set -- $spec
        m=$(model "$1" "$2")
        run "logits-$1-cpu" "$R" logits -m "$m" --backend cpu -p "$PROMPT" --json --full-last
        run "logits-$1-cuda" "$R" logits -m "$m" --backend cuda -p "$PROMPT" --json --full-last
        run "logits-$1-sim" "$R" logits -m "$m" --backend sim -c 256 -p "$PROMPT" --json --full-last
        run "logits-$1-cuda-c256" "$R" logits -m "$m" --backend cuda -c 256 -p "$PROMPT" --json --full-last
        # Streamed: the resident run's plan (stderr) minus all but 15% of its expert slots.
        budget=$(streamed_budget "$OUT/logits-$1-cuda-c256.err")
        run "logits-$1-cuda-streamed" "$R" logits -m "$m" --backend cuda -c 256 --vram-budget "$budget" -p "$PROMPT" --json --full-last
        compare "$OUT/logits-$1-cuda.out" "$OUT/logits-$1-cpu.out" "$1 cuda vs cpu"
        compare "$OUT/logits-$1-cuda-streamed.out" "$OUT/logits-$1-cuda-c256.out" "$1 cuda streamed vs resident"
        run "run-$1-cuda" "$R" run -m "$m" --backend cuda -n 64 --temp 0 -p "$PROMPT"
        run "run-$1-cpu" "$R" run -m "$m" --backend cpu -n 64 --temp 0 -p "$PROMPT"
        cmp -s "$OUT/run-$1-cuda.out" "$OUT/run-$1-cpu.out" && echo "$1: greedy text identical" | tee -a "$OUT/session.log" \
            || echo "$1: greedy text differs (see run-$1-*.out)" | tee -a "$OUT/session.log"
        run "bench-$1-cuda" "$R" bench -m "$m" --backend cuda --json
    done
    ;;
paper)
    m=$(model qwen3-30b-a3b q4_k_m)
    run inspect-30b "$R" inspect "$m" --vram-budget 6.3GiB
    for routing in model sticky:0.45; do
        run "paper-30b-6.3-${routing/:/}" "$R" bench --paper -m "$m" --backend cuda --vram-budget 6.3GiB --routing "$routing" --json
    done
    run sweep-30b "$R" bench --paper -m "$m" --backend cuda --routing sticky:0.45 -n 256 \
        --sweep vram=4,5,6.3,8,12GiB --plot "$OUT/sweep-30b.svg"
    ;;
peer)
    m=$(model qwen3-30b-a3b q4_k_m)
    run llama-ncmoe bench/llama_gpu_ncmoe.sh "$m" 6.3 2048 "${2:?the llama-cpp-python sdist (no network there)}"
    ;;
*)
    sed -n '2,35p' "$0"
    exit 2
    ;;
esac
