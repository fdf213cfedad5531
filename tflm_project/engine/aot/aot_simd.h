/* Primitives of the fast AOT kernels: int8 dot products and sums (two SMLADs per four products on
 * a core with the DSP extension, plain C elsewhere), TFLite's requantisation inlined, and the
 * interior of a convolution's output. Everything is static inline: the kernels that use these are
 * inlined per layer into the generated aot_model.c. */
#ifndef AOT_SIMD_H_
#define AOT_SIMD_H_

#include <stdint.h>
#include <string.h>

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

/* First output index whose window starts at or after 0, and last whose window ends inside. */
static inline __attribute__((always_inline)) void interior(int out, int in, int kernel, int stride, int dilation, int pad, int* lo, int* hi) {
  *lo = (pad + stride - 1) / stride;
  const int last = in - 1 + pad - (kernel - 1) * dilation; /* largest o * stride allowed */
  *hi = last < 0 ? -1 : last / stride;
  if (*hi > out - 1) *hi = out - 1;
}

#endif /* AOT_SIMD_H_ */
