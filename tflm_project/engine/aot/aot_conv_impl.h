/* CONV_2D, fast: the same integers as aot_conv2d_reference, computed with fewer instructions.
 *
 * Included by the generated aot_model.c: each layer's call is inlined with that layer's constant
 * parameters (a static const struct), so the compiler specialises the kernel per layer, folding
 * shapes, strides and padding, and drops the paths the layer cannot take.
 *
 * - The input offset is folded into the bias at generation time (pipeline/aot.py), so an
 *   interior output is bias + sum(w * x) with no per-weight addition.
 * - Outputs whose receptive field lies inside the input (the interior) take a path with no
 *   bounds tests: the patch is a few contiguous runs of input bytes (one per kernel row, or
 *   per tap when dilated). Border outputs read the zero point for every tap outside the
 *   input, which with the folded bias is exactly TFLite's zero padding.
 * - A block-sparse row is walked block by block: the bitmap is read once per block of 1-16
 *   weights, and a pruned block costs a pointer step.
 * - On a core with the DSP extension (Cortex-M4), four int8 products take two SMLADs.
 */
#ifndef AOT_CONV_IMPL_H_
#define AOT_CONV_IMPL_H_

#include <string.h>

#include "aot_kernels.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#endif

/* acc + sum of w[i] * x[i] for i < n. */
static inline int32_t dot_s8(const int8_t* w, const int8_t* x, int32_t n, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w += 4, x += 4) {
    uint32_t wv, xv;
    memcpy(&wv, w, 4); /* unaligned loads: one LDR each on the M4 */
    memcpy(&xv, x, 4);
    acc = __smlad(__sxtb16(wv), __sxtb16(xv), acc);
    acc = __smlad(__sxtb16((wv >> 8) | (wv << 24)), __sxtb16((xv >> 8) | (xv << 24)), acc);
  }
#endif
  for (; n > 0; --n) acc += (int32_t)(*w++) * (int32_t)(*x++);
  return acc;
}

#ifndef AOT_ROW_BUFFER_BYTES
/* A block-sparse row of up to this many weights is expanded (zeros included) into a stack
 * buffer, two rows at a time, and runs through the dense paths: part of the engine's fixed
 * stack, not of the arena. Longer rows are walked block by block. */
#define AOT_ROW_BUFFER_BYTES 256
#endif

/* aot_multiply_by_quantized_multiplier, inlined for a multiplier in [0, 2^31): TFLite's
 * double rounding, with the 64-bit division by 2^31 done as a shift. */
static inline int32_t requantize(int32_t acc, int32_t multiplier, int shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int64_t ab = (int64_t)(int32_t)((uint32_t)acc << left) * multiplier;
  const int64_t nudged = ab + (ab >= 0 ? (1 << 30) : (1 - (1 << 30)));
  const int32_t high = (int32_t)((nudged + (nudged < 0 ? 0x7fffffffLL : 0)) >> 31); /* toward zero */
  if (right == 0) return high;
  const int32_t mask = (int32_t)(((int64_t)1 << right) - 1);
  const int32_t threshold = (mask >> 1) + (high < 0 ? 1 : 0);
  return (high >> right) + ((high & mask) > threshold ? 1 : 0);
}

static inline uint32_t ror8(uint32_t v) { return (v >> 8) | (v << 24); }

/* Two rows against the same input: acc0 += w0 . x and acc1 += w1 . x, each input loaded once. */
static inline __attribute__((always_inline)) void dot2_s8(const int8_t* w0, const int8_t* w1, const int8_t* x,
                                                          int32_t n, int32_t* acc0, int32_t* acc1) {
  int32_t a0 = *acc0, a1 = *acc1;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w0 += 4, w1 += 4, x += 4) {
    uint32_t xv, u, v;
    memcpy(&xv, x, 4);
    memcpy(&u, w0, 4);
    memcpy(&v, w1, 4);
    const uint32_t x02 = __sxtb16(xv), x13 = __sxtb16(ror8(xv));
    a0 = __smlad(__sxtb16(u), x02, a0);
    a0 = __smlad(__sxtb16(ror8(u)), x13, a0);
    a1 = __smlad(__sxtb16(v), x02, a1);
    a1 = __smlad(__sxtb16(ror8(v)), x13, a1);
  }
#endif
  for (; n > 0; --n) {
    const int32_t xi = *x++;
    a0 += (int32_t)(*w0++) * xi;
    a1 += (int32_t)(*w1++) * xi;
  }
  *acc0 = a0;
  *acc1 = a1;
}

/* acc + sum of w[i] for i < n. */
static inline int32_t sum_s8(const int8_t* w, int32_t n, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w += 4) {
    uint32_t wv;
    memcpy(&wv, w, 4);
    acc = __smlad(__sxtb16(wv), 0x00010001u, acc);
    acc = __smlad(__sxtb16((wv >> 8) | (wv << 24)), 0x00010001u, acc);
  }
