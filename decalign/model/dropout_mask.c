/* Dropout decisions from numpy's PCG64 stream, bit for bit as decalign/model/dropout.py draws them.
 *
 * dropout.py seeds numpy's PCG64 with one draw of torch's generator, takes one byte per element from
 * random_raw (the 64-bit words in order, each word's bytes lowest first, as a signed byte b), keeps an
 * element when b > cut, drops it when b < cut, and for a byte equal to the cut draws a double from the same
 * stream (in element order, after all the words) and keeps it when that double >= fraction. numpy and
 * torch make a mask in five passes over it; this makes it in one. The stream is numpy's PCG64 (XSL-RR
 * output of a 128-bit LCG, stepped before each output), started from the state numpy's own seeding
 * produced; the doubles for ties come from a second cursor jumped past the words (the LCG's jump-ahead).
 * The jump-ahead also lets threads split one mask: each draws its own range of words, then settles its ties
 * from their place in the stream's order of ties (the ReLU dropout of 768,000 elements at MOSI shapes: 0.25 ms
 * on 2 threads against 0.37 ms on one). With the attention's masks in one call besides (sha_dropout_flag_blocks),
 * a training step at MOSI shapes took 7.3 ms less (stop 38: paired median of 40 alternating rounds, faster in 30).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

typedef unsigned __int128 u128;

#define MULTIPLIER (((u128)0x2360ED051FC65DA4ULL << 64) | 0x4385DF649FCCF645ULL)
#define BLOCK_WORDS 64

static inline uint64_t pcg64_output(u128 state) {
    const uint64_t folded = (uint64_t)(state >> 64) ^ (uint64_t)state;
    const unsigned rotation = (unsigned)(state >> 122);
    return (folded >> rotation) | (folded << ((64 - rotation) & 63));
}

static inline uint64_t pcg64_next(u128 *state, u128 increment) {
    *state = *state * MULTIPLIER + increment;
    return pcg64_output(*state);
}

/* The state `steps` LCG steps after `state` (Brown's jump-ahead, O(log steps)). */
static u128 pcg64_jump(u128 state, uint64_t steps, u128 increment) {
    u128 multiplier = MULTIPLIER, accumulated_multiplier = 1, accumulated_increment = 0;
    while (steps) {
        if (steps & 1) {
            accumulated_multiplier *= multiplier;
            accumulated_increment = accumulated_increment * multiplier + increment;
        }
        increment = (multiplier + 1) * increment;
        multiplier *= multiplier;
        steps >>= 1;
    }
    return accumulated_multiplier * state + accumulated_increment;
}

/* CHAINS cursors on one stream, interleaved: cursor c yields words c, c + CHAINS, c + 2 CHAINS, ..., each
 * stepping the LCG CHAINS steps at once (itself an LCG, from the jump-ahead). One cursor is a chain of
 * dependent 128-bit products; CHAINS independent ones overlap (32,500 words: 0.043 ms against 0.057 ms). */
#define CHAINS 4

typedef struct {
    u128 state[CHAINS], multiplier, increment;
} Cursors;

static Cursors cursors_at(u128 state, u128 increment) {
    Cursors cursors;
    for (int c = 0; c < CHAINS; c++) cursors.state[c] = pcg64_jump(state, (uint64_t)c + 1, increment);
    cursors.multiplier = pcg64_jump(1, CHAINS, 0);
    cursors.increment = pcg64_jump(0, CHAINS, increment);
    return cursors;
}

/* The next `count` words of the stream. Only the stream's last call may take a count that is not a multiple
 * of CHAINS (the cursors are out of step after it). */
static void cursors_fill(Cursors *cursors, uint64_t *words, int64_t count) {
    int64_t w = 0;
    for (; w + CHAINS <= count; w += CHAINS)
        for (int c = 0; c < CHAINS; c++) {
            words[w + c] = pcg64_output(cursors->state[c]);
            cursors->state[c] = cursors->state[c] * cursors->multiplier + cursors->increment;
        }
    for (int c = 0; w < count; c++, w++) words[w] = pcg64_output(cursors->state[c]);
}

