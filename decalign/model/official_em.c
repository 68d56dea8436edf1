/* The official EM of decalign/model/official_em.py, forward (keeping a tape) and reverse, in double
 * precision, for the fits that run on the host.
 *
 * official_em.py runs each step as a few dozen numpy operations on arrays of a few thousand numbers
 * (3 mixtures of 32 samples x 40 dimensions with K = 7 at MOSI shapes), 5 steps forward and again backward:
 * numpy's fixed cost per operation was most of it. Here a step is a few passes over the (sample, prototype,
 * dimension) cells, each mixture on its own thread.
 *
 * The steps and their reverses are those of official_em.py, line for line (see its docstring): E-step
 * r = softmax_k L, M-step (m, n, s, w', raw, mu', v'). The tape keeps, per E-step, its inputs (mu, v, w)
 * and its posteriors; the reverse recomputes each M-step's intermediates from them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t n, d, k;
} em_dims;

/* doubles a tape slot holds: mu (K d), v (K d), w (K), r (N K) */
static int64_t slot_size(em_dims s) { return 2 * s.k * s.d + s.k + s.n * s.k; }

/* x_c = x - c, c the mean of the rows, and the mean of x_c^2 per dimension */
static void centre_rows(em_dims s, const double *x, double *xc, double *centre, double *mean_sq) {
    for (int64_t j = 0; j < s.d; j++) centre[j] = mean_sq[j] = 0.0;
    for (int64_t i = 0; i < s.n; i++)
        for (int64_t j = 0; j < s.d; j++) centre[j] += x[i * s.d + j];
    for (int64_t j = 0; j < s.d; j++) centre[j] /= (double)s.n;
    for (int64_t i = 0; i < s.n; i++)
        for (int64_t j = 0; j < s.d; j++) {
            const double v = x[i * s.d + j] - centre[j];
            xc[i * s.d + j] = v;
            mean_sq[j] += v * v;
        }
    for (int64_t j = 0; j < s.d; j++) mean_sq[j] /= (double)s.n;
}

/* r_ik = softmax_k(-1/2 sum_d [(x_id - mu_kd)^2 / v_kd + log(2 pi v_kd)] + log max(w_k, 1e-8)) */
static void e_step(em_dims s, const double *xc, const double *mu, const double *var, const double *w,
                   double *resp, double *scratch /* K */) {
    for (int64_t k = 0; k < s.k; k++) {
        double log_det = 0.0;
        for (int64_t j = 0; j < s.d; j++) log_det += log(2.0 * M_PI * var[k * s.d + j]);
        scratch[k] = log(w[k] > 1e-8 ? w[k] : 1e-8) - 0.5 * log_det;
    }
    for (int64_t i = 0; i < s.n; i++) {
        double *row = resp + i * s.k, top = -INFINITY;
        for (int64_t k = 0; k < s.k; k++) {
            double maha = 0.0;
            for (int64_t j = 0; j < s.d; j++) {
                const double diff = xc[i * s.d + j] - mu[k * s.d + j];
                maha += diff * diff / var[k * s.d + j];
            }
            row[k] = scratch[k] - 0.5 * maha;
            if (row[k] > top) top = row[k];
        }
        double total = 0.0;
        for (int64_t k = 0; k < s.k; k++) total += (row[k] = exp(row[k] - top));
        for (int64_t k = 0; k < s.k; k++) row[k] /= total;
    }
}

/* One prototype's M-step values: mass, count, share, and per dimension weighted sum, raw, mu', spread and
 * the variance before its floor. */
typedef struct {
    double mass, count, share;
} m_scalars;

static m_scalars m_values(em_dims s, const double *xc, const double *centre, const double *resp, int64_t k,
                          double *weighted, double *raw, double *mu, double *spread, double *before) {
    m_scalars m = {0.0, 0.0, 0.0};
    for (int64_t i = 0; i < s.n; i++) m.mass += resp[i * s.k + k];
    m.count = m.mass > 1e-6 ? m.mass : 1e-6;
    m.share = m.mass / m.count;
    for (int64_t j = 0; j < s.d; j++) weighted[j] = spread[j] = 0.0;
    for (int64_t i = 0; i < s.n; i++)
        for (int64_t j = 0; j < s.d; j++) weighted[j] += resp[i * s.k + k] * xc[i * s.d + j];
    for (int64_t j = 0; j < s.d; j++) {
        raw[j] = weighted[j] / m.count + centre[j] * m.share;
        mu[j] = raw[j] - centre[j];
    }
    for (int64_t i = 0; i < s.n; i++)
        for (int64_t j = 0; j < s.d; j++) {
            const double diff = xc[i * s.d + j] - mu[j];
            spread[j] += resp[i * s.k + k] * diff * diff;
        }
    for (int64_t j = 0; j < s.d; j++) {
        spread[j] /= m.count;
        before[j] = spread[j] + raw[j] * raw[j] * (1.0 - m.share);
    }
    return m;
}

