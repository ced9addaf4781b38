/* compresskit CPU kernels for packed low-bit weights, compiled on first use (see cpu_native.py).

   Layout (prepared once per layer by cpu_native.prepare): the output columns are cut into tiles of
   NB = 64, and each tile's data is contiguous, so one thread streams through memory:
     qt [T, K / vpw, NB] uint32: the GPTQ words of the tile's columns, vpw = 32 / bits values per
        word (value k in word k / vpw at bits (k % vpw) * bits); bits is 2, 4 or 8 (3-bit codes are
        widened to 4 once at load);
     st, zt [T, G, NB] float: scales and zero points; group g covers k in [g*gs, min((g+1)*gs, K))
        and gs is a multiple of vpw.
   The last tile is padded with zero columns (scale 0), so every tile is a full NB wide.

     y[m, n] = sum_g s[g, n] * (sum_{k in g} x[m, k] * q[k, n] - z[g, n] * sum_{k in g} x[m, k])

   which is sum_k x[m, k] * s[g(k), n] * (q[k, n] - z[g(k), n]) with the zero point taken out of
   the inner loop. The inner loop runs across the tile's columns so that it vectorizes (AVX2,
   AVX-512, NEON: whatever -march=native gives). OpenMP threads (the runtime torch uses) split tiles. */
#include <stdint.h>
#include <string.h>

#define NB 64
#define MR 4 /* rows handled together: each unpacked weight is used for up to MR rows */

/* 16-lane vectors (GCC/Clang vector extensions): one AVX-512 register, two AVX2 ones, four NEON ones. */
typedef float vf __attribute__((vector_size(64), aligned(4)));
typedef uint32_t vu __attribute__((vector_size(64), aligned(4)));
#define NV (NB / 16)

static inline __attribute__((always_inline)) void col_tile(
    const int bits, const int mr, const float *restrict x, const int64_t K, const uint32_t *restrict qt,
    const float *restrict st, const float *restrict zt, const int64_t G, const int64_t gs,
    float *restrict y, const int64_t N, const int64_t n0)
{
    const int vpw = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    vf res[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < NV; v++) res[r][v] = (vf){0};
    for (int64_t g = 0; g < G; g++) {
        const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
        vf acc[MR][NV];
        float xs[MR];
        for (int r = 0; r < mr; r++) {
            xs[r] = 0.f;
            for (int64_t k = k0; k < k1; k++) xs[r] += x[r * K + k];
            for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
        }
        for (int64_t kw = k0 / vpw; kw < k1 / vpw; kw++) {
            const vu *restrict w = (const vu *)(qt + kw * NB);
            vu wv[NV];
            for (int v = 0; v < NV; v++) wv[v] = w[v];
            for (int i = 0; i < vpw; i++) {
                const uint32_t sh = (uint32_t)(i * bits);
                vf q[NV];
                for (int v = 0; v < NV; v++) q[v] = __builtin_convertvector((wv[v] >> sh) & mask, vf);
                for (int r = 0; r < mr; r++) {
                    const float xv = x[r * K + kw * vpw + i];
                    for (int v = 0; v < NV; v++) acc[r][v] += xv * q[v];
                }
            }
        }
        const vf *s = (const vf *)(st + g * NB);
        const vf *z = (const vf *)(zt + g * NB);
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++) res[r][v] += s[v] * (acc[r][v] - z[v] * xs[r]);
    }
    const int nb = (int)((N - n0) < NB ? (N - n0) : NB);
    for (int r = 0; r < mr; r++) memcpy(y + r * N + n0, res[r], (size_t)nb * sizeof(float));
}

