"""Thresholds as data: `evaluator.thresholds` parsed, checked and evaluated (docs/evaluation.md).

    evaluator:
      thresholds:
        - {metric: recall, class: cats, lower: 0.80}      # one class
        - {metric: auc, lower: 0.95}                       # binary; macro one-vs-rest for more
        - {metric: log_loss, upper: 0.35}
        - {metric: accuracy, change: {relative: -0.01}}    # against the served model
        - {metric: recall, class: "*", lower: 0.5}         # every class
        - {metric: accuracy, slice: {camera: phone}, lower: 0.8, with_confidence: true}

Keys: `metric` (vocabulary.METRICS), `class` (a class name, or "*": one check per class; only for
per-class metrics; without it: the overall value, a macro mean for per-class metrics), either
`lower` and/or `upper` (the value's bounds, inclusive) or `change` (`{relative: x}` or
`{absolute: x}`: the candidate's change against the baseline — the served model — on the same
test images), `slice` (`{dimension: value, ...}`: slicing.py), `with_confidence` (default false).

A change bound is signed and read in the metric's direction: for a metric where higher is
better the change must be >= the bound (`{relative: -0.01}`: at most 1% worse); for log_loss
and ece, <= the bound (`{absolute: 0.02}`: at most 0.02 higher). Relative change is
(candidate - baseline) / |baseline|.

with_confidence: the bootstrap interval, not the point, must clear the bound: for a lower bound
(or a change bound where higher is better) the interval's low end must be >= the bound, for an
upper bound its high end <= the bound. It makes a check stricter, never looser: the point
decides without it, and the interval is recorded either way.

Checked in two steps, each a one-line PipelineError naming the threshold: `parse` when the
config is loaded (keys, metric, bounds, types, a class on a metric that has none), `resolve` at
the start of the Evaluator, before anything is scored (class names against the model's labels,
slice dimensions against the built-in ones and metadata.csv's columns, "*" expanded). Not
gated (passed null, never blocking): a change check without a baseline, a slice under
min_slice_size. Failed: an undefined value (e.g. AUC of a slice with one class).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from pipeline_components.core.errors import PipelineError
from pipeline_components.evaluator import vocabulary
from pipeline_components.evaluator.vocabulary import METRICS, PER_CLASS

KEYS = ("metric", "class", "lower", "upper", "change", "slice", "with_confidence")
CHANGE_KINDS = ("relative", "absolute")
EVERY_CLASS = "*"
MAX_THRESHOLDS = 1000
MAX_NAME_CHARS = 256
# Comparisons allow this much float rounding (a change of exactly -max_regression passes).
TOLERANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str  # relative | absolute
    bound: float


@dataclasses.dataclass(frozen=True)
class Threshold:
    metric: str
    class_name: str | None = None  # None: the overall value; "*": every class (until resolved)
    lower: float | None = None
    upper: float | None = None
    change: Change | None = None
    slice: vocabulary.SliceKey = ()
    with_confidence: bool = False
    origin: str = ""  # where it was configured, for messages: evaluator.thresholds[2]

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    def subject(self) -> str:
        """'recall of class 'cats' on slice camera=phone', for reasons."""
        text = self.metric
        if self.class_name is not None:
            text += f" of class {self.class_name!r}"
        if self.slice:
            text += f" on slice {vocabulary.slice_name(self.slice)}"
        return text

    def bound_text(self) -> str:
        if self.change is not None:
            op = ">=" if self.higher_is_better else "<="
            return f"{self.change.kind} change {op} {self.change.bound:+.4f}"
        parts = []
        if self.lower is not None:
            parts.append(f">= {self.lower:.4f}")
        if self.upper is not None:
            parts.append(f"<= {self.upper:.4f}")
        return " and ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """The threshold as configured, every key present (null: not given)."""
        return {
            "metric": self.metric,
            "class": self.class_name,
            "slice": dict(self.slice) if self.slice else None,
            "lower": self.lower,
            "upper": self.upper,
            "change": {self.change.kind: self.change.bound} if self.change else None,
            "with_confidence": self.with_confidence,
        }


# ------------------------------------------------------------------------------ parse


class ThresholdError(PipelineError):
    """A threshold refused: `where` (evaluator.thresholds[2].metric) and what is wrong."""

    def __init__(self, where: str, text: str) -> None:
        super().__init__(f"{where}: {text}")
        self.where, self.text = where, text


def _fail(where: str, message: str) -> ThresholdError:
    return ThresholdError(where, message)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def _name(value: Any, where: str) -> str:
    """A class name or slice value: YAML may read `7` as a number (the folder's name is '7');
    true/false/null are refused (quote them)."""
    if isinstance(value, bool) or value is None or not isinstance(value, str | int):
        raise _fail(where, f"expected a name (quote it in YAML), got {value!r}")
    text = str(value)
    if not text or len(text) > MAX_NAME_CHARS:
        raise _fail(where, f"expected a name of 1 to {MAX_NAME_CHARS} characters, got {text!r}")
    return text


def _change(value: Any, where: str) -> Change:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in CHANGE_KINDS:
        raise _fail(where, f"expected {{relative: x}} or {{absolute: x}}, got {value!r}")
    kind, bound = next(iter(value.items()))
    return Change(kind, _number(bound, f"{where}.{kind}"))


def _slice(value: Any, where: str) -> vocabulary.SliceKey:
    if not isinstance(value, dict) or not value:
        raise _fail(where, f"expected a mapping of dimension to value, got {value!r}")
    key = tuple((_name(k, where), _name(v, f"{where}.{k}")) for k, v in value.items())
    for dim, bucket in key:
        if dim == vocabulary.SIZE and bucket not in vocabulary.SIZE_BUCKETS:
            raise _fail(
                f"{where}.size",
                f"unknown size bucket {bucket!r} (buckets: {', '.join(vocabulary.SIZE_BUCKETS)})",
            )
    return key


def parse_one(item: Any, where: str) -> Threshold:
    """One threshold mapping -> Threshold; a one-line PipelineError naming `where`."""
    if not isinstance(item, dict):
        raise _fail(
            where, f"expected a mapping such as {{metric: recall, lower: 0.8}}, got {item!r}"
        )
    unknown = [k for k in item if k not in KEYS]
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    metric = item.get("metric")
    if metric not in METRICS:
        known = ", ".join(METRICS)
        raise _fail(f"{where}.metric", f"unknown metric {metric!r} (known: {known})")
    class_name = None
    if "class" in item:
        class_name = _name(item["class"], f"{where}.class")
        if metric not in PER_CLASS:
            raise _fail(
                f"{where}.class",
                f"{metric} has no per-class value (per-class metrics: {', '.join(PER_CLASS)})",
            )
    lower = _number(item["lower"], f"{where}.lower") if "lower" in item else None
    upper = _number(item["upper"], f"{where}.upper") if "upper" in item else None
    change = _change(item["change"], f"{where}.change") if "change" in item else None
    if change is not None and (lower is not None or upper is not None):
        raise _fail(where, "give lower and/or upper, or change, not both")
    if change is None and lower is None and upper is None:
        raise _fail(where, "needs a bound: lower, upper or change")
    if lower is not None and upper is not None and lower > upper:
        raise _fail(where, f"lower {lower:g} is above upper {upper:g}")
    for key, bound in (("lower", lower), ("upper", upper)):
        low = 0.0
        high = 1.0 if METRICS[metric].bounded else math.inf
        if bound is not None and not low <= bound <= high:
            raise _fail(f"{where}.{key}", f"{metric} is in [0, {high:g}], got {bound:g}")
    with_confidence = item.get("with_confidence", False)
    if not isinstance(with_confidence, bool):
        raise _fail(f"{where}.with_confidence", f"expected true or false, got {with_confidence!r}")
    named = _slice(item["slice"], f"{where}.slice") if "slice" in item else ()
    return Threshold(metric, class_name, lower, upper, change, named, with_confidence, where)


def parse(raw: Any, where: str = "evaluator.thresholds") -> list[Threshold]:
    """The `thresholds:` list (None: none) -> Thresholds, checked as far as the config alone
    allows."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(where, f"expected a list of thresholds, got {raw!r}")
    if len(raw) > MAX_THRESHOLDS:
        raise _fail(where, f"at most {MAX_THRESHOLDS} thresholds, got {len(raw)}")
    return [parse_one(item, f"{where}[{i}]") for i, item in enumerate(raw)]


def shorthands(min_accuracy: float, max_regression: float) -> list[Threshold]:
    """`min_accuracy` and `max_regression`, the shorthands they are."""
    return [
        Threshold("accuracy", lower=min_accuracy, origin="evaluator.min_accuracy"),
        Threshold(
            "accuracy",
            change=Change("absolute", -max_regression),
            origin="evaluator.max_regression",
        ),
    ]


# ---------------------------------------------------------------------------- resolve


def resolve(
    thresholds: Sequence[Threshold], labels: Sequence[str], columns: Sequence[str] = ()
) -> list[Threshold]:
    """Check class names and slice dimensions against the model's labels and metadata.csv's
    columns, before scoring; "*" becomes one threshold per class."""
    known_dims = [*vocabulary.BUILT_IN, *columns]
    out = []
    for t in thresholds:
        for dim, value in t.slice:
            if dim not in known_dims:
                raise _fail(
                    f"{t.origin}.slice",
                    f"unknown slice dimension {dim!r} (dimensions: {', '.join(known_dims)}; "
                    "more come from the columns of metadata.csv beside the images)",
                )
            if dim == vocabulary.CLASS and value not in labels:
                raise _fail(f"{t.origin}.slice.class", _unknown_class(value, labels))
        if t.class_name == EVERY_CLASS:
            out += [dataclasses.replace(t, class_name=name) for name in labels]
            continue
        if t.class_name is not None and t.class_name not in labels:
            raise _fail(f"{t.origin}.class", _unknown_class(t.class_name, labels))
        out.append(t)
    return out


def _unknown_class(name: str, labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
    return f"{name!r} is not a class of the model (classes: {shown})"