#endif
  for (; n > 0; --n) acc += *w++;
  return acc;
}

/* acc + sum of w[i] * (x[i] + offset) for i < n: a border output's inside part, with the input
 * offset applied to the inputs read rather than folded (the padding then adds nothing). */
static inline __attribute__((always_inline)) int32_t dot_s8_offset(const int8_t* w, const int8_t* x, int32_t n,
                                                                   int32_t offset, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  const uint32_t offsets = ((uint32_t)offset & 0xffffu) | ((uint32_t)offset << 16);
  for (; n >= 4; n -= 4, w += 4, x += 4) {
    uint32_t wv, xv;
    memcpy(&wv, w, 4);
    memcpy(&xv, x, 4);
    acc = __smlad(__sxtb16(wv), __sadd16(__sxtb16(xv), offsets), acc);
    acc = __smlad(__sxtb16(ror8(wv)), __sadd16(__sxtb16(ror8(xv)), offsets), acc);
  }
#endif
  for (; n > 0; --n) acc += (int32_t)(*w++) * ((int32_t)(*x++) + offset);
  return acc;
}

/* Two rows against the same input, the input offset applied to each input read. */
static inline __attribute__((always_inline)) void dot2_s8_offset(const int8_t* w0, const int8_t* w1,
                                                                 const int8_t* x, int32_t n, int32_t offset,
                                                                 int32_t* acc0, int32_t* acc1) {
  int32_t a0 = *acc0, a1 = *acc1;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  const uint32_t offsets = ((uint32_t)offset & 0xffffu) | ((uint32_t)offset << 16);
  for (; n >= 4; n -= 4, w0 += 4, w1 += 4, x += 4) {
    uint32_t xv, u, v;
    memcpy(&xv, x, 4);
    memcpy(&u, w0, 4);
    memcpy(&v, w1, 4);
    const uint32_t x02 = __sadd16(__sxtb16(xv), offsets), x13 = __sadd16(__sxtb16(ror8(xv)), offsets);
    a0 = __smlad(__sxtb16(u), x02, a0);
    a0 = __smlad(__sxtb16(ror8(u)), x13, a0);
    a1 = __smlad(__sxtb16(v), x02, a1);
    a1 = __smlad(__sxtb16(ror8(v)), x13, a1);
  }
#endif
  for (; n > 0; --n) {
    const int32_t xi = (int32_t)(*x++) + offset;
    a0 += (int32_t)(*w0++) * xi;
    a1 += (int32_t)(*w1++) * xi;
  }
  *acc0 = a0;
  *acc1 = a1;
}

/* The patch as runs of contiguous input bytes: one per kernel row (undilated), else one per tap. */
typedef struct {
  const aot_conv_params* p;
  int32_t run_len;      /* kernel_w * in_c undilated, else in_c */
  int32_t runs_per_row; /* 1 undilated, else kernel_w */
  int32_t runs;         /* runs_per_row * kernel_h */
} patch_shape;

/* Run `r` of the window at (y0, x0): where it starts in the input (as an offset, possibly outside)
 * and the part [*lo, *hi) of it that lies inside the input. */
static inline __attribute__((always_inline)) void run_at(const patch_shape* s, const int8_t* input, int y0, int x0, int32_t r,
                      int32_t* lo, int32_t* hi, const int8_t** start) {
  const aot_conv_params* p = s->p;
  const int ky = r / s->runs_per_row;
  const int kx = r - ky * s->runs_per_row;
  const int y = y0 + p->dilation_h * ky;
  const int x = x0 + p->dilation_w * kx; /* the run's first tap */
  *lo = *hi = 0;
  if (y >= 0 && y < p->in_h) {
    if (s->runs_per_row == 1) {
      const int first = x < 0 ? -x : 0;
      const int past = p->in_w - x < p->kernel_w ? p->in_w - x : p->kernel_w;
      if (past > first) {
        *lo = first * p->in_c;
        *hi = past * p->in_c;
      }
    } else if (x >= 0 && x < p->in_w) {
      *hi = p->in_c;
    }
  }
  *start = input + (y * p->in_w + x) * p->in_c; /* only read within [lo, hi) */
}

