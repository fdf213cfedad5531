"""Early stopping across trials: successive halving with the sizes known before training.

Asynchronous successive halving (ASHA, Li et al. 2020) checks a trial at
"rungs", epochs ``E // 3``, ``E // 9``, ... of its E-epoch budget, and lets it
go on only when its validation accuracy there is among the best third of the
trials that reached the same rung before it. A multi-objective search cannot
use that rule as it is: a 50-byte model is never among the most accurate, yet
may be the best at its size. So a trial is compared only with its *peers*,
the ended trials at the same rung that are no larger in both MS and WM (exact
before training): when at least ``MIN_PEERS`` of them exist and the trial is
not in the best third of them and itself, a smaller model already did better
at the same epoch, and the trial is stopped as hopeless.

A stopped trial is recorded with its accuracy at the rung and the epoch it
stopped at; it never enters the front, its error still teaches the
surrogate, and the epochs it did not use pay for extra trials
(:func:`trial_allowance`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REDUCTION = 3  # successive halving's eta: the best 1/3 of a rung go on
MIN_PEERS = 3  # fewer smaller trials at a rung than this: too little to judge


class Stopped(Exception):
    """Raised inside training when a trial is stopped at a rung."""

    def __init__(self, epoch: int, accuracy: float):
        super().__init__(f"stopped early at epoch {epoch}: validation accuracy {accuracy:.4f}")
        self.epoch = epoch
        self.accuracy = accuracy


@dataclass(frozen=True)
class RungRecord:
    """What an ended trial showed at one rung: its float validation accuracy and its sizes."""

    accuracy: float
    model_size_bytes: float
    working_memory_bytes: float


def rungs(epochs: int, reduction: int = REDUCTION) -> list[int]:
    """The epochs at which a trial of ``epochs`` epochs is checked, ascending (none for E < 3)."""
    out, epoch = set(), epochs
    while epoch // reduction >= 1:
        epoch //= reduction
        out.add(epoch)
    return sorted(out)


def rung_metric(epoch: int) -> str:
    """The trial metric that holds a trial's validation accuracy after ``epoch`` epochs."""
    return f"rung_{epoch}_accuracy"


def hopeless(accuracy: float, model_size_bytes: float, working_memory_bytes: float,
             others: Iterable[RungRecord], reduction: int = REDUCTION, min_peers: int = MIN_PEERS) -> bool:
    """True when this trial is not in the best 1/reduction of its no-larger peers at the same rung."""
    peers = [o.accuracy for o in others
             if o.model_size_bytes <= model_size_bytes and o.working_memory_bytes <= working_memory_bytes]
    if len(peers) < min_peers:
        return False
    ranked = sorted(peers + [accuracy], reverse=True)
    threshold = ranked[max(1, len(ranked) // reduction) - 1]
    return accuracy < threshold


def rung_records(trials: Iterable[Mapping[str, float]], epoch: int) -> list[RungRecord]:
    """The records at ``epoch`` of ended trials, each given as its metrics by name."""
    name = rung_metric(epoch)
    return [RungRecord(m[name], m["model_size_bytes"], m["working_memory_bytes"])
            for m in trials if m.get(name) is not None and m.get("model_size_bytes") is not None]


def trial_allowance(trials: int, epochs: int, stopped_at: Iterable[int]) -> int:
    """The trial budget once stopped trials have handed back the epochs they did not use."""
    saved = sum(epochs - e for e in stopped_at)
    return trials + saved // epochs