/* numpy's seeding of PCG64 from a non-negative integer below 2^64, without numpy: SeedSequence(seed) mixes the
 * seed's 32-bit words (lowest first, no leading zero words; 0 is one word) into a pool of four and hashes the
 * pool into four 64-bit words (generate_state(4, uint64)), which PCG64 takes as its initial state (words 0 and 1,
 * high first) and stream (words 2 and 3), stepping the LCG twice as pcg_setseq_128_srandom_r does. In numpy the
 * Python side of this took 37-50 us a mask inside a training step (53 masks a step). */
#define INIT_A 0x43b0d7e5u
#define MULT_A 0x931e8875u
#define INIT_B 0x8b51f9ddu
#define MULT_B 0x58f38dedu
#define MIX_MULT_L 0xca01f9ddu
#define MIX_MULT_R 0x4973f715u

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= MULT_A;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    const uint32_t result = MIX_MULT_L * x - MIX_MULT_R * y;
    return result ^ (result >> 16);
}

void sha_pcg64_seed(uint64_t seed, uint64_t out[4]) {
    const uint32_t entropy[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const int words = seed >> 32 ? 2 : 1;
    uint32_t pool[4], hash_const = INIT_A;
    for (int i = 0; i < 4; i++) pool[i] = hashmix(i < words ? entropy[i] : 0u, &hash_const);
    for (int src = 0; src < 4; src++)
        for (int dst = 0; dst < 4; dst++)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], &hash_const));
    uint32_t state[8], hash_b = INIT_B;
    for (int i = 0; i < 8; i++) {
        uint32_t value = pool[i % 4] ^ hash_b;
        hash_b *= MULT_B;
        value *= hash_b;
        state[i] = value ^ (value >> 16);
    }
    uint64_t w[4];
    for (int i = 0; i < 4; i++) w[i] = (uint64_t)state[2 * i] | ((uint64_t)state[2 * i + 1] << 32);
    const u128 initial = ((u128)w[0] << 64) | w[1], sequence = ((u128)w[2] << 64) | w[3];
    const u128 increment = (sequence << 1) | 1u;
    u128 lcg = 0;
    lcg = lcg * MULTIPLIER + increment;
    lcg += initial;
    lcg = lcg * MULTIPLIER + increment;
    out[0] = (uint64_t)(lcg >> 64);
    out[1] = (uint64_t)lcg;
    out[2] = (uint64_t)(increment >> 64);
    out[3] = (uint64_t)increment;
}

/* What `mask` receives for element i: the mask value (kept_value or 0), or, with an input, the input
 * (through ReLU when asked) times it, as torch multiplies them: dropout applied in the same pass. */
static inline float masked(const float *input, int relu, int64_t i, float value) {
    if (!input) return value;
    const float x = input[i];
    return (relu && x < 0.0f ? 0.0f : x) * value;
}

/* One mask's decisions: where they go and the stream they come from. */
typedef struct {
    u128 state, increment;
    int64_t count;
    int8_t cut;
    double fraction;
    float kept_value;
    float *mask;
    uint8_t *flags;
    const float *input;
    int relu;
} Decisions;

/* The positions, in element order, of the elements whose byte equals the cut (one in 256): they wait for their
 * doubles, which come after all the words of the stream. */
typedef struct {
    int64_t *at, size, capacity;
} Ties;

static int ties_push(Ties *ties, int64_t element) {
    if (ties->size == ties->capacity) {
        const int64_t capacity = ties->capacity ? 2 * ties->capacity : 256;
        int64_t *grown = realloc(ties->at, sizeof(int64_t) * capacity);
        if (!grown) return 1;
        ties->at = grown, ties->capacity = capacity;
    }
    ties->at[ties->size++] = element;
    return 0;
}

