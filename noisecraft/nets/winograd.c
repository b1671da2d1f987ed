/* The tile transforms of Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016, "Fast Algorithms
 * for Convolutional Neural Networks", section 4): a 3x3 convolution of a 6x6 input tile d with the filter g
 * gives the 4x4 output tile
 *
 *     Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 *
 * with (.) the elementwise product. Summed over input channels, the products become 36 matrix products,
 * one per tile position a: M[a] (tiles x O) = V[a] (tiles x C) @ U[a] (C x O). winograd_conv does all the
 * steps for a block of tiles at a time, so that V and M stay in the core's cache. Activations are
 * channels_last (N, H, W, C): the innermost loops run over channels, contiguous in memory, and are
 * vectorised. Tile p = (n, th, tw), row-major, covers output rows 4th..4th+3 and columns 4tw..4tw+3; its
 * input tile starts one row and column earlier. Pixels outside the image read as zeros (the convolution's
 * padding of 1) and are not written.
 *
 * The matrices come from interpolating at the points 0, 1, -1, 2, -1/2 and infinity (Lavin & Gray use
 * +-2 for the last pair). Rounding errors grow with the sizes of the constants in A^T, and -1/2 in place of
 * -2 shrinks them: simulated on random 128-channel tiles, the relative error of the output fell from
 * 2.3e-6 to 1.5e-6 in fp32 and from 2.5% to 1.6% with the transformed tiles and filters rounded to bf16.
 *
 *   B^T = | 1  3/2   -2  -3/2    1  0 |    G = |     1     0      0 |    A^T = | 1  1  1  1    1  0 |
 *         | 0   -1 -5/2  -1/2    1  0 |        |  -1/3  -1/3   -1/3 |          | 0  1 -1  2 -1/2  0 |
 *         | 0    1  1/2  -5/2    1  0 |        |   1/3  -1/3    1/3 |          | 0  1  1  4  1/4  0 |
 *         | 0 -1/2   -1   1/2    1  0 |        |  1/15  2/15   4/15 |          | 0  1 -1  8 -1/8  1 |
 *         | 0    2   -1    -2    1  0 |        | -16/15 8/15  -4/15 |
 *         | 0    1  3/2    -2 -3/2  1 |        |     0     0      1 |
 *
 * Called from noisecraft/nets/winograd.py through ctypes; the pointers are to contiguous float32 or bfloat16
 * buffers.
 */
#include "kernels.h"
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#define CB 64 /* channels per step of a tile transform: its 6x6xCB buffers stay in the L1 cache */
#if defined(__AVX512F__)
#define VL 16    /* floats per vector register */
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
#define RB 6         /* rows of a product kept in registers, by two vectors of columns */
#define TB (4 * RB)  /* tiles per block: what one thread transforms and multiplies while it is in cache */

static inline long min_l(long a, long b) { return a < b ? a : b; }

/* r = B^T d along one axis, for CB-wide channel vectors d[0..5] (stride s between them). */
static inline void bt6(const float *d, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float d0 = d[c], d1 = d[s + c], d2 = d[2 * s + c], d3 = d[3 * s + c], d4 = d[4 * s + c], d5 = d[5 * s + c];
        r[c] = d0 - 2.0f * d2 + d4 + 1.5f * (d1 - d3);
        r[rs + c] = d4 - d1 - 2.5f * d2 - 0.5f * d3;
        r[2 * rs + c] = d4 + d1 + 0.5f * d2 - 2.5f * d3;
        r[3 * rs + c] = d4 - d2 + 0.5f * (d3 - d1);
        r[4 * rs + c] = d4 - d2 + 2.0f * (d1 - d3);
        r[5 * rs + c] = d1 - 2.0f * d3 + d5 + 1.5f * (d2 - d4);
    }
}

/* r = A^T m along one axis: six vectors in, four out. */
static inline void at6(const float *m, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float m0 = m[c], m1 = m[s + c], m2 = m[2 * s + c], m3 = m[3 * s + c], m4 = m[4 * s + c], m5 = m[5 * s + c];
        float a = m1 + m2, b = m1 - m2;
        r[c] = m0 + a + m3 + m4;
        r[rs + c] = b + 2.0f * m3 - 0.5f * m4;
        r[2 * rs + c] = a + 4.0f * m3 + 0.25f * m4;
        r[3 * rs + c] = b + 8.0f * m3 - 0.125f * m4 + m5;
    }
}

