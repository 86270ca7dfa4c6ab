// NeoX RoPE in place: in each head, pairs (i, i + rope_dims/2) rotate by the angle
// (pos0 + t) * inv_freq[i] (inv_freq computed once on the host, as the CPU does). Dimensions
// past rope_dims are left alone (partial rotary).
#pragma once

#include "include/common.cuh"

__global__ void rope_neox_kernel(RotaryRope p);