static void m_step(em_dims s, const double *xc, const double *centre, const double *resp, double floor,
                   double *mu, double *var, double *w, double *scratch /* 4 d */) {
    double *weighted = scratch, *raw = scratch + s.d, *spread = scratch + 2 * s.d, *before = scratch + 3 * s.d;
    for (int64_t k = 0; k < s.k; k++) {
        m_scalars m = m_values(s, xc, centre, resp, k, weighted, raw, mu + k * s.d, spread, before);
        w[k] = m.count / (double)s.n;
        for (int64_t j = 0; j < s.d; j++) var[k * s.d + j] = before[j] >= floor ? before[j] : floor;
    }
}

/* One mixture forward; slots: the tape's (iterations + 1) slots, or NULL. */
static void fit_one(em_dims s, int64_t iterations, double floor, const double *x, const int64_t *start,
                    double *means, double *var, double *w, double *post, double *slots, double *scratch) {
    double *xc = scratch, *centre = xc + s.n * s.d, *mean_sq = centre + s.d, *work = mean_sq + s.d;
    centre_rows(s, x, xc, centre, mean_sq);
    for (int64_t k = 0; k < s.k; k++) {
        memcpy(means + k * s.d, xc + start[k] * s.d, sizeof(double) * (size_t)s.d);
        for (int64_t j = 0; j < s.d; j++) var[k * s.d + j] = mean_sq[j] >= floor ? mean_sq[j] : floor;
        w[k] = 1.0 / (double)s.k;
    }
    for (int64_t t = 0; t <= iterations; t++) {
        double *resp = post;
        if (slots) {
            double *slot = slots + t * slot_size(s);
            memcpy(slot, means, sizeof(double) * (size_t)(s.k * s.d));
            memcpy(slot + s.k * s.d, var, sizeof(double) * (size_t)(s.k * s.d));
            memcpy(slot + 2 * s.k * s.d, w, sizeof(double) * (size_t)s.k);
            resp = slot + 2 * s.k * s.d + s.k;
        }
        e_step(s, xc, means, var, w, resp, work);
        if (t == iterations) {
            if (resp != post) memcpy(post, resp, sizeof(double) * (size_t)(s.n * s.k));
            break;
        }
        m_step(s, xc, centre, resp, floor, means, var, w, work);
    }
    for (int64_t k = 0; k < s.k; k++)
        for (int64_t j = 0; j < s.d; j++) means[k * s.d + j] += centre[j];
}

static int64_t scratch_size(em_dims s) { return s.n * s.d + 2 * s.d + 4 * s.d + s.k; }

/* x (B, N, d); start (K); outputs means, variances (B, K, d), weights (B, K), posteriors (B, N, K); tape
 * (B x (iterations + 1) slots) or NULL. Returns 0, or 1 when scratch could not be allocated. */
int em_forward(int64_t batch, int64_t n, int64_t d, int64_t k, int64_t iterations, double floor,
               const double *x, const int64_t *start, double *means, double *var, double *w, double *post,
               double *tape, int threads) {
    const em_dims s = {n, d, k};
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
    for (int64_t b = 0; b < batch; b++) {
        double *scratch = malloc(sizeof(double) * (size_t)scratch_size(s));
        if (!scratch) {
            failed = 1;
            continue;
        }
        fit_one(s, iterations, floor, x + b * n * d, start, means + b * k * d, var + b * k * d, w + b * k,
                post + b * n * k, tape ? tape + b * (iterations + 1) * slot_size(s) : NULL, scratch);
        free(scratch);
    }
    return failed;
}

