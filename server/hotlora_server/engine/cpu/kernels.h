/* The entry points of kernels.c, called by kernels_ops.cpp (which checks every argument first). */
#ifndef HOTLORA_KERNELS_H
#define HOTLORA_KERNELS_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int32_t hotlora_lanes(void);
int32_t hotlora_q8_group(void);
int32_t hotlora_q4_many(void);
int32_t hotlora_q4_many_rows(void);
void hotlora_gemm_nt(const float *x, int64_t ldx, const float *w, int64_t ldw, float *y, int64_t ldy,
                     int64_t M, int64_t N, int64_t K, int32_t threads);
void hotlora_gemm_q8(const float *x, int64_t ldx, const int8_t *q, const float *d, float *y, int64_t ldy,
                     int64_t M, int64_t N, int64_t K, int32_t threads);
int32_t hotlora_gemm_q4(const float *x, int64_t ldx, const uint8_t *w, const float *absmax, const float *code,
                        int64_t blocksize, float *y, int64_t ldy, int64_t M, int64_t N, int64_t K, int32_t threads);
int32_t hotlora_gemm_q4_many(const float *x, int64_t ldx, int64_t M, int64_t K, int64_t count, const int64_t *specs,
                             int32_t threads);
int32_t hotlora_gemm_q4_prefill(const float *x, int64_t ldx, const uint8_t *w, const float *absmax,
                                const float *code, int64_t blocksize, float *y, int64_t ldy, int64_t M,
                                int64_t N, int64_t K, int32_t threads);
int32_t hotlora_gemm_nn(const float *x, int64_t ldx, const float *w, int64_t ldw, float *y, int64_t ldy,
                        int64_t M, int64_t N, int64_t K, int32_t accumulate, int32_t threads);
int32_t hotlora_lora_decode(const float *x, int64_t x_stride, int64_t in_features, const float *a_t,
                            const float *b_t, int64_t width, int64_t out_features, float *out,
                            int64_t out_stride, int64_t rows, const int32_t *items, int32_t count, int32_t threads);
int32_t hotlora_attention(const float *q, int64_t q_row, int64_t q_head, int64_t q_pos, const float *k,
                          int64_t k_row, int64_t k_head, int64_t k_pos, const float *v, int64_t v_row,
                          int64_t v_head, int64_t v_pos, const uint8_t *mask, int64_t m_row, int64_t m_pos,
                          float *out, int64_t o_row, int64_t o_pos, int64_t o_head, int64_t rows, int64_t heads,
                          int64_t kv_heads, int64_t q_len, int64_t keys, int64_t dim, float scale, float softcap,
                          int32_t threads);
void hotlora_rotary(const float *x, int64_t x_row, int64_t x_head, int64_t x_pos, int64_t rows, int64_t heads,
                    int64_t positions, int64_t dim, const float *cos, const float *sin, float *out);

#ifdef __cplusplus
}
#endif
#endif
