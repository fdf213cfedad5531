/* CONV_2D, fast: the same integers as aot_conv2d_reference, computed with fewer instructions.
 *
 * Inlined per layer into the generated aot_model.c (through aot_fast.h) with the layer's static
 * const parameters, so the compiler folds shapes, strides and padding and drops the paths the
 * layer cannot take.
 *
 * - The input offset is folded into the bias at generation time (pipeline/deploy/aot.py), so an
 *   interior output is bias + sum(w * x) with no per-weight addition.
 * - Outputs whose window lies inside the input (the interior) take a path with no bounds
 *   tests: the window is a few contiguous runs of input bytes (one per kernel row, or per tap
 *   when dilated). Border outputs read only the inside part of each run, from the unfolded
 *   bias with the offset applied to what they read, so the padding costs nothing.
 * - Dense rows run two output channels per pass. A block-sparse row lists its stored blocks
 *   once (or is walked block by block), so a pruned block costs nothing; short rows of small
 *   blocks are expanded and run as dense; a layer whose blocks straddle its windows' runs copies
 *   two windows at a time into patches (im2col) where little of them is padding.
 * - Those use scratch: bytes of the arena that no tensor occupies while the layer runs, found by
 *   the generator (pipeline/deploy/aot.py) and passed with their size. A layer with too little scratch
 *   walks its bitmap instead, so scratch never adds to the arena or to WM.
 *
 * The per-output sums over one row live in aot_conv_rows.h, the loops over contiguous windows (1x1
 * kernels, fully connected layers) in aot_conv_pointwise.h, im2col in aot_conv_im2col.h and small
 * windows in aot_conv_window.h; this file holds the loops over windows of kernel rows and the
 * choice between all of them.
 */
#ifndef AOT_CONV_IMPL_H_
#define AOT_CONV_IMPL_H_

#include <string.h>

#include "aot_conv_im2col.h"
#include "aot_conv_pointwise.h"
#include "aot_conv_rows.h"
#include "aot_conv_window.h"
#include "aot_kernels.h"
#include "aot_simd.h"

