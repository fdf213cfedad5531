"""Shared fixtures: the offline data dir and a small, fixed set of hyperparameters."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (selects tf_keras before TensorFlow loads)


def _data_dir() -> Path:
    """$SPARSE_DATA_DIR, else the offline copies in ../shared/datasets, holding usps.h5 (fetched
    into it on a machine with network); stops the run in one line when it cannot be had."""
    from pipeline.datasets import OFFLINE_COPIES, load_dataset
    from pipeline.errors import UserError

    path = Path(os.environ.get("SPARSE_DATA_DIR") or OFFLINE_COPIES)
    if not (path / "usps.h5").is_file():
        try:  # a machine with network (CI's cache miss): the loader fetches the canonical files into it
            load_dataset("usps", path)
        except (UserError, OSError) as exc:  # every test that trains needs it: stop once, in one line
            pytest.exit(f"the tests that train need usps.h5: {exc}", returncode=2)
    return path


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Checks the data before the first test when any selected test needs it, so that a machine
    without the data stops at once rather than after the tests that need none."""
    if any("data_dir" in getattr(item, "fixturenames", ()) for item in items):
        _data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data dir of the tests that train (see _data_dir)."""
    return _data_dir()


@pytest.fixture()
def base_values() -> dict:
    """The space's defaults: one block with one 3x3 Conv2D of 16 filters, no FC, no branch."""
    from pipeline.search.space import new_space

    return dict(new_space().values)
