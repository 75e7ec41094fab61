/*
 * Native CPU kernels for packed BinaryMoS linear layers, compiled on first use by build.py.
 *
 * Packed signs follow optimum_binarymos/packing.py (format version 1): a uint8 matrix (N, ceil(K / 8)) with
 * row stride ldw; bit j (least significant first) of byte b in row n is the sign of column 8 * b + j,
 * 1 meaning +1 and 0 meaning -1. Padding bits past column K are never used.
 *
 * bmos_linear_f32 computes, for M rows of float32 activations,
 *
 *     g     = softmax(x @ R^T)                  (when the caller passes the router R instead of the gates)
 *     s_in  = g @ S_in,  s_out = g @ S_out      (row 0 of the tables when there is no router)
 *     y     = ((x * s_in) @ sign(W)^T) * s_out + bias
 *
 * without ever expanding sign(W) to floats. With xs = x * s_in,
 *
 *     sum_k xs[k] * sign(W)[n, k] = 2 * sum_{k : bit set} xs[k] - sum_k xs[k],
 *
 * so with AVX2 the inner loop is a masked sum: one variable shift moves each bit onto its lane's sign bit,
 * one blend selects the input or zero, one add accumulates, per 8 weights; the mask of a byte is shared by
 * every row of the tile of activations. (A table of the 256 sign patterns with one FMA per 8 weights
 * measured a little slower.) Weights stay at 1 bit in memory: a 4096 x 4096 matrix is 2 MiB and stays in
 * cache, where a dense float32 GEMV streams 64 MiB from memory.
 * One consequence of the masked sum: an infinite activation gives NaN (inf - inf) where a dense product
 * gives inf.
 *
 * With AVX-512 (and not -DBINARYMOS_NO_AVX512) two bytes of signs are one 16-lane mask and the inner loop is one
 * masked add per 16 weights; the int8 rows widen 16 codes at a time.
 *
 * Without AVX2 (or with -DBINARYMOS_PORTABLE) a plain C loop multiplies by rows of that sign table, which
 * compilers vectorize for any instruction set.
 *
 * bmos_int8_linear_f32 computes y = (x @ Q^T) * scale + bias for an int8 matrix Q with one float scale per
 * row (the 8-bit embeddings and lm_head of packing.py's row layout): each group of 8 weights is widened once
 * and multiplied into every row of the tile of activations.
 *
 * bmos_int4_linear_f32 computes y = sum_g scale[n, g] * (x_g . (Q_g - 8)) + bias for packing.py's 4-bit groups
 * (32 columns per scale, 16 bytes per group, byte i holding column i in its low nibble and column 16 + i in its
 * high one): one 16-byte load widens to two runs of 16 consecutive columns, decoded once to scaled floats and
 * multiplied into every row of the tile of activations.
 *
 * bmos_ternary_f32 computes the packed ternary product of packing.py's "2bit" layout (codes T + 1, 4 per byte,
 * least significant pair first) with per-group scale alpha and shift gamma,
 *
 *     y[m, n] = sum_g alpha[n, g] * (x_g . T[n]_g) + gamma[n, g] * sum(x_g),
 *
 * each byte of codes decoded through a 256-entry table of four trits; the group sums of x are computed once.
 *
 * Output rows are split into tasks shared by the caller and the helper threads of task_pool.h.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "task_pool.h"

#if defined(__AVX2__) && !defined(BINARYMOS_PORTABLE)
#include <immintrin.h>
#define BMOS_AVX2 1
#else
#define BMOS_AVX2 0
#endif

/* With AVX-512 a byte pair of signs is a 16-lane mask register itself: one masked add per 16 weights. */
#if BMOS_AVX2 && defined(__AVX512F__) && !defined(BINARYMOS_NO_AVX512)
#define BMOS_AVX512 1
#else
#define BMOS_AVX512 0
#endif

#define ABI_VERSION 4
/* Rows of activations that share one decoded byte of weights. */
#define MAX_TILE 8
/* Output rows per task of the thread pool; small enough to balance two to a few dozen threads. */
#define ROWS_PER_TASK 16
/* Below this many weight bits times activation rows, waking helper threads costs more than it saves. */
#define PARALLEL_MIN_WORK (1 << 18)

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* End of the output rows of one task of the thread pool: [ROWS_PER_TASK * task, task_end). */
ALWAYS_INLINE int64_t task_end(int64_t task, int64_t rows) {
    return (task + 1) * ROWS_PER_TASK < rows ? (task + 1) * ROWS_PER_TASK : rows;
}

/* Rows of activations handled together (8, 4, 2 or 1, at most `largest`) when `left` remain. */
ALWAYS_INLINE int row_tile(int64_t left, int largest) {
    return left >= 8 && largest >= 8 ? 8 : (left >= 4 ? 4 : (left >= 2 ? 2 : 1));
}

/* Rows of an int8 matrix read ahead of the row being multiplied: the hardware prefetcher stops at page
 * boundaries, and one thread reading a 49152 x 576 int8 head from memory ran 1.6x faster with the rows 8 ahead
 * requested. */
#define ROWS_AHEAD 8

/* Ask for the `bytes` bytes at p, one request per cache line (a prefetch never faults, even past the matrix). */
ALWAYS_INLINE void prefetch_bytes(const void* p, int64_t bytes) {
    for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch((const char*)p + offset);
}

/* SIGNS[byte][j] = +1 or -1: the decoded signs of one packed byte (filled when the library loads). */
static float SIGNS[256][8] __attribute__((aligned(32)));

__attribute__((constructor)) static void fill_sign_table(void) {
    for (int byte = 0; byte < 256; byte++)
        for (int j = 0; j < 8; j++) SIGNS[byte][j] = ((byte >> j) & 1) ? 1.0f : -1.0f;
}

/* TRITS[byte][j] = the trit (-1, 0 or +1) of code pair j of a "2bit" byte; code 3 (never written) reads 0. */
static float TRITS[256][4] __attribute__((aligned(16)));

__attribute__((constructor)) static void fill_trit_table(void) {
    for (int byte = 0; byte < 256; byte++)
        for (int j = 0; j < 4; j++) {
            const int code = (byte >> (2 * j)) & 3;
            TRITS[byte][j] = code == 3 ? 0.0f : (float)(code - 1);
        }
}

int bmos_abi_version(void) { return ABI_VERSION; }

/* 2 when the AVX-512 inner loops were compiled in, 1 for AVX2, 0 for the portable loop. */
int bmos_simd_path(void) { return BMOS_AVX512 ? 2 : BMOS_AVX2; }

