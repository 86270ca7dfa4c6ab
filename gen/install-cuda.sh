#!/usr/bin/env bash
# Install the CUDA toolchain this project builds its kernels with, without a system CUDA:
# nvcc 13.0 (and the headers, cudart_static, NVVM, CCCL it needs) from NVIDIA's PyPI wheels into
# .cuda/ at the repository root (git-ignored; build.rs looks there), and libclang for bindgen:
# gen/find-libclang.py says which libclang bindgen would load; when none, apt-get update and
# apt-get install libclang-dev (sudo when not root), then ask again.
# 13.0 matches the driver of the GPU machine we test on; a newer driver runs it too.
#
#   gen/install-cuda.sh            # then: cargo build --release
#
# A system CUDA toolkit (nvcc on PATH, $CUDA_HOME or /usr/local/cuda) is used instead when
# present; this script is then unnecessary. Set ROTARY_CUDA_DIR to install elsewhere (and
# NVCC=<dir>/nvidia/cu13/bin/nvcc when building). ROTARY_LIBCLANG_SEARCH="dir1:dir2" limits
# where libclang is looked for (tests use it with fake trees).
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

# bindgen loads libclang (the C library, not Debian's libclang-cpp) at build time: ask
# gen/find-libclang.py what bindgen's loader would find and open; install libclang-dev if nothing.
if lib=$(python3 gen/find-libclang.py); then
    echo "libclang: $lib"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: libclang (for bindgen) not found and no apt-get here: install libclang with" \
        "your package manager, or set LIBCLANG_PATH to the folder holding libclang.so" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: installing libclang-dev needs root or sudo" >&2; exit 1; }
    sudo="sudo"
fi
echo "libclang not found: apt-get update && apt-get install libclang-dev"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
if ! lib=$(python3 gen/find-libclang.py); then
    echo "error: libclang-dev installed but bindgen still cannot load libclang (see above);" \
        "set LIBCLANG_PATH to the folder holding libclang.so" >&2
    exit 1
fi
echo "libclang: $lib (installed libclang-dev)"
