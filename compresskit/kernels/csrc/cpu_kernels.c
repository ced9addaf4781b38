/* compresskit CPU kernels for packed low-bit weights, compiled on first use (see cpu_native.py).

   Layout (prepared once per layer by cpu_native.prepare): the output columns are cut into tiles of
   NB columns (four native float vectors: 64 with AVX-512, 32 with AVX2, 16 with SSE/NEON; the
   library reports NB through ck_tile_width), and each tile's data is contiguous, so one thread
   streams through memory:
     qt [T, K / vpw, NB] uint32: the GPTQ words of the tile's columns, vpw = 32 / bits values per
        word (value k in word k / vpw at bits (k % vpw) * bits); bits is 2, 4 or 8 (3-bit codes are
        widened to 4 once at load);
     st, zt [T, G, NB] float: scales and zero points; group g covers k in [g*gs, min((g+1)*gs, K))
        and gs is a multiple of vpw.
   The last tile is padded with zero columns (scale 0), so every tile is a full NB wide.

     y[m, n] = sum_g s[g, n] * (sum_{k in g} x[m, k] * q[k, n] - z[g, n] * sum_{k in g} x[m, k])

   which is sum_k x[m, k] * s[g(k), n] * (q[k, n] - z[g(k), n]) with the zero point taken out of
   the inner loop. The inner loop runs across the tile's columns so that it vectorizes (whatever
   -march=native gives) and needs no horizontal sums. Value i of a word is used in place, unshifted:
   (word & (mask << i*bits)) is q * 2^(i*bits), and the activation it meets was multiplied by
   2^-(i*bits) once per call (exact: a power of two), so a weight costs a mask, a convert and an FMA.
   The top value of a word is a plain shift (it would set the sign bit). OpenMP threads (the runtime
   torch uses) split tiles. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
#define NV 4            /* vectors per tile */
#define NB (VL * NV)    /* columns per tile */
#define MR (VL >= 16 ? 4 : 2) /* rows sharing each converted weight: what the register file holds */

typedef float vf __attribute__((vector_size(VL * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(4)));

int ck_tile_width(void) { return NB; }

static inline __attribute__((always_inline)) void col_tile(
    const int bits, const int mr, const float *restrict xp, const float *restrict xs, const int64_t K,
    const uint32_t *restrict qt, const float *restrict st, const float *restrict zt, const int64_t G,
    const int64_t gs, float *restrict y, const int64_t N, const int64_t n0)
{
    const int vpw = 32 / bits;
    const int32_t mask = (int32_t)((1u << bits) - 1u);
    vf res[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < NV; v++) res[r][v] = (vf){0};
    for (int64_t g = 0; g < G; g++) {
        const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
        vf acc[MR][NV];
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
        for (int64_t kw = k0 / vpw; kw < k1 / vpw; kw++) {
            const vi *restrict w = (const vi *)(qt + kw * NB);
            const float *restrict xk = xp + kw * vpw;
            for (int i = 0; i < vpw; i++) {
                vf q[NV];
                for (int v = 0; v < NV; v++) {
                    const vi m = (i == vpw - 1) ? (vi)((vi)w[v] >> (32 - bits)) & mask
                                                : w[v] & (mask << (i * bits));
                    q[v] = __builtin_convertvector(m, vf);
                }
                for (int r = 0; r < mr; r++) {
                    const float xv = xk[r * K + i];
                    for (int v = 0; v < NV; v++) acc[r][v] += xv * q[v];
                }
            }
        }
        const vf *s = (const vf *)(st + g * NB);
        const vf *z = (const vf *)(zt + g * NB);
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++) res[r][v] += s[v] * (acc[r][v] - z[v] * xs[r * G + g]);
    }
    const int nb = (int)((N - n0) < NB ? (N - n0) : NB);
    for (int r = 0; r < mr; r++) memcpy(y + r * N + n0, res[r], (size_t)nb * sizeof(float));
}

