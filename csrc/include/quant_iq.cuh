// The weight formats whose values come from lookup tables: ggml's i-quants (IQ1_S … IQ4_XS)
// and the FP4 formats (MXFP4, NVFP4), as `Quant` trait structs (see quant.cuh, which includes
// this file at its end). src/quant/{iq1,iq2,iq3,iq4,fp4}.rs are their byte-exact CPU twins,
// with the same f32 arithmetic in the same order.
//
// The tables live in src/quant/grids.rs, the one source: gen/kernels.rs writes them into the
// generated quant_grids.cu as __device__ arrays (global memory through L1: lanes index them
// with data, which __constant__ memory would serialise), defined once for every instance. They
// are declared here; that file includes this one, so a length here that disagrees with
// grids.rs fails to compile.
#pragma once

#include "quant.cuh"

extern const __device__ uint64_t IQ2XXS_GRID[256];
extern const __device__ uint64_t IQ2XS_GRID[512];
extern const __device__ uint64_t IQ2S_GRID[1024];
extern const __device__ uint32_t IQ3XXS_GRID[256];
extern const __device__ uint32_t IQ3S_GRID[512];
extern const __device__ uint64_t IQ1S_GRID[2048];
extern const __device__ uint8_t KSIGNS_IQ2XS[128];
extern const __device__ int8_t KVALUES_IQ4NL[16];
extern const __device__ int8_t KVALUES_MXFP4[16];
// grids.rs IQ1S_DELTA (quant_grids.cu checks that they agree).
#define ROTARY_IQ1S_DELTA 0.125f

struct block_iq2_xxs { uint16_t d; uint16_t qs[QK_K / 8]; };
struct block_iq2_xs { uint16_t d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; };
struct block_iq2_s {
    uint16_t d; uint8_t qs[QK_K / 8]; uint8_t signs[QK_K / 8]; uint8_t qh[QK_K / 32];
    uint8_t scales[QK_K / 32];
};
struct block_iq3_xxs { uint16_t d; uint8_t qs[QK_K / 4]; uint8_t aux[QK_K / 8]; };
struct block_iq3_s {
    uint16_t d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8];
    uint8_t scales[QK_K / 64];
};
struct block_iq1_s { uint16_t d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; };
struct block_iq1_m { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint16_t scales[4]; };
struct block_iq4_nl { uint16_t d; uint8_t qs[16]; };
struct block_iq4_xs {
    uint16_t d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2];
};
struct block_mxfp4 { uint8_t e; uint8_t qs[16]; };
struct block_nvfp4 { uint8_t d[4]; uint8_t qs[32]; };

static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs is 66 bytes");
static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs is 74 bytes");
static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s is 82 bytes");
static_assert(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs is 98 bytes");
static_assert(sizeof(block_iq3_s) == 110, "block_iq3_s is 110 bytes");
static_assert(sizeof(block_iq1_s) == 50, "block_iq1_s is 50 bytes");
static_assert(sizeof(block_iq1_m) == 56, "block_iq1_m is 56 bytes");
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl is 18 bytes");
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs is 136 bytes");
static_assert(sizeof(block_mxfp4) == 17, "block_mxfp4 is 17 bytes");
static_assert(sizeof(block_nvfp4) == 36, "block_nvfp4 is 36 bytes");

// v[j] = db * grid value j * ±1 (bit j of `signs` set: negative), N values of a grid row.
template <int N, class ROW>
__device__ __forceinline__ void grid_signed(float *v, float db, ROW row, uint32_t signs) {
#pragma unroll
    for (int j = 0; j < N; j++) {
        const float g = static_cast<float>(static_cast<uint32_t>(row >> (8 * j)) & 0xff);
        v[j] = db * g * ((signs >> j) & 1 ? -1.0f : 1.0f);
    }
}

// The IQ2 scale of a 4-bit code s: d * (0.5 + s) * 0.25.
__device__ __forceinline__ float iq2_db(float d, uint32_t s) {
    return d * (0.5f + static_cast<float>(s)) * 0.25f;
}

// IQ2_XXS: sub-block i of 32 (one chunk) reads (aux0, aux1) = u32 2i, 2i + 1 of qs: byte l of
// aux0 indexes the grid for elements 8l..8l+8, bits 7l..7l+7 of aux1 KSIGNS_IQ2XS, aux1 >> 28
// is the scale. 66-byte blocks: 2-byte aligned.
struct QuantIQ2_XXS {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ2_XXS;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq2_xxs), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq2_xxs *b = reinterpret_cast<const block_iq2_xxs *>(row) + (c >> 3);
        const uint8_t *q = reinterpret_cast<const uint8_t *>(b->qs) + 8 * (c & 7);
        const uint32_t aux0 = load_u32<ALIGN>(q), aux1 = load_u32<ALIGN>(q + 4);
        const float db = iq2_db(f16_bits_to_float(b->d), aux1 >> 28);
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint64_t g = IQ2XXS_GRID[(aux0 >> (8 * l)) & 0xff];
            grid_signed<8>(v + 8 * l, db, g, KSIGNS_IQ2XS[(aux1 >> (7 * l)) & 127]);
        }
    }
};

