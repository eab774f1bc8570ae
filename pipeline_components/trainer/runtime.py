"""What the training skeleton (training.py) asks of a runtime, and what every runtime shares.

Two runtimes implement `Runtime`: `fit.OneProcess` (one process, Keras `fit`, one or more local
devices) and `distributed.MultiWorker` (one worker of a MultiWorkerMirroredStrategy group, a
custom loop: Keras 3's `fit` fails under that strategy, keras-team/keras#20585). The executor
picks one (`executor.run_trainer`); the skeleton runs the same steps with either. A runtime
decides how a phase trains, where this process writes, how it resumes and where its datasets
come from; what every runtime records is here, once: `Run.callbacks` (the per-epoch record,
history.csv, TensorBoard scalars, the best checkpoint and early stopping, both on
`trainer.monitor`). Runtimes import this module, never training.py or executor.py.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any

import keras
import tensorflow as tf

from pipeline_components.core import artifacts, fsutil
from pipeline_components.trainer.callbacks import (
    MONITOR_MODES,
    BestCheckpoint,
    CsvHistory,
    EpochLog,
    ScalarLogger,
)
from pipeline_components.trainer.checkpoints import checkpoint_paths
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import TrainingPlan


@dataclasses.dataclass
class Run:
    """One training run as its phases see it, whichever runtime trains them."""

    net: keras.Model  # the full model (backbone + head)
    config: TrainerConfig
    plan: TrainingPlan
    write_dir: str  # where this process writes checkpoints/, logs/ and history.csv
    train: Any  # tf.data.Dataset (one process) or tf.distribute.DistributedDataset
    val: Any
    best: BestCheckpoint
    extra_callbacks: tuple[keras.callbacks.Callback, ...] = ()

    def callbacks(
        self, phase: str, backup: keras.callbacks.Callback | None = None
    ) -> list[keras.callbacks.Callback]:
        """The callbacks of one phase, called once per epoch with the epoch's logs (`loss`,
        `accuracy`, `val_loss`, `val_accuracy`); `backup` (the one-process runtime's
        BackupAndRestore) runs right after the best checkpoint."""
        config = self.config
        steps = config.steps_per_epoch
        total = config.epochs + (config.fine_tune_epochs if self.plan.fine_tune else 0)
        images = steps * config.batch_size if steps else self.plan.num_examples["train"]
        callbacks = [
            EpochLog(
                checkpoint_paths(self.write_dir)["epochs"],
                images,
                phase,
                total,
                steps or -(-images // config.batch_size),  # a whole split: its batches
            ),
            self.best,
            *([backup] if backup is not None else []),
            CsvHistory(fsutil.join(self.write_dir, artifacts.HISTORY_CSV)),
            ScalarLogger(fsutil.join(self.write_dir, artifacts.LOGS_DIR)),
        ]
        if config.early_stopping_patience:
            # the same value as the best checkpoint: stopping never cuts off a better epoch
            # that the exported one would have been
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=config.monitor,
                    mode=MONITOR_MODES[config.monitor],
                    patience=config.early_stopping_patience,
                )
            )
        return callbacks + list(self.extra_callbacks)


class Runtime(abc.ABC):
    """How one training run executes in this process. One object per run."""

    strategy: tf.distribute.Strategy  # the model's variables live in its scope
    output_dir: str  # the Trainer's output directory
    write_dir: str  # where this process writes the run's records (output_dir, or a temp dir)
    is_chief: bool = True  # writes the artifacts (executor.write_outputs)
    resumed_from_epoch: int | None = None  # set once the runtime knows (prepare or a phase)

    @abc.abstractmethod
    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Held around the whole run, from the config check to the summary (one process: the
        strategy's scope; a group: lost peers become WorkerLost)."""

    @abc.abstractmethod
    def check(self, config: TrainerConfig, plan: TrainingPlan) -> None:
        """Checks of the plan against the runtime (one-line PipelineErrors)."""

    @abc.abstractmethod
    def prepare(self, run_key: dict[str, Any]) -> None:
        """Resume `checkpoints/` of the same run (`run_key`), or clear them and start fresh."""

    @abc.abstractmethod
    def describe(self, config: TrainerConfig) -> tuple[str, str]:
        """(prefix, suffix) of the run's first log line: who trains, on how many replicas."""

    @abc.abstractmethod
    def datasets(
        self, net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
    ) -> tuple[Any, Any, float | None]:
        """(train, validation, seconds spent caching backbone features or None)."""

    @abc.abstractmethod
    def phase(
        self,
        run: Run,
        name: str,
        model: keras.Model,
        learning_rate: float,
        first: int,
        last: int,
    ) -> int:
        """Train `model` (the head alone on cached features, or the full model) for epochs
        first..last-1, numbered across phases, with `run.callbacks(name)`; resumes a
        phase interrupted before. Returns the epochs completed when the phase ends (early
        stopping may end it sooner)."""

    def summary_fields(self) -> dict[str, Any]:
        """What the runtime adds to the summary."""
        return {}

    def exportable(self, net: keras.Model, config: TrainerConfig, num_classes: int) -> keras.Model:
        """The trained model as export_model takes it."""
        return net

    @abc.abstractmethod
    def finish(self) -> None:
        """After the chief wrote the artifacts."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the runtime holds (always called, also after a failure)."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
