/* Fused attention with dropout for DMD on CPU (float32), forward and backward.
 *
 * One (batch x head) slice at a time, one query row at a time, 16 keys at a time: scores,
 * softmax, dropout and the weighted sum of values stay in vector registers (the FlashAttention
 * idea, taken to its end for DMD's tiny heads of 5-10 channels, where no matrix-multiply call is
 * efficient). The forward pass reads a row's keys twice (scores and their maximum, then
 * exponentials and values), the backward pass once. Keys and values of the slice are transposed
 * into (d_h, L_k) buffers, padded to whole vectors, so every load is a contiguous vector of 16
 * keys. The code uses GCC/Clang vector extensions (16 floats: one AVX-512 register, two AVX2
 * ones, four NEON ones) and is compiled with the head size as a constant for 5 and 10.
 * Slices are shared among OpenMP threads; a slice's key and value gradients belong to one
 * thread, so there are no atomics and the result does not depend on the thread count.
 *
 * Mask: key j is visible to query i when j <= i + offset (offset >= L_k: no mask; the
 * reference's mask is offset = |L_k - L_q|). Hidden keys are never touched.
 *
 * Dropout: keep(n, i, j) comes from a counter-based hash of (seed, n * L_q + i, j): drawn in
 * the forward pass and drawn again, identically, in the backward pass, so no mask is stored.
 * The 24 high bits of the hash are uniform; a score is dropped when they are below
 * p24 = round(p * 2^24), i.e. with probability p (exact to 24 bits).
 *
 * The forward pass stores each row's log-sum-exp; the backward pass recomputes the
 * probabilities from it.
 *
 * Built on first use by dmd_core/native.py (cc -O3 -fopenmp; -march=native where the
 * compiler takes it) and called through ctypes: plain C, no PyTorch headers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define API __attribute__((visibility("default")))

/* ---- vectors of W floats -------------------------------------------------------------------- */

#define W 16
typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
static const vi IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static inline vf vload(const float *p) {
    vf x;
    memcpy(&x, p, sizeof x);
    return x;
}
static inline void vstore(float *p, vf x) { memcpy(p, &x, sizeof x); }
static inline vf vsel(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); } /* mask ? a : b */
static inline vf vbroadcast(float a) { return (vf){0} + a; }
static inline float hsum(vf x) {
    float s = 0.0f;
    for (int l = 0; l < W; l++) s += x[l];
    return s;
}
static inline float hmax(vf x) {
    float m = x[0];
    for (int l = 1; l < W; l++) m = x[l] > m ? x[l] : m;
    return m;
}

