from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.datasets import load_dataset
from pipeline.errors import UserError


def test_usps_loads_hull_split_with_fixed_validation(data_dir):
    d = load_dataset("usps", data_dir)
    assert (len(d.x_train) + len(d.x_val), len(d.x_test)) == (7291, 2007)
    assert d.input_shape == (16, 16, 1) and d.num_classes == 10
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    again = load_dataset("usps", data_dir)
    np.testing.assert_array_equal(d.y_val, again.y_val)


def test_binary_usps_groups_digits_below_five(data_dir):
    d = load_dataset("usps2", data_dir)
    full = load_dataset("usps", data_dir)
    np.testing.assert_array_equal(d.y_train, (full.y_train >= 5).astype(int))
    assert d.labels == ("0-4", "5-9")


def test_no_data_dir_reads_offline_copies_beside_checkout_without_writing(data_dir, tmp_path, monkeypatch):
    import pipeline.datasets as datasets

    monkeypatch.delenv("SPARSE_DATA_DIR", raising=False)
    repo_dir = tmp_path / "datasets"
    repo_dir.mkdir()
    monkeypatch.setattr(datasets, "REPO_DATA_DIR", repo_dir)
    monkeypatch.setattr(datasets, "OFFLINE_COPIES", data_dir)
    before = sorted(p.name for p in data_dir.iterdir())
    d = load_dataset("usps2")  # the README's main command names no data dir
    assert len(d.x_test) == 2007 and datasets.resolve_data_dir(None, "usps2") == data_dir.resolve()
    assert sorted(p.name for p in data_dir.iterdir()) == before and not any(repo_dir.iterdir())
    assert datasets.resolve_data_dir(None, "cifar10") == repo_dir.resolve()  # no offline copy: downloads go here
    assert datasets.resolve_data_dir(tmp_path / "mine", "usps2") == (tmp_path / "mine").resolve()  # a choice wins


def test_missing_file_offline_fails_fast_naming_file_dir_and_url(tmp_path):
    started = time.monotonic()
    with pytest.raises(UserError) as err:
        load_dataset("usps", tmp_path)
    message = str(err.value)
    assert time.monotonic() - started < 20
    assert "usps.h5" in message and str(tmp_path) in message and "https://" in message


def test_failed_download_leaves_no_folder_it_made(tmp_path):
    from pipeline import datasets

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("a user's file")
    for root in (tmp_path / "new" / "deeper", kept / "sub"):
        with pytest.raises(UserError, match="download from http://127.0.0.1:9/usps.bz2 failed"):
            datasets._fetch(root, "usps.bz2", "http://127.0.0.1:9/usps.bz2")  # the discard port: refused
    assert not (tmp_path / "new").exists() and not (kept / "sub").exists()
    assert (kept / "mine.txt").read_text() == "a user's file"


def test_npz_dataset_loads_and_malformed_npz_is_rejected(tmp_path):
    good = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x_train=rng.integers(0, 255, (50, 12, 12), dtype=np.uint8),
             y_train=rng.integers(0, 3, 50), x_test=rng.integers(0, 255, (10, 12, 12), dtype=np.uint8),
             y_test=rng.integers(0, 3, 10))
    d = load_dataset(f"npz:{good}")
    assert d.input_shape == (12, 12, 1) and d.num_classes == 3 and len(d.x_test) == 10
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((5, 4, 4)), y_train=np.zeros(5, int))
    with pytest.raises(UserError, match="lacks x_test, y_test"):
        load_dataset(f"npz:{bad}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot be read"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_unknown_dataset_names_accepted_ones():
    with pytest.raises(UserError, match="unknown dataset 'usp'.*usps"):
        load_dataset("usp")
