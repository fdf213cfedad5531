"""The `report` stage: what the search promised next to what export and the device measured, and
next to what the SpArSe paper published.

For every Pareto trial of a run it joins the trials.csv row (int8 validation
accuracy, MS, WM, host TFLM arena), the exported model.json (test accuracy)
and every device.json anywhere under RUN whose model is that trial's
(flash, RAM, arena, latency and the latency the search predicted, outputs_match): one row per board and engine
measured, so a reader sees in one table whether the numbers on the chip are
the ones the search promised. For the datasets the paper reports, its points
stand beside ours (reference/sparse_paper_points.tsv), each of our models
marked where it dominates one.

The report is written twice from the same blocks: report.md beside the run's
plots, and report.html, self-contained (the plots inline as data: URLs, no
script, nothing fetched), so it opens from disk or as a CI artifact.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path
from typing import Any

from pipeline.deploy import paper
from pipeline.deploy.boards import emulated_twin, get_board
from pipeline.deploy.export import load_run, pareto_rows
from pipeline.search.latency import load_latency_model, predicted_ms
from pipeline.search.results import finish_axis, run_floor, save_figure, status_counts, two_panel_figure

_COLUMNS = ("trial", "int8 val acc %", "test acc %", "MS B", "WM B", "host arena B", "board",
            "flash B", "RAM B", "arena B", "latency", "predicted latency", "outputs match")

Block = tuple  # ("h1" | "h2" | "p", text) | ("table", header, rows) | ("img", file name, alt text)


def device_results(run_dir: Path, model: Path) -> list[dict[str, Any]]:
    """Every device.json under ``run_dir`` measured on ``model``, by board and engine.

    A result names its model by sha256 (older ones only by path), so results
    written to any folder of the run are found, whatever OUT was.
    """
    if not model.is_file():
        return []
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    found = []
    for path in sorted(run_dir.rglob("device.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("model_sha256") == digest or (
                "model_sha256" not in result and Path(result.get("model", "")).resolve() == model.resolve()):
            found.append(result)
    return sorted(found, key=lambda r: (r["board"], r["engine"]))


def _test_accuracy(run_dir: Path, trial: str) -> float | None:
    info_file = run_dir / "models" / trial / "model.json"
    return json.loads(info_file.read_text())["test_accuracy"] if info_file.is_file() else None


def report_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per (Pareto trial, device measurement); trials never run on a device get one row."""
    _, rows = load_run(run_dir)
    table = []
    for row in pareto_rows(rows):
        model_dir = run_dir / "models" / row["trial_id"]
        base = {"trial": row["trial_id"], "int8 val acc %": _percent(row["int8_accuracy"]),
                "test acc %": _percent(_test_accuracy(run_dir, row["trial_id"])),
                "MS B": f"{row['model_size_bytes']:,}", "WM B": f"{row['working_memory_bytes']:,}",
                "host arena B": f"{row['arena_bytes']:,}"}
        model = model_dir / "model_int8.tflite"
        devices = device_results(run_dir, model) or [None]
        data = model.read_bytes() if model.is_file() else None
        for device in devices:
            table.append(base | _device_columns(device) | {"predicted latency": _predicted(data, device)})
    return table


def _device_columns(device: dict[str, Any] | None) -> dict[str, str]:
    if device is None:
        return {"board": "not run", "flash B": "", "RAM B": "", "arena B": "", "latency": "",
                "outputs match": ""}
    if "latency_instructions" in device:
        latency = f"{device['latency_instructions']:,} instr"
    else:
        latency = f"{device['latency_ms']} ms"
    return {"board": f"{device['board']} ({device['engine']})", "flash B": f"{device['flash_bytes']:,}",
            "RAM B": f"{device['ram_bytes']:,}", "arena B": f"{device['arena_bytes']:,}",
            "latency": latency, "outputs match": f"{device['outputs_match']:.2f}"}