/* r = A g along one axis (the adjoint of at6): four vectors in, six out. */
static inline void a4(const float *g, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float g0 = g[c], g1 = g[s + c], g2 = g[2 * s + c], g3 = g[3 * s + c];
        float e = g0 + g2, o = g1 + g3;
        r[c] = g0;
        r[rs + c] = e + o;
        r[2 * rs + c] = e - o;
        r[3 * rs + c] = g0 + 2.0f * g1 + 4.0f * g2 + 8.0f * g3;
        r[4 * rs + c] = g0 - 0.5f * g1 + 0.25f * g2 - 0.125f * g3;
        r[5 * rs + c] = g3;
    }
}

/* Tile p = (n, th, tw) of an N x H x W image grid of nH x nW tiles. */
typedef struct {
    long N, H, W, nH, nW, P;
} grid;

static grid grid_of(long N, long H, long W) {
    grid g = {N, H, W, (H + 3) / 4, (W + 3) / 4, 0};
    g.P = N * g.nH * g.nW;
    return g;
}

/* buf[(i * size + j) * CB + c] = src[pixel (4th + offset + i, 4tw + offset + j) of tile p, channel c0 + c]
 * for the size x size window of tile p, zeros outside the image and for p >= P (a padding tile); src holds
 * fp32, or bf16 where src_bf16 (widened to fp32 here). */
static void load_window(const void *src, int src_bf16, grid g, long C, long p, int offset, int size, long c0,
                        int cb, float *buf) {
    long n = p / (g.nH * g.nW), th = p / g.nW % g.nH, tw = p % g.nW;
    for (int i = 0; i < size; i++) {
        long yy = 4 * th + offset + i;
        for (int j = 0; j < size; j++) {
            long xx = 4 * tw + offset + j;
            float *row = buf + (i * size + j) * CB;
            long at = ((n * g.H + yy) * g.W + xx) * C + c0;
            if (p >= g.P || yy < 0 || yy >= g.H || xx < 0 || xx >= g.W) {
                memset(row, 0, sizeof(float) * cb);
            } else if (src_bf16) {
                const bf16 *s = (const bf16 *)src + at;
#pragma omp simd
                for (int c = 0; c < cb; c++) row[c] = from_bf16(s[c]);
            } else {
                memcpy(row, (const float *)src + at, sizeof(float) * cb);
            }
        }
    }
}

/* dst[at + c] = src[c] for c < n, dst holding fp32, or bf16 where dst_bf16 (rounded here). */
static inline void store(void *dst, int dst_bf16, long at, const float *src, int n) {
    if (dst_bf16) {
        bf16 *d = (bf16 *)dst + at;
#pragma omp simd
        for (int c = 0; c < n; c++) d[c] = to_bf16(src[c]);
    } else {
        memcpy((float *)dst + at, src, sizeof(float) * n);
    }
}

/* dst[2c] = a[c] and dst[2c + 1] = b[c] in bf16, for c < n: two tiles' transforms side by side, as one 32-bit
 * store per channel (the layout of accumulate_bf16). */
static inline void store_pair(bf16 *dst, const float *a, const float *b, int n) {
    uint32_t *d = (uint32_t *)dst;
#pragma omp simd
    for (int c = 0; c < n; c++) d[c] = (uint32_t)to_bf16(a[c]) | (uint32_t)to_bf16(b[c]) << 16;
}

/* Where a tile's transform goes in a block's buffer: channel c of position a at dst[at + a * plane + c]. */
typedef struct {
    void *dst;
    int is_bf16;
    long at, plane;
} place;

/* v[a * CB + c] = (B^T d B)[a] for channels c0..c0+cb-1 of the 6x6 input tile d of tile p (zeros for p >= P:
 * a padding tile), computed in fp32 whatever x holds. */
