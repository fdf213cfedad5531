/* STM32F4 vector table (reset code: boards/cortex_m_reset.c). */
#include <stdint.h>

extern uint32_t _stack_top;
void Reset_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);

__attribute__((section(".isr_vector"), used)) static const void* const vectors[16] = {
    &_stack_top,     Reset_Handler,   Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0,
    0,               0,               0,               Default_Handler,
    Default_Handler, 0,               Default_Handler, SysTick_Handler,
};
