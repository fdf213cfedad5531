/* CONV_2D, fast, over contiguous windows: a 1x1 kernel without padding, or one output over the
 * whole input (a fully connected layer, and each pixel of a small map gathered into one). Every
 * window is the row's length of contiguous input bytes, so two pixels share each weight's load.
 * Inlined per layer (aot_conv_impl.h chooses the path). */
#ifndef AOT_CONV_POINTWISE_H_
#define AOT_CONV_POINTWISE_H_

#include "aot_conv_rows.h"
#include "aot_kernels.h"
#include "aot_simd.h"

/* The input of output pixel i of a layer whose windows are contiguous (see `contiguous` below). */
static inline __attribute__((always_inline)) const int8_t* pixel_input(const aot_conv_params* p, const int8_t* input,
                                                                       int32_t i) {
  if (p->stride_h == 1 && p->stride_w == 1) return input + i * p->in_c;
  const int32_t oy = i / p->out_w, ox = i - oy * p->out_w;
  return input + (oy * p->stride_h * p->in_w + ox * p->stride_w) * p->in_c;
}

/* Output channel oc of a layer whose windows are contiguous, from a block-sparse row of blocks of
 * four or more: the stored blocks listed once in scratch (where each starts in the window, an
 * int16 each), then two output pixels per pass, each weight loaded once for both. */
static inline __attribute__((always_inline)) void conv_contiguous_listed(const patch_shape* s, const int8_t* values,
                                                                         const uint8_t* bits, int oc,
                                                                         const int8_t* input, int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t block = 1 << p->weights.block_shift;
  const int32_t k = p->weights.row_len;
  const int32_t full = k >> p->weights.block_shift; /* blocks of the full size; a shorter last one */
  const int32_t tail = k - full * block;
  int16_t* first = (int16_t*)(void*)s->scratch;
  int32_t stored = 0;
  for (int32_t b = 0; b < full; ++b) {
    if ((bits[b >> 3] >> (b & 7)) & 1) first[stored++] = (int16_t)(b * block);
  }
  const int tail_stored = tail > 0 && ((bits[full >> 3] >> (full & 7)) & 1);
  const int8_t* tail_w = values + stored * block;
  const int32_t bias = p->bias ? p->bias[oc] : 0;
  const requant_t q = requant_of(p->multiplier[oc], p->shift[oc]);
  const int32_t pixels = p->out_h * p->out_w;
  int8_t* out = output + oc;
  int32_t i = 0;
  for (; i + 1 < pixels; i += 2, out += 2 * p->out_c) {
    const int8_t* x0 = pixel_input(p, input, i);
    const int8_t* x1 = pixel_input(p, input, i + 1);
    int32_t a0 = bias, a1 = bias;
    const int8_t* w = values;
    for (int32_t j = 0; j < stored; ++j, w += block) dot2_s8(x0 + first[j], x1 + first[j], w, block, &a0, &a1);
    if (tail_stored) dot2_s8(x0 + full * block, x1 + full * block, tail_w, tail, &a0, &a1);
    out[0] = requant_out(p, &q, a0);
    out[p->out_c] = requant_out(p, &q, a1);
  }
  if (i < pixels) {
    const int8_t* x = pixel_input(p, input, i);
    int32_t a = bias;
    const int8_t* w = values;
    for (int32_t j = 0; j < stored; ++j, w += block) a = dot_s8(w, x + first[j], block, a);
    if (tail_stored) a = dot_s8(tail_w, x + full * block, tail, a);
    out[0] = requant_out(p, &q, a);
  }
}

/* A block-sparse layer with a single output pixel over a contiguous window (a fully connected layer
 * as a 1x1 convolution): each row's bitmap is walked once, and each stored block dotted with its
 * part of the input as it is found, so nothing is listed and the row's end is where the walk
 * stops. With one pixel, a list built per row would be used once: it cost more than the walk. */
static inline __attribute__((always_inline)) void conv_single_sparse(const aot_conv_params* p, const int8_t* input,
                                                                     int8_t* output) {
  const aot_weights* weights = &p->weights;
  const int32_t block = 1 << weights->block_shift;
  const int32_t blocks = ((weights->row_len - 1) >> weights->block_shift) + 1;
  const int32_t bitmap_row = (blocks + 7) / 8;
  const int32_t last = blocks - 1, tail = weights->row_len - last * block; /* the last block's length */
  const int8_t* w = weights->values;
  const uint8_t* bits = weights->bitmap;
  for (int oc = 0; oc < p->out_c; ++oc, bits += bitmap_row) {
    int32_t acc = p->bias ? p->bias[oc] : 0;
    for (int32_t byte = 0; byte < bitmap_row; ++byte) {
#if defined(__ARM_FEATURE_CLZ) && __ARM_FEATURE_CLZ
      for (uint32_t m = bits[byte]; m; m &= m - 1) {
        const int32_t b = 8 * byte + __builtin_ctz(m);
#else
      for (uint32_t m = bits[byte], j = 0; m; m >>= 1, ++j) {
        if (!(m & 1u)) continue;
        const int32_t b = 8 * byte + (int32_t)j;
#endif
        if (tail != block && b == last) {
          acc = dot_s8(w, input + b * block, tail, acc);
          w += tail;
        } else if (block >= 4) { /* a whole block: its words unrolled, no loop test between them */
#pragma GCC unroll 4
          for (int32_t i = 0; i < block; i += 4) acc = dot_s8(w + i, input + b * block + i, 4, acc);
          w += block;
        } else {
          acc = dot_s8(w, input + b * block, block, acc);
          w += block;
        }
      }
    }
    const requant_t q = requant_of(p->multiplier[oc], p->shift[oc]);
    output[oc] = requant_out(p, &q, acc);
  }
}

/* Output channels oc and oc + 1 of a layer whose windows are contiguous, from two dense rows
 * starting at `rows`: two output pixels per pass, so each weight and each input is loaded once
 * for two products. */
static inline __attribute__((always_inline)) void conv_contiguous_dense2(const patch_shape* s, const int8_t* rows,
                                                                         int oc, const int8_t* input,
                                                                         int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t k = p->weights.row_len;
  const int32_t bias0 = p->bias ? p->bias[oc] : 0, bias1 = p->bias ? p->bias[oc + 1] : 0;
  const requant_t q0 = requant_of(p->multiplier[oc], p->shift[oc]);
  const requant_t q1 = requant_of(p->multiplier[oc + 1], p->shift[oc + 1]);
  const int32_t pixels = p->out_h * p->out_w;
  int8_t* out = output + oc;
  int32_t i = 0;
  for (; i + 1 < pixels; i += 2, out += 2 * p->out_c) {
    int32_t a[4] = {bias0, bias1, bias0, bias1};
    dot_s8_2x2(rows, rows + k, pixel_input(p, input, i), pixel_input(p, input, i + 1), k, a);
    out[0] = requant_out(p, &q0, a[0]);
    out[1] = requant_out(p, &q1, a[1]);
    out[p->out_c] = requant_out(p, &q0, a[2]);
    out[p->out_c + 1] = requant_out(p, &q1, a[3]);
  }
  if (i < pixels) {
    int32_t a0 = bias0, a1 = bias1;
    dot2_s8(rows, rows + k, pixel_input(p, input, i), k, &a0, &a1);
    out[0] = requant_out(p, &q0, a0);
    out[1] = requant_out(p, &q1, a1);
  }
}

#endif /* AOT_CONV_POINTWISE_H_ */
