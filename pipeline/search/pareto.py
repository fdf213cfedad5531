"""Pareto front and hypervolume over named, minimised objectives.

A small pure module in the spirit of Optuna's: points are mappings from
objective name to value, every objective is minimised, and constraint values
``<= 0`` mean feasible. Nothing here knows about models or trials.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

Point = Mapping[str, float]


def dominates(a: Point, b: Point, objectives: Sequence[str]) -> bool:
    """True when ``a`` is no worse than ``b`` everywhere and better somewhere."""
    no_worse = all(a[k] <= b[k] for k in objectives)
    better = any(a[k] < b[k] for k in objectives)
    return no_worse and better


def is_feasible(constraints: Sequence[float]) -> bool:
    """True when every constraint value is <= 0 (Optuna's convention)."""
    return all(c <= 0 for c in constraints)


def pareto_mask(points: Sequence[Point], objectives: Sequence[str],
                feasible: Sequence[bool] | None = None) -> list[bool]:
    """Marks the non-dominated points among the feasible ones.

    Points equal in every objective do not dominate each other, so ties on the
    front are all kept.

    Args:
        points: one mapping per candidate, objective name to value (minimised).
        objectives: the names to compare on.
        feasible: per point, whether it may be on the front; all by default.

    Returns:
        One bool per point: True when it is feasible and no feasible point
        dominates it.
    """
    if feasible is None:
        feasible = [True] * len(points)
    candidates = [i for i, ok in enumerate(feasible) if ok]
    mask = [False] * len(points)
    for i in candidates:
        mask[i] = not any(dominates(points[j], points[i], objectives)
                          for j in candidates if j != i)
    return mask


def hypervolume(points: Sequence[Point], objectives: Sequence[str],
                reference: Point) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference``.

    Points that do not strictly dominate the reference point add nothing. The
    computation slices along the first objective and recurses, which is exact
    and fast enough for the few hundred points of a search.
    """
    inside = [tuple(float(p[k]) for k in objectives) for p in points
              if all(p[k] < reference[k] for k in objectives)]
    ref = tuple(float(reference[k]) for k in objectives)
    return _hv(inside, ref)


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    ordered = sorted(set(points))
    volume = 0.0
    for i, p in enumerate(ordered):
        upper = ordered[i + 1][0] if i + 1 < len(ordered) else ref[0]
        width = upper - p[0]
        if width <= 0:
            continue
        slice_points = [q[1:] for q in ordered[: i + 1]]
        volume += width * _hv(slice_points, ref[1:])
    return volume
