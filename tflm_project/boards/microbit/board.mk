# BBC micro:bit v1: nRF51822, Cortex-M0, 16 KB RAM. Flashed with pyocd over
# the DAPLink interface (or copy firmware.hex to the MICROBIT drive).
BOARD_DIR := boards/microbit
BOARD_SRCS := boards/cortex_m_reset.c $(BOARD_DIR)/startup.c $(BOARD_DIR)/board.c
BOARD_LINKER := boards/cortex_m.ld.in
BOARD_CFLAGS :=
FLASH_ORIGIN := 0x00000000
RAM_ORIGIN := 0x20000000
FLASH_COMMAND = pyocd flash -t nrf51 $(ELF)
