/* STM32F4 board code: USART3 at 115200 8N1 (ST-LINK virtual COM port on the
 * NUCLEO-F413ZH, PD8/PD9; QEMU netduinoplus2's serial2) and a tick counter: the
 * DWT cycle counter on hardware, or SysTick (BOARD_TIMER_SYSTICK) under QEMU,
 * which does not model the DWT.
 *
 * Clock: on the NUCLEO-F413ZH (BOARD_PLL) the main PLL takes the core from the
 * 16 MHz HSI to board_facts.tsv's clock_hz, with the values pipeline/deploy/clocks.py
 * worked out and checked (board_clock.h, generated beside the model). Every
 * wait on a ready flag is bounded; if one times out the core stays on the HSI
 * and board_timer_hz() says so, and the host refuses figures at a clock other
 * than the one promised. QEMU does not model the RCC (its flags read 0), so
 * the emulated board keeps its reset clock and never touches it. */
#include <stdint.h>

#include "board.h"

#define REG(address) (*(volatile uint32_t*)(address))

#define RCC_CR REG(0x40023800)
#define RCC_PLLCFGR REG(0x40023804)
#define RCC_CFGR REG(0x40023808)
#define RCC_AHB1ENR REG(0x40023830)
#define RCC_APB1ENR REG(0x40023840)
#define PWR_CR REG(0x40007000)
#define PWR_CSR REG(0x40007004)
#define FLASH_ACR REG(0x40023C00)
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

#define HSI_HZ 16000000u
#define BAUD 115200u

static volatile uint32_t systick_wraps;
static uint32_t core_hz = HSI_HZ;
static uint32_t apb1_divider = 1;

void SysTick_Handler(void) { ++systick_wraps; }

#ifdef BOARD_PLL
#include "board_clock.h"

/* Polls of a ready flag before giving up: at 16 MHz about 10 ms, far beyond the PLL's lock time
 * (RM0430 and the datasheet give well under a millisecond). */
#define CLOCK_WAIT_POLLS 40000u

static int wait_for(volatile uint32_t* reg, uint32_t mask, uint32_t value) {
  for (uint32_t n = 0; n < CLOCK_WAIT_POLLS; ++n) {
    if ((*reg & mask) == value) return 1;
  }
  return 0;
}

/* RM0430's order: regulator scale and flash wait states for the new clock first (the PLL off), bus
 * dividers, the PLL on and locked, the regulator ready, then the switch, confirmed by SWS. */
static void clock_init(void) {
  RCC_APB1ENR |= 1u << 28; /* PWR */
  PWR_CR = (PWR_CR & ~(3u << 14)) | (BOARD_PWR_VOS << 14);
  FLASH_ACR = (1u << 10) | (1u << 9) | (1u << 8) | BOARD_FLASH_WAIT_STATES; /* DCEN, ICEN, PRFTEN */
  if (!wait_for(&FLASH_ACR, 0xFu, BOARD_FLASH_WAIT_STATES)) return;
  RCC_CFGR = (RCC_CFGR & ~0xFCF0u) | BOARD_RCC_CFGR_DIVIDERS; /* HPRE, PPRE1, PPRE2 */
  apb1_divider = BOARD_APB1_DIVIDER;
  RCC_PLLCFGR = BOARD_RCC_PLLCFGR;
  RCC_CR |= 1u << 24;                                           /* PLLON */
  if (!wait_for(&RCC_CR, 1u << 25, 1u << 25)) return;           /* PLLRDY */
  if (!wait_for(&PWR_CSR, 1u << 14, 1u << 14)) return;          /* VOSRDY */
  RCC_CFGR = (RCC_CFGR & ~3u) | 2u;                             /* SW: the PLL */
  if (!wait_for(&RCC_CFGR, 3u << 2, 2u << 2)) return;           /* SWS: the PLL */
  core_hz = BOARD_CLOCK_HZ;
}
#endif

void board_init(void) {
#ifdef BOARD_PLL
  clock_init();
#endif
  RCC_AHB1ENR |= 1u << 3;   /* GPIOD */
  RCC_APB1ENR |= 1u << 18;  /* USART3 (QEMU ignores RCC: it reads back 0) */
  GPIOD_MODER = (GPIOD_MODER & ~(0xFu << 16)) | (0xAu << 16);  /* PD8, PD9: alternate */
  GPIOD_AFRH = (GPIOD_AFRH & ~0xFFu) | 0x77u;                     /* AF7: USART3 */
  USART3_BRR = (core_hz / apb1_divider + BAUD / 2) / BAUD;        /* the clock the bus really has */
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

uint32_t board_timer_hz(void) {
#ifdef BOARD_TIMER_SYSTICK
  return BOARD_TIMER_HZ; /* QEMU's SysTick rate, from board_facts.tsv */
#else
  return core_hz; /* the DWT counts core cycles: the clock the set-up reached */
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
