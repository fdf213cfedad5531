"""The STM32F413's clock tree: the register values that run its core at board_facts.tsv's clock_hz.

The firmware starts on the 16 MHz HSI. For a board whose row asks for more, the main PLL
multiplies the HSI up (SYSCLK = HSI / M * N / P), the flash gets the wait states that clock
needs and the regulator the voltage scale, and the peripheral buses are divided down to their
limits. The values are worked out here, checked against the limits of the reference manual
(RM0430, STM32F413/423: the RCC, PWR and flash chapters), and written as a header the board code
includes (board_clock.h), so the arithmetic is tested on the host, not discovered on the chip.
QEMU's netduinoplus2 does not model the RCC: the emulated board keeps the reset clock.
"""
from __future__ import annotations

import dataclasses

from pipeline.deploy.boards import Board
from pipeline.errors import UserError

HSI_HZ = 16_000_000
VCO_INPUT_HZ = (950_000, 2_100_000)  # RM0430 RCC: the PLL input after /M (2 MHz limits jitter)
VCO_OUTPUT_HZ = (100_000_000, 432_000_000)
PLLM_RANGE = (2, 63)
PLLN_RANGE = (50, 432)
PLLP_CHOICES = (2, 4, 6, 8)
PLLQ_RANGE = (2, 15)
PLLQ_MAX_HZ = 48_000_000  # the USB/SDIO clock: unused here, but kept within its limit
PLLR = 2  # I2S/DFSDM clock divider (2..7): unused here
SYSCLK_MAX_HZ = 100_000_000
APB1_MAX_HZ = 50_000_000
APB2_MAX_HZ = 100_000_000
# Flash wait states at VDD 2.7-3.6 V, voltage scale 1: the highest HCLK each number allows.
FLASH_WAIT_STATE_LIMITS_HZ = (30_000_000, 64_000_000, 90_000_000, 100_000_000)
# Regulator voltage scales (PWR_CR VOS): the highest HCLK each allows, by VOS field value.
VOS_LIMITS_HZ = {1: 64_000_000, 2: 84_000_000, 3: 100_000_000}
APB_DIVIDERS = {1: 0b000, 2: 0b100, 4: 0b101, 8: 0b110, 16: 0b111}  # RCC_CFGR PPREx encodings


