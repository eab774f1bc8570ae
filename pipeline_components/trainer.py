"""Trainer: transfer learning on ExampleGen's TFRecords, exported as a SavedModel that carries its
own decoding and preprocessing (DESIGN.md "Trainer output").

    transfer-pipeline train --examples O --output T [--config pipeline.yaml] [key=value ...]

`run_trainer(examples_dir, output_dir, config)` trains (`train_and_evaluate`) and writes
`saved_model/`, `history.json`, `history.csv`, `plots/`, `logs/` (TensorBoard), `checkpoints/` and
`training_config.json` (written last). A killed run rerun with the same config and data resumes
at the last finished epoch from `checkpoints/`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import logging
import platform
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline_components import __version__, examples, export, fsutil, inputs, plots
from pipeline_components import config as config_lib
from pipeline_components import model as model_lib
from pipeline_components.config import TrainerConfig
from pipeline_components.errors import PipelineError

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
def dtype_policy(name: str):
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


# ---------------------------------------------------------------------------- callbacks


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """A model's get_weights() as .npz bytes (checkpoints/*.weights.npz)."""
    buf = io.BytesIO()
    np.savez(buf, *weights)
    return buf.getvalue()


def weights_from_bytes(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


class EpochLog(keras.callbacks.Callback):
    """Adds `images_per_sec` (training part of the epoch) to the logs, logs one line per epoch and
    persists every finished epoch to a JSON file, so a resumed run's history has all epochs.
    Must come before the callbacks that record logs (CsvHistory, ScalarLogger)."""

    def __init__(self, path: str, images_per_epoch: int, phase: str, total_epochs: int):
        super().__init__()
        self.path, self.images, self.phase, self.total = path, images_per_epoch, phase, total_epochs
        self.records = read_epoch_records(path)
        self._t0 = self._train_seconds = None

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._train_seconds = time.perf_counter(), None

    def on_test_begin(self, logs=None):  # validation starts: the training part is over
        if self._t0 is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._t0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._t0
        logs["images_per_sec"] = self.images / max(self._train_seconds or seconds, 1e-9)
        record = {"epoch": epoch + 1, "phase": self.phase, "seconds": round(seconds, 3)}
        record.update({k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
        self.records[epoch + 1] = record
        fsutil.write_json(self.path, [self.records[k] for k in sorted(self.records)])
        log.info(
            "epoch %d/%d (%s): %s, %.0f images/s",
            epoch + 1,
            self.total,
            self.phase,
            ", ".join(f"{k}={logs[k]:.4f}" for k in _METRICS if k in logs),
            logs["images_per_sec"],
        )


_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class CsvHistory(keras.callbacks.Callback):
    """`history.csv` in keras.callbacks.CSVLogger's columns (epoch from 0, then the logged
    scalars sorted), rewritten whole through a temporary file at every epoch end. CSVLogger needs
    a Python file object (it checks `.closed`, which GFile lacks) and appends in place, which
    object stores cannot do; a resumed run's rows replace the epochs they repeat."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.rows: dict[int, dict] = {}
        if fsutil.exists(path):
            for row in csv.DictReader(io.StringIO(fsutil.read_text(path))):
                self.rows[int(row["epoch"])] = row

    def on_epoch_end(self, epoch, logs=None):
        row = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        self.rows[epoch] = {"epoch": epoch, **row}
        keys = sorted({k for r in self.rows.values() for k in r} - {"epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["epoch", *keys], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows[e] for e in sorted(self.rows))
        fsutil.write_atomic(self.path, out.getvalue())


class ScalarLogger(keras.callbacks.Callback):
    """Per-epoch scalars as TensorBoard event files, in keras.callbacks.TensorBoard's layout
    (`logs/train`, `logs/validation`, tags `epoch_<metric>`). Written with TensorFlow's own
    summary ops, because TensorFlow 2.21 no longer installs the `tensorboard` package that
    keras.callbacks.TensorBoard needs; viewing still needs `tensorboard --logdir logs`."""

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, name: str):
        if name not in self._writers:
            path = fsutil.join(self.log_dir, name)
            self._writers[name] = tf.summary.create_file_writer(path)
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        from tensorflow.core.framework import summary_pb2

        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        for key, value in (logs or {}).items():
            if np.ndim(value) != 0:
                continue
            split, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.write(
                    f"epoch_{tag}", tf.constant(float(value)), step=epoch, metadata=meta
                )

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def read_epoch_records(path: str) -> dict[int, dict]:
    if not fsutil.exists(path):
        return {}
    return {int(r["epoch"]): r for r in fsutil.read_json(path, "epoch log")}


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of `target` from the epoch with the best val_accuracy (ties: lower
    val_loss; tiny validation sets tie often). Unlike ModelCheckpoint it remembers the best value
    across a resume, and it saves only `target` (the head, when the backbone stays frozen)."""

    def __init__(self, weights_path: str, state_path: str, target: keras.Model):
        super().__init__()
        self.weights_path, self.state_path, self.target = weights_path, state_path, target
        self.best = fsutil.read_json(state_path) if fsutil.exists(state_path) else None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_accuracy" not in logs:
            return
        acc, loss = float(logs["val_accuracy"]), float(logs.get("val_loss", np.inf))
        if self.best is not None and (acc, -loss) <= (
            self.best["val_accuracy"],
            -self.best["val_loss"],
        ):
            return
        fsutil.write_atomic(self.weights_path, weights_to_bytes(self.target.get_weights()))
        self.best = {"epoch": epoch + 1, "val_accuracy": acc, "val_loss": loss}
        fsutil.write_json(self.state_path, self.best)

    def restore(self) -> dict | None:
        """Load the best weights into `target`; returns {epoch, val_accuracy, val_loss}."""
        if self.best is None or not fsutil.exists(self.weights_path):
            return None
        self.target.set_weights(weights_from_bytes(fsutil.read_bytes(self.weights_path)))
        return self.best


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_paths(output_dir: str) -> dict[str, str]:
    ckpt = fsutil.join(output_dir, "checkpoints")
    return {
        "dir": ckpt,
        "run_state": fsutil.join(ckpt, "run_state.json"),
        "epochs": fsutil.join(ckpt, "epochs.json"),
        "best_weights": fsutil.join(ckpt, "best.weights.npz"),
        "best_state": fsutil.join(ckpt, "best.json"),
        "head_done": fsutil.join(ckpt, "head_phase_done.json"),
        "head_weights": fsutil.join(ckpt, "head_phase.weights.npz"),
        "backup_head": fsutil.join(ckpt, "backup_head"),
        "backup_fine_tune": fsutil.join(ckpt, "backup_fine_tune"),
    }


def prepare_checkpoints(output_dir: str, run_key: dict) -> bool:
    """True when `checkpoints/` holds an unfinished run of the same config and data (resume);
    otherwise clears checkpoints and the logs of any earlier run and starts fresh."""
    paths = checkpoint_paths(output_dir)
    if fsutil.exists(paths["run_state"]):
        try:
            previous = fsutil.read_json(paths["run_state"], "checkpoint state")
        except PipelineError:
            previous = None
        if previous == json.loads(json.dumps(run_key)):
            return True
        log.info("checkpoints in %s are from another config or data; starting over", paths["dir"])
    for stale in (paths["dir"], fsutil.join(output_dir, "logs")):
        fsutil.rmtree(stale)
    history_csv = fsutil.join(output_dir, "history.csv")
    if fsutil.exists(history_csv):
        fsutil.gfile().remove(history_csv)
    fsutil.makedirs(paths["dir"])
    fsutil.write_json(paths["run_state"], run_key)
    return False


def finish_checkpoints(output_dir: str) -> None:
    """After a complete run keep only the best weights; the resume state goes."""
    paths = checkpoint_paths(output_dir)
    for key in ("backup_head", "backup_fine_tune"):
        fsutil.rmtree(paths[key])
    for key in ("run_state", "epochs", "head_done", "head_weights"):
        if fsutil.exists(paths[key]):
            fsutil.gfile().remove(paths[key])


# ---------------------------------------------------------------------------- training


def _fit(fit_model, train, val, *, epochs, initial_epoch, steps, val_steps, callbacks):
    fit_model._initial_epoch = None  # set by a previous BackupAndRestore restore; reset per phase
    fit_model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        validation_steps=val_steps,
        callbacks=callbacks,
        shuffle=False,  # the tf.data pipeline shuffles
        verbose=0,
    )


def _callbacks(output_dir, config, *, phase, images_per_epoch, total_epochs, best, extra):
    paths = checkpoint_paths(output_dir)
    callbacks = [
        EpochLog(paths["epochs"], images_per_epoch, phase, total_epochs),
        best,
        keras.callbacks.BackupAndRestore(
            paths[f"backup_{phase}"], double_checkpoint=True, delete_checkpoint=False
        ),
        CsvHistory(fsutil.join(output_dir, "history.csv")),
        ScalarLogger(fsutil.join(output_dir, "logs")),
    ]
    if config.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=config.early_stopping_patience
            )
        )
    return callbacks + list(extra)


