/* Batched float32 matrix products with a short inner dimension, as DecAlign's stacked layers take them.
 *
 * C[g] = bias + A[g] B[g] for each group g (one per stacked encoder): A (M x K) and B (K x N) with any strides,
 * C (M x N) with unit stride along N. At MOSI shapes (d 40, 1,600 tokens a batch) MKL's sgemm ran these at
 * 55-70 GFLOP/s inside a training step: its blocking is made for long inner dimensions, and K is 40 to 160
 * here. This computes C in tiles of 6 rows by 16 columns held in twelve AVX2 registers for the whole K loop,
 * one broadcast of A and two loads of B per six pairs of fused multiply-adds. B is read in place where its rows
 * are contiguous, else copied once into 16-column panels. Each element of C is summed by one thread over k in
 * order, so results do not depend on the thread count. In eval, sp_encoder_layer_eval runs a whole encoder layer
 * after its attention through the same tiles (see below). Built and loaded by native.py with the other kernels
 * (-mavx2 -mfma -fopenmp).
 */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

#include "row_layer_norm.h"

#define TILE_ROWS 6
#define PANEL 16 /* columns: two vectors of 8 */

typedef struct {
    int64_t groups, m, n, k;
    const float *a;
    int64_t a_group, a_row, a_k;
    const float *b;
    int64_t b_group, b_k, b_n;
    const float *bias;
    int64_t bias_group;
    int bias_along; /* 0: none, 1: one per row of C, 2: one per column */
    float *c;
    int64_t c_group, c_row;
} Product;

/* rows x (8 x vectors) of C from a panel of B (K x 16 at row stride ldb), all in registers; `width` columns
 * are stored (fewer than 8 x vectors only in the last panel). Inlined with constant rows and vectors, so the
 * loops unroll and the accumulators stay in registers (without the pragmas gcc kept them on the stack). */
static inline __attribute__((always_inline)) void tile(const int rows, const int vectors, int64_t k, const float *a,
                                                       int64_t a_row, int64_t a_k, const float *panel, int64_t ldb, float *c,
                                                       int64_t c_row, const float *row_bias, const float *column_bias,
                                                       int64_t width) {
    __m256 sum[TILE_ROWS][2];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++)
#pragma GCC unroll 2
        for (int v = 0; v < vectors; v++)
            sum[r][v] = row_bias      ? _mm256_set1_ps(row_bias[r])
                        : column_bias ? _mm256_loadu_ps(column_bias + 8 * v)
                                      : _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i++) {
        __m256 b[2];
#pragma GCC unroll 2
        for (int v = 0; v < vectors; v++) b[v] = _mm256_loadu_ps(panel + ldb * i + 8 * v);
#pragma GCC unroll 6
        for (int r = 0; r < rows; r++) {
            const __m256 x = _mm256_broadcast_ss(a + r * a_row + i * a_k);
#pragma GCC unroll 2
            for (int v = 0; v < vectors; v++) sum[r][v] = _mm256_fmadd_ps(x, b[v], sum[r][v]);
        }
    }
    float part[PANEL];
#pragma GCC unroll 6
    for (int r = 0; r < rows; r++) {
        if (width == 8 * vectors) {
#pragma GCC unroll 2
            for (int v = 0; v < vectors; v++) _mm256_storeu_ps(c + r * c_row + 8 * v, sum[r][v]);
        } else {
#pragma GCC unroll 2
            for (int v = 0; v < vectors; v++) _mm256_storeu_ps(part + 8 * v, sum[r][v]);
            memcpy(c + r * c_row, part, sizeof(float) * width);
        }
    }
}

#define TILE(R, V) \
    case 4 * (R) + (V): tile(R, V, k, a, a_row, a_k, panel, ldb, c, c_row, row_bias, column_bias, width); break;

static void any_tile(int rows, int vectors, int64_t k, const float *a, int64_t a_row, int64_t a_k, const float *panel,
                     int64_t ldb, float *c, int64_t c_row, const float *row_bias, const float *column_bias,
                     int64_t width) {
    switch (4 * rows + vectors) {
        TILE(1, 1) TILE(2, 1) TILE(3, 1) TILE(4, 1) TILE(5, 1) TILE(6, 1)
        TILE(1, 2) TILE(2, 2) TILE(3, 2) TILE(4, 2) TILE(5, 2) TILE(6, 2)
    }
}

