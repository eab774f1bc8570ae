"""The Tuner's best hyperparameters, applied to the Trainer's config (the HyperParameters
artifact: best_hyperparameters.json, `{"trainer": {option: value}, ...}`).

The values override `trainer:` (they are what the search found best for this head on these
features); they are checked as the config's own values would be, and recorded: training_config.json
and the run's summary say which options came from where, and what they replaced.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import config as config_lib
from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer.config import TrainerConfig

# The trainer options a search may set, in the order tables show them.
TUNABLE = ("learning_rate", "dropout", "units", "optimizer", "batch_size")


def read_best(path: str) -> dict[str, Any]:
    """The `trainer` options of a best_hyperparameters.json (one-line errors naming it)."""
    if not fsutil.exists(path):
        raise PipelineError(f"hyperparameters {path}: no such file")
    data = fsutil.read_json(path, "best hyperparameters")
    values = data.get("trainer") if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise PipelineError(f"hyperparameters {path}: no 'trainer' mapping of options")
    unknown = sorted(set(values) - set(TUNABLE))
    if unknown:
        raise PipelineError(
            f"hyperparameters {path}: trainer.{unknown[0]} is not an option a search sets"
            f" ({', '.join(TUNABLE)})"
        )
    return dict(values)


def apply(config: TrainerConfig, path: str) -> tuple[TrainerConfig, dict[str, Any]]:
    """`config` with the best values of `path`; and the record: {"source", "applied": {option:
    value} (every value of the file), "replaced": {option: the config's value} (those that
    differ)}."""
    values = read_best(path)
    merged = {**config_lib.to_dict(config), **values}
    tuned = config_lib.section_from_dict(
        TrainerConfig, merged, "trainer", f"hyperparameters {path}"
    )
    record = {
        "source": path,
        "applied": {k: getattr(tuned, k) for k in TUNABLE if k in values},
        "replaced": {
            k: getattr(config, k)
            for k in TUNABLE
            if k in values and getattr(config, k) != getattr(tuned, k)
        },
    }
    return tuned, record