/* Interior output, dense row: one dot product per run. */
static inline __attribute__((always_inline)) int32_t dense_interior(const patch_shape* s, const int8_t* w, const int8_t* input, int y0, int x0,
                              int32_t acc) {
  const aot_conv_params* p = s->p;
  const int32_t run_step = p->dilation_w * p->in_c;
  const int32_t row_step = p->dilation_h * p->in_w * p->in_c;
  const int8_t* row = input + (y0 * p->in_w + x0) * p->in_c;
  for (int ky = 0; ky < p->kernel_h; ++ky, row += row_step) {
    const int8_t* run = row;
    for (int r = 0; r < s->runs_per_row; ++r, run += run_step, w += s->run_len) {
      acc = dot_s8(w, run, s->run_len, acc);
    }
  }
  return acc;
}

/* Interior output, two dense rows (w, w + row_len) at once. */
static inline __attribute__((always_inline)) void dense_interior2(const patch_shape* s, const int8_t* w,
                                                                  int32_t row_len, const int8_t* input, int y0,
                                                                  int x0, int32_t* acc0, int32_t* acc1) {
  const aot_conv_params* p = s->p;
  const int32_t run_step = p->dilation_w * p->in_c;
  const int32_t row_step = p->dilation_h * p->in_w * p->in_c;
  const int8_t* row = input + (y0 * p->in_w + x0) * p->in_c;
  for (int ky = 0; ky < p->kernel_h; ++ky, row += row_step) {
    const int8_t* run = row;
    for (int r = 0; r < s->runs_per_row; ++r, run += run_step, w += s->run_len) {
      dot2_s8(w, w + row_len, run, s->run_len, acc0, acc1);
    }
  }
}

/* Border output, dense row: `acc` starts from the bias without the folded offset, and only
 * the part of each run inside the input is read, the offset applied to it: the padding, being
 * the zero point, adds nothing. */
static inline __attribute__((always_inline)) int32_t dense_border(const patch_shape* s, const int8_t* w,
                                                                  const int8_t* input, int y0, int x0,
                                                                  int32_t acc) {
  for (int32_t r = 0; r < s->runs; ++r, w += s->run_len) {
    int32_t lo, hi;
    const int8_t* start;
    run_at(s, input, y0, x0, r, &lo, &hi, &start);
    acc = dot_s8_offset(w + lo, start + lo, hi - lo, s->p->input_offset, acc);
  }
  return acc;
}

/* Border output, two dense rows (w, w + row_len) at once, from their unfolded biases. */
static inline __attribute__((always_inline)) void dense_border2(const patch_shape* s, const int8_t* w,
                                                                int32_t row_len, const int8_t* input, int y0,
                                                                int x0, int32_t* acc0, int32_t* acc1) {
  for (int32_t r = 0; r < s->runs; ++r, w += s->run_len) {
    int32_t lo, hi;
    const int8_t* start;
    run_at(s, input, y0, x0, r, &lo, &hi, &start);
    dot2_s8_offset(w + lo, w + row_len + lo, start + lo, hi - lo, s->p->input_offset, acc0, acc1);
  }
}

/* Interior output, block-sparse row whose blocks never straddle two runs (the block size
 * divides the run): each stored block is one dot product at a fixed offset in the window. */
static inline __attribute__((always_inline)) int32_t sparse_interior(const patch_shape* s, const int8_t* w,
                                                                     const uint8_t* bits, const int8_t* window,
                                                                     int32_t acc) {
  const aot_conv_params* p = s->p;
  const int32_t block = 1 << p->weights.block_shift;
  const int32_t run_step = p->dilation_w * p->in_c;
  const int32_t row_step = p->dilation_h * p->in_w * p->in_c;
  const int32_t blocks_per_run = s->run_len / block;
  int32_t b = 0;
  const int8_t* row = window;
  for (int ky = 0; ky < p->kernel_h; ++ky, row += row_step) {
    const int8_t* run = row;
    for (int r = 0; r < s->runs_per_row; ++r, run += run_step) {
      for (int32_t i = 0; i < blocks_per_run; ++i, ++b) {
        if ((bits[b >> 3] >> (b & 7)) & 1) {
          acc = dot_s8(w, run + i * block, block, acc);
          w += block;
        }
      }
    }
  }
  return acc;
}

/* Border output, block-sparse row whose blocks never straddle two runs, from the unfolded
 * bias: per stored block, only its part inside the input is read. */
static inline __attribute__((always_inline)) int32_t sparse_border(const patch_shape* s, const int8_t* w,
                                                                   const uint8_t* bits, const int8_t* input,
                                                                   int y0, int x0, int32_t acc) {
  const int32_t block = 1 << s->p->weights.block_shift;
  const int32_t blocks_per_run = s->run_len / block;
  int32_t b = 0;
  for (int32_t r = 0; r < s->runs; ++r) {
    int32_t lo, hi;
    const int8_t* start;
    run_at(s, input, y0, x0, r, &lo, &hi, &start);
    for (int32_t i = 0, offset = 0; i < blocks_per_run; ++i, ++b, offset += block) {
      if (!((bits[b >> 3] >> (b & 7)) & 1)) continue;
      const int32_t a = offset > lo ? offset : lo, z = offset + block < hi ? offset + block : hi;
      if (z > a) acc = dot_s8_offset(w + (a - offset), start + a, z - a, s->p->input_offset, acc);
      w += block;
    }
  }
  return acc;
}

