"""FeatureGen and the Tuner as components (issue 33): `transfer-pipeline features` / `tune`, the
Trainer's Features and HyperParameters inputs, and both in `transfer-pipeline run`: a run whose
only change is the head's learning rate reuses the features (no backbone pass), and the Tuner's
best values, found on them, beat a badly chosen default in the Trainer.

The data: three classes told apart by colour, so that a frozen *random* VGG19 (weights: none;
no ImageNet weights here) gives features a head can learn from, at 32x32.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline_components import cli
from pipeline_components.core import artifacts
from pipeline_components.core.component import ExecutionContext
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.registry import config_from_dict
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.features import extractor, files
from pipeline_components.features.component import COMPONENT as FEATURE_GEN
from pipeline_components.trainer import executor as trainer
from pipeline_components.trainer import hyperparameters
from pipeline_components.trainer.config import AugmentationConfig, TrainerConfig
from pipeline_components.tuner.component import COMPONENT as TUNER

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
TRAINER = {
    "backbone": "vgg19",
    "weights": "none",
    "image_size": [32, 32],
    "head": "global_average",
    "epochs": 5,
    "batch_size": 16,
    "steps_per_epoch": None,
    "augmentation": None,
}
BAD_LEARNING_RATE = 1e-7  # learns nothing in 5 epochs


def colour_images(root: Path, per_split: tuple[int, int, int] = (16, 8, 2), seed: int = 0) -> Path:
    """<root>/<split>/<colour>/<i>.jpg: 32x32 noisy images of one colour per class. The test
    split's first image of each class has the next class's colour: no model scores 1.0 on it,
    so `evaluator.min_accuracy: 1.0` never blesses (nothing is served or pushed in these runs:
    not what they test)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    for split, n in zip(("train", "validation", "test"), per_split, strict=True):
        for k, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                wrong = split == "test" and i == 0
                rgb = COLOURS[names[(k + 1) % 3]] if wrong else COLOURS[name]
                pixels = np.asarray(rgb)[None, None, :] + rng.normal(0, 60, (32, 32, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("colours")
    data = colour_images(root / "data")
    run_example_gen(str(data), str(root / "examples"), num_shards=1)
    return str(root / "examples")


@pytest.fixture(scope="module")
def features(examples) -> str:
    """FeatureGen's artifact of `examples`, made by its command."""
    out = str(Path(examples).parent / "features")
    overrides = [f"trainer.{k}={json.dumps(v)}" for k, v in TRAINER.items()]
    assert cli.main(["features", "--examples", examples, "--output", out, *overrides]) == 0
    return out


def pipeline(**sections) -> PipelineConfig:
    return config_from_dict({"trainer": dict(TRAINER), **sections})


def context(cfg: PipelineConfig, component, **inputs) -> ExecutionContext:
    arts = {n: artifacts.Artifact(component.inputs[n].type, uri) for n, uri in inputs.items()}
    return ExecutionContext(cfg, component.section_of(cfg), arts, "")


# ------------------------------------------------------------------------------- FeatureGen


def test_the_features_key_holds_the_backbone_and_nothing_of_the_head(examples):
    def key(**trainer):
        cfg = pipeline(trainer={**TRAINER, **trainer})
        ctx = context(cfg, FEATURE_GEN, examples=examples)
        return FEATURE_GEN.key_config(ctx.config), FEATURE_GEN.external_inputs(ctx)

    base = key()
    head = {"learning_rate": 0.5, "dropout": 0.3, "units": 64, "epochs": 9, "seed": 7}
    assert key(**head, optimizer="sgd", batch_size=4) == base
    for changed in ({"backbone": "vgg16"}, {"weights": "imagenet"}, {"image_size": [40, 40]}):
        assert key(**changed) != base, changed
    features = base[1]["features"]
    assert features["examples"] == artifacts.examples_fingerprint(examples)
    assert features["preprocessing"]["exif_transpose"] is True  # the examples' rule


@pytest.mark.parametrize(
    "trainer, reason",
    [
        ({"augmentation": {}}, "augmentation is on"),
        ({"fine_tune_from": "block5_conv1"}, "fine_tune_from is set"),
        ({"cache_features": "false"}, "cache_features is false"),
        ({}, None),
    ],
)
def test_feature_gen_is_skipped_when_features_cannot_be_cached(trainer, reason):
    cfg = pipeline(trainer={**TRAINER, **trainer})
    got = FEATURE_GEN.skip_reason(context(cfg, FEATURE_GEN))
    assert got == (f"features cannot be cached: trainer {reason}" if reason else None)


def test_the_features_command_refuses_features_the_trainer_would_not_use(
    examples, tmp_path, capsys
):
    out = tmp_path / "features"
    argv = ["features", "--examples", examples, "--output", str(out), "trainer.weights=none"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        "transfer-pipeline features: error: features: the Trainer would not use cached features:"
        " trainer augmentation is on"
    )
    assert not out.exists()


def test_feature_gen_writes_the_artifact_the_trainer_and_the_tuner_read(examples, features):
    manifest = files.read_manifest(features)
    assert manifest.count("train") == 48 and manifest.count("validation") == 24
    assert manifest.shape == (1, 1, 512) and manifest.dtype == "float16"
    assert artifacts.features_fingerprint(features) == manifest.fingerprint
    assert manifest.key["examples"] == artifacts.examples_fingerprint(examples)
    # weights none: one random backbone, the same every time (the key cannot tell two apart)
    again = str(Path(features).parent / "again")
    overrides = [f"trainer.{k}={json.dumps(v)}" for k, v in TRAINER.items()]
    assert cli.main(["features", "--examples", examples, "--output", again, *overrides]) == 0
    assert files.read_manifest(again).fingerprint == manifest.fingerprint


# ----------------------------------------------------------------------- the Trainer's inputs


def test_the_trainer_refuses_features_of_another_backbone(examples, features, tmp_path):
    config = TrainerConfig(**{**TRAINER, "backbone": "vgg16"})
    with pytest.raises(PipelineError, match="its backbone, preprocessing differ from the trainer"):
        trainer.run_trainer(examples, str(tmp_path / "t"), config, features=features)
    augmented = TrainerConfig(**{**TRAINER, "augmentation": AugmentationConfig()})
    with pytest.raises(PipelineError, match="cannot train on cached features here: trainer augm"):
        trainer.run_trainer(examples, str(tmp_path / "t"), augmented, features=features)
    assert not (tmp_path / "t" / artifacts.TRAINING_CONFIG).exists()


def test_best_hyperparameters_override_the_trainers_config_and_are_checked(tmp_path):
    best = tmp_path / artifacts.BEST_HYPERPARAMETERS
    config = TrainerConfig(**TRAINER)
    values = {"learning_rate": 0.05, "units": 128, "optimizer": config.optimizer}
    best.write_text(json.dumps({"trainer": values}))
    tuned, record = hyperparameters.apply(config, str(best))
    assert (tuned.learning_rate, tuned.units, tuned.dropout) == (0.05, 128, config.dropout)
    assert record == {
        "source": str(best),
        "applied": values,
        "replaced": {"learning_rate": config.learning_rate, "units": 0},  # what changed
    }
    for values, message in (
        ({"dropout": 1.5}, r"hyperparameters .*: trainer.dropout: must be in \[0, 1\)"),
        ({"epochs": 3}, "trainer.epochs is not an option a search sets"),
        ({"optimizer": "lion"}, r"trainer.optimizer: must be one of"),
    ):
        best.write_text(json.dumps({"trainer": values}))
        with pytest.raises(PipelineError, match=message):
            hyperparameters.apply(config, str(best))
    best.write_text("[1, 2]")
    with pytest.raises(PipelineError, match="no 'trainer' mapping"):
        hyperparameters.apply(config, str(best))


# --------------------------------------------------------------------------------- the Tuner


@pytest.mark.parametrize(
    "tuner, reason",
    [
        ({}, "no search space configured (tuner.space)"),
        ({"space": {}, "enabled": False}, "tuner.enabled is false"),
        ({"space": {}}, None),
    ],
)
def test_the_tuner_runs_only_when_a_search_space_is_configured(tuner, reason):
    cfg = pipeline(tuner=tuner)
    assert TUNER.skip_reason(context(cfg, TUNER)) == reason


def test_bayesian_optimisation_without_its_extra_is_one_line(monkeypatch):
    """scikit-learn and scipy are the `bayesian` extra, not in the image; faked absent here."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a)
    )
    cfg = pipeline(tuner={"space": {}, "algorithm": "bayesian"})
    wanted = r"bayesian needs sklearn \(pip install '\.\[bayesian\]' in this repository"
    with pytest.raises(PipelineError, match=wanted):
        TUNER.preflight(cfg.sections["tuner"])
    TUNER.preflight(pipeline(tuner={"space": {}, "algorithm": "hyperband"}).sections["tuner"])


def test_tune_refuses_features_of_other_examples(features, tmp_path, capsys):
    other = tmp_path / "examples"
    run_example_gen(str(colour_images(tmp_path / "data", (3, 3, 1), seed=1)), str(other))
    argv = ["tune", "--examples", str(other), "--features", features, "--output"]
    assert cli.main([*argv, str(tmp_path / "t"), "space={}", "trainer.augmentation=null"]) == 1
    assert f"features {features}: not of the examples at {other}" in capsys.readouterr().err
    assert cli.main([*argv, str(tmp_path / "t"), "space={}"]) == 1  # augmentation on
    assert "the Trainer will not train on cached features" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_two_local_workers_finish_the_same_number_of_trials_as_one(examples, features, tmp_path):
    def tune(name: str, *group: str) -> dict:
        out = tmp_path / name
        args = ["tune", "--examples", examples, "--features", features, "--output", str(out)]
        overrides = ["max_trials=4", "epochs=1", "space={units: null, batch_size: [16]}"]
        trainer_keys = [f"trainer.{k}={json.dumps(v)}" for k, v in TRAINER.items()]
        assert cli.main([*args, *group, *overrides, *trainer_keys]) == 0
        return json.loads((out / artifacts.TUNING_SUMMARY).read_text())

    one = tune("one")
    two = tune("two", "--workers", "2", "--local")
    assert one["trials"] == two["trials"] == 4 and two["completed"] == 4
    assert (one["workers"], two["workers"]) == (1, 2)
    rows = json.loads((tmp_path / "two" / artifacts.TRIALS_JSON).read_text())
    assert {r["worker"] for r in rows} <= {"tuner1", "tuner2"}  # the chief runs no trial
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]  # KerasTuner's state went with it


# ------------------------------------------------------------------ both in `transfer-pipeline run`


def run(tmp_path: Path, data: Path, capsys, **sections) -> dict:
    cfg = {
        "pipeline_name": "colours",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data),
        "serving_dir": str(tmp_path / "serving"),
        "example_gen": {"num_shards": 1},
        "evaluator": {"min_accuracy": 1.0},  # never blessed (colour_images): no server, no push
        **sections,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["run", "--config", str(path)]) == 0
    capsys.readouterr()
    runs = tmp_path / "root" / "runs"
    newest = max(runs.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((newest / "run.json").read_text())


def validation_accuracy(record: dict) -> float:
    return float(record["components"]["Trainer"]["result"]["best"]["val_accuracy"])


@pytest.mark.slow
def test_a_head_change_reuses_the_features_and_the_tuner_beats_a_bad_learning_rate(
    tmp_path, capsys, caplog
):
    data = colour_images(tmp_path / "data")
    caplog.set_level(logging.INFO, logger="pipeline_components")
    first = run(tmp_path, data, capsys, trainer={**TRAINER, "learning_rate": 0.05})
    assert first["components"]["FeatureGen"]["status"] == "completed"
    assert first["components"]["Tuner"]["status"] == "skipped"  # no tuner: section
    assert "backbone pass: features of 48 train, 24 validation" in caplog.text
    features = first["components"]["FeatureGen"]["outputs"]["features"]

    # only the head's learning rate changes (to a bad one): the features are reused as they are
    caplog.clear()
    passes = extractor.images_extracted()
    bad = {**TRAINER, "learning_rate": BAD_LEARNING_RATE}
    second = run(tmp_path, data, capsys, trainer=bad)
    reused = second["components"]["FeatureGen"]
    assert reused["status"] == "cached" and reused["cached"] is True
    assert reused["outputs"]["features"] == features
    assert extractor.images_extracted() == passes, "a backbone pass in the second run"
    assert "backbone pass:" not in caplog.text
    assert "on the features at" in caplog.text and "no backbone pass" in caplog.text
    trained = second["components"]["Trainer"]
    assert trained["status"] == "completed" and trained["result"]["features"] == features
    assert (
        trained["inputs"]["inputs"]["features"]
        == first["components"]["Trainer"]["inputs"]["inputs"]["features"]
    )  # the same fingerprint in both runs' keys
    assert files.read_manifest(features).fingerprint == trained["inputs"]["inputs"]["features"]

    # the same bad default, and a search of 8 trials over the learning rate
    space = {"learning_rate": {"min": 1e-3, "max": 0.3, "sampling": "log"}}
    space.update(dropout=None, units=None, optimizer=None, batch_size=None)
    tuner = {"max_trials": 8, "epochs": 5, "space": space}
    third = run(tmp_path, data, capsys, trainer=bad, tuner=tuner)
    comps = third["components"]
    assert comps["FeatureGen"]["status"] == "cached" and comps["Tuner"]["status"] == "completed"
    assert extractor.images_extracted() == passes
    best = third["hyperparameters"]  # run.json: the Tuner's best trial
    searched = comps["Tuner"]["result"]
    assert searched["trials"] == 8 and searched["mode"] == "features"
    tuned = comps["Trainer"]["result"]["hyperparameters"]
    assert tuned["applied"] == best["trainer"]  # the searched value and the fixed ones
    assert tuned["replaced"] == {"learning_rate": BAD_LEARNING_RATE}
    config = json.loads(
        (Path(comps["Trainer"]["output_dir"]) / artifacts.TRAINING_CONFIG).read_text()
    )
    assert config["config"]["learning_rate"] == best["trainer"]["learning_rate"]
    assert config["hyperparameters"]["source"] == comps["Tuner"]["outputs"]["hyperparameters"]
    default = validation_accuracy(second)
    assert validation_accuracy(third) > default + 0.3, (validation_accuracy(third), default)

    html = Path(third["report"]).read_text()
    for text in ("Hyperparameter search", "Backbone features", "learning_rate (from the Tuner)"):
        assert text in html
    assert html.count("<tr>") > 8 + 10  # the trials table's rows, among the others
    trials = Path(comps["Tuner"]["output_dir"]) / "plots" / artifacts.TRIALS_PNG
    assert trials.read_bytes()[:4] == b"\x89PNG"
