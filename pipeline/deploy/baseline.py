"""The benchmark baseline: device.json figures kept in the repository, and the check against them.

`make bench-reference` runs the reference models committed in bench/models on a board and leaves
one device.json per model, board and engine (runs/bench-reference/models/<id>/device-<board>-
<engine>/device.json; `make bench-engines` and `make flash RUN=...` leave the same layout in a
search's run). `make bench-baseline` copies their figures into bench/baseline.json on purpose;
`make bench-check`, run at the end of each CI benchmark job, fails when outputs stop matching the
host or a figure regresses beyond its tolerance. Tolerances live in the baseline file, so a
reviewer sees them change.

A result is keyed "<board> <engine> trial <id>" and carries the model's sha256: a baseline made
for another model of the same trial is reported as such, not compared figure by figure.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

# field: (better, kind, tolerance). "lower": a larger value is a regression; "higher": a smaller one.
# relative tolerances are fractions of the baseline; absolute ones are in the field's unit.
DEFAULT_TOLERANCES: dict[str, dict[str, Any]] = {
    "flash_bytes": {"better": "lower", "relative": 0.01},
    "ram_bytes": {"better": "lower", "relative": 0.01},
    "arena_bytes": {"better": "lower", "relative": 0.0},
    "latency_instructions": {"better": "lower", "relative": 0.02},  # QEMU -icount: deterministic
    "latency_cycles": {"better": "lower", "relative": 0.05},  # hardware: caches and flash wait states
    "latency_ms": {"better": "lower", "relative": 0.05},
    "accuracy": {"better": "higher", "absolute": 0.02},
    "outputs_match": {"better": "higher", "absolute": 0.0},
}


def _key(result: dict[str, Any], trial: str) -> str:
    return f"{result['board']} {result['engine']} trial {trial}"


def collect(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every device.json under run_dir/models, keyed "<board> <engine> trial <id>"."""
    models = run_dir / "models"
    if not models.is_dir():
        raise UserError(f"{run_dir} has no models/ folder: run make bench-reference (BOARD=...) first, or, for "
                        "a search's run, make export RUN=DIR and a benchmark (make bench-engines RUN=DIR)")
    results = {}
    for path in sorted(models.glob("*/device-*/device.json")):
        try:
            result = json.loads(path.read_text())
            results[_key(result, path.parent.parent.name)] = result
        except (json.JSONDecodeError, KeyError) as exc:
            raise UserError(f"{path} is not a device.json written by the device stage ({exc}): "
                            "delete it and run the benchmark again") from None
    return results


def load(path: Path) -> dict[str, Any]:
    """The baseline file, or an empty one with the default tolerances when it does not exist."""
    if not path.is_file():
        return {"tolerances": DEFAULT_TOLERANCES, "results": {}}
    try:
        baseline = json.loads(path.read_text())
        if not isinstance(baseline.get("results"), dict) or not isinstance(baseline.get("tolerances"), dict):
            raise ValueError("expected the keys 'tolerances' and 'results'")
    except ValueError as exc:
        raise UserError(f"{path} is not a benchmark baseline ({exc}): restore it with git checkout "
                        "or rewrite it with make bench-baseline") from None
    return baseline


def update(baseline: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A new baseline: `baseline` with the entries of `results` replaced or added."""
    fields = baseline["tolerances"]
    entries = dict(baseline["results"])
    for key, result in results.items():
        entries[key] = {"model_sha256": result.get("model_sha256"), "samples": result.get("samples"),
                        **{f: result[f] for f in fields if f in result}}
    return {**baseline, "results": dict(sorted(entries.items()))}


def _limit(base: float, rule: dict[str, Any]) -> float:
    slack = rule.get("absolute", 0.0) + abs(base) * rule.get("relative", 0.0)
    return base + slack if rule["better"] == "lower" else base - slack


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _tolerance(rule: dict[str, Any]) -> str:
    return f"{100 * rule['relative']:g} %" if "relative" in rule else f"{rule['absolute']:g}"


def selected(key: str, boards: list[str] | None = None, engines: list[str] | None = None) -> bool:
    """Whether a result key "<board> <engine> trial <id>" is for one of `boards` and `engines` (None: any)."""
    board, engine = key.split(" ")[:2]
    return (boards is None or board in boards) and (engines is None or engine in engines)


def check(baseline: dict[str, Any], results: dict[str, dict[str, Any]], boards: list[str] | None = None,
          engines: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(failures, notes): one line per figure outside its tolerance, per missing or changed model.

    Only the baseline's entries for `boards` and `engines` are checked (all when None), so a job that
    benchmarks the emulated boards, or runs without a TFLM tree, does not fail for want of the
    other results.
    """
    failures, notes = [], []
    for key, base in baseline["results"].items():
        if not selected(key, boards, engines):
            continue
        new = results.get(key)
        if new is None:
            board, engine = key.split(" ")[:2]
            failures.append(f"{key}: no device.json, but the baseline has one: run make bench-reference "
                            f"BOARD={board} ENGINES={engine} (a search's run: make bench-engines RUN=... "
                            f"BOARD={board}), or check only the boards and engines run (BOARDS=..., "
                            "CHECK_ENGINES=...)")
            continue
        if base.get("model_sha256") and new.get("model_sha256") != base["model_sha256"]:
            failures.append(f"{key}: the model is not the baseline's (sha256 {str(new.get('model_sha256'))[:12]} "
                            f"vs {base['model_sha256'][:12]}): if the search changed on purpose, run make "
                            "bench-baseline and commit bench/baseline.json")
            continue
        for field, rule in baseline["tolerances"].items():
            if field not in base:
                continue
            if field not in new:
                failures.append(f"{key}: {field} is missing from the new device.json "
                                f"(baseline {_figure(base[field])})")
                continue
            limit = _limit(base[field], rule)
            worse = new[field] > limit if rule["better"] == "lower" else new[field] < limit
            if worse:
                failures.append(f"{key}: {field} {_figure(new[field])} against the baseline "
                                f"{_figure(base[field])} (tolerance {_tolerance(rule)}, limit {_figure(limit)})")
            elif (new[field] < _limit(base[field], {**rule, "better": "higher"}) if rule["better"] == "lower"
                  else new[field] > _limit(base[field], {**rule, "better": "lower"})):
                notes.append(f"{key}: {field} {_figure(new[field])}, better than the baseline {_figure(base[field])} "
                             "beyond its tolerance: make bench-baseline keeps the gain")
    for key in sorted(set(results) - set(baseline["results"])):
        if selected(key, boards, engines):
            notes.append(f"{key}: not in the baseline (make bench-baseline adds it)")
    return failures, notes


def write(path: Path, baseline: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(baseline, indent=1) + "\n")
    tmp.replace(path)
