/* ENGINE=aot: the generated model (aot_model.c) in one static arena. */
#include "aot_model.h"
#include "board.h"
#include "engine.h"

static int8_t arena[AOT_ARENA_BYTES > 0 ? AOT_ARENA_BYTES : 1] __attribute__((aligned(4)));

int engine_init(void) { return 0; }
int8_t* engine_input(void) { return arena + AOT_INPUT_OFFSET; }
const int8_t* engine_output(void) { return arena + AOT_OUTPUT_OFFSET; }
int engine_input_bytes(void) { return AOT_INPUT_BYTES; }
int engine_output_bytes(void) { return AOT_OUTPUT_BYTES; }
int engine_arena_bytes(void) { return AOT_ARENA_BYTES; }
int engine_arena_capacity(void) { return AOT_ARENA_BYTES; }
/* Tick at which each operator ended, the first entry the start: the per-operator profile. */
static uint32_t marks[AOT_OP_COUNT + 1];
void aot_mark(int op) { marks[op + 1] = board_ticks(); }
int engine_op_count(void) { return AOT_OP_COUNT; }
uint32_t engine_op_ticks(int op) { return marks[op + 1] - marks[op]; }

int engine_invoke(void) {
  marks[0] = board_ticks();
  aot_model_invoke(arena);
  return 0;
}
const char* engine_name(void) { return "aot"; }
