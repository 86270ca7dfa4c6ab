#include <string.h>

#include "runtime.cuh"

static thread_local int g_sm = -1;  // the current device is per host thread

int rotary_current_sm() {
    if (g_sm < 0) {
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
            return 0;
        }
        g_sm = major * 10 + minor;
    }
    return g_sm;
}

extern "C" int rotary_device_count(int32_t *count) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    *count = (e == cudaSuccess) ? n : 0;
    return static_cast<int>(e);
}

extern "C" int rotary_device_info(int32_t ordinal, RotaryDeviceInfo *info) {
    cudaDeviceProp prop;
    cudaError_t e = cudaGetDeviceProperties(&prop, ordinal);
    if (e != cudaSuccess) return static_cast<int>(e);
    memset(info, 0, sizeof(*info));
    strncpy(info->name, prop.name, sizeof(info->name) - 1);
    info->cc_major = prop.major;
    info->cc_minor = prop.minor;
    info->sm_count = prop.multiProcessorCount;
    info->total_bytes = prop.totalGlobalMem;
    int v = 0;
    cudaDriverGetVersion(&v);
    info->driver_version = v;
    cudaRuntimeGetVersion(&v);
    info->runtime_version = v;
    return 0;
}

extern "C" int rotary_set_device(int32_t ordinal) {
    g_sm = -1;
    return static_cast<int>(cudaSetDevice(ordinal));
}

extern "C" int rotary_mem_info(uint64_t *free_bytes, uint64_t *total_bytes) {
    size_t f = 0, t = 0;
    cudaError_t e = cudaMemGetInfo(&f, &t);
    *free_bytes = f;
    *total_bytes = t;
    return static_cast<int>(e);
}

extern "C" int rotary_malloc(void **ptr, uint64_t bytes) {
    return static_cast<int>(cudaMalloc(ptr, bytes));
}

extern "C" int rotary_free(void *ptr) {
    return static_cast<int>(cudaFree(ptr));
}

extern "C" int rotary_host_alloc_pinned(void **ptr, uint64_t bytes) {
    return static_cast<int>(cudaHostAlloc(ptr, bytes, cudaHostAllocDefault));
}

extern "C" int rotary_host_free_pinned(void *ptr) {
    return static_cast<int>(cudaFreeHost(ptr));
}

extern "C" int rotary_memcpy_async(void *dst, const void *src, uint64_t bytes, RotaryCopyKind kind,
                                   void *stream) {
    cudaMemcpyKind k = kind == ROTARY_COPY_H2D   ? cudaMemcpyHostToDevice
                       : kind == ROTARY_COPY_D2H ? cudaMemcpyDeviceToHost
                                                 : cudaMemcpyDeviceToDevice;
    return static_cast<int>(cudaMemcpyAsync(dst, src, bytes, k, static_cast<cudaStream_t>(stream)));
}

extern "C" int rotary_memset_async(void *ptr, int32_t value, uint64_t bytes, void *stream) {
    return static_cast<int>(cudaMemsetAsync(ptr, value, bytes, static_cast<cudaStream_t>(stream)));
}

extern "C" int rotary_stream_create(void **stream) {
    cudaStream_t s = nullptr;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    *stream = s;
    return static_cast<int>(e);
}

extern "C" int rotary_stream_destroy(void *stream) {
    return static_cast<int>(cudaStreamDestroy(static_cast<cudaStream_t>(stream)));
}

extern "C" int rotary_stream_synchronize(void *stream) {
    return static_cast<int>(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

extern "C" int rotary_event_create(void **event) {
    cudaEvent_t ev = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    *event = ev;
    return static_cast<int>(e);
}

extern "C" int rotary_event_create_timing(void **event) {
    cudaEvent_t ev = nullptr;
    cudaError_t e = cudaEventCreate(&ev);
    *event = ev;
    return static_cast<int>(e);
}

extern "C" int rotary_event_query(void *event) {
    // A pending error of an earlier call stays; a not-ready answer must not become one (the
    // runtime may record it as the last error, and the next launcher would report it).
    const cudaError_t before = cudaPeekAtLastError();
    const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (e == cudaErrorNotReady && before == cudaSuccess) (void)cudaGetLastError();
    return static_cast<int>(e);
}

extern "C" int rotary_get_last_error(void) {
    return static_cast<int>(cudaGetLastError());
}

extern "C" int rotary_event_destroy(void *event) {
    return static_cast<int>(cudaEventDestroy(static_cast<cudaEvent_t>(event)));
}

extern "C" int rotary_event_record(void *event, void *stream) {
    return static_cast<int>(
        cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)));
}

extern "C" int rotary_stream_wait_event(void *stream, void *event) {
    return static_cast<int>(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                                static_cast<cudaEvent_t>(event), 0));
}

extern "C" int rotary_event_synchronize(void *event) {
    return static_cast<int>(cudaEventSynchronize(static_cast<cudaEvent_t>(event)));
}

extern "C" int rotary_event_elapsed_ms(float *ms, void *start, void *end) {
    return static_cast<int>(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start),
                                                 static_cast<cudaEvent_t>(end)));
}

extern "C" const char *rotary_error_name(int code) {
    return cudaGetErrorName(static_cast<cudaError_t>(code));
}

extern "C" const char *rotary_error_string(int code) {
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}
