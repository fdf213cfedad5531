/* DEPTHWISE_CONV_2D and MAX_POOL_2D, fast: the same integers as their portable references in
 * aot_kernels.c, inlined per layer into the generated aot_model.c with the layer's constants. */
#ifndef AOT_DEPTHWISE_POOL_IMPL_H_
#define AOT_DEPTHWISE_POOL_IMPL_H_

#include <string.h>

#include "aot_kernels.h"
#include "aot_simd.h"

/* Up to four channels of one tap: a[i] += w[i] * (x[i] + offset). `lanes` is a constant where
 * this is inlined; with four lanes, on the M4, two SXTB16s unpack each word and SMLABB/SMLATT
 * multiply (the offset, when not zero, added to the unpacked input pairs with one SADD16 each). */
static inline __attribute__((always_inline)) void tap4(const int8_t* w, const int8_t* x, int lanes, int32_t offset,
                                                       int32_t* a) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  if (lanes == 4) {
    uint32_t xv, wv;
    memcpy(&xv, x, 4);
    memcpy(&wv, w, 4);
    uint32_t x02 = __sxtb16(xv), x13 = sxtb16_odd(xv);
    if (offset != 0) {
      const uint32_t offsets = ((uint32_t)offset & 0xffffu) | ((uint32_t)offset << 16);
      x02 = __sadd16(x02, offsets);
      x13 = __sadd16(x13, offsets);
    }
    const uint32_t w02 = __sxtb16(wv), w13 = sxtb16_odd(wv);
    a[0] = __smlabb(w02, x02, a[0]);
    a[2] = __smlatt(w02, x02, a[2]);
    a[1] = __smlabb(w13, x13, a[1]);
    a[3] = __smlatt(w13, x13, a[3]);
    return;
  }
#endif
#pragma GCC unroll 4
  for (int i = 0; i < lanes; ++i) a[i] += (int32_t)w[i] * ((int32_t)x[i] + offset);
}

/* Channels c .. c + lanes - 1 of a depthwise layer with depth multiplier 1, over every output.
 * The group's biases, multipliers and shifts are read once. Interior outputs read their window
 * with no tests, from the folded bias; a border output clips its tap ranges to the input once
 * and reads only the taps inside, from the unfolded bias with the offset added to what it reads,
 * so a tap over the padding costs nothing. */
static inline __attribute__((always_inline)) void depthwise_group(const aot_conv_params* p, const int8_t* input,
                                                                  int8_t* output, int c, int lanes, int oy_lo,
                                                                  int oy_hi, int ox_lo, int ox_hi) {
  const int channels = p->out_c;
  const int8_t* weights = p->weights.values + c; /* [kh][kw][c] */
  int32_t folded[4] = {0, 0, 0, 0}, unfolded[4];
  requant_t q[4];
#pragma GCC unroll 4
  for (int i = 0; i < lanes; ++i) {
    int32_t sum = 0;
    for (int t = 0; t < p->kernel_h * p->kernel_w; ++t) sum += weights[t * channels + i];
    folded[i] = p->bias ? p->bias[c + i] : 0;
    unfolded[i] = folded[i] - p->input_offset * sum;
    q[i] = requant_of(p->multiplier[c + i], p->shift[c + i]);
  }
  const int32_t tap_step = p->dilation_w * channels;
  const int32_t row_step = p->dilation_h * p->in_w * channels;
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    /* the kernel rows inside the input: ky in [ky_lo, ky_hi) */
    const int ky_lo = y0 >= 0 ? 0 : (-y0 + p->dilation_h - 1) / p->dilation_h;
    const int rows_left = (p->in_h - y0 + p->dilation_h - 1) / p->dilation_h;
    const int ky_hi = rows_left < p->kernel_h ? rows_left : p->kernel_h;
    const int inside_y = oy >= oy_lo && oy <= oy_hi;
    int8_t* out = output + oy * p->out_w * channels + c;
    for (int ox = 0; ox < p->out_w; ++ox, out += channels) {
      const int x0 = ox * p->stride_w - p->pad_w;
      int32_t a[4];
      if (inside_y && ox >= ox_lo && ox <= ox_hi) {
        a[0] = folded[0], a[1] = folded[1], a[2] = folded[2], a[3] = folded[3];
        const int8_t* in_row = input + (y0 * p->in_w + x0) * channels + c;
        const int8_t* w = weights;
        for (int ky = 0; ky < p->kernel_h; ++ky, in_row += row_step) {
          const int8_t* in = in_row;
#pragma GCC unroll 8
          for (int kx = 0; kx < p->kernel_w; ++kx, in += tap_step, w += channels) tap4(w, in, lanes, 0, a);
        }
      } else {
        a[0] = unfolded[0], a[1] = unfolded[1], a[2] = unfolded[2], a[3] = unfolded[3];
        const int kx_lo = x0 >= 0 ? 0 : (-x0 + p->dilation_w - 1) / p->dilation_w;
        const int cols_left = (p->in_w - x0 + p->dilation_w - 1) / p->dilation_w;
        const int kx_hi = cols_left < p->kernel_w ? cols_left : p->kernel_w;
        for (int ky = ky_lo; ky < ky_hi; ++ky) {
          const int8_t* in = input + ((y0 + p->dilation_h * ky) * p->in_w + x0 + p->dilation_w * kx_lo) * channels + c;
          const int8_t* w = weights + (ky * p->kernel_w + kx_lo) * channels;
          for (int kx = kx_lo; kx < kx_hi; ++kx, in += tap_step, w += channels) tap4(w, in, lanes, p->input_offset, a);
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < lanes; ++i) out[i] = requant_out(p, &q[i], a[i]);
    }
  }
}

/* Depth multiplier 1: channel groups of four outermost, a last group of one to three. */
static inline __attribute__((always_inline)) void depthwise_by_four(const aot_conv_params* p, const int8_t* input,
                                                                    int8_t* output) {
  int oy_lo, oy_hi, ox_lo, ox_hi;
  interior(p->out_h, p->in_h, p->kernel_h, p->stride_h, p->dilation_h, p->pad_h, &oy_lo, &oy_hi);
  interior(p->out_w, p->in_w, p->kernel_w, p->stride_w, p->dilation_w, p->pad_w, &ox_lo, &ox_hi);
  int c = 0;
  for (; c + 4 <= p->out_c; c += 4) depthwise_group(p, input, output, c, 4, oy_lo, oy_hi, ox_lo, ox_hi);
  if (p->out_c - c == 3) depthwise_group(p, input, output, c, 3, oy_lo, oy_hi, ox_lo, ox_hi);
  if (p->out_c - c == 2) depthwise_group(p, input, output, c, 2, oy_lo, oy_hi, ox_lo, ox_hi);
  if (p->out_c - c == 1) depthwise_group(p, input, output, c, 1, oy_lo, oy_hi, ox_lo, ox_hi);
}

static inline __attribute__((always_inline)) void aot_depthwise_conv2d_inline(const aot_conv_params* p,
                                                                              const int8_t* input,
                                                                              int8_t* output) {
  if (p->depth_multiplier == 1) {
    depthwise_by_four(p, input, output);
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
        out[oc] = clamp_s8(requantize(acc - p->input_offset * outside, p->multiplier[oc], p->shift[oc]) + p->output_offset,
                           p->act_min, p->act_max);
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
        out[c] = clamp_s8(out[c], p->act_min, p->act_max);
      }
    }
  }
}

#endif /* AOT_DEPTHWISE_POOL_IMPL_H_ */
