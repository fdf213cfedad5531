/* CONV_2D, fast, through im2col: for a block-sparse layer whose blocks straddle its windows' runs,
 * two outputs' windows are copied into scratch as contiguous patches and every stored block runs
 * once for both. Inlined per layer (aot_conv_impl.h chooses the path). */
#ifndef AOT_CONV_IM2COL_H_
#define AOT_CONV_IM2COL_H_

#include <string.h>

#include "aot_conv_rows.h"
#include "aot_kernels.h"
#include "aot_simd.h"

/* Copies the window at (y0, x0) into `patch` in the kernel's order (row_len bytes), the padding
 * as the input's zero point, so that with the folded bias it adds nothing. */
static inline __attribute__((always_inline)) void im2col_patch(const patch_shape* s, const int8_t* input, int y0,
                                                               int x0, int8_t* patch) {
  const int8_t pad = (int8_t)(-s->p->input_offset);
  for (int32_t r = 0; r < s->runs; ++r, patch += s->run_len) {
    int32_t lo, hi;
    const int8_t* start;
    run_at(s, input, y0, x0, r, &lo, &hi, &start);
    if (lo == 0 && hi == s->run_len) {
      memcpy(patch, start, (size_t)s->run_len); /* a constant length: inlined */
      continue;
    }
    if (hi < lo) hi = lo;
    for (int32_t i = 0; i < lo; ++i) patch[i] = pad;
    for (int32_t i = lo; i < hi; ++i) patch[i] = start[i];
    for (int32_t i = hi; i < s->run_len; ++i) patch[i] = pad;
  }
}

/* acc0 += w . x0 and acc1 += w . x1 over the stored blocks of one block-sparse row whose bitmap
 * is `bits`, against two contiguous patches: each stored block is one pass over its weights for
 * both; returns the next row's values. */
static inline __attribute__((always_inline)) const int8_t* sparse_row_pair(const aot_weights* weights,
                                                                           const int8_t* w, const uint8_t* bits,
                                                                           const int8_t* x0, const int8_t* x1,
                                                                           int32_t* a0, int32_t* a1) {
  const int32_t block = 1 << weights->block_shift;
  const int32_t blocks = ((weights->row_len - 1) >> weights->block_shift) + 1;
  const int32_t last = blocks - 1, tail = weights->row_len - last * block; /* the last block's length */
  for (int32_t byte = 0; byte < (blocks + 7) / 8; ++byte) {
#if defined(__ARM_FEATURE_CLZ) && __ARM_FEATURE_CLZ
    for (uint32_t m = bits[byte]; m; m &= m - 1) {
      const int32_t b = 8 * byte + __builtin_ctz(m);
#else
    for (uint32_t m = bits[byte], j = 0; m; m >>= 1, ++j) {
      if (!(m & 1u)) continue;
      const int32_t b = 8 * byte + (int32_t)j;
#endif
      if (tail != block && b == last) {
        dot2_s8(x0 + b * block, x1 + b * block, w, tail, a0, a1);
        w += tail;
      } else {
        dot2_s8(x0 + b * block, x1 + b * block, w, block, a0, a1);
        w += block;
      }
    }
  }
  return w;
}

/* A block-sparse layer whose blocks straddle the window's runs: two outputs' windows copied into
 * scratch as contiguous patches (im2col), then every output channel from its stored blocks, each
 * block's weights loaded once for both outputs; no output is a border output any more. */
static inline __attribute__((always_inline)) void conv_im2col_sparse(const patch_shape* s, const int8_t* input,
                                                                     int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t k = p->weights.row_len;
  const int32_t bitmap_row = ((((k - 1) >> p->weights.block_shift) + 1) + 7) / 8;
  int8_t* patch0 = s->scratch;
  int8_t* patch1 = s->scratch + ((k + 3) & ~3);
  const int32_t pixels = p->out_h * p->out_w;
  for (int32_t i = 0; i < pixels; i += 2) {
    const int two = i + 1 < pixels;
    const int oy = i / p->out_w, ox = i - oy * p->out_w;
    im2col_patch(s, input, oy * p->stride_h - p->pad_h, ox * p->stride_w - p->pad_w, patch0);
    if (two) {
      const int oy1 = ox + 1 < p->out_w ? oy : oy + 1, ox1 = ox + 1 < p->out_w ? ox + 1 : 0;
      im2col_patch(s, input, oy1 * p->stride_h - p->pad_h, ox1 * p->stride_w - p->pad_w, patch1);
    }
    const int8_t* x1 = two ? patch1 : patch0;
    const int8_t* w = p->weights.values;
    const uint8_t* bits = p->weights.bitmap;
    int8_t* out = output + i * p->out_c;
    for (int oc = 0; oc < p->out_c; ++oc, bits += bitmap_row) {
      int32_t a0 = p->bias ? p->bias[oc] : 0, a1 = a0;
      w = sparse_row_pair(&p->weights, w, bits, patch0, x1, &a0, &a1);
      const requant_t q = requant_of(p->multiplier[oc], p->shift[oc]);
      out[oc] = requant_out(p, &q, a0);
      if (two) out[p->out_c + oc] = requant_out(p, &q, a1);
    }
  }
}

#endif /* AOT_CONV_IM2COL_H_ */
