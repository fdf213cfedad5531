/* Int8 kernels of the ahead-of-time engine: TFLite's int8 reference arithmetic.
 * See aot_kernels.h. Written for this project from the semantics of
 * TensorFlow Lite's reference kernels and gemmlowp's fixed-point helpers. */
#include "aot_kernels.h"

#include <string.h>

/* ---- fixed-point helpers (gemmlowp semantics) ---------------------------- */

/* (a * b * 2) >> 32, rounded to nearest (ties away from zero), saturating. */
static int32_t high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  const int64_t ab = (int64_t)a * (int64_t)b;
  const int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* x / 2^exponent rounded to nearest, ties away from zero. */
static int32_t rounding_shift_right(int32_t x, int exponent) {
  const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* x * 2^exponent, saturating to int32. */
static int32_t saturating_shift_left(int32_t x, int exponent) {
  const int32_t threshold = (int32_t)(((int64_t)1 << (31 - exponent)) - 1);
  if (x > threshold) return INT32_MAX;
  if (x < -threshold) return INT32_MIN;
  return (int32_t)((uint32_t)x << exponent);
}

int32_t aot_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  return rounding_shift_right(high_mul((int32_t)((uint32_t)x << left), multiplier), right);
}

static int8_t clamp_to_int8(int32_t value, int32_t lo, int32_t hi) {
  if (value < lo) value = lo;
  if (value > hi) value = hi;
  return (int8_t)value;
}

/* ---- weights -------------------------------------------------------------- */

/* Walks rows of dense or block-sparse weights in output-channel order. */
typedef struct {
  const int8_t* values;
  const uint8_t* bits;
  int32_t row_bytes;
  int32_t shift;
} row_cursor;

static void cursor_start(row_cursor* c, const aot_weights* w) {
  c->values = w->values;
  c->bits = w->bitmap;
  c->shift = w->block_shift;
  c->row_bytes = ((((w->row_len - 1) >> w->block_shift) + 1) + 7) / 8;
}

/* Whether weight `pos` of the current row is stored (always, when dense). */
static int cursor_stored(const row_cursor* c, int32_t pos) {
  if (!c->bits) return 1;
  const int32_t block = pos >> c->shift;
  return (c->bits[block >> 3] >> (block & 7)) & 1;
}

/* Where the stored values of the row starting at `values` (bitmap row `bits`) end. */
const int8_t* aot_row_end(const aot_weights* w, const int8_t* values, const uint8_t* bits) {
  if (!bits) return values + w->row_len;
  const int32_t blocks = ((w->row_len - 1) >> w->block_shift) + 1;
  const int32_t last = blocks - 1;
  int32_t stored = 0;
  for (int32_t byte = 0; byte < (blocks + 7) / 8; ++byte) stored += __builtin_popcount(bits[byte]);
  values += stored << w->block_shift;
  /* the last block may be shorter than the others */
  if ((bits[last >> 3] >> (last & 7)) & 1) values -= (blocks << w->block_shift) - w->row_len;
  return values;
}

static void cursor_next(row_cursor* c, const int8_t* row_end_values) {
  c->values = row_end_values;
  if (c->bits) c->bits += c->row_bytes;
}

/* ---- convolutions --------------------------------------------------------- */

/* The portable reference: every weight tested against the bitmap, every tap against the border.
 * `bias` holds bias + input_offset * (sum of the row's weights), folded at generation time for
 * the fast kernel; the sum is taken back out here so this stays TFLite's formula. */