def cached_features(net, examples_dir, split, *, image_size, batch_size, num_classes):
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


def feature_dataset(features, labels, *, batch_size, training, seed, repeat):
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if training:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_and_evaluate(
    examples_dir: str, output_dir: str, config: TrainerConfig, *, callbacks=()
) -> tuple[keras.Model, dict, dict]:
    """Train on `train`, validate on `validation`; returns (model with the best epoch's weights,
    summary, history). `callbacks` are appended to the trainer's own (e.g. for tests)."""
    check_config(config)
    labels = examples.read_labels(examples_dir)
    num_classes = len(labels)
    size = model_lib.image_size_for(config.backbone, config.image_size)
    n_train, n_val = split_size(examples_dir, "train"), split_size(examples_dir, "validation")
    if n_train == 0 or n_val == 0:
        raise PipelineError(f"{examples_dir}: the train and validation splits must not be empty")
    cached = use_cached_features(config)
    mixed = use_mixed_precision(config)
    strategy = distribution_strategy()
    fine_tune = bool(config.fine_tune_from) and config.fine_tune_epochs > 0
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    with dtype_policy("mixed_float16" if mixed else "float32"), strategy.scope():
        # Built before anything is written: a bad weights file or layer name leaves no trace.
        net = model_lib.create_model(config, num_classes)
        if config.fine_tune_from:
            model_lib.check_layer_name(net, config.fine_tune_from)
        fingerprint = _fingerprint(examples_dir)
        run_key = {
            "config": config_lib.to_dict(config),
            "labels": labels,
            "fingerprint": fingerprint,
            "data": {"train": n_train, "validation": n_val},
        }
        resumed = prepare_checkpoints(output_dir, run_key)
        paths = checkpoint_paths(output_dir)
        start_epoch = len(read_epoch_records(paths["epochs"]))
        log.info(
            "training %s on %d train / %d validation images, %d classes, %dx%d: %s features, %s,"
            " %d replica(s)%s",
            config.backbone,
            n_train,
            n_val,
            num_classes,
            *size,
            "cached" if cached else "live",
            "mixed_float16" if mixed else "float32",
            strategy.num_replicas_in_sync,
            f", resuming after epoch {start_epoch}" if resumed else "",
        )
        data = {"image_size": size, "batch_size": config.batch_size, "num_classes": num_classes}
        feature_seconds = None
        if cached:
            t0 = time.perf_counter()
            train, val = cached_datasets(net, examples_dir, config, data)
            feature_seconds = time.perf_counter() - t0
            log.info(
                "backbone features of %d images cached in %.1fs", n_train + n_val, feature_seconds
            )
        else:
            train, val = live_datasets(examples_dir, config, data, n_train, n_val)
        head = net.get_layer(model_lib.HEAD)
        fit_model = head if cached else net
        # Only the head changes unless fine-tuning, so the best checkpoint keeps only the head.
        best = BestCheckpoint(
            paths["best_weights"], paths["best_state"], net if fine_tune else head
        )
        steps = config.steps_per_epoch
        common = {
            "images_per_epoch": steps * config.batch_size if steps else n_train,
            "total_epochs": config.epochs + (config.fine_tune_epochs if fine_tune else 0),
            "best": best,
            "extra": callbacks,
        }
        fit = {"steps": steps, "val_steps": config.validation_steps}

        if fsutil.exists(paths["head_done"]):  # resumed after the head phase had finished
            head_epochs = int(fsutil.read_json(paths["head_done"])["epochs"])
            head.set_weights(weights_from_bytes(fsutil.read_bytes(paths["head_weights"])))
        else:
            model_lib.compile_model(fit_model, num_classes, config.optimizer, config.learning_rate)
            cbs = _callbacks(output_dir, config, phase="head", **common)
            _fit(fit_model, train, val, epochs=config.epochs, initial_epoch=0, callbacks=cbs, **fit)
            records = read_epoch_records(paths["epochs"])
            head_epochs = max((e for e, r in records.items() if r["phase"] == "head"), default=0)
            if fine_tune:
                fsutil.write_atomic(paths["head_weights"], weights_to_bytes(head.get_weights()))
                fsutil.write_json(paths["head_done"], {"epochs": head_epochs})

        unfrozen = []
        if fine_tune:
            unfrozen = model_lib.unfreeze_from(net, config.fine_tune_from)
            model_lib.compile_model(
                net, num_classes, config.optimizer, config.fine_tune_learning_rate
            )
            cbs = _callbacks(output_dir, config, phase="fine_tune", **common)
            end = head_epochs + config.fine_tune_epochs
            _fit(net, train, val, epochs=end, initial_epoch=head_epochs, callbacks=cbs, **fit)
        best_state = best.restore()
        trainable = model_lib.count_params(net.trainable_weights)

    records = read_epoch_records(paths["epochs"])
    history = history_from_records(records)
    rates = history.get("images_per_sec") or [0.0]
    summary = {
        "epochs_run": len(records),
        "resumed_from_epoch": start_epoch if resumed else None,
        "best_epoch": best_state["epoch"] if best_state else None,
        "best": best_state,
        "final": {k: history[k][-1] for k in _METRICS if history.get(k)},
        "cached_features": cached,
        "feature_cache_seconds": feature_seconds,
        "images_per_sec": statistics.median(rates[1:] or rates),  # the first epoch traces
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "image_size": list(size),
        "num_classes": num_classes,
        "labels": labels,
        "head": {"pooling": config.head, "activation": model_lib.head_type(num_classes)},
        "trainable_params": trainable,
        "fine_tuned_layers": unfrozen,
        "num_examples": {"train": n_train, "validation": n_val},
        "fingerprint": fingerprint,
    }
    return net, summary, history