#if BMOS_AVX512
/* out[m] = 2 * (sum of xs over set bits) - totals[m], 16 weights per masked add (as the AVX2 loop below). */
ALWAYS_INLINE void signed_sums(const float* xs, int64_t ld, const int mt, const uint8_t* w, int64_t kb,
                               const float* totals, float* out) {
    const int chains = mt == 1 ? 4 : (mt == 2 ? 2 : 1);
    __m512 acc[MAX_TILE][4];
    for (int m = 0; m < mt; m++)
        for (int c = 0; c < chains; c++) acc[m][c] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= kb; b += 8) {
        uint64_t word;
        memcpy(&word, w + b, 8); /* little-endian: bit j of the word is column 8 * b + j */
        for (int i = 0; i < 4; i++) {
            const __mmask16 mask = (__mmask16)(word >> (16 * i));
            for (int m = 0; m < mt; m++) {
                __m512* a = &acc[m][i % chains];
                *a = _mm512_mask_add_ps(*a, mask, *a, _mm512_loadu_ps(xs + m * ld + b * 8 + 16 * i));
            }
        }
    }
    for (; b + 2 <= kb; b += 2) {
        const __mmask16 mask = (__mmask16)(w[b] | (w[b + 1] << 8));
        for (int m = 0; m < mt; m++)
            acc[m][0] = _mm512_mask_add_ps(acc[m][0], mask, acc[m][0], _mm512_loadu_ps(xs + m * ld + b * 8));
    }
    if (b < kb) {
        /* One byte left: a masked load of its 8 columns, never past the row of scaled activations. */
        for (int m = 0; m < mt; m++)
            acc[m][0] = _mm512_mask_add_ps(acc[m][0], (__mmask16)w[b], acc[m][0],
                                           _mm512_maskz_loadu_ps((__mmask16)0x00FF, xs + m * ld + b * 8));
    }
    for (int m = 0; m < mt; m++) {
        __m512 a = acc[m][0];
        for (int c = 1; c < chains; c++) a = _mm512_add_ps(a, acc[m][c]);
        out[m] = 2.0f * _mm512_reduce_add_ps(a) - totals[m];
    }
}

#elif BMOS_AVX2
/*
 * out[m] = sum_k xs[m * ld + k] * sign(w)[k] = 2 * (masked sum) - totals[m], for mt rows of activations
 * (mt is a constant after inlining, so the accumulators live in registers).
 */
ALWAYS_INLINE void signed_sums(const float* xs, int64_t ld, const int mt, const uint8_t* w, int64_t kb,
                               const float* totals, float* out) {
    /* A single row has one dependency chain per byte of a 32-bit word to hide the add latency. */
    const int chains = mt == 1 ? 4 : (mt == 2 ? 2 : 1);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i to_sign_bit[4];
    for (int i = 0; i < 4; i++) to_sign_bit[i] = _mm256_sub_epi32(_mm256_set1_epi32(31 - 8 * i), lanes);
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[MAX_TILE][4];
    for (int m = 0; m < mt; m++)
        for (int c = 0; c < chains; c++) acc[m][c] = zero;

    int64_t b = 0;
    for (; b + 4 <= kb; b += 4) {
        uint32_t word;
        memcpy(&word, w + b, 4); /* little-endian: byte b + i is bits 8i .. 8i + 7 */
        const __m256i bits = _mm256_set1_epi32((int)word);
        for (int i = 0; i < 4; i++) {
            const __m256 mask = _mm256_castsi256_ps(_mm256_sllv_epi32(bits, to_sign_bit[i]));
            for (int m = 0; m < mt; m++) {
                const __m256 x = _mm256_loadu_ps(xs + m * ld + (b + i) * 8);
                acc[m][i % chains] = _mm256_add_ps(acc[m][i % chains], _mm256_blendv_ps(zero, x, mask));
            }
        }
    }
    for (; b < kb; b++) {
        const __m256 mask = _mm256_castsi256_ps(_mm256_sllv_epi32(_mm256_set1_epi32(w[b]), to_sign_bit[0]));
        for (int m = 0; m < mt; m++) {
            const __m256 x = _mm256_loadu_ps(xs + m * ld + b * 8);
            acc[m][0] = _mm256_add_ps(acc[m][0], _mm256_blendv_ps(zero, x, mask));
        }
    }
    for (int m = 0; m < mt; m++) {
        __m256 a = acc[m][0];
        for (int c = 1; c < chains; c++) a = _mm256_add_ps(a, acc[m][c]);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_hadd_ps(s, s);
        s = _mm_hadd_ps(s, s);
        out[m] = 2.0f * _mm_cvtss_f32(s) - totals[m];
    }
}
#else
/* out[m] = sum_k xs[m * ld + k] * sign(w)[k]; written so that compilers vectorize the 8 lanes of a byte. */
ALWAYS_INLINE void signed_sums(const float* xs, int64_t ld, const int mt, const uint8_t* w, int64_t kb,
                               const float* totals, float* out) {
    (void)totals;
    float acc[MAX_TILE][8];
    for (int m = 0; m < mt; m++)
        for (int j = 0; j < 8; j++) acc[m][j] = 0.0f;
    for (int64_t b = 0; b < kb; b++) {
        const float* sign = SIGNS[w[b]];
        for (int m = 0; m < mt; m++) {
            const float* x = xs + m * ld + b * 8;
            for (int j = 0; j < 8; j++) acc[m][j] += x[j] * sign[j];
        }
    }
    for (int m = 0; m < mt; m++) {
        float s = 0.0f;
        for (int j = 0; j < 8; j++) s += acc[m][j];
        out[m] = s;
    }
}
#endif

/* sum_k a[k] * b[k] in float32. */
static float dot_f32(const float* a, const float* b, int64_t K) {
    int64_t k = 0;
    float total = 0.0f;
#if BMOS_AVX2
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (; k + 32 <= K; k += 32)
        for (int i = 0; i < 4; i++)
            acc[i] = _mm256_add_ps(acc[i], _mm256_mul_ps(_mm256_loadu_ps(a + k + 8 * i), _mm256_loadu_ps(b + k + 8 * i)));
    for (; k + 8 <= K; k += 8) acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k)));
    const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    total = _mm_cvtss_f32(s);
#else
    float acc[8] = {0};
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[k + j] * b[k + j];
    for (int j = 0; j < 8; j++) total += acc[j];
#endif
    for (; k < K; k++) total += a[k] * b[k];
    return total;
}

/* gates (E) = softmax(x (K) @ router (E, K)^T), in float32 with the maximum subtracted. */
static void router_softmax(const float* x, const float* router, int64_t E, int64_t K, float* gates) {
    float largest = -INFINITY;
    for (int64_t e = 0; e < E; e++) {
        gates[e] = dot_f32(x, router + e * K, K);
        if (gates[e] > largest) largest = gates[e];
    }
    float total = 0.0f;
    for (int64_t e = 0; e < E; e++) {
        gates[e] = expf(gates[e] - largest);
        total += gates[e];
    }
    for (int64_t e = 0; e < E; e++) gates[e] /= total;
}

/* Mixed scale at position i: sum_e g[e] * table[e * stride + i]; table[i] without gates; 1 without table. */
ALWAYS_INLINE float mixed_scale(const float* g, int64_t e_count, const float* table, int64_t stride,
                                int64_t i) {
    if (table == NULL) return 1.0f;
    if (g == NULL) return table[i];
    float s = 0.0f;
    for (int64_t e = 0; e < e_count; e++) s += g[e] * table[e * stride + i];
    return s;
}

