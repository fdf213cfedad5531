/* Primitives of the fast AOT kernels: int8 dot products and sums (two SMLADs per four products on
 * a core with the DSP extension, plain C elsewhere), TFLite's requantisation inlined, and the
 * interior of a convolution's output. Everything is static inline: the kernels that use these are
 * inlined per layer into the generated aot_model.c. */
#ifndef AOT_SIMD_H_
#define AOT_SIMD_H_

#include <stdint.h>
#include <string.h>

#include "aot_kernels.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>

/* Bytes 1 and 3 of v, sign-extended to halfwords: SXTB16 with its rotation, one instruction
 * (GCC 12's arm_acle.h has no form with the rotation, and does not fuse a separate ROR). */
static inline __attribute__((always_inline)) uint32_t sxtb16_odd(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
#endif

/* Inlined at every call on a core with the DSP extension, where GCC's own choice had left some calls
 * out of line; on the M0 its own choice, as forcing it slowed the bitmap walks (one model's
 * inference from 265,875 to 272,500 instructions). */
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define AOT_DOT_INLINE inline __attribute__((always_inline))
#else
#define AOT_DOT_INLINE inline
#endif

/* acc + sum of w[i] * x[i] for i < n. */
static AOT_DOT_INLINE int32_t dot_s8(const int8_t* w, const int8_t* x, int32_t n, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w += 4, x += 4) {
    uint32_t wv, xv;
    memcpy(&wv, w, 4); /* unaligned loads: one LDR each on the M4 */
    memcpy(&xv, x, 4);
    acc = __smlad(__sxtb16(wv), __sxtb16(xv), acc);
    acc = __smlad(sxtb16_odd(wv), sxtb16_odd(xv), acc);
  }
#endif
  for (; n > 0; --n) acc += (int32_t)(*w++) * (int32_t)(*x++);
  return acc;
}

/* aot_multiply_by_quantized_multiplier for one output channel, split in two: what depends only
 * on the channel's multiplier and shift (worked out once per channel, outside the loop over
 * outputs), and what depends on the accumulator. */
typedef struct {
  int32_t multiplier; /* in [0, 2^31) */
  int32_t left;       /* shift > 0: the accumulator is shifted left first */
  int32_t right;      /* shift < 0: TFLite's rounding division by 2^right after */
  int32_t mask;       /* 2^right - 1 */
  int32_t half;       /* mask / 2: the remainder above which a non-negative result rounds up */
  int32_t shift;      /* as given: the narrow form works out its division from it, with no test */
  int32_t m_lo, m_hi; /* the multiplier's low 16 bits and high 15 bits, for the M0's narrow product */
} requant_t;

static inline __attribute__((always_inline)) requant_t requant_of(int32_t multiplier, int shift) {
  requant_t q;
  q.multiplier = multiplier;
  q.left = shift > 0 ? shift : 0;
  q.right = shift > 0 ? 0 : -shift;
  q.mask = (int32_t)(((int64_t)1 << q.right) - 1);
  q.half = q.mask >> 1;
  q.shift = shift;
  q.m_lo = multiplier & 0xffff;
  q.m_hi = multiplier >> 16;
  return q;
}

/* TFLite's double rounding, the 64-bit division by 2^31 done as a shift. */
static inline __attribute__((always_inline)) int32_t requant_apply(const requant_t* q, int32_t acc) {
  const int64_t ab = (int64_t)(int32_t)((uint32_t)acc << q->left) * q->multiplier;
  const int64_t nudged = ab + (ab >= 0 ? (1 << 30) : (1 - (1 << 30)));
  const int32_t high = (int32_t)((nudged + (nudged < 0 ? 0x7fffffffLL : 0)) >> 31); /* toward zero */
  const int32_t threshold = q->half + (high < 0 ? 1 : 0);
  return (high >> q->right) + ((high & q->mask) > threshold ? 1 : 0);
}

