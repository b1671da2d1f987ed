/* GroupNorm (Wu & He 2018), a ResBlock's adaptive scale and shift (Dhariwal & Nichol 2021, section 3) and SiLU
 * over channels_last activations x: N images of HW pixels of C channels, in G groups of C/G consecutive
 * channels. Per image n and channel c (group g),
 *
 *     a = act(z),   z = h * (1 + scale[n, c]) + shift[n, c],   h = (x - mean[n, g]) * rstd[n, g] * gamma[c] + beta[c]
 *
 * with act SiLU, z * sigmoid(z), or none; that is z = x * A[n, c] + B[n, c]. The forward pass reads x twice
 * (the statistics, then a) and writes a once. The backward pass reads x and the gradient da twice (and the
 * sigmoid that norm_act_apply kept, where it did: 20% faster than computing it twice more) and writes
 * dx once: with dz = da * act'(z), xh = (x - mean) * rstd, m = 1 + scale, and per image and channel the sums
 * over pixels S1 = sum dz and S2 = sum dz * xh,
 *
 *     dshift = S1,   dscale = sum dz * h = gamma * S2 + beta * S1,   dgamma = sum_n m * S2,   dbeta = sum_n m * S1,
 *     dx = rstd * (gamma * m * dz - mean_g(gamma * m * dz) - xh * mean_g(gamma * m * dz * xh)),
 *
 * mean_g over one image's pixels and channels of the group. Sums over pixels are fp32 per run of at most
 * 4096 pixels and double across runs, everything else is fp32;
 * x, a, da and dx are fp32 or bf16. scale and shift may be NULL (none). Called from noisecraft/nets/norm_act.py
 * through ctypes. */
#include "kernels.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define CB 64 /* channels per step of a row: the fp32 copies of bf16 inputs stay in registers and the L1 cache */

static inline float sigmoid_f(float z) { return 1.0f / (1.0f + exp_f(-z)); }

/* Runs of pixels per image: enough that N x parts jobs keep every thread busy at small batches, and short
 * enough (at most RUN pixels) that their fp32 sums keep about 1e-6 relative precision. */
#define RUN 4096
static long parts_per_image(long N, long HW) {
    long parts = (2 * omp_get_max_threads() + N - 1) / N, shortest = (HW + RUN - 1) / RUN;
    parts = parts > shortest ? parts : shortest;
    return parts < HW ? parts : HW;
}

/* mean and rstd (N x G) of x. */
static void group_stats(const void *x, int x_bf16, long N, long HW, long C, long G, double eps, float *mean,
                        float *rstd) {
    long parts = parts_per_image(N, HW);
    float *acc = calloc((size_t)(N * parts * 2 * C), sizeof(float));            /* per job: sums, squares */
#pragma omp parallel for schedule(static)
    for (long job = 0; job < N * parts; job++) {
        long n = job / parts, part = job % parts, p0 = HW * part / parts, p1 = HW * (part + 1) / parts;
        float *s = acc + job * 2 * C, *q = s + C;
        float buf[CB];
        for (long p = p0; p < p1; p++)
            for (long c0 = 0; c0 < C; c0 += CB) {
                int cb = (int)(C - c0 < CB ? C - c0 : CB);
                const float *v = floats_at(x, x_bf16, (n * HW + p) * C + c0, buf, cb);
                float *sc = s + c0, *qc = q + c0;
#pragma omp simd
                for (int c = 0; c < cb; c++) {
                    sc[c] += v[c];
                    qc[c] += v[c] * v[c];
                }
            }
    }
    long cg = C / G;
    for (long n = 0; n < N; n++)
        for (long g = 0; g < G; g++) {
            double s = 0, q = 0, count = (double)cg * HW;
            for (long part = 0; part < parts; part++)
                for (long c = g * cg; c < (g + 1) * cg; c++) {
                    s += acc[(n * parts + part) * 2 * C + c];
                    q += acc[(n * parts + part) * 2 * C + C + c];
                }
            double mu = s / count, var = q / count - mu * mu;
            mean[n * G + g] = (float)mu;
            rstd[n * G + g] = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
        }
    free(acc);
}

/* A and B (N x C each, in one buffer): z = x * A + B. */
static float *coefficients(long N, long C, long G, const float *mean, const float *rstd, const float *gamma,
                           const float *beta, const float *scale, const float *shift) {
    float *ab = malloc(sizeof(float) * 2 * N * C);
    long cg = C / G;
    for (long n = 0; n < N; n++)
        for (long c = 0; c < C; c++) {
            long i = n * C + c, ng = n * G + c / cg;
            float r = rstd[ng] * gamma[c], m = scale ? 1.0f + scale[i] : 1.0f;
            ab[i] = r * m;
            ab[N * C + i] = (beta[c] - mean[ng] * r) * m + (shift ? shift[i] : 0.0f);
        }
    return ab;
}

