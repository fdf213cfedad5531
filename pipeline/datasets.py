"""Dataset loaders: local files first, then a checked download into the data dir.

Every loader returns a :class:`Dataset` of float32 images in [0, 1] shaped
(N, H, W, C). A validation split is carved from the training set with a fixed
seed; the test split is only read by ``export`` for the final report.

Binary variants (the SpArSe/Bonsai papers never published their grouping):
``usps2`` and ``mnist2`` are digit < 5 (class 0) vs digit >= 5 (class 1);
``cifar10-2`` is vehicles (airplane, automobile, ship, truck: class 0) vs
animals (class 1), converted to 20x20 grayscale as in those papers.
"""
from __future__ import annotations

import bz2
import dataclasses
import hashlib
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np

from pipeline import REPO_ROOT
from pipeline.errors import UserError

REPO_DATA_DIR = REPO_ROOT / "datasets"
# Offline copies beside a checkout (CI's ../shared/datasets): read when no data dir is chosen and the
# repository's datasets/ lacks the file; never written to.
OFFLINE_COPIES = REPO_ROOT.parent / "shared" / "datasets"
_OFFLINE_FILES = {"usps": "usps.h5", "usps2": "usps.h5", "mnist": "mnist.npz", "mnist2": "mnist.npz"}
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0
DOWNLOAD_TIMEOUT_S = 15

