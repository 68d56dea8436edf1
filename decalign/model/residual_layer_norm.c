/* A post-norm transformer layer's "LayerNorm(x + r)" with each encoder's own scale and shift, forward and
 * backward, for float32 rows of width d (DecAlign's d is 40).
 *
 * Torch runs it as four operators forward (the sum, the normalisation, the scale and shift) and six backward,
 * each reading and writing the whole (rows, d) tensor; here each row is summed, normalised, scaled and shifted
 * in one pass while it is in registers, and its gradient likewise. Rows are laid out (groups, rows_per_group,
 * d), contiguous; group g (an encoder) has scale w + g * w_stride and shift b + g * b_stride, each d contiguous
 * floats (a layer's slice of the stacked parameters, read where it lies). The mean and variance are
 * computed in two passes over the row (the variance of the centred values), as torch's LayerNorm gets them to
 * rounding. Every row is computed by one thread (each thread takes a contiguous range, with no worksharing
construct a thread that failed to allocate would skip), and the scale's and shift's gradients are summed over fixed
 * chunks of rows and then over the chunks in order, so no result depends on the thread count. Built (with
 * -mavx2 -mfma -fopenmp, `omp simd` vectorising the row sums) and loaded by native.py.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "row_layer_norm.h"

#define CHUNK_ROWS 64 /* rows per partial sum of the scale's and shift's gradients */

/* y = (s - mean) / sqrt(var + eps) * w + b for s = x + r (r may be NULL); with `xhat`, the normalised row and
 * `rstd` its 1 / sqrt(var + eps) are kept for the backward. y may be x or r (the eval forward's in place). */
int rln_forward(int64_t groups, int64_t rows_per_group, int64_t d, const float *x, const float *r,
                const float *w, int64_t w_stride, const float *b, int64_t b_stride, float eps, float *y, float *xhat,
                float *rstd, int threads) {
    const int64_t rows = groups * rows_per_group;
    int failed = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(| : failed)
    {
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
        float *s = malloc(sizeof(float) * d);
        if (!s) {
            failed |= 1;
        } else {
            for (int64_t i = rows * part / parts; i < rows * (part + 1) / parts; i++) {
                const float *wg = w + (i / rows_per_group) * w_stride, *bg = b + (i / rows_per_group) * b_stride;
                const float inverse = row_layer_norm(d, x + i * d, r ? r + i * d : NULL, wg, bg, eps, s, y + i * d,
                                                     xhat ? xhat + i * d : NULL);
                if (rstd) rstd[i] = inverse;
            }
            free(s);
        }
    }
    return failed;
}

/* From the output's gradient g: ds (the gradient of x and of r alike), and the gradients of each group's scale
 * and shift (dw, db: (groups, d) contiguous). */
int rln_backward(int64_t groups, int64_t rows_per_group, int64_t d, const float *g, const float *xhat,
                 const float *rstd, const float *w, int64_t w_stride, float *ds, float *dw, float *db, int threads) {
    const int64_t chunks_per_group = (rows_per_group + CHUNK_ROWS - 1) / CHUNK_ROWS, chunks = groups * chunks_per_group;
    float *partial = calloc((size_t)(2 * chunks * d), sizeof(float)); /* per chunk: d of dw, then d of db */
    if (!partial) return 1;
    int failed = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(| : failed)
    {
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
        float *dxhat = malloc(sizeof(float) * d);
        if (!dxhat) {
            failed |= 1;
        } else {
            for (int64_t c = chunks * part / parts; c < chunks * (part + 1) / parts; c++) {
                const int64_t group = c / chunks_per_group, first = group * rows_per_group + (c % chunks_per_group) * CHUNK_ROWS;
                const int64_t end = first + CHUNK_ROWS < (group + 1) * rows_per_group ? first + CHUNK_ROWS
                                                                                      : (group + 1) * rows_per_group;
                const float *wg = w + group * w_stride;
                float *dw_part = partial + 2 * c * d, *db_part = dw_part + d;
                for (int64_t i = first; i < end; i++) {
                    const float *gi = g + i * d, *hi = xhat + i * d;
                    float mean_d = 0.0f, mean_dh = 0.0f;
#pragma omp simd reduction(+ : mean_d, mean_dh)
                    for (int64_t j = 0; j < d; j++) {
                        dxhat[j] = gi[j] * wg[j];
                        mean_d += dxhat[j];
                        mean_dh += dxhat[j] * hi[j];
                        dw_part[j] += gi[j] * hi[j];
                        db_part[j] += gi[j];
                    }
                    mean_d /= (float)d, mean_dh /= (float)d;
                    float *dsi = ds + i * d;
#pragma omp simd
                    for (int64_t j = 0; j < d; j++) dsi[j] = rstd[i] * (dxhat[j] - mean_d - hi[j] * mean_dh);
                }
            }
            free(dxhat);
        }
    }
    if (!failed) {
        for (int64_t group = 0; group < groups; group++) { /* over the chunks in order: the same sums on any threads */
            float *dwg = dw + group * d, *dbg = db + group * d;
            memset(dwg, 0, sizeof(float) * d), memset(dbg, 0, sizeof(float) * d);
            for (int64_t c = group * chunks_per_group; c < (group + 1) * chunks_per_group; c++)
                for (int64_t j = 0; j < d; j++) dwg[j] += partial[2 * c * d + j], dbg[j] += partial[(2 * c + 1) * d + j];
        }
    }
    free(partial);
    return failed;
}
