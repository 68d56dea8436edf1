/* Fused softmax attention for many small heads (DecAlign's heads are 4 wide), forward and backward.
 *
 * Shapes as in attention.py: queries (N, hd, Tq), keys and values (N, hd, Tk), output (N, hd, Tq), float32,
 * with the N heads indexed as (N0, N1, N2) and every tensor read or written through its own strides
 * (`Strides`), so the model hands over its projections and takes the output in the layouts its matrix
 * products use, with no copy in between; keys, values and their gradients need step stride 1 (they are
 * read 8 steps at a time). One head's scores, weights and gradients (Tq x Tk) never leave the cache: each
 * query row is scored and its exponentials applied to the values in two passes over its keys, where
 * torch's path writes and reads every (N, Tq, Tk) intermediate once per operator. Each head is computed
 * by one thread, so the result does not depend on the thread count. Built (with -mavx2 -mfma -fopenmp)
 * and loaded by native.py, which uses it only where it applies.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Where head n = (n0 * N1 + n1) * N2 + n2, channel c and step t of a tensor lie: n0 * head[0] + n1 * head[1]
 * + n2 * head[2] + c * channel + t * step floats from its start. */
typedef struct {
    int64_t head[3], channel, step;
} Strides;

enum { Q, K, V, OUT, D_OUT, D_Q, D_K, D_V, TENSORS };

typedef struct {
    int64_t heads, n1, n2, hd, tq, tk;  /* N = N0 * N1 * N2 heads */
    int64_t heads_per_mask;        /* heads sharing one (Tq, Tk) mask; 0: no mask */
    Strides at[TENSORS];           /* the layout of each tensor below */
    const float *qt, *kt, *vt;
    const uint8_t *mask;           /* (S, Tq, Tk) contiguous, nonzero where a query may attend */
    const uint8_t *keep;           /* (N, Tq, Tk) contiguous dropout keep flags, read where head_scale[n] != 0 */
    const float *head_scale;       /* (N,) 1 / (1 - p) per head, 0 for heads without dropout; or NULL */
    float *out, *weights;          /* (N, hd, Tq); (N, Tq, Tk) contiguous or NULL (forward) */
    const float *d_out;            /* backward: (N, hd, Tq) */
    float *d_qt, *d_kt, *d_vt;     /* backward outputs */
} Work;

static inline int64_t head_at(const Work *w, int tensor, int64_t n) {
    const int64_t *s = w->at[tensor].head;
    return (n / (w->n1 * w->n2)) * s[0] + (n / w->n2 % w->n1) * s[1] + (n % w->n2) * s[2];
}

#if !defined(__AVX2__) || !defined(__FMA__)
#error "built with -mavx2 -mfma only (native.py checks the CPU)"
#endif
#include <immintrin.h>
#define MAX_HD 16  /* widest head kept in registers; native.py sends wider ones to torch */

/* exp(x) for x <= 0 or NaN on 8 lanes (a softmax's shifted scores): Cephes' single-precision polynomial (about
 * 1 ulp) on [-ln2/2, ln2/2] times 2^n. No upper clamp is needed; the lower one at -88 makes n = -127 at
 * most, whose 2^n has exponent bits 0: exp(-inf) is exactly 0, so masked scores need no select. `max`
 * takes its second operand when one is NaN, so NaN passes through. n is rounded by adding 1.5 * 2^23
 * (its bits then hold n + 127 in the low mantissa) and ln 2 is subtracted in one FMA: for |n| <= 127 the
 * error of ln 2 in float moves r by at most 2.4e-7, at exponentials under 1e-38. */
static inline __m256 exp8_nonpositive(__m256 x) {
    const __m256 round_bias = _mm256_set1_ps(12583039.0f);  /* 1.5 * 2^23 + 127 */
    x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x);
    const __m256 biased = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), round_bias);
    const __m256 n = _mm256_sub_ps(biased, round_bias);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147180559945f), x);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(biased), 23)));
}

