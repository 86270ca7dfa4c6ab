#!/usr/bin/env bash
# Everything the GPU issue asks for, for a machine with an NVIDIA GPU and no Rust: build here
# (`cargo build --release` with nvcc; ROTARY_CUDA_ARCH=90 for an H100), carry
# target/release/rotary there, then run one part per command (each stays under 10 minutes).
# Results (JSON, logs, the sweep chart) go to $OUT (default ./gpu-out); models to $MODELS
# (default /tmp/rotary-models, never under $OUT: they are large).
#
#   bench/gpu_session.sh check     # selftest --perf --json; cuda vs cpu logits, streamed vs
#                                  # resident, on tiny and small
#   bench/gpu_session.sh paper     # 30B-A3B q4_k_m at 6.3 GiB: model and sticky:0.45, sweep
#   bench/gpu_session.sh paper35   # Qwen3.5-35B-A3B shape q4_k_m at 6.3 GiB: model, sticky:0.45
#   bench/gpu_session.sh peer SDIST  # llama.cpp -ngl 99 --n-cpu-moe N at 6.3 GiB (builds it)
set -uo pipefail
cd "$(dirname "$0")/.."
R=${ROTARY:-./target/release/rotary}
OUT=${OUT:-gpu-out}
MODELS=${MODELS:-/tmp/rotary-models}
mkdir -p "$OUT" "$MODELS"
PROMPT="The history of the lighthouse begins with"

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

compare() { # a.json b.json label: NMSE of all logits' top lists and top-1 agreement
    python3 - "$1" "$2" "$3" <<'PY' | tee -a "$OUT/session.log"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
pa, pb = a["positions"], b["positions"]
agree = sum(x["top"][0][0] == y["top"][0][0] for x, y in zip(pa, pb))
num = sum((x["top"][0][1] - y["top"][0][1]) ** 2 for x, y in zip(pa, pb))
den = sum(y["top"][0][1] ** 2 for y in pb) or 1.0
la, lb = a.get("last_logits"), b.get("last_logits")
full = sum((x - y) ** 2 for x, y in zip(la, lb)) / (sum(y * y for y in lb) or 1.0) if la and lb else None
print(f"{sys.argv[3]}: top-1 agree {agree}/{len(pa)}, top-1 logit NMSE {num / den:.2e}, last-position NMSE {full}")
PY
}

case "${1:-}" in
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
        budget=$(python3 - "$OUT/logits-$1-cuda-c256.err" <<'PY'
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
)
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
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
