// The emulated CUDA runtime (ROTARY_CUDA=emu): the cuda* calls runtime.cu and the launchers
// make, with the semantics the host code must respect on a GPU.
// - Devices: ROTARY_EMU_DEVICES of them, sm ROTARY_EMU_SM, ROTARY_EMU_VRAM each. The context
//   takes ROTARY_EMU_CONTEXT of it at first use; cudaMemGetInfo reports the rest minus what is
//   charged, and cudaMalloc past it fails with cudaErrorMemoryAllocation. Charges are the
//   driver's, not the bytes asked for: an allocation over 1 MiB is rounded up to 2 MiB pages;
//   smaller ones share 2 MiB chunks (a chunk is charged while any of its allocations lives).
//   Modules load lazily (CUDA's default since 12.2): a kernel's first launch charges its code
//   (ROTARY_EMU_KERNEL_BYTES) to a 2 MiB-paged code pool, and a kernel that spills
//   (ROTARY_EMU_SPILL) grows the local-memory reservation to its frame for every thread the
//   device can hold; either can fail the launch with cudaErrorMemoryAllocation.
// - Work goes to the stream's device: a launch, copy, memset or event record on a stream (or
//   with an event) of another device than the calling thread's current one fails with
//   cudaErrorInvalidResourceHandle, as cudaSetDevice is per host thread.
// - Memory: every allocation (device, and pinned host) is its own mapping between inaccessible
//   guard pages, its end 16 bytes from the upper guard, so a kernel running off the end faults
//   and is reported by name (simt.cpp). cudaFree and cudaFreeHost wait for the device first,
//   as the real calls do.
// - Streams: in-order queues, each run by its own host thread, so copies and kernels on
//   different streams really overlap and only events order them. The NULL stream is one more
//   such queue (every stream this project creates is non-blocking).
// - Copies: a host-to-device copy from pageable memory is staged before the call returns; from
//   pinned memory it reads the source when it runs, and a source changed between the call and
//   the copy's end (the host reused it without waiting) is a sticky error naming the copy.
//   Device-to-host into pageable memory waits for the copy; into pinned memory the destination
//   is poisoned until the copy lands. The destination of a copy to the device is poisoned
//   (0xff) when the copy starts and written when it ends. Copies to the device share one link
//   (one copy engine) whatever their stream: each takes its turn at ROTARY_EMU_LINK_GBPS, in
//   the order they reach the link, so a copy queued behind another stream's copy waits for it.
// - Events: live events are counted (timing and sync-only apart; rotary_emu_stats), and
//   cudaEventElapsedTime refuses an event created with cudaEventDisableTiming.
// - Errors: configuration errors set the calling thread's last error, and so does
//   cudaErrorNotReady from cudaEventQuery / cudaEventElapsedTime (the next launcher's
//   cudaGetLastError reports it unless the caller cleared it); a kernel fault is sticky
//   for the device (every later call returns it, as after a GPU's illegal address) and its
//   report, naming the kernel, is what cudaGetErrorString returns for that code.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "abi.h"
#include "emu.h"

