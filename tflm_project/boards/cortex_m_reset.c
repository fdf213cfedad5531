/* Reset and default handlers shared by every Cortex-M board: copy .data, zero .bss, run main.
 * Each board's startup.c holds only its vector table. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss;
extern void (*__init_array_start[])(void);
extern void (*__init_array_end[])(void);
int main(void);

void Reset_Handler(void) {
  uint32_t* src = &_sidata;
  for (uint32_t* dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t* dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  for (void (**init)(void) = __init_array_start; init < __init_array_end; ++init) (*init)();  /* C++ statics */
  main();
  for (;;) {
  }
}

void Default_Handler(void) {
  for (;;) {
  }
}
