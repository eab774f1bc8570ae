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


# ---------------------------------------------------------------- object stores (object_stores.py)


@pytest.fixture
def fresh_beam_filesystems(monkeypatch):
    """Beam's file systems as a new process has them: no pipeline options yet (a pipeline
    that ran earlier in this process leaves its options behind)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.value_provider import RuntimeValueProvider

    monkeypatch.setattr(FileSystems, "_pipeline_options", None)
    monkeypatch.setattr(RuntimeValueProvider, "runtime_options", None)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """One GCS emulator (and its proxy for TensorFlow) for the whole session."""
    from object_stores import GcsEmulator

    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs-emulator"))
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs(gcs_emulator, monkeypatch, fresh_beam_filesystems):
    """A fresh bucket on the GCS emulator (`.url` is gs://...), with this process's environment
    pointing Beam, google-cloud-storage and TensorFlow's GCS client at the emulator; pass
    `gcs.emulator.env` to a subprocess."""
    for name, value in gcs_emulator.env.items():
        monkeypatch.setenv(name, value)
    return gcs_emulator.new_bucket()


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory):
    """One S3 emulator (moto's server) for the whole session."""
    from object_stores import S3Emulator

    emulator = S3Emulator(tmp_path_factory.mktemp("s3-emulator"))
    yield emulator
    emulator.stop()


@pytest.fixture
def s3(s3_emulator, monkeypatch, fresh_beam_filesystems):
    """A fresh bucket on the S3 emulator (`.url` is s3://...), credentials in the environment;
    Beam needs `s3.emulator.beam_args` (the endpoint) as pipeline options."""
    for name, value in s3_emulator.env.items():
        monkeypatch.setenv(name, value)
    return s3_emulator.new_bucket()