namespace rotary_emu {

namespace {

const size_t PAGE = 4096;

// "8GiB", "512MiB", "300MB", "1000": bytes; `fallback` when unset or malformed (with a note).
size_t env_bytes(const char *name, size_t fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end = nullptr;
    const double x = strtod(v, &end);
    std::string unit = end ? end : "";
    double mul = 1;
    if (unit == "KiB") mul = 1024.0;
    else if (unit == "MiB") mul = 1024.0 * 1024;
    else if (unit == "GiB") mul = 1024.0 * 1024 * 1024;
    else if (unit == "KB") mul = 1e3;
    else if (unit == "MB") mul = 1e6;
    else if (unit == "GB") mul = 1e9;
    else if (!unit.empty() && unit != "B") {
        fprintf(stderr, "rotary emu: %s=%s: want e.g. 8GiB or 512MiB; using %zu bytes\n", name, v, fallback);
        return fallback;
    }
    if (!(x >= 0)) return fallback;
    return static_cast<size_t>(x * mul);
}

double env_num(const char *name, double fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end = nullptr;
    const double x = strtod(v, &end);
    if (end == v || *end) {
        fprintf(stderr, "rotary emu: %s=%s is not a number; using %g\n", name, v, fallback);
        return fallback;
    }
    return x;
}

// ---- Memory ----------------------------------------------------------------------------------

struct Alloc {
    uintptr_t base;
    size_t bytes;
    char *map;
    size_t map_len;
    int device;  // -1: pinned host memory
    size_t charged;  // bytes charged to the device on its own (large allocations)
    int chunk;       // the shared chunk of a small allocation, else -1
};

std::mutex g_mem;
std::map<uintptr_t, Alloc> g_allocs;  // by base

// The allocation holding [p, p + n), or null. Caller holds g_mem.
const Alloc *find_locked(uintptr_t p, size_t n) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Alloc &a = it->second;
    if (p >= a.base && p + n <= a.base + a.bytes && p + n >= p) return &a;
    return nullptr;
}

Alloc map_guarded(size_t bytes, int device) {
    const size_t body = (bytes + 15) & ~size_t(15);
    const size_t pages = (body + PAGE - 1) / PAGE * PAGE;
    Alloc a{};
    a.map_len = pages + 2 * PAGE;
    void *m = mmap(nullptr, a.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return a;
    a.map = static_cast<char *>(m);
    if (mprotect(a.map + PAGE, pages, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, a.map_len);
        a.map = nullptr;
        return a;
    }
    a.base = reinterpret_cast<uintptr_t>(a.map + PAGE + pages - body);
    a.bytes = bytes;
    a.device = device;
    return a;
}

// ---- Devices, streams, events ----------------------------------------------------------------

struct EventState {
    std::mutex m;
    std::condition_variable cv;
    uint64_t recorded = 0, completed = 0;
    std::chrono::steady_clock::time_point when;
};

std::atomic<int64_t> g_live_events{0}, g_live_timing_events{0}, g_events_created{0};

}  // namespace

struct Event {
    std::shared_ptr<EventState> s = std::make_shared<EventState>();
    int device = 0;
    bool timing = true;
    Event(int dev, bool t) : device(dev), timing(t) {
        g_live_events++;
        g_events_created++;
        if (t) g_live_timing_events++;
    }
    ~Event() {
        g_live_events--;
        if (timing) g_live_timing_events--;
    }
};


struct Stream {
    int device = 0;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;
    uint64_t enqueued = 0, completed = 0;
    bool stop = false;
    std::thread worker;

    explicit Stream(int dev) : device(dev) {
        worker = std::thread([this] { loop(); });
    }

    void loop() {
        for (;;) {
            std::function<void()> op;
            {
                std::unique_lock<std::mutex> lock(m);
                cv.wait(lock, [this] { return stop || !queue.empty(); });
                if (queue.empty()) return;
                op = std::move(queue.front());
                queue.pop_front();
            }
            op();
            {
                std::lock_guard<std::mutex> lock(m);
                completed++;
            }
            cv.notify_all();
        }
    }

    uint64_t push(std::function<void()> op) {
        uint64_t seq;
        {
            std::lock_guard<std::mutex> lock(m);
            queue.push_back(std::move(op));
            seq = ++enqueued;
        }
        cv.notify_all();
        return seq;
    }

    void wait(uint64_t seq) {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return completed >= seq; });
    }

    void drain() {
        uint64_t seq;
        {
            std::lock_guard<std::mutex> lock(m);
            seq = enqueued;
        }
        wait(seq);
    }

    ~Stream() {
        {
            std::lock_guard<std::mutex> lock(m);
            stop = true;
        }
        cv.notify_all();
        worker.join();
    }
};

