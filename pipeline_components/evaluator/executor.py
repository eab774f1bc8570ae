"""The Evaluator's executor: score the exported SavedModel on the test split, decide the blessing.

It calls `serving_default` on the raw `image/encoded` bytes — the artifact and preprocessing
that will be served — so training/serving skew shows up here, not in production. The scoring is
a Beam job (scoring.py: RunInference, metrics by combiners) on any runner, built and run by
core/beam.py (`evaluator.beam_args`, else `beam.args`); the baseline is scored in the same job,
on the same records.

    transfer-pipeline evaluate --model T/saved_model --examples O --output E \
        [--min-accuracy A] [--max-regression R] [--baseline PATH | --serving-dir S --model-name M]
        [-- BEAM_ARGS]

Outputs (written atomically into E): metrics.json, blessing.json, predictions.csv,
confusion_matrix.png, errors.png, and baseline_metrics.json when a baseline was scored.

`predict_split` is the previous single-process scorer (the whole split through the signature in
one process), kept as the reference the Beam job is tested and benchmarked against.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.errors import PipelineError
from pipeline_components.evaluator.config import EvaluatorConfig

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

BLESSING_FILE = artifacts.BLESSING_FILE
METRICS_FILE = artifacts.METRICS_FILE
PREDICTIONS_FILE = artifacts.PREDICTIONS_FILE


@dataclass
class Predictions:
    probabilities: np.ndarray  # [N, C]
    y_true: np.ndarray  # [N]
    filenames: list[str]
    errors: list[dict] = field(default_factory=list)  # a few misclassified: encoded, true, pred


@dataclass
class Scores:
    """What the Beam job computed; predictions.csv is already in the output directory."""

    metrics: dict
    errors: list[dict]  # the first num_error_examples misclassified: encoded, true, pred, ...
    baseline_metrics: dict | None = None
    baseline_failure: list[str] | None = None  # [filename, reason]
    counters: dict[str, int] = field(default_factory=dict)


def load_serving_model(
    model_dir: str,
) -> tuple[Any, tf.types.experimental.ConcreteFunction, list[str]]:
    """(the loaded object, its serving_default signature, class names) of a SavedModel; one-line
    errors. Any: tf.saved_model.load returns an untyped trackable object."""
    import tensorflow as tf

    if not artifacts.is_saved_model(model_dir):
        raise PipelineError(f"no SavedModel at {model_dir} (saved_model.pb not found)")
    try:
        loaded = tf.saved_model.load(model_dir)
        signature = loaded.signatures[artifacts.SERVING_SIGNATURE]
    except KeyError:
        raise PipelineError(f"SavedModel {model_dir} has no 'serving_default' signature") from None
    except Exception as e:
        raise PipelineError(
            f"cannot load SavedModel {model_dir}: {str(e).splitlines()[0]}"
        ) from None
    try:
        labels = artifacts.read_labels_asset(model_dir)
    except Exception:
        raise PipelineError(f"SavedModel {model_dir} has no assets/labels.txt") from None
    return loaded, signature, labels


def check_serving_model(model_dir: str) -> list[str]:
    """The class names of a SavedModel with a `serving_default` signature, read from its
    saved_model.pb and assets without loading it (the Beam workers load it); one-line errors."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    if not artifacts.is_saved_model(model_dir):
        raise PipelineError(f"no SavedModel at {model_dir} (saved_model.pb not found)")
    proto = saved_model_pb2.SavedModel()
    try:
        pb = fsutil.join(model_dir, artifacts.SAVED_MODEL_PB)
        if fsutil.exists(pb):
            proto.ParseFromString(fsutil.read_bytes(pb))
        else:
            text_format.Parse(fsutil.read_text(fsutil.join(model_dir, "saved_model.pbtxt")), proto)
    except Exception as e:
        raise PipelineError(
            f"cannot load SavedModel {model_dir}: {(str(e).splitlines() or [repr(e)])[0]}"
        ) from None
    if not any(artifacts.SERVING_SIGNATURE in mg.signature_def for mg in proto.meta_graphs):
        raise PipelineError(f"SavedModel {model_dir} has no 'serving_default' signature")
    try:
        return artifacts.read_labels_asset(model_dir)
    except Exception:
        raise PipelineError(f"SavedModel {model_dir} has no assets/labels.txt") from None


