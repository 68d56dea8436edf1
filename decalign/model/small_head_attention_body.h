/* The attention kernel's work on one head, at one vector width. small_head_attention.c includes this file twice:
 * with LANES 8 (AVX2) and with LANES 16 (AVX-512, TARGET marking every function for it), VARIANT naming the
 * functions. All vector work goes through the helpers at the top, so both widths take the same steps in the
 * same order (their sums are grouped differently: the results agree to rounding, not to the bit).
 */
#define VARIANT_NAME_(name, variant) name##_##variant
#define VARIANT_NAME(name, variant) VARIANT_NAME_(name, variant)
#define NAME(name) VARIANT_NAME(name, VARIANT)

#if LANES == 16
#define VEC __m512
#define LANEMASK __mmask16
#define VOP(op) _mm512_##op
#define AS_BITS _mm512_castps_si512
#define AS_FLOATS _mm512_castsi512_ps

/* The first `count` (<= 16) lanes. */
static inline TARGET LANEMASK NAME(first)(int64_t count) { return (LANEMASK)((1u << count) - 1u); }

/* Lanes whose byte is nonzero, of the first `count` bytes (nothing read past them). */
static inline TARGET LANEMASK NAME(flags)(const uint8_t *bytes, int64_t count) {
    const __m128i wide = _mm_maskz_loadu_epi8(NAME(first)(count), bytes);
    return _mm_test_epi8_mask(wide, wide);
}

static inline TARGET VEC NAME(load)(const float *x, int64_t count, LANEMASK lanes) {
    return count == LANES ? _mm512_loadu_ps(x) : _mm512_maskz_loadu_ps(lanes, x);
}

static inline TARGET void NAME(store)(float *x, VEC value, int64_t count, LANEMASK lanes) {
    if (count == LANES) _mm512_storeu_ps(x, value);
    else _mm512_mask_storeu_ps(x, lanes, value);
}

/* `where` ? a : b, lane by lane; x where `where`, else 0. */
static inline TARGET VEC NAME(select)(LANEMASK where, VEC a, VEC b) { return _mm512_mask_blend_ps(where, b, a); }
static inline TARGET VEC NAME(only)(VEC x, LANEMASK where) { return _mm512_maskz_mov_ps(where, x); }
static inline TARGET LANEMASK NAME(both)(LANEMASK a, LANEMASK b) { return a & b; }
static inline TARGET float NAME(hsum)(VEC x) { return _mm512_reduce_add_ps(x); }
static inline TARGET float NAME(hmax)(VEC x) { return _mm512_reduce_max_ps(x); }

#else
#define VEC __m256
#define LANEMASK __m256  /* all bits set in a lane that is in */
#define VOP(op) _mm256_##op
#define AS_BITS _mm256_castps_si256
#define AS_FLOATS _mm256_castsi256_ps

static inline TARGET LANEMASK NAME(first)(int64_t count) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