namespace {

const size_t GRANULE = size_t(2) << 20;  // the driver's page for device memory
const size_t SMALL = size_t(1) << 20;    // at most this: sub-allocated from shared chunks
const size_t SMALL_ALIGN = 512;
const int THREADS_PER_SM = 1536;         // resident threads per SM (sm_86/89), for local memory

size_t round_up(size_t n, size_t to) {
    return (n + to - 1) / to * to;
}

struct Chunk {
    size_t bump = 0;  // bytes handed out (allocations are never moved; holes are not reused)
    int live = 0;     // 0: not charged
};

struct DeviceState {
    std::mutex m;
    bool context = false;
    size_t used = 0;  // bytes charged, the context's included
    size_t peak = 0;  // the most charged at once since the last rotary_emu_reset_peak
    std::vector<Chunk> chunks;
    std::set<const char *> loaded;  // kernels whose code is loaded (by name pointer)
    size_t code_bytes = 0, code_charged = 0;
    size_t local_per_thread = 0, local_charged = 0;
    std::mutex link_m;  // the copy engines: one per direction
    std::chrono::steady_clock::time_point link_free[2];
    Stream *legacy = nullptr;
    std::vector<Stream *> streams;
    std::atomic<int> sticky{0};
    std::string sticky_message;
};

std::vector<DeviceState> &devices() {
    static std::vector<DeviceState> d(static_cast<size_t>(std::max(config().devices, 0)));
    return d;
}

thread_local int tl_device = 0;
thread_local cudaError_t tl_last = cudaSuccess;
std::atomic<uint64_t> g_launches{0};

cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) tl_last = e;
    return e;
}

// Charge `bytes` to the device; false (nothing charged) past its memory. Caller holds d->m.
bool charge_locked(DeviceState *d, size_t bytes) {
    if (d->used + bytes > config().vram_bytes) return false;
    d->used += bytes;
    d->peak = std::max(d->peak, d->used);
    return true;
}

DeviceState *current() {
    auto &d = devices();
    if (tl_device < 0 || static_cast<size_t>(tl_device) >= d.size()) return nullptr;
    DeviceState &s = d[static_cast<size_t>(tl_device)];
    std::lock_guard<std::mutex> lock(s.m);
    if (!s.context) {  // the context's own memory, taken at first use
        s.context = true;
        s.used += config().context_bytes;
        s.peak = std::max(s.peak, s.used);
    }
    return &s;
}

cudaError_t sticky(DeviceState *d) {
    return static_cast<cudaError_t>(d->sticky.load());
}

Stream *resolve(DeviceState *d, cudaStream_t s) {
    if (s) return s;
    std::lock_guard<std::mutex> lock(d->m);
    if (!d->legacy) {
        d->legacy = new Stream(tl_device);
        d->streams.push_back(d->legacy);
    }
    return d->legacy;
}

void sync_device(DeviceState *d) {
    std::vector<Stream *> streams;
    {
        std::lock_guard<std::mutex> lock(d->m);
        streams = d->streams;
    }
    for (Stream *s : streams) s->drain();
}

// A transfer of `bytes` over the modelled link in direction `dir` (0: to the device, 1: to
// the host) takes its turn after the copies that reached the link before it, whatever their
// stream, and bytes / ROTARY_EMU_LINK_GBPS: the time it ends.
std::chrono::steady_clock::time_point reserve_link(DeviceState *d, int dir, size_t bytes) {
    using clock = std::chrono::steady_clock;
    const double gbps = config().link_gbps;
    if (gbps <= 0) return clock::now();
    const auto took = std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(bytes) / gbps));
    std::lock_guard<std::mutex> lock(d->link_m);
    const clock::time_point end = std::max(clock::now(), d->link_free[dir]) + took;
    d->link_free[dir] = end;
    return end;
}

void wait_link(std::chrono::steady_clock::time_point end) {
    if (end - std::chrono::steady_clock::now() > std::chrono::microseconds(2)) std::this_thread::sleep_until(end);
}

// A 64-bit checksum of n bytes (detects a pinned source changed while its copy was queued).
uint64_t checksum(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
    return h;
}