/* The 8 x 8 floats in rows r[0..7] transposed, in place (the usual unpack, shuffle and lane-swap steps). */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* A whole panel of a B whose columns are contiguous (B = X^T: the feature-major products' tokens, a token-major
 * layer's weight), transposed 8 x 8 at a time: the element-by-element copy took a sixth of the queries' projection
 * at MOSI shapes. Rows past the last multiple of 8 one by one. */
static void pack_columns(const float *from, int64_t ldn, int64_t k, float *into) {
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        for (int half = 0; half < 2; half++) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(from + (8 * half + j) * ldn + i);
            transpose8(r);
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(into + (i + j) * PANEL + 8 * half, r[j]);
        }
    for (; i < k; i++)
        for (int64_t j = 0; j < PANEL; j++) into[i * PANEL + j] = from[j * ldn + i];
}

/* Copies panel p of group g's B (zeros past column N) into `into` (K x 16). */
static void pack(const Product *p, int64_t g, int64_t panel, float *into) {
    const float *from = p->b + g * p->b_group + PANEL * panel * p->b_n;
    const int64_t width = p->n - PANEL * panel < PANEL ? p->n - PANEL * panel : PANEL;
    if (p->b_k == 1 && width == PANEL) {
        pack_columns(from, p->b_n, p->k, into);
        return;
    }
    for (int64_t i = 0; i < p->k; i++)
        for (int64_t j = 0; j < PANEL; j++) into[i * PANEL + j] = j < width ? from[i * p->b_k + j * p->b_n] : 0.0f;
}

/* The tiles of rows [row, row + rows) of group g over panels [first, last). */
static void tiles(const Product *p, const float *packed, int64_t packed_from, int64_t g, int64_t row, int64_t first,
                  int64_t last) {
    const int64_t rows = p->m - row < TILE_ROWS ? p->m - row : TILE_ROWS, panels = (p->n + PANEL - 1) / PANEL;
    const float *bias = p->bias ? p->bias + g * p->bias_group : NULL;
    for (int64_t q = first; q < last; q++) {
        const int64_t width = p->n - PANEL * q < PANEL ? p->n - PANEL * q : PANEL;
        const int in_place = q < packed_from, vectors = width > 8 ? 2 : 1;
        const float *column_bias = bias && p->bias_along == 2 ? bias + PANEL * q : NULL;
        float padded[PANEL]; /* a partial panel's column biases: the tile loads whole vectors */
        if (column_bias && width < 8 * vectors) {
            memset(padded, 0, sizeof padded);
            column_bias = memcpy(padded, column_bias, sizeof(float) * width);
        }
        const float *panel = in_place ? p->b + g * p->b_group + PANEL * q
                                      : packed + ((g * (panels - packed_from)) + q - packed_from) * p->k * PANEL;
        any_tile((int)rows, vectors, p->k, p->a + g * p->a_group + row * p->a_row, p->a_row, p->a_k, panel,
                 in_place ? p->b_k : PANEL, p->c + g * p->c_group + row * p->c_row + PANEL * q, p->c_row,
                 bias && p->bias_along == 1 ? bias + row : NULL, column_bias, width);
    }
}

/* Runs on `threads` OpenMP threads (torch's, see small_head_attention.c): first the panels that need
 * copying, then tiles of 6 rows by a run of panels, the runs short enough for 8 pieces of work a thread.
 * Returns 0, or 1 when the panels' memory could not be had. */
static int run(const Product *p, int threads) {
    const int64_t panels = (p->n + PANEL - 1) / PANEL, blocks = (p->m + TILE_ROWS - 1) / TILE_ROWS;
    /* in place: whole panels of a B whose rows are contiguous; the last, partial one is copied (zero-padded) */
    const int64_t packed_from = p->b_n == 1 ? p->n / PANEL : 0, copied = panels - packed_from;
    float *packed = NULL;
    if (copied && p->k) {
        packed = aligned_alloc(64, sizeof(float) * (size_t)(p->groups * copied * p->k * PANEL));
        if (!packed) return 1;
    }
    int64_t run_length = panels;
    while (run_length > 1 && p->groups * blocks * ((panels + run_length - 1) / run_length) < 8 * (int64_t)threads)
        run_length = (run_length + 1) / 2;
    const int64_t runs = run_length ? (panels + run_length - 1) / run_length : 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
        if (packed) {
#pragma omp for schedule(static) collapse(2)
            for (int64_t g = 0; g < p->groups; g++)
                for (int64_t q = packed_from; q < panels; q++)
                    pack(p, g, q, packed + (g * copied + q - packed_from) * p->k * PANEL);
        }
#pragma omp for schedule(static) collapse(3)
        for (int64_t g = 0; g < p->groups; g++)
            for (int64_t block = 0; block < blocks; block++)
                for (int64_t r = 0; r < runs; r++) {
                    const int64_t first = r * run_length, last = first + run_length < panels ? first + run_length : panels;
                    tiles(p, packed, packed_from, g, TILE_ROWS * block, first, last);
                }
    }
    free(packed);
    return 0;
}

