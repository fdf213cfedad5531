// What TFLite Micro asks of a platform, in place of its cortex_m_generic files
// (whose timer needs CMSIS device headers the generated tree lacks): log lines
// go to the board's UART, time comes from the board's tick counter, and the C++
// runtime hooks a bare-metal build needs (no heap, no exceptions) are stubs.
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "board.h"
#include "tensorflow/lite/micro/debug_log.h"
#include "tensorflow/lite/micro/micro_time.h"

extern "C" {
// Set by the probe around a trial allocation: TFLM logs every failed allocation before it returns
// the null buffer, and some kernels' Prepare (CMSIS-NN's per-channel multipliers among them) write
// through it unchecked. So a line logged during a trial ends the trial there, before that happens,
// and a trial's failure, expected by design, prints nothing.
jmp_buf* tflm_trial_abort = nullptr;
}

// Each log line goes out as "LOG <text>", which the host keeps apart from the protocol's lines.
extern "C" void DebugLog(const char* format, va_list args) {
  static bool at_line_start = true;
  if (tflm_trial_abort != nullptr) longjmp(*tflm_trial_abort, 1);
  char text[128];
  int n = vsnprintf(text, sizeof(text), format, args);
  if (n <= 0) return;
  if (n >= (int)sizeof(text)) n = (int)sizeof(text) - 1;
  for (int i = 0; i < n; ++i) {
    if (text[i] == '\r') continue;
    if (at_line_start) board_uart_write("LOG ", 4);
    board_uart_write(&text[i], 1);
    at_line_start = text[i] == '\n';
  }
}

extern "C" int DebugVsnprintf(char* buffer, size_t size, const char* format, va_list args) {
  return vsnprintf(buffer, size, format, args);
}

namespace tflite {
uint32_t ticks_per_second() { return BOARD_TIMER_HZ; }
uint32_t GetCurrentTimeTicks() { return board_ticks(); }
}  // namespace tflite

// No heap: newlib's printf family links malloc for buffers a string target never needs; a call
// would get NULL, never memory outside what ram_bytes counts.
extern "C" void* _sbrk(ptrdiff_t) {
  errno = ENOMEM;
  return (void*)-1;
}

// TFLM never frees what it places in the arena; these keep libstdc++'s heap out.
void operator delete(void*) noexcept {}
void operator delete(void*, size_t) noexcept {}
extern "C" void __cxa_pure_virtual() {
  for (;;) {
  }
}
