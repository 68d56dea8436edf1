/* The official multi-marginal Sinkhorn sweeps of decalign/model/sweeps.py, forward (keeping a tape) and
 * reverse, in double precision, for the small plans that run on the host.
 *
 * sweeps.py runs each update as a dozen numpy operations on a plan of a few hundred cells (8 x 8 x 8 at
 * MOSI shapes), 150 updates a training step forward and again backward: numpy's fixed cost per operation
 * was nearly all of it (about 5 ms a step). Here every update is one pass over the cells.
 *
 * Update of axis m (g_n the potentials, K_m the size of axis m, a cell c has index c_n on axis n):
 *     total_c = scaled_c + sum_{n != m, in axis order} g_n[c_n]
 *     lse_j   = logsumexp of total over the cells with c_m = j (shifted by their maximum; 0 if not finite)
 *     g_m[j]  = log nu_m[j] - logaddexp(lse_j, guard)
 * The tape keeps, per update, softmax_c = exp(total_c - lse_{c_m}) and w_j = -exp(lse_j - logaddexp(...)).
 * Reverse, for the adjoint a of the new g_m: d log nu_m += a, d total_c = softmax_c a[c_m] w[c_m], added to
 * d scaled and, summed over the cells with c_n = i, to the adjoint of g_n[i]; the adjoint of g_m restarts
 * at 0 (the old g_m was overwritten unread). Absent adjoints (present[m] == 0) skip their update, as the
 * Python code skips None.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_AXES 16

/* numpy.logaddexp's rule, infinities included */
static double log_add_exp(double x, double y) {
    if (x == y) return x + M_LN2;
    const double d = x - y;
    if (d > 0) return x + log1p(exp(-d));
    if (d <= 0) return y + log1p(exp(d));
    return d; /* NaN */
}

/* Each cell's index on every axis (row-major), cells x num; offsets of each axis in concatenated vectors. */
static int32_t *cell_indices(int num, const int64_t *sizes, int64_t cells, int64_t *offsets) {
    int32_t *index = malloc(sizeof(int32_t) * (size_t)(cells * num));
    if (!index) return NULL;
    int64_t offset = 0;
    for (int n = 0; n < num; n++) {
        offsets[n] = offset;
        offset += sizes[n];
    }
    offsets[num] = offset;
    int32_t current[MAX_AXES] = {0};
    for (int64_t c = 0; c < cells; c++) {
        memcpy(index + c * num, current, sizeof(int32_t) * (size_t)num);
        for (int n = num - 1; n >= 0; n--) { /* row-major odometer */
            if (++current[n] < sizes[n]) break;
            current[n] = 0;
        }
    }
    return index;
}

static int64_t cell_count(int num, const int64_t *sizes) {
    int64_t cells = 1;
    for (int n = 0; n < num; n++) cells *= sizes[n];
    return cells;
}

/* One update of axis m: writes logs[m] and, with a tape, this update's softmax (cells) and weights (K_m). */
static void update_axis(int num, int m, int64_t cells, const int32_t *index, const int64_t *offsets,
                        const double *scaled, double guard, const double *log_nu, double *logs, double *total,
                        double *top, double *summed, double *softmax, double *weight) {
    const int64_t size = offsets[m + 1] - offsets[m];
    double *g_m = logs + offsets[m];
    for (int64_t j = 0; j < size; j++) {
        top[j] = -INFINITY;
        summed[j] = 0.0;
    }
    for (int64_t c = 0; c < cells; c++) {
        const int32_t *at = index + c * num;
        double t = scaled[c];
        for (int n = 0; n < num; n++)
            if (n != m) t += logs[offsets[n] + at[n]];
        total[c] = t;
        if (t > top[at[m]] || isnan(t)) top[at[m]] = t;
    }
    for (int64_t j = 0; j < size; j++)
        if (!isfinite(top[j])) top[j] = 0.0; /* all -inf: torch.logsumexp's rule */
    for (int64_t c = 0; c < cells; c++) {
        const int32_t j = index[c * num + m];
        total[c] = exp(total[c] - top[j]);
        summed[j] += total[c];
    }
    for (int64_t j = 0; j < size; j++) {
        const double lse = log(summed[j]) + top[j];
        const double denom = log_add_exp(lse, guard);
        g_m[j] = log_nu[offsets[m] + j] - denom;
        if (weight) weight[j] = -exp(lse - denom);
    }
    if (softmax)
        for (int64_t c = 0; c < cells; c++) softmax[c] = total[c] / summed[index[c * num + m]];
}

