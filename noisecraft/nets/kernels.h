/* What the compiled kernels (winograd.c, norm_act.c, sdpa.c) share: bfloat16, the upper half of an fp32, and e^x. */
#ifndef NOISECRAFT_KERNELS_H
#define NOISECRAFT_KERNELS_H
#include <stdint.h>
#include <string.h>

typedef uint16_t bf16;

static inline float from_bf16(bf16 h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* Rounded to nearest even, NaN kept a NaN (as PyTorch's .bfloat16()). */
static inline bf16 to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((v.u >> 16) | 0x40);
    return (bf16)((v.u + 0x7fffu + ((v.u >> 16) & 1)) >> 16);
}

/* Elements at..at+n-1 of a buffer of fp32, or of bf16 where is_bf16, as fp32: in place, or widened into buf.
 * (A loop that tested the type per element did not vectorise well: 2.5x slower.) */
static inline const float *floats_at(const void *src, int is_bf16, long at, float *buf, int n) {
    if (!is_bf16) return (const float *)src + at;
    const bf16 *s = (const bf16 *)src + at;
#pragma omp simd
    for (int i = 0; i < n; i++) buf[i] = from_bf16(s[i]);
    return buf;
}

/* dst[at..at+n-1] = src[0..n-1], dst holding fp32, or bf16 where is_bf16 (rounded here). */
static inline void store_floats(void *dst, int is_bf16, long at, const float *src, int n) {
    if (!is_bf16) {
        for (int i = 0; i < n; i++) ((float *)dst)[at + i] = src[i];
        return;
    }
    bf16 *d = (bf16 *)dst + at;
#pragma omp simd
    for (int i = 0; i < n; i++) d[i] = to_bf16(src[i]);
}

/* e^x in fp32 (Cephes' expf: x = k ln 2 + r, |r| <= ln 2 / 2, a degree-7 polynomial for e^r), written so that
 * it vectorises: about 1 ulp, clamped to [-87, 88]. */
static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);           /* fminf/fmaxf would not vectorise */
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;     /* round(x / ln 2) */
    float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;                            /* 2^k */
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    return p * two_k;
}
#endif