/* One output of a 1-bit product: the signed sum times the token's mixed output scale, plus the bias. */
ALWAYS_INLINE float scaled_output(float sum, const float* g, int64_t E, const float* scale_out, int64_t N,
                                  const float* bias, int64_t n) {
    const float v = sum * mixed_scale(g, E, scale_out, N, n);
    return bias == NULL ? v : v + bias[n];
}

/* What every task of one bmos_linear_f32 call reads (and the output it writes). */
typedef struct {
    const float* xs;     /* (M, ld) scaled activations, zero-padded */
    const float* totals; /* (M,) row sums of xs */
    int64_t M, N, E, kb, ld;
    const float* gates;
    const float* scale_out;
    const float* bias;
    const uint8_t* packed;
    int64_t ldw;
    float* y;
    int64_t ldy;
} linear_context;

/* Output rows [ROWS_PER_TASK * task, ...) for every token. */
static void linear_task(const void* opaque, int64_t task) {
    const linear_context* c = (const linear_context*)opaque;
    const int64_t n_end = task_end(task, c->N);
    for (int64_t n = task * ROWS_PER_TASK; n < n_end; n++) {
        const uint8_t* w = c->packed + n * c->ldw;
        float sums[MAX_TILE];
        int64_t m = 0;
        while (m < c->M) {
            const int64_t left = c->M - m;
            const int mt = row_tile(left, 8);
            const float* rows = c->xs + m * c->ld;
            switch (mt) {
                case 8: signed_sums(rows, c->ld, 8, w, c->kb, c->totals + m, sums); break;
                case 4: signed_sums(rows, c->ld, 4, w, c->kb, c->totals + m, sums); break;
                case 2: signed_sums(rows, c->ld, 2, w, c->kb, c->totals + m, sums); break;
                default: signed_sums(rows, c->ld, 1, w, c->kb, c->totals + m, sums); break;
            }
            for (int i = 0; i < mt; i++) {
                const float* g = c->gates == NULL ? NULL : c->gates + (m + i) * c->E;
                c->y[(m + i) * c->ldy + n] = scaled_output(sums[i], g, c->E, c->scale_out, c->N, c->bias, n);
            }
            m += mt;
        }
    }
}

/*
 * The prologue shared by the 1-bit products: xs (M, ld) = x * s_in, zero-padded from K to ld, and totals (M,) its
 * row sums. Returns the gates (M, E) to mix the output scales with: `gates` as given, else, with a router, the
 * softmax gates computed here into `computed` (M * E floats), else NULL. The prologue is M * K * E multiply-adds
 * against M * N * K / 8 steps of the main loop: serial, but written as loops over k that compilers vectorize (the
 * experts outermost).
 */
static const float* prepare_activations(const float* x, int64_t M, int64_t K, int64_t ldx, const float* gates,
                                        int64_t E, const float* router, const float* scale_in, float* xs, int64_t ld,
                                        float* totals, float* computed) {
    if (gates == NULL && router != NULL) {
        for (int64_t m = 0; m < M; m++) router_softmax(x + m * ldx, router, E, K, computed + m * E);
        gates = computed;
    }
    for (int64_t m = 0; m < M; m++) {
        const float* g = gates == NULL ? NULL : gates + m * E;
        const float* xm = x + m * ldx;
        float* row = xs + m * ld;
        if (scale_in == NULL) {
            for (int64_t k = 0; k < K; k++) row[k] = xm[k];
        } else if (g == NULL) {
            for (int64_t k = 0; k < K; k++) row[k] = xm[k] * scale_in[k];
        } else {
            for (int64_t k = 0; k < K; k++) row[k] = g[0] * scale_in[k];
            for (int64_t e = 1; e < E; e++)
                for (int64_t k = 0; k < K; k++) row[k] += g[e] * scale_in[e * K + k];
            for (int64_t k = 0; k < K; k++) row[k] *= xm[k];
        }
        for (int64_t k = K; k < ld; k++) row[k] = 0.0f;
        float lanes[8] = {0};
        for (int64_t k = 0; k < ld; k += 8)
            for (int j = 0; j < 8; j++) lanes[j] += row[k + j];
        totals[m] = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    }
    return gates;
}

/*
 * y (M, N), row stride ldy, float32 = ((x * s_in) @ sign(W)^T) * s_out + bias.
 *   x (M, K) row stride ldx; gates (M, E) contiguous, or NULL: then with router (E, K) contiguous the gates are
 *   computed here (softmax of x @ router^T), and without it row 0 of the tables is used;
 *   scale_in (E, K), scale_out (E, N) contiguous, or NULL for a scale of 1; bias (N) or NULL;
 *   packed (N, ceil(K / 8)) row stride ldw; num_threads: the caller plus helpers of the pool.
 * Returns 0, or -1 when scratch memory cannot be allocated.
 */
