/* A decode step's LoRA deltas, each row through its own adapter's columns only (Punica's BGMV, on CPU).
 *
 * Built and called by lora_kernel.py; the layout is lora_stack.py's: a block's A.T is [in, width] and its
 * B.T, pre-scaled, [width, out], both row-major float32; an adapter owns the columns [start, stop).
 * Every row's sums run in one fixed order whatever else is in the batch (which rows, how many, which
 * thread), so a row's delta has the same bits alone and in any batch.
 */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define LOAD(type, p) ({ type v_; memcpy(&v_, (p), sizeof v_); v_; })
#define STORE(p, v) memcpy((p), &(v), sizeof(v))

/* h[0..lanes) of up to two rows: sum over i of x[i] * a[i * width + 0..lanes), in four partial sums
 * (i mod 4) added pairwise at the end; lanes 16 and 8 for most of a rank, 1 for what is left. */
#define SHRINK(type, lanes)                                                                          \
    static void shrink_##lanes(const float *a, int64_t width, int64_t in_features,                   \
                               const float *const *xs, int n, float *const *hs)                      \
    {                                                                                                \
        type acc[2][4];                                                                              \
        memset(acc, 0, sizeof acc);                                                                  \
        int64_t i = 0;                                                                               \
        for (; i + 4 <= in_features; i += 4) {                                                       \
            const type a0 = LOAD(type, a + i * width), a1 = LOAD(type, a + (i + 1) * width);         \
            const type a2 = LOAD(type, a + (i + 2) * width), a3 = LOAD(type, a + (i + 3) * width);   \
            for (int r = 0; r < n; r++) {                                                            \
                const float *x = xs[r];                                                              \
                acc[r][0] += x[i] * a0;                                                              \
                acc[r][1] += x[i + 1] * a1;                                                          \
                acc[r][2] += x[i + 2] * a2;                                                          \
                acc[r][3] += x[i + 3] * a3;                                                          \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < n; r++) {                                                                \
            for (int64_t t = i; t < in_features; t++) acc[r][0] += xs[r][t] * LOAD(type, a + t * width); \
            const type sum = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);                      \
            STORE(hs[r], sum);                                                                       \
        }                                                                                            \
    }

SHRINK(v16, 16)
SHRINK(v8, 8)
SHRINK(float, 1)

/* out[c] += sum over j of h[j] * b[j * out_features + c], j in order, for up to two rows. */
static void expand(const float *b, int64_t out_features, int64_t rank, const float *const *hs, int n,
                   float *const *outs)
{
    int64_t c = 0;
    for (; c + 16 <= out_features; c += 16) {
        v16 acc[2];
        for (int r = 0; r < n; r++) acc[r] = LOAD(v16, outs[r] + c);
        for (int64_t j = 0; j < rank; j++) {
            const v16 bj = LOAD(v16, b + j * out_features + c);
            for (int r = 0; r < n; r++) acc[r] += hs[r][j] * bj;
        }
        for (int r = 0; r < n; r++) STORE(outs[r] + c, acc[r]);
    }
    for (; c < out_features; c++)
        for (int r = 0; r < n; r++) {
            float acc = outs[r][c];
            for (int64_t j = 0; j < rank; j++) acc += hs[r][j] * b[j * out_features + c];
            outs[r][c] = acc;
        }
}

/* items: `count` rows of int32 {start, stop, row, second row or -1}: one or two rows of one adapter each.
 * out[row, :] += (x[row, :] @ a_t[:, start:stop]) @ b_t[start:stop, :] for every row of every item. */
void hotlora_lora_decode(const float *x, int64_t x_stride, int64_t in_features, const float *a_t,
                         const float *b_t, int64_t width, int64_t out_features, float *out,
                         int64_t out_stride, const int32_t *items, int32_t count, int32_t threads)
{
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
        for (; j + 16 <= rank; j += 16) shrink_16(a_t + start + j, width, in_features, xs, n, (float *[]){h[0] + j, h[1] + j});
        for (; j + 8 <= rank; j += 8) shrink_8(a_t + start + j, width, in_features, xs, n, (float *[]){h[0] + j, h[1] + j});
        for (; j < rank; j++) shrink_1(a_t + start + j, width, in_features, xs, n, (float *[]){h[0] + j, h[1] + j});
        expand(b_t + start * out_features, out_features, rank, (const float *const[]){h[0], h[1]}, n, outs);
    }
}
