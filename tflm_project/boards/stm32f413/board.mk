# NUCLEO-F413ZH: STM32F413ZH, Cortex-M4. Flashed with openocd over the ST-LINK.
BOARD_DIR := boards/stm32f413
BOARD_SRCS := boards/cortex_m_reset.c $(BOARD_DIR)/startup.c $(BOARD_DIR)/board.c
BOARD_LINKER := boards/cortex_m.ld.in
# the PLL set-up to board_facts.tsv's clock: gen/board_clock.h, written by pipeline/deploy/clocks.py
BOARD_CFLAGS := -DBOARD_PLL -I$(GEN_DIR)
FLASH_ORIGIN := 0x08000000
RAM_ORIGIN := 0x20000000
FLASH_COMMAND = openocd -f board/st_nucleo_f4.cfg -c "program $(ELF) verify reset exit"
