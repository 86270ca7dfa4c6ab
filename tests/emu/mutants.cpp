// The driver tests/emu_mutants.rs compiles, with the SIMT emulator (csrc/emu/), against a copy
// of csrc/ that is either intact or carries one deliberate bug. It runs real kernels on
// deterministic inputs and checks them against a double-precision reference:
//   mutants rmsnorm   rotary_rmsnorm: 64 rows of 1024 (a block reduction over 8 warps)
//   mutants gemv      gemv_launch<QuantF32, 4, 1> and <QuantF32, 4, 8>: 37 rows (not a
//                     multiple of the 4 rows per block) of 256, 1 and 11 tokens
// Prints one line and exits 0 (matches), 1 (wrong result) or 2 (a CUDA error, e.g. the
// emulator's report of an out-of-bounds access or a bad shuffle).
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "gemv.cuh"

extern "C" int rotary_rmsnorm(const RotaryRmsNorm *p, void *stream);

static int fail_cuda(const char *what, int code) {
    printf("error %s: %s\n", what, cudaGetErrorString(static_cast<cudaError_t>(code)));
    return 2;
}

// Deterministic values in [-1, 1).
static std::vector<float> values(size_t n, unsigned seed) {
    std::vector<float> v(n);
    unsigned s = seed * 2654435761u + 1;
    for (auto &x : v) {
        s = s * 1664525u + 1013904223u;
        x = static_cast<float>(s >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
    }
    return v;
}

static float *to_device(const std::vector<float> &h) {
    void *p = nullptr;
    if (cudaMalloc(&p, h.size() * sizeof(float)) != cudaSuccess) return nullptr;
    cudaMemcpyAsync(p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, nullptr);
    return static_cast<float *>(p);
}

static int compare(const char *what, const std::vector<float> &got, const std::vector<double> &want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double d = got[i] - want[i];
        num += isfinite(got[i]) ? d * d : 1e30;
        den += want[i] * want[i];
    }
    const double nmse = num / (den > 0 ? den : 1);
    printf("%s nmse %.3e\n", what, nmse);
    return nmse <= 1e-9 ? 0 : 1;
}

static int run_rmsnorm() {
    const int rows = 64, width = 1024;
    const std::vector<float> x = values(static_cast<size_t>(rows) * width, 1), w = values(width, 2);
    float *dx = to_device(x), *dw = to_device(w), *dy = to_device(std::vector<float>(x.size()));
    RotaryRmsNorm p{dx, dw, dy, rows, width, 1e-6f};
    int e = rotary_rmsnorm(&p, nullptr);
    if (e != 0) return fail_cuda("rotary_rmsnorm", e);
    std::vector<float> y(x.size());
    e = cudaMemcpyAsync(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost, nullptr);
    if (e == 0) e = cudaStreamSynchronize(nullptr);
    if (e != 0) return fail_cuda("rmsnorm", e);
    std::vector<double> want(x.size());
    for (int r = 0; r < rows; ++r) {
        double ss = 0;
        for (int i = 0; i < width; ++i) ss += static_cast<double>(x[r * width + i]) * x[r * width + i];
        const double inv = 1.0 / sqrt(ss / width + 1e-6);
        for (int i = 0; i < width; ++i) want[r * width + i] = x[r * width + i] * inv * w[i];
    }
    return compare("rmsnorm", y, want);
}

template <int NT>
static int run_gemv(int n_tokens) {
    const int rows = 37, cols = 256;
    const std::vector<float> w = values(static_cast<size_t>(rows) * cols, 3);
    const std::vector<float> x = values(static_cast<size_t>(n_tokens) * cols, 4);
    float *dw = to_device(w), *dx = to_device(x);
    float *dy = to_device(std::vector<float>(static_cast<size_t>(n_tokens) * rows));
    RotaryGemv p{ROTARY_QUANT_F32, dw, dx, dy, rows, cols, n_tokens};
    int e = gemv_launch<QuantF32, 4, NT>(p, nullptr);
    if (e != 0) return fail_cuda("gemv launch", e);
    std::vector<float> y(static_cast<size_t>(n_tokens) * rows);
    e = cudaMemcpyAsync(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost, nullptr);
    if (e == 0) e = cudaStreamSynchronize(nullptr);
    if (e != 0) return fail_cuda("gemv", e);
    std::vector<double> want(y.size());
    for (int t = 0; t < n_tokens; ++t) {
        for (int r = 0; r < rows; ++r) {
            double acc = 0;
            for (int c = 0; c < cols; ++c) acc += static_cast<double>(w[r * cols + c]) * x[t * cols + c];
            want[static_cast<size_t>(t) * rows + r] = acc;
        }
    }
    return compare(NT == 1 ? "gemv n=1" : "gemv n=11", y, want);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: mutants rmsnorm|gemv\n");
        return 64;
    }
    if (strcmp(argv[1], "rmsnorm") == 0) return run_rmsnorm();
    if (strcmp(argv[1], "gemv") == 0) {
        const int a = run_gemv<1>(1);
        if (a != 0) return a;
        return run_gemv<8>(11);
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 64;
}