/* One function per bit width, so that the OpenMP region is outlined with the width known at compile
   time (an always_inline helper taking `bits` gets a single outlined region with `bits` in a register). */
#define DEFINE_GEMV(B)                                                                                      \
    static void gemv_##B(const float *xp, const float *xs, int64_t M, int64_t K, const uint32_t *qt,       \
                         const float *st, const float *zt, int64_t G, int64_t gs, float *y, int64_t N,     \
                         int nthreads)                                                                      \
    {                                                                                                       \
        const int64_t tiles = (N + NB - 1) / NB, kw = K / (32 / B);                                         \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                  \
        for (int64_t t = 0; t < tiles; t++) {                                                               \
            const uint32_t *q = qt + t * kw * NB;                                                           \
            const float *s = st + t * G * NB, *z = zt + t * G * NB;                                         \
            int64_t m = 0;                                                                                  \
            for (; m + MR <= M; m += MR)                                                                    \
                col_tile(B, MR, xp + m * K, xs + m * G, K, q, s, z, G, gs, y + m * N, N, t * NB);           \
            for (; m < M; m++) /* the last rows one at a time */                                            \
                col_tile(B, 1, xp + m * K, xs + m * G, K, q, s, z, G, gs, y + m * N, N, t * NB);            \
        }                                                                                                   \
    }
DEFINE_GEMV(2)
DEFINE_GEMV(4)
DEFINE_GEMV(8)

/* y [M, N] = x [M, K] @ dequant(W).T ; returns 0, -1 for an unsupported bit width, -2 out of memory.
   The layer's own arguments come first, the call's (x, M, y, threads) last. */
int ck_gemv(const int32_t *qt, int bits, const float *st, const float *zt, int64_t G, int64_t gs, int64_t K,
            int64_t N, const float *x, int64_t M, float *y, int nthreads)
{
    if (bits != 2 && bits != 4 && bits != 8) return -1;
    const int vpw = 32 / bits;
    float *xp = malloc(sizeof(float) * (size_t)(M * K + M * G));
    if (!xp) return -2;
    float *xs = xp + M * K;
    float scale[16];
    for (int i = 0; i < vpw; i++) scale[i] = (i == vpw - 1) ? 1.f : 1.f / (float)(1u << (i * bits));
    for (int64_t m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) xp[m * K + k] = x[m * K + k] * scale[k % vpw];
        for (int64_t g = 0; g < G; g++) {
            const int64_t k1 = ((g + 1) * gs < K) ? (g + 1) * gs : K;
            float a = 0.f;
            for (int64_t k = g * gs; k < k1; k++) a += x[m * K + k];
            xs[m * G + g] = a;
        }
    }
    const uint32_t *q = (const uint32_t *)qt;
    switch (bits) {
    case 2: gemv_2(xp, xs, M, K, q, st, zt, G, gs, y, N, nthreads); break;
    case 4: gemv_4(xp, xs, M, K, q, st, zt, G, gs, y, N, nthreads); break;
    default: gemv_8(xp, xs, M, K, q, st, zt, G, gs, y, N, nthreads); break;
    }
    free(xp);
    return 0;
}

/* out [K, (t1 - t0) * NB] = dequant(W)[tiles t0..t1).T, for prefill (a dense matmul follows). */
int ck_dequant_tiles(const int32_t *qt, int64_t K, int bits, const float *st, const float *zt, int64_t G,
                     int64_t gs, int64_t t0, int64_t t1, float *out, int nthreads)
{
    if (bits != 2 && bits != 4 && bits != 8) return -1;
    const int vpw = 32 / bits;
    const int32_t mask = (int32_t)((1u << bits) - 1u);
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
            for (int j = 0; j < NB; j++) o[j] = s[j] * ((float)(int32_t)((w[j] >> sh) & (uint32_t)mask) - z[j]);
        }
    }
    return 0;
}