static inline TARGET LANEMASK NAME(flags)(const uint8_t *bytes, int64_t count) {
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

static inline TARGET VEC NAME(load)(const float *x, int64_t count, LANEMASK lanes) {
    return count == LANES ? _mm256_loadu_ps(x) : _mm256_maskload_ps(x, _mm256_castps_si256(lanes));
}

static inline TARGET void NAME(store)(float *x, VEC value, int64_t count, LANEMASK lanes) {
    if (count == LANES) _mm256_storeu_ps(x, value);
    else _mm256_maskstore_ps(x, _mm256_castps_si256(lanes), value);
}

static inline TARGET VEC NAME(select)(LANEMASK where, VEC a, VEC b) { return _mm256_blendv_ps(b, a, where); }
static inline TARGET VEC NAME(only)(VEC x, LANEMASK where) { return _mm256_and_ps(x, where); }
static inline TARGET LANEMASK NAME(both)(LANEMASK a, LANEMASK b) { return _mm256_and_ps(a, b); }

static inline TARGET float NAME(hsum)(VEC x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline TARGET float NAME(hmax)(VEC x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
#endif

/* The polynomial with these coefficients, highest degree first, at r (Horner's rule, one FMA a degree). */
static inline TARGET VEC NAME(horner)(VEC r, const float *highest_first, const int count) {
    VEC p = VOP(set1_ps)(highest_first[0]);
#pragma GCC unroll 8
    for (int i = 1; i < count; i++) p = VOP(fmadd_ps)(p, r, VOP(set1_ps)(highest_first[i]));
    return p;
}

/* p * 2^n, for `biased` = n + 1.5 * 2^23 + 127 (n + 127 in its low mantissa bits, as the exponentials round n). */
static inline TARGET VEC NAME(times_two_to)(VEC p, VEC biased) {
    return VOP(mul_ps)(p, AS_FLOATS(VOP(slli_epi32)(AS_BITS(biased), 23)));
}

/* exp(x) for x <= 0 or NaN (a softmax's shifted scores): Cephes' single-precision polynomial (about 1 ulp) on
 * [-ln2/2, ln2/2] times 2^n. No upper clamp is needed; the lower one at -88 makes n = -127 at most, whose 2^n
 * has exponent bits 0: exp(-inf) is exactly 0, so masked scores need no select. `max` takes its second operand
 * when one is NaN, so NaN passes through. n is rounded by adding 1.5 * 2^23 (its bits then hold n + 127 in the
 * low mantissa) and ln 2 is subtracted in one FMA: for |n| <= 127 the error of ln 2 in float moves r by at
 * most 2.4e-7, at exponentials under 1e-38. */
static inline TARGET VEC NAME(exp_nonpositive)(VEC x) {
    const VEC round_bias = VOP(set1_ps)(12583039.0f);  /* 1.5 * 2^23 + 127 */
    x = VOP(max_ps)(VOP(set1_ps)(-88.0f), x);
    const VEC biased = VOP(fmadd_ps)(x, VOP(set1_ps)(1.44269504088896341f), round_bias);
    const VEC n = VOP(sub_ps)(biased, round_bias);
    const VEC r = VOP(fnmadd_ps)(n, VOP(set1_ps)(0.693147180559945f), x);
    const VEC p = NAME(horner)(r, EXP_CEPHES, sizeof EXP_CEPHES / sizeof *EXP_CEPHES);
    return NAME(times_two_to)(VOP(fmadd_ps)(VOP(mul_ps)(p, r), r, VOP(add_ps)(r, VOP(set1_ps)(1.0f))), biased);
}

/* 2^y for y <= 0 or NaN: a degree-5 polynomial (its fit to 2^r on [-1/2, 1/2] within 1.7e-7 evaluated in float; the
 * degree-6 fit of stop 45, within 7.9e-8, cost 5% more of an eval attention layer, and the eval path's error is the
 * rounding of q log2(e) to float more than either: see the sigmoid test) at r = y - n, times 2^n for n = y rounded;
 * exactly 0 for y at or below -126.5 (so 2^-inf is 0), NaN for NaN. Six multiplies and adds on the FMA units where
 * exp_nonpositive takes ten: the queries-in-lanes path scores in base 2 (its queries scaled by log2(e)).
 * At 16 lanes AVX-512 rounds n in one instruction (ties to even) and scales by 2^n in another, whose mask zeroes the
 * lanes at or below -126.5 (NaN compares unordered and is kept): an eval attention layer at MOSI shapes took 0.20 ms
 * less on one thread, 0.04 ms less on two (40 alternating rounds of two builds in one process, faster in 31 of 40
 * each) than with the rounding by adding 1.5 * 2^23 and the power built by a shift and multiplied, which the 8-lane
 * path keeps (its clamp at -127 makes 2^-127's exponent bits 0). The two round halfway cases apart (to even here, to
 * odd there), and agree elsewhere to the bit. */
static inline TARGET VEC NAME(exp2_nonpositive)(VEC y) {
#if LANES == 16
    const __mmask16 kept = _mm512_cmp_ps_mask(y, _mm512_set1_ps(-126.5f), _CMP_NLE_UQ);
    const VEC n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_maskz_scalef_ps(kept, NAME(horner)(_mm512_sub_ps(y, n), EXP2_FIT, sizeof EXP2_FIT / sizeof *EXP2_FIT),
                                  n);
#else
    const VEC round_bias = VOP(set1_ps)(12583039.0f);  /* 1.5 * 2^23 + 127 */
    y = VOP(max_ps)(VOP(set1_ps)(-127.0f), y);
    const VEC biased = VOP(add_ps)(y, round_bias);
    const VEC r = VOP(sub_ps)(y, VOP(sub_ps)(biased, round_bias));
    return NAME(times_two_to)(NAME(horner)(r, EXP2_FIT, sizeof EXP2_FIT / sizeof *EXP2_FIT), biased);
#endif
}

/* One head, one pass of scores (kept in `row`, -inf where not allowed) and one of exponentials applied to the
 * values; the weights are normalised only where they are kept. A NaN score, or an infinite one, makes the row's
 * sum NaN, and the row is NaN then, as torch's softmax makes it. */
static inline __attribute__((always_inline)) TARGET void NAME(forward_wide)(const Work *w, int64_t n, float *row,
                                                                            const int64_t hd) {
    const int64_t tq = w->tq, tk = w->tk;
    const float *q = w->qt + head_at(w, Q, n), *k = w->kt + head_at(w, K, n), *v = w->vt + head_at(w, V, n);
    float *out = w->out + head_at(w, OUT, n);
    const int64_t qc_stride = w->at[Q].channel, qt_stride = w->at[Q].step, kc = w->at[K].channel,
                  vc = w->at[V].channel, oc = w->at[OUT].channel, ot = w->at[OUT].step;
    const float scale = w->head_scale ? w->head_scale[n] : 0.0f;
    const VEC minus_inf = VOP(set1_ps)(-INFINITY);
    VEC qc[MAX_HD], acc[MAX_HD];
    for (int64_t i = 0; i < tq; i++) {
        const uint8_t *allowed = w->heads_per_mask ? w->mask + ((n / w->heads_per_mask) * tq + i) * tk : NULL;
        const uint8_t *keep = scale != 0.0f ? w->keep + (n * tq + i) * tk : NULL;
        for (int64_t c = 0; c < hd; c++) qc[c] = VOP(set1_ps)(q[c * qc_stride + i * qt_stride]);
        VEC top = minus_inf;
        for (int64_t j = 0; j < tk; j += LANES) {
            const int64_t count = tk - j < LANES ? tk - j : LANES;
            const LANEMASK lanes = NAME(first)(count);
            VEC s = VOP(mul_ps)(qc[0], NAME(load)(k + j, count, lanes));
            for (int64_t c = 1; c < hd; c++) s = VOP(fmadd_ps)(qc[c], NAME(load)(k + c * kc + j, count, lanes), s);
            if (allowed || count < LANES) {
                LANEMASK valid = lanes;
                if (allowed) valid = NAME(both)(valid, NAME(flags)(allowed + j, count));
                s = NAME(select)(valid, s, minus_inf);
            }
            VOP(storeu_ps)(row + j, s);
            top = VOP(max_ps)(top, s);
        }
        const float top_score = NAME(hmax)(top);
        if (top_score == -INFINITY) {  /* nowhere to attend: NaN, as torch's softmax gives */
            nan_row(w, n, i, out, hd);
            continue;
        }
        const VEC shift = VOP(set1_ps)(top_score);
        VEC sum = VOP(setzero_ps)();
        for (int64_t c = 0; c < hd; c++) acc[c] = VOP(setzero_ps)();
        for (int64_t j = 0; j < tk; j += LANES) {
            const int64_t count = tk - j < LANES ? tk - j : LANES;
            const LANEMASK lanes = NAME(first)(count);
            VEC e = NAME(exp_nonpositive)(VOP(sub_ps)(VOP(loadu_ps)(row + j), shift));
            sum = VOP(add_ps)(sum, e);
            if (w->weights) VOP(storeu_ps)(row + j, e);
            if (keep) e = NAME(only)(e, NAME(flags)(keep + j, count));
            for (int64_t c = 0; c < hd; c++) acc[c] = VOP(fmadd_ps)(NAME(load)(v + c * vc + j, count, lanes), e, acc[c]);
        }
        const float total = NAME(hsum)(sum);
        if (isnan(total)) {
            nan_row(w, n, i, out, hd);
            continue;
        }
        const float inverse = 1.0f / total, factor = keep ? inverse * scale : inverse;
        for (int64_t c = 0; c < hd; c++) out[c * oc + i * ot] = NAME(hsum)(acc[c]) * factor;
        if (w->weights) {
            float *out_row = w->weights + (n * tq + i) * tk;
            for (int64_t j = 0; j < tk; j++) out_row[j] = row[j] * inverse;
        }
    }
}

static inline __attribute__((always_inline)) TARGET void NAME(backward_wide)(const Work *w, int64_t n, float *d_row,
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
    VEC g[MAX_HD], qc[MAX_HD], acc[MAX_HD];
    for (int64_t i = 0; i < tq; i++) {
        const float *p = w->weights + (n * tq + i) * tk;
        const uint8_t *keep = scale != 0.0f ? w->keep + (n * tq + i) * tk : NULL;
        for (int64_t c = 0; c < hd; c++) {
            g[c] = VOP(set1_ps)(d_out[c * gc + i * gt] * (keep ? scale : 1.0f));
            qc[c] = VOP(set1_ps)(q[c * qc_stride + i * qt_stride]);
            acc[c] = VOP(setzero_ps)();
        }
        VEC dot = VOP(setzero_ps)();
        for (int64_t j = 0; j < tk; j += LANES) {
            const int64_t count = tk - j < LANES ? tk - j : LANES;
            const LANEMASK lanes = NAME(first)(count);
            const VEC pv = NAME(load)(p + j, count, lanes);
            VEC dw = VOP(setzero_ps)();
            for (int64_t c = 0; c < hd; c++) dw = VOP(fmadd_ps)(g[c], NAME(load)(v + c * vc + j, count, lanes), dw);
            VEC applied = pv;
            if (keep) {
                const LANEMASK kept = NAME(flags)(keep + j, count);
                dw = NAME(only)(dw, kept);
                applied = NAME(only)(pv, kept);
            }
            dot = VOP(fmadd_ps)(dw, pv, dot);
            VOP(storeu_ps)(d_row + j, dw);
            for (int64_t c = 0; c < hd; c++) {
                float *dvc = dv + c * dvc_stride + j;
                NAME(store)(dvc, VOP(fmadd_ps)(g[c], applied, NAME(load)(dvc, count, lanes)), count, lanes);
            }
        }
        const VEC dot_all = VOP(set1_ps)(NAME(hsum)(dot));
        for (int64_t j = 0; j < tk; j += LANES) {
            const int64_t count = tk - j < LANES ? tk - j : LANES;
            const LANEMASK lanes = NAME(first)(count);
            const VEC ds = VOP(mul_ps)(NAME(load)(p + j, count, lanes), VOP(sub_ps)(VOP(loadu_ps)(d_row + j), dot_all));
            for (int64_t c = 0; c < hd; c++) {
                acc[c] = VOP(fmadd_ps)(NAME(load)(k + c * kc + j, count, lanes), ds, acc[c]);
                float *dkc = dk + c * dkc_stride + j;
                NAME(store)(dkc, VOP(fmadd_ps)(qc[c], ds, NAME(load)(dkc, count, lanes)), count, lanes);
            }
        }
        for (int64_t c = 0; c < hd; c++) dq[c * dqc + i * dqt] = NAME(hsum)(acc[c]);
    }
}

/* Queries `first` .. `first` + `count` - 1 of head n, `vectors` (1 or 2, a constant where inlined) vectors of them,
 * with the queries in the lanes, against one key at a time, the key's channels broadcast. A softmax over the keys is
 * then a max, a sum and a weighted sum per lane, with no horizontal reduction per query row, which the key-lane path
 * pays six times a row (the reductions were most of its time at 4-wide heads and 50 queries). Two vectors share each
 * broadcast. The scores wait in `scores` (Tk x 2 vectors) between the pass that finds each query's largest score and
 * the pass that applies the exponentials, in base 2 (the queries scaled by log2(e)). Eval only: no dropout, no weights
 * kept. The mask, when there is one, is transposed, (S, Tk, Tq), so that a key's flags for consecutive queries are
 * adjacent. NaN as torch's softmax: a lane whose scores hold a NaN or +inf, or whose keys are all masked, sums to NaN
 * (2^NaN is NaN, as is -inf minus -inf). */
static inline __attribute__((always_inline)) TARGET void NAME(queries_in_lanes)(const Work *w, int64_t n, float *scores,
                                                                                 const int64_t hd, const int vectors,
                                                                                 int64_t first, int64_t count) {
    const int64_t tq = w->tq, tk = w->tk;
    const float *q = w->qt + head_at(w, Q, n) + first, *k = w->kt + head_at(w, K, n), *v = w->vt + head_at(w, V, n);
    const int64_t qc_stride = w->at[Q].channel, kc = w->at[K].channel, vc = w->at[V].channel;
    const int64_t count_a = count < LANES ? count : LANES, count_b = count - count_a;
    const LANEMASK lanes_a = NAME(first)(count_a), lanes_b = NAME(first)(count_b);
    const uint8_t *allowed = w->heads_per_mask ? w->mask + (n / w->heads_per_mask) * tk * tq + first : NULL;
    const VEC minus_inf = VOP(set1_ps)(-INFINITY), log2e = VOP(set1_ps)(1.44269504088896341f);
    VEC qa[MAX_HD], qb[MAX_HD], acc_a[MAX_HD], acc_b[MAX_HD];
    for (int64_t c = 0; c < hd; c++) {
        qa[c] = VOP(mul_ps)(log2e, NAME(load)(q + c * qc_stride, count_a, lanes_a));
        if (vectors == 2) qb[c] = VOP(mul_ps)(log2e, NAME(load)(q + c * qc_stride + LANES, count_b, lanes_b));
    }
    VEC top_a = minus_inf, top_b = minus_inf;
    for (int64_t j = 0; j < tk; j++) {
        VEC key = VOP(set1_ps)(k[j]);
        VEC sa = VOP(mul_ps)(qa[0], key), sb = vectors == 2 ? VOP(mul_ps)(qb[0], key) : minus_inf;
        for (int64_t c = 1; c < hd; c++) {
            key = VOP(set1_ps)(k[c * kc + j]);
            sa = VOP(fmadd_ps)(qa[c], key, sa);
            if (vectors == 2) sb = VOP(fmadd_ps)(qb[c], key, sb);
        }
        if (allowed) {
            sa = NAME(select)(NAME(flags)(allowed + j * tq, count_a), sa, minus_inf);
            if (vectors == 2) sb = NAME(select)(NAME(flags)(allowed + j * tq + LANES, count_b), sb, minus_inf);
        }
        VOP(storeu_ps)(scores + vectors * LANES * j, sa);
        top_a = VOP(max_ps)(top_a, sa);
        if (vectors == 2) {
            VOP(storeu_ps)(scores + vectors * LANES * j + LANES, sb);
            top_b = VOP(max_ps)(top_b, sb);
        }
    }
    VEC sum_a = VOP(setzero_ps)(), sum_b = VOP(setzero_ps)();
    for (int64_t c = 0; c < hd; c++) acc_a[c] = acc_b[c] = VOP(setzero_ps)();
    for (int64_t j = 0; j < tk; j++) {
        const VEC ea = NAME(exp2_nonpositive)(VOP(sub_ps)(VOP(loadu_ps)(scores + vectors * LANES * j), top_a));
        const VEC eb = vectors == 2 ? NAME(exp2_nonpositive)(VOP(sub_ps)(VOP(loadu_ps)(scores + 2 * LANES * j + LANES),
                                                                        top_b)) : sum_b;
        sum_a = VOP(add_ps)(sum_a, ea);
        if (vectors == 2) sum_b = VOP(add_ps)(sum_b, eb);
        for (int64_t c = 0; c < hd; c++) {
            const VEC value = VOP(set1_ps)(v[c * vc + j]);
            acc_a[c] = VOP(fmadd_ps)(ea, value, acc_a[c]);
            if (vectors == 2) acc_b[c] = VOP(fmadd_ps)(eb, value, acc_b[c]);
        }
    }
    /* The output is token-major underneath (a query's channels adjacent): out via a small buffer, a query at a time. */
    float attended[MAX_HD][2 * LANES];
    const VEC inverse_a = VOP(div_ps)(VOP(set1_ps)(1.0f), sum_a), inverse_b = VOP(div_ps)(VOP(set1_ps)(1.0f), sum_b);
    for (int64_t c = 0; c < hd; c++) {
        VOP(storeu_ps)(attended[c], VOP(mul_ps)(acc_a[c], inverse_a));
        if (vectors == 2) VOP(storeu_ps)(attended[c] + LANES, VOP(mul_ps)(acc_b[c], inverse_b));
    }
    float *out = w->out + head_at(w, OUT, n);
    const int64_t oc = w->at[OUT].channel, ot = w->at[OUT].step;
    for (int64_t i = 0; i < count; i++)
        for (int64_t c = 0; c < hd; c++) out[c * oc + (first + i) * ot] = attended[c][i];
}

/* `count` queries from `first` on, in `vectors` vectors, at 4-wide heads unrolled. */
static inline __attribute__((always_inline)) TARGET void NAME(query_block)(const Work *w, int64_t n, float *scores,
                                                                            int vectors, int64_t first, int64_t count) {
    if (w->hd == 4) {
        if (vectors == 2) NAME(queries_in_lanes)(w, n, scores, 4, 2, first, count);
        else NAME(queries_in_lanes)(w, n, scores, 4, 1, first, count);
    } else {
        if (vectors == 2) NAME(queries_in_lanes)(w, n, scores, w->hd, 2, first, count);
        else NAME(queries_in_lanes)(w, n, scores, w->hd, 1, first, count);
    }
}

/* A head's queries in blocks of two vectors, then what is left in one or two. At 16 lanes a last part of at most
 * 8 queries runs at AVX2's 8 (on a CPU that splits 512-bit operations in two, half the work of a 16-lane vector
 * mostly empty): 50 queries cost 3.5 vectors instead of 4. */
static TARGET void NAME(eval_head)(const Work *w, int64_t n, float *scores) {
    int64_t first = 0;
    for (; w->tq - first > 3 * LANES; first += 2 * LANES) NAME(query_block)(w, n, scores, 2, first, 2 * LANES);
    while (first < w->tq) {
        const int64_t left = w->tq - first;
#if LANES == 16
        if (left <= 8) {
            query_block_avx2(w, n, scores, 1, first, left);
            return;
        }
#endif
        const int vectors = left > LANES + LANES / 2 ? 2 : 1;
        const int64_t count = left < vectors * LANES ? left : vectors * LANES;
        NAME(query_block)(w, n, scores, vectors, first, count);
        first += count;
    }
}

/* One head on the path unrolled for DecAlign's width 4, or on the general one up to MAX_HD. */
static TARGET void NAME(forward_head)(const Work *w, int64_t n, float *row) {
    if (w->hd == 4) NAME(forward_wide)(w, n, row, 4);
    else NAME(forward_wide)(w, n, row, w->hd);
}

static TARGET void NAME(backward_head)(const Work *w, int64_t n, float *row) {
    zero_key_gradients(w, n);
    if (w->hd == 4) NAME(backward_wide)(w, n, row, 4);
    else NAME(backward_wide)(w, n, row, w->hd);
}

#undef VEC
#undef LANEMASK
#undef VOP
#undef AS_BITS
#undef AS_FLOATS
