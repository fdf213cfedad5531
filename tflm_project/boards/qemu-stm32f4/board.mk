# QEMU -M netduinoplus2 (STM32F405): the STM32F4 board code with SysTick timing
# (QEMU does not model the DWT cycle counter). Started by the host, not flashed.
include boards/stm32f413/board.mk
BOARD_CFLAGS := -DBOARD_TIMER_SYSTICK
FLASH_COMMAND = $(error BOARD=qemu-stm32f4 is emulated: use make bench, which starts QEMU)