// IQ2_XS: u16 k of qs covers elements 8k..8k+8 (low 9 bits a grid row, top 7 a KSIGNS_IQ2XS
// index); chunk i's first 16 elements take the low nibble of scales[i], the rest the high one.
struct QuantIQ2_XS {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ2_XS;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq2_xs), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq2_xs *b = reinterpret_cast<const block_iq2_xs *>(row) + (c >> 3);
        const int i = c & 7;
        const float d = f16_bits_to_float(b->d);
        const uint32_t sc = b->scales[i];
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint32_t q = b->qs[4 * i + l];
            const float db = iq2_db(d, (sc >> (l < 2 ? 0 : 4)) & 0x0f);
            grid_signed<8>(v + 8 * l, db, IQ2XS_GRID[q & 511], KSIGNS_IQ2XS[q >> 9]);
        }
    }
};

// IQ2_S: grid row k of 1024 is qs[k] plus bits 2(k % 4)..+2 of qh[k / 4] as bits 8-9; bit j
// of signs[k] is element 8k + j's sign; scales as IQ2_XS. 82-byte blocks: 2-byte aligned.
struct QuantIQ2_S {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ2_S;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq2_s), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq2_s, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    static_assert(offsetof(block_iq2_s, signs) % ALIGN == 0, "signs too");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq2_s *b = reinterpret_cast<const block_iq2_s *>(row) + (c >> 3);
        const int i = c & 7;
        const float d = f16_bits_to_float(b->d);
        const uint32_t qs = load_u32<ALIGN>(b->qs + 4 * i);
        const uint32_t signs = load_u32<ALIGN>(b->signs + 4 * i);
        const uint32_t qh = b->qh[i], sc = b->scales[i];
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint32_t k = ((qs >> (8 * l)) & 0xff) | (((qh >> (2 * l)) & 3) << 8);
            const float db = iq2_db(d, (sc >> (l < 2 ? 0 : 4)) & 0x0f);
            grid_signed<8>(v + 8 * l, db, IQ2S_GRID[k], (signs >> (8 * l)) & 0xff);
        }
    }
};

// IQ3_XXS: grid row k of 256 is qs[k] (elements 4k..4k+4); sub-block i (one chunk) takes
// aux = u32 i after qs: aux >> 28 the scale, db = d * (0.5 + s) * 0.5, bits 7l..7l+7 a
// KSIGNS_IQ2XS index for elements 8l..8l+8. 98-byte blocks: 2-byte aligned.
struct QuantIQ3_XXS {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ3_XXS;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq3_xxs), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq3_xxs, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    static_assert(offsetof(block_iq3_xxs, aux) % ALIGN == 0, "aux too");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq3_xxs *b = reinterpret_cast<const block_iq3_xxs *>(row) + (c >> 3);
        const int i = c & 7;
        uint32_t qs[2];
        load_words<ALIGN, 2>(b->qs + 8 * i, qs);
        const uint32_t aux = load_u32<ALIGN>(b->aux + 4 * i);
        const float db = f16_bits_to_float(b->d) * (0.5f + static_cast<float>(aux >> 28)) * 0.5f;
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint32_t signs = KSIGNS_IQ2XS[(aux >> (7 * l)) & 127];
            grid_signed<4>(v + 8 * l, db, IQ3XXS_GRID[byte_of(qs, 2 * l)], signs);
            grid_signed<4>(v + 8 * l + 4, db, IQ3XXS_GRID[byte_of(qs, 2 * l + 1)], signs >> 4);
        }
    }
};

