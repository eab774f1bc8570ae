"""What one trial trains: the search space on KerasTuner's `HyperParameters`, and the head
(`HeadHyperModel`) on the streamed features, or the whole model on images when features cannot
be cached (`FeatureTrials`, `ImageTrials`).

Every trial starts from the same seed (`tuner.seed`): its initial weights and its data order do
not depend on which trial, or which worker, it is, so trials differ by their hyperparameters only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import keras
import keras_tuner
import tensorflow as tf

from pipeline_components.features import stream
from pipeline_components.features.files import Manifest
from pipeline_components.trainer import datasets
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.hyperparameters import TUNABLE
from pipeline_components.trainer.plan import plan_training
from pipeline_components.tuner.config import SearchSpace, TunerConfig

# The trainer options a search may set (trainer.<key>), in the order tables show them: what
# the Trainer accepts from best_hyperparameters.json.
HEAD_KEYS = TUNABLE


def declare(hp: Any, space: SearchSpace, base: TrainerConfig) -> dict[str, Any]:
    """Declare the space on `hp` (keras_tuner.HyperParameters); the trial's value of every head
    key (the trainer's own for a key the space leaves out)."""
    values: dict[str, Any] = {}
    for name in ("learning_rate", "dropout"):
        bounds = getattr(space, name)
        default = getattr(base, name)
        if bounds is None:
            values[name] = default
        elif bounds.min == bounds.max:
            values[name] = hp.Fixed(name, bounds.min)
        else:
            start = min(max(default, bounds.min), bounds.max)
            values[name] = hp.Float(
                name, bounds.min, bounds.max, sampling=bounds.sampling, default=start
            )
    for name in ("units", "optimizer", "batch_size"):
        choices = getattr(space, name)
        default = getattr(base, name)
        if choices is None:
            values[name] = default
            continue
        unique = list(dict.fromkeys(choices))
        if len(unique) == 1:
            values[name] = hp.Fixed(name, unique[0])
        else:
            start = default if default in unique else unique[0]
            values[name] = hp.Choice(name, unique, default=start)
    return values


def trainer_values(values: dict[str, Any], space: SearchSpace, base: TrainerConfig) -> dict:
    """A trial's hyperparameter values as trainer options (every head key)."""
    hp = keras_tuner.HyperParameters()
    declared = declare(hp, space, base)
    return {key: values.get(key, declared[key]) for key in HEAD_KEYS}


class Trials(Protocol):
    """Where a trial's model and data come from."""

    mode: str  # "features" | "images"

    @property
    def num_classes(self) -> int: ...

    def model(self, values: dict[str, Any]) -> keras.Model: ...

    def datasets(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]: ...


@dataclasses.dataclass
class FeatureTrials:
    """Trials of the head alone on the features artifact, streamed (features/stream.py)."""

    manifest: Manifest
    base: TrainerConfig
    tuner: TunerConfig
    mode: str = "features"

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def model(self, values: dict[str, Any]) -> keras.Model:
        return model_lib.build_head(
            self.manifest.shape,
            self.num_classes,
            self.base.head,
            values["dropout"],
            values["units"],
        )

    def datasets(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        train = stream.feature_dataset(
            self.manifest,
            "train",
            batch_size=batch_size,
            training=True,
            seed=self.tuner.seed,
            repeat=bool(self.tuner.steps_per_epoch),
            shuffle_buffer=self.base.shuffle_buffer,
            shuffle_memory_mb=self.base.shuffle_memory_mb,
        )
        return train, stream.feature_dataset(self.manifest, "validation", batch_size=batch_size)


@dataclasses.dataclass
class ImageTrials:
    """Trials of the whole model on decoded (augmented) images: the backbone runs every step,
    for when features cannot be cached (augmentation or fine-tuning on)."""

    examples_dir: str
    base: TrainerConfig
    tuner: TunerConfig
    mode: str = "images"

    def __post_init__(self) -> None:
        self.config = dataclasses.replace(
            self.base,
            seed=self.tuner.seed,
            steps_per_epoch=self.tuner.steps_per_epoch,
            validation_steps=None,
        )
        self.plan = plan_training(self.examples_dir, self.config)

    @property
    def num_classes(self) -> int:
        return self.plan.num_classes

    def model(self, values: dict[str, Any]) -> keras.Model:
        config = dataclasses.replace(self.config, dropout=values["dropout"], units=values["units"])
        return model_lib.create_model(config, self.num_classes)

    def datasets(self, batch_size: int) -> tuple[tf.data.Dataset, tf.data.Dataset]:
        def split(name: str, training: bool) -> tf.data.Dataset:
            return datasets.image_dataset(
                self.examples_dir,
                name,
                self.config,
                self.plan,
                training=training,
                batch_size=batch_size,
            )

        return split("train", True), split("validation", False)


class HeadHyperModel(keras_tuner.HyperModel):
    """A trial: build the model with the trial's hyperparameters, fit it on its data."""

    def __init__(self, trials: Trials, space: SearchSpace, base: TrainerConfig, seed: int | None):
        super().__init__(name="head")
        self.trials, self.space, self.base, self.seed = trials, space, base, seed

    def build(self, hp: Any) -> keras.Model:
        values = declare(hp, self.space, self.base)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        model = self.trials.model(values)
        classes = self.trials.num_classes
        return model_lib.compile_model(model, classes, values["optimizer"], values["learning_rate"])

    def fit(self, hp: Any, model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        """`kwargs` are KerasTuner's (epochs, callbacks; hyperband's initial_epoch) and the
        search's (steps_per_epoch)."""
        values = declare(hp, self.space, self.base)
        train, val = self.trials.datasets(values["batch_size"])
        kwargs.setdefault("verbose", 0)
        return model.fit(train, validation_data=val, shuffle=False, **kwargs)