/* a = act(x * A + B) for the statistics mean and rstd (as norm_act_forward computed them); with SiLU and sig
 * not NULL, sig (x's size, fp32) receives sigmoid(z), for the backward pass that follows (norm_conv() computes
 * a again just before it). */
void norm_act_apply(const void *x, int x_bf16, long N, long HW, long C, long G, const float *mean,
                    const float *rstd, const float *gamma, const float *beta, const float *scale, const float *shift,
                    int act, void *a, int a_bf16, float *sig) {
    float *ab = coefficients(N, C, G, mean, rstd, gamma, beta, scale, shift);
#pragma omp parallel for schedule(static)
    for (long row = 0; row < N * HW; row++) {
        const float *A = ab + row / HW * C, *B = A + N * C;
        float buf[CB], out[CB];
        for (long c0 = 0; c0 < C; c0 += CB) {
            int cb = (int)(C - c0 < CB ? C - c0 : CB);
            const float *v = floats_at(x, x_bf16, row * C + c0, buf, cb), *Ac = A + c0, *Bc = B + c0;
            if (act && sig) {
                float *sc = sig + row * C + c0;
#pragma omp simd
                for (int c = 0; c < cb; c++) {
                    float z = v[c] * Ac[c] + Bc[c];
                    sc[c] = sigmoid_f(z);
                    out[c] = z * sc[c];
                }
            } else if (act) {
#pragma omp simd
                for (int c = 0; c < cb; c++) {
                    float z = v[c] * Ac[c] + Bc[c];
                    out[c] = z * sigmoid_f(z);
                }
            } else {
#pragma omp simd
                for (int c = 0; c < cb; c++) out[c] = v[c] * Ac[c] + Bc[c];
            }
            store_floats(a, a_bf16, row * C + c0, out, cb);
        }
    }
    free(ab);
}

/* The forward pass: mean and rstd (N x G, kept for the backward pass) and a. */
void norm_act_forward(const void *x, int x_bf16, long N, long HW, long C, long G, double eps, const float *gamma,
                      const float *beta, const float *scale, const float *shift, int act, void *a, int a_bf16,
                      float *mean, float *rstd) {
    group_stats(x, x_bf16, N, HW, C, G, eps, mean, rstd);
    norm_act_apply(x, x_bf16, N, HW, C, G, mean, rstd, gamma, beta, scale, shift, act, a, a_bf16, NULL);
}

/* dz = da * act'(z) for z = x * A + B over one step of a row, act'(z) = s (1 + z (1 - s)) for SiLU with
 * s = sigmoid(z): read from sig where norm_act_apply kept it (the same numbers), else computed. */
static inline void dz_of(const float *v, const float *d, const float *Ac, const float *Bc, const float *sig, int act,
                         int cb, float *dz) {
    if (!act) {
        for (int c = 0; c < cb; c++) dz[c] = d[c];
    } else if (sig) {
#pragma omp simd
        for (int c = 0; c < cb; c++) {
            float z = v[c] * Ac[c] + Bc[c], s = sig[c];
            dz[c] = d[c] * s * (1.0f + z * (1.0f - s));
        }
    } else {
#pragma omp simd
        for (int c = 0; c < cb; c++) {
            float z = v[c] * Ac[c] + Bc[c], s = sigmoid_f(z);
            dz[c] = d[c] * s * (1.0f + z * (1.0f - s));
        }
    }
}

/* Per image and channel, from per image and group: table[0] = mean, table[1] = rstd (N x C each). */
static float *per_channel(long N, long C, long G, const float *mean, const float *rstd) {
    float *t = malloc(sizeof(float) * 2 * N * C);
    for (long n = 0; n < N; n++)
        for (long c = 0; c < C; c++) {
            t[n * C + c] = mean[n * G + c / (C / G)];
            t[N * C + n * C + c] = rstd[n * G + c / (C / G)];
        }
    return t;
}

/* The backward pass: dx (x's size), dgamma and dbeta (C), and where scale is given dscale and dshift (N x C);
 * sig is norm_act_apply's sigmoid(z), or NULL. */
