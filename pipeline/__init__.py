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