/* Blocks in a row of the layer's kernel. */
static inline int32_t k_blocks(const patch_shape* s) {
  return ((s->p->weights.row_len - 1) >> s->p->weights.block_shift) + 1;
}

/* Any output, block-sparse row: the stored blocks only, each cut where a run ends, its inside
 * part a dot product and its part over the padding summed for the zero point. */
static inline __attribute__((always_inline)) int32_t sparse_row(const patch_shape* s, const aot_weights* weights, const int8_t* w,
                          const uint8_t* bits, const int8_t* input, int y0, int x0, int32_t acc) {
  const int32_t block = 1 << weights->block_shift;
  const int32_t k = weights->row_len;
  int32_t outside = 0;
  int32_t r = 0, offset = 0, lo, hi;
  const int8_t* start;
  run_at(s, input, y0, x0, 0, &lo, &hi, &start);
  for (int32_t first = 0, b = 0; first < k; first += block, ++b) {
    int32_t left = k - first < block ? k - first : block;
    const int stored = (bits[b >> 3] >> (b & 7)) & 1;
    while (left > 0) {
      int32_t n = s->run_len - offset;
      if (n > left) n = left;
      if (stored) {
        const int32_t end = offset + n;
        const int32_t a = offset > lo ? offset : lo;   /* inside part [a, z) */
        const int32_t z = end < hi ? end : hi;
        if (z > a) {
          outside = sum_s8(w, a - offset, outside);
          acc = dot_s8(w + (a - offset), start + a, z - a, acc);
          outside = sum_s8(w + (z - offset), end - z, outside);
        } else {
          outside = sum_s8(w, n, outside);
        }
        w += n;
      }
      left -= n;
      offset += n;
      if (offset == s->run_len && ++r < s->runs) {
        offset = 0;
        run_at(s, input, y0, x0, r, &lo, &hi, &start);
      }
    }
  }
  return acc - s->p->input_offset * outside;
}

/* Block-sparse row over contiguous input: one dot product per stored block. */
static inline __attribute__((always_inline)) int32_t sparse_contiguous(const aot_weights* weights, const int8_t* w, const uint8_t* bits,
                                 const int8_t* x, int32_t acc) {
  const int32_t block = 1 << weights->block_shift;
  const int32_t k = weights->row_len;
  const int32_t full = k >> weights->block_shift; /* blocks of the full size; a shorter last one */
  for (int32_t b = 0; b < full; ++b, x += block) {
    if ((bits[b >> 3] >> (b & 7)) & 1) {
      acc = dot_s8(w, x, block, acc);
      w += block;
    }
  }
  if (full * block < k && ((bits[full >> 3] >> (full & 7)) & 1)) acc = dot_s8(w, x, k - full * block, acc);
  return acc;
}

/* First output index whose window starts at or after 0, and last whose window ends inside. */
static inline __attribute__((always_inline)) void interior(int out, int in, int kernel, int stride, int dilation, int pad, int* lo, int* hi) {
  *lo = (pad + stride - 1) / stride;
  const int last = in - 1 + pad - (kernel - 1) * dilation; /* largest o * stride allowed */
  *hi = last < 0 ? -1 : last / stride;
  if (*hi > out - 1) *hi = out - 1;
}

/* make AOT_KERNELS=reference: the portable references in the fast kernels' place (the oracle). */
#ifdef AOT_REFERENCE_KERNELS
#define AOT_CONV2D(params, input, output) aot_conv2d_reference(&(params), (input), (output))
#define AOT_DEPTHWISE_CONV2D(params, input, output) aot_depthwise_conv2d_reference(&(params), (input), (output))
#define AOT_MAX_POOL(params, input, output) aot_max_pool_reference(&(params), (input), (output))
#else
#define AOT_CONV2D(params, input, output) aot_conv2d_inline(&(params), (input), (output))
#define AOT_DEPTHWISE_CONV2D(params, input, output) aot_depthwise_conv2d_inline(&(params), (input), (output))
#define AOT_MAX_POOL(params, input, output) aot_max_pool_inline(&(params), (input), (output))
#endif


