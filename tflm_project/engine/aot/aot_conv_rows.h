/* Row primitives of the fast CONV_2D kernel (aot_conv_impl.h): a window as runs of input bytes,
 * and one output's (or two outputs') sum over a dense or block-sparse row, interior or border,
 * the stored blocks listed, walked from a register (clipped per block, or whole where each block
 * lies within one tap) or walked through the bitmap. Everything is static inline, inlined per
 * layer with the layer's constants. */
#ifndef AOT_CONV_ROWS_H_
#define AOT_CONV_ROWS_H_

#include <string.h>

#include "aot_kernels.h"
#include "aot_simd.h"

/* The patch as runs of contiguous input bytes: one per kernel row (undilated), else one per tap. */
typedef struct {
  const aot_conv_params* p;
  int32_t run_len;      /* kernel_w * in_c undilated, else in_c */
  int32_t runs_per_row; /* 1 undilated, else kernel_w */
  int32_t runs;         /* runs_per_row * kernel_h */
  int8_t* scratch;      /* free arena bytes while this layer runs (4-byte aligned), or NULL */
  int32_t scratch_bytes;
} patch_shape;

typedef struct {
  int oy_lo, oy_hi, ox_lo, ox_hi; /* the interior: outputs whose window lies inside the input */
} interior_box;

/* Output channel oc of a pruned-away filter: its bias, requantised, everywhere. */
static inline __attribute__((always_inline)) void conv_constant_row(const aot_conv_params* p, int oc, int8_t* output) {
  const int32_t bias = p->bias ? p->bias[oc] : 0;
  const int8_t constant =
      clamp_s8(requantize(bias, p->multiplier[oc], p->shift[oc]) + p->output_offset, p->act_min, p->act_max);
  int8_t* out = output + oc;
  for (int i = 0; i < p->out_h * p->out_w; ++i, out += p->out_c) *out = constant;
}

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

/* The stored blocks of a row of at most 32 blocks that never straddle two runs, as the set bits of
 * `mask` (read from the bitmap once per row): MASKED_BLOCKS runs its body once per stored block,
 * in order, with `r` its run and `first` where it starts in the run. On the M4 the next block is
 * one RBIT and one CLZ, and the run a multiply (a division by a constant); the M0 has neither CLZ
 * nor a divider, so it steps through the bits with counters. */
#if defined(__ARM_FEATURE_CLZ) && __ARM_FEATURE_CLZ
#define MASKED_BLOCKS(mask, blocks_per_run, block, ...)          \
  for (uint32_t left_ = (mask); left_; left_ &= left_ - 1) {       \
    const int32_t b_ = __builtin_ctz(left_);                        \
    const int32_t r = b_ / (blocks_per_run);                        \
    const int32_t first = (b_ - r * (blocks_per_run)) * (block);    \
    __VA_ARGS__                                                     \
  }
