/* nRF51822 board code (BBC micro:bit v1; QEMU -M microbit): UART0 at 115200 8N1
 * on P0.24 (TX) / P0.25 (RX), the USB serial port of the micro:bit, and TIMER0
 * as a 32-bit counter at 16 MHz (the nRF51 has no SysTick). */
#include <stdint.h>

#include "board.h"

#define REG(address) (*(volatile uint32_t*)(address))

#define UART0_STARTRX REG(0x40002000)
#define UART0_STARTTX REG(0x40002008)
#define UART0_RXDRDY REG(0x40002108)
#define UART0_TXDRDY REG(0x4000211C)
#define UART0_ENABLE REG(0x40002500)
#define UART0_PSELTXD REG(0x4000250C)
#define UART0_PSELRXD REG(0x40002514)
#define UART0_RXD REG(0x40002518)
#define UART0_TXD REG(0x4000251C)
#define UART0_BAUDRATE REG(0x40002524)
#define GPIO_DIRSET REG(0x50000518)
#define TIMER0_START REG(0x40008000)
#define TIMER0_CAPTURE0 REG(0x40008040)
#define TIMER0_MODE REG(0x40008504)
#define TIMER0_BITMODE REG(0x40008508)
#define TIMER0_PRESCALER REG(0x40008510)
#define TIMER0_CC0 REG(0x40008540)

void board_init(void) {
  GPIO_DIRSET = 1u << 24;
  UART0_PSELTXD = 24;
  UART0_PSELRXD = 25;
  UART0_BAUDRATE = 0x01D7E000u; /* 115200 */
  UART0_ENABLE = 4;
  UART0_STARTTX = 1;
  UART0_STARTRX = 1;
  TIMER0_MODE = 0;      /* timer */
  TIMER0_BITMODE = 3;   /* 32 bit */
  TIMER0_PRESCALER = 0; /* 16 MHz */
  TIMER0_START = 1;
}

void board_uart_write(const char* data, int length) {
  for (int i = 0; i < length; ++i) {
    UART0_TXDRDY = 0;
    UART0_TXD = (uint8_t)data[i];
    while (!UART0_TXDRDY) {
    }
  }
}

uint8_t board_uart_read(void) {
  while (!UART0_RXDRDY) {
  }
  UART0_RXDRDY = 0;
  return (uint8_t)UART0_RXD;
}

uint32_t board_ticks(void) {
  TIMER0_CAPTURE0 = 1;
  return TIMER0_CC0;
}

uint32_t board_timer_hz(void) { return BOARD_TIMER_HZ; /* TIMER0 at 16 MHz, from board_facts.tsv */ }
