/* STM32F4 board code: USART3 at 115200 8N1 (ST-LINK virtual COM port on the
 * NUCLEO-F413ZH, PD8/PD9; QEMU netduinoplus2's serial2), the core running from
 * the 16 MHz HSI, and a tick counter: the DWT cycle counter on hardware, or
 * SysTick (BOARD_TIMER_SYSTICK) under QEMU, which does not model the DWT. */
#include <stdint.h>

#include "board.h"

#define REG(address) (*(volatile uint32_t*)(address))

#define RCC_AHB1ENR REG(0x40023830)
#define RCC_APB1ENR REG(0x40023840)
#define GPIOD_MODER REG(0x40020C00)
#define GPIOD_AFRH REG(0x40020C24)
#define USART3_SR REG(0x40004800)
#define USART3_DR REG(0x40004804)
#define USART3_BRR REG(0x40004808)
#define USART3_CR1 REG(0x4000480C)
#define SYST_CSR REG(0xE000E010)
#define SYST_RVR REG(0xE000E014)
#define SYST_CVR REG(0xE000E018)
#define DEMCR REG(0xE000EDFC)
#define DWT_CTRL REG(0xE0001000)
#define DWT_CYCCNT REG(0xE0001004)

#define CORE_HZ 16000000u
#define BAUD 115200u

static volatile uint32_t systick_wraps;

void SysTick_Handler(void) { ++systick_wraps; }

void board_init(void) {
  RCC_AHB1ENR |= 1u << 3;   /* GPIOD */
  RCC_APB1ENR |= 1u << 18;  /* USART3 (QEMU ignores RCC: it reads back 0) */
  GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);  /* PD8, PD9: alternate */
  GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;                     /* AF7: USART3 */
  USART3_BRR = (CORE_HZ + BAUD / 2) / BAUD;
  USART3_CR1 = (1u << 13) | (1u << 3) | (1u << 2);                /* UE, TE, RE */
#ifdef BOARD_TIMER_SYSTICK
  SYST_RVR = 0xFFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 7u;  /* processor clock, interrupt on wrap, enable */
#else
  DEMCR |= 1u << 24;
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;
#endif
}

void board_uart_write(const char* data, int length) {
  for (int i = 0; i < length; ++i) {
    while (!(USART3_SR & (1u << 7))) {  /* TXE */
    }
    USART3_DR = (uint8_t)data[i];
  }
}

uint8_t board_uart_read(void) {
  while (!(USART3_SR & (1u << 5))) {  /* RXNE */
  }
  return (uint8_t)USART3_DR;
}

uint32_t board_ticks(void) {
#ifdef BOARD_TIMER_SYSTICK
  uint32_t wraps, value;
  do {
    wraps = systick_wraps;
    value = SYST_CVR;
  } while (wraps != systick_wraps);
  return wraps * 0x1000000u + (0xFFFFFFu - value);
#else
  return DWT_CYCCNT;
#endif
}
