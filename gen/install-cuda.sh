#!/usr/bin/env bash
# Install the CUDA toolchain this project builds its kernels with, without a system CUDA:
# nvcc 13.0 (and the headers, cudart_static, NVVM, CCCL it needs) from NVIDIA's PyPI wheels into
# .cuda/ at the repository root (git-ignored; build.rs looks there), and libclang for bindgen.
# 13.0 matches the driver of the GPU machine we test on; a newer driver runs it too.
#
#   gen/install-cuda.sh            # then: cargo build --release
#
# A system CUDA toolkit (nvcc on PATH, $CUDA_HOME or /usr/local/cuda) is used instead when
# present; this script is then unnecessary. Set ROTARY_CUDA_DIR to install elsewhere (and
# NVCC=<dir>/nvidia/cu13/bin/nvcc when building).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${ROTARY_CUDA_DIR:-.cuda}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
if [ -x "$nvcc" ]; then
    echo "nvcc already installed: $nvcc"
else
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" \
        'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-runtime==13.0.*' \
        'nvidia-nvvm==13.0.*' 'nvidia-cuda-cccl==13.0.*'
fi
"$nvcc" --version | tail -2

# bindgen loads libclang at build time.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
    if command -v apt-get >/dev/null; then
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        $sudo apt-get install -y -qq libclang-dev >/dev/null
    else
        echo "install libclang (for bindgen) with your package manager" >&2
        exit 1
    fi
fi
echo "libclang: $(ls /usr/lib/llvm-*/lib/libclang.so* 2>/dev/null | head -1)"