// IQ3_S: grid row k of 512 is qs[k] plus bit k % 8 of qh[k / 8] as bit 8; bit j of signs[k / 2]
// (nibble k % 2) is element 4k + j's sign; sub-block i has the scale nibble i % 2 of
// scales[i / 2], db = d * (1 + 2s). 110-byte blocks: 2-byte aligned.
struct QuantIQ3_S {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ3_S;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq3_s), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq3_s, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    static_assert(offsetof(block_iq3_s, signs) % ALIGN == 0, "signs too");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq3_s *b = reinterpret_cast<const block_iq3_s *>(row) + (c >> 3);
        const int i = c & 7;
        const uint32_t s = (b->scales[i / 2] >> (4 * (i % 2))) & 0x0f;
        const float db = f16_bits_to_float(b->d) * static_cast<float>(1 + 2 * s);
        uint32_t qs[2];
        load_words<ALIGN, 2>(b->qs + 8 * i, qs);
        const uint32_t signs = load_u32<ALIGN>(b->signs + 4 * i), qh = b->qh[i];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const uint32_t r = byte_of(qs, k) | (((qh >> k) & 1) << 8);
            grid_signed<4>(v + 4 * k, db, IQ3S_GRID[r], signs >> (4 * k));
        }
    }
};

// IQ1_S and IQ1_M: 8 elements per row of an 11-bit grid of -1, 0, 1 (as bytes), shifted by
// ±delta: x = dl * (grid value + delta).
__device__ __forceinline__ void grid_delta8(float *v, float dl, uint64_t row, float delta) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int8_t g = static_cast<int8_t>((row >> (8 * j)) & 0xff);
        v[j] = dl * (static_cast<float>(g) + delta);
    }
}

// IQ1_S: sub-block i takes qh[i]: row 4i + l is qs[4i + l] plus bits 3l..3l+3 of qh[i] as
// bits 8-10; bits 12-14 are the scale s, dl = d * (2s + 1); bit 15 makes delta negative.
struct QuantIQ1_S {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ1_S;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq1_s), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq1_s, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq1_s *b = reinterpret_cast<const block_iq1_s *>(row) + (c >> 3);
        const int i = c & 7;
        const uint32_t qh = b->qh[i], qs = load_u32<ALIGN>(b->qs + 4 * i);
        const float dl = f16_bits_to_float(b->d) * static_cast<float>(2 * ((qh >> 12) & 7) + 1);
        const float delta = (qh & 0x8000) ? -ROTARY_IQ1S_DELTA : ROTARY_IQ1S_DELTA;
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint32_t r = ((qs >> (8 * l)) & 0xff) | (((qh >> (3 * l)) & 7) << 8);
            grid_delta8(v + 8 * l, dl, IQ1S_GRID[r], delta);
        }
    }
};

// IQ1_M: row k is qs[k] plus the low 3 bits of nibble k % 2 of qh[k / 2] as bits 8-10, the
// nibble's bit 3 making delta negative; elements 16m..16m+16 take the 3-bit scale at bits
// 3(m % 4).. of scales[m / 4], dl = d * (2s + 1); d is the f16 assembled from the top nibbles
// of the four scales. 56-byte blocks: 8-byte aligned.
struct QuantIQ1_M {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ1_M;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq1_m), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq1_m, qh) % 2 == 0, "qh is read in 2-byte loads");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq1_m *b = reinterpret_cast<const block_iq1_m *>(row) + (c >> 3);
        const int i = c & 7;
        const uint32_t s0 = b->scales[0], s1 = b->scales[1], s2 = b->scales[2], s3 = b->scales[3];
        const uint32_t d_bits =
            (s0 >> 12) | ((s1 >> 8) & 0x00f0) | ((s2 >> 4) & 0x0f00) | (s3 & 0xf000);
        const float d = f16_bits_to_float(static_cast<uint16_t>(d_bits));
        const uint32_t sc = b->scales[i / 2] >> (6 * (i % 2));
        const uint32_t qs = load_u32<ALIGN>(b->qs + 4 * i), qh = load_u16<ALIGN>(b->qh + 2 * i);
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const uint32_t s = (sc >> (3 * (l / 2))) & 7;
            const float dl = d * static_cast<float>(2 * s + 1);
            const uint32_t nib = (qh >> (4 * l)) & 0x0f;
            const uint32_t r = ((qs >> (8 * l)) & 0xff) | ((nib & 7) << 8);
            const float delta = (nib & 8) ? -ROTARY_IQ1S_DELTA : ROTARY_IQ1S_DELTA;
            grid_delta8(v + 8 * l, dl, IQ1S_GRID[r], delta);
        }
    }
};

// IQ4_NL: x = d * KVALUES_IQ4NL[q], q the 4-bit codes as Q4_0's. 18-byte blocks: 2-byte
// aligned.
struct QuantIQ4_NL {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ4_NL;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = sizeof(block_iq4_nl), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq4_nl, qs) % ALIGN == 0, "qs is read in ALIGN-wide loads");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq4_nl *b = reinterpret_cast<const block_iq4_nl *>(row) + c;
        const float d = f16_bits_to_float(b->d);
        uint32_t w[4];
        load_words<ALIGN, 4>(b->qs, w);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            v[j] = d * static_cast<float>(KVALUES_IQ4NL[nibble32(w, j)]);
        }
    }
};