int bmos_linear_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const float* gates, int64_t E,
                    const float* router, const float* scale_in, const float* scale_out, const float* bias, const uint8_t* packed,
                    int64_t N, int64_t ldw, float* y, int64_t ldy, int num_threads) {
    if (M == 0 || N == 0) return 0;
    const int64_t kb = (K + 7) / 8;
    const int64_t ld = kb * 8; /* scaled activations are zero-padded to whole bytes of weights */
    const int route = gates == NULL && router != NULL;
    float* xs = (float*)malloc((size_t)(M * ld + M + (route ? M * E : 0)) * sizeof(float));
    if (xs == NULL) return -1;
    float* totals = xs + M * ld;
    gates = prepare_activations(x, M, K, ldx, gates, E, router, scale_in, xs, ld, totals, totals + M);
    const linear_context context = {xs, totals, M, N, E, kb, ld, gates, scale_out, bias, packed, ldw, y, ldy};
    const int threads = M * N * K >= PARALLEL_MIN_WORK ? num_threads : 1;
    pool_run(linear_task, &context, (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
    free(xs);
    return 0;
}

/*
 * The same product with the scaled activations rounded to int8, one scale per token (the dynamic 8-bit activations
 * of llama.cpp's quantized matmuls and of BitNet): codes q = round(xs * 127 / max|xs|), and
 *
 *     sum_k xs[k] * sign(W)[n, k] ~= (max|xs| / 127) * (2 * sum_{k : bit set} q[k] - sum_k q[k]),
 *
 * the sums exact in int32. With AVX-512 VNNI a 64-bit word of signs selects 64 codes at once: one masked move
 * (ones where the bit is set) and one vpdpbusd add the selected codes into 16 int32 lanes, two instructions per 64
 * weights where the float loop above needs four masked adds. With AVX2 only, 32 signs are spread to 32 bytes of 0 or
 * 1 (one shuffle, one and, one min) and vpmaddubsw / vpmaddwd add the selected codes into 8 int32 lanes. Elsewhere a
 * plain C loop computes the same integers.
 */
#if BMOS_AVX512 && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define BMOS_Q8_VNNI 1
#else
#define BMOS_Q8_VNNI 0
#endif
/* Codes per step of the int8 product (one 64-bit word of signs); rows of codes are zero-padded to a multiple. */
#define Q8_STEP 64
/* Rows of weights and tokens handled together: 8 rows for one token, else up to 4 x 4 independent accumulators. */
#define Q8_ROWS 8
#define Q8_TILE 4
/* Below this many weight bits times tokens, waking helper threads costs more than it saves (the int8 loop does
 * about four times the work of the float loop per cycle, hence a larger bound than PARALLEL_MIN_WORK). */
#define Q8_PARALLEL_MIN_WORK (1 << 21)

/* 2 when the int8-activation product runs the AVX-512 VNNI loop, 1 for the AVX2 loop, 0 for the plain C loop. */
int bmos_q8_simd_path(void) { return BMOS_Q8_VNNI ? 2 : BMOS_AVX2; }

/* q (ldq) = round(xs * 127 / max|xs|) over ld columns, zero past them; returns the token's scale max|xs| / 127
 * (0 for a zero row) and writes the sum of the codes to *total. `sum`, the float row sum of xs, tells a row holding
 * a NaN or an infinity (max ignores NaN; the sum does not): its scale is NaN, so all its outputs are NaN. */
static float quantize_token(const float* xs, int64_t ld, float sum, int8_t* q, int64_t ldq, int32_t* total) {
    memset(q, 0, (size_t)ldq);
    *total = 0;
    if (!isfinite(sum)) return NAN;
    float largest = 0.0f;
    int64_t k = 0;
#if BMOS_Q8_VNNI
    __m512 top = _mm512_setzero_ps();
    for (; k + 16 <= ld; k += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(xs + k)));
    largest = _mm512_reduce_max_ps(top);
#endif
    for (; k < ld; k++) largest = fmaxf(largest, fabsf(xs[k]));
    if (largest == 0.0f) return 0.0f;
    const float inverse = 127.0f / largest;
    int32_t codes_sum = 0;
    k = 0;
#if BMOS_Q8_VNNI
    /* cvtps rounds to nearest even, as nearbyintf does in the default rounding mode */
    __m512i sums = _mm512_setzero_si512();
    for (; k + 16 <= ld; k += 16) {
        const __m512i codes = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xs + k), _mm512_set1_ps(inverse)));
        _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtsepi32_epi8(codes));
        sums = _mm512_add_epi32(sums, codes);
    }
    codes_sum = _mm512_reduce_add_epi32(sums);
#endif
    for (; k < ld; k++) {
        const int32_t code = (int32_t)nearbyintf(xs[k] * inverse);
        q[k] = (int8_t)code;
        codes_sum += code;
    }
    *total = codes_sum;
    return largest / 127.0f;
}

/* sums[r * Q8_TILE + m] = sum of the codes of token m over the set bits of row r, for `rows` rows of signs
 * (stride ldw, kb bytes each) and `mt` tokens of codes (stride ldq). */
ALWAYS_INLINE void selected_codes(const int8_t* q, int64_t ldq, const int mt, const uint8_t* w, int64_t ldw,
                                  const int rows, int64_t kb, int32_t* sums) {
#if BMOS_Q8_VNNI
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i acc[Q8_ROWS][Q8_TILE];
    for (int r = 0; r < rows; r++)
        for (int m = 0; m < mt; m++) acc[r][m] = _mm512_setzero_si512();
    const int64_t words = kb / 8;
    for (int64_t s = 0; s < words; s++) {
        __m512i codes[Q8_TILE];
        for (int m = 0; m < mt; m++) codes[m] = _mm512_loadu_si512(q + m * ldq + Q8_STEP * s);
        for (int r = 0; r < rows; r++) {
            uint64_t word; /* little-endian: bit j is column 64 * s + j */
            memcpy(&word, w + r * ldw + 8 * s, 8);
            /* Each cache line of this row, once: the same line two tiles of rows ahead, which crosses the page
             * boundaries the hardware prefetcher stops at (one token, 4096 x 4096 from memory: 1.7x faster). */
            if (s % 8 == 0) __builtin_prefetch(w + (r + 2 * rows) * ldw + 8 * s);
            const __m512i selected = _mm512_maskz_mov_epi8((__mmask64)word, ones);
            for (int m = 0; m < mt; m++) acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], selected, codes[m]);
        }
    }
    if (kb > 8 * words) { /* the last bytes of each row, as a word zero past the row */
        const size_t left = (size_t)(kb - 8 * words);
        for (int r = 0; r < rows; r++) {
            uint64_t word = 0;
            memcpy(&word, w + r * ldw + 8 * words, left);
            const __m512i selected = _mm512_maskz_mov_epi8((__mmask64)word, ones);
            for (int m = 0; m < mt; m++)
                acc[r][m] = _mm512_dpbusd_epi32(acc[r][m], selected,
                                                _mm512_loadu_si512(q + m * ldq + Q8_STEP * words));
        }
    }
    for (int m = 0; m < mt; m++) {
        if (rows % 4 == 0) {
            for (int r = 0; r < rows; r += 4) { /* four rows' lane sums at once: three horizontal adds */
                __m256i half[4];
                for (int i = 0; i < 4; i++)
                    half[i] = _mm256_add_epi32(_mm512_castsi512_si256(acc[r + i][m]),
                                               _mm512_extracti64x4_epi64(acc[r + i][m], 1));
                const __m256i quad = _mm256_hadd_epi32(_mm256_hadd_epi32(half[0], half[1]),
                                                       _mm256_hadd_epi32(half[2], half[3]));
                const __m128i four = _mm_add_epi32(_mm256_castsi256_si128(quad), _mm256_extracti128_si256(quad, 1));
                int32_t lanes[4];
                _mm_storeu_si128((__m128i*)lanes, four);
                for (int i = 0; i < 4; i++) sums[(r + i) * Q8_TILE + m] = lanes[i];
            }
        } else {
            for (int r = 0; r < rows; r++) sums[r * Q8_TILE + m] = _mm512_reduce_add_epi32(acc[r][m]);
        }
    }