/* Output channels oc and oc + 1 from two consecutive dense rows starting at `rows`. */
static inline __attribute__((always_inline)) void conv_two_rows(const patch_shape* s, const interior_box* box,
                                                                const int8_t* rows, int oc,
                                                                const int8_t* input, int8_t* output) {
  const aot_conv_params* p = s->p;
  const int32_t k = p->weights.row_len;
  const int32_t bias0 = p->bias ? p->bias[oc] : 0, bias1 = p->bias ? p->bias[oc + 1] : 0;
  /* the biases without the folded offset, for border outputs (if the layer has any) */
  const int any_border = box->oy_lo > 0 || box->oy_hi < p->out_h - 1 || box->ox_lo > 0 || box->ox_hi < p->out_w - 1;
  const int32_t border0 = any_border ? p->border_bias[oc] : 0, border1 = any_border ? p->border_bias[oc + 1] : 0;
  const requant_t q0 = requant_of(p->multiplier[oc], p->shift[oc]);
  const requant_t q1 = requant_of(p->multiplier[oc + 1], p->shift[oc + 1]);
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
      out[0] = requant_out(p, &q0, acc0);
      out[1] = requant_out(p, &q1, acc1);
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
  const int32_t border_bias = any_border ? p->border_bias[oc] : 0;
  const int aligned = s->run_len % (1 << p->weights.block_shift) == 0;
  const requant_t q = requant_of(p->multiplier[oc], p->shift[oc]);
  int8_t* out = output + oc;
  if (bits && values == end) {
    conv_constant_row(p, oc, output);
    return;
  }
  /* Aligned block-sparse row: where each stored block reads in an interior window, found once
   * per row (the bitmap then is not read again per output). */
  const int32_t block = 1 << p->weights.block_shift;
  const int32_t blocks = bits && aligned ? k_blocks(s) : 0;
  /* the list in scratch: int32 offsets, then each block's run and start in its run (a byte each) */
  int32_t* offsets = (int32_t*)(void*)s->scratch;
  uint8_t* run_of = (uint8_t*)(s->scratch + 4 * blocks);
  uint8_t* start_in_run = run_of + blocks;
  int32_t stored = 0;
  if (bits && aligned && !contiguous && 6 * blocks <= s->scratch_bytes && s->runs <= 255 && s->run_len < 256) {
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
    stored = -1; /* not listed: walk the bitmap, from a register when the row has at most 32 blocks */
  }
  const int masked = stored < 0 && bits && aligned && !contiguous && blocks <= 32;
  uint32_t mask = 0;
  if (masked) {
    for (int32_t byte = 0; byte < (blocks + 7) / 8; ++byte) mask |= (uint32_t)bits[byte] << (8 * byte);
    if (blocks < 32) mask &= (1u << blocks) - 1u;
  }
  /* A tap-aligned row from a register: two outputs at a time where both windows are inside in x
   * (their inside blocks are then the same), the others by their inside blocks. */
  if (masked && tap_aligned(s)) {
    for (int oy = 0; oy < p->out_h; ++oy) {
      const int y0 = oy * p->stride_h - p->pad_h;
      const int inside_y = oy >= box->oy_lo && oy <= box->oy_hi;
      for (int ox = 0; ox < p->out_w; ++ox, out += p->out_c) {
        const int x0 = ox * p->stride_w - p->pad_w;
        const int8_t* window = input + (y0 * p->in_w + x0) * p->in_c;
        if (ox >= box->ox_lo && ox < box->ox_hi) { /* this output and the next, inside in x */
          int32_t a0, a1;
          if (inside_y) {
            a0 = a1 = bias;
            masked_interior2(s, values, mask, window, window + p->stride_w * p->in_c, &a0, &a1);
          } else {
            a0 = a1 = border_bias;
            masked_border_pair(s, values, mask, input, y0, x0, &a0, &a1);
          }
          out[0] = requant_out(p, &q, a0);
          out += p->out_c, ++ox;
          *out = requant_out(p, &q, a1);
          continue;
        }
        const int32_t acc = inside_y && ox >= box->ox_lo && ox <= box->ox_hi
                                ? masked_interior(s, values, mask, window, bias)
                                : masked_border_taps(s, values, mask, input, y0, x0, border_bias);
        *out = requant_out(p, &q, acc);
      }
    }
    return;
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
      } else if (masked && inside_y && ox >= box->ox_lo && ox <= box->ox_hi) {
        acc = masked_interior(s, values, mask, input + (y0 * p->in_w + x0) * p->in_c, bias);
      } else if (masked) {
        acc = masked_border(s, values, mask, input, y0, x0, border_bias);
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
      *out = requant_out(p, &q, acc);
    }
  }
}