static inline __attribute__((always_inline)) void gemv_bits(
    const int bits, const float *x, int64_t M, int64_t K, const uint32_t *qt, const float *st,
    const float *zt, int64_t G, int64_t gs, float *y, int64_t N, int nthreads)
{
    const int64_t tiles = (N + NB - 1) / NB, kw = K / (32 / bits);
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < tiles; t++) {
        const uint32_t *q = qt + t * kw * NB;
        const float *s = st + t * G * NB, *z = zt + t * G * NB;
        int64_t m = 0;
        for (; m + MR <= M; m += MR) col_tile(bits, MR, x + m * K, K, q, s, z, G, gs, y + m * N, N, t * NB);
        switch (M - m) { /* the last rows, with a row count known at compile time */
        case 3: col_tile(bits, 3, x + m * K, K, q, s, z, G, gs, y + m * N, N, t * NB); break;
        case 2: col_tile(bits, 2, x + m * K, K, q, s, z, G, gs, y + m * N, N, t * NB); break;
        case 1: col_tile(bits, 1, x + m * K, K, q, s, z, G, gs, y + m * N, N, t * NB); break;
        default: break;
        }
    }
}

/* y [M, N] = x [M, K] @ dequant(W).T ; returns 0, or -1 for an unsupported bit width. */
int ck_gemv(const float *x, int64_t M, int64_t K, const int32_t *qt, int bits, const float *st,
            const float *zt, int64_t G, int64_t gs, float *y, int64_t N, int nthreads)
{
    const uint32_t *q = (const uint32_t *)qt;
    switch (bits) {
    case 2: gemv_bits(2, x, M, K, q, st, zt, G, gs, y, N, nthreads); return 0;
    case 4: gemv_bits(4, x, M, K, q, st, zt, G, gs, y, N, nthreads); return 0;
    case 8: gemv_bits(8, x, M, K, q, st, zt, G, gs, y, N, nthreads); return 0;
    default: return -1;
    }
}

/* out [K, (t1 - t0) * NB] = dequant(W)[tiles t0..t1).T, for prefill (a dense matmul follows). */
int ck_dequant_tiles(const int32_t *qt, int64_t K, int bits, const float *st, const float *zt, int64_t G,
                     int64_t gs, int64_t t0, int64_t t1, float *out, int nthreads)
{
    if (bits != 2 && bits != 4 && bits != 8) return -1;
    const int vpw = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    const int64_t kw = K / vpw, width = (t1 - t0) * NB;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = t0; t < t1; t++) {
        const uint32_t *q = (const uint32_t *)qt + t * kw * NB;
        for (int64_t k = 0; k < K; k++) {
            const int64_t g = k / gs;
            const int sh = (int)(k % vpw) * bits;
            const uint32_t *restrict w = q + (k / vpw) * NB;
            const float *restrict s = st + (t * G + g) * NB;
            const float *restrict z = zt + (t * G + g) * NB;
            float *restrict o = out + k * width + (t - t0) * NB;
            for (int j = 0; j < NB; j++) o[j] = s[j] * ((float)((w[j] >> sh) & mask) - z[j]);
        }
    }
    return 0;
}

/* y [M, N] = x [M, K] @ (w [N, K] int8 * s[N, None]).T : the int8-rows lm_head. Four rows of w at a
   time share each load of x. */
void ck_int8_rows(const float *x, int64_t M, int64_t K, const int8_t *w, const float *s, int64_t N,
                  float *y, int nthreads)
{
    const int64_t quads = N / 4;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < quads + (N % 4); t++) {
        for (int64_t m = 0; m < M; m++) {
            const float *restrict xm = x + m * K;
            if (t < quads) {
                const int64_t n = 4 * t;
                const int8_t *restrict w0 = w + n * K, *restrict w1 = w0 + K, *restrict w2 = w1 + K,
                             *restrict w3 = w2 + K;
                float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
                for (int64_t k = 0; k < K; k++) {
                    const float xv = xm[k];
                    a0 += xv * (float)w0[k];
                    a1 += xv * (float)w1[k];
                    a2 += xv * (float)w2[k];
                    a3 += xv * (float)w3[k];
                }
                y[m * N + n] = a0 * s[n];
                y[m * N + n + 1] = a1 * s[n + 1];
                y[m * N + n + 2] = a2 * s[n + 2];
                y[m * N + n + 3] = a3 * s[n + 3];
            } else {
                const int64_t n = 4 * quads + (t - quads);
                const int8_t *restrict wn = w + n * K;
                float acc = 0.f;
#pragma omp simd reduction(+ : acc)
                for (int64_t k = 0; k < K; k++) acc += xm[k] * (float)wn[k];
                y[m * N + n] = acc * s[n];
            }
        }
    }
}