def live_datasets(examples_dir, config, data, n_train, n_val):
    """Decoded (and, for train, augmented) images, the backbone runs every epoch."""
    train = inputs.make_dataset(
        examples_dir,
        "train",
        **data,
        training=True,
        augmentation=config.augmentation,
        shuffle_buffer=config.shuffle_buffer,
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


def cached_datasets(net, examples_dir, config, data):
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


def _fingerprint(examples_dir: str):
    try:
        return examples.read_stats(examples_dir).get("fingerprint")
    except PipelineError:
        return None


# ---------------------------------------------------------------------------- outputs


def export_model(net, config: TrainerConfig, labels, examples_dir: str, output_dir: str) -> str:
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
    path = fsutil.join(output_dir, "saved_model")
    return export.export_saved_model(net, path, labels, size, warmup_images=warmup)


def library_versions() -> dict:
    return {
        "transfer_pipeline": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def run_trainer(examples_dir: str, output_dir: str, config: TrainerConfig, *, callbacks=()) -> dict:
    """Train, export and write every Trainer artifact; returns the summary (also in
    training_config.json). See the module docstring for the layout."""
    net, summary, history = train_and_evaluate(
        examples_dir, output_dir, config, callbacks=callbacks
    )
    t0 = time.perf_counter()
    saved_model = export_model(net, config, summary["labels"], examples_dir, output_dir)
    log.info("exported in %.1fs", time.perf_counter() - t0)
    fsutil.write_json(fsutil.join(output_dir, "history.json"), history)
    plot_paths = plots.plot_training_curves(history, fsutil.join(output_dir, "plots"))
    summary["paths"] = {
        "saved_model": saved_model,
        "history": fsutil.join(output_dir, "history.json"),
        "plots": plot_paths,
        "logs": fsutil.join(output_dir, "logs"),
        "checkpoints": fsutil.join(output_dir, "checkpoints"),
        "training_config": fsutil.join(output_dir, "training_config.json"),
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


# ---------------------------------------------------------------------------- CLI


def _qualify(override: str) -> str:
    """`epochs=2` means `trainer.epochs=2`; keys naming a top-level section stay as they are."""
    key = override.split("=", 1)[0].strip()
    sections = {f.name for f in dataclasses.fields(config_lib.PipelineConfig)}
    return (
        override if "=" not in override or key.split(".")[0] in sections else f"trainer.{override}"
    )


def load_trainer_config(path: str | None, overrides: list[str]) -> TrainerConfig:
    data = config_lib.load_yaml(path) if path else {}
    config_lib.apply_overrides(data, [_qualify(o) for o in overrides])
    trainer = config_lib.from_dict(data, source=path or "config").trainer
    check_config(trainer)
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transfer-pipeline train",
        description="Train the transfer-learning model on ExampleGen output; export a SavedModel.",
        epilog="overrides: key=value, YAML values; bare keys mean trainer.*, e.g. "
        "epochs=2 image_size=[32,32] weights=none augmentation=null",
    )
    parser.add_argument("--examples", required=True, help="ExampleGen output directory")
    parser.add_argument("--output", required=True, help="Trainer output directory")
    parser.add_argument("--config", help="pipeline.yaml (its trainer: section is used)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_trainer_config(args.config, args.overrides)
    summary = run_trainer(args.examples, args.output, config)
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    print(
        f"trained {summary['epochs_run']} epochs ({final}; best epoch {summary['best_epoch']});"
        f" SavedModel at {summary['paths']['saved_model']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
