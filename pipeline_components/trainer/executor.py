"""The Trainer's executor: transfer learning on ExampleGen's TFRecords, exported as a SavedModel
that carries its own decoding and preprocessing (docs/ARCHITECTURE.md "Model").

`run_trainer(examples_dir, output_dir, config)` trains (`train_and_evaluate`: plan, build the
model, prepare checkpoints and datasets, the head phase, the optional fine-tuning phase) and
writes `saved_model/`, `history.json`, `history.csv`, `plots/`, `logs/` (TensorBoard),
`checkpoints/` and `training_config.json` (written last). A killed run rerun with the same config
and data resumes at the last finished epoch from `checkpoints/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline_components import __version__
from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core import config as config_lib
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer import export, inputs, plots
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.callbacks import (
    METRICS,
    MONITOR_MODES,
    BestCheckpoint,
    CsvHistory,
    EpochLog,
    ScalarLogger,
    read_epoch_records,
    weights_from_bytes,
    weights_to_bytes,
)
from pipeline_components.trainer.checkpoints import (
    checkpoint_paths,
    finish_checkpoints,
    prepare_checkpoints,
)
from pipeline_components.trainer.config import TrainerConfig

log = logging.getLogger(__name__)

NUM_WARMUP_IMAGES = 3


# ---------------------------------------------------------------------------- decisions


def use_cached_features(config: TrainerConfig) -> bool:
    """Features can be computed once when nothing changes the backbone's output between epochs:
    a frozen backbone (no fine-tuning) and no augmentation."""
    augmented = config.augmentation is not None and config.augmentation.enabled()
    allowed = not config.fine_tune_from and not augmented
    if config.cache_features == "true" and not allowed:
        why = "fine_tune_from is set" if config.fine_tune_from else "augmentation is on"
        raise PipelineError(
            f"trainer.cache_features: true needs a frozen backbone and no augmentation, but {why}"
            " (set augmentation: null / fine_tune_from: null, or cache_features: auto)"
        )
    return allowed and config.cache_features != "false"


def use_mixed_precision(config: TrainerConfig) -> bool:
    if config.mixed_precision == "auto":
        return bool(tf.config.list_logical_devices("GPU"))
    return config.mixed_precision == "true"


def distribution_strategy() -> tf.distribute.Strategy:
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check_config(config: TrainerConfig) -> None:
    """Cheap checks before any data is read or a model built (one-line errors)."""
    model_lib.backbone_spec(config.backbone)
    inputs.validate_augmentation(config.augmentation)
    use_cached_features(config)
    weights = config.weights.strip()
    if weights.lower() not in ("imagenet", "none") and not fsutil.exists(weights):
        raise PipelineError(f"trainer.weights: weights file {weights} does not exist")
    if config.require_gpu and not tf.config.list_physical_devices("GPU"):
        raise PipelineError(
            "trainer.require_gpu: TensorFlow sees no GPU (built with CUDA:"
            f" {tf.test.is_built_with_cuda()}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); check the node's driver, the"
            " nvidia.com/gpu limit and the image's CUDA libraries, or set require_gpu: false"
        )


# ---------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainingPlan:
    """What a training run will do, decided from the config and the data before anything is
    written or built."""

    labels: list[str]
    image_size: tuple[int, int]
    num_examples: dict[str, int]  # train, validation
    cached: bool  # train the head on cached backbone features
    mixed: bool  # mixed_float16
    fine_tune: bool  # a second phase with part of the backbone unfrozen
    fingerprint: str | None  # of the examples (stats.json)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def data_args(self, config: TrainerConfig) -> dict:
        return {
            "image_size": self.image_size,
            "batch_size": config.batch_size,
            "num_classes": self.num_classes,
        }

    def run_key(self, config: TrainerConfig) -> dict:
        """What checkpoints/ must match to be resumed."""
        return {
            "config": config_lib.to_dict(config),
            "labels": self.labels,
            "fingerprint": self.fingerprint,
            "data": self.num_examples,
        }


def plan_training(examples_dir: str, config: TrainerConfig) -> TrainingPlan:
    labels = examples.read_labels(examples_dir)
    sizes = {split: split_size(examples_dir, split) for split in ("train", "validation")}
    if not all(sizes.values()):
        raise PipelineError(f"{examples_dir}: the train and validation splits must not be empty")
    return TrainingPlan(
        labels=labels,
        image_size=model_lib.image_size_for(config.backbone, config.image_size),
        num_examples=sizes,
        cached=use_cached_features(config),
        mixed=use_mixed_precision(config),
        fine_tune=bool(config.fine_tune_from) and config.fine_tune_epochs > 0,
        fingerprint=_fingerprint(examples_dir),
    )


def build_model(config: TrainerConfig, plan: TrainingPlan) -> keras.Model:
    """Built before anything is written: a bad weights file or layer name leaves no trace."""
    net = model_lib.create_model(config, plan.num_classes)
    if config.fine_tune_from:
        model_lib.check_layer_name(net, config.fine_tune_from)
    return net


def make_datasets(
    net: keras.Model, examples_dir: str, config: TrainerConfig, plan: TrainingPlan
) -> tuple[tf.data.Dataset, tf.data.Dataset, float | None]:
    """(train, validation, seconds spent caching features or None)."""
    data = plan.data_args(config)
    if not plan.cached:
        n_train, n_val = plan.num_examples["train"], plan.num_examples["validation"]
        return (*live_datasets(examples_dir, config, data, n_train, n_val), None)
    t0 = time.perf_counter()
    train, val = cached_datasets(net, examples_dir, config, data)
    seconds = time.perf_counter() - t0
    log.info(
        "backbone features of %d images cached in %.1fs", sum(plan.num_examples.values()), seconds
    )
    return train, val, seconds


@dataclasses.dataclass
class Phases:
    """The head phase, then (optionally) the fine-tuning phase, sharing callbacks and data."""

    net: keras.Model
    config: TrainerConfig
    plan: TrainingPlan
    output_dir: str
    train: tf.data.Dataset
    val: tf.data.Dataset
    best: BestCheckpoint
    extra_callbacks: tuple = ()

    def _callbacks(self, phase: str) -> list:
        config, paths = self.config, checkpoint_paths(self.output_dir)
        steps = config.steps_per_epoch
        total = config.epochs + (config.fine_tune_epochs if self.plan.fine_tune else 0)
        callbacks = [
            EpochLog(
                paths["epochs"],
                steps * config.batch_size if steps else self.plan.num_examples["train"],
                phase,
                total,
            ),
            self.best,
            keras.callbacks.BackupAndRestore(
                paths[f"backup_{phase}"], double_checkpoint=True, delete_checkpoint=False
            ),
            CsvHistory(fsutil.join(self.output_dir, artifacts.HISTORY_CSV)),
            ScalarLogger(fsutil.join(self.output_dir, artifacts.LOGS_DIR)),
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

    def _fit(self, model: keras.Model, phase: str, initial_epoch: int, epochs: int) -> None:
        model._initial_epoch = None  # set by a previous BackupAndRestore restore; reset per phase
        model.fit(
            self.train,
            validation_data=self.val,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=self.config.steps_per_epoch,
            validation_steps=self.config.validation_steps,
            callbacks=self._callbacks(phase),
            shuffle=False,  # the tf.data pipeline shuffles
            verbose=0,
        )

    def head(self) -> int:
        """Train the head (on cached features, or the whole frozen model); returns its epochs."""
        paths = checkpoint_paths(self.output_dir)
        head = self.net.get_layer(model_lib.HEAD)
        if fsutil.exists(paths["head_done"]):  # resumed after the head phase had finished
            head.set_weights(weights_from_bytes(fsutil.read_bytes(paths["head_weights"])))
            return int(fsutil.read_json(paths["head_done"])["epochs"])
        fit_model = head if self.plan.cached else self.net
        config = self.config
        model_lib.compile_model(
            fit_model, self.plan.num_classes, config.optimizer, config.learning_rate
        )
        build_optimizer(fit_model)
        self._fit(fit_model, "head", 0, config.epochs)
        records = read_epoch_records(paths["epochs"])
        epochs = max((e for e, r in records.items() if r["phase"] == "head"), default=0)
        if self.plan.fine_tune:
            fsutil.write_atomic(paths["head_weights"], weights_to_bytes(head.get_weights()))
            fsutil.write_json(paths["head_done"], {"epochs": epochs})
        return epochs

    def fine_tune(self, head_epochs: int) -> list[str]:
        """Unfreeze from `fine_tune_from` and train on; returns the unfrozen layers' names."""
        config = self.config
        assert config.fine_tune_from  # plan.fine_tune: fine_tune_from is set
        unfrozen = model_lib.unfreeze_from(self.net, config.fine_tune_from)
        model_lib.compile_model(
            self.net, self.plan.num_classes, config.optimizer, config.fine_tune_learning_rate
        )
        build_optimizer(self.net)
        self._fit(self.net, "fine_tune", head_epochs, head_epochs + config.fine_tune_epochs)
        return unfrozen