/* Copies a block-sparse row into `dense`, zeros where blocks were pruned. */
static inline void expand_row(const aot_weights* weights, const int8_t* values, const uint8_t* bits,
                              int8_t* dense) {
  const int32_t block = 1 << weights->block_shift;
  const int32_t k = weights->row_len;
  for (int32_t first = 0, b = 0; first < k; first += block, ++b) {
    const int32_t n = k - first < block ? k - first : block;
    if ((bits[b >> 3] >> (b & 7)) & 1) {
      memcpy(dense + first, values, (size_t)n);
      values += n;
    } else {
      memset(dense + first, 0, (size_t)n);
    }
  }
}

typedef struct {
  int oy_lo, oy_hi, ox_lo, ox_hi; /* the interior: outputs whose window lies inside the input */
} interior_box;

/* Output channels oc and oc + 1 from two consecutive dense rows starting at `rows`. */
static inline __attribute__((always_inline)) void conv_two_rows(const patch_shape* s, const interior_box* box,
                                                                const int8_t* rows, int oc,
                                                                const int8_t* input, int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t k = p->weights.row_len;
  const int32_t bias0 = p->bias ? p->bias[oc] : 0, bias1 = p->bias ? p->bias[oc + 1] : 0;
  /* the biases without the folded offset, for border outputs (if the layer has any) */
  const int any_border = box->oy_lo > 0 || box->oy_hi < p->out_h - 1 || box->ox_lo > 0 || box->ox_hi < p->out_w - 1;
  const int32_t border0 = any_border ? bias0 - p->input_offset * sum_s8(rows, k, 0) : 0;
  const int32_t border1 = any_border ? bias1 - p->input_offset * sum_s8(rows + k, k, 0) : 0;
  int8_t* out = output + oc;
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    const int inside_y = oy >= box->oy_lo && oy <= box->oy_hi;
    for (int ox = 0; ox < p->out_w; ++ox, out += p->out_c) {
      const int x0 = ox * p->stride_w - p->pad_w;
      int32_t acc0, acc1;
      if (inside_y && ox >= box->ox_lo && ox <= box->ox_hi) {
        acc0 = bias0;
        acc1 = bias1;
        dense_interior2(s, rows, k, input, y0, x0, &acc0, &acc1);
      } else {
        acc0 = border0;
        acc1 = border1;
        dense_border2(s, rows, k, input, y0, x0, &acc0, &acc1);
      }
      acc0 = requantize(acc0, p->multiplier[oc], p->shift[oc]) + p->output_offset;
      acc1 = requantize(acc1, p->multiplier[oc + 1], p->shift[oc + 1]) + p->output_offset;
      out[0] = (int8_t)(acc0 < p->act_min ? p->act_min : acc0 > p->act_max ? p->act_max : acc0);
      out[1] = (int8_t)(acc1 < p->act_min ? p->act_min : acc1 > p->act_max ? p->act_max : acc1);
    }
  }
}

