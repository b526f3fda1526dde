/* The CPU's fixed-order products, built and called by kernels.py.
 *
 * Every output element is summed in one order that depends only on the length of its sum: never on how
 * many rows or columns share the call, which tile or thread computes it, or which copy of a loop ran.
 * So a row's result has the same bits alone and in any batch, on any CPU this compiles for (the bits
 * differ between CPUs with other vector widths, which is fine: a server runs on one).
 *
 *   hotlora_gemm_nt   y = x @ w.T, w [N, K] float32 (the output layer's logits)
 *   hotlora_gemm_q8   the same product, bit for bit, for a w held as int8 times one scale per 32 values
 *   hotlora_gemm_q4   y = x @ dequant(w).T for bitsandbytes' 4-bit layout (the base's layers, decode)
 *   hotlora_gemm_q4_many     the same for several weights sharing one input, in one parallel region
 *   hotlora_gemm_q4_prefill  the same for a prefill's many rows, in panels
 *   hotlora_gemm_nn   y (+)= x @ w, w [K, N] float32 (a prefill's LoRA deltas on the stacked blocks)
 *   hotlora_lora_decode  a decode step's LoRA deltas, each row through its own adapter's columns only
 *   hotlora_attention  softmax(q k^T) v per row, head and query, over the keys its mask allows
 *   hotlora_rotary     rotary position embeddings, with the bits of transformers' torch operations
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ---- A small vector layer: LANES floats per vector, one rounding per multiply-add (spelled out:
 * compilers contract `a += b * c` into a fused multiply-add in some copies of a loop and not in others,
 * and a row's bits must not depend on which copy computed it). ---- */
#if defined(__AVX512F__)
#include <immintrin.h>
#define LANES 16
typedef __m512 vf;
typedef __m512i vi;
static inline vf vload(const float *p) { return _mm512_loadu_ps(p); }
static inline void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vsplat(float s) { return _mm512_set1_ps(s); }
static inline vf vzero(void) { return _mm512_setzero_ps(); }
static inline vf vint8(const int8_t *p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p))); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vi packed_bytes(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
typedef struct { vf t; } lut_t;
static inline lut_t lut_make(const float *code) { return (lut_t){_mm512_loadu_ps(code)}; }
static inline lut_t lut_scaled(lut_t lut, float s) { return (lut_t){_mm512_mul_ps(lut.t, _mm512_set1_ps(s))}; }
static inline vf lut_high(lut_t lut, vi q) { return _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), lut.t); }
static inline vf lut_low(lut_t lut, vi q) { return _mm512_permutexvar_ps(q, lut.t); } /* reads bits 0-3 */
#define LUT_BY_VECTOR
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LANES 8
typedef __m256 vf;
static inline vf vload(const float *p) { return _mm256_loadu_ps(p); }
static inline void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vsplat(float s) { return _mm256_set1_ps(s); }
static inline vf vzero(void) { return _mm256_setzero_ps(); }
static inline vf vint8(const int8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
/* The code as four byte planes (plane j: byte j of each of the 16 floats, in both 128-bit lanes), so that
 * a 16-entry lookup is one in-lane byte shuffle per plane: on AVX2 the two cross-lane `permutevar8x32`
 * and the blend per 8 weights of a float table cost more. The floats come back bit for bit, then are
 * scaled by the block's absmax: the same single rounding as a lookup in the scaled code. */
typedef struct { __m256i p[4]; } lut_t;
static inline __m256i byte_planes(const float *eight) /* [planes 0-3 of floats 0-3 | of floats 4-7] */
{
    const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, /* */
                                            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)eight), gather);
    return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)); /* [p0 p0 p1 p1 | ...] */
}
static inline lut_t lut_make(const float *code)
{
    const __m256i a = byte_planes(code), b = byte_planes(code + 8);
    const __m256i even = _mm256_unpacklo_epi64(a, b), odd = _mm256_unpackhi_epi64(a, b); /* planes 0|2, 1|3 */
    return (lut_t){{_mm256_permute2x128_si256(even, even, 0x00), _mm256_permute2x128_si256(odd, odd, 0x00),
                    _mm256_permute2x128_si256(even, even, 0x11), _mm256_permute2x128_si256(odd, odd, 0x11)}};
}
typedef struct { const lut_t *code; vf scale; } scaled_t;
#define lut_scaled(lut, s) ((scaled_t){&(lut), _mm256_set1_ps(s)})
/* Each byte's nibble per `spread` (from the bytes it picks, high nibbles in dwords 0 and 2 of a lane, low
 * ones in 1 and 3), as indexes into the planes. */
static inline __m256i nibbles(__m256i bytes, __m256i spread)
{
    const __m256i picked = _mm256_shuffle_epi8(bytes, spread);
    const __m256i shifted = _mm256_srlv_epi32(picked, _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(15));
}
/* The floats whose bytes are the 16-bit pairs b01 (bytes 0, 1) and b23 (bytes 2, 3), times scale. */
#define PLANE_FLOATS(unpack, b01, b23, scale) _mm256_mul_ps(_mm256_castsi256_ps(unpack(b01, b23)), scale)
#define PLANE_BYTES(unpack, plane, idx, j, k) \
    unpack(_mm256_shuffle_epi8((plane)[j], idx), _mm256_shuffle_epi8((plane)[k], idx))
/* 2 * LANES packed bytes at p: w[0], w[1] the high and low nibbles' values of the first LANES, w[2], w[3]
 * of the next. The nibbles are laid out as [high 0-3, low 0-3, high 8-11, low 8-11 | high 4-7, low 4-7,
 * high 12-15, low 12-15], so that the planes' unpacks give the floats in order. */
