/* Int8 kernels of the ahead-of-time engine (ENGINE=aot).
 *
 * Each kernel computes exactly what TensorFlow Lite's int8 reference kernels
 * compute: the same accumulation, the same double-rounding requantisation
 * (MultiplyByQuantizedMultiplier) and the same fixed-point softmax. All
 * parameters (multipliers, shifts, offsets, clamps) are precomputed by
 * `pipeline/deploy/aot.py` from the .tflite, so nothing here uses floating point.
 * Tensors are NHWC with batch 1.
 */
#ifndef AOT_KERNELS_H_
#define AOT_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weights of one CONV_2D or FULLY_CONNECTED layer: either dense
 * ([out][row_len] int8), or block-sparse: each row is cut into blocks of
 * 2^block_shift weights; per row a bitmap with one bit per block (set when the
 * block is stored), then the values of the stored blocks in row order (the
 * last block of a row may be shorter). */
typedef struct {
  const int8_t* values;
  const uint8_t* bitmap; /* NULL: dense */
  int32_t row_len;
  int32_t block_shift;
} aot_weights;

typedef struct {
  int16_t in_h, in_w, in_c, out_h, out_w, out_c;
  int8_t kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_h, pad_w;
  int16_t depth_multiplier; /* depthwise only */
  int32_t input_offset, output_offset, act_min, act_max;
  const int32_t* multiplier; /* per output channel */
  const int8_t* shift;       /* per output channel */
  const int32_t* bias;       /* per output channel, or NULL; CONV_2D: bias + input_offset * row sum */
  aot_weights weights;
  const int32_t* border_bias; /* CONV_2D: the bias without the folded offset; set whenever the layer has border outputs */
  int32_t im2col;             /* CONV_2D, fast kernels: copy windows into scratch (pipeline/deploy/aot.py) */
  int32_t narrow;             /* fast kernels: every accumulator within [-2^30, 2^30) and every shift
                                 negative, as the generator proved: the short requantisation */
} aot_conv_params;

/* FULLY_CONNECTED too large for aot_conv_params' int16 shapes; any other runs as a 1x1 CONV_2D. */
typedef struct {
  int32_t batches, in_len, out_len;
  int32_t input_offset, output_offset, act_min, act_max;
  const int32_t* multiplier; /* one, or per output when per_channel */
  const int8_t* shift;
  int32_t per_channel;
  const int32_t* bias;
  aot_weights weights;
} aot_fc_params;

typedef struct {
  int16_t in_h, in_w, c, out_h, out_w;
  int8_t filter_h, filter_w, stride_h, stride_w, pad_h, pad_w;
  int32_t act_min, act_max;
} aot_pool_params;

typedef struct {
  int32_t size;
  int32_t input1_offset, input2_offset, output_offset, left_shift;
  int32_t input1_multiplier, input2_multiplier, output_multiplier;
  int8_t input1_shift, input2_shift, output_shift;
  int32_t act_min, act_max;
} aot_add_params;

typedef struct {
  int32_t outer, depth;
  int32_t input_multiplier, input_left_shift, diff_min;
} aot_softmax_params;

int32_t aot_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift);

/* CONV_2D: the portable reference of the fast kernel in aot_conv_impl.h. */
void aot_conv2d_reference(const aot_conv_params* p, const int8_t* input, int8_t* output);
const int8_t* aot_row_end(const aot_weights* w, const int8_t* values, const uint8_t* bits);
/* DEPTHWISE_CONV_2D and MAX_POOL_2D: portable references of the fast kernels in aot_conv_impl.h. */
void aot_depthwise_conv2d_reference(const aot_conv_params* p, const int8_t* input, int8_t* output);
void aot_fully_connected(const aot_fc_params* p, const int8_t* input, int8_t* output);
void aot_max_pool_reference(const aot_pool_params* p, const int8_t* input, int8_t* output);
void aot_average_pool(const aot_pool_params* p, const int8_t* input, int8_t* output);
void aot_add(const aot_add_params* p, const int8_t* input1, const int8_t* input2, int8_t* output);
/* Concatenation on the last axis of inputs that share the output's quantisation. */
void aot_concat_last_axis(int32_t outer, int32_t count, const int8_t* const* inputs,
                          const int32_t* depths, int8_t* output);
void aot_softmax(const aot_softmax_params* p, const int8_t* input, int8_t* output);
/* QUANTIZE int8 -> int8: rescales to the output's scale and zero point. */
void aot_requantize(int32_t size, int32_t input_zero_point, int32_t output_zero_point,
                    int32_t multiplier, int shift, const int8_t* input, int8_t* output);
/* MEAN of int8 [outer][count][inner] over the middle axis (global average pooling). */
void aot_mean(int32_t outer, int32_t count, int32_t inner, int32_t input_zero_point,
              int32_t output_zero_point, int32_t multiplier, int shift, const int8_t* input,
              int8_t* output);
void aot_copy(const int8_t* input, int8_t* output, int32_t size);

#ifdef __cplusplus
}
#endif

#endif /* AOT_KERNELS_H_ */