// Make `e` the device's sticky error with `message` (the first one wins).
void set_sticky(DeviceState *d, cudaError_t e, const std::string &message) {
    std::lock_guard<std::mutex> lock(d->m);
    if (d->sticky.load() == 0) {
        d->sticky_message = "rotary emu: " + message;
        d->sticky.store(e);
        fprintf(stderr, "%s\n", d->sticky_message.c_str());
    }
}

// Per-thread local memory (bytes) of kernels whose name contains a key of ROTARY_EMU_SPILL
// ("gemv_kernel<QuantQ4_K=256,moe=512"): what ptxas reports as their stack frame.
size_t spill_bytes(const char *kernel) {
    static const std::vector<std::pair<std::string, size_t>> table = [] {
        std::vector<std::pair<std::string, size_t>> t;
        const char *v = getenv("ROTARY_EMU_SPILL");
        std::string spec = v ? v : "";
        size_t at = 0;
        while (at < spec.size()) {
            size_t comma = spec.find(',', at);
            if (comma == std::string::npos) comma = spec.size();
            const std::string item = spec.substr(at, comma - at);
            const size_t eq = item.rfind('=');
            if (eq != std::string::npos) t.emplace_back(item.substr(0, eq), strtoull(item.c_str() + eq + 1, nullptr, 10));
            at = comma + 1;
        }
        return t;
    }();
    size_t bytes = 0;
    for (const auto &kv : table) {
        if (strstr(kernel, kv.first.c_str())) bytes = std::max(bytes, kv.second);
    }
    return bytes;
}

// A kernel's first launch on the device: load its code (lazy module loading) and grow the
// local-memory reservation to its spill frame. cudaErrorMemoryAllocation when it does not fit.
cudaError_t load_kernel(DeviceState *d, const char *name) {
    std::lock_guard<std::mutex> lock(d->m);
    if (d->loaded.count(name)) return cudaSuccess;
    const size_t code = d->code_bytes + config().kernel_bytes;
    const size_t code_need = round_up(code, GRANULE);
    const size_t frame = spill_bytes(name);
    const size_t local_need = frame > d->local_per_thread
                                  ? round_up(frame * static_cast<size_t>(config().sm_count) * THREADS_PER_SM, GRANULE)
                                  : d->local_charged;
    const size_t extra = (code_need - d->code_charged) + (local_need - d->local_charged);
    if (!charge_locked(d, extra)) return cudaErrorMemoryAllocation;
    d->loaded.insert(name);
    d->code_bytes = code;
    d->code_charged = code_need;
    d->local_per_thread = std::max(d->local_per_thread, frame);
    d->local_charged = local_need;
    return cudaSuccess;
}

}  // namespace

const Config &config() {
    static const Config c = [] {
        Config k;
        k.devices = static_cast<int>(env_num("ROTARY_EMU_DEVICES", 1));
        k.vram_bytes = env_bytes("ROTARY_EMU_VRAM", size_t(8) << 30);
        k.context_bytes = env_bytes("ROTARY_EMU_CONTEXT", size_t(300) << 20);
        k.sm = static_cast<int>(env_num("ROTARY_EMU_SM", 89));
        k.seed = static_cast<uint64_t>(env_num("ROTARY_EMU_SEED", 1));
        k.link_gbps = env_num("ROTARY_EMU_LINK_GBPS", 16);
        k.sm_count = std::max(1, static_cast<int>(env_num("ROTARY_EMU_SMS", 24)));
        k.kernel_bytes = env_bytes("ROTARY_EMU_KERNEL_BYTES", size_t(128) << 10);
        const unsigned cores = std::thread::hardware_concurrency();
        k.threads = std::max(1, static_cast<int>(env_num("ROTARY_EMU_THREADS", cores ? cores : 1)));
        return k;
    }();
    return c;
}