static void input_chunk(const void *x, int x_bf16, grid g, long C, long p, long c0, int cb, float *v) {
    float d[36 * CB], t[36 * CB];
    load_window(x, x_bf16, g, C, p, -1, 6, c0, cb, d);                               /* padding 1 */
    for (int j = 0; j < 6; j++) bt6(d + j * CB, 6 * CB, t + j * CB, 6 * CB, cb);     /* columns */
    for (int i = 0; i < 6; i++) bt6(t + i * 6 * CB, CB, v + i * 6 * CB, CB, cb);     /* rows */
}

/* Channels ob..oe-1 of y[tile p] = A^T m A (+ bias), cropped to the image, for m[a] = src[a * plane + o];
 * y holds fp32, or bf16 where y_bf16. */
static void output_tile(const float *src, long plane, const float *bias, void *y, int y_bf16, grid g, long O,
                        long p, long ob, long oe) {
    float t[24 * CB], r[16 * CB], biased[CB];
    long n = p / (g.nH * g.nW), th = p / g.nW % g.nH, tw = p % g.nW;
    for (long c0 = ob; c0 < oe; c0 += CB) {
        int cb = (int)min_l(CB, oe - c0);
        const float *m = src + c0;                                                      /* m[a]: a = i*6+j */
        for (int j = 0; j < 6; j++) at6(m + j * plane, 6 * plane, t + j * CB, 6 * CB, cb);  /* 4 x 6 */
        for (int i = 0; i < 4; i++) at6(t + i * 6 * CB, CB, r + i * 4 * CB, CB, cb);        /* 4 x 4 */
        for (int i = 0; i < 4 && 4 * th + i < g.H; i++)
            for (int j = 0; j < 4 && 4 * tw + j < g.W; j++) {
                const float *res = r + (i * 4 + j) * CB;
                if (bias) {
#pragma omp simd
                    for (int c = 0; c < cb; c++) biased[c] = res[c] + bias[c0 + c];
                    res = biased;
                }
                store(y, y_bf16, ((n * g.H + 4 * th + i) * g.W + 4 * tw + j) * O + c0, res, cb);
            }
    }
}

/* v[a * CB + o] = (A e A^T)[a] for channels o0..o0+cb-1 of the 4x4 tile e of the output gradient at tile p
 * (zeros outside the image): the adjoint of output_tile. */
static void adjoint_chunk(const void *e, int e_bf16, grid g, long O, long p, long o0, int cb, float *v) {
    float et[16 * CB], t[24 * CB];
    load_window(e, e_bf16, g, O, p, 0, 4, o0, cb, et);
    for (int j = 0; j < 4; j++) a4(et + j * CB, 4 * CB, t + j * CB, 4 * CB, cb);     /* 6 x 4 */
    for (int i = 0; i < 6; i++) a4(t + i * 4 * CB, CB, v + i * 6 * CB, CB, cb);      /* 6 x 6 */
}

typedef void (*chunk_fn)(const void *, int, grid, long, long, long, int, float *);

/* Tile p transformed by `chunk` (input_chunk or adjoint_chunk; all C channels), stored at `to`. */
static void one_tile(chunk_fn chunk, const void *src, int src_bf16, grid g, long C, long p, place to) {
    float v[36 * CB];
    for (long c0 = 0; c0 < C; c0 += CB) {
        int cb = (int)min_l(CB, C - c0);
        chunk(src, src_bf16, g, C, p, c0, cb, v);
        for (int a = 0; a < 36; a++) store(to.dst, to.is_bf16, to.at + a * to.plane + c0, v + a * CB, cb);
    }
}

/* Tiles p and p + 1 transformed by `chunk` (all C channels), stored side by side in bf16 for position a at
 * dst + a * plane (the layout of accumulate_bf16: dst[a * plane + 2c + j] for tile p + j). */
static void pair_of_tiles(chunk_fn chunk, const void *src, int src_bf16, grid g, long C, long p, bf16 *dst,
                          long plane) {
    float v0[36 * CB], v1[36 * CB];
    for (long c0 = 0; c0 < C; c0 += CB) {
        int cb = (int)min_l(CB, C - c0);
        chunk(src, src_bf16, g, C, p, c0, cb, v0);
        chunk(src, src_bf16, g, C, p + 1, c0, cb, v1);
        for (int a = 0; a < 36; a++) store_pair(dst + a * plane + 2 * c0, v0 + a * CB, v1 + a * CB, cb);
    }
}

