// What the SIMT executor (simt.cpp) and the emulated runtime (runtime.cpp) share: the kernel
// fault report, the per-host-thread executor entry point and the emulator's settings.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace rotary_emu {

// Settings, read once from the environment (README, "The emulated CUDA build").
struct Config {
    int devices;            // ROTARY_EMU_DEVICES (default 1)
    size_t vram_bytes;      // ROTARY_EMU_VRAM (default 8GiB)
    size_t context_bytes;   // ROTARY_EMU_CONTEXT (default 300MiB): the context's own VRAM
    int sm;                 // ROTARY_EMU_SM (default 89)
    uint64_t seed;          // ROTARY_EMU_SEED (default 1): thread orders
    double link_gbps;       // ROTARY_EMU_LINK_GBPS (default 16; 0 = copies take no modelled time)
    int threads;            // ROTARY_EMU_THREADS (default: the machine's cores): host threads per launch
    int sm_count;           // ROTARY_EMU_SMS (default 24, an RTX 4060 Laptop): for local memory
    size_t kernel_bytes;    // ROTARY_EMU_KERNEL_BYTES (default 128KiB): code loaded per kernel
};
const Config &config();

// Run every block of `launch` on this host thread. On a kernel error (out-of-bounds access,
// divergent barrier, bad shuffle mask, deadlock) returns the CUDA error it maps to and fills
// `message` with a line naming the kernel, the block and the thread; cudaSuccess otherwise.
cudaError_t run_launch(const Launch &launch, uint64_t seed, std::string &message);

// Where a host address lies, for fault reports: "12 bytes past the end of a 4096-byte device
// allocation at 0x..." or "" if in no allocation's guard pages.
std::string describe_address(uintptr_t addr);

// Install the fault handler once (SIGSEGV/SIGBUS in a kernel becomes an error report).
void install_fault_handler();

}  // namespace rotary_emu
