/* What the application needs from a board: a UART, a tick counter, the stack bounds. */
#ifndef BOARD_H_
#define BOARD_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void board_init(void);
void board_uart_write(const char* data, int length);
/* Blocks until one byte arrives. */
uint8_t board_uart_read(void);
/* Free-running tick counter (rate: timer_hz of board_facts.tsv). */
uint32_t board_ticks(void);
/* The rate board_ticks() actually counts at (a board whose clock set-up failed says so). */
uint32_t board_timer_hz(void);

/* Linker-script symbols: the stack region [_stack_limit, _stack_top). */
extern uint32_t _stack_limit;
extern uint32_t _stack_top;

#ifdef __cplusplus
}
#endif

#endif /* BOARD_H_ */