static inline __attribute__((always_inline)) void aot_conv2d_inline(const aot_conv_params* p,
                                                                    const int8_t* input, int8_t* output,
                                                                    int8_t* scratch, int32_t scratch_bytes) {
  const aot_weights* weights = &p->weights;
  const int32_t k = weights->row_len;
  patch_shape s;
  s.p = p;
  s.run_len = p->dilation_w == 1 ? p->kernel_w * p->in_c : p->in_c;
  s.runs_per_row = p->dilation_w == 1 ? 1 : p->kernel_w;
  s.runs = s.runs_per_row * p->kernel_h;
  s.scratch = scratch;
  s.scratch_bytes = scratch ? scratch_bytes : 0;
  interior_box box;
  interior(p->out_h, p->in_h, p->kernel_h, p->stride_h, p->dilation_h, p->pad_h, &box.oy_lo, &box.oy_hi);
  interior(p->out_w, p->in_w, p->kernel_w, p->stride_w, p->dilation_w, p->pad_w, &box.ox_lo, &box.ox_hi);
  /* A 1x1 kernel without padding, or a single output over the whole input (a fully connected
   * layer): every window is the row's length of contiguous input bytes. */
  const int contiguous = (p->kernel_h == 1 && p->kernel_w == 1 && p->pad_h == 0 && p->pad_w == 0) ||
                         (p->out_h == 1 && p->out_w == 1 && p->in_h == p->kernel_h && p->in_w == p->kernel_w &&
                          p->pad_h == 0 && p->pad_w == 0 && p->dilation_h == 1 && p->dilation_w == 1);
  if (window_chosen(p, &box, contiguous)) { /* small windows (a first layer's): a patch per pixel, every filter */
    conv_window(&s, &box, input, output);
    return;
  }
  const int8_t* values = weights->values;
  const uint8_t* bits = weights->bitmap;
  int oc = 0;
  if (!bits) { /* dense rows: two output channels per pass, sharing every input load */
    for (; oc + 1 < p->out_c; oc += 2, values += 2 * k) {
      if (contiguous && p->out_h * p->out_w > 1) {
        conv_contiguous_dense2(&s, values, oc, input, output);
      } else {
        conv_two_rows(&s, &box, values, oc, input, output);
      }
    }
    if (oc < p->out_c) conv_one_row(&s, &box, values, values + k, 0, contiguous, oc, input, output);
    return;
  }
  const int32_t bitmap_row = ((((k - 1) >> weights->block_shift) + 1) + 7) / 8;
  /* One output pixel over a contiguous window: each row's bitmap walked once. */
  if (contiguous && p->out_h * p->out_w == 1) {
    conv_single_sparse(p, input, output);
    return;
  }
  /* Contiguous windows and blocks of four or more: the stored blocks listed per row. */
  if (contiguous && weights->block_shift >= 2 && 2 * (k >> weights->block_shift) <= s.scratch_bytes) {
    for (; oc < p->out_c; ++oc, bits += bitmap_row) {
      const int8_t* end = aot_row_end(weights, values, bits);
      if (end == values) {
        conv_one_row(&s, &box, values, end, bits, contiguous, oc, input, output); /* a constant */
      } else {
        conv_contiguous_listed(&s, values, bits, oc, input, output);
      }
      values = end;
    }
    return;
  }
  /* Blocks that straddle the window's runs, little padding, room for two patches: im2col. */
  if (p->im2col && 2 * ((k + 3) & ~3) <= s.scratch_bytes) {
    conv_im2col_sparse(&s, input, output);
    return;
  }
  /* Short rows of small blocks (under 8 weights, where a block test costs about what it saves):
   * expanded, zeros included, and run through the dense paths. Rows of 8- and 16-weight blocks,
   * as the search prunes them, are walked block by block, so a pruned block costs no time. */
  if (2 * k <= s.scratch_bytes && p->out_h * p->out_w >= 4 && weights->block_shift < 3) {
    int8_t* rows = s.scratch;
    for (; oc + 1 < p->out_c; oc += 2) {
      expand_row(weights, values, bits, rows);
      values = aot_row_end(weights, values, bits);
      expand_row(weights, values, bits + bitmap_row, rows + k);
      values = aot_row_end(weights, values, bits + bitmap_row);
      bits += 2 * bitmap_row;
      if (contiguous && p->out_h * p->out_w > 1) {
        conv_contiguous_dense2(&s, rows, oc, input, output);
      } else {
        conv_two_rows(&s, &box, rows, oc, input, output);
      }
    }
    if (oc < p->out_c) {
      expand_row(weights, values, bits, rows);
      conv_one_row(&s, &box, rows, rows + k, 0, contiguous, oc, input, output);
    }
    return;
  }
  /* Row by row; a row whose every block is stored is a dense row, and two such rows in a row are
   * two dense rows side by side in flash, run two output channels per pass; a row of one block is
   * all or nothing (a live filter or a pruned-away one), so such a layer needs no sparse walk. */
  while (oc < p->out_c) {
    const int8_t* end = aot_row_end(weights, values, bits);
    if (end - values == k && oc + 1 < p->out_c && aot_row_end(weights, end, bits + bitmap_row) - end == k) {
      if (contiguous && p->out_h * p->out_w > 1) {
        conv_contiguous_dense2(&s, values, oc, input, output);
      } else {
        conv_two_rows(&s, &box, values, oc, input, output);
      }
      values = end + k, bits += 2 * bitmap_row, oc += 2;
      continue;
    }
    if (k <= 1 << weights->block_shift && end != values + k) { /* rows of one block: all or nothing */
      conv_constant_row(p, oc, output);
    } else { /* bits a constant 0 for rows of one block, so such a layer carries no sparse walk */
      conv_one_row(&s, &box, values, end, end - values == k || k <= 1 << weights->block_shift ? 0 : bits,
                   contiguous, oc, input, output);
    }
    values = end, bits += bitmap_row, ++oc;
  }
}

#endif /* AOT_CONV_IMPL_H_ */