/* y [M, N] = x [M, K] @ (w [N, K] int8 * s[N, None]).T : the int8-rows lm_head. Four rows of w at a
   time share each load of x; k runs in vectors of VL (int8 widened to int32, then to float), the tail
   of K in scalars. */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static inline vf widen(const int8_t *p)
{
#if defined(__AVX512F__)
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__AVX2__)
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    vf r;
    for (int i = 0; i < VL; i++) r[i] = (float)p[i];
    return r;
#endif
}

static inline float hsum(vf a)
{
    float t = 0.f;
    for (int i = 0; i < VL; i++) t += a[i];
    return t;
}

void ck_int8_rows(const float *x, int64_t M, int64_t K, const int8_t *w, const float *s, int64_t N,
                  float *y, int nthreads)
{
    const int64_t quads = (N + 3) / 4, kv = K - K % VL;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < quads; t++) {
        const int64_t n = 4 * t, rows = (N - n) < 4 ? (N - n) : 4;
        const int8_t *w0 = w + n * K, *w1 = w + (n + (rows > 1)) * K, *w2 = w + (n + 2 * (rows > 2)) * K,
                     *w3 = w + (n + 3 * (rows > 3)) * K; /* a short last quad repeats row n */
        for (int64_t m = 0; m < M; m++) {
            const float *restrict xm = x + m * K;
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int64_t k = 0; k < kv; k += VL) {
                vf xv;
                memcpy(&xv, xm + k, sizeof xv);
                a0 += xv * widen(w0 + k);
                a1 += xv * widen(w1 + k);
                a2 += xv * widen(w2 + k);
                a3 += xv * widen(w3 + k);
            }
            float acc[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
            for (int64_t k = kv; k < K; k++) {
                acc[0] += xm[k] * (float)w0[k];
                acc[1] += xm[k] * (float)w1[k];
                acc[2] += xm[k] * (float)w2[k];
                acc[3] += xm[k] * (float)w3[k];
            }
            for (int j = 0; j < rows; j++) y[m * N + n + j] = acc[j] * s[n + j];
        }
    }
}
/* ---- int16 activations (x86 AVX2): the fast decode path ------------------------------------------

   The activations of each row are quantized to int16 in chunks of at most CH input features (one
   group, or CH-long pieces of a longer group) with one float scale per chunk, d = absmax / 32767, so
   x = d * xq to 1 part in 65534 of the chunk's largest value. Then a word of packed weights and a
   pair of activations meet in one vpmaddwd: value j of a word and value j + vpw/2 land in the two
   int16 halves of a 32-bit lane after one shift and mask, and multiply-add against the pair
   (xq[j], xq[j + vpw/2]) broadcast to every lane. Sums stay in int32 within a chunk (at most
   CH * 255 * 32767 < 2^31) and are scaled to float at its end. The result is the float formula above
   applied to the quantized activations (xs sums the quantized values too), so the only error is the
   activation rounding: relative errors of ~1e-5. Three integer ops and a multiply-add per pair of
   weights, against a mask, a convert and an FMA per weight in the float kernel. The tiles are those
   of an AVX2 build (NB = 32); an AVX-512 build (NB = 64) reports ck_has_i16() = 0 and serves every
   layer with the float kernel. */
#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>
#define CH 128
#define HPF 2 /* quads of head rows prefetched ahead */
#define PF 32 /* word rows (of NB words) prefetched ahead: ~4 KB, measured best of 0/4/8/16/32 */

int ck_has_i16(void) { return 1; }

static inline float absmax(float a, float x) { return (x > a) ? x : (-x > a) ? -x : a; }

/* round to nearest (ties to even, as lrintf; inlined with -fno-math-errno), clamped to +-32767 */
static inline int16_t to_i16(float v) { return (int16_t)lrintf(v > 32767.f ? 32767.f : v < -32767.f ? -32767.f : v); }