/* The same integers, for a layer whose generator proved every accumulator within [-2^30, 2^30) and
 * every shift negative (aot_conv_params.narrow; pipeline/deploy/aot_quant.py). The high half,
 * floor((acc * multiplier + 2^30) / 2^31), is then one SMMULR of 2 * acc on the M4. The M0 has no
 * long multiply (the 64-bit product is a call to __aeabi_lmul): with acc = h 2^16 + l, l its low
 * half signed, and the multiplier M 2^16 + m, it is 2 h M + floor((h m + l M + floor((l m + 2^30)
 * / 2^16)) / 2^15), every product and sum within int32 for such an acc. |high| being under 2^30,
 * TFLite's rounding division (half away from zero) is (high + 2^(right-1) - (high < 0)) >> right,
 * right = -shift >= 1. */
static inline __attribute__((always_inline)) int32_t requant_apply_narrow(const requant_t* q, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  int32_t high;
  __asm__("smmulr %0, %1, %2" : "=r"(high) : "r"((int32_t)((uint32_t)acc << 1)), "r"(q->multiplier));
#else
  const int32_t l = (int16_t)acc, h = (acc - l) >> 16;
  const int32_t mid = h * q->m_lo + l * q->m_hi + ((l * q->m_lo) >> 16) + (1 << 14);
  const int32_t high = 2 * h * q->m_hi + (mid >> 15);
#endif
  const int32_t round = (int32_t)((1u << 30) >> (31 + q->shift)); /* 2^(right - 1), right = -shift */
  return (high + round - (int32_t)((uint32_t)high >> 31)) >> -q->shift;
}

static inline __attribute__((always_inline)) int32_t requantize(int32_t acc, int32_t multiplier, int shift) {
  const requant_t q = requant_of(multiplier, shift);
  return requant_apply(&q, acc);
}

/* v clamped to [lo, hi], a subrange of int8's: one SSAT on the M4 when the range is int8's own
 * (lo and hi are constants where this is inlined, so the other tests fold away). */
static inline __attribute__((always_inline)) int8_t clamp_s8(int32_t v, int32_t lo, int32_t hi) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  v = __ssat(v, 8);
  if (lo > -128 && v < lo) v = lo;
  if (hi < 127 && v > hi) v = hi;
  return (int8_t)v;
#else
  return (int8_t)(v < lo ? lo : v > hi ? hi : v);
#endif
}


/* An output of layer p from its accumulator: requantised with its channel's q, offset and clamped. */
static inline __attribute__((always_inline)) int8_t requant_out(const aot_conv_params* p, const requant_t* q,
                                                                int32_t acc) {
  const int32_t v = p->narrow ? requant_apply_narrow(q, acc) : requant_apply(q, acc);
  return clamp_s8(v + p->output_offset, p->act_min, p->act_max);
}

/* Two rows against the same input: acc0 += w0 . x and acc1 += w1 . x, each input loaded once (as the
 * dot product is symmetric, also one row against two inputs). */
static inline __attribute__((always_inline)) void dot2_s8(const int8_t* w0, const int8_t* w1, const int8_t* x,
                                                          int32_t n, int32_t* acc0, int32_t* acc1) {
  int32_t a0 = *acc0, a1 = *acc1;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w0 += 4, w1 += 4, x += 4) {
    uint32_t xv, u, v;
    memcpy(&xv, x, 4);
    memcpy(&u, w0, 4);
    memcpy(&v, w1, 4);
    const uint32_t x02 = __sxtb16(xv), x13 = sxtb16_odd(xv);
    a0 = __smlad(__sxtb16(u), x02, a0);
    a0 = __smlad(sxtb16_odd(u), x13, a0);
    a1 = __smlad(__sxtb16(v), x02, a1);
    a1 = __smlad(sxtb16_odd(v), x13, a1);
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

/* Two rows against two inputs: a[2i + j] += w_j . x_i, each weight and input loaded once. */
static inline __attribute__((always_inline)) void dot_s8_2x2(const int8_t* w0, const int8_t* w1, const int8_t* x0,
                                                             const int8_t* x1, int32_t n, int32_t a[4]) {
  int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w0 += 4, w1 += 4, x0 += 4, x1 += 4) {
    uint32_t u, v, wv;
    memcpy(&u, x0, 4);
    memcpy(&v, x1, 4);
    const uint32_t u02 = __sxtb16(u), u13 = sxtb16_odd(u), v02 = __sxtb16(v), v13 = sxtb16_odd(v);
    memcpy(&wv, w0, 4);
    uint32_t w02 = __sxtb16(wv), w13 = sxtb16_odd(wv);
    a00 = __smlad(w13, u13, __smlad(w02, u02, a00));
    a10 = __smlad(w13, v13, __smlad(w02, v02, a10));
    memcpy(&wv, w1, 4);
    w02 = __sxtb16(wv), w13 = sxtb16_odd(wv);
    a01 = __smlad(w13, u13, __smlad(w02, u02, a01));
    a11 = __smlad(w13, v13, __smlad(w02, v02, a11));
  }
#endif
  for (; n > 0; --n) {
    const int32_t u = *x0++, v = *x1++, p = *w0++, q = *w1++;
    a00 += p * u;
    a01 += q * u;
    a10 += p * v;
    a11 += q * v;
  }
  a[0] = a00, a[1] = a01, a[2] = a10, a[3] = a11;
}