USPS_H5_SHA256 = "734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36"
# LIBSVM does not publish checksums; we check what the files decode to instead:
# the sha256 of the label sequence (int64 little-endian), which equals usps.h5's.
USPS_LIBSVM = {
    "train": ("usps.bz2", "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.bz2", 7291),
    "test": ("usps.t.bz2", "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/usps.t.bz2", 2007),
}
USPS_LABEL_SHA256 = {
    "train": "d2205a402e10ef9785bcb548e666f1fdc5d719287eac6d14327f77964ca173c1",
    "test": "83d5538087f38b4aa9a64e4c69e47ae24d1b4eaa601c3d41c4a32d7c2739d831",
}
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = {
    "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",  # Keras' mnist.npz
    "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64",  # same arrays, re-saved
}
DATASETS = ("digits", "usps", "usps2", "mnist", "mnist2", "cifar10", "cifar10-2", "npz:PATH")
CIFAR_VEHICLES = (0, 1, 8, 9)
MIN_NPZ_SAMPLES = {"train": 10, "test": 1}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/validation/test arrays and what the model needs to know."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.labels)


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str | None = None) -> Path:
    """The data dir of dataset ``name``.

    The flag, else $SPARSE_DATA_DIR, else the repository's datasets/ (where missing files are
    downloaded), except that a file datasets/ lacks is read from the offline copies beside the
    checkout (OFFLINE_COPIES) when they hold it.
    """
    chosen = data_dir or os.environ.get("SPARSE_DATA_DIR")
    if chosen:
        return Path(chosen).expanduser().resolve()
    fname = _OFFLINE_FILES.get(name or "")
    if fname and not (REPO_DATA_DIR / fname).is_file() and (OFFLINE_COPIES / fname).is_file():
        return OFFLINE_COPIES.resolve()
    return REPO_DATA_DIR.resolve()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads a dataset by name (see DATASETS) and splits off validation data."""
    root = resolve_data_dir(data_dir, name)
    if name.startswith("npz:"):
        x_tr, y_tr, x_te, y_te = _load_npz(Path(name[4:]).expanduser())
        labels = tuple(str(c) for c in range(int(max(y_tr.max(), y_te.max())) + 1))
    elif name in ("usps", "usps2"):
        x_tr, y_tr, x_te, y_te = _load_usps(root)
        labels = tuple(str(d) for d in range(10))
    elif name in ("mnist", "mnist2"):
        x_tr, y_tr, x_te, y_te = _load_mnist(root)
        labels = tuple(str(d) for d in range(10))
    elif name in ("cifar10", "cifar10-2"):
        x_tr, y_tr, x_te, y_te = _load_cifar10(root, grayscale_20=name == "cifar10-2")
        labels = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    elif name == "digits":
        x_tr, y_tr, x_te, y_te = _load_digits()
        labels = tuple(str(d) for d in range(10))
    else:
        raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    if name in ("usps2", "mnist2"):
        y_tr, y_te, labels = (y_tr >= 5).astype(np.int64), (y_te >= 5).astype(np.int64), ("0-4", "5-9")
    elif name == "cifar10-2":
        y_tr, y_te = (~np.isin(y_tr, CIFAR_VEHICLES)).astype(np.int64), (~np.isin(y_te, CIFAR_VEHICLES)).astype(np.int64)
        labels = ("vehicle", "animal")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x_tr))
    n_val = int(round(len(x_tr) * VALIDATION_FRACTION))
    val, train = order[:n_val], order[n_val:]
    return Dataset(name, x_tr[train], y_tr[train], x_tr[val], y_tr[val], x_te, y_te, labels)


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    return x[..., None] if x.ndim == 3 else x


def _load_npz(path: Path) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise UserError(f"npz dataset {str(path)!r} does not exist: give npz:PATH to a file "
                        "with x_train, y_train, x_test, y_test")
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy raises many types for a broken file
        raise UserError(f"npz dataset {str(path)!r} cannot be read ({exc}): expected a NumPy .npz "
                        "with x_train, y_train, x_test, y_test") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise UserError(f"npz dataset {str(path)!r} lacks {', '.join(missing)}: expected keys "
                        f"x_train, y_train, x_test, y_test, found {', '.join(sorted(arrays)) or 'none'}")
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"npz dataset {str(path)!r}: x_{split} {x.shape} and y_{split} {y.shape} "
                            f"({y.dtype}) do not fit: expected images (N,H,W[,C]) and N integer labels")
        least = MIN_NPZ_SAMPLES[split]
        if len(x) < least:
            raise UserError(f"npz dataset {str(path)!r}: x_{split} has {len(x)} images, expected at least "
                            f"{least} (the {split} split{' also gives the validation split' * (split == 'train')})")
        if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
            raise UserError(f"npz dataset {str(path)!r}: x_{split} {x.shape} looks channels-first (N,C,H,W); "
                            "expected channels-last (N,H,W,C) or (N,H,W): convert with np.moveaxis(x, 1, -1)")
        if x.ndim == 4 and x.shape[3] > 4:
            raise UserError(f"npz dataset {str(path)!r}: x_{split} {x.shape} has {x.shape[3]} channels; "
                            "expected images (N,H,W) or (N,H,W,C) with C of 1 to 4")
        if not np.all(np.isfinite(x)):
            raise UserError(f"npz dataset {str(path)!r}: x_{split} holds NaN or infinite pixels; "
                            "expected finite values (uint8 0..255 or floats in [0, 1])")
        out += [_images(x), y.astype(np.int64)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise UserError(f"npz dataset {str(path)!r}: train images {out[0].shape[1:]} and test images "
                        f"{out[2].shape[1:]} differ in shape")
    _check_labels(path, out[1], out[3])
    return tuple(out)


def _check_labels(path: Path, y_train: np.ndarray, y_test: np.ndarray) -> None:
    """Labels must be the class numbers 0..K-1, every class in the training split."""
    present = np.unique(y_train)
    classes = len(present)
    if classes < 2 or present[0] != 0 or present[-1] != classes - 1:
        shown = ", ".join(str(v) for v in present[:8]) + (", ..." if classes > 8 else "")
        raise UserError(f"npz dataset {str(path)!r}: y_train holds the labels {shown} ({classes} distinct); "
                        "expected the class numbers 0..K-1 with K >= 2, each present: renumber them with "
                        "np.unique(y, return_inverse=True)[1]")
    stray = np.setdiff1d(np.unique(y_test), present)
    if len(stray):
        raise UserError(f"npz dataset {str(path)!r}: y_test holds labels {', '.join(map(str, stray[:8]))} "
                        f"that y_train lacks; expected labels 0..{classes - 1}, as in the training split")


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = len(x) // 5
    return x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]


def _load_usps(root: Path) -> tuple[np.ndarray, ...]:
    h5 = root / "usps.h5"
    if h5.is_file():
        _check_sha256(h5, {USPS_H5_SHA256})
        import h5py

        with h5py.File(h5, "r") as f:
            parts = [f[f"{s}/{k}"][:] for s in ("train", "test") for k in ("data", "target")]
        return (parts[0].reshape(-1, 16, 16, 1).astype(np.float32), parts[1].astype(np.int64),
                parts[2].reshape(-1, 16, 16, 1).astype(np.float32), parts[3].astype(np.int64))
    arrays = []
    for split, (fname, url, count) in USPS_LIBSVM.items():
        path = _fetch(root, fname, url, also=f"usps.h5 (or {fname})")
        x, y = _parse_libsvm(path, 256)
        y = y - 1
        digest = hashlib.sha256(y.astype("<i8").tobytes()).hexdigest()
        if len(y) != count or digest != USPS_LABEL_SHA256[split]:
            raise UserError(f"{path} decodes to {len(y)} samples with label sha256 {digest}, expected "
                            f"{count} with {USPS_LABEL_SHA256[split]}: delete it and run again")
        arrays += [((x + 1.0) / 2.0).reshape(-1, 16, 16, 1).astype(np.float32), y]
    return tuple(arrays)


def _parse_libsvm(path: Path, features: int) -> tuple[np.ndarray, np.ndarray]:
    rows, labels = [], []
    for line in bz2.open(path, "rt"):
        parts = line.split()
        if not parts:
            continue
        row = np.zeros(features, np.float32)
        for item in parts[1:]:
            i, v = item.split(":")
            row[int(i) - 1] = float(v)
        rows.append(row)
        labels.append(int(float(parts[0])))
    return np.stack(rows), np.asarray(labels, np.int64)


def _load_mnist(root: Path) -> tuple[np.ndarray, ...]:
    path = _fetch(root, "mnist.npz", MNIST_URL, sha256=MNIST_SHA256)
    with np.load(path) as f:
        return _images(f["x_train"]), f["y_train"].astype(np.int64), _images(f["x_test"]), f["y_test"].astype(np.int64)


def _load_cifar10(root: Path, grayscale_20: bool) -> tuple[np.ndarray, ...]:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tfds_dir = root / "tfds"
    download = _online("storage.googleapis.com")
    try:
        splits = tfds.load("cifar10", split=["train", "test"], data_dir=str(tfds_dir), batch_size=-1,
                           as_supervised=True, download=download)
    except Exception as exc:
        raise UserError(f"cifar10 is not in {tfds_dir} and could not be downloaded "
                        f"({type(exc).__name__}): run once with network access, or copy a "
                        f"tensorflow-datasets cifar10 folder there") from None
    out = []
    for x, y in tfds.as_numpy(splits):
        x = x.astype(np.float32) / 255.0
        if grayscale_20:
            x = tf.image.resize(tf.image.rgb_to_grayscale(x), (20, 20)).numpy()
        out += [x, y.astype(np.int64)]
    return tuple(out)


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _fetch(root: Path, fname: str, url: str, sha256: set[str] | None = None, also: str | None = None) -> Path:
    """Returns root/fname, downloading it (with a timeout) when it is missing."""
    path = root / fname
    if not path.is_file():
        made = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)  # the first made
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
                out.write(response.read())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if made is not None and not any(f.is_file() for f in made.rglob("*")):
                shutil.rmtree(made, ignore_errors=True)  # a failed download leaves no empty folders behind
            raise UserError(f"{also or fname} not found in {root} and the download from {url} failed "
                            f"({getattr(exc, 'reason', exc)}): fetch it there by hand or set "
                            "--data-dir / SPARSE_DATA_DIR / DATA_DIR to a folder holding it") from None
        tmp.rename(path)
    if sha256:
        _check_sha256(path, sha256)
    return path


def _check_sha256(path: Path, accepted: set[str]) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest not in accepted:
        raise UserError(f"{path} has sha256 {digest}, expected {' or '.join(sorted(accepted))}: "
                        "the file is corrupt or a different version; delete it and run again")