/* Columns ob..oe-1 of m (TB x O) = v (TB x C) @ u (C x O), O, ob and oe multiples of VL: RB rows by two
 * vectors of columns in registers through the whole sum over C. */
static void product(const float *v, const float *u, float *m, long C, long O, long ob, long oe) {
    for (int r0 = 0; r0 < TB; r0 += RB) {
        const float *vr = v + r0 * C;
        for (long o0 = ob; o0 < oe; o0 += 2 * VL) {
            vf acc[RB][2];
            for (int r = 0; r < RB; r++) acc[r][0] = acc[r][1] = (vf){0};
            if (o0 + VL < oe) {
                for (long k = 0; k < C; k++) {
                    vf u0 = *(const vf *)(u + k * O + o0), u1 = *(const vf *)(u + k * O + o0 + VL);
                    for (int r = 0; r < RB; r++) {
                        float s = vr[r * C + k];
                        acc[r][0] += s * u0;
                        acc[r][1] += s * u1;
                    }
                }
                for (int r = 0; r < RB; r++) {
                    *(vf *)(m + (r0 + r) * O + o0) = acc[r][0];
                    *(vf *)(m + (r0 + r) * O + o0 + VL) = acc[r][1];
                }
            } else {                                     /* the last single vector of an odd count */
                for (long k = 0; k < C; k++) {
                    vf u0 = *(const vf *)(u + k * O + o0);
                    for (int r = 0; r < RB; r++) acc[r][0] += vr[r * C + k] * u0;
                }
                for (int r = 0; r < RB; r++) *(vf *)(m + (r0 + r) * O + o0) = acc[r][0];
            }
        }
    }
}

/* u (C x O) += v^T e for v (TB x C) and e (TB x O), C a multiple of 4 and O of VL: 4 rows of u by two
 * vectors of columns in registers through the sum over the block's tiles. */
static void accumulate(const float *v, const float *e, float *u, long C, long O) {
    for (long c0 = 0; c0 < C; c0 += 4) {
        for (long o0 = 0; o0 < O; o0 += 2 * VL) {
            float *ur = u + c0 * O + o0;
            if (o0 + VL < O) {
                vf acc[4][2];
                for (int r = 0; r < 4; r++) {
                    acc[r][0] = *(vf *)(ur + r * O);
                    acc[r][1] = *(vf *)(ur + r * O + VL);
                }
                for (int t = 0; t < TB; t++) {
                    vf e0 = *(const vf *)(e + t * O + o0), e1 = *(const vf *)(e + t * O + o0 + VL);
                    for (int r = 0; r < 4; r++) {
                        float s = v[t * C + c0 + r];
                        acc[r][0] += s * e0;
                        acc[r][1] += s * e1;
                    }
                }
                for (int r = 0; r < 4; r++) {
                    *(vf *)(ur + r * O) = acc[r][0];
                    *(vf *)(ur + r * O + VL) = acc[r][1];
                }
            } else {
                vf acc[4];
                for (int r = 0; r < 4; r++) acc[r] = *(vf *)(ur + r * O);
                for (int t = 0; t < TB; t++) {
                    vf e0 = *(const vf *)(e + t * O + o0);
                    for (int r = 0; r < 4; r++) acc[r] += v[t * C + c0 + r] * e0;
                }
                for (int r = 0; r < 4; r++) *(vf *)(ur + r * O) = acc[r];
            }
        }
    }
}

/* The threads' working buffers: one block per calling thread, grown when a call needs more and otherwise
 * kept, so that a call allocates nothing. Allocated by the calling thread because a buffer malloc'd inside
 * an OpenMP thread comes from that thread's own malloc arena, which keeps freed memory (about 40 MB more
 * peak resident memory in a batch-64 forward). Every per-thread size is a multiple of 16 floats, so each
 * part stays 64-byte aligned. */
