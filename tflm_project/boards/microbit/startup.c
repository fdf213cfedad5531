/* Cortex-M0 startup for the nRF51822 (BBC micro:bit v1): vector table, .data/.bss, main. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_top;
int main(void);

void Reset_Handler(void) {
  uint32_t* src = &_sidata;
  for (uint32_t* dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t* dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  main();
  for (;;) {
  }
}

static void Default_Handler(void) {
  for (;;) {
  }
}

__attribute__((section(".isr_vector"), used)) static const void* const vectors[16] = {
    &_stack_top,     Reset_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0, 0, 0, 0,
    Default_Handler, 0,             0,               Default_Handler, Default_Handler,
};