def _predicted(model: bytes | None, device: dict[str, Any] | None) -> str:
    """The predicted latency of this model on this device (the AOT engine's only), from the
    generator's layout of the converted model."""
    if model is None or device is None or device["engine"] != "aot":
        return ""
    board = get_board(device["board"])
    instructions = load_latency_model().model_instructions(model, board.core)
    if board.emulated:
        return f"{instructions:,} instr"
    return f"{predicted_ms(instructions, board.clock_hz):.3f} ms (1 cycle/instr)"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _paper_blocks(run_dir: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> list[Block]:
    """The comparison with the paper's published points, and its plot (written beside the run)."""
    points = paper.points_for(run["dataset"])
    blocks: list[Block] = [("h2", "Against the SpArSe paper")]
    if not points:
        reported = sorted({p.dataset for p in paper.load_points()})
        blocks.append(("p", f"The SpArSe paper publishes no results for {run['dataset']} (it reports "
                            f"{', '.join(reported)} among our datasets; its USPS and CIFAR10 results are "
                            "binary)."))
        return blocks
    models = [{"trial": r["trial_id"], "test_accuracy": _test_accuracy(run_dir, r["trial_id"]),
               "ms_bytes": r["model_size_bytes"], "wm_bytes": r["working_memory_bytes"]}
              for r in pareto_rows(rows)]
    wins = paper.comparison(models, points)
    blocks.append(("p", "Published points from Fedorov et al., \"SpArSe: Sparse Architecture Search for CNNs "
                        "on Resource-Constrained Microcontrollers\", NeurIPS 2019 (test accuracy; WM and MS "
                        "as the paper computes them, 1 KB read as 1,000 B). Ours: int8 test accuracy of the "
                        "exported model (host TFLite Micro), MS and WM read from its .tflite. The paper does "
                        "not publish its binary class grouping; ours is stated in "
                        "reference/sparse_paper_points.tsv."))
    header = ("published point", "acc %", "WM B", "MS B", "our Pareto models that dominate it")
    table = [(p.paper_dataset, f"{100 * p.accuracy:.2f}", f"{p.wm_bytes:,.0f}", f"{p.ms_bytes:,.0f}",
              ", ".join(f"trial {t}" for t, won in wins.items() if i in won) or "none")
             for i, p in enumerate(points)]
    blocks.append(("table", header, table))
    ours = [(m["trial"], _percent(m["test_accuracy"]) or "not exported", f"{m['wm_bytes']:,}", f"{m['ms_bytes']:,}",
             "dominates " + " and ".join(f"{100 * points[i].accuracy:.2f} % / {points[i].ms_bytes:,.0f} B"
                                         for i in wins[m["trial"]]) if wins[m["trial"]] else "")
            for m in models]
    blocks.append(("table", ("our trial", "test acc %", "WM B", "MS B", "against the paper"), ours))
    if any(m["test_accuracy"] is not None for m in models):
        _plot_paper(run_dir / "paper.png", models, points, wins, run)
        blocks.append(("img", "paper.png", "our Pareto models beside the SpArSe paper's points"))
    return blocks


def _plot_paper(path: Path, models: list[dict[str, Any]], points: list[paper.PaperPoint],
                wins: dict[str, list[int]], run: dict[str, Any]) -> None:
    exported = [m for m in models if m["test_accuracy"] is not None]
    fig, axes = two_panel_figure()
    for ax, key, attr, label in ((axes[0], "ms_bytes", "ms_bytes", "model size MS (bytes)"),
                                 (axes[1], "wm_bytes", "wm_bytes", "working memory WM (bytes)")):
        dominant = [m for m in exported if wins[m["trial"]]]
        rest = [m for m in exported if not wins[m["trial"]]]
        ax.scatter([m[key] for m in rest], [100 * m["test_accuracy"] for m in rest], c="tab:red", s=30,
                   label="ours (Pareto, int8 test)")
        if dominant:
            ax.scatter([m[key] for m in dominant], [100 * m["test_accuracy"] for m in dominant], c="tab:green",
                       s=60, marker="D", label="ours, dominating a published point", zorder=3)
        ax.scatter([getattr(p, attr) for p in points], [100 * p.accuracy for p in points], c="black", s=90,
                   marker="*", label="SpArSe (NeurIPS 2019)", zorder=4)
        finish_axis(ax, label, "test accuracy (%)")
    save_figure(fig, path, f"{run['dataset']}: our Pareto models and the paper's {points[0].paper_dataset} points",
                dpi=100)


def report_blocks(run_dir: Path) -> list[Block]:
    """The whole report, as blocks both renderers share."""
    run, rows = load_run(run_dir)
    table = report_rows(run_dir)
    blocks: list[Block] = [
        ("h1", f"{run['dataset']} on {run['board']}: search, export and device report"),
        ("p", f"Run {run_dir}: optimizer {run['optimizer']}, seed {run['seed']}, {run['epochs']} epochs per "
              f"trial, {len(rows)} trials ({status_counts(rows)}); budget RAM {run['max_ram']:,} B, flash "
              f"{run['max_flash']:,} B; accuracy floor {100 * run_floor(run):.2f} %.")]
    if (run_dir / "pareto.png").is_file():
        blocks.append(("img", "pareto.png", "every trial and the Pareto front, accuracy against MS and WM"))
    blocks.append(("h2", "Pareto models: the search's figures, then each device measurement"))
    if table:
        blocks.append(("table", _COLUMNS, [tuple(str(r[c]) for c in _COLUMNS) for r in table]))
    else:
        blocks.append(("p", "No Pareto trial: the run has no feasible trained model."))
    if any(r["test acc %"] == "" for r in table):
        blocks.append(("p", f"Empty test accuracy: run make export RUN={run_dir}."))
    not_run = [r["trial"] for r in table if r["board"] == "not run"]
    if not_run:
        model = run_dir / "models" / not_run[0] / "model_int8.tflite"
        blocks.append(("p", f"Not run on a device: make bench BOARD={emulated_twin(run['board'])} MODEL={model} "
                            f"(trials {', '.join(not_run)}), or make bench-engines RUN={run_dir}."))
    return blocks + _paper_blocks(run_dir, run, rows)


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            _, header, rows = block
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
          "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
          "td:first-child,th:first-child{text-align:left}img{max-width:100%}")


def to_html(blocks: list[Block], folder: Path) -> str:
    """The report as one HTML page; images from ``folder`` inlined as data: URLs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(blocks[0][1])}</title><style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "table":
            _, header, rows = block
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        elif kind == "img":
            data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
            parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}"></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dir: Path) -> tuple[Path, Path]:
    """Writes run_dir/report.md and run_dir/report.html; returns their paths."""
    blocks = report_blocks(run_dir)
    md, page = run_dir / "report.md", run_dir / "report.html"
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, run_dir))
    return md, page


def format_report(run_dir: Path) -> str:
    """The report as markdown (what report.md holds)."""
    return to_markdown(report_blocks(run_dir))