void aot_conv2d_reference(const aot_conv_params* p, const int8_t* input, int8_t* output) {
  row_cursor cur;
  cursor_start(&cur, &p->weights);
  for (int oc = 0; oc < p->out_c; ++oc) {
    const int8_t* end = cur.values;
    int32_t row_sum = 0;
    const int8_t* row_end = aot_row_end(&p->weights, cur.values, cur.bits);
    for (const int8_t* w = cur.values; w < row_end; ++w) row_sum += *w;
    for (int oy = 0; oy < p->out_h; ++oy) {
      const int y0 = oy * p->stride_h - p->pad_h;
      for (int ox = 0; ox < p->out_w; ++ox) {
        const int x0 = ox * p->stride_w - p->pad_w;
        const int8_t* w = cur.values;
        int32_t pos = 0;
        int32_t acc = 0;
        for (int ky = 0; ky < p->kernel_h; ++ky) {
          const int y = y0 + p->dilation_h * ky;
          for (int kx = 0; kx < p->kernel_w; ++kx) {
            const int x = x0 + p->dilation_w * kx;
            const int inside = y >= 0 && y < p->in_h && x >= 0 && x < p->in_w;
            const int8_t* in = input + (y * p->in_w + x) * p->in_c;
            for (int ic = 0; ic < p->in_c; ++ic, ++pos) {
              if (!cursor_stored(&cur, pos)) continue;
              if (inside) acc += (int32_t)(*w) * ((int32_t)in[ic] + p->input_offset);
              ++w;
            }
          }
        }
        end = w;
        if (p->bias) acc += p->bias[oc] - p->input_offset * row_sum;
        acc = aot_multiply_by_quantized_multiplier(acc, p->multiplier[oc], p->shift[oc]);
        output[(oy * p->out_w + ox) * p->out_c + oc] =
            clamp_to_int8(acc + p->output_offset, p->act_min, p->act_max);
      }
    }
    cursor_next(&cur, end);
  }
}

void aot_depthwise_conv2d_reference(const aot_conv_params* p, const int8_t* input, int8_t* output) {
  /* Depthwise weights are [1][kh][kw][out_c] and always dense (tfmot never prunes them); `bias`
   * holds bias + input_offset * (sum of the channel's taps), folded for the fast kernel. */
  for (int oy = 0; oy < p->out_h; ++oy) {
    const int y0 = oy * p->stride_h - p->pad_h;
    for (int ox = 0; ox < p->out_w; ++ox) {
      const int x0 = ox * p->stride_w - p->pad_w;
      for (int ic = 0; ic < p->in_c; ++ic) {
        for (int m = 0; m < p->depth_multiplier; ++m) {
          const int oc = ic * p->depth_multiplier + m;
          int32_t acc = 0, taps = 0;
          for (int ky = 0; ky < p->kernel_h; ++ky) {
            const int y = y0 + p->dilation_h * ky;
            for (int kx = 0; kx < p->kernel_w; ++kx) {
              const int x = x0 + p->dilation_w * kx;
              const int32_t w = p->weights.values[(ky * p->kernel_w + kx) * p->out_c + oc];
              taps += w;
              if (y < 0 || y >= p->in_h || x < 0 || x >= p->in_w) continue;
              const int32_t in = input[(y * p->in_w + x) * p->in_c + ic];
              acc += w * (in + p->input_offset);
            }
          }
          if (p->bias) acc += p->bias[oc] - p->input_offset * taps;
          acc = aot_multiply_by_quantized_multiplier(acc, p->multiplier[oc], p->shift[oc]);
          output[(oy * p->out_w + ox) * p->out_c + oc] =
              clamp_to_int8(acc + p->output_offset, p->act_min, p->act_max);
        }
      }
    }
  }
}

static void fully_connected_row(const aot_fc_params* p, const int8_t* input, int8_t* output) {
  row_cursor cur;
  cursor_start(&cur, &p->weights);
  for (int o = 0; o < p->out_len; ++o) {
    const int8_t* w = cur.values;
    int32_t acc = 0;
    for (int i = 0; i < p->in_len; ++i) {
      if (!cursor_stored(&cur, i)) continue;
      acc += (int32_t)(*w++) * ((int32_t)input[i] + p->input_offset);
    }
    if (p->bias) acc += p->bias[o];
    const int k = p->per_channel ? o : 0;
    acc = aot_multiply_by_quantized_multiplier(acc, p->multiplier[k], p->shift[k]);
    output[o] = clamp_to_int8(acc + p->output_offset, p->act_min, p->act_max);
    cursor_next(&cur, w);
  }
}

void aot_fully_connected(const aot_fc_params* p, const int8_t* input, int8_t* output) {
  for (int32_t b = 0; b < p->batches; ++b) fully_connected_row(p, input + b * p->in_len, output + b * p->out_len);
}

