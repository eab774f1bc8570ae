"""Shared fixtures: tiny real datasets on disk (32x32 images, tens of files)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import pytest  # noqa: E402

from pipeline_components.tools import sample_data  # noqa: E402


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset(classes=..., per_split=(train, val, test), size=(32, 32), fmt='jpg') -> root."""
    counter = {"n": 0}

    def make(
        classes=("circles", "squares"), per_split=(12, 4, 4), size=(32, 32), fmt="jpg", seed=0
    ):
        counter["n"] += 1
        root = tmp_path / f"data{counter['n']}"
        sample_data.generate(str(root), classes, per_split, size, fmt, seed)
        return root

    return make
