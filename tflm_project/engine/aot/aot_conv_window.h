/* CONV_2D over a small window, fast (kernel_h x kernel_w x in_c at most AOT_WINDOW_MAX, as a first
 * layer over one input channel has), on the M4: each interior output's window is copied once into
 * a patch on the stack and unpacked into sign-extended halfword pairs, then every filter runs
 * against it, one load, two SXTB16 and two SMLAD per four weights, two filters sharing the pairs'
 * loads. The other paths run each filter (or pair) over the whole map, window run by window run,
 * and runs of 3 bytes are too short for SIMD and pay their set-up per filter and output. Border
 * outputs read the inside part of each run, as those paths do.
 *
 * Taken (aot_conv2d_inline, window_chosen) for dense rows over windows that are not contiguous,
 * on maps where at least half the outputs are interior. Inlined per layer with its constants. */
#ifndef AOT_CONV_WINDOW_H_
#define AOT_CONV_WINDOW_H_

#include <string.h>

#include "aot_conv_rows.h"
#include "aot_kernels.h"
#include "aot_simd.h"

#define AOT_WINDOW_MAX 32

/* Whether the layer takes conv_window (mirrored by pipeline/deploy/aot_work.py's window_chosen): on
 * the M4, dense rows over windows that are not contiguous, on a map of which at least half the
 * outputs are interior ones. On the M0, which has no SIMD to unpack the patch for, the per-filter
 * paths were as fast or faster (the user model's first layer: 225,750 and 233,438 instructions). */
static inline __attribute__((always_inline)) int window_chosen(const aot_conv_params* p, const interior_box* box,
                                                               int contiguous) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  const int32_t k = p->weights.row_len;
  const int32_t interior = (box->oy_hi >= box->oy_lo && box->ox_hi >= box->ox_lo)
                               ? (box->oy_hi - box->oy_lo + 1) * (box->ox_hi - box->ox_lo + 1) : 0;
  return !contiguous && !p->weights.bitmap && k <= AOT_WINDOW_MAX && 2 * interior >= p->out_h * p->out_w &&
         interior > 1;
#else
  (void)p, (void)box, (void)contiguous;
  return 0;
#endif
}

/* The window of the interior output at (y0, x0) into patch, its kernel rows one after another. */
static inline __attribute__((always_inline)) void window_patch(const aot_conv_params* p, const int8_t* input, int y0,
                                                               int x0, int8_t* patch) {
  const int8_t* row = input + (y0 * p->in_w + x0) * p->in_c;
#pragma GCC unroll 8
  for (int ky = 0; ky < p->kernel_h; ++ky, row += p->dilation_h * p->in_w * p->in_c) {
    const int8_t* tap = row;
    for (int kx = 0; kx < (p->dilation_w == 1 ? 1 : p->kernel_w); ++kx, tap += p->dilation_w * p->in_c) {
      const int32_t run = p->dilation_w == 1 ? p->kernel_w * p->in_c : p->in_c;
      memcpy(patch + (ky * p->kernel_w + kx) * p->in_c, tap, run);
    }
  }
}

/* acc + filter w . the patch (its words unpacked in even and odd on the M4). */
static inline __attribute__((always_inline)) int32_t window_dot(const int8_t* w, const uint32_t* even,
                                                                const uint32_t* odd, const int8_t* patch,
                                                                int32_t k, int32_t acc) {
  int32_t i = 0;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#pragma GCC unroll 8
  for (int32_t j = 0; j < (k >> 2); ++j, i += 4) {
    uint32_t wv;
    memcpy(&wv, w + i, 4);
    acc = __smlad(__sxtb16(wv), even[j], acc);
    acc = __smlad(sxtb16_odd(wv), odd[j], acc);
  }
#else
  (void)even, (void)odd;
#endif
  for (; i < k; ++i) acc += (int32_t)w[i] * (int32_t)patch[i];
  return acc;
}

static inline __attribute__((always_inline)) void conv_window(const patch_shape* s, const interior_box* box,
                                                              const int8_t* input, int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t k = p->weights.row_len;
  int8_t patch[AOT_WINDOW_MAX] __attribute__((aligned(4)));
  uint32_t even[AOT_WINDOW_MAX / 4], odd[AOT_WINDOW_MAX / 4];
  int8_t* out = output;
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    const int inside_y = oy >= box->oy_lo && oy <= box->oy_hi;
    for (int ox = 0; ox < p->out_w; ++ox, out += p->out_c) {
      const int x0 = ox * p->stride_w - p->pad_w;
      const int inside = inside_y && ox >= box->ox_lo && ox <= box->ox_hi;
      if (inside) {
        window_patch(p, input, y0, x0, patch);
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#pragma GCC unroll 8
        for (int32_t j = 0; j < (k >> 2); ++j) {
          uint32_t v;
          memcpy(&v, patch + 4 * j, 4);
          even[j] = __sxtb16(v);
          odd[j] = sxtb16_odd(v);
        }
#endif
      }
      /* filters two at a time, sharing the patch's loads */
      const int8_t* w = p->weights.values;
      for (int oc = 0; oc < p->out_c; oc += 2, w += 2 * k) {
        const int next = oc + 1, two = next < p->out_c;
        int32_t a0, a1 = 0;
        if (inside) {
          a0 = window_dot(w, even, odd, patch, k, p->bias ? p->bias[oc] : 0);
          if (two) a1 = window_dot(w + k, even, odd, patch, k, p->bias ? p->bias[next] : 0);
        } else if (two) { /* border: the inside part of each run, from the unfolded biases */
          a0 = p->border_bias[oc];
          a1 = p->border_bias[next];
          dense_border2(s, w, k, input, y0, x0, &a0, &a1);
        } else {
          a0 = dense_border(s, w, input, y0, x0, p->border_bias[oc]);
        }
        const requant_t q0 = requant_of(p->multiplier[oc], p->shift[oc]);
        out[oc] = requant_out(p, &q0, a0);
        if (two) {
          const requant_t q1 = requant_of(p->multiplier[next], p->shift[next]);
          out[next] = requant_out(p, &q1, a1);
        }
      }
    }
  }
}

#endif /* AOT_CONV_WINDOW_H_ */