/* The reverse of one E-step from the gradient of its posteriors: adds to d x_c, d mu, d v, d w. */
static void e_reverse(em_dims s, const double *xc, const double *slot, const double *d_resp, double *d_xc,
                      double *d_mu, double *d_var, double *d_w, double *d_log_joint /* N K */) {
    const double *mu = slot, *var = slot + s.k * s.d, *w = slot + 2 * s.k * s.d, *resp = w + s.k;
    for (int64_t i = 0; i < s.n; i++) {
        double dot = 0.0;
        for (int64_t k = 0; k < s.k; k++) dot += d_resp[i * s.k + k] * resp[i * s.k + k];
        for (int64_t k = 0; k < s.k; k++)
            d_log_joint[i * s.k + k] = resp[i * s.k + k] * (d_resp[i * s.k + k] - dot);
    }
    for (int64_t k = 0; k < s.k; k++) {
        double per_prototype = 0.0;
        for (int64_t i = 0; i < s.n; i++) per_prototype += d_log_joint[i * s.k + k];
        for (int64_t j = 0; j < s.d; j++) d_var[k * s.d + j] -= 0.5 * per_prototype / var[k * s.d + j];
        if (w[k] >= 1e-8) d_w[k] += per_prototype / w[k];
    }
    for (int64_t i = 0; i < s.n; i++)
        for (int64_t k = 0; k < s.k; k++) {
            const double g = d_log_joint[i * s.k + k];
            for (int64_t j = 0; j < s.d; j++) {
                const double scaled = (xc[i * s.d + j] - mu[k * s.d + j]) / var[k * s.d + j];
                const double pulled = g * scaled;
                d_xc[i * s.d + j] -= pulled;
                d_mu[k * s.d + j] += pulled;
                d_var[k * s.d + j] += 0.5 * pulled * scaled;
            }
        }
}

/* The reverse of one M-step (posteriors resp) from the gradients of its (mu', v', w'): writes d r, adds to
 * d x_c and d c. */
static void m_reverse(em_dims s, const double *xc, const double *centre, const double *resp, double floor,
                      const double *d_mu, const double *d_var, const double *d_w, double *d_resp, double *d_xc,
                      double *d_centre, double *work /* 9 d */) {
    double *weighted = work, *raw = work + s.d, *mu = work + 2 * s.d, *spread = work + 3 * s.d;
    double *before = work + 4 * s.d, *d_raw = work + 5 * s.d, *d_summed = work + 6 * s.d;
    double *pulled_sum = work + 7 * s.d, *d_weighted = work + 8 * s.d;
    for (int64_t k = 0; k < s.k; k++) {
        const m_scalars m = m_values(s, xc, centre, resp, k, weighted, raw, mu, spread, before);
        double d_share = 0.0, d_count = 0.0;
        for (int64_t j = 0; j < s.d; j++) {
            const double d_before = before[j] >= floor ? d_var[k * s.d + j] : 0.0;
            d_raw[j] = d_before * 2.0 * raw[j] * (1.0 - m.share);
            d_share -= d_before * raw[j] * raw[j];
            d_count -= d_before * spread[j] / m.count;
            d_summed[j] = d_before / m.count;
            pulled_sum[j] = 0.0;
        }
        for (int64_t i = 0; i < s.n; i++) {
            const double r = resp[i * s.k + k];
            double d_r = 0.0;
            for (int64_t j = 0; j < s.d; j++) {
                const double diff = xc[i * s.d + j] - mu[j];
                const double pulled = 2.0 * r * diff * d_summed[j];
                d_r += d_summed[j] * diff * diff;
                d_xc[i * s.d + j] += pulled;
                pulled_sum[j] += pulled;
            }
            d_resp[i * s.k + k] = d_r;
        }
        for (int64_t j = 0; j < s.d; j++) {
            const double d_new_mu = d_mu[k * s.d + j] - pulled_sum[j];
            d_raw[j] += d_new_mu;
            d_centre[j] -= d_new_mu;
            d_weighted[j] = d_raw[j] / m.count;
            d_count -= d_raw[j] * weighted[j] / (m.count * m.count);
            d_centre[j] += d_raw[j] * m.share;
            d_share += d_raw[j] * centre[j];
        }
        d_count += -d_share * m.mass / (m.count * m.count) + d_w[k] / (double)s.n;
        const double d_mass = d_share / m.count + (m.mass >= 1e-6 ? d_count : 0.0);
        for (int64_t i = 0; i < s.n; i++) {
            const double r = resp[i * s.k + k];
            double d_r = 0.0;
            for (int64_t j = 0; j < s.d; j++) {
                d_r += xc[i * s.d + j] * d_weighted[j];
                d_xc[i * s.d + j] += r * d_weighted[j];
            }
            d_resp[i * s.k + k] += d_r + d_mass;
        }
    }
}