/* `sweeps` sweeps from zero potentials. log_nu and logs are the axes' vectors concatenated; tape_softmax
 * (sweeps * num * cells) and tape_weight (sweeps * sum of sizes) are filled when not NULL. Returns 0, 1 when
 * out of memory, 2 for more axes than MAX_AXES. */
int mms_forward(int num, const int64_t *sizes, const double *scaled, double guard, int64_t sweeps,
                const double *log_nu, double *logs, double *tape_softmax, double *tape_weight) {
    if (num < 1 || num > MAX_AXES) return 2;
    const int64_t cells = cell_count(num, sizes);
    int64_t offsets[MAX_AXES + 1];
    int32_t *index = cell_indices(num, sizes, cells, offsets);
    double *scratch = malloc(sizeof(double) * (size_t)(cells + 2 * offsets[num]));
    if (!index || !scratch) {
        free(index);
        free(scratch);
        return 1;
    }
    memset(logs, 0, sizeof(double) * (size_t)offsets[num]);
    for (int64_t s = 0; s < sweeps; s++)
        for (int m = 0; m < num; m++) {
            const int64_t step = s * num + m;
            update_axis(num, m, cells, index, offsets, scaled, guard, log_nu, logs, scratch,
                        scratch + cells, scratch + cells + offsets[num],
                        tape_softmax ? tape_softmax + step * cells : NULL,
                        tape_weight ? tape_weight + s * offsets[num] + offsets[m] : NULL);
        }
    free(index);
    free(scratch);
    return 0;
}

/* The reverse of `steps` updates from their tape. adjoint (in: the final potentials' adjoints, the axes
 * concatenated; present[n] == 0 for an absent one) is used as scratch. d_scaled (cells) and d_nu
 * (concatenated) are written, zero where no gradient reached; present_out[n] says whether d log nu_n was
 * reached, present_out[num] whether d scaled was. Returns as mms_forward. */
int mms_reverse(int num, const int64_t *sizes, int64_t steps, const double *tape_softmax,
                const double *tape_weight, double *adjoint, uint8_t *present, double *d_scaled, double *d_nu,
                uint8_t *present_out) {
    if (num < 1 || num > MAX_AXES) return 2;
    const int64_t cells = cell_count(num, sizes);
    int64_t offsets[MAX_AXES + 1];
    int32_t *index = cell_indices(num, sizes, cells, offsets);
    double *scaled_adjoint = malloc(sizeof(double) * (size_t)offsets[num]);
    if (!index || !scaled_adjoint) {
        free(index);
        free(scaled_adjoint);
        return 1;
    }
    memset(d_scaled, 0, sizeof(double) * (size_t)cells);
    memset(d_nu, 0, sizeof(double) * (size_t)offsets[num]);
    memset(present_out, 0, (size_t)num + 1);
    for (int64_t step = steps - 1; step >= 0; step--) {
        const int m = (int)(step % num);
        if (!present[m]) continue;
        const double *softmax = tape_softmax + step * cells;
        const double *weight = tape_weight + (step / num) * offsets[num] + offsets[m];
        double *a = adjoint + offsets[m];
        for (int64_t j = 0; j < offsets[m + 1] - offsets[m]; j++) {
            d_nu[offsets[m] + j] += a[j];
            scaled_adjoint[j] = a[j] * weight[j];
        }
        for (int64_t c = 0; c < cells; c++) {
            const int32_t *at = index + c * num;
            const double d_total = softmax[c] * scaled_adjoint[at[m]];
            d_scaled[c] += d_total;
            for (int n = 0; n < num; n++)
                if (n != m) adjoint[offsets[n] + at[n]] += d_total;
        }
        for (int n = 0; n < num; n++)
            if (n != m) present[n] = 1;
        memset(a, 0, sizeof(double) * (size_t)(offsets[m + 1] - offsets[m]));
        present[m] = 0;
        present_out[m] = present_out[num] = 1;
    }
    free(index);
    free(scaled_adjoint);
    return 0;
}
