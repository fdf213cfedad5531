"""Measure a model on a board: build, flash or emulate, talk over the serial port, write device.json.

The firmware speaks one line per message (tflm_project/app/main.c):
``READY ...`` at start, ``RESULT ticks=<n> out=<hex>`` per input sent as
``I <hex>``, ``STATS stack=<n> arena=<n> capacity=<n>`` for ``S`` and
``PROFILE <ticks per operator>`` for ``P``. Every read has a
timeout, so a silent or wrong port fails within a bounded time.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.compress import tflite_model
from pipeline.deploy import firmware
from pipeline.deploy.boards import Board, get_board
from pipeline.errors import DoesNotFit, UserError, ensure_directory

BAUD = 115200
READY_TIMEOUT_S = 20.0
REPLY_TIMEOUT_S = 60.0
FLASH_TIMEOUT_S = 120
DEFAULT_DATASET_SAMPLES = 100
RESULT = re.compile(r"^RESULT ticks=(\d+) out=([0-9a-f]*)$")
STATS = re.compile(r"^STATS stack=(\d+) arena=(\d+) capacity=(\d+)(?: timer=\d+)?$")


def default_out_dir(model_path: Path, board_name: str, engine: str) -> Path:
    """Where a model's result on one board with one engine goes: beside the model, one folder each."""
    return model_path.parent / f"device-{board_name}-{engine}"


def run_device(model_path: Path, board_name: str, engine: str, out_dir: Path, port: str | None = None,
               samples: int | None = None, reply_timeout: float = REPLY_TIMEOUT_S,
               dataset: str | None = None, data_dir: str | None = None,
               aot_kernels: str = "fast") -> dict[str, Any]:
    """Builds, flashes or emulates, measures, and writes ``out_dir/device.json``; returns its content.

    The inputs are the exported test_samples.npz beside the model, or, with
    ``dataset``, the first test images of that dataset quantised with the
    model's own input parameters (any int8 .tflite, no export needed).
    """
    board = get_board(board_name)
    if port is not None and "://" not in port and not Path(port).exists():  # before a build: fail in seconds
        raise UserError(f"serial port {port!r} does not exist: is the board attached, and is this its port? "
                        "(ls /dev/ttyACM* /dev/ttyUSB*)")
    if engine not in firmware.ENGINES:
        raise UserError(f"unknown engine {engine!r}: expected one of {', '.join(firmware.ENGINES)}")
    data = tflite_model.read_tflite(model_path)
    if samples is not None and samples < 1:
        raise UserError(f"--samples {samples}: expected a positive number of test inputs")
    if dataset is not None:
        inputs, labels = dataset_samples(data, str(model_path), dataset, data_dir, samples)
    else:
        inputs, labels = _test_samples(model_path, samples)
    made = not out_dir.exists()
    ensure_directory(out_dir, "--out")
    try:
        build = _build(data, board, engine, out_dir, model_path, port, aot_kernels)
    except DoesNotFit:
        if made:  # a model that does not fit leaves no empty device folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    with _connect(board, build, port) as link:
        _check_timer(_wait_ready(link, board), board)
        ticks, outputs = [], []
        for n, x in enumerate(inputs):
            link.write(b"I " + x.tobytes().hex().encode() + b"\n")
            found = RESULT.match(_read_line(link, reply_timeout, f"a result for input {n + 1} of {len(inputs)}"))
            if found is None:
                raise UserError(f"{board.name} did not return a result for input {n + 1}: check that the "
                                "firmware matches this model")
            ticks.append(int(found.group(1)))
            outputs.append(np.frombuffer(bytes.fromhex(found.group(2)), np.int8))
        link.write(b"S\n")
        stats = STATS.match(_read_line(link, reply_timeout, "the memory statistics"))
        if stats is None:
            raise UserError(f"{board.name} sent no STATS line")
        link.write(b"P\n")
        profile = _read_line(link, reply_timeout, "the per-operator profile").split()
        if not profile or profile[0] != "PROFILE":
            raise UserError(f"{board.name} sent {' '.join(profile)[:60]!r} instead of a PROFILE line")
        op_ticks = [int(v) for v in profile[1:]]
    outputs = np.stack(outputs)
    host = tflite_model.tflm_run(data, inputs)
    stack = int(stats.group(1))
    mean_ticks = float(np.mean(ticks))
    result: dict[str, Any] = {
        "board": board.name, "engine": engine, "model": str(model_path),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "flash_bytes": build.flash_bytes, "ram_bytes": build.data_bytes + build.bss_bytes + stack,
        "arena_bytes": int(stats.group(2)), "arena_capacity_bytes": int(stats.group(3)),
    }
    if board.emulated:
        result["latency_instructions"] = _latency(mean_ticks, board)
    else:
        result["latency_cycles"] = _latency(mean_ticks, board)
        result["latency_ms"] = round(1000 * mean_ticks / board.timer_hz, 3)
    result.update({
        "accuracy": round(float(np.mean(outputs.argmax(axis=1) == labels)), 6),
        "outputs_match": round(float(np.mean(np.all(outputs == host, axis=1))), 6),
        "samples": int(len(inputs)),
        "stack_bytes": stack, "static_ram_bytes": build.data_bytes + build.bss_bytes,
        "weight_bytes": build.model.weight_bytes, "nonzero_weight_bytes": build.model.nonzero_weight_bytes,
        "working_memory_bytes": build.model.working_memory_bytes,
        "latency_unit": "instructions (QEMU -icount shift=0, not cycles)" if board.emulated else "cycles",
        # the last input's time per operator, in latency_unit (the AOT engine's; TFLM gives none)
        "operators": [{"op": name, "latency": _latency(ticks, board)}
                      for name, ticks in zip(build.model.operators, op_ticks)],
    })
    partial = out_dir / "device.json.partial"
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(out_dir / "device.json")
    return result



