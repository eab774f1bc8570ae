"""The Tuner's engine (issue 33): KerasTuner over the head, on streamed features or on images.
The component (`transfer-pipeline tune`, in a run, in a group of workers):
tests/test_feature_gen.py."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest

from pipeline_components.core import artifacts
from pipeline_components.core import config as config_lib
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.features import files, stream
from pipeline_components.tools import sample_data
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.config import AugmentationConfig, TrainerConfig
from pipeline_components.tuner import launch, search
from pipeline_components.tuner.config import SearchSpace, TunerConfig

# the default learning rate is badly chosen: 1e-7 learns nothing in a few epochs
DEFAULT = TrainerConfig(weights="none", learning_rate=1e-7, batch_size=32, augmentation=None)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """Features of 3 classes (noisy clusters), 150 train / 60 validation records."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 64))

    def split(n, offset):
        y = rng.integers(0, 3, n)
        x = (centers[y] + rng.normal(size=(n, 64)) * 1.5).reshape(n, 2, 2, 16)
        return x, y, [f"{c}/{offset + i}.jpg" for i, c in enumerate(y)]

    path = str(tmp_path_factory.mktemp("tuner") / "features")
    entries = {"train": split(150, 0), "validation": split(60, 150)}
    return files.write_arrays(path, entries, ["a", "b", "c"], "float16", {"test": "clusters"})


def validation_accuracy(manifest: files.Manifest, config: TrainerConfig, epochs: int) -> float:
    """The head trained as a trial trains it, with `config`'s values."""
    import keras

    keras.utils.set_random_seed(42)
    head = model_lib.build_head(manifest.shape, 3, config.head, config.dropout, config.units)
    model_lib.compile_model(head, 3, config.optimizer, config.learning_rate)
    train = stream.feature_dataset(
        manifest, "train", batch_size=config.batch_size, training=True, seed=42
    )
    val = stream.feature_dataset(manifest, "validation", batch_size=config.batch_size)
    return head.fit(train, validation_data=val, epochs=epochs, verbose=0).history["val_accuracy"][
        -1
    ]


def request(tmp_path, manifest, **tuner) -> search.Request:
    return search.Request(
        DEFAULT,
        TunerConfig(**{"space": SearchSpace(), **tuner}),
        str(tmp_path / "tuner"),
        str(tmp_path / "work"),
        features_dir=manifest.path,
    )


def test_eight_trials_beat_a_badly_chosen_default_learning_rate(clusters, tmp_path):
    summary = search.run_search(request(tmp_path, clusters, max_trials=8, epochs=2))
    default = validation_accuracy(clusters, DEFAULT, epochs=2)
    best = summary["best"]
    assert summary["trials"] == summary["completed"] == 8 and summary["stopped_by"] == "trials"
    assert summary["mode"] == "features" and summary["algorithm"] == "random"
    assert best["score"] > default + 0.3, (best, default)
    # the best values, handed to the trainer, train a head that beats the default too
    tuned = dataclasses.replace(DEFAULT, **best["trainer"])
    assert validation_accuracy(clusters, tuned, epochs=2) > default + 0.3

    out = tmp_path / "tuner"
    chosen = json.loads((out / artifacts.BEST_HYPERPARAMETERS).read_text())
    assert set(chosen["trainer"]) == {
        "learning_rate",
        "dropout",
        "units",
        "optimizer",
        "batch_size",
    }
    rows = json.loads((out / artifacts.TRIALS_JSON).read_text())
    assert len(rows) == 8 and max(r["val_accuracy"] for r in rows) == chosen["score"]
    assert all(r["seconds"] > 0 and r["epochs"] == 2 and r["worker"] == "tuner0" for r in rows)
    csv_lines = (out / artifacts.TRIALS_CSV).read_text().splitlines()
    assert len(csv_lines) == 9 and csv_lines[0].startswith("trial,status,worker,seconds")
    assert (out / "plots" / artifacts.TRIALS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / artifacts.TUNING_SUMMARY).read_text())["best"] == chosen
    assert not (tmp_path / "work").exists()  # KerasTuner's state goes with the search


@pytest.mark.parametrize("algorithm", ["bayesian", "hyperband"])
def test_bayesian_optimisation_and_hyperband_search_within_the_trial_budget(
    clusters, tmp_path, algorithm
):
    summary = search.run_search(
        request(tmp_path, clusters, algorithm=algorithm, max_trials=3, epochs=3)
    )
    assert summary["algorithm"] == algorithm and summary["trials"] == 3
    rows = json.loads((tmp_path / "tuner" / artifacts.TRIALS_JSON).read_text())
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    if algorithm == "hyperband":  # its first round trains for fewer epochs than the most
        assert min(r["epochs"] for r in rows) == 1