std::string describe_address(uintptr_t addr) {
    std::lock_guard<std::mutex> lock(g_mem);
    for (const auto &kv : g_allocs) {
        const Alloc &a = kv.second;
        const uintptr_t lo = reinterpret_cast<uintptr_t>(a.map), hi = lo + a.map_len;
        if (addr < lo || addr >= hi) continue;
        char buf[200];
        const char *kind = a.device >= 0 ? "device" : "pinned host";
        if (addr >= a.base + a.bytes) {
            snprintf(buf, sizeof buf, "%llu bytes past the end of a %zu-byte %s allocation at 0x%llx",
                     static_cast<unsigned long long>(addr - (a.base + a.bytes)), a.bytes, kind,
                     static_cast<unsigned long long>(a.base));
        } else {
            snprintf(buf, sizeof buf, "%llu bytes before a %zu-byte %s allocation at 0x%llx",
                     static_cast<unsigned long long>(a.base - addr), a.bytes, kind,
                     static_cast<unsigned long long>(a.base));
        }
        return buf;
    }
    return "";
}

void enqueue_launch(const Launch &l, cudaStream_t stream) {
    const dim3 b = l.block, g = l.grid;
    const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
    cudaError_t bad = cudaSuccess;
    if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64 || g.x == 0 ||
        g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
        bad = cudaErrorInvalidConfiguration;
    } else if (l.dynamic_smem > 48 * 1024) {
        bad = cudaErrorInvalidValue;  // more than 48 KiB needs an opt-in (cudaFuncSetAttribute)
    }
    DeviceState *d = current();
    if (!d) bad = cudaErrorInvalidDevice;
    if (bad == cudaSuccess && sticky(d) != cudaSuccess) bad = sticky(d);
    Stream *s = bad == cudaSuccess ? resolve(d, stream) : nullptr;
    if (s && s->device != tl_device) bad = cudaErrorInvalidResourceHandle;
    if (bad == cudaSuccess) bad = load_kernel(d, l.name);
    if (bad != cudaSuccess) {
        l.drop(l.args);
        fail(bad);
        return;
    }
    const uint64_t seed = config().seed * 0x9e3779b97f4a7c15ull + g_launches.fetch_add(1);
    s->push([l, seed, d] {
        if (sticky(d) == cudaSuccess) {
            std::string message;
            const cudaError_t e = run_launch(l, seed, message);
            if (e != cudaSuccess) set_sticky(d, e, message);
        }
        l.drop(l.args);
    });
}

}  // namespace rotary_emu

using namespace rotary_emu;

// ---- Device queries --------------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int *count) {
    *count = std::max(config().devices, 0);
    return *count > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaGetDevice(int *device) {
    *device = tl_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= config().devices) return fail(cudaErrorInvalidDevice);
    tl_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (device < 0 || device >= config().devices) return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "Rotary SIMT emulator (host CPU), sm_%d", config().sm);
    prop->totalGlobalMem = config().vram_bytes;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = config().sm / 10;
    prop->minor = config().sm % 10;
    prop->multiProcessorCount = config().sm_count;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) return e;
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    default: return fail(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version) {
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    sync_device(d);
    return fail(sticky(d));
}

cudaError_t cudaGetLastError() {
    DeviceState *d = current();
    if (d && sticky(d) != cudaSuccess) return sticky(d);
    const cudaError_t e = tl_last;
    tl_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError() {
    DeviceState *d = current();
    if (d && sticky(d) != cudaSuccess) return sticky(d);
    return tl_last;
}

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    auto &ds = devices();
    for (auto &d : ds) {
        if (e != cudaSuccess && d.sticky.load() == e) return d.sticky_message.c_str();
    }
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected (ROTARY_EMU_DEVICES=0)";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
    }
}

// ---- Memory ----------------------------------------------------------------------------------

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    std::lock_guard<std::mutex> lock(d->m);
    *total = config().vram_bytes;
    *free_bytes = d->used >= *total ? 0 : *total - d->used;
    return cudaSuccess;
}

