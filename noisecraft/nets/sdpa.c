/* Scaled dot-product attention (Vaswani et al. 2017, eq. 1) in fp32 on the CPU. Per batch element and head,
 * for queries Q (N x d) and keys and values K, V (L x d),
 *
 *     S = scale Q K^T,   P = softmax(S) along each row,   O = P V,
 *
 * and its gradients from dO (the softmax's Jacobian contracted row by row):
 *
 *     dV = P^T dO,   dP = dO V^T,   dS = P (.) (dP - D) with D_i = sum_c dO_ic O_ic,
 *     dQ = scale dS K,   dK = scale dS^T Q.
 *
 * Every product is gemm(), one register-blocked kernel, on matrices that stay in the L2 cache (N x L up to
 * 256 x 256 scores, 256 KB). PyTorch's fp32 attention on the CPU runs its products through MKL, which on
 * an AMD CPU takes its AVX2 code: about 150-200 GFLOP/s where oneDNN's convolutions reach 500-600
 * (benchmarks/speed.py). The forward pass keeps P for the backward pass where asked to (training): the
 * scores are then not computed twice, at the cost of 4 N L bytes per batch element and head.
 *
 * Each tensor is given by its pointer and three strides, in floats, of batch, head and row; the d values of
 * a row are contiguous. d and L are multiples of VL; N is any count. Called from noisecraft/nets/sdpa.py
 * through ctypes. */
#include "kernels.h"
#include <omp.h>
#include <stdlib.h>

#if defined(__AVX512F__)
#define VL 16 /* floats per vector register */
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));   /* loads and stores need no alignment */
#define RB 6 /* rows of a product in registers, */
#define NV 4 /* by NV vectors of columns: 24 accumulators */

typedef struct { float *p; long b, h, r; } view;                /* element (b, h, row, c): p[b*.b + h*.h + row*.r + c] */

static inline float *at(view t, long b, long h) { return t.p + b * t.b + h * t.h; }

/* rb rows by nv vectors of c (ldc between rows) = A @ B over K: A's element (r, k) at a[r * ar + k * ak], B's
 * row k at b + k * ldb. rb and nv are constants where it is inlined, so that the sums stay in registers. */
static inline __attribute__((always_inline)) void block(int rb, int nv, long K, const float *a, long ar, long ak,
                                                         const float *b, long ldb, float *c, long ldc) {
    vf acc[RB][NV];
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = (vf){0};
    for (long k = 0; k < K; k++) {
        const float *bk = b + k * ldb, *ak_ = a + k * ak;
        vf bv[NV];
        for (int v = 0; v < nv; v++) bv[v] = *(const vf *)(bk + v * VL);
        for (int r = 0; r < rb; r++) {
            float s = ak_[r * ar];
            for (int v = 0; v < nv; v++) acc[r][v] += s * bv[v];
        }
    }
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < nv; v++) *(vf *)(c + r * ldc + v * VL) = acc[r][v];
}