static inline void lut_decode2(const scaled_t *t, const uint8_t *p, vf w[4])
{
    const __m256i spread = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11, /* */
                                            4, 5, 6, 7, 4, 5, 6, 7, 12, 13, 14, 15, 12, 13, 14, 15);
    const __m256i idx = nibbles(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p)), spread);
    const __m256i *plane = t->code->p;
    const __m256i q0 = _mm256_shuffle_epi8(plane[0], idx), q1 = _mm256_shuffle_epi8(plane[1], idx);
    const __m256i q2 = _mm256_shuffle_epi8(plane[2], idx), q3 = _mm256_shuffle_epi8(plane[3], idx);
    const __m256i lo01 = _mm256_unpacklo_epi8(q0, q1), lo23 = _mm256_unpacklo_epi8(q2, q3);
    const __m256i hi01 = _mm256_unpackhi_epi8(q0, q1), hi23 = _mm256_unpackhi_epi8(q2, q3);
    w[0] = PLANE_FLOATS(_mm256_unpacklo_epi16, lo01, lo23, t->scale);
    w[1] = PLANE_FLOATS(_mm256_unpackhi_epi16, lo01, lo23, t->scale);
    w[2] = PLANE_FLOATS(_mm256_unpacklo_epi16, hi01, hi23, t->scale);
    w[3] = PLANE_FLOATS(_mm256_unpackhi_epi16, hi01, hi23, t->scale);
}
/* LANES packed bytes (a block's last, when blocksize is an odd multiple of 2 * LANES), the same way. */
static inline void lut_decode(const scaled_t *t, const uint8_t *p, vf *whi, vf *wlo)
{
    const __m256i spread = _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, -1, -1, -1, -1, -1, -1, -1, -1, /* */
                                            4, 5, 6, 7, 4, 5, 6, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i idx = nibbles(_mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)p)), spread);
    const __m256i b01 = PLANE_BYTES(_mm256_unpacklo_epi8, t->code->p, idx, 0, 1);
    const __m256i b23 = PLANE_BYTES(_mm256_unpacklo_epi8, t->code->p, idx, 2, 3);
    *whi = PLANE_FLOATS(_mm256_unpacklo_epi16, b01, b23, t->scale);
    *wlo = PLANE_FLOATS(_mm256_unpackhi_epi16, b01, b23, t->scale);
}
#else /* portable: the compiler vectorizes what it can */
#define LANES 4
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vfma(vf a, vf b, vf c)
{
    for (int l = 0; l < LANES; l++) c[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return c;
}
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vsub(vf a, vf b) { return a - b; }
static inline vf vsplat(float s) { return (vf){s, s, s, s}; }
static inline vf vzero(void) { return (vf){0, 0, 0, 0}; }
static inline vf vint8(const int8_t *p) { return (vf){p[0], p[1], p[2], p[3]}; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vi packed_bytes(const uint8_t *p) { return (vi){p[0], p[1], p[2], p[3]}; }
typedef struct { float v[16]; } lut_t;
static inline lut_t lut_make(const float *code)
{
    lut_t lut;
    memcpy(lut.v, code, sizeof lut.v);
    return lut;
}
static inline lut_t lut_scaled(lut_t lut, float s)
{
    for (int i = 0; i < 16; i++) lut.v[i] *= s;
    return lut;
}
static inline vf lut16(lut_t lut, vi idx)
{
    return (vf){lut.v[idx[0]], lut.v[idx[1]], lut.v[idx[2]], lut.v[idx[3]]};
}
static inline vf lut_high(lut_t lut, vi q) { return lut16(lut, q >> 4); }
static inline vf lut_low(lut_t lut, vi q) { return lut16(lut, q & 15); }
#define LUT_BY_VECTOR
#endif

#ifdef LUT_BY_VECTOR
typedef lut_t scaled_t;
/* LANES packed bytes at p to the values of their high (*whi) and low (*wlo) nibbles. */
static inline void lut_decode(const scaled_t *t, const uint8_t *p, vf *whi, vf *wlo)
{
    const vi q = packed_bytes(p);
    *whi = lut_high(*t, q);
    *wlo = lut_low(*t, q);
}
static inline void lut_decode2(const scaled_t *t, const uint8_t *p, vf w[4])
{
    lut_decode(t, p, &w[0], &w[1]);
    lut_decode(t, p + LANES, &w[2], &w[3]);
}
#endif

int32_t hotlora_lanes(void) { return LANES; }

/* The lanes of `v` added in order. */
static inline float hsum(vf v)
{
    float lanes[LANES], s = 0.0f;
    vstore(lanes, v);
    for (int l = 0; l < LANES; l++) s += lanes[l];
    return s;
}

static inline int tile_size(int64_t left, int size) { return left < size ? (int)left : size; }

/* ---- y = x @ w.T, w [N, K]: per element, lane l sums k = l, l + LANES, ... in order, the lanes are
 * added in order, then the k past the last whole vector, in order. Written once over how w is read (a
 * `*_w` reader: its vector of row c at k, one value, and the reader of the rows from n0 on), for float32
 * rows (gemm_nt) and for int8 rows times one scale per Q8_GROUP values (gemm_q8: a GGUF Q8_0 weight,
 * whose products the caller checked are the float32 weight exactly, so each vector equals the one gemm_nt
 * loads and every sum has its bits, from a quarter of the bytes: a one-row product is bound by reading
 * w). ---- */

#define NT_MR 4
#define NT_NC 3
#define Q8_GROUP 32 /* a multiple of LANES: q8 rows have no k past the last whole vector */

typedef struct { const float *w; int64_t ldw; } nt_w;
#define NT_VEC(r, c, k) vload((r).w + (c) * (r).ldw + (k))
#define NT_ONE(r, c, t) ((r).w[(c) * (r).ldw + (t)])
#define NT_FROM(r, n0) ((nt_w){(r).w + (n0) * (r).ldw, (r).ldw})

typedef struct { const int8_t *q; const float *d; int64_t k; } q8_w; /* k: values per row */
#define Q8_VEC(r, c, t) vmul(vint8((r).q + (c) * (r).k + (t)), vsplat(Q8_SCALE(r, c, t)))
#define Q8_ONE(r, c, t) ((float)(r).q[(c) * (r).k + (t)] * Q8_SCALE(r, c, t))
#define Q8_SCALE(r, c, t) ((r).d[(c) * ((r).k / Q8_GROUP) + (t) / Q8_GROUP])
#define Q8_FROM(r, n0) ((q8_w){(r).q + (n0) * (r).k, (r).d + (n0) * ((r).k / Q8_GROUP), (r).k})

#define XW_TILE(NAME, W, VEC, ONE, MR, NC)                                                            \
    static void NAME##_##MR##_##NC(const float *x, int64_t ldx, W w, float *y, int64_t ldy, int64_t K) \
    {                                                                                                 \
        vf acc[MR][NC];                                                                               \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) acc[r][c] = vzero();                                         \
        int64_t k = 0;                                                                                \
        for (; k + LANES <= K; k += LANES) {                                                          \
            vf wv[NC];                                                                                \
            for (int c = 0; c < NC; c++) wv[c] = VEC(w, c, k);                                        \
            for (int r = 0; r < MR; r++) {                                                            \
                const vf xv = vload(x + r * ldx + k);                                                 \
                for (int c = 0; c < NC; c++) acc[r][c] = vfma(xv, wv[c], acc[r][c]);                  \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) {                                                            \
                float s = hsum(acc[r][c]);                                                            \
                for (int64_t t = k; t < K; t++) s = __builtin_fmaf(x[r * ldx + t], ONE(w, c, t), s);  \
                y[r * ldy + c] = s;                                                                   \
            }                                                                                         \
    }

/* The tiles (1-NT_MR rows by 1-NT_NC columns) and the threaded driver over them. */
#define XW_GEMM(NAME, W, VEC, ONE, FROM)                                                              \
    XW_TILE(NAME, W, VEC, ONE, 1, 1) XW_TILE(NAME, W, VEC, ONE, 2, 1)                                 \
    XW_TILE(NAME, W, VEC, ONE, 3, 1) XW_TILE(NAME, W, VEC, ONE, 4, 1)                                 \
    XW_TILE(NAME, W, VEC, ONE, 1, 2) XW_TILE(NAME, W, VEC, ONE, 2, 2)                                 \
    XW_TILE(NAME, W, VEC, ONE, 3, 2) XW_TILE(NAME, W, VEC, ONE, 4, 2)                                 \
    XW_TILE(NAME, W, VEC, ONE, 1, 3) XW_TILE(NAME, W, VEC, ONE, 2, 3)                                 \
    XW_TILE(NAME, W, VEC, ONE, 3, 3) XW_TILE(NAME, W, VEC, ONE, 4, 3)                                 \
    static void NAME##_gemm(const float *x, int64_t ldx, W w, float *y, int64_t ldy, int64_t M,       \
                            int64_t N, int64_t K, int32_t threads)                                    \
    {                                                                                                 \
        typedef void (*tile_fn)(const float *, int64_t, W, float *, int64_t, int64_t);                \
        static const tile_fn TILES[NT_MR][NT_NC] = {                                                  \
            {NAME##_1_1, NAME##_1_2, NAME##_1_3}, {NAME##_2_1, NAME##_2_2, NAME##_2_3},               \
            {NAME##_3_1, NAME##_3_2, NAME##_3_3}, {NAME##_4_1, NAME##_4_2, NAME##_4_3}};              \
        const int64_t mt = (M + NT_MR - 1) / NT_MR, nt = (N + NT_NC - 1) / NT_NC;                     \
        _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads) if (mt * nt > 1 && M * N * K >= 65536)") \
        for (int64_t j = 0; j < nt; j++)                                                              \
            for (int64_t i = 0; i < mt; i++) {                                                        \
                const int64_t m0 = i * NT_MR, n0 = j * NT_NC;                                         \
                TILES[tile_size(M - m0, NT_MR) - 1][tile_size(N - n0, NT_NC) - 1](                    \
                    x + m0 * ldx, ldx, FROM(w, n0), y + m0 * ldy + n0, ldy, K);                       \
            }                                                                                         \
    }

XW_GEMM(nt, nt_w, NT_VEC, NT_ONE, NT_FROM)
XW_GEMM(q8, q8_w, Q8_VEC, Q8_ONE, Q8_FROM)

void hotlora_gemm_nt(const float *x, int64_t ldx, const float *w, int64_t ldw, float *y, int64_t ldy,
                     int64_t M, int64_t N, int64_t K, int32_t threads)
{
    nt_gemm(x, ldx, (nt_w){w, ldw}, y, ldy, M, N, K, threads);
}

int32_t hotlora_q8_group(void) { return Q8_GROUP; }

/* K: a multiple of Q8_GROUP (the caller checks). */
void hotlora_gemm_q8(const float *x, int64_t ldx, const int8_t *q, const float *d, float *y, int64_t ldy,
                     int64_t M, int64_t N, int64_t K, int32_t threads)
{
    q8_gemm(x, ldx, (q8_w){q, d, K}, y, ldy, M, N, K, threads);
}

/* ---- y = x @ dequant(w).T for bitsandbytes' 4-bit layout: w [N * K / 2] bytes, element 2i in the high
 * nibble of byte i and 2i + 1 in the low one, value code[nibble] * absmax[element / blocksize] (rounded
 * once, as bitsandbytes dequantizes; looked up in the code scaled once per block, the same product). K is a multiple of blocksize, blocksize of 2 * LANES (the caller
 * checks). x is split into its even and odd columns (xe, xo: [M, K / 2]); per element, lane l adds the
 * even then the odd product of each chunk of 2 * LANES columns in order, then the lanes in order. ---- */

#define Q4_MR 4
#define Q4_NC 4 /* columns: independent multiply-add chains, to hide their latency at one row */
#define Q4_MANY 4 /* weights one hotlora_gemm_q4_many call takes */

#define Q4_TILE(MR, NC)                                                                               \
    static void q4_##MR##_##NC(const float *xe, const float *xo, int64_t ldx, const uint8_t *w,      \
                               const float *absmax, lut_t lut, int64_t blocksize, float *y,          \
                               int64_t ldy, int64_t K)                                               \
    {                                                                                                 \
        vf acc[MR][NC];                                                                               \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) acc[r][c] = vzero();                                         \
        const int64_t half = K / 2, blocks = K / blocksize, step = blocksize / 2;                     \
        for (int64_t b = 0; b < blocks; b++) {                                                        \
            scaled_t scaled[NC];                                                                      \
            for (int c = 0; c < NC; c++) scaled[c] = lut_scaled(lut, absmax[c * blocks + b]);         \
            int64_t k = b * step;                                                                     \
            for (; k + 2 * LANES <= (b + 1) * step; k += 2 * LANES) {                                 \
                vf e[MR][2], o[MR][2];                                                                \
                for (int r = 0; r < MR; r++)                                                          \
                    for (int h = 0; h < 2; h++)                                                       \
                        e[r][h] = vload(xe + r * ldx + k + h * LANES), o[r][h] = vload(xo + r * ldx + k + h * LANES); \
                for (int c = 0; c < NC; c++) {                                                        \
                    vf wv[4];                                                                         \
                    lut_decode2(&scaled[c], w + c * half + k, wv);                                    \
                    for (int r = 0; r < MR; r++)                                                      \
                        for (int h = 0; h < 2; h++)                                                   \
                            acc[r][c] = vfma(o[r][h], wv[2 * h + 1], vfma(e[r][h], wv[2 * h], acc[r][c])); \
                }                                                                                     \
            }                                                                                         \
            for (; k < (b + 1) * step; k += LANES) { /* blocksize an odd multiple of 2 * LANES */       \
                for (int c = 0; c < NC; c++) {                                                        \
                    vf whi, wlo;                                                                      \
                    lut_decode(&scaled[c], w + c * half + k, &whi, &wlo);                             \
                    for (int r = 0; r < MR; r++)                                                      \
                        acc[r][c] = vfma(vload(xo + r * ldx + k), wlo, vfma(vload(xe + r * ldx + k), whi, acc[r][c])); \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) y[r * ldy + c] = hsum(acc[r][c]);                           \
    }

#define Q4_ROWS(NC) Q4_TILE(1, NC) Q4_TILE(2, NC) Q4_TILE(3, NC) Q4_TILE(4, NC)
Q4_ROWS(1)
Q4_ROWS(2)
Q4_ROWS(3)
Q4_ROWS(4)

typedef void (*q4_fn)(const float *, const float *, int64_t, const uint8_t *, const float *, lut_t, int64_t,
                      float *, int64_t, int64_t);
#define Q4_COLS(MR) {q4_##MR##_1, q4_##MR##_2, q4_##MR##_3, q4_##MR##_4}
static const q4_fn Q4[Q4_MR][Q4_NC] = {Q4_COLS(1), Q4_COLS(2), Q4_COLS(3), Q4_COLS(4)};

/* Many rows: each thread dequantizes a few columns once, in the order the tiles above compute them, and
 * runs every row over them. Per element the same operations in the same order as `q4_*`, so a row has
 * the same bits whichever of the two computed it. */
#define QP_MR 6
#define QP_NC 2
#define QP_MIN_ROWS 8

static void q4_dequant(const uint8_t *w, const float *absmax, lut_t lut, int64_t blocksize, int64_t K, float *out)
{
    const int64_t step = blocksize / 2;
    for (int64_t b = 0; b < K / blocksize; b++) {
        const scaled_t scaled = lut_scaled(lut, absmax[b]);
        int64_t k = b * step;
        for (; k + 2 * LANES <= (b + 1) * step; k += 2 * LANES) {
            vf wv[4];
            lut_decode2(&scaled, w + k, wv);
            for (int i = 0; i < 4; i++) vstore(out + 2 * k + i * LANES, wv[i]);
        }
        for (; k < (b + 1) * step; k += LANES) {
            vf whi, wlo;
            lut_decode(&scaled, w + k, &whi, &wlo);
            vstore(out + 2 * k, whi);
            vstore(out + 2 * k + LANES, wlo);
        }
    }
}

#define QP_TILE(MR, NC)                                                                               \
    static void qp_##MR##_##NC(const float *xe, const float *xo, int64_t ldx, const float *wd,       \
                               float *y, int64_t ldy, int64_t K)                                     \
    {                                                                                                 \
        vf acc[MR][NC];                                                                               \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) acc[r][c] = vzero();                                         \
        for (int64_t k = 0; k < K / 2; k += LANES) {                                                  \
            vf whi[NC], wlo[NC];                                                                      \
            for (int c = 0; c < NC; c++) {                                                            \
                whi[c] = vload(wd + c * K + 2 * k);                                                   \
                wlo[c] = vload(wd + c * K + 2 * k + LANES);                                           \
            }                                                                                         \
            for (int r = 0; r < MR; r++) {                                                            \
                const vf e = vload(xe + r * ldx + k), o = vload(xo + r * ldx + k);                    \
                for (int c = 0; c < NC; c++) acc[r][c] = vfma(o, wlo[c], vfma(e, whi[c], acc[r][c])); \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int c = 0; c < NC; c++) y[r * ldy + c] = hsum(acc[r][c]);                           \
    }

#define QP_ROWS(NC) QP_TILE(1, NC) QP_TILE(2, NC) QP_TILE(3, NC) QP_TILE(4, NC) QP_TILE(5, NC) QP_TILE(6, NC)
QP_ROWS(1)
QP_ROWS(2)

typedef void (*qp_fn)(const float *, const float *, int64_t, const float *, float *, int64_t, int64_t);
static const qp_fn QP[QP_MR][QP_NC] = {{qp_1_1, qp_1_2}, {qp_2_1, qp_2_2}, {qp_3_1, qp_3_2},
                                       {qp_4_1, qp_4_2}, {qp_5_1, qp_5_2}, {qp_6_1, qp_6_2}};

/* x's even and odd columns (xe, xo: [M, K / 2]), as the tiles read them; NULL when out of memory. */
static float *split_columns(const float *x, int64_t ldx, int64_t M, int64_t K)
{
    const int64_t half = K / 2;
    float *xe = malloc((size_t)(M * K) * sizeof(float)), *xo = xe ? xe + M * half : NULL;
    if (xe == NULL) return NULL;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < half; k++) {
            xe[m * half + k] = x[m * ldx + 2 * k];
            xo[m * half + k] = x[m * ldx + 2 * k + 1];
        }
    return xe;
}

/* One weight of a few-row product: y [M, N] (rows ldy apart) = x @ dequant(w).T. */
typedef struct {
    const uint8_t *w;
    const float *absmax;
    lut_t lut;
    int64_t blocksize, N, ldy;
    float *y;
} q4_job;

/* Every tile of every job in one parallel region, so that a layer's products that share their input
 * (q, k and v; gate and up) cost one fork and join. A column's sums do not depend on its tile. */
static void q4_tiles(const float *xe, int64_t M, int64_t K, const q4_job *jobs, int64_t count, int32_t threads)
{
    const int64_t half = K / 2, mt = (M + Q4_MR - 1) / Q4_MR;
    const float *xo = xe + M * half;
    int64_t first[Q4_MANY + 1] = {0};
    for (int64_t i = 0; i < count; i++) first[i + 1] = first[i] + mt * ((jobs[i].N + Q4_NC - 1) / Q4_NC);
#pragma omp parallel for schedule(static) num_threads(threads) if (first[count] > 1)
    for (int64_t t = 0; t < first[count]; t++) {
        int64_t i = 0;
        while (t >= first[i + 1]) i++;
        const q4_job *job = &jobs[i];
        const int64_t j = (t - first[i]) / mt, m0 = ((t - first[i]) % mt) * Q4_MR, n0 = j * Q4_NC;
        const int64_t blocks = K / job->blocksize;
        Q4[tile_size(M - m0, Q4_MR) - 1][tile_size(job->N - n0, Q4_NC) - 1](
            xe + m0 * half, xo + m0 * half, half, job->w + n0 * half, job->absmax + n0 * blocks, job->lut,
            job->blocksize, job->y + m0 * job->ldy + n0, job->ldy, K);
    }
}

/* Returns 0, or -1 when out of memory (y is then undefined). */
int32_t hotlora_gemm_q4(const float *x, int64_t ldx, const uint8_t *w, const float *absmax, const float *code,
                        int64_t blocksize, float *y, int64_t ldy, int64_t M, int64_t N, int64_t K, int32_t threads)
{
    const int64_t half = K / 2, blocks = K / blocksize;
    const lut_t lut = lut_make(code);
    float *xe = split_columns(x, ldx, M, K), *xo = xe ? xe + M * half : NULL;
    if (xe == NULL) return -1;
    int32_t status = 0;
    if (M >= QP_MIN_ROWS) {
        const int64_t nt = (N + QP_NC - 1) / QP_NC;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t j = 0; j < nt; j++) {
            const int64_t n0 = j * QP_NC;
            const int nc = tile_size(N - n0, QP_NC);
            float *wd = malloc((size_t)(nc * K) * sizeof(float));
            if (wd == NULL) {
                status = -1;
                continue;
            }
            for (int c = 0; c < nc; c++)
                q4_dequant(w + (n0 + c) * half, absmax + (n0 + c) * blocks, lut, blocksize, K, wd + c * K);
            for (int64_t m0 = 0; m0 < M; m0 += QP_MR)
                QP[tile_size(M - m0, QP_MR) - 1][nc - 1](xe + m0 * half, xo + m0 * half, half, wd, y + m0 * ldy + n0, ldy, K);
            free(wd);
        }
    } else {
        const q4_job job = {w, absmax, lut, blocksize, N, ldy, y};
        q4_tiles(xe, M, K, &job, 1, threads);
    }
    free(xe);
    return status;
}

int32_t hotlora_q4_many(void) { return Q4_MANY; }
int32_t hotlora_q4_many_rows(void) { return QP_MIN_ROWS - 1; }

/* Up to Q4_MANY weights of the same input width times one x of fewer than QP_MIN_ROWS rows: `specs` holds
 * per weight its w, absmax, code, blocksize, y and N (y's rows N apart). Each y has the bits
 * hotlora_gemm_q4 gives it alone. Returns 0, -1 when out of memory, -2 for arguments it does not take. */
int32_t hotlora_gemm_q4_many(const float *x, int64_t ldx, int64_t M, int64_t K, int64_t count, const int64_t *specs,
                             int32_t threads)
{
    if (M < 1 || M >= QP_MIN_ROWS || count < 1 || count > Q4_MANY) return -2;
    q4_job jobs[Q4_MANY];
    for (int64_t i = 0; i < count; i++) {
        const int64_t *s = specs + 6 * i;
        jobs[i] = (q4_job){(const uint8_t *)(intptr_t)s[0], (const float *)(intptr_t)s[1],
                           lut_make((const float *)(intptr_t)s[2]), s[3], s[5], s[5], (float *)(intptr_t)s[4]};
    }
    float *xe = split_columns(x, ldx, M, K);
    if (xe == NULL) return -1;
    q4_tiles(xe, M, K, jobs, count, threads);
    free(xe);
    return 0;
}

/* ---- y (=|+=) x @ w, w [K, N] row-major with row stride ldw: per element, one multiply-add per k, k in
 * order, from zero; `accumulate` adds the sum to y once at the end. ---- */

#define NN_MR 6
#define NN_NR (2 * LANES)

#define NN_TILE(MR)                                                                                   \
    static void nn_##MR(const float *x, int64_t ldx, const float *w, int64_t ldw, float *y,          \
                        int64_t ldy, int64_t K, int accumulate)                                      \
    {                                                                                                 \
        vf acc[MR][2];                                                                                \
        for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = vzero();                                 \
        for (int64_t k = 0; k < K; k++) {                                                             \
            const vf w0 = vload(w + k * ldw), w1 = vload(w + k * ldw + LANES);                        \
            for (int r = 0; r < MR; r++) {                                                            \
                const vf xr = vsplat(x[r * ldx + k]);                                                 \
                acc[r][0] = vfma(xr, w0, acc[r][0]);                                                  \
                acc[r][1] = vfma(xr, w1, acc[r][1]);                                                  \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < MR; r++)                                                                  \
            for (int j = 0; j < 2; j++) {                                                             \
                float *p = y + r * ldy + j * LANES;                                                   \
                vstore(p, accumulate ? vadd(vload(p), acc[r][j]) : acc[r][j]);                        \
            }                                                                                         \
    }

NN_TILE(1)
NN_TILE(2)
NN_TILE(3)
NN_TILE(4)
NN_TILE(5)
NN_TILE(6)

typedef void (*nn_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t, int64_t, int);
static const nn_fn NN[NN_MR] = {nn_1, nn_2, nn_3, nn_4, nn_5, nn_6};

/* Returns 0, or -1 when out of memory (y is then partly updated). */
int32_t hotlora_gemm_nn(const float *x, int64_t ldx, const float *w, int64_t ldw, float *y, int64_t ldy,
                        int64_t M, int64_t N, int64_t K, int32_t accumulate, int32_t threads)
{
    const int64_t mt = (M + NN_MR - 1) / NN_MR, nt = (N + NN_NR - 1) / NN_NR;
    int32_t status = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (mt * nt > 1 && M * N * K >= 65536)
    for (int64_t j = 0; j < nt; j++)
        for (int64_t i = 0; i < mt; i++) {
            const int64_t m0 = i * NN_MR, n0 = j * NN_NR;
            const int mr = tile_size(M - m0, NN_MR);
            const int64_t cols = N - n0 < NN_NR ? N - n0 : NN_NR;
            if (cols == NN_NR) {
                NN[mr - 1](x + m0 * ldx, ldx, w + n0, ldw, y + m0 * ldy + n0, ldy, K, accumulate);
                continue;
            }
            /* the last columns: the same tile on zero-padded copies */
            float *wp = calloc((size_t)K * NN_NR, sizeof(float)), yp[NN_MR * NN_NR];
            if (wp == NULL) {
                status = -1;
                continue;
            }
            for (int64_t k = 0; k < K; k++) memcpy(wp + k * NN_NR, w + k * ldw + n0, cols * sizeof(float));
            for (int r = 0; r < mr; r++) memcpy(yp + r * NN_NR, y + (m0 + r) * ldy + n0, cols * sizeof(float));
            NN[mr - 1](x + m0 * ldx, ldx, wp, NN_NR, yp, NN_NR, K, accumulate);
            for (int r = 0; r < mr; r++) memcpy(y + (m0 + r) * ldy + n0, yp + r * NN_NR, cols * sizeof(float));
            free(wp);
        }
    return status;
}

/* ---- A prefill's 4-bit products: y = x @ dequant(w).T with the weight dequantized (bitsandbytes'
 * rounding) into panels of NN_NR columns and multiplied by the tiles above, each row one multiply-add
 * per k in order. Faster for the hundreds of rows of a prefill than `hotlora_gemm_q4`, whose order it
 * does not share: a prefill always takes this one, a decode step the other, so either way a row's bits
 * do not depend on the other rows. Returns 0, or -1 when out of memory. ---- */
int32_t hotlora_gemm_q4_prefill(const float *x, int64_t ldx, const uint8_t *w, const float *absmax,
                                const float *code, int64_t blocksize, float *y, int64_t ldy, int64_t M,
                                int64_t N, int64_t K, int32_t threads)
{
    const int64_t nt = (N + NN_NR - 1) / NN_NR, half = K / 2, blocks = K / blocksize;
    int32_t status = 0;
#pragma omp parallel for schedule(static) num_threads(threads) if (nt > 1)
    for (int64_t j = 0; j < nt; j++) {
        const int64_t n0 = j * NN_NR, cols = N - n0 < NN_NR ? N - n0 : NN_NR;
        float *panel = calloc((size_t)K * NN_NR, sizeof(float)), yp[NN_MR * NN_NR];
        if (panel == NULL) {
            status = -1;
            continue;
        }
        for (int64_t c = 0; c < cols; c++) {
            const uint8_t *row = w + (n0 + c) * half;
            const float *scales = absmax + (n0 + c) * blocks;
            for (int64_t i = 0; i < half; i++) {
                const float scale = scales[2 * i / blocksize];
                panel[2 * i * NN_NR + c] = code[row[i] >> 4] * scale;
                panel[(2 * i + 1) * NN_NR + c] = code[row[i] & 15] * scale;
            }
        }
        for (int64_t m0 = 0; m0 < M; m0 += NN_MR) {
            const int mr = tile_size(M - m0, NN_MR);
            if (cols == NN_NR) {
                NN[mr - 1](x + m0 * ldx, ldx, panel, NN_NR, y + m0 * ldy + n0, ldy, K, 0);
                continue;
            }
            NN[mr - 1](x + m0 * ldx, ldx, panel, NN_NR, yp, NN_NR, K, 0);
            for (int r = 0; r < mr; r++) memcpy(y + (m0 + r) * ldy + n0, yp + r * NN_NR, cols * sizeof(float));
        }
        free(panel);
    }
    return status;
}

/* ---- A decode step's LoRA deltas, each row through its own adapter's columns only (Punica's BGMV, on
 * CPU). The layout is lora_stack.py's: a block's A.T is [in, width] and its B.T, pre-scaled,
 * [width, out], both row-major float32; an adapter owns the columns [start, stop). ---- */

/* h[0..n) of up to two rows, n = LANES or 1: sum over i of x[i] * a[i * width + 0..n), in four partial
 * sums (i mod 4) added pairwise at the end. */
#define SHRINK(name, type, load, fma, zero, store, sum4)                                                  \
    static void name(const float *a, int64_t width, int64_t in_features, const float *const *xs, int n, \
                     float *const *hs)                                                                \
    {                                                                                                 \
        type acc[2][4];                                                                               \
        for (int r = 0; r < 2; r++)                                                                   \
            for (int p = 0; p < 4; p++) acc[r][p] = zero;                                             \
        int64_t i = 0;                                                                                \
        for (; i + 4 <= in_features; i += 4) {                                                        \
            const type a0 = load(a + i * width), a1 = load(a + (i + 1) * width);                      \
            const type a2 = load(a + (i + 2) * width), a3 = load(a + (i + 3) * width);                \
            for (int r = 0; r < n; r++) {                                                             \
                const float *x = xs[r];                                                               \
                acc[r][0] = fma(x[i], a0, acc[r][0]);                                                 \
                acc[r][1] = fma(x[i + 1], a1, acc[r][1]);                                             \
                acc[r][2] = fma(x[i + 2], a2, acc[r][2]);                                             \
                acc[r][3] = fma(x[i + 3], a3, acc[r][3]);                                             \
            }                                                                                         \
        }                                                                                             \
        for (int r = 0; r < n; r++) {                                                                 \
            for (int64_t t = i; t < in_features; t++) acc[r][0] = fma(xs[r][t], load(a + t * width), acc[r][0]); \
            store(hs[r], sum4(acc[r]));                                                               \
        }                                                                                             \
    }

static inline float load1(const float *p) { return *p; }
static inline void store1(float *p, float v) { *p = v; }
static inline float fma1(float x, float a, float acc) { return __builtin_fmaf(x, a, acc); }
static inline float sum1(const float *acc) { return (acc[0] + acc[1]) + (acc[2] + acc[3]); }
static inline vf fmav(float x, vf a, vf acc) { return vfma(vsplat(x), a, acc); }
static inline vf sumv(const vf *acc) { return vadd(vadd(acc[0], acc[1]), vadd(acc[2], acc[3])); }

SHRINK(shrink_vec, vf, vload, fmav, vzero(), vstore, sumv)
SHRINK(shrink_one, float, load1, fma1, 0.0f, store1, sum1)

/* out[c] += sum over j of h[j] * b[j * out_features + c], j in order, for up to two rows. */
static void expand(const float *b, int64_t out_features, int64_t rank, const float *const *hs, int n,
                   float *const *outs)
{
    int64_t c = 0;
    for (; c + LANES <= out_features; c += LANES) {
        vf acc[2];
        for (int r = 0; r < n; r++) acc[r] = vload(outs[r] + c);
        for (int64_t j = 0; j < rank; j++) {
            const vf bj = vload(b + j * out_features + c);
            for (int r = 0; r < n; r++) acc[r] = vfma(vsplat(hs[r][j]), bj, acc[r]);
        }
        for (int r = 0; r < n; r++) vstore(outs[r] + c, acc[r]);
    }
    for (; c < out_features; c++)
        for (int r = 0; r < n; r++) {
            float acc = outs[r][c];
            for (int64_t j = 0; j < rank; j++) acc = __builtin_fmaf(hs[r][j], b[j * out_features + c], acc);
            outs[r][c] = acc;
        }
}

/* items: `count` rows of int32 {start, stop, row, second row or -1}: one or two rows of one adapter each.
 * out[row, :] += (x[row, :] @ a_t[:, start:stop]) @ b_t[start:stop, :] for every row of every item.
 * Returns 0, or -1 (and changes nothing) when an item names columns outside [0, width) or rows outside
 * [0, rows). */
int32_t hotlora_lora_decode(const float *x, int64_t x_stride, int64_t in_features, const float *a_t,
                            const float *b_t, int64_t width, int64_t out_features, float *out,
                            int64_t out_stride, int64_t rows, const int32_t *items, int32_t count, int32_t threads)
{
    for (int32_t item = 0; item < count; item++) {
        const int32_t *it = items + 4 * item;
        if (it[0] < 0 || it[1] < it[0] || it[1] > width || it[2] < 0 || it[2] >= rows || it[3] < -1 || it[3] >= rows)
            return -1;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (count > 1)
    for (int32_t item = 0; item < count; item++) {
        const int32_t *it = items + 4 * item;
        const int64_t start = it[0], rank = it[1] - it[0];
        const int n = it[3] < 0 ? 1 : 2;
        float h[2][rank > 0 ? rank : 1];
        const float *xs[2];
        float *outs[2];
        for (int r = 0; r < n; r++) {
            xs[r] = x + (int64_t)it[2 + r] * x_stride;
            outs[r] = out + (int64_t)it[2 + r] * out_stride;
        }
        int64_t j = 0;
        for (; j + LANES <= rank; j += LANES)
            shrink_vec(a_t + start + j, width, in_features, xs, n, (float *[]){h[0] + j, h[1] + j});
        for (; j < rank; j++)
            shrink_one(a_t + start + j, width, in_features, xs, n, (float *[]){h[0] + j, h[1] + j});
        expand(b_t + start * out_features, out_features, rank, (const float *const[]){h[0], h[1]}, n, outs);
    }
    return 0;
}

/* ---- Attention, one (row, head, query position) at a time: its scores q . k_j (as in gemm_nt: lanes,
 * then the tail), scaled and optionally soft-capped, over the keys its mask allows, in key order; the
 * softmax's maximum and sum, and the weighted sum of values, in key order too. Masked keys are skipped,
 * not weighted by zero, so a left-padded row runs the very operations it runs alone. A query that may
 * attend to nothing (a padding position) gets zeros. Strides are in floats (bytes for the mask); the
 * last dimension of every tensor is contiguous. ---- */

static inline float dot(const float *a, const float *b, int64_t n)
{
    vf acc = vzero();
    int64_t d = 0;
    for (; d + LANES <= n; d += LANES) acc = vfma(vload(a + d), vload(b + d), acc);
    float s = hsum(acc);
    for (; d < n; d++) s = __builtin_fmaf(a[d], b[d], s);
    return s;
}

int32_t hotlora_attention(const float *q, int64_t q_row, int64_t q_head, int64_t q_pos, const float *k,
                          int64_t k_row, int64_t k_head, int64_t k_pos, const float *v, int64_t v_row,
                          int64_t v_head, int64_t v_pos, const uint8_t *mask, int64_t m_row, int64_t m_pos,
                          float *out, int64_t o_row, int64_t o_pos, int64_t o_head, int64_t rows, int64_t heads,
                          int64_t kv_heads, int64_t q_len, int64_t keys, int64_t dim, float scale, float softcap,
                          int32_t threads)
{
    const int64_t group = heads / kv_heads, tasks = rows * heads * q_len;
    int32_t failed = 0;
#pragma omp parallel num_threads(threads) if (tasks > 1)
    {
        float *scores = malloc((size_t)(keys > 0 ? keys : 1) * sizeof(float));
        float *acc = malloc((size_t)(dim > 0 ? dim : 1) * sizeof(float));
        if (!scores || !acc) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; task++) {
            if (!scores || !acc) continue;
            const int64_t r = task / (heads * q_len), h = task / q_len % heads, i = task % q_len;
            const float *qv = q + r * q_row + h * q_head + i * q_pos;
            const float *kb = k + r * k_row + (h / group) * k_head, *vb = v + r * v_row + (h / group) * v_head;
            const uint8_t *allowed = mask ? mask + r * m_row + i * m_pos : NULL;
            const int64_t causal_stop = keys - q_len + i + 1; /* without a mask: keys up to this query */
            float *o = out + r * o_row + i * o_pos + h * o_head;
            float top = 0.0f;
            int any = 0;
            for (int64_t j = 0; j < keys; j++) {
                if (allowed ? !allowed[j] : j >= causal_stop) continue;
                float s = dot(qv, kb + j * k_pos, dim) * scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                scores[j] = s;
                if (!any || s > top) top = s;
                any = 1;
            }
            for (int64_t d = 0; d < dim; d++) acc[d] = 0.0f;
            float total = 0.0f;
            for (int64_t j = 0; any && j < keys; j++) {
                if (allowed ? !allowed[j] : j >= causal_stop) continue;
                const float p = expf(scores[j] - top);
                total += p;
                const float *vj = vb + j * v_pos;
                const vf pv = vsplat(p);
                int64_t d = 0;
                for (; d + LANES <= dim; d += LANES) vstore(acc + d, vfma(pv, vload(vj + d), vload(acc + d)));
                for (; d < dim; d++) acc[d] = __builtin_fmaf(p, vj[d], acc[d]);
            }
            const float inv = any ? 1.0f / total : 0.0f;
            for (int64_t d = 0; d < dim; d++) o[d] = acc[d] * inv;
        }
        free(scores);
        free(acc);
    }
    return failed ? -1 : 0;
}

/* ---- Rotary position embeddings as transformers applies them: out = x * cos + rotate_half(x) * sin,
 * where rotate_half(x) = [-x2, x1] for x = [x1, x2]: both products rounded, then their sum, as torch's
 * three operations round. So the products must not be fused into a multiply-add: contraction is off in
 * this function, for GCC and Clang. x [rows, heads, positions, dim] with any strides but a contiguous
 * dim; cos and sin [rows, positions, dim] contiguous; out [rows, heads, positions, dim] contiguous. ---- */
#if defined(__clang__)
#define NO_CONTRACT
#elif defined(__GNUC__)
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define NO_CONTRACT
#endif

NO_CONTRACT static void rotate_one(const float *x, const float *c, const float *s, int64_t dim, float *out)
{
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const int64_t half = dim / 2;
    int64_t d = 0;
    for (; d + LANES <= half; d += LANES) {
        const vf x1 = vload(x + d), x2 = vload(x + half + d);
        /* first half: x1 * cos - x2 * sin (the product of -x2, exactly the negated product) */
        const vf a = vmul(x1, vload(c + d)), b = vmul(x2, vload(s + d));
        vstore(out + d, vsub(a, b));
        const vf e = vmul(x2, vload(c + half + d)), f = vmul(x1, vload(s + half + d));
        vstore(out + half + d, vadd(e, f));
    }
    for (; d < half; d++) {
        const float a = x[d] * c[d], b = -x[half + d] * s[d];
        out[d] = a + b;
        const float e = x[half + d] * c[half + d], f = x[d] * s[half + d];
        out[half + d] = e + f;
    }
}

void hotlora_rotary(const float *x, int64_t x_row, int64_t x_head, int64_t x_pos, int64_t rows, int64_t heads,
                    int64_t positions, int64_t dim, const float *cos, const float *sin, float *out)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t p = 0; p < positions; p++)
                rotate_one(x + r * x_row + h * x_head + p * x_pos, cos + (r * positions + p) * dim,
                           sin + (r * positions + p) * dim, dim, out + ((r * heads + h) * positions + p) * dim);
}