// Give back what an allocation charged: its pages, or its share of a chunk.
static void uncharge(DeviceState *d, const Alloc &a) {
    std::lock_guard<std::mutex> lock(d->m);
    d->used -= a.charged;
    if (a.chunk >= 0) {
        Chunk &c = d->chunks[static_cast<size_t>(a.chunk)];
        if (--c.live == 0) {
            c.bump = 0;
            d->used -= GRANULE;
        }
    }
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
    *ptr = nullptr;
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    if (sticky(d) != cudaSuccess) return fail(sticky(d));
    bytes = std::max<size_t>(bytes, 1);
    size_t charged = 0;
    int chunk = -1;
    {
        std::lock_guard<std::mutex> lock(d->m);
        if (bytes > SMALL) {
            charged = round_up(bytes, GRANULE);
            if (!charge_locked(d, charged)) return fail(cudaErrorMemoryAllocation);
        } else {
            const size_t need = round_up(bytes, SMALL_ALIGN);
            for (size_t i = 0; i < d->chunks.size() && chunk < 0; ++i) {
                Chunk &c = d->chunks[i];
                if (c.live > 0 && c.bump + need <= GRANULE) chunk = static_cast<int>(i);
            }
            if (chunk < 0) {  // a new chunk (or a released one again)
                if (!charge_locked(d, GRANULE)) return fail(cudaErrorMemoryAllocation);
                for (size_t i = 0; i < d->chunks.size() && chunk < 0; ++i) {
                    if (d->chunks[i].live == 0) chunk = static_cast<int>(i);
                }
                if (chunk < 0) {
                    d->chunks.emplace_back();
                    chunk = static_cast<int>(d->chunks.size() - 1);
                }
                d->chunks[static_cast<size_t>(chunk)].bump = 0;
            }
            Chunk &c = d->chunks[static_cast<size_t>(chunk)];
            c.bump += need;
            c.live++;
        }
    }
    Alloc a = map_guarded(bytes, tl_device);
    a.charged = charged;
    a.chunk = chunk;
    if (!a.map) {
        uncharge(d, a);
        return fail(cudaErrorMemoryAllocation);
    }
    std::lock_guard<std::mutex> lock(g_mem);
    g_allocs[a.base] = a;
    *ptr = reinterpret_cast<void *>(a.base);
    return cudaSuccess;
}

static cudaError_t free_mapping(void *ptr, bool device) {
    if (!ptr) return cudaSuccess;
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    sync_device(d);  // cudaFree / cudaFreeHost synchronise with the device first
    Alloc a;
    {
        std::lock_guard<std::mutex> lock(g_mem);
        auto it = g_allocs.find(reinterpret_cast<uintptr_t>(ptr));
        if (it == g_allocs.end() || (it->second.device >= 0) != device) return fail(cudaErrorInvalidValue);
        a = it->second;
        g_allocs.erase(it);
    }
    munmap(a.map, a.map_len);
    if (device) uncharge(&devices()[static_cast<size_t>(a.device)], a);
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
    return free_mapping(ptr, true);
}

cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int) {
    *ptr = nullptr;
    if (!current()) return fail(cudaErrorInvalidDevice);
    Alloc a = map_guarded(bytes, -1);
    if (!a.map) return fail(cudaErrorMemoryAllocation);
    a.chunk = -1;
    std::lock_guard<std::mutex> lock(g_mem);
    g_allocs[a.base] = a;
    *ptr = reinterpret_cast<void *>(a.base);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *ptr) {
    return free_mapping(ptr, false);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    if (sticky(d) != cudaSuccess) return fail(sticky(d));
    if (bytes == 0) return cudaSuccess;
    const uintptr_t ds = reinterpret_cast<uintptr_t>(dst), ss = reinterpret_cast<uintptr_t>(src);
    bool dst_dev, src_dev, src_pinned = false, dst_pinned = false;
    {
        std::lock_guard<std::mutex> lock(g_mem);
        const Alloc *da = find_locked(ds, bytes), *sa = find_locked(ss, bytes);
        dst_dev = da && da->device >= 0;
        src_dev = sa && sa->device >= 0;
        dst_pinned = da && da->device < 0;
        src_pinned = sa && sa->device < 0;
        // A pointer inside a device allocation but running past its end is an error.
        auto partial = [](uintptr_t p) {
            auto it = g_allocs.upper_bound(p);
            if (it == g_allocs.begin()) return false;
            --it;
            return it->second.device >= 0 && p >= it->second.base && p < it->second.base + it->second.bytes;
        };
        if ((!dst_dev && partial(ds)) || (!src_dev && partial(ss))) return fail(cudaErrorInvalidValue);
    }
    const bool ok = (kind == cudaMemcpyHostToDevice && dst_dev && !src_dev) ||
                    (kind == cudaMemcpyDeviceToHost && src_dev && !dst_dev) ||
                    (kind == cudaMemcpyDeviceToDevice && src_dev && dst_dev);
    if (!ok) return fail(cudaErrorInvalidValue);
    Stream *s = resolve(d, stream);
    if (s->device != tl_device) return fail(cudaErrorInvalidResourceHandle);
    char *out = static_cast<char *>(dst);
    if (kind == cudaMemcpyHostToDevice && !src_pinned) {
        auto staged = std::make_shared<std::vector<char>>(static_cast<const char *>(src),
                                                          static_cast<const char *>(src) + bytes);
        s->push([d, out, staged, bytes] {
            const auto end = reserve_link(d, 0, bytes);
            memset(out, 0xff, bytes);
            wait_link(end);
            memcpy(out, staged->data(), bytes);
        });
        return cudaSuccess;
    }
    const char *in = static_cast<const char *>(src);
    if (kind == cudaMemcpyHostToDevice) {
        // From pinned memory: the copy engine reads the source when the copy runs. The source
        // must not change until then; a checksum taken now is compared with what was copied
        // and with the source once the copy is done.
        const uint64_t want = checksum(in, bytes);
        s->push([d, out, in, bytes, want] {
            const auto end = reserve_link(d, 0, bytes);
            memset(out, 0xff, bytes);
            wait_link(end);
            memmove(out, in, bytes);
            if (checksum(out, bytes) != want || checksum(in, bytes) != want) {
                char m[240];
                snprintf(m, sizeof m,
                         "the pinned source of a %zu-byte cudaMemcpyAsync to the device (0x%llx) changed "
                         "before the copy completed: the host reused it without waiting for the copy",
                         bytes, static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(in)));
                set_sticky(d, cudaErrorLaunchFailure, m);
            }
        });
        return fail(sticky(d));
    }
    if (kind == cudaMemcpyDeviceToHost && dst_pinned) memset(out, 0xff, bytes);  // not there yet
    const uint64_t seq = s->push([d, out, in, bytes, kind] {
        if (kind == cudaMemcpyDeviceToHost) wait_link(reserve_link(d, 1, bytes));
        memmove(out, in, bytes);
    });
    if (kind == cudaMemcpyDeviceToHost && !dst_pinned) s->wait(seq);  // pageable: synchronous
    return fail(sticky(d));
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    if (sticky(d) != cudaSuccess) return fail(sticky(d));
    if (bytes == 0) return cudaSuccess;
    {
        std::lock_guard<std::mutex> lock(g_mem);
        const Alloc *a = find_locked(reinterpret_cast<uintptr_t>(ptr), bytes);
        if (!a || a->device < 0) return fail(cudaErrorInvalidValue);
    }
    Stream *s = resolve(d, stream);
    if (s->device != tl_device) return fail(cudaErrorInvalidResourceHandle);
    char *p = static_cast<char *>(ptr);
    s->push([p, value, bytes] { memset(p, value, bytes); });
    return cudaSuccess;
}