static __thread float *scratch = NULL;
static __thread long scratch_floats = 0;

static float *scratch_for(long floats_per_thread) {
    long need = floats_per_thread * omp_get_max_threads();
    if (need > scratch_floats) {
        free(scratch);
        scratch = aligned_alloc(64, sizeof(float) * need);
        scratch_floats = need;
    }
    return scratch;
}

/* Into how many column ranges each block's products are split. With few blocks per thread (a batch-1 call
 * has 1-3) that do not divide among the threads, some threads would idle; splitting each block's output
 * channels into `parts` ranges makes blocks x parts jobs, a multiple of the thread count, at the cost of
 * transforming a block's input tiles once per range (each thread's contiguous share of jobs then splits
 * at most two blocks). Ranges are whole vectors, and there are no more of them than pairs of vectors. */
static long column_parts(long blocks, long O) {
    long threads = omp_get_max_threads(), pairs = (O + 2 * VL - 1) / (2 * VL), a = blocks, b = threads;
    if (blocks >= 4 * threads) return 1;                /* at most a quarter of a block's worth idle */
    while (b) { long r = a % b; a = b; b = r; }         /* a = gcd(blocks, threads) */
    return min_l(pairs, threads / a);
}

#if defined(__AVX512BF16__)
#define RBH 12  /* rows of a bf16 product kept in registers: 24 of the 32 vector registers accumulate */

/* The bf16 products, for CPUs with AVX-512 BF16: columns ob..oe-1 of m (TB x O, fp32) = v (TB x C) @ u, v
 * and u in bf16, u laid out as (C/2) x O x 2, each output channel's weights for a pair of input channels
 * side by side. One vdpbf16ps multiplies 16 such pairs by one broadcast pair of v and adds both products
 * into 16 fp32 sums: twice the fp32 FMA's multiplications per instruction, with the sums kept in fp32. */
static void product_bf16(const bf16 *v, const bf16 *u, float *m, long C, long O, long ob, long oe) {
    long K = C / 2;
    for (int r0 = 0; r0 < TB; r0 += RBH) {
        const int32_t *vr = (const int32_t *)(v + r0 * C);   /* row r's pair k: vr[r * K + k] */
        for (long o0 = ob; o0 < oe; o0 += 32) {
            __m512 acc[RBH][2];
            for (int r = 0; r < RBH; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            if (o0 + 16 < oe) {
                for (long k = 0; k < K; k++) {
                    __m512bh u0 = (__m512bh)_mm512_load_si512(u + (k * O + o0) * 2);
                    __m512bh u1 = (__m512bh)_mm512_load_si512(u + (k * O + o0 + 16) * 2);
                    for (int r = 0; r < RBH; r++) {
                        __m512bh s = (__m512bh)_mm512_set1_epi32(vr[r * K + k]);
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], s, u0);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], s, u1);
                    }
                }
                for (int r = 0; r < RBH; r++) {
                    _mm512_store_ps(m + (r0 + r) * O + o0, acc[r][0]);
                    _mm512_store_ps(m + (r0 + r) * O + o0 + 16, acc[r][1]);
                }
            } else {                                     /* the last single vector of an odd count */
                for (long k = 0; k < K; k++) {
                    __m512bh u0 = (__m512bh)_mm512_load_si512(u + (k * O + o0) * 2);
                    for (int r = 0; r < RBH; r++)
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_set1_epi32(vr[r * K + k]), u0);
                }
                for (int r = 0; r < RBH; r++) _mm512_store_ps(m + (r0 + r) * O + o0, acc[r][0]);
            }
        }
    }
}
#endif

