"""The one-process runtime: Keras `fit` on this process's devices (MirroredStrategy over several
local GPUs, else the default strategy).

Resume: `prepare_checkpoints` keeps `checkpoints/` of the same run (config, labels, data); each
phase's `fit` runs with a BackupAndRestore in `checkpoints/backup_<phase>/`, which restores the
last finished epoch; once the head phase of a run that fine-tunes has finished, its weights and
epoch count are kept (`head_phase.weights.npz`, `head_phase_done.json`), so a run killed while
fine-tuning does not train the head again.
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras
import tensorflow as tf

from pipeline_components.core import fsutil
from pipeline_components.trainer import datasets
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.callbacks import (
    read_epoch_records,
    weights_from_bytes,
    weights_to_bytes,
)
from pipeline_components.trainer.checkpoints import checkpoint_paths, prepare_checkpoints
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import TrainingPlan
from pipeline_components.trainer.runtime import Run, Runtime


def distribution_strategy() -> tf.distribute.Strategy:
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's slot variables before `fit`: left to the first train step, their
    creation makes tf.function trace the train step twice (once to lift the new variables), which
    costs about as much as 20 epochs of a Dense head on cached features."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


class OneProcess(Runtime):
    """Train in this process, writing to `output_dir`."""

    def __init__(self, output_dir: str) -> None:
        self.strategy = distribution_strategy()
        self.output_dir = self.write_dir = output_dir

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return self.strategy.scope()

    def check(self, config: TrainerConfig, plan: TrainingPlan) -> None:
        """Any plan runs on one process."""

    def prepare(self, run_key: dict[str, Any]) -> None:
        resumed = prepare_checkpoints(self.output_dir, run_key)
        if resumed:
            epochs = read_epoch_records(checkpoint_paths(self.output_dir)["epochs"])
            self.resumed_from_epoch = len(epochs)

    def describe(self, config: TrainerConfig) -> tuple[str, str]:
        resumed = self.resumed_from_epoch
        suffix = f", {self.strategy.num_replicas_in_sync} replica(s)"
        return "", suffix + (f", resuming after epoch {resumed}" if resumed is not None else "")

    def datasets(
        self, net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
    ) -> tuple[Any, Any, float | None]:
        return datasets.local_datasets(net, examples_dir, config, plan, self.write_dir)

    def phase(
        self, run: Run, name: str, model: keras.Model, learning_rate: float, first: int, last: int
    ) -> int:
        paths = checkpoint_paths(self.write_dir)
        head = run.net.get_layer(model_lib.HEAD)
        if name == "head" and fsutil.exists(paths["head_done"]):
            # resumed after the head phase had finished
            head.set_weights(weights_from_bytes(fsutil.read_bytes(paths["head_weights"])))
            return int(fsutil.read_json(paths["head_done"])["epochs"])
        config = run.config
        model_lib.compile_model(model, run.plan.num_classes, config.optimizer, learning_rate)
        build_optimizer(model)
        model._initial_epoch = None  # set by a previous BackupAndRestore restore; reset per phase
        backup = keras.callbacks.BackupAndRestore(
            paths[f"backup_{name}"], double_checkpoint=True, delete_checkpoint=False
        )
        model.fit(
            run.train,
            validation_data=run.val,
            epochs=last,
            initial_epoch=first,
            steps_per_epoch=config.steps_per_epoch,
            validation_steps=config.validation_steps,
            callbacks=run.callbacks(name, backup),
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=0,
        )
        records = read_epoch_records(paths["epochs"])
        done = max((e for e, r in records.items() if r["phase"] == name), default=first)
        if name == "head" and run.plan.fine_tune:
            fsutil.write_atomic(paths["head_weights"], weights_to_bytes(head.get_weights()))
            fsutil.write_json(paths["head_done"], {"epochs": done})
        return done

    def finish(self) -> None:
        """Nothing waits for the artifacts."""

    def close(self) -> None:
        """The run wrote only to output_dir."""
