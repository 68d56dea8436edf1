/* Fused softmax attention for many small heads (DecAlign's heads are 4 wide), forward and backward.
 *
 * Shapes as in attention.py: queries (N, hd, Tq), keys and values (N, hd, Tk), output (N, hd, Tq), float32,
 * with the N heads indexed as (N0, N1, N2) and every tensor read or written through its own strides
 * (`Strides`), so the model hands over its projections and takes the output in the layouts its matrix
 * products use, with no copy in between; keys, values and their gradients need step stride 1 (they are
 * read a vector of steps at a time). One head's scores, weights and gradients (Tq x Tk) never leave the cache: each
 * query row is scored and its exponentials applied to the values in two passes over its keys, where
 * torch's path writes and reads every (N, Tq, Tk) intermediate once per operator. Each head is computed
 * by one thread, so the result does not depend on the thread count. Built (with -mavx2 -mfma -fopenmp)
 * and loaded by native.py, which uses it only where it applies. The per-head work
 * (small_head_attention_body.h) is compiled twice: for AVX2, 8 lanes, and for AVX-512, 16 lanes, which
 * native.py asks for where the CPU has it (the same steps in half the instructions: an eval layer at MOSI
 * shapes took a fifth less time on an AMD EPYC with AVX-512). The forward without dropout and without weights
 * (`sha_forward_eval`) vectorises over queries instead of keys (`queries_in_lanes` in the body).
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
#define MAX_LANES 16

/* Query row i of head n as torch's softmax leaves a row it cannot normalise: output and weights NaN. */
static void nan_row(const Work *w, int64_t n, int64_t i, float *out, int64_t hd) {
    for (int64_t c = 0; c < hd; c++) out[c * w->at[OUT].channel + i * w->at[OUT].step] = NAN;
    if (w->weights) for (int64_t j = 0; j < w->tk; j++) w->weights[(n * w->tq + i) * w->tk + j] = NAN;
}

/* The backward accumulates each head's key and value gradients over its query rows. */
static void zero_key_gradients(const Work *w, int64_t n) {
    float *dk = w->d_kt + head_at(w, D_K, n), *dv = w->d_vt + head_at(w, D_V, n);
    for (int64_t c = 0; c < w->hd; c++) {
        memset(dk + c * w->at[D_K].channel, 0, sizeof(float) * w->tk);
        memset(dv + c * w->at[D_V].channel, 0, sizeof(float) * w->tk);
    }
}

/* exp_nonpositive's polynomial (Cephes' expf, on [-ln2/2, ln2/2], then times r^2 plus r + 1) and exp2_nonpositive's
 * (2^r on [-1/2, 1/2], degree 5, the constant 1 exactly; fitted for relative error, then its float coefficients
 * nudged by ulps to the smallest error evaluated in float), highest degree first. */
static const float EXP_CEPHES[] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                                   1.6666665459e-1f, 5.0000001201e-1f};
static const float EXP2_FIT[] = {1.3272633078e-3f, 9.6715101972e-3f, 5.5507075042e-2f, 2.4022243917e-1f,
                                 6.9314700365e-1f, 1.0f};

#define LANES 8
#define VARIANT avx2
#define TARGET
#include "small_head_attention_body.h"
#undef LANES
#undef VARIANT
#undef TARGET

#define LANES 16
#define VARIANT avx512
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#include "small_head_attention_body.h"
#undef LANES
#undef VARIANT
#undef TARGET

typedef void (*HeadWork)(const Work *, int64_t, float *);

/* The key-lane paths' scratch: one row of scores, in whole vectors. */
#define KEY_ROW_FLOATS(tk) (((tk) + MAX_LANES - 1) / MAX_LANES * MAX_LANES)

