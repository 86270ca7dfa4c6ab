// The driver tests/emu_mutants.rs compiles against the emulated runtime (csrc/emu/) to show that
// each of its strict behaviours bites: every mode runs a program that misuses the runtime the
// way a real GPU would punish, checks that the emulator reports it, and where there is one runs
// the correct twin, which must pass. Settings come from the environment the test sets per mode.
//   runtime last-error    cudaEventQuery / cudaEventElapsedTime on a copy in flight leave
//                         cudaErrorNotReady as the last error: the next launcher reports it;
//                         rotary_event_query (csrc/runtime.cu) leaves none
//   runtime events        live events are counted, timing and sync-only apart; a sync-only
//                         event cannot be timed
//   runtime memory        2 MiB pages for large allocations, shared chunks for small ones;
//                         a kernel's first launch charges its code, the second nothing
//   runtime spill         a spilling kernel's first launch reserves local memory for every
//                         thread the device holds (ROTARY_EMU_SPILL)
//   runtime launch-oom    a first launch whose code does not fit fails the launch
//   runtime shared-link   a small copy queued behind a large one on another stream waits for it
//   runtime pinned-reuse  a pinned source written before its copy ends: a sticky error
//   runtime pinned-wait   the same, waiting for the copy first: no error
//   runtime other-device  work on a stream of device 1 while device 0 is current is refused
// Prints one line per check and exits 0 when every check holds, 1 otherwise.
#include <stdio.h>
#include <string.h>

#include <chrono>
#include <thread>
#include <vector>

#include "abi.h"
#include "emu.h"

static int g_failed = 0;

static void expect(bool ok, const char *what) {
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) g_failed = 1;
}

static void *device_buffer(size_t bytes) {
    void *p = nullptr;
    return cudaMalloc(&p, bytes) == cudaSuccess ? p : nullptr;
}

static size_t free_bytes() {
    size_t f = 0, t = 0;
    cudaMemGetInfo(&f, &t);
    return f;
}

// A 4-row rmsnorm on `stream`: the launcher's return code (its cudaGetLastError).
struct Norm {
    float *x, *w, *y;
    Norm() {
        x = static_cast<float *>(device_buffer(4 * 64 * sizeof(float)));
        w = static_cast<float *>(device_buffer(64 * sizeof(float)));
        y = static_cast<float *>(device_buffer(4 * 64 * sizeof(float)));
    }
    int launch(cudaStream_t stream) {
        RotaryRmsNorm p{x, w, y, 4, 64, 1e-6f};
        return rotary_rmsnorm(&p, stream);
    }
};

// A pinned source of `bytes` copied to the device on `stream` (slow: ROTARY_EMU_LINK_GBPS).
struct Copy {
    char *host = nullptr;
    void *dev = nullptr;
    size_t bytes;
    explicit Copy(size_t n) : bytes(n) {
        cudaHostAlloc(reinterpret_cast<void **>(&host), n, 0);
        memset(host, 7, n);
        dev = device_buffer(n);
    }
    cudaError_t start(cudaStream_t stream) {
        return cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream);
    }
};

static int last_error() {
    cudaStream_t s, other;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking);
    Norm norm;
    Copy copy(4 << 20);
    cudaEvent_t start, end;
    cudaEventCreate(&start);
    cudaEventCreate(&end);

    cudaEventRecord(start, s);
    copy.start(s);
    cudaEventRecord(end, s);
    expect(cudaEventQuery(end) == cudaErrorNotReady, "cudaEventQuery on a copy in flight: not ready");
    expect(norm.launch(other) == cudaErrorNotReady, "the next launch reports the leftover cudaErrorNotReady");
    expect(norm.launch(other) == cudaSuccess, "cudaGetLastError cleared it: the launch after succeeds");
    cudaStreamSynchronize(s);

    cudaEventRecord(start, s);
    copy.start(s);
    cudaEventRecord(end, s);
    float ms = 0;
    expect(cudaEventElapsedTime(&ms, start, end) == cudaErrorNotReady, "cudaEventElapsedTime in flight: not ready");
    expect(norm.launch(other) == cudaErrorNotReady, "the next launch reports it too");
    cudaStreamSynchronize(s);

    cudaEventRecord(start, s);
    copy.start(s);
    cudaEventRecord(end, s);
    expect(rotary_event_query(end) == ROTARY_NOT_READY, "rotary_event_query in flight: not ready");
    expect(norm.launch(other) == cudaSuccess, "and no leftover: the next launch succeeds");
    cudaStreamSynchronize(s);
    expect(cudaEventElapsedTime(&ms, start, end) == cudaSuccess && ms > 0, "timed once complete");
    return g_failed;
}

static int events() {
    RotaryEmuStats before, mid, after;
    rotary_emu_stats(0, &before);
    cudaEvent_t e[5];
    for (int i = 0; i < 3; ++i) cudaEventCreate(&e[i]);
    for (int i = 3; i < 5; ++i) cudaEventCreateWithFlags(&e[i], cudaEventDisableTiming);
    rotary_emu_stats(0, &mid);
    expect(mid.live_events - before.live_events == 5, "5 live events counted");
    expect(mid.live_timing_events - before.live_timing_events == 3, "3 of them timing");
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEventRecord(e[3], s);
    cudaEventRecord(e[4], s);
    cudaStreamSynchronize(s);
    float ms = 0;
    expect(cudaEventElapsedTime(&ms, e[3], e[4]) == cudaErrorInvalidResourceHandle,
           "a sync-only event cannot be timed");
    cudaGetLastError();
    for (auto ev : e) cudaEventDestroy(ev);
    rotary_emu_stats(0, &after);
    expect(after.live_events == before.live_events, "destroyed: none left");
    return g_failed;
}