def _build(data: bytes, board: Board, engine: str, out_dir: Path, model_path: Path, port: str | None,
           aot_kernels: str) -> firmware.Firmware:
    """The firmware to measure with: for TFLM, built with the arena a probe on the device found."""
    if engine == "tflm":  # the arena TFLM needs, found on the device by a probe that lends it all free RAM
        probe = firmware.build(data, board, engine, out_dir / "firmware-probe", str(model_path))
        with _connect(board, probe, port) as link:
            try:
                capacity = _ready_field(_wait_ready(link, board), "capacity")
            except _Reported as exc:
                if "engine init failed" not in str(exc):
                    raise
                raise DoesNotFit(f"{model_path} does not fit {board.name} with ENGINE=tflm: TensorFlow Lite Micro "
                                f"could not allocate its tensors in the RAM left free ({exc.log or 'no log'}): "
                                f"pick a smaller Pareto model or search with --board {board.name} "
                                "--engine tflm") from None
        return firmware.build(data, board, engine, out_dir / "firmware", str(model_path),
                              tflm_arena_bytes=capacity)
    return firmware.build(data, board, engine, out_dir / "firmware", str(model_path), aot_kernels=aot_kernels)


def summary(result: dict[str, Any]) -> str:
    """A device.json in one line: accuracy, agreement with host TFLM, flash, RAM, arena, latency."""
    latency = (f"{result['latency_instructions']:,} instructions" if "latency_instructions" in result
               else f"{result['latency_ms']} ms ({result['latency_cycles']:,} cycles)")
    return (f"{result['board']} {result['engine']}: accuracy {100 * result['accuracy']:.2f}% on "
            f"{result['samples']} inputs, outputs match host TFLM {100 * result['outputs_match']:.1f}%, flash "
            f"{result['flash_bytes']:,} B, RAM {result['ram_bytes']:,} B (arena {result['arena_bytes']:,} B), "
            f"latency {latency}")


