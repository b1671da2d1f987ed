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

/* One block of rb rows at a_ by the nv vectors of columns left at j0 (1-4): each nv its own inlined copy of
 * block_fn (block, or block_bf16 with K pairs), so that its sums stay in registers. */
#define BLOCKS(block_fn, rb, K, a_)                                                                       \
    switch (nv) {                                                                                         \
    case 4: block_fn(rb, 4, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                   \
    case 3: block_fn(rb, 3, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                   \
    case 2: block_fn(rb, 2, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc); break;                   \
    default: block_fn(rb, 1, K, a_, ar, ak, b + j0, ldb, c + i0 * ldc + j0, ldc);                         \
    }

/* c (M x Nc, ldc between rows) = A (M x K) @ B (K x Nc), A's element (i, k) at a[i * ar + k * ak], B's row k
 * at b + k * ldb; Nc a multiple of VL. A column block of B (K x NV vectors) stays in the L1 cache while
 * every row block of A passes. */
static void gemm(long M, long Nc, long K, const float *a, long ar, long ak, const float *b, long ldb, float *c,
                 long ldc) {
    for (long j0 = 0; j0 < Nc; j0 += NV * VL) {
        int nv = (int)((Nc - j0) / VL < NV ? (Nc - j0) / VL : NV);
        long i0 = 0;
        for (; i0 + RB <= M; i0 += RB) BLOCKS(block, RB, K, a + i0 * ar)
        for (; i0 < M; i0++) BLOCKS(block, 1, K, a + i0 * ar)
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

/* -- bf16 ---------------------------------------------------------------------------------------------------------
 * The same steps with bf16 products (vdpbf16ps: each of 16 fp32 sums takes the products of one pair of bf16
 * values, summed in fp32), for CPUs with AVX-512 BF16: Q, K, V, O, dO and the gradients in bf16, S and dP and
 * the softmax in fp32, P and dS rounded to bf16 for the products that follow, as autocast's explicit product
 * (layers.attention) rounds them. A product over K multiplies pairs (2k, 2k + 1) at once: its left factor
 * is read as one 32-bit pair per row and k, its right factor is laid out as (K/2) x columns x 2 -- the pairs
 * of a row of a matrix whose K runs along the row are already in place (Q, dO, P and dS), a matrix whose K
 * runs down its columns is interleaved row by row first (interleave()), and K^T and V^T are transposes of
 * 32-bit pairs (pair_transpose()). N, L and d are multiples of 16. */
#if defined(__AVX512BF16__)
#include <immintrin.h>

static inline __attribute__((always_inline)) void block_bf16(int rb, int nv, long KP, const int32_t *a, long ar,
                                                              long ak, const int32_t *b, long ldb, float *c, long ldc) {
    __m512 acc[RB][NV];
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (long k = 0; k < KP; k++) {
        const int32_t *bk = b + k * ldb, *ak_ = a + k * ak;
        __m512bh bv[NV];
        for (int v = 0; v < nv; v++) bv[v] = (__m512bh)_mm512_loadu_si512(bk + v * 16);
        for (int r = 0; r < rb; r++) {
            __m512bh s = (__m512bh)_mm512_set1_epi32(ak_[r * ar]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], s, bv[v]);
        }
    }
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < nv; v++) _mm512_storeu_ps(c + r * ldc + v * 16, acc[r][v]);
}

/* c (M x Nc, fp32) = A @ B over KP pairs: A's pair (i, k) the int32 a[i * ar + k * ak], B's pair-row k the Nc
 * int32 at b + k * ldb (column j's pair at b[k * ldb + j]); Nc a multiple of 16. */
static void gemm_bf16(long M, long Nc, long KP, const int32_t *a, long ar, long ak, const int32_t *b, long ldb,
                      float *c, long ldc) {
    for (long j0 = 0; j0 < Nc; j0 += NV * 16) {
        int nv = (int)((Nc - j0) / 16 < NV ? (Nc - j0) / 16 : NV);
        long i0 = 0;
        for (; i0 + RB <= M; i0 += RB) BLOCKS(block_bf16, RB, KP, a + i0 * ar)
        for (; i0 < M; i0++) BLOCKS(block_bf16, 1, KP, a + i0 * ar)
    }
}

/* t (d/2 x L pairs) = the pairs of m (L x d, rows r values apart) transposed: t[c * L + j] = pair c of row j. */
static void pair_transpose(const bf16 *m, long r, long L, long d, int32_t *t) {
    for (long j0 = 0; j0 < L; j0 += 16)
        for (long c = 0; c < d / 2; c++) {
            int32_t *tc = t + c * L + j0;
            const int32_t *mc = (const int32_t *)(m + j0 * r) + c;
#pragma omp simd
            for (long j = 0; j < 16; j++) tc[j] = mc[j * (r / 2)];
        }
}

/* t (K/2 x d x 2) = m (K x d, rows r values apart) with rows 2k and 2k + 1 interleaved: the right factor of a
 * product over m's rows. */
static void interleave(const bf16 *m, long r, long K, long d, bf16 *t) {
    for (long k = 0; k < K / 2; k++) {
        const bf16 *m0 = m + 2 * k * r, *m1 = m0 + r;
        bf16 *tk = t + 2 * k * d;
#pragma omp simd
        for (long c = 0; c < d; c++) {
            tk[2 * c] = m0[c];
            tk[2 * c + 1] = m1[c];
        }
    }
}

/* n rows of d fp32 values (rows d apart) rounded into m (rows r values apart). */
static void store_rows(const float *src, long n, long d, bf16 *m, long r) {
    for (long i = 0; i < n; i++) store_floats(m + i * r, 1, 0, src + i * d, (int)d);
}

typedef struct { bf16 *p; long b, h, r; } hview;
static inline bf16 *hat(hview t, long b, long h) { return t.p + b * t.b + h * t.h; }
#define HVIEW(name, ptr, s) hview name = {(bf16 *)(ptr), (s)[0], (s)[1], (s)[2]}

int sdpa_forward_bf16(const void *q, const long *qs, const void *k, const long *ks, const void *v, const long *vs,
                      void *o, const long *os, void *P, long B, long H, long N, long L, long d, float scale) {
    HVIEW(Q, q, qs); HVIEW(K, k, ks); HVIEW(V, v, vs); HVIEW(O, o, os);
    long runs = row_runs(B * H, N), rows = (N + runs - 1) / runs;
    /* per thread, in floats: K^T pairs (d L / 2), V interleaved (d L / 2), S (rows L), P in bf16 (rows L / 2), O (rows d) */
    long per_thread = (d * L + rows * L + rows * L / 2 + rows * d + 15) / 16 * 16;
    float *buffers = malloc(sizeof(float) * per_thread * omp_get_max_threads());
#pragma omp parallel for schedule(static)
    for (long job = 0; job < B * H * runs; job++) {
        long bh = job / runs, b = bh / H, h = bh % H, i0 = job % runs * rows;
        long n = (N - i0 < rows ? N - i0 : rows);
        float *base = buffers + omp_get_thread_num() * per_thread;
        int32_t *kt = (int32_t *)base, *vp = kt + d * L / 2;
        float *s = (float *)(vp + d * L / 2), *out = s + rows * L;
        bf16 *p = P ? (bf16 *)P + (bh * N + i0) * L : (bf16 *)(out + rows * d);
        pair_transpose(hat(K, b, h), K.r, L, d, kt);
        interleave(hat(V, b, h), V.r, L, d, (bf16 *)vp);
        gemm_bf16(n, L, d / 2, (const int32_t *)(hat(Q, b, h) + i0 * Q.r), Q.r / 2, 1, kt, L, s, L);
        softmax_rows(s, n, L, scale);
        store_rows(s, n, L, p, L);
        gemm_bf16(n, d, L / 2, (const int32_t *)p, L / 2, 1, vp, d, out, d);
        store_rows(out, n, d, hat(O, b, h) + i0 * O.r, O.r);
    }
    free(buffers);
    return 1;
}

int sdpa_backward_bf16(const void *q, const long *qs, const void *k, const long *ks, const void *v, const long *vs,
                       const void *o, const long *os, const void *P, const void *dout, const long *dos, void *dq,
                       const long *dqs, void *dk, const long *dks, void *dv, const long *dvs, long B, long H, long N,
                       long L, long d, float scale) {
    HVIEW(Q, q, qs); HVIEW(K, k, ks); HVIEW(V, v, vs); HVIEW(O, o, os); HVIEW(dO, dout, dos);
    HVIEW(dQ, dq, dqs); HVIEW(dK, dk, dks); HVIEW(dV, dv, dvs);
    long big = N > L ? N : L;
    /* per thread, in floats: two interleaved operands (each at most big d / 2), the pairs of V^T (d L / 2), P or
     * dS interleaved (N L / 2), dP (N L), dS in bf16 (N L / 2), a gradient (big d) and D (N) */
    long per_thread = (big * d + d * L / 2 + N * L / 2 + N * L + N * L / 2 + big * d + N + 15) / 16 * 16;
    float *buffers = malloc(sizeof(float) * per_thread * omp_get_max_threads());
#pragma omp parallel for schedule(static)
    for (long bh = 0; bh < B * H; bh++) {
        long b = bh / H, h = bh % H;
        float *base = buffers + omp_get_thread_num() * per_thread;
        bf16 *op1 = (bf16 *)base, *op2 = op1 + big * d;                           /* big d values each */
        int32_t *vt = (int32_t *)(base + big * d);
        bf16 *pairs = (bf16 *)(vt + d * L / 2);
        float *dp = (float *)(pairs + N * L), *grad = dp + N * L;
        bf16 *dsb = (bf16 *)(grad + big * d);
        float *D = (float *)(dsb + N * L);
        const bf16 *p = (const bf16 *)P + bh * N * L, *go = hat(dO, b, h), *oo = hat(O, b, h);
        for (long i = 0; i < N; i++) {
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (long c = 0; c < d; c++) sum += from_bf16(go[i * dO.r + c]) * from_bf16(oo[i * O.r + c]);
            D[i] = sum;
        }
        interleave(p, L, N, L, pairs);                                          /* dV = P^T dO */
        interleave(go, dO.r, N, d, op1);
        gemm_bf16(L, d, N / 2, (const int32_t *)pairs, 1, L, (const int32_t *)op1, d, grad, d);
        store_rows(grad, L, d, hat(dV, b, h), dV.r);
        pair_transpose(hat(V, b, h), V.r, L, d, vt);                            /* dP = dO V^T */
        gemm_bf16(N, L, d / 2, (const int32_t *)go, dO.r / 2, 1, vt, L, dp, L);
        for (long i = 0; i < N; i++) {                                          /* dS = scale P (.) (dP - D) */
            float *row = dp + i * L;
            const bf16 *pr = p + i * L;
#pragma omp simd
            for (long j = 0; j < L; j++) row[j] = scale * from_bf16(pr[j]) * (row[j] - D[i]);
        }
        store_rows(dp, N, L, dsb, L);
        interleave(hat(K, b, h), K.r, L, d, op2);                               /* dQ = dS K */
        gemm_bf16(N, d, L / 2, (const int32_t *)dsb, L / 2, 1, (const int32_t *)op2, d, grad, d);
        store_rows(grad, N, d, hat(dQ, b, h), dQ.r);
        interleave(dsb, L, N, L, pairs);                                        /* dK = dS^T Q */
        interleave(hat(Q, b, h), Q.r, N, d, op1);
        gemm_bf16(L, d, N / 2, (const int32_t *)pairs, 1, L, (const int32_t *)op1, d, grad, d);
        store_rows(grad, L, d, hat(dK, b, h), dK.r);
    }
    free(buffers);
    return 1;
}
#else
int sdpa_forward_bf16(void) { return 0; }
int sdpa_backward_bf16(void) { return 0; }
#endif
