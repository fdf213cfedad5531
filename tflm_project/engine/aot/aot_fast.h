/* The fast AOT kernels, included by the generated aot_model.c: each layer's call below is inlined
 * with that layer's static const parameters, so the compiler specialises the kernel per layer. */
#ifndef AOT_FAST_H_
#define AOT_FAST_H_

#include "aot_conv_impl.h"
#include "aot_depthwise_pool_impl.h"

/* make AOT_KERNELS=reference: the portable references in the fast kernels' place (the oracle). */
#ifdef AOT_REFERENCE_KERNELS
#define AOT_CONV2D(params, input, output, scratch, scratch_bytes) aot_conv2d_reference(&(params), (input), (output))
#define AOT_DEPTHWISE_CONV2D(params, input, output) aot_depthwise_conv2d_reference(&(params), (input), (output))
#define AOT_MAX_POOL(params, input, output) aot_max_pool_reference(&(params), (input), (output))
#else
#define AOT_CONV2D(params, input, output, scratch, scratch_bytes) \
  aot_conv2d_inline(&(params), (input), (output), (scratch), (scratch_bytes))
#define AOT_DEPTHWISE_CONV2D(params, input, output) aot_depthwise_conv2d_inline(&(params), (input), (output))
#define AOT_MAX_POOL(params, input, output) aot_max_pool_inline(&(params), (input), (output))
#endif

#endif /* AOT_FAST_H_ */