#elif BMOS_AVX2
    /* byte j of a 32-bit word of signs goes to lanes 8j .. 8j + 7 (the broadcast word is in both 128-bit halves) */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i lane_bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i acc[Q8_ROWS][Q8_TILE];
    for (int r = 0; r < rows; r++)
        for (int m = 0; m < mt; m++) acc[r][m] = _mm256_setzero_si256();
    const int64_t steps = (kb + 3) / 4; /* 32 codes each; codes are zero past the row, up to ldq */
    for (int64_t s = 0; s < steps; s++) {
        __m256i codes[Q8_TILE];
        for (int m = 0; m < mt; m++) codes[m] = _mm256_loadu_si256((const __m256i*)(q + m * ldq + 32 * s));
        const int whole = kb - 4 * s >= 4; /* the last word of a row may be partial: never read past its bytes */
        for (int r = 0; r < rows; r++) {
            uint32_t word = 0; /* little-endian: bit j is column 32 * s + j */
            if (whole) {
                memcpy(&word, w + r * ldw + 4 * s, 4);
            } else {
                memcpy(&word, w + r * ldw + 4 * s, (size_t)(kb - 4 * s));
            }
            if (s % 16 == 0) __builtin_prefetch(w + (r + 2 * rows) * ldw + 4 * s);
            const __m256i bits = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)word), spread), lane_bit);
            const __m256i selected = _mm256_min_epu8(bits, ones8); /* 1 where the sign bit is set, else 0 */
            for (int m = 0; m < mt; m++) {
                const __m256i pairs = _mm256_maddubs_epi16(selected, codes[m]); /* |pair| <= 254: no saturation */
                acc[r][m] = _mm256_add_epi32(acc[r][m], _mm256_madd_epi16(pairs, ones16));
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int m = 0; m < mt; m++) {
            __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc[r][m]), _mm256_extracti128_si256(acc[r][m], 1));
            v = _mm_hadd_epi32(v, v);
            v = _mm_hadd_epi32(v, v);
            sums[r * Q8_TILE + m] = _mm_cvtsi128_si32(v);
        }
#else
    (void)ldq;
    for (int r = 0; r < rows; r++)
        for (int m = 0; m < mt; m++) {
            const int8_t* codes = q + m * ldq;
            int32_t sum = 0;
            for (int64_t b = 0; b < kb; b++) {
                const int bits = w[r * ldw + b];
                for (int j = 0; j < 8; j++) sum += ((bits >> j) & 1) ? codes[8 * b + j] : 0;
            }
            sums[r * Q8_TILE + m] = sum;
        }
#endif
}

/* What every task of one bmos_linear_q8_f32 call reads (and the output it writes). */
typedef struct {
    const int8_t* q;       /* (M, ldq) codes */
    const float* qscale;   /* (M,) */
    const int32_t* qtotal; /* (M,) */
    int64_t M, N, E, kb, ldq;
    const float* gates;
    const float* scale_out;
    const float* bias;
    const uint8_t* packed;
    int64_t ldw;
    float* y;
    int64_t ldy;
} q8_context;

/* Output rows [ROWS_PER_TASK * task, ...) for every token. */
static void q8_task(const void* opaque, int64_t task) {
    const q8_context* c = (const q8_context*)opaque;
    const int64_t n_end = task_end(task, c->N);
    int32_t sums[Q8_ROWS * Q8_TILE];
    for (int64_t n = task * ROWS_PER_TASK; n < n_end;) {
        const int64_t left = n_end - n;
        const int rows = c->M == 1 && left >= 8 ? 8 : (left >= 4 ? 4 : 1);
        const uint8_t* w = c->packed + n * c->ldw;
        for (int64_t m = 0; m < c->M;) {
            const int mt = c->M - m >= 4 ? 4 : (c->M - m >= 2 ? 2 : 1);
            const int8_t* q = c->q + m * c->ldq;
            /* constant tile shapes, so that the accumulators stay in registers */
            if (rows == 8) {
                selected_codes(q, c->ldq, 1, w, c->ldw, 8, c->kb, sums);
            } else if (rows == 4) {
                switch (mt) {
                    case 4: selected_codes(q, c->ldq, 4, w, c->ldw, 4, c->kb, sums); break;
                    case 2: selected_codes(q, c->ldq, 2, w, c->ldw, 4, c->kb, sums); break;
                    default: selected_codes(q, c->ldq, 1, w, c->ldw, 4, c->kb, sums); break;
                }
            } else {
                switch (mt) {
                    case 4: selected_codes(q, c->ldq, 4, w, c->ldw, 1, c->kb, sums); break;
                    case 2: selected_codes(q, c->ldq, 2, w, c->ldw, 1, c->kb, sums); break;
                    default: selected_codes(q, c->ldq, 1, w, c->ldw, 1, c->kb, sums); break;
                }
            }
            for (int r = 0; r < rows; r++)
                for (int i = 0; i < mt; i++) {
                    const int64_t token = m + i, row = n + r;
                    const float* g = c->gates == NULL ? NULL : c->gates + token * c->E;
                    const float sum = c->qscale[token] * (float)(2 * sums[r * Q8_TILE + i] - c->qtotal[token]);
                    c->y[token * c->ldy + row] = scaled_output(sum, g, c->E, c->scale_out, c->N, c->bias, row);
                }
            m += mt;
        }
        n += rows;
    }
}

/*
 * bmos_linear_f32 (same arguments, same result up to the rounding of the activations) with the scaled activations
 * x * s_in rounded to int8 per token before the product with the signs. Returns 0, or -1 when scratch memory
 * cannot be allocated.
 */