/* Output channel oc from one row: dense, or block-sparse walked block by block. */
static inline __attribute__((always_inline)) void conv_one_row(const patch_shape* s, const interior_box* box,
                                                               const int8_t* values, const int8_t* end,
                                                               const uint8_t* bits, int contiguous, int oc,
                                                               const int8_t* input, int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t bias = p->bias ? p->bias[oc] : 0;
  const int any_border = box->oy_lo > 0 || box->oy_hi < p->out_h - 1 || box->ox_lo > 0 || box->ox_hi < p->out_w - 1;
  const int32_t border_bias = any_border ? bias - p->input_offset * sum_s8(values, (int32_t)(end - values), 0) : 0;
  const int aligned = s->run_len % (1 << p->weights.block_shift) == 0;
  int8_t* out = output + oc;
  if (bits && values == end) { /* a pruned-away filter: a constant */
    const int32_t v = requantize(bias, p->multiplier[oc], p->shift[oc]) + p->output_offset;
    const int8_t constant = (int8_t)(v < p->act_min ? p->act_min : v > p->act_max ? p->act_max : v);
    for (int i = 0; i < p->out_h * p->out_w; ++i, out += p->out_c) *out = constant;
    return;
  }
  /* Aligned block-sparse row: where each stored block reads in an interior window, found once
   * per row (the bitmap then is not read again per output). */
  const int32_t block = 1 << p->weights.block_shift;
  const int32_t blocks = bits && aligned ? k_blocks(s) : 0;
  int32_t offsets[AOT_ROW_BUFFER_BYTES / 4];
  uint8_t run_of[AOT_ROW_BUFFER_BYTES / 4], start_in_run[AOT_ROW_BUFFER_BYTES / 4];
  int32_t stored = 0;
  if (bits && aligned && !contiguous && blocks <= AOT_ROW_BUFFER_BYTES / 4 && s->runs <= 255 && s->run_len < 256) {
    const int32_t blocks_per_run = s->run_len / block;
    for (int32_t b = 0; b < blocks; ++b) {
      if (!((bits[b >> 3] >> (b & 7)) & 1)) continue;
      const int32_t r = b / blocks_per_run, ky = r / s->runs_per_row, kx = r - ky * s->runs_per_row;
      run_of[stored] = (uint8_t)r;
      start_in_run[stored] = (uint8_t)((b - r * blocks_per_run) * block);
      offsets[stored++] = ky * p->dilation_h * p->in_w * p->in_c + kx * p->dilation_w * p->in_c +
                          (b - r * blocks_per_run) * block;
    }
  } else {
    stored = -1; /* not listed: walk the bitmap */
  }
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    const int inside_y = oy >= box->oy_lo && oy <= box->oy_hi;
    for (int ox = 0; ox < p->out_w; ++ox, out += p->out_c) {
      const int x0 = ox * p->stride_w - p->pad_w;
      int32_t acc;
      if (stored >= 0 && inside_y && ox >= box->ox_lo && ox <= box->ox_hi) {
        const int8_t* window = input + (y0 * p->in_w + x0) * p->in_c;
        const int8_t* w = values;
        acc = bias;
        for (int32_t j = 0; j < stored; ++j, w += block) acc = dot_s8(w, window + offsets[j], block, acc);
      } else if (stored >= 0) { /* border: each listed block clipped to its run's inside part */
        int32_t run = -1, lo = 0, hi = 0;
        const int8_t* start = input;
        const int8_t* w = values;
        acc = border_bias;
        for (int32_t j = 0; j < stored; ++j, w += block) { /* blocks in run order */
          if (run_of[j] != run) {
            run = run_of[j];
            run_at(s, input, y0, x0, run, &lo, &hi, &start);
          }
          const int32_t first = start_in_run[j];
          const int32_t a = first > lo ? first : lo;
          const int32_t z = first + block < hi ? first + block : hi;
          if (z > a) acc = dot_s8_offset(w + (a - first), start + a, z - a, p->input_offset, acc);
        }
      } else if (bits && contiguous) {
        acc = sparse_contiguous(&p->weights, values, bits, input + (y0 * p->in_w + x0) * p->in_c, bias);
      } else if (bits && aligned && inside_y && ox >= box->ox_lo && ox <= box->ox_hi) {
        acc = sparse_interior(s, values, bits, input + (y0 * p->in_w + x0) * p->in_c, bias);
      } else if (bits && aligned) {
        acc = sparse_border(s, values, bits, input, y0, x0, border_bias);
      } else if (bits) {
        acc = sparse_row(s, &p->weights, values, bits, input, y0, x0, bias);
      } else if (inside_y && ox >= box->ox_lo && ox <= box->ox_hi) {
        acc = dense_interior(s, values, input, y0, x0, bias);
      } else {
        acc = dense_border(s, values, input, y0, x0, border_bias);
      }
      acc = requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
      *out = (int8_t)(acc < p->act_min ? p->act_min : acc > p->act_max ? p->act_max : acc);
    }
  }
}

static inline __attribute__((always_inline)) void aot_conv2d_inline(const aot_conv_params* p,
                                                                    const int8_t* input, int8_t* output) {
  const aot_weights* weights = &p->weights;
  const int32_t k = weights->row_len;
  patch_shape s;
  s.p = p;
  s.run_len = p->dilation_w == 1 ? p->kernel_w * p->in_c : p->in_c;
  s.runs_per_row = p->dilation_w == 1 ? 1 : p->kernel_w;
  s.runs = s.runs_per_row * p->kernel_h;
  interior_box box;
  interior(p->out_h, p->in_h, p->kernel_h, p->stride_h, p->dilation_h, p->pad_h, &box.oy_lo, &box.oy_hi);
  interior(p->out_w, p->in_w, p->kernel_w, p->stride_w, p->dilation_w, p->pad_w, &box.ox_lo, &box.ox_hi);
  /* A 1x1 kernel without padding, or a single output over the whole input (a fully connected
   * layer): every window is the row's length of contiguous input bytes. */
  const int contiguous = (p->kernel_h == 1 && p->kernel_w == 1 && p->pad_h == 0 && p->pad_w == 0) ||
                         (p->out_h == 1 && p->out_w == 1 && p->in_h == p->kernel_h && p->in_w == p->kernel_w &&
                          p->pad_h == 0 && p->pad_w == 0 && p->dilation_h == 1 && p->dilation_w == 1);
  const int8_t* values = weights->values;
  const uint8_t* bits = weights->bitmap;
  int oc = 0;
  if (!bits) { /* dense rows: two output channels per pass, sharing every input load */
    for (; oc + 1 < p->out_c; oc += 2, values += 2 * k) conv_two_rows(&s, &box, values, oc, input, output);
    if (oc < p->out_c) conv_one_row(&s, &box, values, values + k, 0, contiguous, oc, input, output);
    return;
  }
  const int32_t bitmap_row = ((((k - 1) >> weights->block_shift) + 1) + 7) / 8;
  /* Short rows of small blocks (under 8 weights, where a block test costs about what it saves):
   * expanded, zeros included, and run through the dense paths. Rows of 8- and 16-weight blocks,
   * as the search prunes them, are walked block by block, so a pruned block costs no time. */
  if (k <= AOT_ROW_BUFFER_BYTES && p->out_h * p->out_w >= 4 && weights->block_shift < 3) {
    int8_t rows[2 * AOT_ROW_BUFFER_BYTES] __attribute__((aligned(4)));
    for (; oc + 1 < p->out_c; oc += 2) {
      expand_row(weights, values, bits, rows);
      values = aot_row_end(weights, values, bits);
      expand_row(weights, values, bits + bitmap_row, rows + k);
      values = aot_row_end(weights, values, bits + bitmap_row);
      bits += 2 * bitmap_row;
      conv_two_rows(&s, &box, rows, oc, input, output);
    }
    if (oc < p->out_c) {
      expand_row(weights, values, bits, rows);
      conv_one_row(&s, &box, rows, rows + k, 0, contiguous, oc, input, output);
    }
    return;
  }
  for (; oc < p->out_c; ++oc, bits += bitmap_row) {
    const int8_t* end = aot_row_end(weights, values, bits);
    conv_one_row(&s, &box, values, end, bits, contiguous, oc, input, output);
    values = end;
  }
}