/* Whether this build has the bf16 products (compiled for a CPU with AVX-512 BF16). */
int winograd_has_bf16(void) {
#if defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

/* y (N x H x W x O) = the convolution of x (N x H x W x C) with the filters whose transform is U, plus the
 * bias (or none, for NULL); O a multiple of VL. In fp32 (half = 0): U is 36 x C x O fp32. In bf16 (half = 1): U is
 * 36 x (C/2) x O x 2 bf16 (winograd_pack_bf16), the transformed input tiles are rounded to bf16 for the
 * products, and the sums, the transforms and the bias stay fp32; x and y hold bf16 where x_bf16 and y_bf16. */
static void convolve(const void *x, int x_bf16, const void *U, int half, const float *bias, void *y, int y_bf16,
                     long N, long H, long W, long C, long O) {
    grid g = grid_of(N, H, W);
    long blocks = (g.P + TB - 1) / TB, parts = column_parts(blocks, O);
    long width = (O / VL + parts - 1) / parts * VL;         /* columns per part, whole vectors */
    long v_floats = half ? 36 * TB * C / 2 : 36 * TB * C;
    long per_thread = v_floats + 36 * TB * O;               /* floats: V and M of one block */
    float *buffers = scratch_for(per_thread);
#pragma omp parallel
    {
        float *V = buffers + omp_get_thread_num() * per_thread, *M = V + v_floats;
        bf16 *Vh = (bf16 *)V;                               /* V, when it holds bf16 */
#pragma omp for schedule(static)
        for (long job = 0; job < blocks * parts; job++) {
            long blk = job / parts, ob = job % parts * width, oe = min_l(O, ob + width);
            if (ob >= oe) continue;
            for (int tt = 0; tt < TB; tt++)
                one_tile(input_chunk, x, x_bf16, g, C, blk * TB + tt, (place){V, half, tt * C, TB * C});
            for (int a = 0; a < 36; a++) {
#if defined(__AVX512BF16__)
                if (half) {
                    product_bf16(Vh + a * TB * C, (const bf16 *)U + a * C * O, M + a * TB * O, C, O, ob, oe);
                    continue;
                }
#endif
                product(V + a * TB * C, (const float *)U + a * C * O, M + a * TB * O, C, O, ob, oe);
            }
            for (int tt = 0; tt < TB && blk * TB + tt < g.P; tt++)
                output_tile(M + tt * O, TB * O, bias, y, y_bf16, g, O, blk * TB + tt, ob, oe);
        }
    }
}

void winograd_conv(const float *x, const float *U, const float *bias, float *y, long N, long H, long W, long C,
                   long O) {
    convolve(x, 0, U, 0, bias, y, 0, N, H, W, C, O);
}

/* The bf16 convolution (see convolve); returns 0 without doing anything where winograd_has_bf16() is 0. */
int winograd_conv_bf16(const void *x, int x_bf16, const bf16 *U, const float *bias, void *y, int y_bf16, long N,
                       long H, long W, long C, long O) {
    if (!winograd_has_bf16()) return 0;
    convolve(x, x_bf16, U, 1, bias, y, y_bf16, N, H, W, C, O);
    return 1;
}

/* Ub (36 x (C/2) x O x 2, bf16) = U (36 x C x O, fp32) rounded, input channels 2k and 2k+1 side by side for
 * each output channel (the layout of product_bf16); C even. */
void winograd_pack_bf16(const float *U, bf16 *Ub, long C, long O) {
#pragma omp parallel for schedule(static)
    for (long ak = 0; ak < 36 * C / 2; ak++) {
        const float *u0 = U + 2 * ak * O, *u1 = u0 + O;    /* rows 2k and 2k+1 of position a */
        bf16 *dst = Ub + 2 * ak * O;
#pragma omp simd
        for (long o = 0; o < O; o++) {
            dst[2 * o] = to_bf16(u0[o]);
            dst[2 * o + 1] = to_bf16(u1[o]);
        }
    }
}

#if defined(__AVX512BF16__)
#define RU 8  /* rows of u kept in registers by accumulate_bf16 */

/* accumulate() with bf16 products: u (C x O, fp32) += v^T e for v (TB x C) and e (TB x O) in bf16, each laid
 * out with consecutive tiles side by side, v as (TB/2) x C x 2 and e as (TB/2) x O x 2, so that one
 * vdpbf16ps adds the products of two tiles; C a multiple of RU, O of 16. */
static void accumulate_bf16(const bf16 *v, const bf16 *e, float *u, long C, long O) {
    const int32_t *vp = (const int32_t *)v;                   /* tile pair k of channel c: vp[k * C + c] */
    for (long c0 = 0; c0 < C; c0 += RU) {
        for (long o0 = 0; o0 < O; o0 += 32) {
            float *ur = u + c0 * O + o0;
            int two = o0 + 16 < O;                            /* two vectors of columns, or the last one */
            __m512 acc[RU][2];
            for (int r = 0; r < RU; r++) {
                acc[r][0] = _mm512_load_ps(ur + r * O);
                acc[r][1] = two ? _mm512_load_ps(ur + r * O + 16) : _mm512_setzero_ps();
            }
            for (int k = 0; k < TB / 2; k++) {
                __m512bh e0 = (__m512bh)_mm512_load_si512(e + (k * O + o0) * 2);
                __m512bh e1 = two ? (__m512bh)_mm512_load_si512(e + (k * O + o0 + 16) * 2) : e0;
                for (int r = 0; r < RU; r++) {
                    __m512bh s = (__m512bh)_mm512_set1_epi32(vp[k * C + c0 + r]);
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], s, e0);
                    if (two) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], s, e1);
                }
            }
            for (int r = 0; r < RU; r++) {
                _mm512_store_ps(ur + r * O, acc[r][0]);
                if (two) _mm512_store_ps(ur + r * O + 16, acc[r][1]);
            }
        }
    }
}
#endif