/* ---- pooling -------------------------------------------------------------- */

static void pool(const aot_pool_params* p, const int8_t* input, int8_t* output, int average) {
  for (int oy = 0; oy < p->out_h; ++oy) {
    for (int ox = 0; ox < p->out_w; ++ox) {
      const int y0 = oy * p->stride_h - p->pad_h;
      const int x0 = ox * p->stride_w - p->pad_w;
      const int fy0 = y0 < 0 ? -y0 : 0;
      const int fy1 = p->filter_h < p->in_h - y0 ? p->filter_h : p->in_h - y0;
      const int fx0 = x0 < 0 ? -x0 : 0;
      const int fx1 = p->filter_w < p->in_w - x0 ? p->filter_w : p->in_w - x0;
      for (int c = 0; c < p->c; ++c) {
        int32_t acc = average ? 0 : -128;
        int32_t count = 0;
        for (int fy = fy0; fy < fy1; ++fy) {
          for (int fx = fx0; fx < fx1; ++fx) {
            const int32_t v = input[((y0 + fy) * p->in_w + (x0 + fx)) * p->c + c];
            if (average) {
              acc += v;
            } else if (v > acc) {
              acc = v;
            }
            ++count;
          }
        }
        if (average && count > 0) {
          acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
        }
        output[(oy * p->out_w + ox) * p->c + c] = clamp_to_int8(acc, p->act_min, p->act_max);
      }
    }
  }
}

void aot_max_pool_reference(const aot_pool_params* p, const int8_t* input, int8_t* output) {
  pool(p, input, output, 0);
}

void aot_average_pool(const aot_pool_params* p, const int8_t* input, int8_t* output) {
  pool(p, input, output, 1);
}

/* ---- elementwise and data movement ---------------------------------------- */

void aot_add(const aot_add_params* p, const int8_t* input1, const int8_t* input2, int8_t* output) {
  for (int32_t i = 0; i < p->size; ++i) {
    const int32_t a = (int32_t)((uint32_t)(p->input1_offset + input1[i]) << p->left_shift);
    const int32_t b = (int32_t)((uint32_t)(p->input2_offset + input2[i]) << p->left_shift);
    const int32_t sa = aot_multiply_by_quantized_multiplier(a, p->input1_multiplier, p->input1_shift);
    const int32_t sb = aot_multiply_by_quantized_multiplier(b, p->input2_multiplier, p->input2_shift);
    const int32_t raw = aot_multiply_by_quantized_multiplier(sa + sb, p->output_multiplier,
                                                             p->output_shift);
    output[i] = clamp_to_int8(raw + p->output_offset, p->act_min, p->act_max);
  }
}

void aot_concat_last_axis(int32_t outer, int32_t count, const int8_t* const* inputs,
                          const int32_t* depths, int8_t* output) {
  for (int32_t o = 0; o < outer; ++o) {
    for (int32_t k = 0; k < count; ++k) {
      memcpy(output, inputs[k] + o * depths[k], (size_t)depths[k]);
      output += depths[k];
    }
  }
}

void aot_requantize(int32_t size, int32_t input_zero_point, int32_t output_zero_point,
                    int32_t multiplier, int shift, const int8_t* input, int8_t* output) {
  for (int32_t i = 0; i < size; ++i) {
    const int32_t v = aot_multiply_by_quantized_multiplier(input[i] - input_zero_point, multiplier, shift);
    output[i] = clamp_to_int8(v + output_zero_point, -128, 127);
  }
}

void aot_mean(int32_t outer, int32_t count, int32_t inner, int32_t input_zero_point,
              int32_t output_zero_point, int32_t multiplier, int shift, const int8_t* input,
              int8_t* output) {
  for (int32_t o = 0; o < outer; ++o) {
    for (int32_t i = 0; i < inner; ++i) {
      int32_t sum = 0;
      for (int32_t k = 0; k < count; ++k) sum += input[(o * count + k) * inner + i];
      const int32_t v = aot_multiply_by_quantized_multiplier(sum - input_zero_point * count, multiplier, shift);
      output[o * inner + i] = clamp_to_int8(v + output_zero_point, -128, 127);
    }
  }
}