static inline float hsum8(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax8(__m256 x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

/* The first `count` (<= 8) lanes set. */
static inline __m256i lanes8(int64_t count) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Lanes whose byte is nonzero, of the first `count` bytes (the rest clear; nothing read past them). */
static inline __m256 flags8(const uint8_t *bytes, int64_t count) {
    __m256i wide;
    if (count == 8) {
        wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)bytes));
    } else {
        int32_t t[8] = {0};
        for (int64_t l = 0; l < count; l++) t[l] = bytes[l];
        wide = _mm256_loadu_si256((const __m256i *)t);
    }
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(wide, _mm256_setzero_si256()));
}

static inline __m256 load8(const float *x, int64_t count, __m256i lanes) {
    return count == 8 ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, lanes);
}

static inline void store8(float *x, __m256 value, int64_t count, __m256i lanes) {
    if (count == 8) _mm256_storeu_ps(x, value);
    else _mm256_maskstore_ps(x, lanes, value);
}

/* Query row i of head n as torch's softmax leaves a row it cannot normalise: output and weights NaN. */
static void nan_row(const Work *w, int64_t n, int64_t i, float *out, int64_t hd) {
    for (int64_t c = 0; c < hd; c++) out[c * w->at[OUT].channel + i * w->at[OUT].step] = NAN;
    if (w->weights) for (int64_t j = 0; j < w->tk; j++) w->weights[(n * w->tq + i) * w->tk + j] = NAN;
}

/* One head, one pass of scores (kept in `row`, -inf where not allowed) and one of exponentials applied to
 * the values; the weights are normalised only where they are kept. A NaN score, or an infinite one, makes
 * the row's sum NaN, and the row is NaN then, as torch's softmax makes it. */
static inline __attribute__((always_inline)) void forward_wide(const Work *w, int64_t n, float *row,
                                                                const int64_t hd) {
    const int64_t tq = w->tq, tk = w->tk;
    const float *q = w->qt + head_at(w, Q, n), *k = w->kt + head_at(w, K, n), *v = w->vt + head_at(w, V, n);
    float *out = w->out + head_at(w, OUT, n);
    const int64_t qc_stride = w->at[Q].channel, qt_stride = w->at[Q].step, kc = w->at[K].channel,
                  vc = w->at[V].channel, oc = w->at[OUT].channel, ot = w->at[OUT].step;
    const float scale = w->head_scale ? w->head_scale[n] : 0.0f;
    const __m256 minus_inf = _mm256_set1_ps(-INFINITY);
    __m256 qc[MAX_HD], acc[MAX_HD];
    for (int64_t i = 0; i < tq; i++) {
        const uint8_t *allowed = w->heads_per_mask ? w->mask + ((n / w->heads_per_mask) * tq + i) * tk : NULL;
        const uint8_t *keep = scale != 0.0f ? w->keep + (n * tq + i) * tk : NULL;
        for (int64_t c = 0; c < hd; c++) qc[c] = _mm256_set1_ps(q[c * qc_stride + i * qt_stride]);
        __m256 top8 = minus_inf;
        for (int64_t j = 0; j < tk; j += 8) {
            const int64_t count = tk - j < 8 ? tk - j : 8;
            const __m256i lanes = lanes8(count);
            __m256 s = _mm256_mul_ps(qc[0], load8(k + j, count, lanes));
            for (int64_t c = 1; c < hd; c++) s = _mm256_fmadd_ps(qc[c], load8(k + c * kc + j, count, lanes), s);
            if (allowed || count < 8) {
                __m256 valid = _mm256_castsi256_ps(lanes);
                if (allowed) valid = _mm256_and_ps(valid, flags8(allowed + j, count));
                s = _mm256_blendv_ps(minus_inf, s, valid);
            }
            _mm256_storeu_ps(row + j, s);
            top8 = _mm256_max_ps(top8, s);
        }
        const float top = hmax8(top8);
        if (top == -INFINITY) {  /* nowhere to attend: NaN, as torch's softmax gives */
            nan_row(w, n, i, out, hd);
            continue;
        }
        const __m256 shift = _mm256_set1_ps(top);
        __m256 sum8 = _mm256_setzero_ps();
        for (int64_t c = 0; c < hd; c++) acc[c] = _mm256_setzero_ps();
        for (int64_t j = 0; j < tk; j += 8) {
            const int64_t count = tk - j < 8 ? tk - j : 8;
            const __m256i lanes = lanes8(count);
            __m256 e = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + j), shift));
            sum8 = _mm256_add_ps(sum8, e);
            if (w->weights) _mm256_storeu_ps(row + j, e);
            if (keep) e = _mm256_and_ps(e, flags8(keep + j, count));
            for (int64_t c = 0; c < hd; c++) acc[c] = _mm256_fmadd_ps(load8(v + c * vc + j, count, lanes), e, acc[c]);
        }
        const float sum = hsum8(sum8);
        if (isnan(sum)) {
            nan_row(w, n, i, out, hd);
            continue;
        }
        const float inverse = 1.0f / sum, factor = keep ? inverse * scale : inverse;
        for (int64_t c = 0; c < hd; c++) out[c * oc + i * ot] = hsum8(acc[c]) * factor;
        if (w->weights) {
            float *out_row = w->weights + (n * tq + i) * tk;
            for (int64_t j = 0; j < tk; j++) out_row[j] = row[j] * inverse;
        }
    }
}