// IQ4_XS: sub-block i of 32 (one chunk) has IQ4_NL's 16 bytes at qs[16i] and the 6-bit scale
// (low nibble i % 2 of scales_l[i / 2], high 2 bits at 2i of scales_h) - 32;
// x = d * ls * level. 136-byte blocks: 8-byte aligned.
struct QuantIQ4_XS {
    static constexpr RotaryQuant ID = ROTARY_QUANT_IQ4_XS;
    static constexpr int BLOCK_ELEMS = QK_K, BLOCK_BYTES = sizeof(block_iq4_xs), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_iq4_xs, qs) % 4 == 0, "qs is read as words");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_iq4_xs *b = reinterpret_cast<const block_iq4_xs *>(row) + (c >> 3);
        const int i = c & 7;
        const uint32_t low = (b->scales_l[i / 2] >> (4 * (i % 2))) & 0x0f;
        const uint32_t high = (static_cast<uint32_t>(b->scales_h) >> (2 * i)) & 3;
        const int ls = static_cast<int>(low | (high << 4)) - 32;
        const float dl = f16_bits_to_float(b->d) * static_cast<float>(ls);
        uint32_t w[4];
        load_words<ALIGN, 4>(b->qs + 16 * i, w);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            v[j] = dl * static_cast<float>(KVALUES_IQ4NL[nibble32(w, j)]);
        }
    }
};

// MXFP4: x = d * KVALUES_MXFP4[q] (the E2M1 values doubled), q the 4-bit codes as Q4_0's, d
// the E8M0 exponent e halved: 2^(e - 128), e < 2 the subnormals. 17-byte blocks: a row may
// start at any address, so every byte is read alone.
struct QuantMXFP4 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_MXFP4;
    static constexpr int BLOCK_ELEMS = 32, BLOCK_BYTES = sizeof(block_mxfp4), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(ALIGN == 1, "MXFP4 blocks are byte aligned");
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_mxfp4 *b = reinterpret_cast<const block_mxfp4 *>(row) + c;
        const uint32_t e = b->e;
        const float d = __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
        uint32_t w[4];
        load_words<ALIGN, 4>(b->qs, w);
#pragma unroll
        for (int j = 0; j < 32; j++) {
            v[j] = d * static_cast<float>(KVALUES_MXFP4[nibble32(w, j)]);
        }
    }
};

// NVFP4: 64 per block in 4 sub-blocks of 16, each with its unsigned E4M3 scale d[s] (bias 7,
// halved; 0 and 0x7F read as 0, bit 7 ignored); sub-block s reads qs[8s..8s+8], element j in
// the low nibble, j + 8 in the high one. A chunk is two sub-blocks. 36-byte blocks: 4-byte
// aligned.
struct QuantNVFP4 {
    static constexpr RotaryQuant ID = ROTARY_QUANT_NVFP4;
    static constexpr int BLOCK_ELEMS = 64, BLOCK_BYTES = sizeof(block_nvfp4), CHUNK = 32;
    static constexpr int ALIGN = block_align(BLOCK_BYTES);
    static_assert(offsetof(block_nvfp4, qs) % 4 == 0, "qs is read as words");
    __device__ static float ue4m3_half(uint32_t x) {
        if (x == 0 || x == 0x7f) return 0.0f;
        const int exp = static_cast<int>((x >> 3) & 0x0f);
        const float man = static_cast<float>(x & 7);
        // Every step is exact: 2^(exp - 7) is a normal f32.
        const float raw = (exp == 0) ? man * (1.0f / 512.0f)
                                     : (1.0f + man / 8.0f) * __uint_as_float((exp + 120) << 23);
        return raw * 0.5f;
    }
    __device__ static void dequant(const uint8_t *row, int c, float *v) {
        const block_nvfp4 *b = reinterpret_cast<const block_nvfp4 *>(row) + (c >> 1);
        const int h = c & 1;
        uint32_t w[4];
        load_words<ALIGN, 4>(b->qs + 16 * h, w);
#pragma unroll
        for (int s = 0; s < 2; s++) {
            const float d = ue4m3_half(b->d[2 * h + s]);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const uint32_t q = (byte_of(w, 8 * s + (j & 7)) >> (j >= 8 ? 4 : 0)) & 0x0f;
                v[16 * s + j] = d * static_cast<float>(KVALUES_MXFP4[q]);
            }
        }
    }
};