def test_no_trial_starts_after_the_time_budget(tmp_path):
    oracle = search.make_oracle(TunerConfig(max_trials=10), deadline=time.time() + 600)
    oracle._set_project_dir(str(tmp_path), "search")  # where it saves its state
    oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-1, sampling="log")
    first = oracle.create_trial("tuner0")
    assert first.status == "RUNNING" and not oracle.stopped_by_time
    oracle.deadline = time.time() - 1  # the budget is spent while the trial runs
    assert oracle.create_trial("tuner1").status == "STOPPED" and oracle.stopped_by_time
    assert oracle.create_trial("tuner0").trial_id == first.trial_id  # still its running trial
    assert search.deadline_of(TunerConfig(max_minutes=2)) == pytest.approx(time.time() + 120, 5)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"learning_rate": {"min": 0.1, "max": 0.01}}, "learning_rate.max: must be >= min"),
        ({"learning_rate": {"min": 0, "max": 0.1, "sampling": "log"}}, "min: must be > 0"),
        ({"dropout": {"min": 0.0, "max": 1.0}}, "tuner.space.dropout: must be a range within"),
        ({"optimizer": ["adam", "lion"]}, "tuner.space.optimizer: must be a non-empty list"),
        ({"batch_size": []}, "tuner.space.batch_size: must be a non-empty list"),
        ({"units": "many"}, "tuner.space.units: expected a list"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_the_key(space, message):
    with pytest.raises(PipelineError, match=message):
        config_lib.section_from_dict(TunerConfig, {"space": space}, "tuner", "pipeline.yaml")


def test_a_key_the_space_leaves_out_keeps_the_trainers_value(clusters, tmp_path):
    space = {"dropout": None, "units": None, "optimizer": None, "batch_size": [16]}
    tuner = config_lib.section_from_dict(
        TunerConfig, {"space": space, "max_trials": 2, "epochs": 1}, "tuner"
    )
    req = dataclasses.replace(request(tmp_path, clusters), tuner=tuner)
    search.run_search(req)
    rows = json.loads((tmp_path / "tuner" / artifacts.TRIALS_JSON).read_text())
    for row in rows:
        assert (row["dropout"], row["units"], row["optimizer"]) == (0.0, 0, "rmsprop")
        assert row["batch_size"] == 16 and row["learning_rate"] != DEFAULT.learning_rate


@pytest.mark.slow
def test_tuning_on_images_when_features_cannot_be_cached_says_how_much_slower(tmp_path, caplog):
    data = tmp_path / "data"
    sample_data.generate(str(data), ("circles", "squares", "stripes"), (6, 2, 1), (32, 32))
    run_example_gen(str(data), str(tmp_path / "examples"), num_shards=1)
    trainer = TrainerConfig(
        backbone="mobilenet_v2",
        weights="none",
        image_size=[32, 32],
        batch_size=6,
        augmentation=AugmentationConfig(),
    )
    space = SearchSpace(units=None, optimizer=None, batch_size=None)
    req = search.Request(
        trainer,
        TunerConfig(max_trials=2, epochs=1, space=space),
        str(tmp_path / "tuner"),
        str(tmp_path / "work"),
        examples_dir=str(tmp_path / "examples"),
    )
    with caplog.at_level("WARNING"):
        summary = search.run_search(req)
    assert summary["mode"] == "images" and summary["completed"] == 2
    cost = summary["images"]
    assert cost["why"] == "augmentation is on"
    assert cost["image_epoch_seconds"] > 0 and cost["feature_epoch_seconds"] > 0
    assert cost["slowdown"] == pytest.approx(
        cost["image_epoch_seconds"] / cost["feature_epoch_seconds"], rel=0.01
    )
    assert "tuned on images (augmentation is on)" in caplog.text
    assert f"about {cost['slowdown']:.1f}x" in caplog.text


def test_a_kubernetes_pod_learns_its_place_in_the_group():
    pod = {"JOB_NAME": "tune-multiworker", "TUNER_SERVICE": "tune-multiworker"}
    chief = launch.k8s_env(2, {**pod, "JOB_COMPLETION_INDEX": "0", "POD_NAMESPACE": "tp"})
    worker = launch.k8s_env(2, {**pod, "JOB_COMPLETION_INDEX": "2"}, port=9000)
    assert chief == {
        "KERASTUNER_TUNER_ID": "chief",
        "KERASTUNER_ORACLE_IP": "tune-multiworker-0.tune-multiworker.tp.svc",
        "KERASTUNER_ORACLE_PORT": "8000",
    }
    assert worker["KERASTUNER_TUNER_ID"] == "tuner2" and worker["KERASTUNER_ORACLE_PORT"] == "9000"
    assert launch.role(chief) == "chief" and launch.role(worker) == "worker"
    assert launch.role({}) is None
    with pytest.raises(PipelineError, match="JOB_COMPLETION_INDEX not set"):
        launch.k8s_env(2, pod)
    with pytest.raises(PipelineError, match=r"INDEX=3 is not in \[0, --workers 2\]"):
        launch.k8s_env(2, {**pod, "JOB_COMPLETION_INDEX": "3"})
