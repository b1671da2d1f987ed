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
 *   B^T = | 4  0 -5  0  1  0 |     G = |  1/4     0     0 |     A^T = | 1  1  1  1  1  0 |
 *         | 0 -4 -4  1  1  0 |         | -1/6  -1/6  -1/6 |           | 0  1 -1  2 -2  0 |
 *         | 0  4 -4 -1  1  0 |         | -1/6   1/6  -1/6 |           | 0  1  1  4  4  0 |
 *         | 0 -2 -1  2  1  0 |         | 1/24  1/12   1/6 |           | 0  1 -1  8 -8  1 |
 *         | 0  2 -1 -2  1  0 |         | 1/24 -1/12   1/6 |
 *         | 0  4  0 -5  0  1 |         |    0     0     1 |
 *
 * Called from noisecraft/nets/winograd.py through ctypes; the pointers are to contiguous float32 buffers.
 */
#include <stdlib.h>
#include <string.h>

#define CB 64 /* channels per block: three 6x6xCB float buffers stay in the L1 cache */

static inline long min_l(long a, long b) { return a < b ? a : b; }

/* r = B^T d along one axis, for CB-wide channel vectors d[0..5] (stride s between them). */
static inline void bt6(const float *d, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float d0 = d[c], d1 = d[s + c], d2 = d[2 * s + c], d3 = d[3 * s + c], d4 = d[4 * s + c], d5 = d[5 * s + c];
        r[c] = 4.0f * d0 - 5.0f * d2 + d4;
        r[rs + c] = -4.0f * (d1 + d2) + d3 + d4;
        r[2 * rs + c] = 4.0f * (d1 - d2) - d3 + d4;
        r[3 * rs + c] = 2.0f * (d3 - d1) - d2 + d4;
        r[4 * rs + c] = 2.0f * (d1 - d3) - d2 + d4;
        r[5 * rs + c] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

/* r = A^T m along one axis: six vectors in, four out. */
static inline void at6(const float *m, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float m0 = m[c], m1 = m[s + c], m2 = m[2 * s + c], m3 = m[3 * s + c], m4 = m[4 * s + c], m5 = m[5 * s + c];
        float a = m1 + m2, b = m1 - m2, e = m3 + m4, f = m3 - m4;
        r[c] = m0 + a + e;
        r[rs + c] = b + 2.0f * f;
        r[2 * rs + c] = a + 4.0f * e;
        r[3 * rs + c] = b + 8.0f * f + m5;
    }
}

/* r = A g along one axis (the adjoint of at6): four vectors in, six out. */
static inline void a4(const float *g, long s, float *r, long rs, int cb) {
#pragma omp simd
    for (int c = 0; c < cb; c++) {
        float g0 = g[c], g1 = g[s + c], g2 = g[2 * s + c], g3 = g[3 * s + c];
        float e = g0 + g2, o = g1 + g3, e4 = g0 + 4.0f * g2, o8 = 2.0f * g1 + 8.0f * g3;
        r[c] = g0;
        r[rs + c] = e + o;
        r[2 * rs + c] = e - o;
        r[3 * rs + c] = e4 + o8;
        r[4 * rs + c] = e4 - o8;
        r[5 * rs + c] = g3;
    }
}

/* V[a][p][c] = (B^T d_p B)[a], d_p the 6x6 input tile of tile p: for the weight gradient. */
void winograd_input(const float *x, float *V, long N, long H, long W, long C) {
    long nH = (H + 3) / 4, nW = (W + 3) / 4, P = N * nH * nW;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < P; p++) {
        float d[36 * CB], t[36 * CB], v[36 * CB];
        long n = p / (nH * nW), th = p / nW % nH, tw = p % nW;
        for (long c0 = 0; c0 < C; c0 += CB) {
            int cb = (int)min_l(CB, C - c0);
            for (int i = 0; i < 6; i++) {
                long y = 4 * th - 1 + i;
                for (int j = 0; j < 6; j++) {
                    long xx = 4 * tw - 1 + j;
                    float *dst = d + (i * 6 + j) * CB;
                    if (y < 0 || y >= H || xx < 0 || xx >= W)
                        memset(dst, 0, sizeof(float) * cb);
                    else
                        memcpy(dst, x + ((n * H + y) * W + xx) * C + c0, sizeof(float) * cb);
                }
            }
            for (int j = 0; j < 6; j++) bt6(d + j * CB, 6 * CB, t + j * CB, 6 * CB, cb);   /* columns */
            for (int i = 0; i < 6; i++) bt6(t + i * 6 * CB, CB, v + i * 6 * CB, CB, cb);   /* rows */
            for (int a = 0; a < 36; a++)
                memcpy(V + (a * P + p) * C + c0, v + a * CB, sizeof(float) * cb);
        }
    }
}