static int64_t reverse_scratch_size(em_dims s) {
    return 2 * s.n * s.d + 3 * s.d + 2 * s.k * s.d + s.k + 2 * s.n * s.k + 9 * s.d;
}

static void reverse_one(em_dims s, int64_t iterations, double floor, const double *x, const int64_t *start,
                        const double *slots, const double *d_means, const double *d_vars, const double *d_weights,
                        const double *d_post, double *d_x, double *scratch) {
    double *xc = scratch, *d_xc = xc + s.n * s.d, *centre = d_xc + s.n * s.d, *mean_sq = centre + s.d;
    double *d_centre = mean_sq + s.d, *d_mu = d_centre + s.d, *d_var = d_mu + s.k * s.d, *d_w = d_var + s.k * s.d;
    double *d_resp = d_w + s.k, *d_log_joint = d_resp + s.n * s.k, *work = d_log_joint + s.n * s.k;
    const int64_t size = slot_size(s);
    centre_rows(s, x, xc, centre, mean_sq);
    memset(d_xc, 0, sizeof(double) * (size_t)(s.n * s.d));
    memset(d_centre, 0, sizeof(double) * (size_t)s.d);
    for (int64_t k = 0; k < s.k; k++)
        for (int64_t j = 0; j < s.d; j++) d_centre[j] += d_means[k * s.d + j]; /* the outputs' means are mu + c */
    memcpy(d_mu, d_means, sizeof(double) * (size_t)(s.k * s.d));
    memcpy(d_var, d_vars, sizeof(double) * (size_t)(s.k * s.d));
    memcpy(d_w, d_weights, sizeof(double) * (size_t)s.k);
    e_reverse(s, xc, slots + iterations * size, d_post, d_xc, d_mu, d_var, d_w, d_log_joint);
    for (int64_t t = iterations - 1; t >= 0; t--) {
        const double *slot = slots + t * size;
        m_reverse(s, xc, centre, slot + 2 * s.k * s.d + s.k, floor, d_mu, d_var, d_w, d_resp, d_xc, d_centre, work);
        memset(d_mu, 0, sizeof(double) * (size_t)(2 * s.k * s.d + s.k)); /* d_mu, d_var, d_w: one block */
        e_reverse(s, xc, slot, d_resp, d_xc, d_mu, d_var, d_w, d_log_joint);
    }
    /* the start: mu = x_c[start], v = max(mean x_c^2, floor) for every prototype, w constant */
    for (int64_t k = 0; k < s.k; k++)
        for (int64_t j = 0; j < s.d; j++) d_xc[start[k] * s.d + j] += d_mu[k * s.d + j];
    for (int64_t j = 0; j < s.d; j++) {
        double d_mean_sq = 0.0, column = 0.0;
        if (mean_sq[j] >= floor)
            for (int64_t k = 0; k < s.k; k++) d_mean_sq += d_var[k * s.d + j];
        for (int64_t i = 0; i < s.n; i++) {
            d_xc[i * s.d + j] += d_mean_sq * 2.0 * xc[i * s.d + j] / (double)s.n;
            column += d_xc[i * s.d + j];
        }
        for (int64_t i = 0; i < s.n; i++) /* x_c = x - c, c = mean x */
            d_x[i * s.d + j] = d_xc[i * s.d + j] + (d_centre[j] - column) / (double)s.n;
    }
}

/* d x (B, N, d) from a forward's tape and the gradients of its four outputs. Returns 0, or 1 when scratch
 * could not be allocated. */
int em_reverse(int64_t batch, int64_t n, int64_t d, int64_t k, int64_t iterations, double floor, const double *x,
               const int64_t *start, const double *tape, const double *d_means, const double *d_vars,
               const double *d_weights, const double *d_post, double *d_x, int threads) {
    const em_dims s = {n, d, k};
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : failed)
    for (int64_t b = 0; b < batch; b++) {
        double *scratch = malloc(sizeof(double) * (size_t)reverse_scratch_size(s));
        if (!scratch) {
            failed = 1;
            continue;
        }
        reverse_one(s, iterations, floor, x + b * n * d, start, tape + b * (iterations + 1) * slot_size(s),
                    d_means + b * k * d, d_vars + b * k * d, d_weights + b * k, d_post + b * n * k, d_x + b * n * d,
                    scratch);
        free(scratch);
    }
    return failed;
}
