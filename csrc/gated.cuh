// The small elementwise ops of qwen35moe's gated attention and shared expert: split_gate
// (the q projection's [q_h | gate_h] per head into q and gate), sigmoid_mul (o *= sigmoid(gate))
// and sigmoid (the shared expert's per-token weight). One thread per element; scalar loads,
// so 4-byte alignment suffices. sigmoid is 1 / (1 + expf(-x)) as the CPU's (no fast-math).
#pragma once

#include "include/common.cuh"

__global__ void split_gate_kernel(RotarySplitGate p);
__global__ void sigmoid_mul_kernel(RotarySigmoidMul p);
__global__ void sigmoid_kernel(RotarySigmoid p);
