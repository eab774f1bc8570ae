"""The training skeleton: one run of the Trainer, step by step, the same for both runtimes
(runtime.py: `fit.OneProcess`, `distributed.MultiWorker`; executor.py picks one).

    check the config -> plan (plan.py) -> [runtime checks] -> seed -> dtype policy
    -> build the model (in the strategy's scope) -> prepare checkpoints/ (resume or start over)
    -> datasets (live images, or backbone features cached once) -> best checkpoint
    -> head phase -> [fine-tuning phase: unfreeze from trainer.fine_tune_from]
    -> restore the best epoch's weights -> history (from the per-epoch records) -> summary

The runtime decides how a phase trains (Keras `fit`, or the multi-worker custom loop), where this
process writes and how it resumes; the per-epoch record, the best checkpoint and early stopping
on `trainer.monitor` (runtime.Run.callbacks), the history and the summary are made here, once.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from typing import Any

import keras

from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.callbacks import METRICS, BestCheckpoint, read_epoch_records
from pipeline_components.trainer.checkpoints import checkpoint_paths
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.plan import TrainingPlan, check_config, plan_training
from pipeline_components.trainer.runtime import Run, Runtime

log = logging.getLogger(__name__)


def train_and_evaluate(
    examples_dir: str,
    config: TrainerConfig,
    runtime: Runtime,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    features: str | None = None,
) -> tuple[keras.Model, dict[str, Any], dict[str, list]]:
    """Train on `train`, validate on `validation`; returns (model with the best epoch's weights,
    summary, history). `callbacks` are appended to the trainer's own (e.g. for tests);
    `features`, a Features artifact to train the head on. The records and best weights are in
    `runtime.write_dir`."""
    with runtime.scope():
        check_config(config)
        plan = plan_training(examples_dir, config, features)
        runtime.check(config, plan)
        if config.seed is not None:
            keras.utils.set_random_seed(config.seed)
        with model_lib.dtype_policy(plan.dtype_policy):
            with runtime.strategy.scope():
                net = build_model(config, plan)
            runtime.prepare(plan.run_key(config))
            log_start(config, plan, runtime)
            train, val, feature_seconds = runtime.datasets(net, examples_dir, config, plan)
            best = best_checkpoint(net, config, plan, runtime.write_dir)
            run = Run(net, config, plan, runtime.write_dir, train, val, best, tuple(callbacks))
            unfrozen = train_phases(run, runtime)
            best_state = best.restore()
            trainable = model_lib.count_params(net.trainable_weights)
        records = read_epoch_records(checkpoint_paths(run.write_dir)["epochs"])
        history = history_from_records(records)
        summary = training_summary(
            config,
            plan,
            runtime.strategy.num_replicas_in_sync,
            history,
            best_state,
            runtime.resumed_from_epoch,
            feature_seconds,
            trainable,
            unfrozen,
        )
    return net, {**summary, **runtime.summary_fields()}, history


def build_model(config: TrainerConfig, plan: TrainingPlan) -> keras.Model:
    """Built before anything is written: a bad weights file or layer name leaves no trace."""
    net = model_lib.create_model(config, plan.num_classes)
    if config.fine_tune_from:
        model_lib.check_layer_name(net, config.fine_tune_from)
    return net


def best_checkpoint(
    net: keras.Model, config: TrainerConfig, plan: TrainingPlan, write_dir: str
) -> BestCheckpoint:
    """The best epoch's weights by `trainer.monitor`. Only the head changes unless fine-tuning,
    so then it keeps only the head."""
    paths = checkpoint_paths(write_dir)
    target = net if plan.fine_tune else net.get_layer(model_lib.HEAD)
    return BestCheckpoint(paths["best_weights"], paths["best_state"], target, config.monitor)


def train_phases(run: Run, runtime: Runtime) -> list[str]:
    """The head phase (the head alone on cached features, else the whole frozen model), then
    the optional fine-tuning phase; returns the names of the layers fine-tuning unfroze."""
    config, net = run.config, run.net
    head_model = net.get_layer(model_lib.HEAD) if run.plan.cached else net
    head_epochs = runtime.phase(run, "head", head_model, config.learning_rate, 0, config.epochs)
    if not run.plan.fine_tune:
        return []
    assert config.fine_tune_from  # plan.fine_tune: fine_tune_from is set
    unfrozen = model_lib.unfreeze_from(net, config.fine_tune_from)
    last = head_epochs + config.fine_tune_epochs
    runtime.phase(run, "fine_tune", net, config.fine_tune_learning_rate, head_epochs, last)
    return unfrozen


def log_start(config: TrainerConfig, plan: TrainingPlan, runtime: Runtime) -> None:
    prefix, suffix = runtime.describe(config)
    log.info(
        "%straining %s on %d train / %d validation images, %d classes, %dx%d: %s features, %s%s",
        prefix,
        config.backbone,
        plan.num_examples["train"],
        plan.num_examples["validation"],
        plan.num_classes,
        *plan.image_size,
        "cached" if plan.cached else "live",
        plan.dtype_policy,
        suffix,
    )


def history_from_records(records: dict[int, dict]) -> dict[str, list]:
    """Per-epoch records -> Keras-History-style lists: {"epoch": [1, 2, ...], "loss": [...]}."""
    ordered = [records[k] for k in sorted(records)]
    keys = []
    for record in ordered:
        keys += [k for k in record if k not in keys]
    return {k: [r.get(k) for r in ordered] for k in keys}


def training_summary(
    config: TrainerConfig,
    plan: TrainingPlan,
    replicas: int,
    history: dict,
    best_state: dict | None,
    resumed_from_epoch: int | None,
    feature_seconds: float | None,
    trainable: int,
    unfrozen: list,
) -> dict[str, Any]:
    """The Trainer's summary (in training_config.json), one definition for every runtime."""
    rates = history.get("images_per_sec") or [0.0]
    return {
        "epochs_run": len(history.get("epoch", [])),
        "resumed_from_epoch": resumed_from_epoch,
        "best_epoch": best_state["epoch"] if best_state else None,
        "monitor": config.monitor,
        "best": best_state,
        "final": {k: history[k][-1] for k in METRICS if history.get(k)},
        "cached_features": plan.cached,
        "features": plan.features,  # FeatureGen's artifact it trained on (None: its own)
        "feature_cache_seconds": feature_seconds,
        "images_per_sec": statistics.median(rates[1:] or rates),  # the first epoch traces
        "mixed_precision": plan.mixed,
        "replicas": replicas,
        "image_size": list(plan.image_size),
        "exif_transpose": plan.exif_transpose,
        "num_classes": plan.num_classes,
        "labels": plan.labels,
        "head": {"pooling": config.head, "activation": model_lib.head_type(plan.num_classes)},
        "trainable_params": trainable,
        "fine_tuned_layers": unfrozen,
        "num_examples": plan.num_examples,
        "fingerprint": plan.fingerprint,
    }
