"""The STM32F413's clock set-up (pipeline/deploy/clocks.py) against the reference manual's limits, the
header the firmware is built with, and that firmware compiled for the board."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pipeline.compress import tflite_model
from pipeline.deploy import clocks, firmware
from pipeline.deploy.boards import get_board
from pipeline.errors import UserError


def test_the_stm32f413_row_runs_the_core_at_its_rated_100_mhz_from_the_hsi_pll():
    board = get_board("stm32f413")
    assert board.clock_hz == board.timer_hz == 100_000_000  # DWT counts core cycles
    plan = clocks.plan_clock(board.clock_hz)
    assert clocks.HSI_HZ / plan.pllm * plan.plln / plan.pllp == 100_000_000
    assert (plan.pllm, plan.plln, plan.pllp) == (8, 100, 2)  # VCO input 2 MHz, VCO 200 MHz
    assert plan.flash_wait_states == 3 and plan.vos == 3  # 3 WS above 90 MHz; voltage scale 1
    assert (plan.apb1_hz, plan.apb2_hz) == (50_000_000, 100_000_000)


@pytest.mark.parametrize("hz", [24_000_000, 48_000_000, 64_000_000, 84_000_000, 96_000_000, 100_000_000])
def test_every_planned_clock_keeps_within_the_reference_manual_limits(hz):
    plan = clocks.plan_clock(hz)
    assert clocks.HSI_HZ / plan.pllm * plan.plln / plan.pllp == hz
    assert clocks.VCO_INPUT_HZ[0] <= plan.vco_input_hz <= clocks.VCO_INPUT_HZ[1]
    assert clocks.VCO_OUTPUT_HZ[0] <= plan.vco_output_hz <= clocks.VCO_OUTPUT_HZ[1]
    assert clocks.PLLN_RANGE[0] <= plan.plln <= clocks.PLLN_RANGE[1] and plan.pllp in clocks.PLLP_CHOICES
    assert clocks.PLLQ_RANGE[0] <= plan.pllq <= clocks.PLLQ_RANGE[1]
    assert plan.vco_output_hz / plan.pllq <= clocks.PLLQ_MAX_HZ
    assert plan.apb1_hz <= clocks.APB1_MAX_HZ and plan.apb2_hz <= clocks.APB2_MAX_HZ
    assert hz <= clocks.FLASH_WAIT_STATE_LIMITS_HZ[plan.flash_wait_states]
    assert plan.flash_wait_states == 0 or hz > clocks.FLASH_WAIT_STATE_LIMITS_HZ[plan.flash_wait_states - 1]
    assert hz <= clocks.VOS_LIMITS_HZ[plan.vos]
    brr = clocks.usart_brr(plan.apb1_hz, 115200)
    assert abs(plan.apb1_hz / brr - 115200) / 115200 < 0.01  # the UART's rate within 1 %


def test_pllcfgr_packs_the_factors_where_rm0430_puts_them():
    plan = clocks.plan_clock(100_000_000)
    value = plan.pllcfgr
    assert value & 0x3F == 8 and (value >> 6) & 0x1FF == 100 and (value >> 16) & 3 == 0  # M, N, P = 2
    assert (value >> 22) & 1 == 0 and (value >> 24) & 0xF == plan.pllq and (value >> 28) & 7 == 2  # HSI, Q, R
    assert plan.cfgr_dividers == 0b100 << 10  # APB1 /2, APB2 /1, AHB /1


@pytest.mark.parametrize("hz", [16_000_000, 120_000_000, 100_500_000])
def test_a_clock_the_pll_cannot_make_is_refused_in_one_line(hz):
    with pytest.raises(UserError, match=f"clock_hz {hz:,}"):
        clocks.plan_clock(hz)


def test_the_stm32f413_firmware_builds_with_the_generated_header(tmp_path):
    header = clocks.header(get_board("stm32f413"))
    assert "#define BOARD_RCC_PLLCFGR 0x" in header and "#define BOARD_CLOCK_HZ 100000000u" in header
    model = _tiny_model()
    build = firmware.build(model, get_board("stm32f413"), "aot", tmp_path / "fw", "tiny")
    written = (tmp_path / "fw" / "gen" / "board_clock.h").read_text()
    assert written == header and build.elf.is_file()
    image = tmp_path / "fw.bin"
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", str(build.elf), str(image)], check=True, timeout=60)
    pllcfgr = clocks.plan_clock(100_000_000).pllcfgr
    assert pllcfgr.to_bytes(4, "little") in image.read_bytes()  # the value board.c writes to RCC_PLLCFGR


def _tiny_model() -> bytes:
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.layers.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Conv2D(2, 3, activation="relu")(inputs))))
    return tflite_model.convert_int8(model, np.random.default_rng(0).random((16, 8, 8, 1), np.float32))


def test_the_host_refuses_figures_from_a_board_left_on_its_reset_clock():
    from pipeline.deploy.device import _check_timer

    board = get_board("stm32f413")
    _check_timer("READY engine=aot input=256 output=2 arena=272 capacity=272 timer=100000000", board)
    with pytest.raises(UserError, match="counts at 16,000,000 Hz, not the 100,000,000 Hz"):
        _check_timer("READY engine=aot input=256 output=2 arena=272 capacity=272 timer=16000000", board)
