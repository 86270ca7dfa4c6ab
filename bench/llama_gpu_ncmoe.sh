#!/usr/bin/env bash
# llama.cpp's best `-ngl 99 --n-cpu-moe N` under a VRAM budget, on the GPU machine (unverified:
# no GPU has been available to this project yet). Builds llama.cpp with CUDA from the source
# that ships in the llama-cpp-python sdist (no network needed beyond that file), then for
# N = 0, 1, ... runs llama-bench once, reads the peak memory with nvidia-smi while it runs, and
# keeps the smallest N whose peak fits the budget; prints that run's decode tok/s.
#
#   bench/llama_gpu_ncmoe.sh MODEL.gguf 6.3 [N_DECODE=2048] [SDIST=llama_cpp_python-0.3.36.tar.gz]
set -euo pipefail
model="$1"; budget_gib="$2"; n="${3:-2048}"; sdist="${4:-llama_cpp_python-0.3.36.tar.gz}"
work="${TMPDIR:-/tmp}/llama-gpu"
mkdir -p "$work"
if [ ! -x "$work/build/bin/llama-bench" ]; then
    tar -xzf "$sdist" -C "$work"
    src=$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp)
    cmake -S "$src" -B "$work/build" -DGGML_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF >/dev/null
    cmake --build "$work/build" -j --target llama-bench >/dev/null
fi
budget_mib=$(python3 -c "print(int($budget_gib * 1024))")
layers=$(python3 - "$model" <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
print(int(r.fields[f"{arch}.block_count"].parts[-1][0]))
PY
)
for ((ncmoe = 0; ncmoe <= layers; ncmoe++)); do
    peak=0
    "$work/build/bin/llama-bench" -m "$model" -ngl 99 --n-cpu-moe "$ncmoe" -p 16 -n "$n" -r 1 -o json \
        > "$work/run.json" 2> "$work/run.err" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        [ "$used" -gt "$peak" ] && peak=$used
        sleep 0.2
    done
    if wait "$pid" && [ "$peak" -le "$budget_mib" ]; then
        tg=$(python3 -c "import json; r=json.load(open('$work/run.json')); print([x for x in r if x['n_gen']>0][0]['avg_ts'])")
        echo "{\"n_cpu_moe\": $ncmoe, \"peak_vram_mib\": $peak, \"budget_mib\": $budget_mib, \"decode_tok_s\": $tg}"
        exit 0
    fi
    echo "n-cpu-moe $ncmoe: peak $peak MiB over $budget_mib MiB (or failed)" >&2
done
echo "no --n-cpu-moe fits $budget_gib GiB" >&2
exit 1
