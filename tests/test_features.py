"""Backbone features as files (issue 33): the Beam writer, the format, streaming, memory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import tensorflow as tf

from pipeline_components.core import beam as core_beam
from pipeline_components.core import examples, fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.features import extractor, files, stream, writer
from pipeline_components.features.config import FeaturesConfig, FeatureSpec
from pipeline_components.tools import sample_data
from pipeline_components.trainer.config import TrainerConfig

SPEC = FeatureSpec.of("mobilenet_v2", "none", (32, 32))
CLASSES = ("circles", "squares", "stripes 🦓")


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    """3 classes (one named with an emoji), 6/3/1 images each at 32x32, in 2 shards."""
    root = tmp_path_factory.mktemp("features-data")
    sample_data.generate(str(root / "data"), ("circles", "squares", "stripes"), (6, 3, 1), (32, 32))
    for split in os.listdir(root / "data"):
        os.rename(root / "data" / split / "stripes", root / "data" / split / CLASSES[2])
    run_example_gen(str(root / "data"), str(root / "examples"), num_shards=2)
    return str(root / "examples")


def raw_split(examples_dir: str, split: str) -> tuple[list[bytes], list[int], list[str]]:
    """(encoded images, labels, keys) of a split in shard order, record order."""
    out: tuple[list, list, list] = ([], [], [])
    for path in examples.split_files(examples_dir, split):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            parsed = examples.parse(serialized)
            out[0].append(parsed[examples.ENCODED].numpy())
            out[1].append(int(parsed[examples.LABEL].numpy()))
            out[2].append(parsed[examples.FILENAME].numpy().decode("utf-8"))
    return out


@pytest.fixture(scope="module")
def written(examples_dir, tmp_path_factory):
    """The Beam job's output, files of at most 4 records (so a shard spans several files)."""
    out = str(tmp_path_factory.mktemp("features") / "features")
    config = FeaturesConfig()
    config.file_mb = 4 * files.record_bytes((1, 1, 1280), "float16") / 2**20  # type: ignore
    return writer.write_features(examples_dir, out, SPEC, config)


def test_the_beam_job_writes_every_records_features_label_and_key_in_record_order(
    examples_dir, written
):
    manifest = files.read_manifest(written.path)
    assert manifest.shape == (1, 1, 1280) and manifest.dtype == "float16"
    assert manifest.labels == list(CLASSES)
    assert manifest.to_json()["counts"] == {"train": 18, "validation": 9}
    assert len(manifest.split_files("train")) > 2  # 2 example shards, 4 records a file
    extract = extractor.Extractor(SPEC, manifest.backbone_weights())
    for split in ("train", "validation"):
        encoded, labels, keys = raw_split(examples_dir, split)
        features, read_labels, read_keys = files.read_split(manifest, split)
        assert read_keys == keys and "stripes 🦓" in "".join(read_keys)  # byte-exact
        assert list(read_labels) == labels
        expected = extract.array(encoded).astype(np.float16)
        np.testing.assert_allclose(
            features.astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3
        )
    # the key material: what the features depend on, nothing of the head
    key = manifest.key
    assert key["backbone"] == "mobilenet_v2" and key["weights"] == "none"
    assert key["image_size"] == [32, 32] and key["dtype"] == "float16"
    assert key["examples"] == examples.read_stats(examples_dir)["fingerprint"]
    assert key["code"] == files.writer_code() and key["labels"] == list(CLASSES)
    assert key["preprocessing"]["preprocess_input"].endswith("mobilenet_v2.preprocess_input")
    assert manifest.fingerprint == files.fingerprint(key, manifest.splits)
    # nothing but the artifact next to it (atomic_dir's temporary sibling is gone)
    assert os.listdir(os.path.dirname(written.path)) == ["features"]


def test_float32_features_are_the_extractors_exactly(examples_dir, tmp_path):
    manifest = writer.write_features(
        examples_dir,
        str(tmp_path / "f32"),
        SPEC,
        FeaturesConfig(dtype="float32"),
        splits=("validation",),
    )
    assert manifest.dtype == "float32" and manifest.key["dtype"] == "float32"
    encoded, _, _ = raw_split(examples_dir, "validation")
    features, _, _ = files.read_split(manifest, "validation")
    expected = extractor.Extractor(
        dataclasses.replace(SPEC, dtype="float32"), manifest.backbone_weights()
    )
    np.testing.assert_allclose(features, expected.array(encoded), rtol=1e-5, atol=1e-5)