#else
#define MASKED_BLOCKS(mask, blocks_per_run, block, ...)                                \
  for (uint32_t left_ = (mask), r = 0, i_ = 0; left_; left_ >>= 1) {                  \
    if (left_ & 1u) {                                                                  \
      const int32_t first = (int32_t)i_ * (block);                                     \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    if (++i_ == (uint32_t)(blocks_per_run)) i_ = 0, ++r;                               \
  }
#endif

/* Interior output of such a row: one dot product per stored block, nothing for a pruned one. */
static inline __attribute__((always_inline)) int32_t masked_interior(const patch_shape* s, const int8_t* w,
                                                                     uint32_t mask, const int8_t* window,
                                                                     int32_t acc) {
  const aot_conv_params* p = s->p;
  const int32_t block = 1 << p->weights.block_shift;
  const int32_t blocks_per_run = s->run_len / block;
  const int32_t run_step = p->dilation_w * p->in_c;
  const int32_t row_step = p->dilation_h * p->in_w * p->in_c;
  MASKED_BLOCKS(mask, blocks_per_run, block, {
    const int32_t ky = (int32_t)r / s->runs_per_row, kx = (int32_t)r - ky * s->runs_per_row;
    acc = dot_s8(w, window + ky * row_step + kx * run_step + first, block, acc);
    w += block;
  })
  return acc;
}

/* Border output of such a row, from the unfolded bias: each stored block clipped to its run's
 * inside part, the input offset applied to what is read. */
static inline __attribute__((always_inline)) int32_t masked_border(const patch_shape* s, const int8_t* w,
                                                                   uint32_t mask, const int8_t* input, int y0,
                                                                   int x0, int32_t acc) {
  const int32_t block = 1 << s->p->weights.block_shift;
  const int32_t blocks_per_run = s->run_len / block;
  int32_t run = -1, lo = 0, hi = 0;
  const int8_t* start = input;
  MASKED_BLOCKS(mask, blocks_per_run, block, {
    if ((int32_t)r != run) {
      run = (int32_t)r;
      run_at(s, input, y0, x0, run, &lo, &hi, &start);
    }
    const int32_t a = first > lo ? first : lo;
    const int32_t z = first + block < hi ? first + block : hi;
    if (z > a) acc = dot_s8_offset(w + (a - first), start + a, z - a, s->p->input_offset, acc);
    w += block;
  })
  return acc;
}

/* Whether every block of the layer lies within one tap (the block size divides the input
 * channels): a block is then wholly inside the input or wholly over the padding. */
static inline __attribute__((always_inline)) int tap_aligned(const patch_shape* s) {
  return s->p->in_c % (1 << s->p->weights.block_shift) == 0;
}

/* For a tap-aligned row: the blocks of the window at (y0, x0) that lie inside the input, as a mask
 * over the row's blocks (taps in kernel order, in_c / block blocks each). */
static inline __attribute__((always_inline)) uint32_t inside_blocks(const patch_shape* s, int y0, int x0) {
  const aot_conv_params* p = s->p;
  const int32_t per_tap = p->in_c >> p->weights.block_shift;
  const uint32_t tap_bits = per_tap >= 32 ? 0xffffffffu : (1u << per_tap) - 1u;
  uint32_t row_bits = 0; /* the taps of one kernel row inside in x */
  for (int kx = 0; kx < p->kernel_w; ++kx) {
    const int x = x0 + kx * p->dilation_w;
    if (x >= 0 && x < p->in_w) row_bits |= tap_bits << (kx * per_tap);
  }
  uint32_t inside = 0;
  for (int ky = 0; ky < p->kernel_h; ++ky) {
    const int y = y0 + ky * p->dilation_h;
    if (y >= 0 && y < p->in_h) inside |= row_bits << (ky * p->kernel_w * per_tap);
  }
  return inside;
}

/* Where block b of a tap-aligned row starts in the window, from the window's first byte. */
static inline __attribute__((always_inline)) int32_t block_offset(const patch_shape* s, int32_t b) {
  const aot_conv_params* p = s->p;
  const int32_t per_tap = p->in_c >> p->weights.block_shift;
  const int32_t tap = b / per_tap, ky = tap / p->kernel_w, kx = tap - ky * p->kernel_w;
  return (ky * p->dilation_h * p->in_w + kx * p->dilation_w) * p->in_c +
         ((b - tap * per_tap) << p->weights.block_shift);
}

/* Runs its body once per set bit of `mask` (a tap-aligned row's stored blocks), in order, with `b`
 * the block and `offset` where it starts in the window. On the M4 the next block is one RBIT and
 * one CLZ, and its offset a few multiplies; the M0 has no CLZ and no divider, so it steps through
 * the bits keeping the offset as it goes, all steps layer constants. */
#if defined(__ARM_FEATURE_CLZ) && __ARM_FEATURE_CLZ
#define TAP_BLOCKS(s, mask, b, offset, ...)                   \
  for (uint32_t left_ = (mask); left_; left_ &= left_ - 1) { \
    const int32_t b = __builtin_ctz(left_);                   \
    const int32_t offset = block_offset((s), b);              \
    (void)b;                                                  \
    __VA_ARGS__                                               \
  }
#else
#define TAP_BLOCKS(s, mask, b, offset, ...)                                                         \
  do {                                                                                              \
    const aot_conv_params* tp_ = (s)->p;                                                            \
    const int32_t per_tap_ = tp_->in_c >> tp_->weights.block_shift;                                 \
    int32_t b = 0, offset = 0, in_tap_ = 0, kx_ = 0;                                                \
    for (uint32_t left_ = (mask); left_; left_ >>= 1, ++b) {                                        \
      if (left_ & 1u) {                                                                             \
        __VA_ARGS__                                                                                 \
      }                                                                                             \
      offset += 1 << tp_->weights.block_shift;                                                      \
      if (++in_tap_ == per_tap_) { /* the next tap, and at a kernel row's end the next row */      \
        in_tap_ = 0;                                                                                \
        offset += (tp_->dilation_w - 1) * tp_->in_c;                                                \
        if (++kx_ == tp_->kernel_w) {                                                               \
          kx_ = 0;                                                                                  \
          offset += (tp_->dilation_h * tp_->in_w - tp_->kernel_w * tp_->dilation_w) * tp_->in_c;  \
        }                                                                                           \
      }                                                                                             \
    }                                                                                               \
  } while (0)
#endif

/* Border output of a tap-aligned row held in `mask`, from the unfolded bias: the stored blocks
 * inside the input, whole, with the offset applied to what they read; the rest are skipped. */
static inline __attribute__((always_inline)) int32_t masked_border_taps(const patch_shape* s, const int8_t* w,
                                                                        uint32_t mask, const int8_t* input,
                                                                        int y0, int x0, int32_t acc) {
  const aot_conv_params* p = s->p;
  const int32_t block = 1 << p->weights.block_shift;
  const uint32_t inside = inside_blocks(s, y0, x0);
  const int8_t* window = input + (y0 * p->in_w + x0) * p->in_c; /* read only inside the input */
  TAP_BLOCKS(s, mask, b, offset, {
    if ((inside >> b) & 1u) acc = dot_s8_offset(w, window + offset, block, p->input_offset, acc);
    w += block;
  });
  return acc;
}

/* Two interior outputs of a tap-aligned row held in `mask`, their windows at `x0` and `x1`: each
 * stored block's weights loaded once for both. */
static inline __attribute__((always_inline)) void masked_interior2(const patch_shape* s, const int8_t* w,
                                                                   uint32_t mask, const int8_t* x0,
                                                                   const int8_t* x1, int32_t* a0, int32_t* a1) {
  const int32_t block = 1 << s->p->weights.block_shift;
  TAP_BLOCKS(s, mask, b, offset, {
    dot2_s8(x0 + offset, x1 + offset, w, block, a0, a1);
    w += block;
  });
}

/* Two outputs of a tap-aligned row held in `mask` whose windows, at (y0, x0) and one stride to the
 * right, have the same blocks inside the input (along a top or bottom border), from the unfolded
 * bias: each stored block inside is one pass over its weights for both. */
static inline __attribute__((always_inline)) void masked_border_pair(const patch_shape* s, const int8_t* w,
                                                                     uint32_t mask, const int8_t* input, int y0,
                                                                     int x0, int32_t* a0, int32_t* a1) {
  const aot_conv_params* p = s->p;
  const int32_t block = 1 << p->weights.block_shift;
  const uint32_t inside = inside_blocks(s, y0, x0);
  const int8_t* window = input + (y0 * p->in_w + x0) * p->in_c; /* read only inside the input */
  const int8_t* next = window + p->stride_w * p->in_c;
  TAP_BLOCKS(s, mask, b, offset, {
    if ((inside >> b) & 1u) dot_s8_offset_x2(window + offset, next + offset, w, block, p->input_offset, a0, a1);
    w += block;
  });
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

#endif /* AOT_CONV_ROWS_H_ */
