"""The Tuner's executor: a KerasTuner search over the head's hyperparameters (search.py), on
FeatureGen's features (streamed: a trial is seconds of head training) or on images when there
are none (augmentation or fine-tuning on: every step runs the backbone, and the search says how
much slower that is).

`run_tuner(...)` runs the search in this process, or this process's part of a group (launch.py:
the chief holds the oracle and writes the output, a worker runs trials and writes nothing).
KerasTuner's state lives in `work_dir(output_dir)`, a hidden sibling of the output that every
process of a group computes alike (on storage they all reach); it is removed when the search
ends, and a crashed search's is collected by the next run (its name is a temporary's:
orchestration/gc.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.config import key_fields
from pipeline_components.core.errors import PipelineError
from pipeline_components.features import files
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.hyperparameters import TUNABLE
from pipeline_components.tuner import launch, search
from pipeline_components.tuner.config import TunerConfig

log = logging.getLogger(__name__)

# What a trial on features takes from `trainer:` besides the searched keys: the head's pooling
# and the train split's shuffling.
TRIAL_KEYS = ("head", "shuffle_buffer", "shuffle_memory_mb")


def work_dir(output_dir: str) -> str:
    """`.<output>.tmp-<8 hex of its path>` beside the output: the same for every process."""
    digest = hashlib.sha256(output_dir.encode("utf-8")).hexdigest()[:8]
    return fsutil.join(fsutil.parent(output_dir), f".{fsutil.basename(output_dir)}.tmp-{digest}")


def trainer_key(trainer: TrainerConfig, tuner: TunerConfig, on_features: bool) -> dict:
    """What of `trainer:` decides the search's outcome (its cache key): on features, the head's
    pooling, the shuffling and the head keys the space leaves at the trainer's value; on images
    every option (the backbone runs in every trial)."""
    if not on_features:
        return key_fields(trainer)
    space = tuner.space
    fixed = [k for k in TUNABLE if space is None or getattr(space, k) is None]
    return {k: getattr(trainer, k) for k in (*TRIAL_KEYS, *fixed)}


def check_features(features_dir: str, examples_dir: str, trainer: TrainerConfig) -> None:
    """Trials on features tune a head the Trainer will train on them: its features must be
    cacheable, and the features of these examples (FeatureGen's of this ExampleGen output)."""
    why = trainer.features_blocker()
    if why:
        raise PipelineError(
            f"features {features_dir}: the Trainer will not train on cached features (trainer"
            f" {why}), so trials must run on images: give no features"
        )
    manifest = files.read_manifest(features_dir)
    if manifest.key.get("examples") != artifacts.examples_fingerprint(examples_dir):
        raise PipelineError(
            f"features {features_dir}: not of the examples at {examples_dir} (their"
            " fingerprints differ: make the features from these examples)"
        )


def run_tuner(
    examples_dir: str,
    features_dir: str | None,
    output_dir: str,
    trainer: TrainerConfig,
    tuner: TunerConfig,
    workers: int = 1,
) -> dict[str, Any]:
    """The search (or this process's part of a group); returns the summary (tuning.json, with
    the best trial), or {"worker": id} for a worker."""
    request = search.Request(
        trainer,
        tuner,
        output_dir,
        work_dir(output_dir),
        features_dir=features_dir,
        examples_dir=examples_dir,
    )
    if tuner.space is None:  # a pipeline run skips it; its command says so
        raise PipelineError(search.NO_SPACE)
    search.check_bayesian(tuner)
    if features_dir:
        check_features(features_dir, examples_dir, trainer)
    role = launch.role()
    if role == "worker":
        search.run_worker(request)
        return {"worker": os.environ[launch.TUNER_ID]}
    try:
        if role == "chief":
            host, port = launch.oracle_address()
            return search.run_chief(request, port, workers, host=host)
        return search.run_search(request)
    except BaseException:
        fsutil.rmtree(request.work_dir)  # the search's state is of no use to a new one
        raise