/* shape: groups, M, N, K; strides (in floats): A's group, row and k, B's group, k and n, the bias's group, C's
 * group and row. bias_along: 0 none, 1 per row of C, 2 per column. */
int sp_product(const int64_t *shape, const int64_t *strides, const float *a, const float *b, const float *bias,
               int bias_along, float *c, int threads) {
    const Product p = {shape[0], shape[1], shape[2], shape[3], a, strides[0], strides[1], strides[2], b, strides[3],
                       strides[4], strides[5], bias, strides[6], bias ? bias_along : 0, c, strides[7], strides[8]};
    return run(&p, threads);
}

/* ---- A post-norm encoder layer after its attention, fused for eval (no dropout, nothing kept for a backward) ----
 *
 * y = LN2(x1 + W2 relu(W1 x1 + b1) + b2) with x1 = LN1(x + Wo a + bo), row by row: a the attention's token-major
 * output, x the layer's input. Unfused, each of the three products, the ReLU and the two LayerNorms was a call
 * of its own that wrote its whole (rows, d or hidden) result to memory for the next to read back. Here a block
 * of BLOCK_ROWS rows goes through all of them in per-thread scratch, in L1 cache, with the products' own tiles
 * (each panel of a weight in turn over the block's tiles of 6 rows, so the panel stays in L1) and the shared
 * LayerNorm row: the same operations in the same order as the unfused calls, so the same bits. y may be a (the
 * block's rows of a are read before its rows of y are written). */
#define BLOCK_ROWS 12

typedef struct {
    int64_t groups, rows, d, hidden;
    const float *a, *x; /* (groups, rows, d) contiguous */
    const float *weight[3], *bias[3]; /* Wo (d x d), W1 (hidden x d), W2 (d x hidden), each (out, in) contiguous */
    const float *scale[2], *shift[2]; /* LN1's and LN2's, d each */
    int64_t weight_group[3], bias_group[3], scale_group[2], shift_group[2]; /* strides between the groups' slices */
    float eps[2];
    float *y;
} Layer;

static int64_t panels_of(int64_t n) { return (n + PANEL - 1) / PANEL; }

/* Product j's inner and output widths: Wo d to d, W1 d to hidden, W2 hidden to d. */
static int64_t inputs_of(const Layer *l, int j) { return j == 2 ? l->hidden : l->d; }
static int64_t outputs_of(const Layer *l, int j) { return j == 1 ? l->hidden : l->d; }

/* Product j's weight as its transpose in zero-padded panels of 16 columns (K x 16 each), then its bias padded
 * to whole panels, for every group: the layout `tile` reads. packed_size: the floats one product takes;
 * packed_at: where product j starts in a group's copy (the three one after another). */
static int64_t packed_size(const Layer *l, int j) {
    return panels_of(outputs_of(l, j)) * PANEL * (inputs_of(l, j) + 1);
}

static int64_t packed_at(const Layer *l, int j) {
    int64_t at = 0;
    for (int before = 0; before < j; before++) at += packed_size(l, before);
    return at;
}

static void pack_weight(const Layer *l, int j, int64_t g, float *into) {
    const int64_t in = inputs_of(l, j), out = outputs_of(l, j), panels = panels_of(out);
    const Product transposed = {.k = in, .n = out, .b = l->weight[j], .b_group = l->weight_group[j], .b_k = 1,
                                .b_n = in};
    for (int64_t q = 0; q < panels; q++) pack(&transposed, g, q, into + q * in * PANEL);
    float *bias = into + panels * in * PANEL;
    for (int64_t i = 0; i < panels * PANEL; i++) bias[i] = i < out ? l->bias[j][g * l->bias_group[j] + i] : 0.0f;
}

/* c (n x width of the panels, row stride ldc) = bias + a (n x in, row stride lda) W^T from a packed weight. */
static void block_product(int64_t n, int64_t in, int64_t out, const float *a, int64_t lda, const float *packed,
                          float *c, int64_t ldc) {
    const float *bias = packed + panels_of(out) * in * PANEL;
    for (int64_t q = 0; q < panels_of(out); q++) {
        const int vectors = out - PANEL * q > 8 ? 2 : 1;
        for (int64_t row = 0; row < n; row += TILE_ROWS)
            any_tile(n - row < TILE_ROWS ? (int)(n - row) : TILE_ROWS, vectors, in, a + row * lda, lda, 1,
                     packed + q * in * PANEL, PANEL, c + row * ldc + PANEL * q, ldc, NULL, bias + PANEL * q,
                     8 * vectors);
    }
}