def test_the_backbone_pass_reports_its_progress_while_it_runs(examples_dir, tmp_path, caplog):
    """Its Beam job's progress line counts the images the backbone has passed (issue 28), named
    after the component running it."""
    import logging
    import re

    caplog.set_level(logging.INFO, logger="pipeline_components.core.beam")
    setup = core_beam.BeamSetup(core_beam.DEFAULT_ARGS, progress_seconds=0.02)
    out = str(tmp_path / "f")
    writer.write_features(
        examples_dir, out, SPEC, splits=("validation",), beam_setup=setup, job="Trainer"
    )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Trainer: ")]
    done = [
        int(m.group(1))
        for m in map(re.compile(r"backbone pass: (\d+)/9 images").search, lines)
        if m
    ]
    assert len(done) == len(lines) > 0, lines
    assert done == sorted(done) and 0 < max(done) <= 9, lines


def test_the_writer_writes_to_an_object_store(examples_dir, written):
    """ram:// (TensorFlow's in-memory file system): the job writes there, the stream reads it."""
    out = f"ram://features-{uuid.uuid4().hex[:8]}/1"
    manifest = writer.write_features(examples_dir, out, SPEC, splits=("validation",))
    assert fsutil.exists(fsutil.join(out, "manifest.json"))
    got = files.read_split(files.read_manifest(out), "validation")
    want = files.read_split(written, "validation")
    assert got[2] == want[2] and list(got[1]) == list(want[1])
    batches = list(stream.feature_dataset(manifest, "validation", batch_size=4))
    assert sum(int(x.shape[0]) for x, _ in batches) == 9