def build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's slot variables before `fit`: left to the first train step, their
    creation makes tf.function trace the train step twice (once to lift the new variables), which
    costs about as much as 20 epochs of a Dense head on cached features."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def train_and_evaluate(
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict, dict]:
    """Train on `train`, validate on `validation`; returns (model with the best epoch's weights,
    summary, history). `callbacks` are appended to the trainer's own (e.g. for tests)."""
    check_config(config)
    plan = plan_training(examples_dir, config)
    strategy = distribution_strategy()
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    with dtype_policy("mixed_float16" if plan.mixed else "float32"), strategy.scope():
        net = build_model(config, plan)
        resumed = prepare_checkpoints(output_dir, plan.run_key(config))
        paths = checkpoint_paths(output_dir)
        start_epoch = len(read_epoch_records(paths["epochs"]))
        _log_start(config, plan, strategy, start_epoch if resumed else None)
        train, val, feature_seconds = make_datasets(net, examples_dir, config, plan)
        head = net.get_layer(model_lib.HEAD)
        # Only the head changes unless fine-tuning, so the best checkpoint keeps only the head.
        target = net if plan.fine_tune else head
        best = BestCheckpoint(paths["best_weights"], paths["best_state"], target, config.monitor)
        phases = Phases(net, config, plan, output_dir, train, val, best, tuple(callbacks))
        head_epochs = phases.head()
        unfrozen = phases.fine_tune(head_epochs) if plan.fine_tune else []
        best_state = best.restore()
        trainable = model_lib.count_params(net.trainable_weights)

    history = history_from_records(read_epoch_records(paths["epochs"]))
    summary = training_summary(
        config,
        plan,
        strategy,
        history,
        best_state,
        start_epoch if resumed else None,
        feature_seconds,
        trainable,
        unfrozen,
    )
    return net, summary, history


