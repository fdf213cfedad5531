"""SpArSe-style search for microcontroller CNNs: search, export, device, report.

Importing the package selects legacy Keras (tf_keras), which TF Model
Optimization requires, and silences TensorFlow's start-up logging; both must
happen before TensorFlow is first imported.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: board facts, tflm_project, reference data


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with fd 2 closed: its C++ start-up lines (CUDA probing, absl) are written
    before any logging setting applies. The CLI and the scripts call this once, so that users see
    only our output."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