def test_an_image_the_backbone_cannot_read_fails_the_job_naming_it_and_leaves_nothing(
    examples_dir, tmp_path
):
    bad = tmp_path / "bad-examples"
    bad.mkdir()
    for name in ("labels.txt", "stats.json"):
        with open(os.path.join(examples_dir, name), "rb") as f:
            (bad / name).write_bytes(f.read())
    for split in ("train", "validation"):
        os.makedirs(bad / split)
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        path = str(bad / split / "examples-00000-of-00001.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options) as f:
            example = examples.make_example(
                encoded=b"not an image",
                fmt="jpg",
                height=32,
                width=32,
                channels=3,
                label=0,
                text="circles",
                filename=f"{split}/circles/broken 🦓.jpg",
                sha256="0" * 64,
            )
            f.write(example.SerializeToString())
    out = tmp_path / "out" / "features"
    with pytest.raises(PipelineError, match="cannot read train image train/circles/broken 🦓.jpg"):
        writer.write_features(str(bad), str(out), SPEC)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("transpose", [True, False])
def test_the_features_see_each_image_turned_as_the_trainer_and_the_model_do(tmp_path, transpose):
    """The writer decodes with the examples' EXIF rule (`example_gen.exif_transpose`), as the
    Trainer's input pipeline and the exported model do: off, a phone photo's features are of
    its stored pixels, not of the photo turned upright (a head trained on those would not fit
    the model it is exported in)."""
    from test_exif import _pixels, pillow_jpeg

    from pipeline_components.trainer import inputs

    data = tmp_path / "data"
    for i, split in enumerate(("train", "validation", "test")):
        for j, cls in enumerate(("plain", "turned")):
            (data / split / cls).mkdir(parents=True)
            distinct = _pixels() // 2 + 10 * (2 * i + j)  # no image in two splits
            (data / split / cls / "p.png").write_bytes(tf.io.encode_png(distinct).numpy())
    for value in (3, 6, 8):  # 180 degrees, and two that swap the sides
        (data / "train" / "turned" / f"o{value}.jpg").write_bytes(pillow_jpeg(value))
    ex = str(tmp_path / "examples")
    run_example_gen(str(data), ex, num_shards=1, exif_transpose=transpose)
    spec = FeatureSpec.of("vgg19", "none", (32, 32), "float32")
    manifest = writer.write_features(ex, str(tmp_path / "f"), spec, FeaturesConfig("float32"))
    assert manifest.key["preprocessing"]["exif_transpose"] is transpose
    got, _, keys = files.read_split(manifest, "train")
    backbone = extractor.build_extractor(spec, manifest.backbone_weights())
    pixels = inputs.make_dataset(
        ex, "train", image_size=(32, 32), batch_size=8, num_classes=2, exif_transpose=transpose
    ).map(lambda x, y: x)
    expected = backbone.predict(pixels, verbose=0)  # the Trainer's pixels, record order
    assert len(keys) == 5 and np.abs(expected).max() > 0.01
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_key_changes_with_what_the_features_depend_on_and_not_with_the_head(
    examples_dir, tmp_path
):
    base = TrainerConfig(backbone="mobilenet_v2", weights="none", image_size=[32, 32])
    key = files.key_material(FeatureSpec.from_trainer(base), examples_dir, 128)
    head_only = dataclasses.replace(
        base, learning_rate=0.5, dropout=0.3, units=64, epochs=3, optimizer="sgd", seed=7
    )
    assert files.key_material(FeatureSpec.from_trainer(head_only), examples_dir, 128) == key
    for changed in (
        dataclasses.replace(base, backbone="vgg19"),
        dataclasses.replace(base, image_size=[48, 48]),
    ):
        assert files.key_material(FeatureSpec.from_trainer(changed), examples_dir, 128) != key
    assert files.key_material(FeatureSpec.from_trainer(base, "float32"), examples_dir, 128) != key
    # a weights file is identified by its bytes, not its path
    a, b, c = (tmp_path / n for n in ("a.h5", "b.h5", "c.h5"))
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights one")
    c.write_bytes(b"weights two")
    ids = [files.weights_identity(str(p)) for p in (a, b, c)]
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("sha256:")
    with pytest.raises(PipelineError, match="cannot read weights file"):
        files.weights_identity(str(tmp_path / "missing.h5"))


# ---------------------------------------------------------------- streaming


def numbered(path: str, n: int, file_mb: float = 1.0) -> files.Manifest:
    """Features whose first value is the record's number (to follow the order)."""
    x = np.zeros((n, 4), np.float32)
    x[:, 0] = np.arange(n)
    keys = [f"{i}.jpg" for i in range(n)]
    entries = {"train": (x, [i % 3 for i in range(n)], keys), "validation": (x, [0] * n, keys)}
    return files.write_arrays(path, entries, ["a", "b", "c"], "float32", {}, file_mb=file_mb)


def order(ds: tf.data.Dataset) -> list[int]:
    return [int(v) for x, _ in ds for v in x.numpy()[:, 0]]


def test_the_train_stream_reshuffles_the_whole_split_every_epoch_the_same_way_per_seed(tmp_path):
    manifest = numbered(str(tmp_path / "f"), 200)
    ds = stream.feature_dataset(manifest, "train", batch_size=16, training=True, seed=3)
    first, second = order(ds), order(ds)
    assert sorted(first) == sorted(second) == list(range(200))
    assert first != second  # a new order each epoch
    # drawn from the whole split: the first batch is not a run of neighbours
    assert max(first[:16]) - min(first[:16]) > 100
    again = stream.feature_dataset(manifest, "train", batch_size=16, training=True, seed=3)
    assert order(again) == first  # the same seed, the same order
    assert order(stream.feature_dataset(manifest, "validation", batch_size=16)) == list(range(200))


def test_the_shuffle_buffer_is_capped_by_shuffle_memory_mb(tmp_path, caplog):
    x = np.zeros((300, 2000), np.float32)  # 8 KB a record: 2.3 MiB
    keys = [str(i) for i in range(300)]
    manifest = files.write_arrays(
        str(tmp_path / "f"), {"train": (x, [0] * 300, keys)}, ["a", "b"], "float32", {}
    )
    with caplog.at_level("INFO"):
        stream.feature_dataset(manifest, "train", batch_size=8, training=True, shuffle_memory_mb=1)
    assert "capped by trainer.shuffle_memory_mb" in caplog.text
    assert "train shuffle buffer: 12" in caplog.text  # 1 MiB / (8,000 + overhead) bytes


def test_workers_stream_disjoint_parts_that_make_up_the_split(tmp_path):
    one_file = numbered(str(tmp_path / "one"), 60)  # fewer files than workers: every 2nd record
    many = numbered(str(tmp_path / "many"), 60, file_mb=100 / 2**20)  # 6 records a file
    assert len(one_file.files("train")) == 1 and len(many.files("train")) == 10
    for manifest in (one_file, many):
        parts = [
            order(stream.feature_dataset(manifest, "train", batch_size=7, shard=(2, i)))
            for i in range(2)
        ]
        assert sorted(parts[0] + parts[1]) == list(range(60)) and not set(parts[0]) & set(parts[1])


def test_streamed_and_in_memory_training_reach_the_same_accuracy(tmp_path):
    """The same head, seed and data (three noisy clusters), one run fed from the feature files,
    one from numpy arrays in memory (the removed cached_features path): the same validation
    accuracy within noise."""
    import keras

    from pipeline_components.trainer import model as model_lib

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 48))

    def split(n):
        y = rng.integers(0, 3, n)
        return (centers[y] + rng.normal(size=(n, 48)) * 2.2).reshape(n, 4, 4, 3), y

    (xt, yt), (xv, yv) = split(600), split(300)
    keys = [str(i) for i in range(900)]
    manifest = files.write_arrays(
        str(tmp_path / "f"),
        {"train": (xt, yt, keys[:600]), "validation": (xv, yv, keys[600:])},
        ["a", "b", "c"],
        "float16",
        {},
    )

    def fit(train, val):
        keras.utils.set_random_seed(1)
        head = model_lib.build_head(manifest.shape, 3, "flatten", 0.0)
        model_lib.compile_model(head, 3, "adam", 0.01)
        history = head.fit(train, validation_data=val, epochs=5, verbose=0)
        return history.history["val_accuracy"][-1]

    streamed = fit(
        stream.feature_dataset(manifest, "train", batch_size=32, training=True, seed=1),
        stream.feature_dataset(manifest, "validation", batch_size=32),
    )
    as_stored = [a.astype(np.float16).astype(np.float32) for a in (xt, xv)]
    in_memory = fit(
        tf.data.Dataset.from_tensor_slices((as_stored[0], yt.astype(np.int32)))
        .shuffle(600, seed=1)
        .batch(32),
        tf.data.Dataset.from_tensor_slices((as_stored[1], yv.astype(np.int32))).batch(32),
    )
    assert 0.6 < in_memory < 0.98  # a task with noise, so the comparison means something
    assert abs(streamed - in_memory) <= 0.04, (streamed, in_memory)