static inline __attribute__((always_inline)) void backward_wide(const Work *w, int64_t n, float *d_row,
                                                                 const int64_t hd) {
    const int64_t tq = w->tq, tk = w->tk;
    const float *q = w->qt + head_at(w, Q, n), *k = w->kt + head_at(w, K, n), *v = w->vt + head_at(w, V, n);
    const float *d_out = w->d_out + head_at(w, D_OUT, n);
    float *dq = w->d_qt + head_at(w, D_Q, n), *dk = w->d_kt + head_at(w, D_K, n), *dv = w->d_vt + head_at(w, D_V, n);
    const int64_t qc_stride = w->at[Q].channel, qt_stride = w->at[Q].step, kc = w->at[K].channel,
                  vc = w->at[V].channel, gc = w->at[D_OUT].channel, gt = w->at[D_OUT].step,
                  dqc = w->at[D_Q].channel, dqt = w->at[D_Q].step, dkc_stride = w->at[D_K].channel,
                  dvc_stride = w->at[D_V].channel;
    const float scale = w->head_scale ? w->head_scale[n] : 0.0f;
    __m256 g[MAX_HD], qc[MAX_HD], acc[MAX_HD];
    for (int64_t i = 0; i < tq; i++) {
        const float *p = w->weights + (n * tq + i) * tk;
        const uint8_t *keep = scale != 0.0f ? w->keep + (n * tq + i) * tk : NULL;
        for (int64_t c = 0; c < hd; c++) {
            g[c] = _mm256_set1_ps(d_out[c * gc + i * gt] * (keep ? scale : 1.0f));
            qc[c] = _mm256_set1_ps(q[c * qc_stride + i * qt_stride]);
            acc[c] = _mm256_setzero_ps();
        }
        __m256 dot8 = _mm256_setzero_ps();
        for (int64_t j = 0; j < tk; j += 8) {
            const int64_t count = tk - j < 8 ? tk - j : 8;
            const __m256i lanes = lanes8(count);
            const __m256 pv = load8(p + j, count, lanes);
            __m256 dw = _mm256_setzero_ps();
            for (int64_t c = 0; c < hd; c++) dw = _mm256_fmadd_ps(g[c], load8(v + c * vc + j, count, lanes), dw);
            __m256 applied = pv;
            if (keep) {
                const __m256 kept = flags8(keep + j, count);
                dw = _mm256_and_ps(dw, kept);
                applied = _mm256_and_ps(pv, kept);
            }
            dot8 = _mm256_fmadd_ps(dw, pv, dot8);
            _mm256_storeu_ps(d_row + j, dw);
            for (int64_t c = 0; c < hd; c++) {
                float *dvc = dv + c * dvc_stride + j;
                store8(dvc, _mm256_fmadd_ps(g[c], applied, load8(dvc, count, lanes)), count, lanes);
            }
        }
        const __m256 dot = _mm256_set1_ps(hsum8(dot8));
        for (int64_t j = 0; j < tk; j += 8) {
            const int64_t count = tk - j < 8 ? tk - j : 8;
            const __m256i lanes = lanes8(count);
            const __m256 ds = _mm256_mul_ps(load8(p + j, count, lanes), _mm256_sub_ps(_mm256_loadu_ps(d_row + j), dot));
            for (int64_t c = 0; c < hd; c++) {
                acc[c] = _mm256_fmadd_ps(load8(k + c * kc + j, count, lanes), ds, acc[c]);
                float *dkc = dk + c * dkc_stride + j;
                store8(dkc, _mm256_fmadd_ps(qc[c], ds, load8(dkc, count, lanes)), count, lanes);
            }
        }
        for (int64_t c = 0; c < hd; c++) dq[c * dqc + i * dqt] = hsum8(acc[c]);
    }
}
/* One head on the path unrolled for DecAlign's width 4, or on the general one up to MAX_HD. */
static void forward_head(const Work *w, int64_t n, float *row) {
    if (w->hd == 4) forward_wide(w, n, row, 4);
    else forward_wide(w, n, row, w->hd);
}