void norm_act_backward(const void *x, int x_bf16, const void *da, int da_bf16, long N, long HW, long C, long G,
                       const float *mean, const float *rstd, const float *gamma, const float *beta,
                       const float *scale, const float *shift, int act, const float *sig, void *dx, int dx_bf16,
                       float *dgamma, float *dbeta, float *dscale, float *dshift) {
    long NC = N * C, parts = parts_per_image(N, HW), cg = C / G;
    float *ab = coefficients(N, C, G, mean, rstd, gamma, beta, scale, shift), *stats = per_channel(N, C, G, mean, rstd);
    float *acc = calloc((size_t)(N * parts * 2 * C), sizeof(float));            /* per job: S1, S2 */
#pragma omp parallel for schedule(static)
    for (long job = 0; job < N * parts; job++) {
        long n = job / parts, part = job % parts, p0 = HW * part / parts, p1 = HW * (part + 1) / parts;
        const float *A = ab + n * C, *B = A + NC, *mu = stats + n * C, *rs = mu + NC;
        float *s1 = acc + job * 2 * C, *s2 = s1 + C;
        float xbuf[CB], dbuf[CB], dz[CB];
        for (long p = p0; p < p1; p++)
            for (long c0 = 0; c0 < C; c0 += CB) {
                int cb = (int)(C - c0 < CB ? C - c0 : CB);
                long at = (n * HW + p) * C + c0;
                const float *v = floats_at(x, x_bf16, at, xbuf, cb), *d = floats_at(da, da_bf16, at, dbuf, cb);
                const float *Ac = A + c0, *Bc = B + c0, *muc = mu + c0, *rsc = rs + c0;
                float *s1c = s1 + c0, *s2c = s2 + c0;
                dz_of(v, d, Ac, Bc, sig ? sig + at : NULL, act, cb, dz);
#pragma omp simd
                for (int c = 0; c < cb; c++) {
                    s1c[c] += dz[c];
                    s2c[c] += dz[c] * ((v[c] - muc[c]) * rsc[c]);
                }
            }
    }
    /* the parameters' gradients; per image and channel gamma * m (k) and the group means of dx (m1, m2) */
    double *m12 = calloc((size_t)(2 * N * G), sizeof(double));
    float *k = malloc(sizeof(float) * 3 * NC), *m1 = k + NC, *m2 = m1 + NC;
    memset(dgamma, 0, sizeof(float) * C);
    memset(dbeta, 0, sizeof(float) * C);
    for (long n = 0; n < N; n++)
        for (long c = 0; c < C; c++) {
            long i = n * C + c, ng = n * G + c / cg;
            double s1 = 0, s2 = 0, m = scale ? 1.0 + scale[i] : 1.0;
            for (long part = 0; part < parts; part++) {
                s1 += acc[(n * parts + part) * 2 * C + c];
                s2 += acc[(n * parts + part) * 2 * C + C + c];
            }
            if (scale) dscale[i] = (float)(gamma[c] * s2 + beta[c] * s1);
            if (shift) dshift[i] = (float)s1;
            dgamma[c] += (float)(m * s2);
            dbeta[c] += (float)(m * s1);
            k[i] = (float)(gamma[c] * m);
            m12[ng] += gamma[c] * m * s1 / ((double)cg * HW);
            m12[N * G + ng] += gamma[c] * m * s2 / ((double)cg * HW);
        }
    for (long i = 0; i < NC; i++) {
        long ng = i / C * G + i % C / cg;
        m1[i] = (float)m12[ng];
        m2[i] = (float)m12[N * G + ng];
    }
#pragma omp parallel for schedule(static)
    for (long row = 0; row < N * HW; row++) {
        long n = row / HW, at = row * C;
        const float *A = ab + n * C, *B = A + NC, *mu = stats + n * C, *rs = mu + NC;
        const float *kn = k + n * C, *m1n = m1 + n * C, *m2n = m2 + n * C;
        float xbuf[CB], dbuf[CB], dz[CB], out[CB];
        for (long c0 = 0; c0 < C; c0 += CB) {
            int cb = (int)(C - c0 < CB ? C - c0 : CB);
            const float *v = floats_at(x, x_bf16, at + c0, xbuf, cb), *d = floats_at(da, da_bf16, at + c0, dbuf, cb);
            const float *Ac = A + c0, *Bc = B + c0, *muc = mu + c0, *rsc = rs + c0;
            const float *kc = kn + c0, *m1c = m1n + c0, *m2c = m2n + c0;
            dz_of(v, d, Ac, Bc, sig ? sig + at + c0 : NULL, act, cb, dz);
#pragma omp simd
            for (int c = 0; c < cb; c++) {
                float xh = (v[c] - muc[c]) * rsc[c];
                out[c] = rsc[c] * (kc[c] * dz[c] - m1c[c] - xh * m2c[c]);
            }
            store_floats(dx, dx_bf16, at + c0, out, cb);
        }
    }
    free(k);
    free(m12);
    free(acc);
    free(stats);
    free(ab);
}