@dataclasses.dataclass(frozen=True)
class ClockPlan:
    """One clock set-up: the PLL factors, bus dividers, flash wait states and voltage scale."""

    sysclk_hz: int
    pllm: int
    plln: int
    pllp: int
    pllq: int
    apb1_divider: int
    apb2_divider: int
    flash_wait_states: int
    vos: int

    @property
    def vco_input_hz(self) -> float:
        return HSI_HZ / self.pllm

    @property
    def vco_output_hz(self) -> float:
        return self.vco_input_hz * self.plln

    @property
    def apb1_hz(self) -> int:
        return self.sysclk_hz // self.apb1_divider

    @property
    def apb2_hz(self) -> int:
        return self.sysclk_hz // self.apb2_divider

    @property
    def pllcfgr(self) -> int:
        """RCC_PLLCFGR: PLLM [5:0], PLLN [14:6], PLLP [17:16] ((P / 2) - 1), PLLSRC [22] = 0 (HSI),
        PLLQ [27:24], PLLR [30:28]."""
        return (self.pllm | self.plln << 6 | (self.pllp // 2 - 1) << 16 | self.pllq << 24 | PLLR << 28)

    @property
    def cfgr_dividers(self) -> int:
        """RCC_CFGR: HPRE [7:4] = 0 (AHB = SYSCLK), PPRE1 [12:10], PPRE2 [15:13]."""
        return APB_DIVIDERS[self.apb1_divider] << 10 | APB_DIVIDERS[self.apb2_divider] << 13


def plan_clock(sysclk_hz: int) -> ClockPlan:
    """The set-up for ``sysclk_hz`` from the HSI: VCO input at 2 MHz when it can be, the smallest
    P that puts the VCO in range, the smallest bus dividers within the buses' limits."""
    if not HSI_HZ < sysclk_hz <= SYSCLK_MAX_HZ:
        raise UserError(f"clock_hz {sysclk_hz:,} in board_facts.tsv: the STM32F413 runs its PLL from the "
                        f"16 MHz HSI up to {SYSCLK_MAX_HZ:,} Hz; give a clock in that range")
    for pllm in sorted(range(PLLM_RANGE[0], PLLM_RANGE[1] + 1), key=lambda m: abs(HSI_HZ / m - 2_000_000)):
        vco_in = HSI_HZ / pllm
        if not VCO_INPUT_HZ[0] <= vco_in <= VCO_INPUT_HZ[1]:
            continue
        for pllp in PLLP_CHOICES:
            plln, rest = divmod(sysclk_hz * pllp * pllm, HSI_HZ)
            if rest or not PLLN_RANGE[0] <= plln <= PLLN_RANGE[1]:
                continue
            vco_out = vco_in * plln
            if not VCO_OUTPUT_HZ[0] <= vco_out <= VCO_OUTPUT_HZ[1]:
                continue
            pllq = max(PLLQ_RANGE[0], -(-int(vco_out) // PLLQ_MAX_HZ))
            return ClockPlan(sysclk_hz, pllm, plln, pllp, pllq,
                             apb1_divider=_divider(sysclk_hz, APB1_MAX_HZ),
                             apb2_divider=_divider(sysclk_hz, APB2_MAX_HZ),
                             flash_wait_states=next(ws for ws, top in enumerate(FLASH_WAIT_STATE_LIMITS_HZ)
                                                    if sysclk_hz <= top),
                             vos=min(v for v, top in VOS_LIMITS_HZ.items() if sysclk_hz <= top))
    raise UserError(f"clock_hz {sysclk_hz:,} in board_facts.tsv cannot be made from the 16 MHz HSI with "
                    "integer PLL factors: pick a multiple of 1 MHz such as 100000000")


def _divider(hz: int, limit: int) -> int:
    return next(d for d in sorted(APB_DIVIDERS) if hz // d <= limit)


def usart_brr(pclk_hz: int, baud: int) -> int:
    """USART_BRR for 16x oversampling: the bus clock over the baud rate, rounded (mantissa and
    fraction in one 12.4 fixed-point number)."""
    return (pclk_hz + baud // 2) // baud


def needs_pll(board: Board) -> bool:
    """Whether the board's firmware sets up the PLL: a real STM32F4 board clocked above the HSI."""
    return not board.emulated and board.core == "cortex-m4" and board.clock_hz > HSI_HZ


def header(board: Board, baud: int = 115200) -> str:
    """board_clock.h for a board that sets up its PLL (its clock above the HSI's)."""
    plan = plan_clock(board.clock_hz)
    brr = usart_brr(plan.apb1_hz, baud)
    return (f"/* Generated by pipeline/deploy/clocks.py from board_facts.tsv ({board.name}): do not edit. */\n"
            "#ifndef BOARD_CLOCK_H_\n#define BOARD_CLOCK_H_\n\n"
            f"#define BOARD_CLOCK_HZ {plan.sysclk_hz}u\n"
            f"/* HSI {HSI_HZ // 1_000_000} MHz / M {plan.pllm} * N {plan.plln} / P {plan.pllp}: VCO "
            f"{plan.vco_output_hz / 1e6:g} MHz, Q {plan.pllq} */\n"
            f"#define BOARD_RCC_PLLCFGR 0x{plan.pllcfgr:08X}u\n"
            f"/* AHB /1, APB1 /{plan.apb1_divider} ({plan.apb1_hz // 1_000_000} MHz), APB2 /{plan.apb2_divider} "
            f"({plan.apb2_hz // 1_000_000} MHz) */\n"
            f"#define BOARD_RCC_CFGR_DIVIDERS 0x{plan.cfgr_dividers:08X}u\n"
            f"#define BOARD_APB1_DIVIDER {plan.apb1_divider}u\n"
            f"#define BOARD_FLASH_WAIT_STATES {plan.flash_wait_states}u\n"
            f"#define BOARD_PWR_VOS {plan.vos}u\n"
            f"/* USART3 on APB1: BRR {brr} at {baud} baud (board.c works it out from the clock reached) */\n\n"
            "#endif /* BOARD_CLOCK_H_ */\n")