/* per row: pairs [K / 2] int32 (two int16), chunk scales d [G * cpg], group sums xs [G] */
static void quantize_rows(const float *x, int64_t M, int64_t K, int bits, int64_t G, int64_t gs, int64_t cpg,
                          int32_t *pairs, float *d, float *xs)
{
    const int vpw = 32 / bits, half = vpw / 2;
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * K;
        int16_t *q = (int16_t *)(pairs + m * (K / 2)); /* xq in pair order */
        for (int64_t g = 0; g < G; g++) {
            const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
            double sum = 0.0;
            for (int64_t c = 0; c < cpg; c++) {
                const int64_t c0 = k0 + c * CH, c1 = (c0 + CH < k1) ? c0 + CH : k1;
                float amax = 0.f;
                for (int64_t k = c0; k < c1; k++) amax = absmax(amax, xm[k]);
                const float dc = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / dc;
                int64_t isum = 0;
                for (int64_t kw = c0 / vpw; kw < c1 / vpw; kw++) /* chunks start and end on words */
                    for (int i = 0; i < vpw; i++) { /* value i of word kw -> its pair slot */
                        const int16_t v = to_i16(xm[kw * vpw + i] * inv);
                        q[2 * (kw * half + (i & (half - 1))) + (i >= half)] = v;
                        isum += v;
                    }
                d[m * G * cpg + g * cpg + c] = c0 < k1 ? dc : 0.f;
                sum += (double)dc * (double)isum;
            }
            xs[m * G + g] = (float)sum;
        }
    }
}

static inline __attribute__((always_inline)) void tile_i16(
    const int bits, const int mr, const int32_t *restrict pairs, const float *restrict d,
    const float *restrict xs, const int64_t K, const uint32_t *restrict qt, const float *restrict st,
    const float *restrict zt, const int64_t G, const int64_t gs, const int64_t cpg, float *restrict y,
    const int64_t N, const int64_t n0)
{
    const int vpw = 32 / bits, half = vpw / 2;
    const __m256i m2 = _mm256_set1_epi32((int)(((1u << bits) - 1u) * 0x10001u));
    float res[2][NB];
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < NB; j++) res[r][j] = 0.f;
    for (int64_t g = 0; g < G; g++) {
        const int64_t k0 = g * gs, k1 = (k0 + gs < K) ? k0 + gs : K;
        __m256 fa[2][NV];
        for (int r = 0; r < mr; r++)
            for (int v = 0; v < NV; v++) fa[r][v] = _mm256_setzero_ps();
        for (int64_t c = 0; c < cpg; c++) {
            const int64_t c0 = k0 + c * CH, c1 = (c0 + CH < k1) ? c0 + CH : k1;
            if (c0 >= k1) break;
            __m256i acc[2][NV];
            for (int r = 0; r < mr; r++)
                for (int v = 0; v < NV; v++) acc[r][v] = _mm256_setzero_si256();
            for (int64_t kw = c0 / vpw; kw < c1 / vpw; kw++) {
                const __m256i *w = (const __m256i *)(qt + kw * NB);
                _mm_prefetch((const char *)(w + PF * NV), _MM_HINT_T0);
                _mm_prefetch((const char *)(w + PF * NV + 2), _MM_HINT_T0);
                __m256i wv[NV];
                for (int v = 0; v < NV; v++) wv[v] = _mm256_loadu_si256(w + v);
                for (int j = 0; j < half; j++) {
                    __m256i xb[2];
                    for (int r = 0; r < mr; r++) xb[r] = _mm256_set1_epi32(pairs[r * (K / 2) + kw * half + j]);
                    for (int v = 0; v < NV; v++) {
                        const __m256i p = _mm256_and_si256(j ? _mm256_srli_epi32(wv[v], j * bits) : wv[v], m2);
                        for (int r = 0; r < mr; r++) acc[r][v] = _mm256_add_epi32(acc[r][v], _mm256_madd_epi16(p, xb[r]));
                    }
                }
            }
            for (int r = 0; r < mr; r++) {
                const __m256 dc = _mm256_set1_ps(d[r * G * cpg + g * cpg + c]);
                for (int v = 0; v < NV; v++) fa[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][v]), dc, fa[r][v]);
            }
        }
        for (int r = 0; r < mr; r++) {
            const __m256 sx = _mm256_set1_ps(xs[r * G + g]);
            for (int v = 0; v < NV; v++) {
                const __m256 s = _mm256_loadu_ps(st + g * NB + 8 * v), z = _mm256_loadu_ps(zt + g * NB + 8 * v);
                __m256 o = _mm256_loadu_ps(res[r] + 8 * v);
                o = _mm256_fmadd_ps(s, _mm256_fnmadd_ps(z, sx, fa[r][v]), o);
                _mm256_storeu_ps(res[r] + 8 * v, o);
            }
        }
    }
    const int nb = (int)((N - n0) < NB ? (N - n0) : NB);
    for (int r = 0; r < mr; r++) memcpy(y + r * N + n0, res[r], (size_t)nb * sizeof(float));
}