static int memory() {
    const size_t mib = size_t(1) << 20;
    size_t f0 = free_bytes();
    void *big = device_buffer(3 * mib + 1);
    size_t f1 = free_bytes();
    expect(f0 - f1 == 4 * mib, "3 MiB + 1 byte takes two 2 MiB pages");
    std::vector<void *> small;
    for (int i = 0; i < 1000; ++i) small.push_back(device_buffer(1024));
    size_t f2 = free_bytes();
    expect(f1 - f2 == 2 * mib, "1000 allocations of 1 KiB share one 2 MiB chunk");
    void *more = device_buffer(2 * mib / 4 * 3);  // 1.5 MiB: over the small limit
    expect(free_bytes() == f2 - 2 * mib, "1.5 MiB takes one page of its own");
    for (void *p : small) cudaFree(p);
    expect(free_bytes() == f2, "the chunk is given back with its last allocation");
    cudaFree(more);
    cudaFree(big);
    expect(free_bytes() == f0, "everything given back");

    Norm norm;
    const size_t before = free_bytes();
    expect(norm.launch(nullptr) == cudaSuccess, "first launch");
    const size_t after_first = free_bytes();
    expect(before - after_first == 2 * mib, "the first launch loads the kernel's code: one 2 MiB page");
    norm.launch(nullptr);
    expect(free_bytes() == after_first, "the second launch loads nothing");
    cudaDeviceSynchronize();
    return g_failed;
}

static int spill() {
    Norm norm;
    const size_t before = free_bytes();
    expect(norm.launch(nullptr) == cudaSuccess, "first launch of a kernel with a 256-byte frame");
    const size_t local = (size_t(256) * 24 * 1536 + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    printf("charged %zu bytes (code 2 MiB + local %zu)\n", before - free_bytes(), local);
    expect(before - free_bytes() == local + (2u << 20), "local memory for 24 SMs x 1536 threads, plus the code");
    cudaDeviceSynchronize();
    return g_failed;
}

static int launch_oom() {
    Norm norm;
    size_t rest = free_bytes();
    void *fill = device_buffer(rest);  // a multiple of 2 MiB: takes all that is left
    expect(fill != nullptr && free_bytes() == 0, "the device is full");
    expect(norm.launch(nullptr) == cudaErrorMemoryAllocation, "a first launch with no room for its code fails");
    cudaFree(fill);
    expect(norm.launch(nullptr) == cudaSuccess, "with room it loads and runs");
    cudaDeviceSynchronize();
    return g_failed;
}

static int shared_link() {
    using clock = std::chrono::steady_clock;
    cudaStream_t prefetch, demand;
    cudaStreamCreateWithFlags(&prefetch, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&demand, cudaStreamNonBlocking);
    Copy big(32 << 20), small(4096);
    auto t0 = clock::now();
    small.start(demand);
    cudaStreamSynchronize(demand);
    const double alone = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    t0 = clock::now();
    big.start(prefetch);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the large copy is on the link
    small.start(demand);
    cudaStreamSynchronize(demand);
    const double behind = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    cudaStreamSynchronize(prefetch);
    const double big_ms = (32 << 20) / (1e6 * 1.0);  // ROTARY_EMU_LINK_GBPS=1: bytes / 1e9 s
    printf("4 KiB copy alone %.2f ms, behind a 32 MiB copy on another stream %.2f ms (that copy %.1f ms)\n",
           alone, behind, big_ms);
    expect(alone < big_ms / 4, "alone, a small copy is quick");
    expect(behind >= big_ms * 0.9, "behind another stream's large copy it waits for the link");
    return g_failed;
}

static int pinned(bool wait) {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    Copy copy(4 << 20);
    copy.start(s);
    if (wait) cudaStreamSynchronize(s);
    memset(copy.host, 9, copy.bytes);  // the host reuses its buffer
    const cudaError_t e = cudaStreamSynchronize(s);
    if (wait) {
        expect(e == cudaSuccess, "reused after the copy completed: fine");
    } else {
        expect(e == cudaErrorLaunchFailure, "reused before the copy completed: a sticky error");
        expect(strstr(cudaGetErrorString(e), "pinned source") != nullptr, cudaGetErrorString(e));
    }
    return g_failed;
}

static int other_device() {
    expect(cudaSetDevice(1) == cudaSuccess, "device 1 exists (ROTARY_EMU_DEVICES=2)");
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEvent_t e;
    cudaEventCreate(&e);
    Norm norm;  // on device 1
    cudaSetDevice(0);
    expect(norm.launch(s) == cudaErrorInvalidResourceHandle, "a launch on device 1's stream from device 0: refused");
    expect(cudaMemsetAsync(norm.y, 0, 16, s) == cudaErrorInvalidResourceHandle, "a memset there: refused");
    expect(cudaEventRecord(e, nullptr) == cudaErrorInvalidResourceHandle, "recording device 1's event on device 0: refused");
    cudaGetLastError();
    cudaSetDevice(1);
    expect(norm.launch(s) == cudaSuccess, "with device 1 current: fine");
    expect(cudaStreamSynchronize(s) == cudaSuccess, "and it runs");
    return g_failed;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODE\n", argv[0]);
        return 2;
    }
    const char *m = argv[1];
    if (!strcmp(m, "last-error")) return last_error();
    if (!strcmp(m, "events")) return events();
    if (!strcmp(m, "memory")) return memory();
    if (!strcmp(m, "spill")) return spill();
    if (!strcmp(m, "launch-oom")) return launch_oom();
    if (!strcmp(m, "shared-link")) return shared_link();
    if (!strcmp(m, "pinned-reuse")) return pinned(false);
    if (!strcmp(m, "pinned-wait")) return pinned(true);
    if (!strcmp(m, "other-device")) return other_device();
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}
