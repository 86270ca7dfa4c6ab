// RMSNorm of rows: y = x / sqrt(mean(x^2) + eps) * w. One block per row; also the per-head
// q/k norm (rows = tokens * heads, width = head_dim). In place is allowed (y == x).
#pragma once

#include "include/common.cuh"

__global__ void rmsnorm_kernel(RotaryRmsNorm p);