/* dU (36 x C x O) = sum over tiles of V[a]^T (A e A^T)[a], V[a] = (B^T d B)[a]: the gradient of U for the
 * output gradient e (N x H x W x O) and the input x (N x H x W x C), each fp32 or (x_bf16, e_bf16) bf16; the
 * transforms and sums in fp32, the products in fp32 or, where half (and winograd_has_bf16()), of the
 * transforms rounded to bf16. C a multiple of 16, O of VL. Each thread sums its blocks of tiles into its own
 * dU, and the threads' sums are added at the end. Returns 0, doing nothing, for half without bf16 products. */
int winograd_filter_grad(const void *x, int x_bf16, const void *e, int e_bf16, int half, float *dU, long N,
                         long H, long W, long C, long O) {
    if (half && !winograd_has_bf16()) return 0;
    grid g = grid_of(N, H, W);
    long blocks = (g.P + TB - 1) / TB;
    memset(dU, 0, sizeof(float) * 36 * C * O);
    long v_floats = (half ? 18 : 36) * TB * C, e_floats = (half ? 18 : 36) * TB * O;
    long per_thread = v_floats + e_floats + 36 * C * O;   /* floats: V and E of one block, the thread's dU */
    float *buffers = scratch_for(per_thread);
#pragma omp parallel
    {
        float *V = buffers + omp_get_thread_num() * per_thread, *E = V + v_floats, *sum = E + e_floats;
        memset(sum, 0, sizeof(float) * 36 * C * O);
#pragma omp for schedule(static)
        for (long blk = 0; blk < blocks; blk++) {
            if (half) {                              /* tiles 2k and 2k+1 side by side (accumulate_bf16) */
                for (int tt = 0; tt < TB; tt += 2) {
                    pair_of_tiles(input_chunk, x, x_bf16, g, C, blk * TB + tt, (bf16 *)V + tt * C, TB * C);
                    pair_of_tiles(adjoint_chunk, e, e_bf16, g, O, blk * TB + tt, (bf16 *)E + tt * O, TB * O);
                }
            } else {
                for (int tt = 0; tt < TB; tt++) {
                    one_tile(input_chunk, x, x_bf16, g, C, blk * TB + tt, (place){V, 0, tt * C, TB * C});
                    one_tile(adjoint_chunk, e, e_bf16, g, O, blk * TB + tt, (place){E, 0, tt * O, TB * O});
                }
            }
            for (int a = 0; a < 36; a++) {
#if defined(__AVX512BF16__)
                if (half) {
                    accumulate_bf16((bf16 *)V + a * TB * C, (bf16 *)E + a * TB * O, sum + a * C * O, C, O);
                    continue;
                }
#endif
                accumulate(V + a * TB * C, E + a * TB * O, sum + a * C * O, C, O);
            }
        }
#pragma omp critical
        for (long i = 0; i < 36 * C * O; i++) dU[i] += sum[i];
    }
    return 1;
}