#define DEFINE_GEMV_I16(B)                                                                                  \
    static void gemv_i16_##B(const int32_t *pairs, const float *d, const float *xs, int64_t M, int64_t K,  \
                             const uint32_t *qt, const float *st, const float *zt, int64_t G, int64_t gs,  \
                             int64_t cpg, float *y, int64_t N, int nthreads)                                \
    {                                                                                                       \
        const int64_t tiles = (N + NB - 1) / NB, kw = K / (32 / B);                                         \
        _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                                  \
        for (int64_t t = 0; t < tiles; t++) {                                                               \
            const uint32_t *q = qt + t * kw * NB;                                                           \
            const float *s = st + t * G * NB, *z = zt + t * G * NB;                                         \
            int64_t m = 0;                                                                                  \
            for (; m + 2 <= M; m += 2)                                                                      \
                tile_i16(B, 2, pairs + m * (K / 2), d + m * G * cpg, xs + m * G, K, q, s, z, G, gs, cpg,    \
                         y + m * N, N, t * NB);                                                             \
            if (m < M)                                                                                      \
                tile_i16(B, 1, pairs + m * (K / 2), d + m * G * cpg, xs + m * G, K, q, s, z, G, gs, cpg,    \
                         y + m * N, N, t * NB);                                                             \
        }                                                                                                   \
    }
DEFINE_GEMV_I16(2)
DEFINE_GEMV_I16(4)
DEFINE_GEMV_I16(8)

/* As ck_gemv, with int16 activations (NB must be 32: AVX2 builds). */
int ck_gemv_i16(const int32_t *qt, int bits, const float *st, const float *zt, int64_t G, int64_t gs, int64_t K,
                int64_t N, const float *x, int64_t M, float *y, int nthreads)
{
    if (bits != 2 && bits != 4 && bits != 8) return -1;
    if (NB != 32 || K % (32 / bits)) return -3;
    const int64_t cpg = (gs + CH - 1) / CH;
    int32_t *pairs = malloc(sizeof(int32_t) * (size_t)(M * (K / 2)) + sizeof(float) * (size_t)(M * G * (cpg + 1)));
    if (!pairs) return -2;
    float *d = (float *)(pairs + M * (K / 2)), *xs = d + M * G * cpg;
    quantize_rows(x, M, K, bits, G, gs, cpg, pairs, d, xs);
    const uint32_t *q = (const uint32_t *)qt;
    switch (bits) {
    case 2: gemv_i16_2(pairs, d, xs, M, K, q, st, zt, G, gs, cpg, y, N, nthreads); break;
    case 4: gemv_i16_4(pairs, d, xs, M, K, q, st, zt, G, gs, cpg, y, N, nthreads); break;
    default: gemv_i16_8(pairs, d, xs, M, K, q, st, zt, G, gs, cpg, y, N, nthreads); break;
    }
    free(pairs);
    return 0;
}