def predict_split(
    signature: tf.types.experimental.ConcreteFunction,
    examples_dir: str,
    split: str = "test",
    batch_size: int = 32,
    keep_errors: int = 0,
) -> Predictions:
    """Stream the split's records through the signature in batches (only predictions are kept,
    so a split larger than memory works)."""
    import tensorflow as tf

    files = examples.split_files(examples_dir, split)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch_size)
    ds = ds.map(examples.parse).prefetch(2)
    probs: list[np.ndarray] = []
    y_true: list[np.ndarray] = []
    filenames: list[str] = []
    errors: list[dict[str, Any]] = []
    for batch in ds:
        try:
            out = signature(images=batch[examples.ENCODED])
        except tf.errors.InvalidArgumentError as e:
            first = batch[examples.FILENAME][0].numpy().decode()
            raise PipelineError(
                f"the model failed on the {split} batch starting at {first}: "
                f"{e.message.splitlines()[0]}"
            ) from None
        p = out["probabilities"].numpy()
        labels = batch[examples.LABEL].numpy()
        probs.append(p)
        y_true.append(labels)
        filenames += [f.decode() for f in batch[examples.FILENAME].numpy()]
        if len(errors) < keep_errors:
            for i in np.flatnonzero(p.argmax(axis=1) != labels)[: keep_errors - len(errors)]:
                errors.append(
                    {
                        "encoded": batch[examples.ENCODED][i].numpy(),
                        "filename": batch[examples.FILENAME][i].numpy().decode(),
                        "true": int(labels[i]),
                        "pred": int(p[i].argmax()),
                        "score": float(p[i].max()),
                    }
                )
    if not filenames:
        raise PipelineError(f"the {split} split under {examples_dir} holds no examples")
    return Predictions(np.concatenate(probs), np.concatenate(y_true), filenames, errors)


def gate(
    accuracy: float,
    min_accuracy: float,
    baseline_accuracy: float | None = None,
    max_regression: float = 0.01,
) -> tuple[bool, list[str]]:
    """Blessed iff accuracy >= min_accuracy and, with a baseline, accuracy >= baseline accuracy
    - max_regression. The reasons say why in words, for run records and people."""
    reasons = []
    ok_threshold = accuracy >= min_accuracy
    cmp = ">=" if ok_threshold else "<"
    reasons.append(f"accuracy {accuracy:.4f} {cmp} min_accuracy {min_accuracy:.4f}")
    ok_baseline = True
    if baseline_accuracy is None:
        reasons.append("no baseline model: first push, regression check not applicable")
    else:
        floor = baseline_accuracy - max_regression
        ok_baseline = accuracy >= floor - 1e-12
        verdict = "within" if ok_baseline else "worse than"
        reasons.append(
            f"accuracy {accuracy:.4f} is {verdict} max_regression {max_regression:.4f} "
            f"of baseline accuracy {baseline_accuracy:.4f}"
        )
    return ok_threshold and ok_baseline, reasons


def newest_first(model_base_path: str) -> list[str]:
    """The complete served versions under a model base path, newest first."""
    return list(reversed(artifacts.served_versions(model_base_path).values()))


def resolve_baseline(
    baseline: str | None,
    serving_dir: str | None,
    model_name: str | None,
    candidate_fingerprint: str | None = None,
) -> str | None:
    """--baseline PATH (a SavedModel, or a versioned dir: its newest version), else the newest
    pushed version. A version identical to the candidate is passed over: comparing a model
    with itself says nothing, and a re-run on unchanged inputs must see the same baseline."""
    if baseline and artifacts.is_saved_model(baseline):
        return baseline
    if baseline:
        candidates = newest_first(baseline)
        if not candidates:
            raise PipelineError(
                f"baseline {baseline} is neither a SavedModel nor a versioned model dir"
            )
    elif serving_dir and model_name:
        candidates = newest_first(artifacts.model_base_path(serving_dir, model_name))
    else:
        return None
    for path in candidates:
        if candidate_fingerprint is None or fsutil.tree_fingerprint(path) != candidate_fingerprint:
            return path
    return None


NOT_COMPARABLE = "baseline not comparable (labels differ)"