static inline void decide(const Decisions *d, int64_t e, int kept) {
    if (d->mask) d->mask[e] = masked(d->input, d->relu, e, kept ? d->kept_value : 0.0f);
    if (d->flags) d->flags[e] = (uint8_t)kept;
}

/* Decides elements [from, to) (`from` on a word, a multiple of 8) from their bytes and lists the tied ones.
 * Returns 1 when the list could not grow. */
static int decide_range(const Decisions *d, int64_t from, int64_t to, Ties *ties) {
    Cursors words_from = cursors_at(pcg64_jump(d->state, (uint64_t)from / 8, d->increment), d->increment);
    /* locals, not d's fields: a byte store may alias the struct, which kept gcc from vectorising (4.5x slower) */
    float *restrict mask = d->mask;
    uint8_t *restrict flags = d->flags;
    const float *restrict input = d->input;
    const float kept_value = d->kept_value;
    const int relu = d->relu;
    const int8_t cut8 = d->cut;
    const __m256i cuts = _mm256_set1_epi8(cut8);
    union { uint64_t words[BLOCK_WORDS]; int8_t bytes[BLOCK_WORDS * 8]; } block;
    int failed = 0;
    for (int64_t start = from; start < to; start += BLOCK_WORDS * 8) {
        const int64_t n = to - start < BLOCK_WORDS * 8 ? to - start : BLOCK_WORDS * 8;
        cursors_fill(&words_from, block.words, (n + 7) / 8);  /* BLOCK_WORDS: a multiple of CHAINS */
        const int8_t *b = block.bytes;  /* little-endian: a word's lowest byte first, as numpy's view */
        if (mask)
            for (int64_t e = 0; e < n; e++)
                mask[start + e] = masked(input, relu, start + e, b[e] >= cut8 ? kept_value : 0.0f);
        if (flags) for (int64_t e = 0; e < n; e++) flags[start + e] = b[e] >= cut8;
        if (d->fraction <= 0) continue;
        for (int64_t chunk = 0; chunk < n; chunk += 32) {  /* ties, 32 bytes at a time, in element order */
            uint32_t tied = (uint32_t)_mm256_movemask_epi8(
                _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(b + chunk)), cuts));
            for (; tied; tied &= tied - 1) {
                const int64_t e = chunk + __builtin_ctz(tied);
                if (e >= n) break;
                failed |= ties_push(ties, start + e);
            }
        }
    }
    return failed;
}

/* Settles the tied elements, the stream's doubles from its `before`-th on (the ties of earlier elements take
 * the ones before): kept when the double >= fraction. */
static void settle_ties(const Decisions *d, const Ties *ties, int64_t before) {
    const uint64_t words = (uint64_t)(d->count + 7) / 8;
    u128 tie_state = pcg64_jump(d->state, words + (uint64_t)before, d->increment);
    for (int64_t t = 0; t < ties->size; t++) {
        const double u = (double)(pcg64_next(&tie_state, d->increment) >> 11) * (1.0 / 9007199254740992.0);
        decide(d, ties->at[t], u >= d->fraction);
    }
}

#define MAX_PARTS 64
#define PARALLEL_FROM (1 << 15)  /* fewer elements stay on one thread */

/* Decides a mask on `threads` OpenMP threads (torch's, see small_head_attention.c), each taking a range of
 * whole words: each lists its ties, and once all have, settles them from its place in the tie order, so the
 * decisions are the stream's whatever the thread count. Returns 1 when a tie list could not grow. */
