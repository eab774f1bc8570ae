"""A run's Prometheus metrics (`transfer_pipeline_*`), computed from its record and the history.

Every metric is a gauge: a run publishes its own values, and the values kept across runs are
recomputed from durable state (history.py). They come in groups, pushed to the Pushgateway
each as its own group (grouping key below), so that steps of one run that are separate tasks
(Kubeflow Pipelines) never overwrite each other:

- the run group, grouping key `{job, pipeline}`: the run's outcome and the values kept across
  runs. `transfer-pipeline run` publishes it at its end; a KFP run publishes it from the task
  that decides the run: the one whose failure is final (bad input, or its last retry), or the
  last one to finish;
- one group per component, grouping key `{job, pipeline, component}`: its status, duration,
  cache hit and what it measured. Each task (or `run`, for all of them) publishes its own; when
  a run is decided, the components it never reached are published as `not_run`, so no group
  keeps a value from an older run.

`pipeline` and `component` are labels of the grouping key (the Pushgateway adds them to every
sample; the textfile sink writes them into each line). docs/monitoring.md lists every metric.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

from pipeline_components.core import artifacts, registry
from pipeline_components.orchestration.monitoring.history import History, producer, timestamp
from pipeline_components.orchestration.summary import has_result

PREFIX = "transfer_pipeline_"
# A component's status in a run: one series each, 1 for the one that holds
STATUSES = ("completed", "cached", "failed", "skipped", "running", "not_run")
SEVERITIES = ("fail", "warn")
# Why the gate blessed or refused (label `reason` of transfer_pipeline_model_blessed)
# (`thresholds`: accuracy and its change cleared, another of evaluator.thresholds failed)
REASONS = (
    "passed",
    "below_min_accuracy",
    "regression",
    "below_min_accuracy_and_regression",
    "thresholds",
)

# name -> (help, labels besides the grouping key's); the catalog docs/monitoring.md follows
CATALOG: dict[str, tuple[str, tuple[str, ...]]] = {
    # run group
    "run_success": ("1 when the newest finished run completed, 0 when it failed", ()),
    "run_duration_seconds": ("wall time of the newest finished run", ()),
    "run_finished_timestamp_seconds": ("when the newest finished run ended (unix time)", ()),
    "run_info": (
        "1, labelled with the newest finished run's id, status, first failed component and model",
        ("run_id", "status", "failed_component", "model_name"),
    ),
    "last_success_timestamp_seconds": ("when the newest completed run ended (unix time)", ()),
    "first_run_timestamp_seconds": ("when the oldest run on record started (unix time)", ()),
    "last_push_timestamp_seconds": ("when a version of the model was last pushed", ()),
    "last_push_version": ("the version number of the last push", ()),
    "last_push_accuracy": ("test accuracy of the model of the last push", ()),
    "gate_refusals_in_a_row": ("newest runs in a row whose gate refused the model", ()),
    "data_changed_since_push": ("1 when the newest data differs from the last push's", ()),
    # component groups
    "component_status": ("1 for the component's status in the newest run, else 0", ("status",)),
    "component_duration_seconds": ("how long the component ran (0 when cached)", ()),
    "component_cache_hit": ("1 when the component reused a cached execution", ()),
    "examples": ("examples per split written by ExampleGen", ("split",)),
    "anomalies": ("data anomalies found against the schema, by severity", ("severity",)),
    "model_accuracy": ("test accuracy of the run's model (the Evaluator)", ()),
    "model_loss": ("test loss of the run's model", ()),
    "model_auc": (
        "test ROC AUC of the run's model (two classes; more: the macro one-vs-rest mean)",
        (),
    ),
    "model_macro_recall": ("test recall of the run's model, the mean over classes", ()),
    "model_min_class_recall": ("test recall of the class the run's model recalls worst", ()),
    "model_log_loss": ("test log loss of the run's model (scikit-learn's)", ()),
    "model_calibration_error": ("expected calibration error of the run's model on test", ()),
    "model_test_examples": ("test examples the model was scored on", ()),
    "model_blessed": ("1 when the gate blessed the model; `reason` says why", ("reason",)),
    "gate_min_accuracy": ("the gate's min_accuracy", ()),
    "gate_max_regression": ("the gate's max_regression against the served model", ()),
    "gate_baseline_accuracy": ("test accuracy of the served model the gate compared with", ()),
    "gate_thresholds": ("thresholds the gate checked (min_accuracy and max_regression too)", ()),
    "gate_thresholds_failed": ("thresholds the run's model failed", ()),
    "infra_blessed": ("1 when the InfraValidator's real server answered like the Evaluator", ()),
    "infra_load_seconds": ("how long the InfraValidator's server took to load the model", ()),
    "infra_latency_seconds": ("the InfraValidator's request latency", ()),
    "pushed": ("1 when the run pushed a new version", ()),
    "pushed_version": ("the version the run pushed", ()),
}


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str  # without PREFIX
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class Group:
    """What one push replaces: the samples of one grouping key."""

    key: dict[str, str]  # grouping-key labels besides `job`
    samples: list[Sample]


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


# --------------------------------------------------------------------------- the run group


def run_group(pipeline: str, record: dict, past: History, model_name: str) -> Group:
    samples: list[Sample] = []
    status = record.get("status", "")
    started, finished = timestamp(record.get("started")), timestamp(record.get("finished"))
    finished = finished if finished is not None else time.time()
    failed = [n for n, e in (record.get("components") or {}).items() if e.get("status") == "failed"]
    samples.append(Sample("run_success", 1.0 if status == "completed" else 0.0))
    if started is not None:
        samples.append(Sample("run_duration_seconds", max(finished - started, 0.0)))
    samples.append(Sample("run_finished_timestamp_seconds", finished))
    info = (
        ("run_id", str(record.get("run_id", ""))),
        ("status", str(status)),
        ("failed_component", failed[0] if failed else ""),
        ("model_name", model_name),
    )
    samples.append(Sample("run_info", 1.0, info))
    optional = {
        "last_success_timestamp_seconds": past.last_success,
        "first_run_timestamp_seconds": past.first_run,
        "gate_refusals_in_a_row": float(past.refusals_in_a_row),
        "data_changed_since_push": _num(past.data_changed_since_push),
    }
    if past.last_push is not None:
        optional["last_push_timestamp_seconds"] = past.last_push.at
        optional["last_push_version"] = float(past.last_push.version)
        optional["last_push_accuracy"] = past.last_push.accuracy
    samples += [Sample(name, value) for name, value in optional.items() if value is not None]
    return Group({"pipeline": pipeline}, samples)


# --------------------------------------------------------------------- the component groups


def status_of(entry: dict | None) -> str:
    status = (entry or {}).get("status")
    return str(status) if status in STATUSES else "not_run"


def component_group(pipeline: str, name: str, entry: dict | None) -> Group:
    status = status_of(entry)
    samples = [Sample("component_status", float(s == status), (("status", s),)) for s in STATUSES]
    if entry and status in ("completed", "cached", "failed"):
        samples.append(Sample("component_duration_seconds", float(entry.get("duration_s") or 0)))
        samples.append(Sample("component_cache_hit", float(status == "cached")))
    if entry and has_result(entry):
        samples += list(_measured(name, entry))
    return Group({"pipeline": pipeline, "component": name}, samples)


def _measured(name: str, entry: dict) -> Iterator[Sample]:
    """What a component measured: its result's `splits` when it produces Examples, and the
    run.json fields it contributes (`record_fields`: anomalies, metrics, blessing,
    infra_blessing, push)."""
    result = entry.get("result") or {}
    if name == producer(artifacts.EXAMPLES) and isinstance(result.get("splits"), dict):
        for split, count in sorted(result["splits"].items()):
            if (value := _num(count)) is not None:
                yield Sample("examples", value, (("split", str(split)),))
    try:
        fields = registry.get(name).record_fields(entry)
    except KeyError:
        fields = {}
    yield from _anomalies(fields.get("anomalies"))
    yield from _model(fields.get("metrics"), fields.get("blessing"))
    yield from _infra(fields.get("infra_blessing"))
    yield from _push(fields.get("push"))


def _anomalies(anomalies: Any) -> Iterator[Sample]:
    if not isinstance(anomalies, list):
        return
    counts = dict.fromkeys(SEVERITIES, 0)
    for a in anomalies:
        severity = str((a or {}).get("severity", ""))
        counts[severity] = counts.get(severity, 0) + 1
    for severity, count in counts.items():
        yield Sample("anomalies", float(count), (("severity", severity),))


def gate_reason(blessing: dict) -> str:
    """Why the gate decided as it did, from its numbers (not its words): blessing.json's
    threshold lines (min_accuracy and max_regression are two of them) when it has them."""
    if blessing.get("blessed"):
        return "passed"
    lines = blessing.get("thresholds")
    if isinstance(lines, list) and lines:
        passed = {t.get("origin"): t.get("passed") for t in lines if isinstance(t, dict)}
        low = passed.get("evaluator.min_accuracy") is False
        worse = passed.get("evaluator.max_regression") is False
    else:  # a blessing.json from before the threshold lines
        accuracy = _num(blessing.get("accuracy"))
        threshold = _num(blessing.get("threshold"))
        baseline = _num(blessing.get("baseline_accuracy"))
        regression = _num(blessing.get("max_regression")) or 0.0
        low = accuracy is not None and threshold is not None and accuracy < threshold
        worse = accuracy is not None and baseline is not None and accuracy < baseline - regression
    if low and worse:
        return "below_min_accuracy_and_regression"
    if worse:
        return "regression"
    return "below_min_accuracy" if low or not lines else "thresholds"


def _model(metrics: Any, blessing: Any) -> Iterator[Sample]:
    if isinstance(metrics, dict):
        for key, name in (
            ("accuracy", "model_accuracy"),
            ("loss", "model_loss"),
            ("auc", "model_auc"),
            ("macro_recall", "model_macro_recall"),
            ("min_class_recall", "model_min_class_recall"),
            ("log_loss", "model_log_loss"),
            ("ece", "model_calibration_error"),
            ("num_examples", "model_test_examples"),
        ):
            if (value := _num(metrics.get(key))) is not None:
                yield Sample(name, value)
    if isinstance(blessing, dict) and isinstance(blessing.get("blessed"), bool):
        reason = (("reason", gate_reason(blessing)),)
        yield Sample("model_blessed", float(blessing["blessed"]), reason)
        for key, name in (
            ("threshold", "gate_min_accuracy"),
            ("max_regression", "gate_max_regression"),
            ("baseline_accuracy", "gate_baseline_accuracy"),
        ):
            if (value := _num(blessing.get(key))) is not None:
                yield Sample(name, value)
        lines = blessing.get("thresholds")
        if isinstance(lines, list):
            failed = [t for t in lines if isinstance(t, dict) and t.get("passed") is False]
            yield Sample("gate_thresholds", float(len(lines)))
            yield Sample("gate_thresholds_failed", float(len(failed)))


def _infra(infra: Any) -> Iterator[Sample]:
    if not isinstance(infra, dict) or not isinstance(infra.get("blessed"), bool):
        return
    yield Sample("infra_blessed", float(infra["blessed"]))
    if (load := _num(infra.get("load_seconds"))) is not None:
        yield Sample("infra_load_seconds", load)
    if (latency := _num(infra.get("latency_ms"))) is not None:
        yield Sample("infra_latency_seconds", latency / 1000.0)


def _push(push: Any) -> Iterator[Sample]:
    if not isinstance(push, dict) or not isinstance(push.get("pushed"), bool):
        return
    yield Sample("pushed", float(push["pushed"]))
    if push["pushed"] and (version := _num(push.get("version"))) is not None:
        yield Sample("pushed_version", version)


# ------------------------------------------------------------------------------- the run


def component_names(record: dict) -> list[str]:
    names = [c.name for c in registry.pipeline_order()]
    return names + [n for n in (record.get("components") or {}) if n not in names]


def all_groups(pipeline: str, record: dict, past: History, model_name: str) -> list[Group]:
    """The run group, then one group per component (not_run where the run never reached it)."""
    entries = record.get("components") or {}
    groups = [run_group(pipeline, record, past, model_name)]
    groups += [component_group(pipeline, n, entries.get(n)) for n in component_names(record)]
    return groups


def flat_values(group: Group) -> dict[str, float]:
    """A group's samples as `name[_labelvalue...]` -> value (a KFP Metrics artifact's keys)."""
    out = {}
    for s in group.samples:
        if s.name == "component_status":
            continue  # one-hot: `success` says it in one number
        key = "_".join([s.name, *(v for _, v in s.labels)])
        out[key] = s.value
    holds = [dict(s.labels)["status"] for s in group.samples if s.name == "component_status"]
    values = [s.value for s in group.samples if s.name == "component_status"]
    status = next((st for st, v in zip(holds, values, strict=True) if v), "")
    out["success"] = float(status in ("completed", "cached", "skipped"))  # did not fail
    return out