int bmos_linear_q8_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const float* gates, int64_t E,
                       const float* router, const float* scale_in, const float* scale_out, const float* bias,
                       const uint8_t* packed, int64_t N, int64_t ldw, float* y, int64_t ldy, int num_threads) {
    if (M == 0 || N == 0) return 0;
    const int64_t kb = (K + 7) / 8;
    const int64_t ld = kb * 8;
    const int64_t ldq = (ld + Q8_STEP - 1) / Q8_STEP * Q8_STEP;
    const int route = gates == NULL && router != NULL;
    const size_t floats = (size_t)(M * ld + 2 * M + (route ? M * E : 0));
    /* one block: floats (xs, totals, scales, computed gates), then int32 code totals, then the codes */
    char* scratch = (char*)malloc(floats * sizeof(float) + (size_t)M * sizeof(int32_t) + (size_t)(M * ldq) + 64);
    if (scratch == NULL) return -1;
    float* xs = (float*)scratch;
    float* totals = xs + M * ld;
    float* qscale = totals + M;
    int32_t* qtotal = (int32_t*)(xs + floats);
    int8_t* q = (int8_t*)(qtotal + M);
    gates = prepare_activations(x, M, K, ldx, gates, E, router, scale_in, xs, ld, totals, qscale + M);
    for (int64_t m = 0; m < M; m++) qscale[m] = quantize_token(xs + m * ld, ld, totals[m], q + m * ldq, ldq, qtotal + m);
    const q8_context context = {q, qscale, qtotal, M, N, E, kb, ldq, gates, scale_out, bias, packed, ldw, y, ldy};
    const int threads = M * N * K >= Q8_PARALLEL_MIN_WORK ? num_threads : 1;
    pool_run(q8_task, &context, (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
    free(scratch);
    return 0;
}

typedef struct {
    const uint8_t* packed;
    int64_t rows, K, ldw;
    float* out;
} unpack_context;

static void unpack_task(const void* opaque, int64_t task) {
    const unpack_context* c = (const unpack_context*)opaque;
    const int64_t n_end = (task + 1) * ROWS_PER_TASK < c->rows ? (task + 1) * ROWS_PER_TASK : c->rows;
    for (int64_t n = task * ROWS_PER_TASK; n < n_end; n++) {
        const uint8_t* w = c->packed + n * c->ldw;
        float* o = c->out + n * c->K;
        int64_t k = 0;
        for (; k + 8 <= c->K; k += 8) memcpy(o + k, SIGNS[w[k / 8]], 8 * sizeof(float));
        for (; k < c->K; k++) o[k] = SIGNS[w[k / 8]][k % 8];
    }
}

/* out (rows, K) float32, contiguous = +1 / -1 decoded from packed (rows, ceil(K / 8)) with row stride ldw. */
void bmos_unpack_f32(const uint8_t* packed, int64_t rows, int64_t K, int64_t ldw, float* out,
                     int num_threads) {
    const unpack_context context = {packed, rows, K, ldw, out};
    const int threads = rows * K >= PARALLEL_MIN_WORK ? num_threads : 1;
    pool_run(unpack_task, &context, (rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
}

/* What every task of one bmos_int8_linear_f32 call reads (and the output it writes). */
typedef struct {
    const float* x;
    int64_t M, K, ldx;
    const int8_t* q;
    int64_t ldq;
    const float* scale;
    const float* bias;
    int64_t N;
    float* y;
    int64_t ldy;
} int8_context;

#if BMOS_AVX2
#ifdef __FMA__
#define BMOS_MULADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#else
#define BMOS_MULADD(a, b, c) _mm256_add_ps(_mm256_mul_ps(a, b), c)
#endif
#endif

#if BMOS_AVX512
/* out[m] = sum_k x[m * ld + k] * q[k] for mt rows, 16 codes widened per step. */
ALWAYS_INLINE void int8_dots(const float* x, int64_t ld, const int mt, const int8_t* q, int64_t K, float* out) {
    const int chains = mt == 1 ? 4 : (mt == 2 ? 2 : 1);
    __m512 acc[MAX_TILE][4];
    for (int m = 0; m < mt; m++)
        for (int c = 0; c < chains; c++) acc[m][c] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        for (int i = 0; i < 4; i++) {
            const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k + 16 * i))));
            for (int m = 0; m < mt; m++)
                acc[m][i % chains] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ld + k + 16 * i), w, acc[m][i % chains]);
        }
    }
    for (; k + 16 <= K; k += 16) {
        const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k))));
        for (int m = 0; m < mt; m++) acc[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ld + k), w, acc[m][0]);
    }
    for (int m = 0; m < mt; m++) {
        __m512 a = acc[m][0];
        for (int c = 1; c < chains; c++) a = _mm512_add_ps(a, acc[m][c]);
        float total = _mm512_reduce_add_ps(a);
        for (int64_t j = k; j < K; j++) total += x[m * ld + j] * (float)q[j];
        out[m] = total;
    }
}
#elif BMOS_AVX2
/* out[m] = sum_k x[m * ld + k] * q[k] for mt rows (mt constant after inlining). */
ALWAYS_INLINE void int8_dots(const float* x, int64_t ld, const int mt, const int8_t* q, int64_t K, float* out) {
    const int chains = mt == 1 ? 4 : (mt == 2 ? 2 : 1);
    __m256 acc[MAX_TILE][4];
    for (int m = 0; m < mt; m++)
        for (int c = 0; c < chains; c++) acc[m][c] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int i = 0; i < 4; i++) {
            const __m128i bytes = _mm_loadl_epi64((const __m128i*)(q + k + 8 * i));
            const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            for (int m = 0; m < mt; m++)
                acc[m][i % chains] =
                    BMOS_MULADD(_mm256_loadu_ps(x + m * ld + k + 8 * i), w, acc[m][i % chains]);
        }
    }
    for (; k + 8 <= K; k += 8) {
        const __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k))));
        for (int m = 0; m < mt; m++) acc[m][0] = BMOS_MULADD(_mm256_loadu_ps(x + m * ld + k), w, acc[m][0]);
    }
    for (int m = 0; m < mt; m++) {
        __m256 a = acc[m][0];
        for (int c = 1; c < chains; c++) a = _mm256_add_ps(a, acc[m][c]);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_hadd_ps(s, s);
        s = _mm_hadd_ps(s, s);
        float total = _mm_cvtss_f32(s);
        for (int64_t j = k; j < K; j++) total += x[m * ld + j] * (float)q[j];
        out[m] = total;
    }
}
#else
ALWAYS_INLINE void int8_dots(const float* x, int64_t ld, const int mt, const int8_t* q, int64_t K, float* out) {
    for (int m = 0; m < mt; m++) {
        float acc[8] = {0};
        int64_t k = 0;
        for (; k + 8 <= K; k += 8)
            for (int j = 0; j < 8; j++) acc[j] += x[m * ld + k + j] * (float)q[k + j];
        float total = 0.0f;
        for (int j = 0; j < 8; j++) total += acc[j];
        for (; k < K; k++) total += x[m * ld + k] * (float)q[k];
        out[m] = total;
    }
}
#endif

static void int8_task(const void* opaque, int64_t task) {
    const int8_context* c = (const int8_context*)opaque;
    const int64_t n_end = task_end(task, c->N);
    for (int64_t n = task * ROWS_PER_TASK; n < n_end; n++) {
        const int8_t* q = c->q + n * c->ldq;
        prefetch_bytes(q + ROWS_AHEAD * c->ldq, c->K);
        float sums[MAX_TILE];
        int64_t m = 0;
        while (m < c->M) {
            const int64_t left = c->M - m;
            const int mt = row_tile(left, 8);
            const float* rows = c->x + m * c->ldx;
            switch (mt) {
                case 8: int8_dots(rows, c->ldx, 8, q, c->K, sums); break;
                case 4: int8_dots(rows, c->ldx, 4, q, c->K, sums); break;
                case 2: int8_dots(rows, c->ldx, 2, q, c->K, sums); break;
                default: int8_dots(rows, c->ldx, 1, q, c->K, sums); break;
            }
            for (int i = 0; i < mt; i++) {
                float v = sums[i] * c->scale[n];
                if (c->bias != NULL) v += c->bias[n];
                c->y[(m + i) * c->ldy + n] = v;
            }
            m += mt;
        }
    }
}

/*
 * y (M, N), row stride ldy, float32 = (x @ Q^T) * scale + bias.
 *   x (M, K) row stride ldx; q int8 (N, K) row stride ldq; scale (N) float32; bias (N) or NULL.
 */
