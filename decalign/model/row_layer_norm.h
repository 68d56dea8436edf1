/* One row of a post-norm layer's LayerNorm(x + r), shared by residual_layer_norm.c and the fused eval layer of
 * small_products.c, so both give the same bits: s = x + r (r may be NULL) into the scratch row s, the mean and
 * the variance of the centred values in two passes (as torch's LayerNorm gets them to rounding), then
 * y = (s - mean) / sqrt(var + eps) * w + b; with `xhat`, the normalised row too. Returns 1 / sqrt(var + eps).
 * y may be x or r. */
#ifndef ROW_LAYER_NORM_H
#define ROW_LAYER_NORM_H

#include <math.h>
#include <stdint.h>

static inline float row_mean(const float *s, int64_t d) {
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < d; j++) total += s[j];
    return total / (float)d;
}

static inline float row_layer_norm(int64_t d, const float *x, const float *r, const float *w, const float *b,
                                   float eps, float *s, float *y, float *xhat) {
#pragma omp simd
    for (int64_t j = 0; j < d; j++) s[j] = r ? x[j] + r[j] : x[j];
    const float mean = row_mean(s, d);
    float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < d; j++) squares += (s[j] - mean) * (s[j] - mean);
    const float inverse = 1.0f / sqrtf(squares / (float)d + eps);
#pragma omp simd
    for (int64_t j = 0; j < d; j++) {
        const float normed = (s[j] - mean) * inverse;
        if (xhat) xhat[j] = normed;
        y[j] = normed * w[j] + b[j];
    }
    return inverse;
}

#endif