#define BLOCKS(rb, a_)                                                                                    \
    switch (nv) {                                                                                         \
    case 4: block(rb, 4, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                      \
    case 3: block(rb, 3, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                      \
    case 2: block(rb, 2, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                      \
    default: block(rb, 1, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc);                            \
    }

/* c (M x Nc, ldc between rows) = A (M x K) @ B (K x Nc), A's element (i, k) at a[i * ar + k * ak], B's row k
 * at b + k * ldb; Nc a multiple of VL. A column block of B (K x NV vectors) stays in the L1 cache while
 * every row block of A passes. */
static void gemm(long M, long Nc, long K, const float *a, long ar, long ak, const float *b, long ldb, float *c,
                 long ldc) {
    for (long j0 = 0; j0 < Nc; j0 += NV * VL) {
        int nv = (int)((Nc - j0) / VL < NV ? (Nc - j0) / VL : NV);
        long i0 = 0;
        for (; i0 + RB <= M; i0 += RB) BLOCKS(RB, a + i0 * ar)
        for (; i0 < M; i0++) BLOCKS(1, a + i0 * ar)
    }
}

/* t (d x L) = m^T for m (L x d, rows r floats apart), L a multiple of VL: a vector of t's row at a time
 * (16x faster than element by element along m's rows). */
static void transpose(const float *m, long r, long L, long d, float *t) {
    for (long j0 = 0; j0 < L; j0 += VL)
        for (long c = 0; c < d; c++) {
            float *tc = t + c * L + j0;
            const float *mc = m + j0 * r + c;
#pragma omp simd
            for (long j = 0; j < VL; j++) tc[j] = mc[j * r];
        }
}

/* Rows of s (n x L) in place: softmax(scale s). */
static void softmax_rows(float *s, long n, long L, float scale) {
    for (long i = 0; i < n; i++) {
        float *row = s + i * L, top = row[0], sum = 0.0f;
#pragma omp simd reduction(max : top)
        for (long j = 0; j < L; j++) top = row[j] > top ? row[j] : top;
#pragma omp simd reduction(+ : sum)
        for (long j = 0; j < L; j++) {
            row[j] = exp_f(scale * (row[j] - top));
            sum += row[j];
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (long j = 0; j < L; j++) row[j] *= inv;
    }
}

/* How many runs of query rows each (batch, head) is split into: enough that every thread has work at a
 * batch of one (each run transposes K again: d L copies against n L d multiply-adds). */
static long row_runs(long BH, long N) {
    long threads = omp_get_max_threads(), runs = BH >= 2 * threads ? 1 : (2 * threads + BH - 1) / BH;
    return runs < N ? runs : N;
}

/* O = softmax(scale Q K^T) V for B x H heads; P (B x H x N x L, contiguous) receives the probabilities
 * where it is not NULL. */
void sdpa_forward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                  float *o, const long *os, float *P, long B, long H, long N, long L, long d, float scale) {
    view Q = {(float *)q, qs[0], qs[1], qs[2]}, K = {(float *)k, ks[0], ks[1], ks[2]};
    view V = {(float *)v, vs[0], vs[1], vs[2]}, O = {o, os[0], os[1], os[2]};
    long runs = row_runs(B * H, N), rows = (N + runs - 1) / runs;
    long per_thread = d * L + (P ? 0 : rows * L);
    float *buffers = malloc(sizeof(float) * per_thread * omp_get_max_threads());  /* the caller's arena */
#pragma omp parallel for schedule(static)
    for (long job = 0; job < B * H * runs; job++) {
        long bh = job / runs, b = bh / H, h = bh % H, i0 = job % runs * rows;
        long n = (N - i0 < rows ? N - i0 : rows);
        if (n <= 0) continue;
        float *kt = buffers + omp_get_thread_num() * per_thread;
        float *s = P ? P + (bh * N + i0) * L : kt + d * L;
        transpose(at(K, b, h), K.r, L, d, kt);
        gemm(n, L, d, at(Q, b, h) + i0 * Q.r, Q.r, 1, kt, L, s, L);
        softmax_rows(s, n, L, scale);
        gemm(n, d, L, s, L, 1, at(V, b, h), V.r, at(O, b, h) + i0 * O.r, O.r);
    }
    free(buffers);
}

/* dQ, dK, dV from dO, the forward pass's O and its probabilities P; the tensors as in sdpa_forward. */
void sdpa_backward(const float *q, const long *qs, const float *k, const long *ks, const float *v, const long *vs,
                   const float *o, const long *os, const float *P, const float *dout, const long *dos, float *dq,
                   const long *dqs, float *dk, const long *dks, float *dv, const long *dvs, long B, long H, long N,
                   long L, long d, float scale) {
    view Q = {(float *)q, qs[0], qs[1], qs[2]}, K = {(float *)k, ks[0], ks[1], ks[2]};
    view V = {(float *)v, vs[0], vs[1], vs[2]}, O = {(float *)o, os[0], os[1], os[2]};
    view dO = {(float *)dout, dos[0], dos[1], dos[2]}, dQ = {dq, dqs[0], dqs[1], dqs[2]};
    view dK = {dk, dks[0], dks[1], dks[2]}, dV = {dv, dvs[0], dvs[1], dvs[2]};
    long per_thread = d * L + N * L + N;                       /* V^T, dS, D */
    float *buffers = malloc(sizeof(float) * per_thread * omp_get_max_threads());
#pragma omp parallel for schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        long b = bh / H, h = bh % H;
        float *vt = buffers + omp_get_thread_num() * per_thread, *ds = vt + d * L, *D = ds + N * L;
        const float *p = P + bh * N * L, *go = at(dO, b, h), *oo = at(O, b, h);
        for (long i = 0; i < N; i++) {
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (long c = 0; c < d; c++) sum += go[i * dO.r + c] * oo[i * O.r + c];
            D[i] = sum;
        }
        gemm(L, d, N, p, 1, L, go, dO.r, at(dV, b, h), dV.r);                  /* dV = P^T dO */
        transpose(at(V, b, h), V.r, L, d, vt);
        gemm(N, L, d, go, dO.r, 1, vt, L, ds, L);                                /* dP = dO V^T */
        for (long i = 0; i < N; i++) {
            float *row = ds + i * L;
            const float *pr = p + i * L;
#pragma omp simd
            for (long j = 0; j < L; j++) row[j] = scale * pr[j] * (row[j] - D[i]);
        }
        gemm(N, d, L, ds, L, 1, at(K, b, h), K.r, at(dQ, b, h), dQ.r);         /* dQ = scale dS K */
        gemm(L, d, N, ds, 1, L, at(Q, b, h), Q.r, at(dK, b, h), dK.r);         /* dK = scale dS^T Q */
    }
    free(buffers);
}

/* The width of the products' vectors, in floats: d and L must be multiples of it. */
long sdpa_vector_floats(void) { return VL; }