/* Rows [first, first + n) of group g; scratch: x1 (n x ld_d), then hidden (n x ld_h), then sums (n x ld_d). */
static void layer_block(const Layer *l, const float *packed, int64_t g, int64_t first, int64_t n, float *scratch) {
    const int64_t d = l->d, hidden = l->hidden, ld_d = panels_of(d) * PANEL, ld_h = panels_of(hidden) * PANEL;
    const int64_t at = (g * l->rows + first) * d;
    const float *wo = packed + packed_at(l, 0), *w1 = packed + packed_at(l, 1), *w2 = packed + packed_at(l, 2);
    float *x1 = scratch, *h = x1 + BLOCK_ROWS * ld_d, *sums = h + BLOCK_ROWS * ld_h, row[ld_d];
    block_product(n, d, d, l->a + at, d, wo, sums, ld_d);
    for (int64_t i = 0; i < n; i++)
        row_layer_norm(d, l->x + at + i * d, sums + i * ld_d, l->scale[0] + g * l->scale_group[0],
                       l->shift[0] + g * l->shift_group[0], l->eps[0], row, x1 + i * ld_d, NULL);
    block_product(n, d, hidden, x1, ld_d, w1, h, ld_h);
    for (int64_t i = 0; i < n; i++)
#pragma omp simd
        for (int64_t j = 0; j < hidden; j++) h[i * ld_h + j] = h[i * ld_h + j] < 0.0f ? 0.0f : h[i * ld_h + j];
    block_product(n, hidden, d, h, ld_h, w2, sums, ld_d);
    for (int64_t i = 0; i < n; i++)
        row_layer_norm(d, x1 + i * ld_d, sums + i * ld_d, l->scale[1] + g * l->scale_group[1],
                       l->shift[1] + g * l->shift_group[1], l->eps[1], row, l->y + at + i * d, NULL);
}

/* Packs every group's weights, then runs the blocks, on `threads` OpenMP threads. All memory is had before the
 * parallel region (a thread that failed inside a worksharing loop would skip its share). Returns 0, or 1 when the
 * memory could not be had. */
static int run_layer(const Layer *l, int threads) {
    threads = threads < 1 ? 1 : threads;
    const int64_t per_group = packed_at(l, 3);
    const int64_t scratch = BLOCK_ROWS * (2 * panels_of(l->d) + panels_of(l->hidden)) * PANEL;
    /* both parts are whole panels of 16 floats, so the size is a multiple of the alignment, as aligned_alloc asks */
    float *memory = aligned_alloc(64, sizeof(float) * (size_t)(l->groups * per_group + threads * scratch));
    if (!memory) return 1;
    float *packed = memory, *scratches = memory + l->groups * per_group;
    const int64_t blocks = (l->rows + BLOCK_ROWS - 1) / BLOCK_ROWS;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t g = 0; g < l->groups; g++)
            for (int j = 0; j < 3; j++)
                pack_weight(l, j, g, packed + g * per_group + packed_at(l, j));
        float *mine = scratches + omp_get_thread_num() * scratch;
#pragma omp for schedule(static) collapse(2)
        for (int64_t g = 0; g < l->groups; g++)
            for (int64_t b = 0; b < blocks; b++) {
                const int64_t first = b * BLOCK_ROWS;
                const int64_t count = l->rows - first < BLOCK_ROWS ? l->rows - first : BLOCK_ROWS;
                layer_block(l, packed + g * per_group, g, first, count, mine);
            }
    }
    free(memory);
    return 0;
}

/* The Layer of `groups` x `rows` rows of width d from the ten parameters in sp_encoder_layer_eval's order (Wo, bo,
 * W1, b1, W2, b2, LN1 scale, LN1 shift, LN2 scale, LN2 shift), parameter j's group stride at group_strides[j * step]. */
