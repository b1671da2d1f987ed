/* What the compiled kernels (winograd.c, norm_act.c) share: bfloat16, the upper half of an fp32. */
#ifndef NOISECRAFT_KERNELS_H
#define NOISECRAFT_KERNELS_H
#include <stdint.h>

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
#endif
