from __future__ import annotations

import pytest

from pipeline.search.pareto import dominates, hypervolume, is_feasible, pareto_mask

OBJ = ("error", "size")


def _p(error: float, size: float) -> dict:
    return {"error": error, "size": size}


def test_pareto_front_excludes_dominated():
    points = [_p(0.1, 10), _p(0.2, 5), _p(0.2, 12), _p(0.05, 30), _p(0.3, 30)]
    assert pareto_mask(points, OBJ) == [True, True, False, True, False]


def test_pareto_front_keeps_exact_ties_and_drops_weak_ties():
    points = [_p(0.1, 10), _p(0.1, 10), _p(0.1, 11)]
    # equal points do not dominate each other; (0.1, 11) is dominated by (0.1, 10)
    assert pareto_mask(points, OBJ) == [True, True, False]


def test_pareto_front_ignores_infeasible_points():
    points = [_p(0.0, 1), _p(0.1, 10), _p(0.2, 20)]
    assert pareto_mask(points, OBJ, feasible=[False, True, True]) == [False, True, False]


def test_dominates_needs_strict_improvement():
    assert dominates(_p(0.1, 5), _p(0.1, 6), OBJ)
    assert not dominates(_p(0.1, 5), _p(0.1, 5), OBJ)


def test_constraints_at_or_below_zero_are_feasible():
    assert is_feasible([0, -3])
    assert not is_feasible([0, 1e-9])


def test_hypervolume_matches_hand_computed_staircase():
    # reference (1, 1): rectangles 0.5*0.8 + 0.3*(0.8-... ) computed by hand
    points = [_p(0.2, 0.6), _p(0.5, 0.3)]
    # union of [0.2,1]x[0.6,1] (0.32) and [0.5,1]x[0.3,1] (0.35) minus overlap [0.5,1]x[0.6,1] (0.2)
    assert hypervolume(points, OBJ, {"error": 1, "size": 1}) == pytest.approx(0.47)


def test_hypervolume_three_objectives_and_points_outside_reference():
    obj = ("a", "b", "c")
    ref = {"a": 1, "b": 1, "c": 1}
    one = {"a": 0.5, "b": 0.5, "c": 0.5}
    outside = {"a": 0.1, "b": 1.5, "c": 0.1}
    assert hypervolume([one, outside], obj, ref) == pytest.approx(0.125)
    two = {"a": 0.0, "b": 0.5, "c": 0.75}  # adds [0,0.5]x[0.5,1]x[0.75,1] = 0.0625
    assert hypervolume([one, two], obj, ref) == pytest.approx(0.125 + 0.0625)
