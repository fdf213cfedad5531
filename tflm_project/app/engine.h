/* The inference engine behind the application: ENGINE=aot (generated C) or,
 * later, ENGINE=tflm (TensorFlow Lite Micro). */
#ifndef ENGINE_H_
#define ENGINE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int engine_init(void);              /* 0 on success */
int8_t* engine_input(void);
const int8_t* engine_output(void);
int engine_input_bytes(void);
int engine_output_bytes(void);
int engine_arena_bytes(void);       /* what the engine's activations and bookkeeping use */
int engine_arena_capacity(void);    /* what it reserves for them (TFLM: can exceed the above) */
int engine_invoke(void);            /* 0 on success */
const char* engine_name(void);
int engine_op_count(void);          /* operators with a per-operator profile (0: none) */
uint32_t engine_op_ticks(int op);   /* ticks operator `op` took in the last inference */

#ifdef __cplusplus
}
#endif

#endif /* ENGINE_H_ */