# ---------------------------------------------------------------- memory

SHAPE = (7, 7, 384)  # 18,816 floats: 20,000 images are 1.5 GB of float32 features

TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import keras
    from pipeline_components.features import files, stream
    from pipeline_components.trainer import model as model_lib

    manifest = files.read_manifest(sys.argv[1])
    head = model_lib.build_head(manifest.shape, 2, "flatten", 0.0)
    model_lib.compile_model(head, 2, "rmsprop", 1e-4)
    train = stream.feature_dataset(
        manifest, "train", batch_size=128, training=True, seed=1, shuffle_memory_mb=64
    )
    val = stream.feature_dataset(manifest, "validation", batch_size=128)
    history = head.fit(train, validation_data=val, epochs=1, verbose=0)
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    print(json.dumps({"peak_mb": hwm / 1024, "images": manifest.count("train"),
                      "loss": history.history["loss"][-1]}))
    """
)


def generate(path: str, n: int) -> files.Manifest:
    """`n` train records of SHAPE (float16 files, one file of records in memory at a time)."""
    rng = np.random.default_rng(n)
    size = int(np.prod(SHAPE))

    def rows(count: int):
        for start in range(0, count, 500):
            block = rng.standard_normal((min(500, count - start), size), dtype=np.float32)
            for i, row in enumerate(block.astype(np.float16)):
                yield row, (start + i) % 2, f"{start + i}.jpg"

    splits = {
        "train": files.write_split(path, "train", rows(n), SHAPE, "float16", 128),
        "validation": files.write_split(path, "validation", rows(500), SHAPE, "float16", 128),
    }
    manifest = files.Manifest(path, SHAPE, "float16", ["a", "b"], splits, {}, "generated")
    files.write_manifest(manifest)
    return manifest


def peak_rss_mb(features: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, features],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_on_20000_images_features_keeps_memory_independent_of_the_count(tmp_path):
    """The head trains on features of 5,000 and of 20,000 images (1.5 GB as float32; 0.75 GB
    of float16 files), streamed with a 64 MiB shuffle buffer: the training process's peak RSS
    is the same within 150 MB, and far below the 1.5 GB one split in memory took."""
    small, large = (generate(str(tmp_path / f"f{n}"), n) for n in (5_000, 20_000))
    assert large.count("train") * int(np.prod(SHAPE)) * 4 >= 1.5e9
    at_5k, at_20k = peak_rss_mb(small.path), peak_rss_mb(large.path)
    print(f"peak RSS: 5,000 images {at_5k['peak_mb']:.0f} MB, 20,000 {at_20k['peak_mb']:.0f} MB")
    assert at_20k["images"] == 20_000 and np.isfinite(at_20k["loss"])
    assert at_20k["peak_mb"] <= at_5k["peak_mb"] + 150
    assert at_20k["peak_mb"] < 1500