/* acc + sum of w[i] for i < n. */
static inline int32_t sum_s8(const int8_t* w, int32_t n, int32_t acc) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  for (; n >= 4; n -= 4, w += 4) {
    uint32_t wv;
    memcpy(&wv, w, 4);
    acc = __smlad(__sxtb16(wv), 0x00010001u, acc);
    acc = __smlad(sxtb16_odd(wv), 0x00010001u, acc);
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
    acc = __smlad(sxtb16_odd(wv), __sadd16(sxtb16_odd(xv), offsets), acc);
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
    const uint32_t x02 = __sadd16(__sxtb16(xv), offsets), x13 = __sadd16(sxtb16_odd(xv), offsets);
    a0 = __smlad(__sxtb16(u), x02, a0);
    a0 = __smlad(sxtb16_odd(u), x13, a0);
    a1 = __smlad(__sxtb16(v), x02, a1);
    a1 = __smlad(sxtb16_odd(v), x13, a1);
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

/* One row against two inputs, the input offset applied to each input read: a0 += w . (x0 + offset)
 * and a1 += w . (x1 + offset), each weight loaded once. */
static inline __attribute__((always_inline)) void dot_s8_offset_x2(const int8_t* x0, const int8_t* x1,
                                                                   const int8_t* w, int32_t n, int32_t offset,
                                                                   int32_t* acc0, int32_t* acc1) {
  int32_t a0 = *acc0, a1 = *acc1;
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
  const uint32_t offsets = ((uint32_t)offset & 0xffffu) | ((uint32_t)offset << 16);
  for (; n >= 4; n -= 4, w += 4, x0 += 4, x1 += 4) {
    uint32_t wv, u, v;
    memcpy(&wv, w, 4);
    memcpy(&u, x0, 4);
    memcpy(&v, x1, 4);
    const uint32_t w02 = __sxtb16(wv), w13 = sxtb16_odd(wv);
    a0 = __smlad(w02, __sadd16(__sxtb16(u), offsets), a0);
    a0 = __smlad(w13, __sadd16(sxtb16_odd(u), offsets), a0);
    a1 = __smlad(w02, __sadd16(__sxtb16(v), offsets), a1);
    a1 = __smlad(w13, __sadd16(sxtb16_odd(v), offsets), a1);
  }
#endif
  for (; n > 0; --n) {
    const int32_t wi = *w++;
    a0 += wi * ((int32_t)(*x0++) + offset);
    a1 += wi * ((int32_t)(*x1++) + offset);
  }
  *acc0 = a0;
  *acc1 = a1;
}

/* First output index whose window starts at or after 0, and last whose window ends inside. */
static inline __attribute__((always_inline)) void interior(int out, int in, int kernel, int stride, int dilation, int pad, int* lo, int* hi) {
  *lo = (pad + stride - 1) / stride;
  const int last = in - 1 + pad - (kernel - 1) * dilation; /* largest o * stride allowed */
  *hi = last < 0 ? -1 : last / stride;
  if (*hi > out - 1) *hi = out - 1;
}

#endif /* AOT_SIMD_H_ */