def _check_baseline(path: str, labels: list[str]) -> str | None:
    """Why the baseline cannot be scored against the candidate, or None when it can.
    A baseline with other labels, or the same in another order, is never scored: its class ids
    mean other classes, so no regression number would mean anything."""
    try:
        asset_labels = artifacts.read_labels_asset(path)
    except Exception:
        asset_labels = None
    if asset_labels is not None and asset_labels != labels:
        return (
            f"{NOT_COMPARABLE}: baseline {path} has {asset_labels}, the candidate {labels}; "
            "no regression check"
        )
    try:
        base_labels = check_serving_model(path)
    except PipelineError as e:
        return f"baseline {path} could not be loaded ({e}); regression check skipped"
    if base_labels != labels:
        return (
            f"{NOT_COMPARABLE}: baseline {path} has {base_labels}, the candidate {labels}; "
            "no regression check"
        )
    return None


def _score_baseline(path: str, scores: Scores) -> tuple[dict | None, str | None]:
    """Baseline metrics from the shared job, or (None, reason) when they cannot be compared."""
    if scores.baseline_failure:
        filename, reason = scores.baseline_failure
        return None, (
            f"baseline {path} failed on test example {filename} ({reason}); "
            "regression check skipped"
        )
    return scores.baseline_metrics, None


def score_test_split(
    model_dir: str,
    examples_dir: str,
    work_dir: str,
    labels: list[str],
    config: EvaluatorConfig,
    baseline_dir: str | None = None,
    beam_setup: core_beam.BeamSetup | None = None,
) -> Scores:
    """Run the Beam job (scoring.build_pipeline) writing into work_dir; read its results.
    `beam_setup`: how it runs (default: `config.beam_args`, else DirectRunner)."""
    from pipeline_components.evaluator import scoring
    from pipeline_components.inference import results

    beam_setup = beam_setup or core_beam.setup(config.beam_args)
    core_beam.quiet()
    files = examples.split_files(examples_dir, "test")
    p = core_beam.pipeline(beam_setup)
    scoring.build_pipeline(
        p,
        files,
        work_dir,
        labels,
        model_dir,
        baseline_dir=baseline_dir,
        batch_size=config.batch_size,
        model_copies=config.model_copies,
        num_error_examples=config.num_error_examples,
    )
    counters = core_beam.run(
        p,
        beam_setup,
        job="Evaluator",
        namespaces=[scoring.COUNTER_NAMESPACE, results.RUN_INFERENCE_NAMESPACE],
        describe=_progress(examples_dir),
    )

    def result(name: str, what: str) -> Any:
        return results.read_json_result(fsutil.join(work_dir, name), what)

    failure = result(scoring.FAILURES_PART.format("candidate"), "failures")
    if failure:
        filename, reason = failure[0]
        raise PipelineError(f"the model failed on test example {filename}: {reason}")
    scores = Scores(
        metrics=result(scoring.METRICS_PART.format("candidate"), "metrics"),
        errors=[],
        counters=counters,
    )
    if config.num_error_examples > 0:
        scores.errors = scoring.decode_errors(result(scoring.ERRORS_PART, "errors"))
    if baseline_dir:
        scores.baseline_metrics = result(scoring.METRICS_PART.format("baseline"), "metrics")
        base_failure = result(scoring.FAILURES_PART.format("baseline"), "failures")
        scores.baseline_failure = base_failure[0] if base_failure else None
    if scores.metrics["num_examples"] == 0:
        raise PipelineError(f"the test split under {examples_dir} holds no examples")
    scoring.join_predictions(work_dir, fsutil.join(work_dir, PREDICTIONS_FILE), labels)
    return scores


def _progress(examples_dir: str) -> core_beam.Describe:
    """The job's progress line: `1,200/5,000 test examples read, 1,100 scored`."""
    try:
        total = f"/{int(examples.read_stats(examples_dir)['splits']['test']['num_examples']):,}"
    except (PipelineError, KeyError, TypeError, ValueError):  # an older or partial stats.json
        total = ""

    def describe(counters: Mapping[str, int]) -> str:
        read = counters.get("evaluator.examples_read", 0)
        failed = counters.get("evaluator.failed", 0)
        text = f"{read:,}{total} test examples read, {counters.get('evaluator.scored', 0):,} scored"
        return text + (f", {failed:,} failed" if failed else "")

    return describe


def _labels(model_dir: str, examples_dir: str) -> list[str]:
    """The model's classes, which must be the examples' labels."""
    data_labels = examples.read_labels(examples_dir)
    examples.split_files(examples_dir, "test")  # a missing test split fails before model loading
    labels = check_serving_model(model_dir)
    if labels != data_labels:
        raise PipelineError(
            f"model classes {labels} differ from the examples' labels.txt {data_labels} "
            f"({model_dir} vs {examples_dir})"
        )
    return labels