// ---- Streams and events ----------------------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    Stream *s = new Stream(tl_device);
    std::lock_guard<std::mutex> lock(d->m);
    d->streams.push_back(s);
    *stream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream) return fail(cudaErrorInvalidResourceHandle);
    DeviceState &d = devices()[static_cast<size_t>(stream->device)];
    {
        std::lock_guard<std::mutex> lock(d.m);
        auto it = std::find(d.streams.begin(), d.streams.end(), stream);
        if (it == d.streams.end()) return fail(cudaErrorInvalidResourceHandle);
        d.streams.erase(it);
    }
    stream->drain();  // queued work completes, as on the device
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    resolve(d, stream)->drain();
    return fail(sticky(d));
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    *event = nullptr;
    if (!current()) return fail(cudaErrorInvalidDevice);
    *event = new Event(tl_device, (flags & cudaEventDisableTiming) == 0);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
    return cudaEventCreateWithFlags(event, 0);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    delete event;  // queued records and waits keep the state alive
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    Stream *s = resolve(d, stream);
    if (s->device != tl_device || event->device != tl_device) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<EventState> e = event->s;
    uint64_t target;
    {
        std::lock_guard<std::mutex> lock(e->m);
        target = ++e->recorded;
    }
    s->push([e, target] {
        {
            std::lock_guard<std::mutex> lock(e->m);
            if (target > e->completed) e->completed = target;
            e->when = std::chrono::steady_clock::now();
        }
        e->cv.notify_all();
    });
    return fail(sticky(d));
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
    DeviceState *d = current();
    if (!d) return fail(cudaErrorInvalidDevice);
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<EventState> e = event->s;
    uint64_t target;
    {
        std::lock_guard<std::mutex> lock(e->m);
        target = e->recorded;  // the most recent record at the time of the call
    }
    if (target == 0) return cudaSuccess;
    resolve(d, stream)->push([e, target] {
        std::unique_lock<std::mutex> lock(e->m);
        e->cv.wait(lock, [&] { return e->completed >= target; });
    });
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<EventState> e = event->s;
    std::unique_lock<std::mutex> lock(e->m);
    const uint64_t target = e->recorded;
    e->cv.wait(lock, [&] { return e->completed >= target; });
    DeviceState *d = current();
    return d ? fail(sticky(d)) : cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    if (!event) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lock(event->s->m);
    // Not ready is recorded as the thread's last error too (the model is the strict one).
    return event->s->completed >= event->s->recorded ? cudaSuccess : fail(cudaErrorNotReady);
}

// ---- The emulator's own counters (no CUDA equivalent) ----------------------------------------

extern "C" int rotary_emu_stats(int32_t device, RotaryEmuStats *out) {
    auto &ds = devices();
    if (device < 0 || static_cast<size_t>(device) >= ds.size()) return cudaErrorInvalidDevice;
    DeviceState &d = ds[static_cast<size_t>(device)];
    memset(out, 0, sizeof *out);
    out->live_events = g_live_events.load();
    out->live_timing_events = g_live_timing_events.load();
    out->events_created = g_events_created.load();
    std::lock_guard<std::mutex> lock(d.m);
    out->used_bytes = d.used;
    out->peak_bytes = d.peak;
    out->code_bytes = d.code_charged;
    out->local_bytes = d.local_charged;
    out->kernels_loaded = d.loaded.size();
    return 0;
}

extern "C" int rotary_emu_reset_peak(int32_t device) {
    auto &ds = devices();
    if (device < 0 || static_cast<size_t>(device) >= ds.size()) return cudaErrorInvalidDevice;
    DeviceState &d = ds[static_cast<size_t>(device)];
    std::lock_guard<std::mutex> lock(d.m);
    d.peak = d.used;
    return 0;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (!start || !end) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<EventState> a = start->s, b = end->s;
    std::chrono::steady_clock::time_point ta, tb;
    {
        std::lock_guard<std::mutex> lock(a->m);
        if (a->recorded == 0 || !start->timing) return fail(cudaErrorInvalidResourceHandle);
        if (a->completed < a->recorded) return fail(cudaErrorNotReady);
        ta = a->when;
    }
    {
        std::lock_guard<std::mutex> lock(b->m);
        if (b->recorded == 0 || !end->timing) return fail(cudaErrorInvalidResourceHandle);
        if (b->completed < b->recorded) return fail(cudaErrorNotReady);
        tb = b->when;
    }
    *ms = std::chrono::duration<float, std::milli>(tb - ta).count();
    return cudaSuccess;
}
