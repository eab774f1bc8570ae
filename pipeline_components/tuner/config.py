"""The Tuner's config section (`tuner:` in pipeline.yaml) and its search space.

Without `space` (the default) the Tuner is skipped and the Trainer trains with `trainer:` as
written: a pipeline without a tuner section runs as before. `space: {}` searches the default
space below.

tuner:
  algorithm: bayesian        # random | bayesian | hyperband (bayesian: the `bayesian` extra)
  max_trials: 20             # the trial budget
  max_minutes: 30            # the time budget: no trial starts after it (null: none)
  epochs: 5                  # per trial (hyperband: the most one trial gets)
  space:                     # null for a key: not searched, the trainer's value is used
    learning_rate: {min: 1.0e-5, max: 0.1, sampling: log}
    dropout: {min: 0.0, max: 0.5}
    units: [0, 128, 512]     # a hidden Dense(units, relu) in the head; 0: none
    optimizer: [adam, rmsprop, sgd]
    batch_size: [32, 64, 128]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline_components.core.config import option

OPTIMIZERS = ("rmsprop", "adam", "sgd")
ALGORITHMS = ("random", "bayesian", "hyperband")
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}


@dataclasses.dataclass
class FloatRange:
    """A float searched between `min` and `max` (inclusive), uniformly or on a log scale."""

    min: float = option(0.0, ge=0, le=1e6, doc="the smallest value searched")
    max: float = option(1.0, ge=0, le=1e6, doc="the largest value searched")
    sampling: str = option("linear", choices=("linear", "log"), doc="linear | log")

    def validate(self, fail: Any) -> None:
        if self.max < self.min:
            fail("max", f">= min ({self.min:g})", self.max)
        if self.sampling == "log" and self.min <= 0:
            fail("min", "> 0 for log sampling", self.min)


@dataclasses.dataclass
class SearchSpace:
    """The head's hyperparameters a search varies; null: fixed at the trainer's value."""

    learning_rate: FloatRange | None = option(
        factory=lambda: FloatRange(1e-5, 1e-1, "log"), doc="the head's learning rate"
    )
    dropout: FloatRange | None = option(
        factory=lambda: FloatRange(0.0, 0.5), doc="dropout before the output layer"
    )
    units: list[int] | None = option(
        factory=lambda: [0, 128, 512], doc="hidden Dense(units, relu) sizes; 0: none"
    )
    optimizer: list[str] | None = option(factory=lambda: list(OPTIMIZERS), doc="optimizers")
    batch_size: list[int] | None = option(factory=lambda: [32, 64, 128], doc="batch sizes")

    def validate(self, fail: Any) -> None:
        if self.dropout is not None and not (self.dropout.min >= 0 and self.dropout.max < 1):
            fail("dropout", "a range within [0, 1)", dataclasses.asdict(self.dropout))
        if self.learning_rate is not None and self.learning_rate.min <= 0:
            fail("learning_rate", "a range of positive rates", self.learning_rate.min)
        choices = {
            "units": (self.units, lambda v: 0 <= v <= 65536, "integers in [0, 65536]"),
            "optimizer": (self.optimizer, lambda v: v in OPTIMIZERS, f"some of {list(OPTIMIZERS)}"),
            "batch_size": (self.batch_size, lambda v: 1 <= v <= 65536, "integers in [1, 65536]"),
        }
        for name, (values, ok, what) in choices.items():
            if values is not None and (not values or not all(ok(v) for v in values)):
                fail(name, f"a non-empty list of {what}", values)


@dataclasses.dataclass
class TunerConfig:
    enabled: bool = option(
        True, key=False, doc="search when a space is configured; false: skip the Tuner"
    )
    algorithm: str = option(
        "random",
        choices=ALGORITHMS,
        doc="random | bayesian (scikit-learn and scipy: the bayesian extra) | hyperband",
    )
    max_trials: int = option(10, ge=1, le=100_000, doc="the trial budget")
    max_minutes: float | None = option(
        None, gt=0, le=100_000, doc="the time budget: no trial starts after it; null: none"
    )
    epochs: int = option(5, ge=1, le=10_000, doc="epochs per trial (hyperband: the most)")
    steps_per_epoch: int | None = option(None, ge=1, doc="train steps per epoch; null: a pass")
    objective: str = option("val_accuracy", choices=tuple(OBJECTIVES), doc="what is optimised")
    hyperband_factor: int = option(3, ge=2, le=100, doc="hyperband's reduction factor")
    seed: int | None = option(42, ge=0, le=2**32 - 1, doc="the search's and every trial's seed")
    space: SearchSpace | None = option(
        None, doc="the search space (null: no search, the Tuner is skipped; {}: the default)"
    )

    def skip_reason(self) -> str | None:
        if not self.enabled:
            return "tuner.enabled is false"
        if self.space is None:
            return "no search space configured (tuner.space)"
        return None