/* U[a][c][o] = (G g G^T)[a] for the filters g = w[o][c] (w: O x C x 3 x 3), VL filters (consecutive o) at a
 * time so that the arithmetic runs across vector lanes and every store is a whole vector. */
static const float Gm[6][3] = {{1, 0, 0}, {-1.0f / 3, -1.0f / 3, -1.0f / 3}, {1.0f / 3, -1.0f / 3, 1.0f / 3},
                               {1.0f / 15, 2.0f / 15, 4.0f / 15}, {-16.0f / 15, 8.0f / 15, -4.0f / 15}, {0, 0, 1}};

/* U (36 x C x O) = G g G^T for every filter g of w, whose element (o, c, i, j) is w[o*so + c*sc + i*sh + j*sw]
 * (any layout: the UNet's weights are channels_last), or with flip at (2-i, 2-j): the input gradient's filters,
 * the weight flipped and (by its strides) transposed. With round_bf16 each weight is rounded to bf16 first,
 * as autocast rounds it. */
void winograd_filter(const float *w, long so, long sc, long sh, long sw, int flip, int round_bf16, float *U, long C,
                     long O) {
#pragma omp parallel for schedule(static)
    for (long c = 0; c < C; c++) {
        for (long o0 = 0; o0 < O; o0 += VL) {
            int lanes = (int)min_l(VL, O - o0);
            float g[9][VL], t[6][3][VL];
            for (int l = 0; l < lanes; l++)
                for (int k = 0; k < 9; k++) {
                    long i = flip ? 2 - k / 3 : k / 3, j = flip ? 2 - k % 3 : k % 3;
                    float v = w[(o0 + l) * so + c * sc + i * sh + j * sw];
                    g[k][l] = round_bf16 ? from_bf16(to_bf16(v)) : v;
                }
            for (int a = 0; a < 6; a++)
                for (int j = 0; j < 3; j++)
#pragma omp simd
                    for (int l = 0; l < VL; l++)
                        t[a][j][l] = Gm[a][0] * g[j][l] + Gm[a][1] * g[3 + j][l] + Gm[a][2] * g[6 + j][l];
            for (int a = 0; a < 6; a++)
                for (int b = 0; b < 6; b++) {
                    float *dst = U + ((a * 6 + b) * C + c) * O + o0;
#pragma omp simd
                    for (int l = 0; l < lanes; l++)
                        dst[l] = t[a][0][l] * Gm[b][0] + t[a][1][l] * Gm[b][1] + t[a][2][l] * Gm[b][2];
                }
        }
    }
}

/* dw[o][c] = G^T dU[.][c][o] G: the adjoint of winograd_filter, for the weight gradient. */
void winograd_filter_adjoint(const float *dU, float *dw, long C, long O) {
#pragma omp parallel for schedule(static)
    for (long c = 0; c < C; c++) {
        for (long o0 = 0; o0 < O; o0 += VL) {
            int lanes = (int)min_l(VL, O - o0);
            float u[36][VL], t[3][6][VL], g[9][VL];
            for (int a = 0; a < 36; a++) {
                memset(u[a], 0, sizeof u[a]);
                memcpy(u[a], dU + (a * C + c) * O + o0, sizeof(float) * lanes);
            }
            for (int k = 0; k < 3; k++)
                for (int b = 0; b < 6; b++)
#pragma omp simd
                    for (int l = 0; l < VL; l++) {
                        float s = 0;
                        for (int a = 0; a < 6; a++) s += Gm[a][k] * u[a * 6 + b][l];
                        t[k][b][l] = s;
                    }
            for (int k = 0; k < 3; k++)
                for (int j = 0; j < 3; j++)
#pragma omp simd
                    for (int l = 0; l < VL; l++) {
                        float s = 0;
                        for (int b = 0; b < 6; b++) s += t[k][b][l] * Gm[b][j];
                        g[k * 3 + j][l] = s;
                    }
            for (int l = 0; l < lanes; l++)
                for (int k = 0; k < 9; k++) dw[((o0 + l) * C + c) * 9 + k] = g[k][l];
        }
    }
}
