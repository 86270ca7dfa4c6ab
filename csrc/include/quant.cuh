// Weight formats on the device: ggml's block layouts (src/quant/ is the byte-exact CPU twin),
// with static_asserts on their sizes, and for each format a `Quant` trait struct:
//   BLOCK_ELEMS, BLOCK_BYTES   one block
//   CHUNK                      elements one thread dequantizes at a time (divides BLOCK_ELEMS,
//                              a multiple of 32, elements contiguous in the row)
//   dequant(row, c, v)         v[0..CHUNK) = elements c*CHUNK .. (c+1)*CHUNK of the row
// Kernels (gemv, moe, embed) are templates over these structs; gen/ instantiates them.
// A row starts at a multiple of its bytes (abi.h), so a block keeps only the alignment of its
// size (`block_align`): 34-, 22- or 110-byte blocks are 2-byte aligned, MXFP4's 17 not at all.
// Loads are never wider than that (`load_u16`, `load_u32`). The formats that read lookup
// tables (i-quants, FP4) are in quant_iq.cuh, included at the end.
#pragma once

#include <stddef.h>

#include "common.cuh"

#define QK_K 256

struct block_q8_0 { uint16_t d; int8_t qs[32]; };
struct block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct block_q4_K { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; };
struct block_q5_K {
    uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2];
};
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };

static_assert(sizeof(block_q8_0) == 34, "block_q8_0 is 34 bytes");
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 is 18 bytes");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K is 144 bytes");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K is 176 bytes");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K is 210 bytes");

struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d; uint16_t dmin; };
struct block_q3_K {
    uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d;
};

static_assert(sizeof(block_q4_1) == 20, "block_q4_1 is 20 bytes");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 is 22 bytes");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 is 24 bytes");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K is 84 bytes");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K is 110 bytes");

// The alignment a block of `bytes` bytes keeps in a row: the largest power of two dividing it,
// at most 16 (abi.h).
__host__ __device__ constexpr int block_align(int bytes) {
    return (bytes & -bytes) < 16 ? (bytes & -bytes) : 16;
}

// The little-endian u16 / u32 at p, with loads no wider than ALIGN (p is ALIGN-aligned).
template <int ALIGN>
__device__ __forceinline__ uint32_t load_u16(const uint8_t *p) {
    if constexpr (ALIGN >= 2) {
        return *reinterpret_cast<const uint16_t *>(p);
    } else {
        return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8);
    }
}

template <int ALIGN>
__device__ __forceinline__ uint32_t load_u32(const uint8_t *p) {
    if constexpr (ALIGN >= 4) {
        return *reinterpret_cast<const uint32_t *>(p);
    } else {
        return load_u16<ALIGN>(p) | (load_u16<ALIGN>(p + 2) << 16);
    }
}

// N little-endian u32 words from p (ALIGN-aligned).
template <int ALIGN, int N>
__device__ __forceinline__ void load_words(const uint8_t *p, uint32_t *w) {
#pragma unroll
    for (int i = 0; i < N; i++) w[i] = load_u32<ALIGN>(p + 4 * i);
}

// Byte j of a run held as little-endian words.
__device__ __forceinline__ uint32_t byte_of(const uint32_t *w, int j) {
    return (w[j >> 2] >> (8 * (j & 3))) & 0xff;
}

// Code j < 32 of a 16-byte run of nibbles (4 words): byte j holds code j in its low nibble and
// code j + 16 in its high nibble (Q4_0's layout, shared by the 32-element formats).
__device__ __forceinline__ uint32_t nibble32(const uint32_t *w, int j) {
    return (byte_of(w, j & 15) >> (j >= 16 ? 4 : 0)) & 0x0f;
}

