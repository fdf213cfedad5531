# QEMU -M microbit: the micro:bit image as is. Started by the host, not flashed.
include boards/microbit/board.mk
FLASH_COMMAND = $(error BOARD=qemu-microbit is emulated: use make bench, which starts QEMU)
