/* Firmware main: set up, then answer the host over the UART, one line per command.
 *
 * Protocol (ASCII lines, '\n' terminated):
 *   firmware -> host at start:  READY engine=<name> input=<bytes> output=<bytes> arena=<bytes> capacity=<bytes>
 *                               timer=<Hz the tick counter runs at>
 *   host -> firmware:           I <input bytes as hex>
 *   firmware -> host:           RESULT ticks=<u32> out=<output bytes as hex>
 *   host -> firmware:           S
 *   firmware -> host:           STATS stack=<peak stack bytes> arena=<bytes> capacity=<bytes> timer=<Hz>
 *   host -> firmware:           P
 *   firmware -> host:           PROFILE <ticks of each operator in the last inference, in order>
 *   anything else:              ERROR <reason>
 */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "engine.h"

#define STACK_PAINT 0xA5A5A5A5u

static void put(const char* text) { board_uart_write(text, (int)strlen(text)); }

static void put_uint(uint32_t value) {
  char digits[11];
  int n = 0;
  do {
    digits[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value);
  while (n) board_uart_write(&digits[--n], 1);
}

static void put_hex(const int8_t* data, int length) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < length; ++i) {
    const char pair[2] = {hex[(uint8_t)data[i] >> 4], hex[(uint8_t)data[i] & 15]};
    board_uart_write(pair, 2);
  }
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Fills the unused stack with a pattern; stack_peak() finds the deepest overwrite. */
static void paint_stack(void) {
  uint32_t here;
  for (uint32_t* p = &_stack_limit; p < &here - 16; ++p) *p = STACK_PAINT;
}

static uint32_t stack_peak(void) {
  uint32_t* p = &_stack_limit;
  while (p < &_stack_top && *p == STACK_PAINT) ++p;
  return (uint32_t)((uint8_t*)&_stack_top - (uint8_t*)p);
}

/* Reads the rest of the current line, discarding it. */
static void skip_line(void) {
  while (board_uart_read() != '\n') {
  }
}

/* Reads "<hex>\n" straight into the engine's input (no line buffer: RAM is scarce). */
static void run_inference(void) {
  const int bytes = engine_input_bytes();
  int8_t* input = engine_input();
  int count = 0, bad = 0, high = -1;
  for (;;) {
    const char c = (char)board_uart_read();
    if (c == '\n') break;
    if (c == '\r' || c == ' ') continue;
    const int v = hex_value(c);
    if (v < 0) {
      bad = 1;
      continue;
    }
    if (high < 0) {
      high = v;
    } else {
      if (count < bytes) input[count] = (int8_t)(high * 16 + v);
      ++count;
      high = -1;
    }
  }
  if (bad || count != bytes || high >= 0) {
    put("ERROR input needs ");
    put_uint((uint32_t)bytes);
    put(" bytes as hex\n");
    return;
  }
  const uint32_t start = board_ticks();
  const int status = engine_invoke();
  const uint32_t ticks = board_ticks() - start;
  if (status != 0) {
    put("ERROR invoke failed\n");
    return;
  }
  put("RESULT ticks=");
  put_uint(ticks);
  put(" out=");
  put_hex(engine_output(), engine_output_bytes());
  put("\n");
}

int main(void) {
  paint_stack();
  board_init();
  if (engine_init() != 0) {
    put("ERROR engine init failed\n");
    for (;;) {
    }
  }
  put("READY engine=");
  put(engine_name());
  put(" input=");
  put_uint((uint32_t)engine_input_bytes());
  put(" output=");
  put_uint((uint32_t)engine_output_bytes());
  put(" arena=");
  put_uint((uint32_t)engine_arena_bytes());
  put(" capacity=");
  put_uint((uint32_t)engine_arena_capacity());
  put(" timer=");
  put_uint(board_timer_hz());
  put("\n");
  for (;;) {
    const char command = (char)board_uart_read();
    if (command == '\n' || command == '\r') continue;
    if (command == 'I') {
      run_inference();
    } else if (command == 'S') {
      skip_line();
      put("STATS stack=");
      put_uint(stack_peak());
      put(" arena=");
      put_uint((uint32_t)engine_arena_bytes());
      put(" capacity=");
      put_uint((uint32_t)engine_arena_capacity());
      put(" timer=");
      put_uint(board_timer_hz());
      put("\n");
    } else if (command == 'P') {
      skip_line();
      put("PROFILE");
      for (int op = 0; op < engine_op_count(); ++op) {
        put(" ");
        put_uint(engine_op_ticks(op));
      }
      put("\n");
    } else {
      skip_line();
      put("ERROR unknown command\n");
    }
  }
}
