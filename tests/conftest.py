"""Shared fixtures: the offline data dir and a small, fixed set of hyperparameters."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (selects tf_keras before TensorFlow loads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$SPARSE_DATA_DIR, else the offline copies in ../shared/datasets."""
    from pipeline.datasets import OFFLINE_COPIES, load_dataset
    from pipeline.errors import UserError

    path = Path(os.environ.get("SPARSE_DATA_DIR") or OFFLINE_COPIES)
    if not (path / "usps.h5").is_file():
        try:  # a machine with network (CI's cache miss): the loader fetches the canonical files into it
            path.mkdir(parents=True, exist_ok=True)
            load_dataset("usps", path)
        except (UserError, OSError) as exc:  # every test that trains needs it: stop once, in one line
            pytest.exit(f"no usps.h5 in {path} and no download ({exc}): set SPARSE_DATA_DIR to the offline "
                        "datasets, or make test DATA_DIR=DIR", returncode=2)
    return path


@pytest.fixture()
def base_values() -> dict:
    """The space's defaults: one block with one 3x3 Conv2D of 16 filters, no FC, no branch."""
    from pipeline.search.space import new_space

    return dict(new_space().values)