void bmos_int8_linear_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const int8_t* q, int64_t N,
                          int64_t ldq, const float* scale, const float* bias, float* y, int64_t ldy,
                          int num_threads) {
    if (M == 0 || N == 0) return;
    const int8_context context = {x, M, K, ldx, q, ldq, scale, bias, N, y, ldy};
    const int threads = M * N * K >= PARALLEL_MIN_WORK / 8 ? num_threads : 1;
    pool_run(int8_task, &context, (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
}

/* What every task of one bmos_ternary_f32 call reads (and the output it writes). */
typedef struct {
    const float* xs;     /* (M, G * gs) activations, zero-padded to whole groups */
    const float* sums;   /* (M, G) group sums of xs */
    int64_t M, K, G, gs;
    const uint8_t* codes;
    int64_t ldc;
    const float* scale;  /* (N, G) */
    const float* shift;  /* (N, G) */
    int64_t N;
    float* y;
    int64_t ldy;
} ternary_context;

/*
 * out[m] = x_m . trits over the first `valid` columns of one group, for mt rows of activations. Only the
 * ceil(valid / 4) bytes of codes that exist are read (the last group of a row may be partial); x is zero past them.
 */
ALWAYS_INLINE void trit_dots(const float* x, int64_t ld, const int mt, const uint8_t* codes, int64_t valid, float* out) {
    int64_t k = 0;
#if BMOS_AVX2
    __m256 acc[MAX_TILE];
    for (int m = 0; m < mt; m++) acc[m] = _mm256_setzero_ps();
    for (; k + 8 <= valid; k += 8) {
        const uint8_t* pair = codes + k / 4;
        const __m256 w = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_load_ps(TRITS[pair[0]])),
                                              _mm_load_ps(TRITS[pair[1]]), 1);
        for (int m = 0; m < mt; m++) acc[m] = BMOS_MULADD(_mm256_loadu_ps(x + m * ld + k), w, acc[m]);
    }
    for (int m = 0; m < mt; m++) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
        s = _mm_hadd_ps(s, s);
        s = _mm_hadd_ps(s, s);
        out[m] = _mm_cvtss_f32(s);
    }
#else
    for (int m = 0; m < mt; m++) out[m] = 0.0f;
#endif
    /* The rest, four columns per byte (all of it without AVX2). */
    const int64_t start = k;
    for (int m = 0; m < mt; m++) {
        float acc[4] = {0};
        for (k = start; k < valid; k += 4) {
            const float* t = TRITS[codes[k / 4]];
            for (int j = 0; j < 4; j++) acc[j] += x[m * ld + k + j] * t[j];
        }
        out[m] += acc[0] + acc[1] + acc[2] + acc[3];
    }
}

static void ternary_task(const void* opaque, int64_t task) {
    const ternary_context* c = (const ternary_context*)opaque;
    const int64_t ld = c->G * c->gs;
    const int64_t n_end = task_end(task, c->N);
    for (int64_t n = task * ROWS_PER_TASK; n < n_end; n++) {
        const uint8_t* row = c->codes + n * c->ldc;
        int64_t m = 0;
        while (m < c->M) {
            const int64_t left = c->M - m;
            const int mt = row_tile(left, 4);
            float totals[MAX_TILE] = {0};
            float dots[MAX_TILE];
            for (int64_t g = 0; g < c->G; g++) {
                const float* rows = c->xs + m * ld + g * c->gs;
                const uint8_t* group = row + g * c->gs / 4;
                const int64_t valid = c->K - g * c->gs < c->gs ? c->K - g * c->gs : c->gs;
                switch (mt) {
                    case 4: trit_dots(rows, ld, 4, group, valid, dots); break;
                    case 2: trit_dots(rows, ld, 2, group, valid, dots); break;
                    default: trit_dots(rows, ld, 1, group, valid, dots); break;
                }
                const float alpha = c->scale[n * c->G + g], gamma = c->shift[n * c->G + g];
                for (int i = 0; i < mt; i++) totals[i] += alpha * dots[i] + gamma * c->sums[(m + i) * c->G + g];
            }
            for (int i = 0; i < mt; i++) c->y[(m + i) * c->ldy + n] = totals[i];
            m += mt;
        }
    }
}

/*
 * y (M, N), row stride ldy, float32 = sum_g alpha_g * (x_g @ T_g^T) + gamma_g * sum(x_g).
 *   x (M, K) row stride ldx; codes (N, ceil(K / 4)) "2bit" bytes, row stride ldc, padding codes 1 (zero trits);
 *   scale, shift (N, G) contiguous with G = ceil(K / gs); gs a multiple of 8.
 * Returns 0, -1 when scratch memory cannot be allocated, -2 for a group size that is not a multiple of 8.
 */
int bmos_ternary_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const uint8_t* codes, int64_t N,
                     int64_t ldc, const float* scale, const float* shift, int64_t G, int64_t gs, float* y,
                     int64_t ldy, int num_threads) {
    if (gs <= 0 || gs % 8 != 0) return -2;
    if (M == 0 || N == 0) return 0;
    const int64_t ld = G * gs;
    float* xs = (float*)malloc((size_t)(M * ld + M * G) * sizeof(float));
    if (xs == NULL) return -1;
    float* sums = xs + M * ld;
    for (int64_t m = 0; m < M; m++) {
        float* row = xs + m * ld;
        memcpy(row, x + m * ldx, (size_t)K * sizeof(float));
        for (int64_t k = K; k < ld; k++) row[k] = 0.0f;
        for (int64_t g = 0; g < G; g++) {
            float total = 0.0f;
            for (int64_t k = 0; k < gs; k++) total += row[g * gs + k];
            sums[m * G + g] = total;
        }
    }
    const ternary_context context = {xs, sums, M, K, G, gs, codes, ldc, scale, shift, N, y, ldy};
    const int threads = M * N * K >= PARALLEL_MIN_WORK / 8 ? num_threads : 1;
    pool_run(ternary_task, &context, (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
    free(xs);
    return 0;
}

/* What every task of one bmos_int4_linear_f32 call reads (and the output it writes). */
typedef struct {
    const float* x;
    int64_t M, K, ldx;
    const uint8_t* q;
    int64_t ldq;
    const float* scale; /* (N, G) contiguous, G = ceil(K / 32) */
    int64_t G;
    const float* bias;
    int64_t N;
    float* y;
    int64_t ldy;
} int4_context;

#define GROUP4 32

/* sum over the `valid` (< 32) columns of one partial group: x . (codes - 8) * scale, for mt rows, added to out. */
ALWAYS_INLINE void int4_partial_group(const float* x, int64_t ld, const int mt, const uint8_t* q, float scale,
                                      int64_t valid, float* out) {
    for (int m = 0; m < mt; m++) {
        float total = 0.0f;
        for (int64_t k = 0; k < valid; k++) {
            const int code = k < GROUP4 / 2 ? (q[k] & 15) : (q[k - GROUP4 / 2] >> 4);
            total += x[m * ld + k] * (float)(code - 8);
        }
        out[m] += total * scale;
    }
}

#if BMOS_AVX512
/* Group g of a row of 4-bit codes as scaled floats: columns 0-15 in *w0, 16-31 in *w1. */
ALWAYS_INLINE void int4_decode_group(const uint8_t* q, const float* scale, int64_t g, __m512* w0, __m512* w1) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(q + g * GROUP4 / 2)));
    const __m512 s = _mm512_set1_ps(scale[g]);
    const __m512 offset = _mm512_set1_ps(-8.0f * scale[g]);
    *w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15))), s, offset);
    *w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s, offset);
}