/* The per-head work at `lanes` lanes (8: AVX2, 16: AVX-512); NULL where this CPU cannot run it. */
static HeadWork at_width(int lanes, HeadWork avx2, HeadWork avx512) {
    __builtin_cpu_init();
    if (lanes == 8) return avx2;
    if (lanes == 16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return avx512;
    return NULL;
}

/* Splits the heads among `threads` OpenMP threads in contiguous ranges. Loaded after torch, this library
 * shares torch's OpenMP runtime (the same libgomp.so.1), so it runs on torch's worker threads, which are
 * still spinning from the operator before, instead of competing with them for the cores. Returns 0, 1
 * when a scratch row could not be allocated, 2 for a head width the kernel does not take, 3 for a vector width
 * this CPU does not have. */
static int run_heads(const Work *w, int threads, HeadWork head, int64_t scratch_floats) {
    if (w->hd < 1 || w->hd > MAX_HD) return 2;
    int failed = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(| : failed)
    {
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
        float *row = malloc(sizeof(float) * scratch_floats);
        if (!row) {
            failed |= 1;
        } else {
            for (int64_t n = w->heads * part / parts; n < w->heads * (part + 1) / parts; n++) head(w, n, row);
            free(row);
        }
    }
    return failed;
}

/* The widest vectors this CPU runs the kernel at: 16 lanes with AVX-512 (F, BW, VL, DQ, their registers saved by
 * the operating system), else 8. */
int sha_widest_lanes(void) {
    return at_width(16, forward_head_avx2, forward_head_avx512) ? 16 : 8;
}

/* shape: N0, N1, N2, hd, Tq, Tk; strides: 5 per tensor (head[0..2], channel, step), for q, k, v and out
 * (forward), then d_out, d_q, d_k and d_v (backward). The entry points take the vector width last. */
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
                float *out, float *weights, int threads, int lanes) {
    const HeadWork head = at_width(lanes, forward_head_avx2, forward_head_avx512);
    if (!head) return 3;
    Work w = layout(shape, strides, OUT + 1);
    w.heads_per_mask = heads_per_mask;
    w.qt = qt, w.kt = kt, w.vt = vt, w.mask = mask, w.keep = keep, w.head_scale = head_scale;
    w.out = out, w.weights = weights;
    return run_heads(&w, threads, head, KEY_ROW_FLOATS(w.tk));
}

int sha_backward(const int64_t *shape, const int64_t *strides, const float *qt, const float *kt, const float *vt,
                 const float *weights, const uint8_t *keep, const float *head_scale, const float *d_out,
                 float *d_qt, float *d_kt, float *d_vt, int threads, int lanes) {
    const HeadWork head = at_width(lanes, backward_head_avx2, backward_head_avx512);
    if (!head) return 3;
    Work w = layout(shape, strides, TENSORS);
    w.qt = qt, w.kt = kt, w.vt = vt, w.keep = keep, w.head_scale = head_scale, w.weights = (float *)weights;
    w.d_out = d_out, w.d_qt = d_qt, w.d_kt = d_kt, w.d_vt = d_vt;
    return run_heads(&w, threads, head, KEY_ROW_FLOATS(w.tk));
}

/* The forward without dropout and without the weights (eval and inference), queries in lanes (`queries_in_lanes`
 * in the body): an eval layer at MOSI shapes in two thirds of the key-lane path's time. Queries need step
 * stride 1; the mask, if any, is transposed: (S, Tk, Tq). */
int sha_forward_eval(const int64_t *shape, const int64_t *strides, const float *qt, const float *kt, const float *vt,
                     const uint8_t *mask_by_key, int64_t heads_per_mask, float *out, int threads, int lanes) {
    const HeadWork head = at_width(lanes, eval_head_avx2, eval_head_avx512);
    if (!head) return 3;
    Work w = layout(shape, strides, OUT + 1);
    if (w.at[Q].step != 1) return 4;
    w.heads_per_mask = heads_per_mask;
    w.qt = qt, w.kt = kt, w.vt = vt, w.mask = mask_by_key, w.out = out;
    return run_heads(&w, threads, head, 2 * MAX_LANES * w.tk);
}
