// The emulated CUDA build's `cuda_runtime.h` (ROTARY_CUDA=emu): what csrc/ needs of the CUDA
// language and runtime, for the host C++ compiler. The kernels and runtime.cu compile against
// this unchanged; csrc/emu/simt.cpp runs them (one fiber per CUDA thread, barriers, warp
// shuffles, seeded thread orders) and csrc/emu/runtime.cpp is the runtime behind the same calls
// (guarded device memory, streams on host threads, events, async copies).
//
// Only what csrc/ uses is here; a kernel that needs more fails to compile in the emulated
// build, which is the point: add it here with its CUDA semantics.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <utility>

// ---- The language ----------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// Block-shared memory: one copy per host thread, and a block runs on one host thread at a time.
#define __shared__ static thread_local

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned int x, y, z;
};

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};

namespace rotary_emu {

// The CUDA thread running now on this host thread (set by the scheduler at every switch).
struct ThreadCtx {
    uint3 thread_idx;
    uint3 block_idx;
    uint3 block_dim;
    uint3 grid_dim;
};
extern thread_local const ThreadCtx *tl_ctx;

// Barriers and warp exchanges; `site` names the call (file:line) in error reports.
void syncthreads(const char *site);
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width, const char *site);
void *dynamic_shared();

template <class T>
inline T shfl_xor_typed(unsigned mask, T v, int lane_mask, int width, const char *site) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = shfl_xor(mask, bits, lane_mask, width, site);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace rotary_emu

#define threadIdx (::rotary_emu::tl_ctx->thread_idx)
#define blockIdx (::rotary_emu::tl_ctx->block_idx)
#define blockDim (::rotary_emu::tl_ctx->block_dim)
#define gridDim (::rotary_emu::tl_ctx->grid_dim)

#define ROTARY_EMU_STR2(x) #x
#define ROTARY_EMU_STR(x) ROTARY_EMU_STR2(x)
#define ROTARY_EMU_SITE __FILE__ ":" ROTARY_EMU_STR(__LINE__)

#define __syncthreads() ::rotary_emu::syncthreads(ROTARY_EMU_SITE)
#define __shfl_xor_sync(mask, v, lane_mask) \
    ::rotary_emu::shfl_xor_typed((mask), (v), (lane_mask), 32, ROTARY_EMU_SITE)

// Dynamic shared memory (`extern __shared__ T name[]` under nvcc; see common.cuh).
#define ROTARY_DYNAMIC_SHARED(T, name) T *name = static_cast<T *>(::rotary_emu::dynamic_shared())

// Device math and bit casts.
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}

// ---- The runtime -----------------------------------------------------------------------------

// Codes as the real runtime numbers them (driver_types.h).
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorIllegalInstruction = 715,
    cudaErrorLaunchFailure = 719,
};
typedef enum cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
};

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major;
    int minor;
    int multiProcessorCount;
};

namespace rotary_emu {
struct Stream;
struct Event;
}  // namespace rotary_emu
typedef rotary_emu::Stream *cudaStream_t;
typedef rotary_emu::Event *cudaEvent_t;

#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1
#define cudaHostAllocDefault 0x0
#define cudaEventDefault 0x0
#define cudaEventDisableTiming 0x2

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaRuntimeGetVersion(int *version);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char *cudaGetErrorName(cudaError_t error);
const char *cudaGetErrorString(cudaError_t error);

cudaError_t cudaMemGetInfo(size_t *free, size_t *total);
cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaHostAlloc(void **ptr, size_t bytes, unsigned int flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

// ---- Launches --------------------------------------------------------------------------------

namespace rotary_emu {

// A type-erased kernel launch: `run(args)` runs the kernel body for the current CUDA thread.
struct Launch {
    const char *name;
    dim3 grid, block;
    size_t dynamic_smem;
    void (*run)(void *args);
    void (*drop)(void *args);
    void *args;
};

// Queue `launch` on `stream` (validates the configuration; sets the last error if invalid).
void enqueue_launch(const Launch &launch, cudaStream_t stream);

// "gemv_kernel<QuantQ4_K, 8, 1>": the kernel's name, from the compiler's signature of K
// ("... [with auto K = gemv_kernel<QuantQ4_K, 8, 1>]"), cut into `buf`.
inline const char *name_from_signature(const char *sig, char *buf, size_t size) {
    const char *at = strstr(sig, "K = ");
    const char *from = at ? at + 4 : sig;
    size_t n = strcspn(from, ";]");
    if (n >= size) n = size - 1;
    memcpy(buf, from, n);
    buf[n] = 0;
    return buf;
}

template <auto K>
const char *kernel_name() {
    static char buf[256];
    static const char *name = name_from_signature(__PRETTY_FUNCTION__, buf, sizeof buf);
    return name;
}

template <auto K, class... A>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
    using Args = std::tuple<A...>;
    Launch l;
    l.name = kernel_name<K>();
    l.grid = grid;
    l.block = block;
    l.dynamic_smem = smem;
    l.run = [](void *a) { std::apply(K, *static_cast<Args *>(a)); };
    l.drop = [](void *a) { delete static_cast<Args *>(a); };
    l.args = new Args(args...);
    enqueue_launch(l, stream);
}

}  // namespace rotary_emu