def _test_samples(model_path: Path, samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    path = model_path.parent / "test_samples.npz"
    if not path.is_file():
        raise UserError(f"no test_samples.npz next to {model_path}: export the model first "
                        "(make export RUN=<search dir>), or name the dataset its inputs come from "
                        "(DATASET=usps / --dataset usps)")
    with np.load(path) as f:
        x, y = f["x_int8"], f["y"]
    if samples is not None:
        x, y = x[:samples], y[:samples]
    return x, y


def dataset_samples(model: bytes, label: str, dataset: str, data_dir: str | None,
                    samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first test images of ``dataset`` as the model's int8 inputs, with their labels.

    UserError, naming both, when the model's input shape or class count does
    not fit the dataset.
    """
    from pipeline.datasets import load_dataset

    data = load_dataset(dataset, data_dir)
    q = tflite_model.quantization(model)
    wanted_in, wanted_out = [1, *data.input_shape], [1, data.num_classes]
    if q["input_shape"] != wanted_in or q["output_shape"] != wanted_out:
        raise UserError(f"{label} takes input {q['input_shape']} and gives output {q['output_shape']}, but "
                        f"{dataset} has images {wanted_in} and {data.num_classes} classes ({wanted_out}): "
                        "pick the dataset the model was trained on")
    count = samples or DEFAULT_DATASET_SAMPLES
    return tflite_model.quantize_inputs(model, data.x_test[:count]), data.y_test[:count]


@contextlib.contextmanager
def _connect(board: Board, build: firmware.Firmware, port: str | None) -> Iterator[Any]:
    """A pyserial link to the running firmware: QEMU's TCP serial, or the board's port after flashing."""
    import serial

    if board.emulated:
        tcp = firmware.free_tcp_port()
        log = open(build.elf.parent / "qemu.log", "w")
        qemu = subprocess.Popen(firmware.qemu_command(board, build.elf, tcp), stdout=log, stderr=log)
        try:
            link = _open_socket(f"socket://127.0.0.1:{tcp}", qemu)
            with link:
                yield link
        finally:
            qemu.kill()
            qemu.wait(timeout=10)
            log.close()
        return
    if port is None:
        raise UserError(f"no serial port given for {board.name}: pass PORT=/dev/ttyACM0 (make) or --port "
                        "(the board's USB serial device; ls /dev/ttyACM* /dev/ttyUSB*)")
    try:
        link = serial.Serial(port, BAUD, timeout=1.0)
    except (serial.SerialException, OSError) as exc:
        raise UserError(f"cannot open serial port {port!r} ({exc}): is the board attached, and is this "
                        "its port? (ls /dev/ttyACM* /dev/ttyUSB*)") from None
    with link:
        _flash(board, build)
        yield link


def _open_socket(url: str, qemu: subprocess.Popen) -> Any:
    import serial

    deadline = time.monotonic() + 15
    while True:
        if qemu.poll() is not None:
            raise UserError(f"QEMU exited with code {qemu.returncode} before the firmware started "
                            "(see qemu.log in the firmware build folder)")
        try:
            return serial.serial_for_url(url, timeout=1.0)
        except (serial.SerialException, OSError):
            if time.monotonic() > deadline:
                raise UserError("QEMU did not open its serial socket within 15 s") from None
            time.sleep(0.1)


def _flash(board: Board, build: firmware.Firmware) -> None:
    command = ["make", "-C", str(firmware.PROJECT_DIR), "flash", *build.make_args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=FLASH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"flashing {board.name} took over {FLASH_TIMEOUT_S} s: is the board attached?") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"flashing {board.name} with {board.flash_tool} failed: {last} "
                        "(is the board attached and the tool installed?)")


def _latency(ticks: float, board: Board) -> int:
    """Ticks as instructions (QEMU, -icount shift=0: 1 ns each) or as cycles at the board's clock."""
    return round(ticks * (1e9 if board.emulated else board.clock_hz) / board.timer_hz)


class _Reported(UserError):
    """The firmware sent an ERROR line; ``log`` is the engine's last log line before it."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


class _NoReply(UserError):
    """The firmware sent nothing in time (as opposed to sending an ERROR line)."""


def _wait_ready(link: Any, board: Board) -> str:
    """Waits for READY (returned); if it went out before the port was opened, asks for STATS instead.

    On a loaded host the port can open half-way through the READY line: what
    arrives first is then its tail, and STATS is asked for as when nothing came.
    """
    try:
        line = _read_line(link, READY_TIMEOUT_S / 2, "the firmware's READY line")
        if not (line.startswith("READY") or line.startswith("STATS")):
            raise _NoReply(f"the tail of a READY line: {line[:60]!r}")
    except _NoReply:
        link.write(b"\nS\n")
        line = _read_line(link, READY_TIMEOUT_S / 2, "the firmware's READY line")
        # a READY line cut by the first timeout (a loaded host) ends first; the STATS reply follows it
        if not (line.startswith("READY") or line.startswith("STATS")):
            line = _read_line(link, READY_TIMEOUT_S / 2, "the firmware's READY line")
    if not (line.startswith("READY") or line.startswith("STATS")):
        raise UserError(f"{board.name} sent {line[:60]!r} instead of READY: is this the right port?")
    return line


def _check_timer(line: str, board: Board) -> None:
    """Refuses figures from a board whose tick counter does not run at board_facts.tsv's rate
    (a clock set-up that timed out leaves the core on its reset clock)."""
    found = re.search(r"\btimer=(\d+)", line)
    if found is not None and int(found.group(1)) != board.timer_hz:
        raise UserError(f"{board.name} counts at {int(found.group(1)):,} Hz, not the {board.timer_hz:,} Hz of "
                        "board_facts.tsv: its clock set-up did not complete (the PLL did not lock); power-cycle "
                        "the board and run again, and check its supply if it persists")


def _ready_field(line: str, field: str) -> int:
    """A byte count of a READY or STATS line: ``arena`` (what the engine uses) or ``capacity`` (what it reserves)."""
    found = re.search(rf"\b{field}=(\d+)", line)
    if found is None:
        raise UserError(f"the firmware's line {line[:60]!r} has no {field}= figure: rebuild the firmware "
                        "with this version of the tool")
    return int(found.group(1))


def _read_line(link: Any, timeout: float, what: str) -> str:
    """One non-empty line from the firmware; UserError when none arrives within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    buffer, log = b"", ""
    while time.monotonic() < deadline:
        buffer += link.readline()
        if buffer.endswith(b"\n"):
            text = buffer.decode(errors="replace").strip()
            buffer = b""
            if text.startswith("LOG "):  # the engine's own log (TFLM's MicroPrintf): kept for errors
                log = text[4:]
                continue
            if text.startswith("ERROR"):
                raise _Reported(f"the firmware reported: {text}" + (f" (its log: {log})" if log else ""), log)
            if text:
                return text
    raise _NoReply(f"no reply from the board within {timeout:.0f} s while waiting for {what}: "
                   "it stopped answering, or this is the wrong port")


def latest_best_model(runs_dir: Path, data_dir: str | None = None) -> Path:
    """The best Pareto model of the most recent search under ``runs_dir``, exported if needed."""
    from pipeline.deploy.export import export_run, latest_run, load_run
    from pipeline.search.results import best_trial

    run_dir = latest_run(runs_dir)
    _, rows = load_run(run_dir)
    best = best_trial(rows)
    if best is None:
        raise UserError(f"the latest search {run_dir} has no Pareto model: pass MODEL=")
    model = run_dir / "models" / best["trial_id"] / "model_int8.tflite"
    if not model.is_file():
        export_run(run_dir, best["trial_id"], data_dir=data_dir)
    return model