/* DEPTHWISE_CONV_2D, fast: per output, each channel's taps clipped to the input (the bias is
 * folded, so the padding adds the zero point times the weights it covers). */
/* Four channels of one tap: a[i] += w[i] * x[i]. */
static inline __attribute__((always_inline)) void mac4(const int8_t* w, const int8_t* x, int32_t* a0, int32_t* a1,
                                                       int32_t* a2, int32_t* a3) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  uint32_t xv, wv;
  memcpy(&xv, x, 4);
  memcpy(&wv, w, 4);
  const uint32_t x02 = __sxtb16(xv), x13 = __sxtb16(ror8(xv));
  const uint32_t w02 = __sxtb16(wv), w13 = __sxtb16(ror8(wv));
  *a0 = __smlabb(w02, x02, *a0);
  *a2 = __smlatt(w02, x02, *a2);
  *a1 = __smlabb(w13, x13, *a1);
  *a3 = __smlatt(w13, x13, *a3);
#else
  *a0 += (int32_t)w[0] * x[0];
  *a1 += (int32_t)w[1] * x[1];
  *a2 += (int32_t)w[2] * x[2];
  *a3 += (int32_t)w[3] * x[3];
#endif
}

/* Depth multiplier 1: four channels at a time, their sums kept in registers over the taps.
 * Interior outputs read their window with no tests; at the border a tap over the padding
 * reads a row of zero points instead of the input (the bias being folded). */
static inline __attribute__((always_inline)) void depthwise_by_four(const aot_conv_params* p, const int8_t* input,
                                                                    int8_t* output, const int8_t* zero_points) {
  const int8_t* weights = p->weights.values; /* [kh][kw][c] */
  const int channels = p->out_c;
  const int groups = channels / 4;
  int oy_lo, oy_hi, ox_lo, ox_hi;
  interior(p->out_h, p->in_h, p->kernel_h, p->stride_h, p->dilation_h, p->pad_h, &oy_lo, &oy_hi);
  interior(p->out_w, p->in_w, p->kernel_w, p->stride_w, p->dilation_w, p->pad_w, &ox_lo, &ox_hi);
  const int32_t tap_step = p->dilation_w * channels;
  const int32_t row_step = p->dilation_h * p->in_w * channels;
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    for (int ox = 0; ox < p->out_w; ++ox) {
      const int x0 = ox * p->stride_w - p->pad_w;
      const int inside = oy >= oy_lo && oy <= oy_hi && ox >= ox_lo && ox <= ox_hi;
      int8_t* out = output + (oy * p->out_w + ox) * channels;
      for (int c = 0; c < channels; c += 4) {
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const int8_t* w = weights + c;
        if (inside && c / 4 < groups) {
          const int8_t* in_row = input + (y0 * p->in_w + x0) * channels + c;
          for (int ky = 0; ky < p->kernel_h; ++ky, in_row += row_step) {
            const int8_t* in = in_row;
            for (int kx = 0; kx < p->kernel_w; ++kx, in += tap_step, w += channels) mac4(w, in, &a0, &a1, &a2, &a3);
          }
        } else {
          const int lanes = channels - c < 4 ? channels - c : 4;
          for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int y = y0 + p->dilation_h * ky;
            const int row_inside = y >= 0 && y < p->in_h;
            for (int kx = 0; kx < p->kernel_w; ++kx, w += channels) {
              const int x = x0 + p->dilation_w * kx;
              const int8_t* in = row_inside && x >= 0 && x < p->in_w ? input + (y * p->in_w + x) * channels + c
                                                                     : zero_points;
              if (lanes == 4) {
                mac4(w, in, &a0, &a1, &a2, &a3);
              } else {
                a0 += (int32_t)w[0] * in[0];
                if (lanes > 1) a1 += (int32_t)w[1] * in[1];
                if (lanes > 2) a2 += (int32_t)w[2] * in[2];
              }
            }
          }
        }
        const int32_t sums[4] = {a0, a1, a2, a3};
        for (int i = 0; i < 4 && c + i < channels; ++i) {
          const int32_t acc = (p->bias ? p->bias[c + i] : 0) + sums[i];
          const int32_t v = requantize(acc, p->multiplier[c + i], p->shift[c + i]) + p->output_offset;
          out[c + i] = (int8_t)(v < p->act_min ? p->act_min : v > p->act_max ? p->act_max : v);
        }
      }
    }
  }
}

