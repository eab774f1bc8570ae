"""The Trainer's executor: transfer learning on ExampleGen's TFRecords, exported as a SavedModel
that carries its own decoding and preprocessing (docs/ARCHITECTURE.md "Model").

`run_trainer(examples_dir, output_dir, config)` picks the runtime (one process, or one worker of a
multi-worker group when TF_CONFIG names several), trains with the one skeleton
(`training.train_and_evaluate`), and writes `saved_model/`, `history.json`, `history.csv`,
`plots/`, `logs/` (TensorBoard), `checkpoints/` and `training_config.json` (written last); in a
group only the chief writes. A killed run rerun with the same config and data resumes at the last
finished epoch from `checkpoints/`.

The package: training.py (the skeleton), plan.py (config checks and the plan), runtime.py (the
runtimes' interface), fit.py (one process: Keras `fit`), distributed.py and steps.py (multi-worker:
the custom loop), cluster.py (TF_CONFIG, the local launcher), datasets.py, inputs.py and
augment.py (input pipelines), model.py, export.py (serving signatures), callbacks.py,
checkpoints.py (resume), plots.py.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline_components import __version__
from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core import config as config_lib
from pipeline_components.trainer import distributed, export, inputs, plots, training
from pipeline_components.trainer import model as model_lib
from pipeline_components.trainer.checkpoints import finish_checkpoints
from pipeline_components.trainer.cluster import multi_worker_cluster
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.fit import OneProcess
from pipeline_components.trainer.hyperparameters import apply as apply_hyperparameters
from pipeline_components.trainer.runtime import Runtime

log = logging.getLogger(__name__)

NUM_WARMUP_IMAGES = 3


def run_trainer(
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    features: str | None = None,
    hyperparameters: str | None = None,
) -> dict[str, Any]:
    """Train, export and write every Trainer artifact; returns the summary (also in
    training_config.json). See the module docstring for the layout. When TF_CONFIG names more
    than one worker, this process is one worker of a MultiWorkerMirroredStrategy group
    (distributed.py): only the chief writes the artifacts, the others' summary has
    `paths: None`. `features`: FeatureGen's artifact to train the head on (no backbone pass);
    `hyperparameters`: the Tuner's best_hyperparameters.json, whose values override `config`
    (recorded as the summary's `hyperparameters`)."""
    tuned = None
    if hyperparameters:
        config, tuned = apply_hyperparameters(config, hyperparameters)
        log.info(
            "trainer options from the tuner's best hyperparameters (%s): %s (replacing %s)",
            hyperparameters,
            tuned["applied"],
            tuned["replaced"],
        )
    cluster = multi_worker_cluster()
    runtime: Runtime
    if cluster is None:
        runtime = OneProcess(output_dir)
    else:
        runtime = distributed.MultiWorker.join(output_dir, cluster)
    with runtime:
        net, summary, history = training.train_and_evaluate(
            examples_dir, config, runtime, callbacks=callbacks, features=features
        )
        summary["hyperparameters"] = tuned
        summary["paths"] = None
        if runtime.is_chief:
            model = runtime.exportable(net, config, summary["num_classes"])
            summary = write_outputs(model, summary, history, examples_dir, output_dir, config)
        runtime.finish()
    return summary


def export_model(
    net: keras.Model, config: TrainerConfig, labels: list[str], examples_dir: str, output_dir: str
) -> str:
    """`<output_dir>/saved_model` with a few real training images as TF Serving warmup."""
    size = model_lib.image_size_for(config.backbone, config.image_size)
    backbone = net.get_layer(model_lib.BACKBONE)
    if any(layer.compute_dtype != "float32" for layer in backbone.layers):
        # Serve in float32: CPU servers have no fast float16 convolutions.
        net = model_lib.float32_copy(net, config, len(labels))
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
        exif_transpose=examples.exif_transpose(examples_dir),
    )


def library_versions() -> dict[str, str]:
    return {
        "transfer_pipeline": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
    }


def write_outputs(
    net: keras.Model,
    summary: dict[str, Any],
    history: dict[str, list],
    examples_dir: str,
    output_dir: str,
    config: TrainerConfig,
) -> dict[str, Any]:
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
        "config": config_lib.to_dict(config),  # with the tuner's values, when it had some
        "hyperparameters": summary.get("hyperparameters"),
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