void aot_copy(const int8_t* input, int8_t* output, int32_t size) {
  if (input != output) memmove(output, input, (size_t)size);
}

/* ---- softmax (int8 in, int8 out: zero point -128, scale 1/256) ------------ */

/* exp(a) for a in [-1/4, 0), Q0.31 in and out. */
static int32_t exp_quarter_interval(int32_t a) {
  const int32_t constant_term = 1895147668;     /* exp(-1/8) */
  const int32_t one_third = 715827883;          /* 1/3 */
  const int32_t x = a + (1 << 28);              /* a + 1/8 */
  const int32_t x2 = high_mul(x, x);
  const int32_t x3 = high_mul(x2, x);
  const int32_t x4 = high_mul(x2, x2);
  const int32_t x4_over_4 = rounding_shift_right(x4, 2);
  const int32_t poly = rounding_shift_right(high_mul(x4_over_4 + x3, one_third) + x2, 1);
  return constant_term + high_mul(constant_term, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26; result in Q0.31. */
static int32_t exp_negative_q5_26(int32_t a) {
  static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308,
                                         39332535,   720401,     242};
  const int32_t one_quarter = 1 << 24;
  const int32_t a_mod = (a & (one_quarter - 1)) - one_quarter;
  int32_t result = exp_quarter_interval(saturating_shift_left(a_mod, 5));
  const int32_t remainder = a_mod - a;
  for (int k = 0; k < 7; ++k) {  /* exponents -2..4: bits 24..30 of the remainder */
    if (remainder & (1 << (24 + k))) result = high_mul(result, multipliers[k]);
  }
  return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for a in [0, 1), Q0.31 in and out (Newton-Raphson, 3 steps). */
static int32_t one_over_one_plus(int32_t a) {
  const int64_t sum = (int64_t)a + INT32_MAX;
  const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t x = 1515870810 + high_mul(half_denominator, -1010580540); /* 48/17 - 32/17 d, Q2.29 */
  for (int i = 0; i < 3; ++i) {
    const int32_t hdx = high_mul(half_denominator, x);
    const int32_t one_minus = (1 << 29) - hdx;
    x = x + saturating_shift_left(high_mul(x, one_minus), 2);
  }
  return saturating_shift_left(x, 1);
}

void aot_softmax(const aot_softmax_params* p, const int8_t* input, int8_t* output) {
  for (int32_t r = 0; r < p->outer; ++r) {
    const int8_t* in = input + r * p->depth;
    int8_t* out = output + r * p->depth;
    int32_t max_in_row = -128;
    for (int32_t c = 0; c < p->depth; ++c) {
      if (in[c] > max_in_row) max_in_row = in[c];
    }
    int32_t sum_of_exps = 0; /* Q12.19 */
    for (int32_t c = 0; c < p->depth; ++c) {
      const int32_t diff = in[c] - max_in_row;
      if (diff >= p->diff_min) {
        const int32_t scaled = high_mul(diff * (1 << p->input_left_shift), p->input_multiplier);
        sum_of_exps += rounding_shift_right(exp_negative_q5_26(scaled), 12);
      }
    }
    const int headroom_plus_one = __builtin_clz((uint32_t)sum_of_exps);
    const int bits_over_unit = 12 - headroom_plus_one;
    const int32_t shifted_minus_one =
        (int32_t)(((uint32_t)sum_of_exps << headroom_plus_one) - ((uint32_t)1 << 31));
    const int32_t shifted_scale = one_over_one_plus(shifted_minus_one);
    const int exponent = bits_over_unit + 31 - 8;
    for (int32_t c = 0; c < p->depth; ++c) {
      const int32_t diff = in[c] - max_in_row;
      if (diff >= p->diff_min) {
        const int32_t scaled = high_mul(diff * (1 << p->input_left_shift), p->input_multiplier);
        const int32_t e = exp_negative_q5_26(scaled);
        const int32_t unsat = rounding_shift_right(high_mul(shifted_scale, e), exponent);
        out[c] = clamp_to_int8(unsat - 128, -128, 127);
      } else {
        out[c] = -128;
      }
    }
  }
}