static void backward_head(const Work *w, int64_t n, float *row) {
    float *dk = w->d_kt + head_at(w, D_K, n), *dv = w->d_vt + head_at(w, D_V, n);
    for (int64_t c = 0; c < w->hd; c++) {
        memset(dk + c * w->at[D_K].channel, 0, sizeof(float) * w->tk);
        memset(dv + c * w->at[D_V].channel, 0, sizeof(float) * w->tk);
    }
    if (w->hd == 4) backward_wide(w, n, row, 4);
    else backward_wide(w, n, row, w->hd);
}

/* Splits the heads among `threads` OpenMP threads in contiguous ranges. Loaded after torch, this library
 * shares torch's OpenMP runtime (the same libgomp.so.1), so it runs on torch's worker threads, which are
 * still spinning from the operator before, instead of competing with them for the cores. Returns 0, 1
 * when a scratch row could not be allocated, 2 for a head width the kernel does not take. */
static int run_heads(const Work *w, int threads, void (*head)(const Work *, int64_t, float *)) {
    if (w->hd < 1 || w->hd > MAX_HD) return 2;
    int failed = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(| : failed)
    {
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
        float *row = malloc(sizeof(float) * ((w->tk + 7) / 8 * 8));  /* whole 8-lane vectors */
        if (!row) {
            failed |= 1;
        } else {
            for (int64_t n = w->heads * part / parts; n < w->heads * (part + 1) / parts; n++) head(w, n, row);
            free(row);
        }
    }
    return failed;
}

/* shape: N0, N1, N2, hd, Tq, Tk; strides: 5 per tensor (head[0..2], channel, step), for q, k, v and out
 * (forward), then d_out, d_q, d_k and d_v (backward). */
static Work layout(const int64_t *shape, const int64_t *strides, int tensors) {
    Work w = {0};
    w.heads = shape[0] * shape[1] * shape[2];
    w.n1 = shape[1], w.n2 = shape[2], w.hd = shape[3], w.tq = shape[4], w.tk = shape[5];
    for (int t = 0; t < tensors; t++) {
        const int64_t *s = strides + 5 * t;
        w.at[t] = (Strides){{s[0], s[1], s[2]}, s[3], s[4]};
    }
    return w;
}

int sha_forward(const int64_t *shape, const int64_t *strides, const float *qt, const float *kt, const float *vt,
                const uint8_t *mask, int64_t heads_per_mask, const uint8_t *keep, const float *head_scale,
                float *out, float *weights, int threads) {
    Work w = layout(shape, strides, OUT + 1);
    w.heads_per_mask = heads_per_mask;
    w.qt = qt, w.kt = kt, w.vt = vt, w.mask = mask, w.keep = keep, w.head_scale = head_scale;
    w.out = out, w.weights = weights;
    return run_heads(&w, threads, forward_head);
}

int sha_backward(const int64_t *shape, const int64_t *strides, const float *qt, const float *kt, const float *vt,
                 const float *weights, const uint8_t *keep, const float *head_scale, const float *d_out,
                 float *d_qt, float *d_kt, float *d_vt, int threads) {
    Work w = layout(shape, strides, TENSORS);
    w.qt = qt, w.kt = kt, w.vt = vt, w.keep = keep, w.head_scale = head_scale, w.weights = (float *)weights;
    w.d_out = d_out, w.d_qt = d_qt, w.d_kt = d_kt, w.d_vt = d_vt;
    return run_heads(&w, threads, backward_head);
}
