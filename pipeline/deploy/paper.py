"""The SpArSe paper's published points, and which of our models dominate which of them.

The points are in reference/sparse_paper_points.tsv, which cites the paper and states the binary
grouping we use. A model of ours dominates a published point when its test accuracy is at least
the point's and its MS and WM are at most the point's, at least one of the three strictly better.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline import REPO_ROOT
from pipeline.errors import UserError

POINTS_PATH = REPO_ROOT / "reference" / "sparse_paper_points.tsv"
KB = 1000  # the stricter reading of the paper's KB for claims that we beat it


@dataclasses.dataclass(frozen=True)
class PaperPoint:
    dataset: str        # our dataset name
    paper_dataset: str  # the paper's name for it
    accuracy: float     # test accuracy, fraction
    wm_bytes: float
    ms_bytes: float

    @property
    def label(self) -> str:
        return (f"SpArSe {self.paper_dataset}: {100 * self.accuracy:.2f} %, WM {self.wm_bytes / KB:g} KB, "
                f"MS {self.ms_bytes / KB:g} KB")


def load_points(path: Path = POINTS_PATH) -> list[PaperPoint]:
    """Every published point of the data file."""
    points = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            dataset, paper_dataset, accuracy, wm_kb, ms_kb = line.split("\t")
            points.append(PaperPoint(dataset, paper_dataset, float(accuracy) / 100, float(wm_kb) * KB,
                                     float(ms_kb) * KB))
        except ValueError:
            raise UserError(f"{path}:{number}: expected dataset, paper_dataset, accuracy_pct, wm_kb, ms_kb "
                            f"separated by tabs, found {line!r}") from None
    return points


def points_for(dataset: str, path: Path = POINTS_PATH) -> list[PaperPoint]:
    """The published points for one of our datasets (none for datasets the paper does not report)."""
    return [p for p in load_points(path) if p.dataset == dataset]


def dominates(accuracy: float, ms_bytes: float, wm_bytes: float, point: PaperPoint) -> bool:
    """True when a model with these figures is at least as good in all three and better in one."""
    at_least = accuracy >= point.accuracy and ms_bytes <= point.ms_bytes and wm_bytes <= point.wm_bytes
    better = accuracy > point.accuracy or ms_bytes < point.ms_bytes or wm_bytes < point.wm_bytes
    return at_least and better


def comparison(models: list[dict[str, Any]], points: list[PaperPoint]) -> dict[str, list[int]]:
    """For each model (keys trial, test_accuracy, ms_bytes, wm_bytes), the indices of the points it
    dominates; models without a test accuracy dominate nothing."""
    return {m["trial"]: [i for i, p in enumerate(points)
                         if m["test_accuracy"] is not None
                         and dominates(m["test_accuracy"], m["ms_bytes"], m["wm_bytes"], p)]
            for m in models}