static int decide_all(const Decisions *d, int threads) {
    int64_t tie_counts[MAX_PARTS] = {0};
    int failed = 0;
    const int64_t words = (d->count + 7) / 8;
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    if (threads < 1 || d->count < PARALLEL_FROM) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1) reduction(| : failed)
    {
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
        const int64_t from = 8 * (words * part / parts), to = 8 * (words * (part + 1) / parts);
        Ties ties = {0};
        failed |= decide_range(d, from, to < d->count ? to : d->count, &ties);
        tie_counts[part] = ties.size;
#pragma omp barrier
        int64_t before = 0;
        for (int64_t p = 0; p < part; p++) before += tie_counts[p];
        settle_ties(d, &ties, before);
        free(ties.at);
    }
    return failed;
}

/* Writes the decisions of `count` elements: into `mask` as kept_value or 0 (float32; with `input`, that
 * times the input, after ReLU when `relu`), or into `flags` as 1 or 0 (bytes); either may be NULL. The
 * state and increment come in 64-bit halves. Returns 0, or 1 when memory ran out (the decisions are then
 * not the stream's). */
int sha_dropout_mask(uint64_t state_high, uint64_t state_low, uint64_t increment_high, uint64_t increment_low,
                     int64_t count, int cut, double fraction, float kept_value, float *mask, uint8_t *flags,
                     const float *input, int relu, int threads) {
    const Decisions d = {((u128)state_high << 64) | state_low, ((u128)increment_high << 64) | increment_low,
                         count, (int8_t)cut /* int(p * 256) - 128, within [-128, 127] for 0 < p < 1 */,
                         fraction, kept_value, mask, flags, input, relu};
    return decide_all(&d, threads);
}

/* The flags (1 kept, 0 dropped) of `blocks` masks, each drawn as sha_dropout_mask draws one from its own
 * seed (numpy's seeding, sha_pcg64_seed) into flags[starts[b] .. starts[b] + counts[b]). The masks are
 * independent streams, so `threads` OpenMP threads (torch's, see small_head_attention.c) take whole blocks
 * and the flags do not depend on the thread count: the attention's decisions, a block of heads each, in
 * one call instead of one per block. Returns 0, or 1 when memory ran out. */
int sha_dropout_flag_blocks(int64_t blocks, const uint64_t *seeds, const int64_t *starts, const int64_t *counts,
                            const int32_t *cuts, const double *fractions, uint8_t *flags, int threads) {
    int failed = 0;
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(dynamic, 1) reduction(| : failed)
    for (int64_t b = 0; b < blocks; b++) {
        uint64_t state[4];
        sha_pcg64_seed(seeds[b], state);
        failed |= sha_dropout_mask(state[0], state[1], state[2], state[3], counts[b], cuts[b], fractions[b], 1.0f,
                                   NULL, flags + starts[b], NULL, 0, 1);
    }
    return failed;
}

/* The gradient of ReLU then dropout from its output: an element passed (output > 0) exactly where its
 * input was positive and it was kept, so grad_in = grad * kept_value there and 0 elsewhere. Split among `threads`
 * OpenMP threads (torch's, see small_head_attention.c) in ranges of whole vectors: a pass over three tensors,
 * which one core's loads and stores did not keep busy. */
void sha_relu_dropout_backward(const float *restrict output, const float *restrict grad, float kept_value,
                               int64_t count, float *restrict grad_in, int threads) {
    /* by hand: gcc keeps the comparison a branch (mispredicted half the time: 4.7 ns an element) */
    const __m256 scale = _mm256_set1_ps(kept_value), zero = _mm256_setzero_ps();
    const int64_t vectors = count / 8;
#pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
    for (int64_t v = 0; v < vectors; v++) {
        const int64_t i = 8 * v;
        const __m256 passed = _mm256_cmp_ps(_mm256_loadu_ps(output + i), zero, _CMP_GT_OQ);
        _mm256_storeu_ps(grad_in + i, _mm256_and_ps(passed, _mm256_mul_ps(_mm256_loadu_ps(grad + i), scale)));
    }
    for (int64_t i = 8 * vectors; i < count; i++) grad_in[i] = output[i] > 0.0f ? grad[i] * kept_value : 0.0f;
}
