/* DEPTHWISE_CONV_2D and MAX_POOL_2D, fast: the same integers as their portable references in
 * aot_kernels.c, inlined per layer into the generated aot_model.c with the layer's constants. */
#ifndef AOT_DEPTHWISE_POOL_IMPL_H_
#define AOT_DEPTHWISE_POOL_IMPL_H_

#include <string.h>

#include "aot_kernels.h"
#include "aot_simd.h"

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

#endif /* AOT_DEPTHWISE_POOL_IMPL_H_ */