def _log_start(
    config: TrainerConfig,
    plan: TrainingPlan,
    strategy: tf.distribute.Strategy,
    resumed_after: int | None,
) -> None:
    log.info(
        "training %s on %d train / %d validation images, %d classes, %dx%d: %s features, %s,"
        " %d replica(s)%s",
        config.backbone,
        plan.num_examples["train"],
        plan.num_examples["validation"],
        plan.num_classes,
        *plan.image_size,
        "cached" if plan.cached else "live",
        "mixed_float16" if plan.mixed else "float32",
        strategy.num_replicas_in_sync,
        f", resuming after epoch {resumed_after}" if resumed_after is not None else "",
    )


def cached_features(
    net: keras.Model,
    examples_dir: str,
    split: str,
    *,
    image_size: Sequence[int],
    batch_size: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One backbone pass over a split: (features, labels) as numpy arrays, reading order."""
    labels = np.asarray(inputs.split_labels(examples_dir, split))
    ds = inputs.make_dataset(
        examples_dir,
        split,
        image_size=image_size,
        batch_size=batch_size,
        num_classes=num_classes,
        num_examples=len(labels),
    )
    features = model_lib.feature_extractor(net).predict(ds.map(lambda x, y: x), verbose=0)
    labels = labels.astype(np.float32)[:, None] if num_classes == 2 else labels.astype(np.int32)
    return features, labels


def feature_dataset(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    training: bool,
    seed: int | None,
    repeat: bool,
) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size).prefetch(inputs.PREFETCH_BATCHES)
    return ds.with_options(inputs.fixed_parallelism_options())


def live_datasets(
    examples_dir: str, config: TrainerConfig, data: dict[str, Any], n_train: int, n_val: int
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Decoded (and, for train, augmented) images, the backbone runs every epoch."""
    train = inputs.make_dataset(
        examples_dir,
        "train",
        **data,
        training=True,
        augmentation=config.augmentation,
        shuffle_buffer=config.shuffle_buffer,
        shuffle_memory_mb=config.shuffle_memory_mb,
        seed=config.seed,
        repeat=bool(config.steps_per_epoch),
        num_examples=n_train,
    )
    val = inputs.make_dataset(
        examples_dir,
        "validation",
        **data,
        repeat=bool(config.validation_steps),
        num_examples=n_val,
    )
    return train, val


def cached_datasets(
    net: keras.Model, examples_dir: str, config: TrainerConfig, data: dict[str, Any]
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """One backbone pass over train and validation; the head then trains on these features."""
    bs = config.batch_size
    train_x, train_y = cached_features(net, examples_dir, "train", **data)
    val_x, val_y = cached_features(net, examples_dir, "validation", **data)
    train = feature_dataset(
        train_x,
        train_y,
        batch_size=bs,
        training=True,
        seed=config.seed,
        repeat=bool(config.steps_per_epoch),
    )
    val = feature_dataset(
        val_x, val_y, batch_size=bs, training=False, seed=None, repeat=bool(config.validation_steps)
    )
    return train, val


def split_size(examples_dir: str, split: str) -> int:
    """From stats.json when it knows, else by counting the records."""
    n = examples.num_examples(examples_dir, split)
    return n if n is not None else len(inputs.split_labels(examples_dir, split))


def history_from_records(records: dict[int, dict]) -> dict[str, list]:
    """Per-epoch records -> Keras-History-style lists: {"epoch": [1, 2, ...], "loss": [...]}."""
    ordered = [records[k] for k in sorted(records)]
    keys = []
    for record in ordered:
        keys += [k for k in record if k not in keys]
    return {k: [r.get(k) for r in ordered] for k in keys}


def _fingerprint(examples_dir: str) -> str | None:
    try:
        return examples.read_stats(examples_dir).get("fingerprint")
    except PipelineError:
        return None


# ---------------------------------------------------------------------------- outputs


def export_model(
    net: keras.Model, config: TrainerConfig, labels: list[str], examples_dir: str, output_dir: str
) -> str:
    """`<output_dir>/saved_model` with a few real training images as TF Serving warmup."""
    size = model_lib.image_size_for(config.backbone, config.image_size)
    backbone = net.get_layer(model_lib.BACKBONE)
    if any(layer.compute_dtype != "float32" for layer in backbone.layers):
        # Serve in float32: CPU servers have no fast float16 convolutions.
        with dtype_policy("float32"):
            clone = model_lib.create_model(dataclasses.replace(config, weights="none"), len(labels))
        clone.set_weights(net.get_weights())
        net = clone
    warmup = inputs.encoded_images(examples_dir, "train", NUM_WARMUP_IMAGES)
    path = artifacts.saved_model_dir(output_dir)
    return export.export_saved_model(
        net,
        path,
        labels,
        size,
        warmup_images=warmup,
        max_image_pixels=config.max_image_pixels,
        preprocessing={"backbone": config.backbone, "preprocess_input": "inside the model"},
    )


def library_versions() -> dict:
    return {
        "transfer_pipeline": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def run_trainer(
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
    """Train, export and write every Trainer artifact; returns the summary (also in
    training_config.json). See the module docstring for the layout. When TF_CONFIG names more
    than one worker, this process is one worker of a MultiWorkerMirroredStrategy group
    (distributed.py; only the chief writes the artifacts)."""
    from pipeline_components.trainer.cluster import multi_worker_cluster

    cluster = multi_worker_cluster()
    if cluster is not None:
        from pipeline_components.trainer import distributed

        return distributed.run_trainer(
            examples_dir, output_dir, config, cluster, callbacks=callbacks
        )
    net, summary, history = train_and_evaluate(
        examples_dir, output_dir, config, callbacks=callbacks
    )
    return write_outputs(net, summary, history, examples_dir, output_dir, config)


def write_outputs(
    net: keras.Model,
    summary: dict,
    history: dict,
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
) -> dict:
    """Export `net` and write history, plots and training_config.json (last); keeps only the
    best weights in checkpoints/. Returns the summary with the artifacts' paths."""
    t0 = time.perf_counter()
    saved_model = export_model(net, config, summary["labels"], examples_dir, output_dir)
    log.info("exported in %.1fs", time.perf_counter() - t0)

    def path(name: str) -> str:
        return fsutil.join(output_dir, name)

    fsutil.write_json(path(artifacts.HISTORY_JSON), history)
    plot_paths = plots.plot_training_curves(history, path(artifacts.PLOTS_DIR))
    summary["paths"] = {
        "saved_model": saved_model,
        "history": path(artifacts.HISTORY_JSON),
        "plots": plot_paths,
        "logs": path(artifacts.LOGS_DIR),
        "checkpoints": path(artifacts.CHECKPOINTS_DIR),
        "training_config": path(artifacts.TRAINING_CONFIG),
    }
    record = {
        "config": config_lib.to_dict(config),
        "labels": summary["labels"],
        "image_size": summary["image_size"],
        "head": {**summary["head"], "dropout": config.dropout},
        "data": {
            "examples": examples_dir,
            "fingerprint": summary["fingerprint"],
            "num_examples": summary["num_examples"],
        },
        "summary": summary,
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    fsutil.write_json(summary["paths"]["training_config"], record)
    finish_checkpoints(output_dir)
    return summary


def training_summary(
    config: TrainerConfig,
    plan: Any,
    strategy: tf.distribute.Strategy,
    history: dict,
    best_state: dict | None,
    resumed_from_epoch: int | None,
    feature_seconds: float | None,
    trainable: int,
    unfrozen: list,
) -> dict[str, Any]:
    """The Trainer's summary (training_summary.json), one definition for one and many workers."""
    rates = history.get("images_per_sec") or [0.0]
    return {
        "epochs_run": len(history.get("epoch", [])),
        "resumed_from_epoch": resumed_from_epoch,
        "best_epoch": best_state["epoch"] if best_state else None,
        "monitor": config.monitor,
        "best": best_state,
        "final": {k: history[k][-1] for k in METRICS if history.get(k)},
        "cached_features": plan.cached,
        "feature_cache_seconds": feature_seconds,
        "images_per_sec": statistics.median(rates[1:] or rates),  # the first epoch traces
        "mixed_precision": plan.mixed,
        "replicas": strategy.num_replicas_in_sync,
        "image_size": list(plan.image_size),
        "num_classes": plan.num_classes,
        "labels": plan.labels,
        "head": {"pooling": config.head, "activation": model_lib.head_type(plan.num_classes)},
        "trainable_params": trainable,
        "fine_tuned_layers": unfrozen,
        "num_examples": plan.num_examples,
        "fingerprint": plan.fingerprint,
    }