/* out[m] = sum_k x[m * ld + k] * value[k] over one row of 4-bit groups, for mt rows of activations. */
ALWAYS_INLINE void int4_dots(const float* x, int64_t ld, const int mt, const uint8_t* q, const float* scale,
                             int64_t K, float* out) {
    /* Two chains per row (low and high half of a group); one row alternates two pairs, so that it does not wait
       on FMA latency. */
    __m512 acc[MAX_TILE][2];
    for (int m = 0; m < mt; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    const int64_t full = K / GROUP4;
    int64_t g = 0;
    if (mt == 1) {
        __m512 more0 = _mm512_setzero_ps(), more1 = _mm512_setzero_ps();
        for (; g + 2 <= full; g += 2) {
            __m512 w0, w1, w2, w3;
            int4_decode_group(q, scale, g, &w0, &w1);
            int4_decode_group(q, scale, g + 1, &w2, &w3);
            const float* xg = x + g * GROUP4;
            acc[0][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xg), w0, acc[0][0]);
            acc[0][1] = _mm512_fmadd_ps(_mm512_loadu_ps(xg + 16), w1, acc[0][1]);
            more0 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + 32), w2, more0);
            more1 = _mm512_fmadd_ps(_mm512_loadu_ps(xg + 48), w3, more1);
        }
        acc[0][0] = _mm512_add_ps(acc[0][0], more0);
        acc[0][1] = _mm512_add_ps(acc[0][1], more1);
    }
    for (; g < full; g++) {
        __m512 w0, w1;
        int4_decode_group(q, scale, g, &w0, &w1);
        for (int m = 0; m < mt; m++) {
            const float* xg = x + m * ld + g * GROUP4;
            acc[m][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xg), w0, acc[m][0]);
            acc[m][1] = _mm512_fmadd_ps(_mm512_loadu_ps(xg + 16), w1, acc[m][1]);
        }
    }
    for (int m = 0; m < mt; m++) out[m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
    if (full * GROUP4 < K)
        int4_partial_group(x + full * GROUP4, ld, mt, q + full * GROUP4 / 2, scale[full], K - full * GROUP4, out);
}
#elif BMOS_AVX2
ALWAYS_INLINE void int4_dots(const float* x, int64_t ld, const int mt, const uint8_t* q, const float* scale,
                             int64_t K, float* out) {
    /* Four chains per row: columns 0-7, 8-15, 16-23 and 24-31 of each group. */
    __m256 acc[MAX_TILE][4];
    for (int m = 0; m < mt; m++)
        for (int c = 0; c < 4; c++) acc[m][c] = _mm256_setzero_ps();
    const int64_t full = K / GROUP4;
    const __m256i low = _mm256_set1_epi32(15);
    for (int64_t g = 0; g < full; g++) {
        const uint8_t* bytes = q + g * GROUP4 / 2;
        const __m256 s = _mm256_set1_ps(scale[g]);
        const __m256 offset = _mm256_set1_ps(-8.0f * scale[g]);
        const __m256i v0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)bytes));
        const __m256i v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(bytes + 8)));
        __m256 w[4];
        w[0] = BMOS_MULADD(_mm256_cvtepi32_ps(_mm256_and_si256(v0, low)), s, offset);
        w[1] = BMOS_MULADD(_mm256_cvtepi32_ps(_mm256_and_si256(v1, low)), s, offset);
        w[2] = BMOS_MULADD(_mm256_cvtepi32_ps(_mm256_srli_epi32(v0, 4)), s, offset);
        w[3] = BMOS_MULADD(_mm256_cvtepi32_ps(_mm256_srli_epi32(v1, 4)), s, offset);
        for (int m = 0; m < mt; m++) {
            const float* xg = x + m * ld + g * GROUP4;
            for (int c = 0; c < 4; c++) acc[m][c] = BMOS_MULADD(_mm256_loadu_ps(xg + 8 * c), w[c], acc[m][c]);
        }
    }
    for (int m = 0; m < mt; m++) {
        const __m256 a = _mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3]));
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        t = _mm_hadd_ps(t, t);
        t = _mm_hadd_ps(t, t);
        out[m] = _mm_cvtss_f32(t);
    }
    if (full * GROUP4 < K)
        int4_partial_group(x + full * GROUP4, ld, mt, q + full * GROUP4 / 2, scale[full], K - full * GROUP4, out);
}
#else
ALWAYS_INLINE void int4_dots(const float* x, int64_t ld, const int mt, const uint8_t* q, const float* scale,
                             int64_t K, float* out) {
    for (int m = 0; m < mt; m++) out[m] = 0.0f;
    const int64_t groups = (K + GROUP4 - 1) / GROUP4;
    for (int64_t g = 0; g < groups; g++) {
        const int64_t valid = K - g * GROUP4 < GROUP4 ? K - g * GROUP4 : GROUP4;
        int4_partial_group(x + g * GROUP4, ld, mt, q + g * GROUP4 / 2, scale[g], valid, out);
    }
}
#endif

static void int4_task(const void* opaque, int64_t task) {
    const int4_context* c = (const int4_context*)opaque;
    const int64_t n_end = task_end(task, c->N);
    for (int64_t n = task * ROWS_PER_TASK; n < n_end; n++) {
        const uint8_t* q = c->q + n * c->ldq;
        const float* scale = c->scale + n * c->G;
        float sums[MAX_TILE];
        int64_t m = 0;
        while (m < c->M) {
            const int mt = row_tile(c->M - m, 8);
            const float* rows = c->x + m * c->ldx;
            switch (mt) {
                case 8: int4_dots(rows, c->ldx, 8, q, scale, c->K, sums); break;
                case 4: int4_dots(rows, c->ldx, 4, q, scale, c->K, sums); break;
                case 2: int4_dots(rows, c->ldx, 2, q, scale, c->K, sums); break;
                default: int4_dots(rows, c->ldx, 1, q, scale, c->K, sums); break;
            }
            for (int i = 0; i < mt; i++)
                c->y[(m + i) * c->ldy + n] = c->bias != NULL ? sums[i] + c->bias[n] : sums[i];
            m += mt;
        }
    }
}

/*
 * y (M, N), row stride ldy, float32 = sum_g scale[:, g] * (x_g @ (Q_g - 8)^T) + bias.
 *   x (M, K) row stride ldx; q uint8 (N, 16 * G) row stride ldq, G = ceil(K / 32); scale (N, G) float32
 *   contiguous; bias (N) or NULL.
 */
void bmos_int4_linear_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const uint8_t* q, int64_t N,
                          int64_t ldq, const float* scale, const float* bias, float* y, int64_t ldy,
                          int num_threads) {
    if (M == 0 || N == 0) return;
    const int4_context context = {x, M, K, ldx, q, ldq, scale, (K + GROUP4 - 1) / GROUP4, bias, N, y, ldy};
    const int threads = M * N * K >= PARALLEL_MIN_WORK / 8 ? num_threads : 1;
    pool_run(int4_task, &context, (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK, threads);
}