/* dM[a][p][c] = (A g_p A^T)[a], g_p the 4x4 tile of the output gradient (zeros outside the image): the
 * adjoint of winograd_output, for the weight gradient. */
void winograd_output_adjoint(const float *g, float *dM, long N, long H, long W, long C) {
    long nH = (H + 3) / 4, nW = (W + 3) / 4, P = N * nH * nW;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < P; p++) {
        float gt[16 * CB], t[24 * CB], v[36 * CB];
        long n = p / (nH * nW), th = p / nW % nH, tw = p % nW;
        for (long c0 = 0; c0 < C; c0 += CB) {
            int cb = (int)min_l(CB, C - c0);
            for (int i = 0; i < 4; i++) {
                long yy = 4 * th + i;
                for (int j = 0; j < 4; j++) {
                    long xx = 4 * tw + j;
                    float *dst = gt + (i * 4 + j) * CB;
                    if (yy >= H || xx >= W)
                        memset(dst, 0, sizeof(float) * cb);
                    else
                        memcpy(dst, g + ((n * H + yy) * W + xx) * C + c0, sizeof(float) * cb);
                }
            }
            for (int j = 0; j < 4; j++) a4(gt + j * CB, 4 * CB, t + j * CB, 4 * CB, cb);   /* 6 x 4 */
            for (int i = 0; i < 6; i++) a4(t + i * 4 * CB, CB, v + i * 6 * CB, CB, cb);    /* 6 x 6 */
            for (int a = 0; a < 36; a++)
                memcpy(dM + (a * P + p) * C + c0, v + a * CB, sizeof(float) * cb);
        }
    }
}

/* The whole convolution, fused: y = A^T [ U (.) (B^T d B) ] A (+ bias) for blocks of TB tiles at a time, so
 * that the transformed tiles V and their products M stay in the core's cache instead of making a round trip
 * through memory (which made the unfused steps memory-bound). U is (36, C, O) from winograd.py's
 * filter_transform; O must be a multiple of VL. The 36 products M[a] (TB x O) = V[a] (TB x C) @ U[a] (C x O)
 * use a register-blocked kernel: RB rows by two vectors of output channels held in registers over the
 * whole sum over C. */
#if defined(__AVX512F__)
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
#define RB 6
#define TB (4 * RB)