/* The int8-rows head with int16 activations: 16 weights per vpmovsxbw + vpmaddwd, four table rows
   sharing each activation load, chunk scales applied every CH features, K % 16 in scalars. */
int ck_int8_rows_i16(const float *x, int64_t M, int64_t K, const int8_t *w, const float *s, int64_t N,
                     float *y, int nthreads)
{
    const int64_t nch = (K + CH - 1) / CH;
    int16_t *xq = malloc(sizeof(int16_t) * (size_t)(M * K) + sizeof(float) * (size_t)(M * nch));
    if (!xq) return -2;
    float *d = (float *)(xq + M * K + (M * K) % 2);
    for (int64_t m = 0; m < M; m++)
        for (int64_t c = 0; c < nch; c++) {
            const int64_t c0 = c * CH, c1 = (c0 + CH < K) ? c0 + CH : K;
            float amax = 0.f;
            for (int64_t k = c0; k < c1; k++) amax = absmax(amax, x[m * K + k]);
            const float dc = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / dc;
            for (int64_t k = c0; k < c1; k++)
                xq[m * K + k] = to_i16(x[m * K + k] * inv);
            d[m * nch + c] = dc;
        }
    const int64_t quads = (N + 3) / 4;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t t = 0; t < quads; t++) {
        const int64_t n = 4 * t, rows = (N - n) < 4 ? (N - n) : 4;
        const int8_t *wr[4];
        for (int j = 0; j < 4; j++) wr[j] = w + (n + (j < rows ? j : 0)) * K; /* a short quad repeats row n */
        if (n + 4 * HPF + 4 <= N) /* the quad HPF ahead: measured 5.4 -> 2.4 ms for SmolLM2's head */
            for (int64_t b = 0; b < 4 * K; b += 64) _mm_prefetch((const char *)(w + (n + 4 * HPF) * K + b), _MM_HINT_T0);
        for (int64_t m = 0; m < M; m++) {
            const int16_t *xm = xq + m * K;
            __m256 fa[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            float tail[4] = {0.f, 0.f, 0.f, 0.f};
            for (int64_t c = 0; c < nch; c++) {
                const int64_t c0 = c * CH, c1 = (c0 + CH < K) ? c0 + CH : K, cv = c0 + (c1 - c0) / 16 * 16;
                __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                                  _mm256_setzero_si256()};
                for (int64_t k = c0; k < cv; k += 16) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(xm + k));
                    for (int j = 0; j < 4; j++) {
                        const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(wr[j] + k)));
                        acc[j] = _mm256_add_epi32(acc[j], _mm256_madd_epi16(wv, xv));
                    }
                }
                const float dc = d[m * nch + c];
                for (int j = 0; j < 4; j++) {
                    fa[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), _mm256_set1_ps(dc), fa[j]);
                    int32_t ts = 0;
                    for (int64_t k = cv; k < c1; k++) ts += (int32_t)wr[j][k] * xm[k];
                    tail[j] += dc * (float)ts;
                }
            }
            for (int j = 0; j < rows; j++) {
                float a[8];
                _mm256_storeu_ps(a, fa[j]);
                y[m * N + n + j] = (a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7] + tail[j]) * s[n + j];
            }
        }
    }
    free(xq);
    return 0;
}
#else
int ck_has_i16(void) { return 0; }
int ck_gemv_i16(const int32_t *qt, int bits, const float *st, const float *zt, int64_t G, int64_t gs, int64_t K,
                int64_t N, const float *x, int64_t M, float *y, int nthreads) { return -3; }
int ck_int8_rows_i16(const float *x, int64_t M, int64_t K, const int8_t *w, const float *s, int64_t N,
                     float *y, int nthreads) { return -3; }
#endif
