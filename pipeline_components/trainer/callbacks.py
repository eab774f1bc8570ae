"""Keras callbacks of the Trainer: per-epoch log and images/s, TensorBoard scalars, and the best
epoch's weights (the ones that are exported)."""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline_components.core import fsutil
from pipeline_components.core.logs import progress

log = logging.getLogger(__name__)
# A line at least this often while an epoch runs (and one at its end).
PROGRESS_INTERVAL_SECONDS = 10.0


def weights_to_bytes(weights: list[np.ndarray]) -> bytes:
    """A model's get_weights() as .npz bytes (checkpoints/*.weights.npz)."""
    buf = io.BytesIO()
    np.savez(buf, *weights)
    return buf.getvalue()


def weights_from_bytes(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


class EpochLog(keras.callbacks.Callback):
    """Adds `images_per_sec` (training part of the epoch) to the logs, logs one progress line per
    epoch (its metrics and time; core/logs.py) and, in a long epoch, one every
    PROGRESS_INTERVAL_SECONDS with the steps done; persists every finished epoch to a JSON file,
    so a resumed run's history has all epochs. Must come before the callbacks that record logs
    (CsvHistory, ScalarLogger)."""

    def __init__(
        self,
        path: str,
        images_per_epoch: int,
        phase: str,
        total_epochs: int,
        steps_per_epoch: int | None = None,
        interval: float = PROGRESS_INTERVAL_SECONDS,
    ) -> None:
        super().__init__()
        self.path, self.images, self.phase, self.total = path, images_per_epoch, phase, total_epochs
        self.steps, self.interval = steps_per_epoch, interval
        self.records = read_epoch_records(path)
        self._t0: float | None = None
        self._train_seconds: float | None = None
        self._epoch = 0
        self._last_line = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t0, self._train_seconds = time.perf_counter(), None
        self._epoch, self._last_line = epoch + 1, self._t0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        if now - self._last_line < self.interval:
            return
        self._last_line = now
        of = f"/{self.steps}" if self.steps else ""
        loss = (logs or {}).get("loss")
        shown = f", loss={float(loss):.4f}" if loss is not None else ""
        progress(
            log,
            f"epoch {self._epoch}/{self.total} ({self.phase}): step {batch + 1}{of}{shown}",
            event="step",
            phase=self.phase,
            epoch=self._epoch,
            epochs=self.total,
            step=batch + 1,
            steps=self.steps,
        )

    def on_test_begin(
        self, logs: dict[str, Any] | None = None
    ) -> None:  # validation starts: the training part is over
        if self._t0 is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._t0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        assert self._t0 is not None  # Keras calls on_epoch_begin first
        seconds = time.perf_counter() - self._t0
        logs["images_per_sec"] = self.images / max(self._train_seconds or seconds, 1e-9)
        record = {"epoch": epoch + 1, "phase": self.phase, "seconds": round(seconds, 3)}
        record.update({k: float(v) for k, v in logs.items() if np.ndim(v) == 0})
        self.records[epoch + 1] = record
        fsutil.write_json(self.path, [self.records[k] for k in sorted(self.records)])
        metrics = {k: round(float(logs[k]), 4) for k in METRICS if k in logs}
        progress(
            log,
            f"epoch {epoch + 1}/{self.total} ({self.phase}): "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            + f" in {seconds:.1f}s, {logs['images_per_sec']:.0f} images/s",
            event="epoch",
            phase=self.phase,
            epoch=epoch + 1,
            epochs=self.total,
            seconds=round(seconds, 2),
            images_per_sec=round(float(logs["images_per_sec"]), 1),
            **metrics,
        )


METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class CsvHistory(keras.callbacks.Callback):
    """`history.csv` in keras.callbacks.CSVLogger's columns (epoch from 0, then the logged
    scalars sorted), rewritten whole through a temporary file at every epoch end. CSVLogger needs
    a Python file object (it checks `.closed`, which GFile lacks) and appends in place, which
    object stores cannot do; a resumed run's rows replace the epochs they repeat."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.rows: dict[int, dict[str, Any]] = {}
        if fsutil.exists(path):
            for row in csv.DictReader(io.StringIO(fsutil.read_text(path))):
                self.rows[int(row["epoch"])] = row

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
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

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def _writer(self, name: str) -> tf.summary.SummaryWriter:
        if name not in self._writers:
            path = fsutil.join(self.log_dir, name)
            self._writers[name] = tf.summary.create_file_writer(path)
        return self._writers[name]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
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

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def read_epoch_records(path: str) -> dict[int, dict[str, Any]]:
    if not fsutil.exists(path):
        return {}
    return {int(r["epoch"]): r for r in fsutil.read_json(path, "epoch log")}


# trainer.monitor: the value EarlyStopping watches and the best epoch is chosen by, and whether
# higher or lower is better (Keras' `mode`).
MONITOR_MODES = {"val_accuracy": "max", "val_loss": "min"}


def monitor_score(monitor: str, val_accuracy: float, val_loss: float) -> tuple[float, float]:
    """Higher is better: the monitored value first, the other one breaks ties (tiny validation
    sets tie often on accuracy)."""
    if MONITOR_MODES[monitor] == "max":
        return val_accuracy, -val_loss
    return -val_loss, val_accuracy


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of `target` from the epoch with the best `monitor` (val_accuracy, ties:
    lower val_loss; or val_loss, ties: higher val_accuracy), the same value EarlyStopping
    watches. Unlike ModelCheckpoint it remembers the best value across a resume, and it saves
    only `target` (the head, when the backbone stays frozen)."""

    def __init__(
        self, weights_path: str, state_path: str, target: keras.Model, monitor: str = "val_accuracy"
    ) -> None:
        super().__init__()
        self.weights_path, self.state_path, self.target = weights_path, state_path, target
        self.monitor = monitor
        self.best = fsutil.read_json(state_path) if fsutil.exists(state_path) else None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            return
        acc = float(logs.get("val_accuracy", -np.inf))
        loss = float(logs.get("val_loss", np.inf))
        if self.best is not None and monitor_score(self.monitor, acc, loss) <= monitor_score(
            self.monitor, self.best["val_accuracy"], self.best["val_loss"]
        ):
            return
        fsutil.write_atomic(self.weights_path, weights_to_bytes(self.target.get_weights()))
        self.best = {"epoch": epoch + 1, "val_accuracy": acc, "val_loss": loss}
        fsutil.write_json(self.state_path, self.best)

    def restore(self) -> dict[str, Any] | None:
        """Load the best weights into `target`; returns {epoch, val_accuracy, val_loss}."""
        if self.best is None or not fsutil.exists(self.weights_path):
            return None
        self.target.set_weights(weights_from_bytes(fsutil.read_bytes(self.weights_path)))
        return self.best
