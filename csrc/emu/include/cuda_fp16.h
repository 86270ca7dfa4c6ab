// The emulated CUDA build's `cuda_fp16.h`: IEEE binary16 as bits, with the conversions csrc/
// uses. Widening is exact; narrowing rounds to nearest even (overflow to infinity, NaN kept
// quiet), as the device's cvt.rn.f16.f32 does.
#pragma once

#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t bits;
};

static inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
static inline unsigned short __half_as_ushort(__half h) { return h.bits; }

static inline float __half2float(__half h) {
    const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    const uint32_t exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ffu;
    uint32_t out;
    if (exp == 0x1f) {
        out = sign | 0x7f800000u | (man << 13);  // inf / NaN
    } else if (exp != 0) {
        out = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        out = sign;
    } else {  // subnormal: normalise
        int e = -1;
        uint32_t m = man;
        do {
            m <<= 1;
            e++;
        } while ((m & 0x400u) == 0);
        out = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &out, 4);
    return f;
}

static inline __half __float2half_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return __half{static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
    if (abs >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
    if (abs >= 0x38800000u) {  // normal half
        uint32_t m = abs - 0x38000000u;  // rebias exponent 127 -> 15
        const uint32_t rest = m & 0x1fffu;
        m >>= 13;
        if (rest > 0x1000u || (rest == 0x1000u && (m & 1u))) m++;
        return __half{static_cast<uint16_t>(sign | m)};
    }
    // subnormal half (or zero): value = abs_float / 2^-24, rounded to nearest even
    const uint32_t exp = abs >> 23;
    if (exp < 102) return __half{sign};  // below half the smallest subnormal
    const uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // man * 2^(exp-150) / 2^-24 = man >> (126 - exp)
    uint32_t m = man >> shift;
    const uint32_t rest = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (m & 1u))) m++;
    return __half{static_cast<uint16_t>(sign | m)};
}