static void product(const float *v, const float *u, float *m, long C, long O) {
    for (int r0 = 0; r0 < TB; r0 += RB) {
        const float *vr = v + r0 * C;
        for (long o0 = 0; o0 < O; o0 += 2 * VL) {
            vf acc[RB][2];
            for (int r = 0; r < RB; r++) acc[r][0] = acc[r][1] = (vf){0};
            if (o0 + VL < O) {
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

int winograd_vector_width(void) { return VL; }

void winograd_conv(const float *x, const float *U, const float *bias, float *y, long N, long H, long W, long C,
                   long O) {
    long nH = (H + 3) / 4, nW = (W + 3) / 4, P = N * nH * nW, blocks = (P + TB - 1) / TB;
#pragma omp parallel
    {
        float *V = aligned_alloc(64, sizeof(float) * 36 * TB * C);
        float *M = aligned_alloc(64, sizeof(float) * 36 * TB * O);
        float d[36 * CB], t[36 * CB], v[36 * CB], r[16 * CB];
#pragma omp for schedule(static)
        for (long blk = 0; blk < blocks; blk++) {
            for (int tt = 0; tt < TB; tt++) {            /* V[a][tt][c]: the transformed input tiles */
                long p = blk * TB + tt;
                long n = p / (nH * nW), th = p / nW % nH, tw = p % nW;
                for (long c0 = 0; c0 < C; c0 += CB) {
                    int cb = (int)min_l(CB, C - c0);
                    for (int i = 0; i < 6; i++) {
                        long yy = 4 * th - 1 + i;
                        for (int j = 0; j < 6; j++) {
                            long xx = 4 * tw - 1 + j;
                            float *dst = d + (i * 6 + j) * CB;
                            if (p >= P || yy < 0 || yy >= H || xx < 0 || xx >= W)
                                memset(dst, 0, sizeof(float) * cb);
                            else
                                memcpy(dst, x + ((n * H + yy) * W + xx) * C + c0, sizeof(float) * cb);
                        }
                    }
                    for (int j = 0; j < 6; j++) bt6(d + j * CB, 6 * CB, t + j * CB, 6 * CB, cb);
                    for (int i = 0; i < 6; i++) bt6(t + i * 6 * CB, CB, v + i * 6 * CB, CB, cb);
                    for (int a = 0; a < 36; a++) memcpy(V + (a * TB + tt) * C + c0, v + a * CB, sizeof(float) * cb);
                }
            }
            for (int a = 0; a < 36; a++) product(V + a * TB * C, U + a * C * O, M + a * TB * O, C, O);
            for (int tt = 0; tt < TB; tt++) {            /* y = A^T M A, cropped, plus the bias */
                long p = blk * TB + tt;
                if (p >= P) break;
                long n = p / (nH * nW), th = p / nW % nH, tw = p % nW;
                for (long c0 = 0; c0 < O; c0 += CB) {
                    int cb = (int)min_l(CB, O - c0);
                    const float *m = M + tt * O + c0;  /* m[a]: M[a][tt][c0..], a = i*6+j */
                    for (int j = 0; j < 6; j++) at6(m + j * TB * O, 6 * TB * O, t + j * CB, 6 * CB, cb);
                    for (int i = 0; i < 4; i++) at6(t + i * 6 * CB, CB, r + i * 4 * CB, CB, cb);
                    for (int i = 0; i < 4; i++) {
                        long yy = 4 * th + i;
                        if (yy >= H) break;
                        for (int j = 0; j < 4; j++) {
                            long xx = 4 * tw + j;
                            if (xx >= W) break;
                            float *dst = y + ((n * H + yy) * W + xx) * O + c0;
                            const float *src = r + (i * 4 + j) * CB;
                            if (bias) {
#pragma omp simd
                                for (int c = 0; c < cb; c++) dst[c] = src[c] + bias[c0 + c];
                            } else {
                                memcpy(dst, src, sizeof(float) * cb);
                            }
                        }
                    }
                }
            }
        }
        free(V);
        free(M);
    }
}

/* U[a][c][o] = (G g G^T)[a] for the filters g = w[o][c] (w: O x C x 3 x 3), in double precision so that G's
 * 1/6 and 1/24 are rounded once, at the end. */
static const double Gm[6][3] = {{0.25, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

void winograd_filter(const float *w, float *U, long C, long O) {
#pragma omp parallel for schedule(static)
    for (long c = 0; c < C; c++) {
        for (long o = 0; o < O; o++) {
            const float *g = w + (o * C + c) * 9;
            double t[6][3];
            for (int a = 0; a < 6; a++)
                for (int l = 0; l < 3; l++) t[a][l] = Gm[a][0] * g[l] + Gm[a][1] * g[3 + l] + Gm[a][2] * g[6 + l];
            for (int a = 0; a < 6; a++)
                for (int b = 0; b < 6; b++)
                    U[((a * 6 + b) * C + c) * O + o] = (float)(t[a][0] * Gm[b][0] + t[a][1] * Gm[b][1] + t[a][2] * Gm[b][2]);
        }
    }
}

/* dw[o][c] = G^T dU[.][c][o] G: the adjoint of winograd_filter, for the weight gradient. */
void winograd_filter_adjoint(const float *dU, float *dw, long C, long O) {
#pragma omp parallel for schedule(static)
    for (long c = 0; c < C; c++) {
        for (long o = 0; o < O; o++) {
            double t[3][6];
            for (int k = 0; k < 3; k++)
                for (int b = 0; b < 6; b++) {
                    double s = 0;
                    for (int a = 0; a < 6; a++) s += Gm[a][k] * dU[((a * 6 + b) * C + c) * O + o];
                    t[k][b] = s;
                }
            float *g = dw + (o * C + c) * 9;
            for (int k = 0; k < 3; k++)
                for (int l = 0; l < 3; l++) {
                    double s = 0;
                    for (int b = 0; b < 6; b++) s += t[k][b] * Gm[b][l];
                    g[k * 3 + l] = (float)s;
                }
        }
    }
}