static Layer layer_of(int64_t groups, int64_t rows, int64_t d, int64_t hidden, const float *a, const float *x,
                      const float *const ten[10], const int64_t *group_strides, int step, const float *eps, float *y) {
    int64_t s[10];
    for (int j = 0; j < 10; j++) s[j] = group_strides[j * step];
    return (Layer){.groups = groups, .rows = rows, .d = d, .hidden = hidden, .a = a, .x = x,
                   .weight = {ten[0], ten[2], ten[4]}, .bias = {ten[1], ten[3], ten[5]}, .scale = {ten[6], ten[8]},
                   .shift = {ten[7], ten[9]}, .weight_group = {s[0], s[2], s[4]}, .bias_group = {s[1], s[3], s[5]},
                   .scale_group = {s[6], s[8]}, .shift_group = {s[7], s[9]}, .eps = {eps[0], eps[1]}, .y = y};
}

/* shape: groups, rows (per group), d, hidden. tensors: a, x, Wo, bo, W1, b1, W2, b2, LN1 scale, LN1 shift, LN2
 * scale, LN2 shift. strides: between the groups' slices of the ten parameters, in that order. */
int sp_encoder_layer_eval(const int64_t *shape, const float *const *tensors, const int64_t *strides, const float *eps,
                          float *y, int threads) {
    const Layer l = layer_of(shape[0], shape[1], shape[2], shape[3], tensors[0], tensors[1], tensors + 2, strides, 1,
                             eps, y);
    return run_layer(&l, threads);
}

/* ---- Every layer of the stacked encoders in eval, in one call ----
 *
 * For each layer l, as fusion's per-layer calls run them: the queries' projection, feature-major (`run`), the
 * attention's eval path (sha_forward_eval, small_head_attention.c) into a token-major buffer, and the rest of the
 * layer (`run_layer`) written over that buffer, which is the next layer's input. The same kernels in the same order,
 * so the same bits, without the Python that prepared each call (README "What changed at stop 47").
 *
 * dims: layers L, groups M, batch B, steps T, keys Tk, d, hidden, heads. x: the first layer's input (M, B * T, d)
 * contiguous. params: the queries' weight (scaled) and bias, then the ten of sp_encoder_layer_eval in its order, each
 * at params[j] + m * strides[2 j] + l * strides[2 j + 1] for group m and layer l. kv: every layer's keys and values
 * of the memory, (M, L, 2, heads, d / heads, B, Tk) contiguous. mask_by_key: (S, Tk, T) or NULL. buffers: the queries
 * (M, d, B * T), then two (M, B * T, d) that the layers write in turn (layer l into buffers[1 + l % 2]). Returns 0,
 * or the first failing kernel's status (1: memory; 2 to 4: sha_forward_eval's). */
int sha_forward_eval(const int64_t *shape, const int64_t *strides, const float *qt, const float *kt, const float *vt,
                     const uint8_t *mask_by_key, int64_t heads_per_mask, float *out, int threads, int lanes);

int sp_encoder_eval(const int64_t *dims, const float *x, const float *const *params, const int64_t *strides,
                    const float *kv, const uint8_t *mask_by_key, int64_t heads_per_mask, const float *eps,
                    float *const *buffers, int threads, int lanes) {
    const int64_t layers = dims[0], m = dims[1], batch = dims[2], steps = dims[3], keys = dims[4], d = dims[5];
    const int64_t hidden = dims[6], heads = dims[7], hd = d / heads, rows = batch * steps, memory = d * batch * keys;
    const int64_t shape[6] = {m, batch, heads, hd, steps, keys};
    const int64_t layout[20] = {d * rows, steps, hd * rows, rows, 1,                       /* queries (M, B, h, hd, T) */
                                layers * 2 * memory, keys, hd * batch * keys, batch * keys, 1, /* keys */
                                layers * 2 * memory, keys, hd * batch * keys, batch * keys, 1, /* values */
                                rows * d, steps * d, hd, 1, d};                             /* output, token-major */
    const float *in = x;
    for (int64_t l = 0; l < layers; l++) {
        const float *p[12];
        for (int j = 0; j < 12; j++) p[j] = params[j] + l * strides[2 * j + 1];
        float *attended = buffers[1 + l % 2];
        const Product query = {m, d, rows, d, p[0], strides[0], d, 1, in, rows * d, 1, d, p[1], strides[2], 1,
                               buffers[0], d * rows, rows};
        int status = run(&query, threads);
        const float *k = kv + l * 2 * memory;
        if (!status)
            status = sha_forward_eval(shape, layout, buffers[0], k, k + memory, mask_by_key, heads_per_mask, attended,
                                      threads, lanes);
        const Layer rest = layer_of(m, rows, d, hidden, attended, in, p + 2, strides + 4, 2, eps, attended);
        if (!status) status = run_layer(&rest, threads);
        if (status) return status;
        in = attended;
    }
    return 0;
}