static inline __attribute__((always_inline)) void aot_depthwise_conv2d_inline(const aot_conv_params* p,
                                                                              const int8_t* input,
                                                                              int8_t* output) {
  if (p->depth_multiplier == 1 && p->out_c <= AOT_ROW_BUFFER_BYTES) {
    int8_t zero_points[AOT_ROW_BUFFER_BYTES + 4] __attribute__((aligned(4)));
    memset(zero_points, -p->input_offset, sizeof(zero_points));
    depthwise_by_four(p, input, output, zero_points);
    return;
  }
  const int8_t* weights = p->weights.values; /* [kh][kw][out_c] */
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    for (int ox = 0; ox < p->out_w; ++ox) {
      const int x0 = ox * p->stride_w - p->pad_w;
      int8_t* out = output + (oy * p->out_w + ox) * p->out_c;
      for (int oc = 0; oc < p->out_c; ++oc) {
        const int ic = oc / p->depth_multiplier;
        int32_t acc = p->bias ? p->bias[oc] : 0, outside = 0;
        for (int ky = 0; ky < p->kernel_h; ++ky) {
          const int y = y0 + p->dilation_h * ky;
          const int8_t* w = weights + ky * p->kernel_w * p->out_c + oc;
          if (y < 0 || y >= p->in_h) {
            for (int kx = 0; kx < p->kernel_w; ++kx) outside += w[kx * p->out_c];
            continue;
          }
          const int8_t* in = input + y * p->in_w * p->in_c + ic;
          for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int x = x0 + p->dilation_w * kx;
            if (x < 0 || x >= p->in_w) {
              outside += w[kx * p->out_c];
            } else {
              acc += (int32_t)w[kx * p->out_c] * (int32_t)in[x * p->in_c];
            }
          }
        }
        acc = requantize(acc - p->input_offset * outside, p->multiplier[oc], p->shift[oc]) + p->output_offset;
        out[oc] = (int8_t)(acc < p->act_min ? p->act_min : acc > p->act_max ? p->act_max : acc);
      }
    }
  }
}

/* MAX_POOL_2D, fast: the window clipped to the input once per output, channels innermost. */
static inline __attribute__((always_inline)) void aot_max_pool_inline(const aot_pool_params* p,
                                                                      const int8_t* input, int8_t* output) {
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    const int fy0 = y0 < 0 ? -y0 : 0;
    const int fy1 = p->filter_h < p->in_h - y0 ? p->filter_h : p->in_h - y0;
    for (int ox = 0; ox < p->out_w; ++ox) {
      const int x0 = ox * p->stride_w - p->pad_w;
      const int fx0 = x0 < 0 ? -x0 : 0;
      const int fx1 = p->filter_w < p->in_w - x0 ? p->filter_w : p->in_w - x0;
      int8_t* out = output + (oy * p->out_w + ox) * p->c;
      for (int c = 0; c < p->c; ++c) out[c] = -128;
      for (int fy = fy0; fy < fy1; ++fy) {
        for (int fx = fx0; fx < fx1; ++fx) {
          const int8_t* in = input + ((y0 + fy) * p->in_w + (x0 + fx)) * p->c;
          for (int c = 0; c < p->c; ++c) out[c] = in[c] > out[c] ? in[c] : out[c];
        }
      }
      for (int c = 0; c < p->c; ++c) {
        const int32_t v = out[c];
        out[c] = (int8_t)(v < p->act_min ? p->act_min : v > p->act_max ? p->act_max : v);
      }
    }
  }
}

#endif /* AOT_CONV_IMPL_H_ */