/* ---- random keep flags ------------------------------------------------------------------- */

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline vu mix32(vu x) { /* a bijection of 32-bit words with full avalanche ("lowbias32") */
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

/* The 64-bit key of row r = n * L_q + i: splitmix64's output number r + 1 for this seed. */
static inline uint64_t row_key(uint64_t seed, uint64_t row) {
    return splitmix64(seed + (row + 1) * 0x9E3779B97F4A7C15ULL);
}

/* Keep flags (-1 keep, 0 drop) of keys j0 .. j0 + W - 1 in the row with this key. */
static inline vi keep_lanes(int64_t j0, uint64_t key, uint32_t p24) {
    vu x = (vu)(IOTA + (int32_t)j0) + (uint32_t)key;
    x = mix32(mix32(x) ^ (uint32_t)(key >> 32));
    return (x >> 8) >= p24;
}

/* ---- exp ------------------------------------------------------------------------------------ */

/* exp(x) for x <= 0 (scores minus their row maximum), to ~2 ulp: Cephes' expf polynomial with
 * a branch-free range reduction. Arguments below -87 (where float exp leaves the normal range)
 * and hidden keys (scores set to -3e38) give exactly 0. */
static inline vf exp_nonpos(vf x) {
    const vi underflow = x < -87.0f;
    x = vsel(underflow, vbroadcast(-87.0f), vsel(x > 0.0f, vbroadcast(0.0f), x));
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    vf shifted = x * 1.44269504088896341f + magic;
    vf n = shifted - magic;
    vi ni = (vi)shifted - 0x4B400000; /* the integer n itself */
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf y = vbroadcast(1.9875691500e-4f);
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    y = y * (vf)((ni + 127) << 23);
    return vsel(underflow, vbroadcast(0.0f), y);
}

/* ---- shared pieces --------------------------------------------------------------------------- */

#define MAX_DH 64
#define HIDDEN -3.0e38f

typedef struct {
    const float *ptr;
    int64_t sn, sl; /* strides (elements) of the batch-head and time dimensions; channels contiguous */
} View;

typedef struct {
    View q, k, v;
    int64_t len_q, len_k, lkp, dh, offset;
    float scale, keep_scale;
    uint32_t p24;
    uint64_t seed;
} Shape;

static inline int64_t padded(int64_t n) { return (n + W - 1) / W * W; }

/* Keys [0, end) are visible to query i. */
static inline int64_t visible(int64_t i, int64_t offset, int64_t len_k) {
    int64_t end = i + offset + 1;
    return end < len_k ? end : len_k;
}

/* dst (dh, lenp) = transpose of slice n of src (len, dh), zero beyond len. */
static void load_transposed(float *restrict dst, View src, int64_t n, int64_t len, int64_t lenp, int64_t dh) {
    const float *base = src.ptr + n * src.sn;
    for (int64_t j = 0; j < len; j++)
        for (int64_t d = 0; d < dh; d++) dst[d * lenp + j] = base[j * src.sl + d];
    for (int64_t d = 0; d < dh; d++)
        for (int64_t j = len; j < lenp; j++) dst[d * lenp + j] = 0.0f;
}

/* Scores of keys c .. c + W - 1 (HIDDEN where the mask hides them). */
static inline __attribute__((always_inline)) vf scores(const float *q, const float *kt, int64_t lkp, int64_t c, int64_t end,
                                                       int64_t dh) {
    vf s = q[0] * vload(kt + c);
    for (int64_t d = 1; d < dh; d++) s += q[d] * vload(kt + d * lkp + c);
    return vsel((IOTA + (int32_t)c) < (int32_t)end, s, vbroadcast(HIDDEN));
}

/* Which thread's scratch to use: every thread's is allocated before the parallel region. */
static inline int64_t thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void *buffer(int64_t floats) {
    void *p = NULL;
    return posix_memalign(&p, 64, sizeof(float) * (size_t)floats) ? NULL : p;
}

/* ---- forward ----------------------------------------------------------------------------------- */

/* One slice n: out rows and log-sum-exps. kt, vt: (dh, lkp) buffers; s: lkp floats. */
static inline __attribute__((always_inline)) void forward_slice(const Shape *a, int64_t n, float *out, int64_t son,
                                                                int64_t sol, float *lse, float *kt, float *vt,
                                                                float *s, const int64_t dh) {
    const int64_t lkp = a->lkp;
    load_transposed(kt, a->k, n, a->len_k, lkp, dh);
    load_transposed(vt, a->v, n, a->len_k, lkp, dh);
    for (int64_t i = 0; i < a->len_q; i++) {
        const int64_t end = visible(i, a->offset, a->len_k), endp = padded(end);
        const float *qrow = a->q.ptr + n * a->q.sn + i * a->q.sl;
        float qs[MAX_DH];
        for (int64_t d = 0; d < dh; d++) qs[d] = qrow[d] * a->scale;
        vf mv = vbroadcast(HIDDEN);
        for (int64_t c = 0; c < endp; c += W) {
            vf sc = scores(qs, kt, lkp, c, end, dh);
            vstore(s + c, sc);
            mv = vsel(sc > mv, sc, mv);
        }
        const float m = hmax(mv);
        const uint64_t key = row_key(a->seed, (uint64_t)(n * a->len_q + i));
        vf lv = vbroadcast(0.0f), acc[MAX_DH];
        for (int64_t d = 0; d < dh; d++) acc[d] = vbroadcast(0.0f);
        for (int64_t c = 0; c < endp; c += W) {
            vf e = exp_nonpos(vload(s + c) - m);
            lv += e;
            if (a->p24) e = vsel(keep_lanes(c, key, a->p24), e, vbroadcast(0.0f));
            for (int64_t d = 0; d < dh; d++) acc[d] += e * vload(vt + d * lkp + c);
        }
        const float l = hsum(lv), norm = a->keep_scale / l;
        float *orow = out + n * son + i * sol;
        for (int64_t d = 0; d < dh; d++) orow[d] = hsum(acc[d]) * norm;
        lse[n * a->len_q + i] = m + logf(l);
    }
}

API int dmd_attention_forward(const float *q, int64_t sqn, int64_t sql, const float *k, int64_t skn, int64_t skl,
                              const float *v, int64_t svn, int64_t svl, float *out, int64_t son, int64_t sol, float *lse,
                              int64_t n_slices, int64_t len_q, int64_t len_k, int64_t dh, int64_t offset, float scale,
                              float keep_scale, uint32_t p24, uint64_t seed, int threads) {
    if (dh < 1 || dh > MAX_DH || len_k < 1 || offset < 0) return 1;
    const Shape a = {{q, sqn, sql}, {k, skn, skl}, {v, svn, svl}, len_q, len_k, padded(len_k), dh, offset,
                     scale, keep_scale, p24, seed};
    if (threads < 1) threads = 1;
    const int64_t per_thread = a.lkp * (2 * dh + 1);
    float *buf = buffer(threads * per_thread);
    if (!buf) return 2;
#pragma omp parallel num_threads(threads)
    {
        float *kt = buf + thread_index() * per_thread, *vt = kt + dh * a.lkp, *s = vt + dh * a.lkp;
#pragma omp for schedule(dynamic)
        for (int64_t n = 0; n < n_slices; n++) {
            switch (dh) { /* the head size as a constant: its loops unrolled, accumulators in registers */
            case 5: forward_slice(&a, n, out, son, sol, lse, kt, vt, s, 5); break;
            case 10: forward_slice(&a, n, out, son, sol, lse, kt, vt, s, 10); break;
            default: forward_slice(&a, n, out, son, sol, lse, kt, vt, s, dh);
            }
        }
    }
    free(buf);
    return 0;
}

/* ---- backward ---------------------------------------------------------------------------------- */

typedef struct {
    const float *out, *grad, *lse;
    int64_t son, sol, sgn, sgl;
    float *dq, *dk, *dv;
    int64_t sdqn, sdql, sdkn, sdkl, sdvn, sdvl;
} Grads;

/* One slice n: its rows of dq, and dk, dv (accumulated in dkt, dvt, then written). */
static inline __attribute__((always_inline)) void backward_slice(const Shape *a, const Grads *b, int64_t n, float *kt,
                                                                 float *vt, float *dkt, float *dvt, const int64_t dh) {
    const int64_t lkp = a->lkp;
    load_transposed(kt, a->k, n, a->len_k, lkp, dh);
    load_transposed(vt, a->v, n, a->len_k, lkp, dh);
    memset(dkt, 0, sizeof(float) * (size_t)(2 * dh * lkp)); /* dkt and dvt */
    for (int64_t i = 0; i < a->len_q; i++) {
        const int64_t end = visible(i, a->offset, a->len_k), endp = padded(end);
        const float *qrow = a->q.ptr + n * a->q.sn + i * a->q.sl;
        const float *grow = b->grad + n * b->sgn + i * b->sgl;
        const float *orow = b->out + n * b->son + i * b->sol;
        float qs[MAX_DH], g[MAX_DH];
        float delta = 0.0f; /* dO . O = sum_j (dropped, scaled probability)_j (dO . v_j) */
        for (int64_t d = 0; d < dh; d++) {
            qs[d] = qrow[d] * a->scale;
            g[d] = grow[d];
            delta += g[d] * orow[d];
        }
        const float row_lse = b->lse[n * a->len_q + i];
        const uint64_t key = row_key(a->seed, (uint64_t)(n * a->len_q + i));
        vf dqacc[MAX_DH];
        for (int64_t d = 0; d < dh; d++) dqacc[d] = vbroadcast(0.0f);
        for (int64_t c = 0; c < endp; c += W) {
            vf p = exp_nonpos(scores(qs, kt, lkp, c, end, dh) - row_lse);
            vf pk = p * a->keep_scale; /* after dropout and its 1 / (1 - p) */
            if (a->p24) pk = vsel(keep_lanes(c, key, a->p24), pk, vbroadcast(0.0f));
            vf dp = g[0] * vload(vt + c); /* dO . v_j */
            for (int64_t d = 1; d < dh; d++) dp += g[d] * vload(vt + d * lkp + c);
            vf ds = pk * dp - p * delta;
            for (int64_t d = 0; d < dh; d++) {
                dqacc[d] += ds * vload(kt + d * lkp + c);
                vstore(dkt + d * lkp + c, vload(dkt + d * lkp + c) + ds * qs[d]);
                vstore(dvt + d * lkp + c, vload(dvt + d * lkp + c) + pk * g[d]);
            }
        }
        float *dqrow = b->dq + n * b->sdqn + i * b->sdql;
        for (int64_t d = 0; d < dh; d++) dqrow[d] = hsum(dqacc[d]) * a->scale;
    }
    float *dkb = b->dk + n * b->sdkn, *dvb = b->dv + n * b->sdvn;
    for (int64_t j = 0; j < a->len_k; j++)
        for (int64_t d = 0; d < dh; d++) {
            dkb[j * b->sdkl + d] = dkt[d * lkp + j];
            dvb[j * b->sdvl + d] = dvt[d * lkp + j];
        }
}

/* Gradients of the forward above given dO (grad) and the forward's out and lse.
 * dq, dk, dv are written (not accumulated), each with its own strides. */
API int dmd_attention_backward(const float *q, int64_t sqn, int64_t sql, const float *k, int64_t skn, int64_t skl,
                               const float *v, int64_t svn, int64_t svl, const float *out, int64_t son, int64_t sol,
                               const float *grad, int64_t sgn, int64_t sgl, const float *lse, float *dq, int64_t sdqn,
                               int64_t sdql, float *dk, int64_t sdkn, int64_t sdkl, float *dv, int64_t sdvn, int64_t sdvl,
                               int64_t n_slices, int64_t len_q, int64_t len_k, int64_t dh, int64_t offset, float scale,
                               float keep_scale, uint32_t p24, uint64_t seed, int threads) {
    if (dh < 1 || dh > MAX_DH || len_k < 1 || offset < 0) return 1;
    const Shape a = {{q, sqn, sql}, {k, skn, skl}, {v, svn, svl}, len_q, len_k, padded(len_k), dh, offset,
                     scale, keep_scale, p24, seed};
    const Grads b = {out, grad, lse, son, sol, sgn, sgl, dq, dk, dv, sdqn, sdql, sdkn, sdkl, sdvn, sdvl};
    if (threads < 1) threads = 1;
    const int64_t per_thread = a.lkp * 4 * dh;
    float *buf = buffer(threads * per_thread);
    if (!buf) return 2;
#pragma omp parallel num_threads(threads)
    {
        float *kt = buf + thread_index() * per_thread, *vt = kt + dh * a.lkp, *dkt = vt + dh * a.lkp;
        float *dvt = dkt + dh * a.lkp;
#pragma omp for schedule(dynamic)
        for (int64_t n = 0; n < n_slices; n++) {
            switch (dh) {
            case 5: backward_slice(&a, &b, n, kt, vt, dkt, dvt, 5); break;
            case 10: backward_slice(&a, &b, n, kt, vt, dkt, dvt, 10); break;
            default: backward_slice(&a, &b, n, kt, vt, dkt, dvt, dh);
            }
        }
    }
    free(buf);
    return 0;
}

/* ---- the mask alone (tests, analysis) ----------------------------------------------------------- */

/* keep[(n * len_q + i) * len_k + j] in {0, 1}: the flags the two passes above use. */
API int dmd_keep_mask(uint8_t *keep, int64_t n_slices, int64_t len_q, int64_t len_k, uint32_t p24, uint64_t seed) {
    for (int64_t r = 0; r < n_slices * len_q; r++) {
        const uint64_t key = row_key(seed, (uint64_t)r);
        for (int64_t c = 0; c < len_k; c += W) {
            vi flags = keep_lanes(c, key, p24);
            for (int64_t l = 0; l < W && c + l < len_k; l++) keep[r * len_k + c + l] = flags[l] != 0;
        }
    }
    return 0;
}

API int dmd_openmp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 0;
#endif
}
