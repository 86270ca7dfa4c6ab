// The CUDA runtime, thinly wrapped behind abi.h so the Rust host needs no CUDA headers: device
// queries, memory (device and pinned host), async copies, streams and events. Every wrapper
// returns the cudaError_t as an int.
#pragma once

#include "include/common.cuh"

// The SM (major * 10 + minor) of the current device, cached per process; 0 if unknown.
int rotary_current_sm();
