"""Issue 12: class-sorted folders still give class-mixed batches.

The notebook's setup: two class folders whose files sort one class after the other, 1,000 train
images per class, batch 100. ExampleGen must not write the shards one class after the other, and
the Trainer's real input pipeline (default config) must draw every batch from the whole split,
in a new order every epoch. Both tests fail on the old path-ordered shards + 1,000-record buffer
(its first batch of every epoch held ~8% of the second class)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipeline_components.core import examples
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.tools import sample_data
from pipeline_components.trainer import datasets
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import plan_training

PER_CLASS = 1000
pytestmark = pytest.mark.slow  # 2,040 images through Beam and tf.data: ~40 s on 2 cores


@pytest.fixture(scope="module")
def sorted_examples(tmp_path_factory):
    """train/{circles,stripes}/0000.jpg ... 0999.jpg: every circle sorts before every stripe."""
    root = tmp_path_factory.mktemp("class_sorted")
    sample_data.generate(str(root / "data"), ("circles", "stripes"), (PER_CLASS, 10, 10), (32, 32))
    run_example_gen(str(root / "data"), str(root / "examples"))  # default: 4 shards
    return str(root / "examples")


def _longest_run(labels: list[int]) -> int:
    longest = run = 1
    for a, b in zip(labels, labels[1:], strict=False):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    return longest


def test_shards_hold_no_long_run_of_one_class(sorted_examples):
    files = examples.split_files(sorted_examples, "train")
    assert len(files) == 4
    total = 0
    for path in files:
        records = tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
        labels = [
            tf.train.Example.FromString(r).features.feature[examples.LABEL].int64_list.value[0]
            for r in records
        ]
        total += len(labels)
        assert _longest_run(labels) <= 30, (path, _longest_run(labels))
        assert 0.4 < np.mean(labels) < 0.6, path
    assert total == 2 * PER_CLASS


def test_every_batch_mixes_classes_and_each_epoch_has_a_new_order(sorted_examples):
    # the default config, but 32x32 images (the batches' classes do not depend on the size)
    config = TrainerConfig(weights="none", image_size=[32, 32])
    assert (config.batch_size, config.steps_per_epoch) == (100, 20)  # 20 x 100 = one pass
    plan = plan_training(sorted_examples, config)
    train, _ = datasets.live_datasets(sorted_examples, config, plan)
    # fit(steps_per_epoch=20) reads the repeated dataset with one iterator: 20 batches an epoch
    stream = [labels.numpy()[:, 0] for _, labels in train.take(60)]
    epochs = []
    for epoch in range(3):
        batches = stream[20 * epoch : 20 * (epoch + 1)]
        shares = [float(b.mean()) for b in batches]
        assert all(len(b) == 100 for b in batches)
        assert all(0.3 <= s <= 0.7 for s in shares), (epoch, shares)
        epochs.append(np.concatenate(batches))
    for epoch in epochs:
        assert epoch.sum() == PER_CLASS  # each epoch is one pass over the split
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    # without augmentation the images themselves show it: same images, a new order each epoch
    plain = TrainerConfig(weights="none", image_size=[32, 32], augmentation=None)
    train, _ = datasets.live_datasets(sorted_examples, plain, plan)
    stream = np.concatenate([x.numpy().sum(axis=(1, 2, 3)) for x, _ in train.take(40)])
    sums = [stream[:2000], stream[2000:]]
    np.testing.assert_allclose(np.sort(sums[0]), np.sort(sums[1]), rtol=1e-6)
    assert not np.allclose(sums[0], sums[1])