// The 6-bit (scale, min) pair j of a Q4_K/Q5_K block (ggml get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, float &sc, float &m) {
    if (j < 4) {
        sc = static_cast<float>(q[j] & 63);
        m = static_cast<float>(q[j + 4] & 63);
    } else {
        sc = static_cast<float>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        m = static_cast<float>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Group g of a Q4_K/Q5_K block: x = d1*q - mm1 for its first 32 elements, d2*q - mm2 after.
__device__ __forceinline__ void group_scales_k4(uint16_t d_bits, uint16_t dmin_bits, const uint8_t *scales,
                                                int g, float &d1, float &mm1, float &d2, float &mm2) {
    const float d = f16_bits_to_float(d_bits), dmin = f16_bits_to_float(dmin_bits);
    float sc1, m1, sc2, m2;
    scale_min_k4(2 * g, scales, sc1, m1);
    scale_min_k4(2 * g + 1, scales, sc2, m2);
    d1 = d * sc1;
    mm1 = dmin * m1;
    d2 = d * sc2;
    mm2 = dmin * m2;
}

struct QuantF32 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_F32;
    static constexpr int BLOCK_ELEMS = 1, BLOCK_BYTES = 4, CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const float4 *p = reinterpret_cast<const float4 *>(row + static_cast<size_t>(c) * 128);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float4 f = p[i];
            v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
        }
    }
};

// F16 and BF16: 32 elements (64 bytes, four 16-byte loads) per chunk, widened by CONV.
struct F16Bits {
    __device__ static float conv(uint16_t b) { return f16_bits_to_float(b); }
};
struct BF16Bits {
    __device__ static float conv(uint16_t b) { return bf16_bits_to_float(b); }
};

template <RotaryQuant QID, class CONV>
struct QuantHalf {
    static constexpr RotaryQuant ID = QID;
    static constexpr int BLOCK_ELEMS = 1, BLOCK_BYTES = 2, CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const uint4 *p = reinterpret_cast<const uint4 *>(row + static_cast<size_t>(c) * 64);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint4 u = p[i];
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                v[8 * i + 2 * j] = CONV::conv(static_cast<uint16_t>(w[j] & 0xffff));
                v[8 * i + 2 * j + 1] = CONV::conv(static_cast<uint16_t>(w[j] >> 16));
            }
        }
    }
};

using QuantF16 = QuantHalf<ROTARY_QUANT_F16, F16Bits>;
using QuantBF16 = QuantHalf<ROTARY_QUANT_BF16, BF16Bits>;

// Q8_0: x = d * q, 32 per block. Blocks are 34 bytes: only 2-byte alignment.
struct QuantQ8_0 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q8_0;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = 34, CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const uint8_t *b = row + static_cast<size_t>(c) * BLOCK_BYTES;
        const float d = load_f16(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            uint16_t two = q[i];
            v[2 * i] = d * static_cast<float>(static_cast<int8_t>(two & 0xff));
            v[2 * i + 1] = d * static_cast<float>(static_cast<int8_t>(two >> 8));
        }
    }
};

// Q4_0: x = d * (q - 8); byte i holds element i (low nibble) and i + 16 (high nibble).
struct QuantQ4_0 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q4_0;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = 18, CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const uint8_t *b = row + static_cast<size_t>(c) * BLOCK_BYTES;
        const float d = load_f16(b);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(b + 2);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint16_t two = q[i];
            v[2 * i] = d * static_cast<float>((two & 0x0f) - 8);
            v[2 * i + 1] = d * static_cast<float>(((two >> 8) & 0x0f) - 8);
            v[2 * i + 16] = d * static_cast<float>(((two >> 4) & 0x0f) - 8);
            v[2 * i + 17] = d * static_cast<float>((two >> 12) - 8);
        }
    }
};

// Q4_K: 256 per block in 4 groups of 64; group g takes its 32 bytes qs[32g..32g+32]: low nibbles
// are elements 64g + i (sub-block 2g), high nibbles 64g + 32 + i (sub-block 2g + 1);
// x = d*sc*q - dmin*m. One chunk is one group (16-byte aligned: blocks are 144 = 9 * 16 bytes).
struct QuantQ4_K {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q4_K;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = 144, CHUNK = 64;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const int g = c & 3;
        const block_q4_K *b = reinterpret_cast<const block_q4_K *>(row) + (c >> 2);
        float d1, mm1, d2, mm2;
        group_scales_k4(b->d, b->dmin, b->scales, g, d1, mm1, d2, mm2);
        const uint4 *q = reinterpret_cast<const uint4 *>(b->qs + 32 * g);
#pragma unroll
        for (int i = 0; i < 2; i++) {
            uint4 u = q[i];
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const uint32_t byte = (w[j / 4] >> (8 * (j % 4))) & 0xff;
                v[16 * i + j] = d1 * static_cast<float>(byte & 0x0f) - mm1;
                v[32 + 16 * i + j] = d2 * static_cast<float>(byte >> 4) - mm2;
            }
        }
    }
};

