// Residual add: y += x, elementwise.
#pragma once

#include "include/common.cuh"

__global__ void add_kernel(RotaryAdd p);