def run_evaluator(
    model_dir: str,
    examples_dir: str,
    output_dir: str,
    config: EvaluatorConfig | None = None,
    baseline: str | None = None,
    serving_dir: str | None = None,
    model_name: str | None = None,
    beam_setup: core_beam.BeamSetup | None = None,
) -> dict:
    """Score, gate, write the artifacts; returns the blessing dict. `beam_setup`: how the
    scoring job runs (default: `config.beam_args`, else DirectRunner)."""
    config = config or EvaluatorConfig()
    started = time.monotonic()
    labels = _labels(model_dir, examples_dir)
    fingerprint = fsutil.tree_fingerprint(model_dir)
    baseline_path = resolve_baseline(baseline, serving_dir, model_name, fingerprint)
    skip_reason = _check_baseline(baseline_path, labels) if baseline_path else None
    scored_baseline = baseline_path if baseline_path and not skip_reason else None

    with fsutil.atomic_dir(output_dir) as tmp:
        scores = score_test_split(
            model_dir, examples_dir, tmp, labels, config, scored_baseline, beam_setup
        )
        result = scores.metrics
        log.info(
            "test accuracy %.4f, loss %.4f on %d examples (%.1f s; %s)",
            result["accuracy"],
            result["loss"],
            result["num_examples"],
            time.monotonic() - started,
            ", ".join(f"{k}={v}" for k, v in scores.counters.items() if "." in k),
        )
        baseline_metrics = None
        if scored_baseline:
            baseline_metrics, skip_reason = _score_baseline(scored_baseline, scores)
        blessing = _blessing(result, config, baseline_path, baseline_metrics, skip_reason)
        blessing.update(model=model_dir, model_fingerprint=fingerprint)
        fsutil.write_json(fsutil.join(tmp, METRICS_FILE), result)
        if baseline_metrics:
            fsutil.write_json(fsutil.join(tmp, artifacts.BASELINE_METRICS_FILE), baseline_metrics)
        _write_plots(tmp, result, scores.errors, labels)
        fsutil.write_json(fsutil.join(tmp, BLESSING_FILE), blessing)
    log.info(
        "%s: %s",
        "BLESSED" if blessing["blessed"] else "NOT blessed",
        "; ".join(blessing["reasons"]),
    )
    return blessing


def _blessing(
    result: dict,
    config: EvaluatorConfig,
    baseline_path: str | None,
    baseline_metrics: dict | None,
    skip_reason: str | None,
) -> dict:
    """blessing.json's verdict and its reasons (without the model's path and fingerprint)."""
    baseline_accuracy = baseline_metrics["accuracy"] if baseline_metrics else None
    blessed, reasons = gate(
        result["accuracy"], config.min_accuracy, baseline_accuracy, config.max_regression
    )
    if skip_reason:
        reasons[-1] = skip_reason
    return {
        "blessed": blessed,
        "reasons": reasons,
        "accuracy": result["accuracy"],
        "threshold": config.min_accuracy,
        "max_regression": config.max_regression,
        "baseline_accuracy": baseline_accuracy,
        "baseline": baseline_path if baseline_metrics else None,
        "baseline_comparable": (
            None if not baseline_path else not (skip_reason or "").startswith(NOT_COMPARABLE)
        ),
    }


def _predictions_csv(preds: Predictions, labels: list[str]) -> str:
    """predictions.csv of the single-process scorer (the Beam job writes the same rows)."""
    from pipeline_components.evaluator import scoring

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(scoring.predictions_header(labels))
    for name, y, p in zip(preds.filenames, preds.y_true, preds.probabilities, strict=True):
        writer.writerow(scoring.prediction_row(name, int(y), p, labels))
    return buf.getvalue()


def _write_plots(out_dir: str, result: dict, errors: list[dict], labels: list[str]) -> None:
    from pipeline_components.evaluator import plots

    fsutil.write_atomic(
        fsutil.join(out_dir, artifacts.CONFUSION_MATRIX_PNG),
        plots.confusion_matrix_png(
            np.array(result["confusion_matrix"]), labels, result["accuracy"]
        ),
    )
    fsutil.write_atomic(
        fsutil.join(out_dir, artifacts.ERRORS_PNG), plots.errors_png(errors, labels)
    )