// Q5_K: Q4_K plus a fifth bit: element 64g + i takes bit 2g of qh[i], 64g + 32 + i bit 2g + 1.
struct QuantQ5_K {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q5_K;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = 176, CHUNK = 64;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const int g = c & 3;
        const block_q5_K *b = reinterpret_cast<const block_q5_K *>(row) + (c >> 2);
        float d1, mm1, d2, mm2;
        group_scales_k4(b->d, b->dmin, b->scales, g, d1, mm1, d2, mm2);
        const uint4 *q = reinterpret_cast<const uint4 *>(b->qs + 32 * g);
        const uint4 *h = reinterpret_cast<const uint4 *>(b->qh);
#pragma unroll
        for (int i = 0; i < 2; i++) {
            uint4 u = q[i], hu = h[i];
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
            const uint32_t hw[4] = {hu.x, hu.y, hu.z, hu.w};
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const uint32_t byte = (w[j / 4] >> (8 * (j % 4))) & 0xff;
                const uint32_t hb = (hw[j / 4] >> (8 * (j % 4))) & 0xff;
                const uint32_t lo = (byte & 0x0f) | (((hb >> (2 * g)) & 1) << 4);
                const uint32_t hi = (byte >> 4) | (((hb >> (2 * g + 1)) & 1) << 4);
                v[16 * i + j] = d1 * static_cast<float>(lo) - mm1;
                v[32 + 16 * i + j] = d2 * static_cast<float>(hi) - mm2;
            }
        }
    }
};

// Q6_K: 256 per block in two halves of 128; within half h, quarter k (elements 128h + 32k + l,
// l < 32) takes the low (k < 2) or high (k >= 2) nibble of ql[64h + 32(k & 1) + l], bits
// 2k..2k+1 of qh[32h + l], and scale scales[8h + 2k + l/16]; x = d * sc * (q - 32).
// Blocks are 210 bytes: only 2-byte alignment, so bytes are read one at a time.
struct QuantQ6_K {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q6_K;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = 210, CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q6_K *b = reinterpret_cast<const block_q6_K *>(row) + (c >> 3);
        const int h = (c >> 2) & 1, k = c & 3;
        const float d = f16_bits_to_float(b->d);
        const float s0 = d * static_cast<float>(b->scales[8 * h + 2 * k]);
        const float s1 = d * static_cast<float>(b->scales[8 * h + 2 * k + 1]);
        // 2-byte loads: the block (210 bytes) and these offsets are even.
        const uint16_t *ql = reinterpret_cast<const uint16_t *>(b->ql + 64 * h + 32 * (k & 1));
        const uint16_t *qh = reinterpret_cast<const uint16_t *>(b->qh + 32 * h);
        const int shift = (k >= 2) ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            const uint32_t lo2 = ql[i], hi2 = qh[i];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int l = 2 * i + j;
                const int low = (lo2 >> (8 * j + shift)) & 0x0f;
                const int six = low | (((hi2 >> (8 * j + 2 * k)) & 3) << 4);
                v[l] = (l < 16 ? s0 : s1) * static_cast<float>(six - 32);
            }
        }
    }
};

// Q4_1: x = d * q + m, q the 4-bit codes as Q4_0's. Blocks are 20 bytes: 4-byte aligned.
struct QuantQ4_1 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q4_1;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = sizeof(block_q4_1), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_q4_1, qs) % 4 == 0, "qs is read as words");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q4_1 *b = reinterpret_cast<const block_q4_1 *>(row) + c;
        const float d = f16_bits_to_float(b->d), m = f16_bits_to_float(b->m);
        uint32_t w[4];
        load_words<ALIGN, 4>(b->qs, w);
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = d * static_cast<float>(nibble32(w, j)) + m;
    }
};

// Q5_0 and Q5_1: Q4_0's codes plus bit j of the little-endian u32 qh as code j's fifth bit.
// Q5_0: x = d * (q - 16) (22-byte blocks: 2-byte aligned); Q5_1: x = d * q + m (24: 8-byte).
template <class B>
__device__ __forceinline__ void codes5(const B *b, uint32_t *w, uint32_t &qh) {
    constexpr int ALIGN = block_align(sizeof(B));
    static_assert(offsetof(B, qh) % (ALIGN < 4 ? ALIGN : 4) == 0, "qh at its load width");
    static_assert(offsetof(B, qs) % (ALIGN < 4 ? ALIGN : 4) == 0, "qs at its load width");
    qh = load_u32<ALIGN>(b->qh);
    load_words<ALIGN, 4>(b->qs, w);
}

