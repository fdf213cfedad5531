"""Compares the reference models' device.json files with the baseline in the repository, or rewrites it.

Fails (exit 1), one line per problem naming the field, the baseline, the new value and the
tolerance, when outputs stop matching the host or a figure regresses beyond its tolerance. The
results are those `make bench-reference` wrote (runs/bench-reference) unless RUN_DIR names another
folder of models/<id>/device-<board>-<engine>/device.json files.

Usage:
    .venv/bin/python scripts/bench_check.py [RUN_DIR] [--boards qemu-stm32f4 qemu-microbit] [--engines aot]
    .venv/bin/python scripts/bench_check.py [RUN_DIR] --write      # make bench-baseline
    make bench-check [BOARDS="qemu-stm32f4 qemu-microbit"] [CHECK_ENGINES=aot]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.deploy import baseline  # noqa: E402
from pipeline.deploy.boards import load_boards  # noqa: E402
from pipeline.errors import UserError, run_script  # noqa: E402

DEFAULT_BASELINE = Path(__file__).resolve().parent.parent / "bench" / "baseline.json"
DEFAULT_RUN = Path("runs") / "bench-reference"  # scripts/bench_reference.py's --out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", default=DEFAULT_RUN,
                        help=f"where the benchmarked models' device.json files are (default: {DEFAULT_RUN}, "
                             "from make bench-reference)")
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    parser.add_argument("--boards", nargs="+", default=None,
                        help="check only these boards' entries (default: every board in the baseline)")
    parser.add_argument("--engines", nargs="+", default=None, choices=("aot", "tflm"),
                        help="check only these engines' entries (default: both; aot alone without a TFLM tree)")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the baseline's entries from this run's device.json files instead")
    args = parser.parse_args()
    known = load_boards()
    for board in args.boards or []:
        if board not in known:
            raise UserError(f"--boards {board} is not a board: expected one of {', '.join(known)}")
    results = baseline.collect(args.run_dir)
    results = {k: v for k, v in results.items() if baseline.selected(k, args.boards, args.engines)}
    current = baseline.load(args.baseline)
    if args.write:
        if not results:
            raise UserError(f"{args.run_dir} has no device.json files to take as the baseline: run "
                            "make bench-engines or make flash RUN=... first")
        baseline.write(args.baseline, baseline.update(current, results))
        print(f"{os.path.relpath(args.baseline)}: {len(results)} results from {args.run_dir} written")
        return 0
    failures, notes = baseline.check(current, results, args.boards, args.engines)
    for line in notes:
        print(f"note: {line}")
    for line in failures:
        print(f"FAIL: {line}")
    checked = sum(1 for k in current["results"] if baseline.selected(k, args.boards, args.engines))
    print(f"bench-check: {checked} baseline results, {len(failures)} failures ({os.path.relpath(args.baseline)})")
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