struct QuantQ5_0 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q5_0;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = sizeof(block_q5_0), CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q5_0 *b = reinterpret_cast<const block_q5_0 *>(row) + c;
        const float d = f16_bits_to_float(b->d);
        uint32_t w[4], qh;
        codes5(b, w, qh);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int q = static_cast<int>(nibble32(w, j) | (((qh >> j) & 1) << 4));
            v[j] = d * static_cast<float>(q - 16);
        }
    }
};

struct QuantQ5_1 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q5_1;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = sizeof(block_q5_1), CHUNK = 32;
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q5_1 *b = reinterpret_cast<const block_q5_1 *>(row) + c;
        const float d = f16_bits_to_float(b->d), m = f16_bits_to_float(b->m);
        uint32_t w[4], qh;
        codes5(b, w, qh);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const uint32_t q = nibble32(w, j) | (((qh >> j) & 1) << 4);
            v[j] = d * static_cast<float>(q) + m;
        }
    }
};

// Q2_K and Q3_K: 256 per block in 16 sub-blocks of 16; chunk k of a block (elements 32k + l,
// l < 32) is half h = k / 4, shift s = k % 4: its 2 low bits are bits 2s..2s+1 of
// qs[32h + l], its sub-blocks 2k and 2k + 1.
// Q2_K: x = d*sc*q - dmin*m with sc, m the nibbles of scales[i]. 84-byte blocks: 4-byte aligned.
struct QuantQ2_K {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q2_K;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_q2_K), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_q2_K, qs) % 4 == 0, "qs is read as words");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q2_K *b = reinterpret_cast<const block_q2_K *>(row) + (c >> 3);
        const int k = c & 7, h = k >> 2, s = k & 3;
        const float d = f16_bits_to_float(b->d), dmin = f16_bits_to_float(b->dmin);
        uint32_t w[8];
        load_words<ALIGN, 8>(b->qs + 32 * h, w);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const uint32_t sc = b->scales[2 * k + half];
            const float dl = d * static_cast<float>(sc & 0x0f);
            const float ml = dmin * static_cast<float>(sc >> 4);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const uint32_t q = (byte_of(w, 16 * half + j) >> (2 * s)) & 3;
                v[16 * half + j] = dl * static_cast<float>(q) - ml;
            }
        }
    }
};

// Q3_K: element 32k + l takes its third bit from bit k of hmask[l] (clear: q - 4); sub-block i
// has the signed 6-bit scale (low nibble of scales[i % 8] (i < 8) or its high nibble, high 2
// bits at 2(i / 4) of scales[8 + i % 4]) - 32; x = d * sc * q. 110-byte blocks: 2-byte aligned.
struct QuantQ3_K {
    static constexpr RotaryQuant ID = ROTARY_QUANT_Q3_K;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_q3_K), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_q3_K, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    __device__ static float scale(const uint8_t *packed, int i) {
        const uint32_t low = (i < 8) ? (packed[i] & 0x0f) : (packed[i - 8] >> 4);
        const uint32_t high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        return static_cast<float>(static_cast<int>(low | (high << 4)) - 32);
    }
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_q3_K *b = reinterpret_cast<const block_q3_K *>(row) + (c >> 3);
        const int k = c & 7, h = k >> 2, s = k & 3;
        const float d = f16_bits_to_float(b->d);
        uint32_t w[8], hm[8];
        load_words<ALIGN, 8>(b->qs + 32 * h, w);
        load_words<ALIGN, 8>(b->hmask, hm);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const float dl = d * scale(b->scales, 2 * k + half);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int l = 16 * half + j;
                const int low = static_cast<int>((byte_of(w, l) >> (2 * s)) & 3);
                const int q = low - (((byte_of(hm, l) >> k) & 1) ? 0 : 4);
                v[l] = dl * static_cast<float>(q);
            }
        }
    }
};

// Bytes of one row of `cols` elements.
template <class Q>
__host__ __device__ __forceinline__ size_t row_bytes(int cols) {
    return static_cast<size_t>(cols / Q::BLOCK_ELEMS) * Q::BLOCK_BYTES;
}

#include "quant_iq.cuh"
