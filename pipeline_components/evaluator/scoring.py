"""The Evaluator's Beam job: the test split's raw `image/encoded` bytes through RunInference on
the exported `serving_default`, then metrics by combiners (no step needs every prediction).

    shards --ReadShards--> (Example, bytes) --Reshuffle--> --Score[candidate]--> Scored
        Scored --ComputeMetrics--> metrics.json     (confusion matrix + loss sum: one global
                                                     combine; ROC AUC: per score bucket, then
                                                     one combine over <= 16,257 buckets)
        Scored --WritePredictions--> _predictions-SSSSS.csv per input shard, in record order
        Scored --FirstErrors--> the first `num_error_examples` misclassified (errors.png)
    (Example, bytes) --Score[baseline]--> ComputeMetrics --> baseline metrics (same run, same data)

Rows keep today's order: `Example.order` is (shard index, record index), and the driver joins
the per-shard fragments in shard order. Every transform here is tested on its own with
TestPipeline; `executor.run_evaluator` builds and runs the whole job.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline_components.core import beam as core_beam
from pipeline_components.core import examples, fsutil
from pipeline_components.evaluator import metrics
from pipeline_components.inference.handler import SignatureModelHandler
from pipeline_components.inference.results import WriteJson

COUNTER_NAMESPACE = "evaluator"
FAILED = "failed"
# Working files inside the temporary output directory, removed before it is renamed into place.
PREDICTIONS_PART = "_predictions-{:05d}.csv"
PREDICTIONS_PARTS_GLOB = "_predictions-*.csv"
METRICS_PART = "_metrics-{}.json"  # candidate | baseline
ERRORS_PART = "_errors.json"
FAILURES_PART = "_failures-{}.json"  # candidate | baseline


class Example(NamedTuple):
    order: tuple[int, int]  # (shard index, record index): predictions.csv's row order
    filename: str
    label: int


class Scored(NamedTuple):
    example: Example
    probabilities: np.ndarray  # float32 [C], as the signature returned them
    encoded: bytes  # the image, kept only for misclassified examples (errors.png); else b""


# ---------------------------------------------------------------- reading


class ReadShardFn(beam.DoFn):
    """(shard index, path) -> ((shard, record), serialized Example) for every record. A GZIP
    shard cannot be split, so a shard is read by one worker (as Beam's ReadFromTFRecord does);
    a Reshuffle after this spreads the records over the workers."""

    def setup(self) -> None:
        import tensorflow  # noqa: F401  (once per worker, not inside the first bundle)

    def process(self, element: tuple[int, str]) -> Iterator[tuple[tuple[int, int], bytes]]:
        import tensorflow as tf

        index, path = element
        dataset = tf.data.TFRecordDataset(path, compression_type="GZIP")
        for i, record in enumerate(dataset.as_numpy_iterator()):
            core_beam.count(COUNTER_NAMESPACE, "examples_read")
            yield (index, i), record


def parse_record(keyed: tuple[tuple[int, int], bytes]) -> tuple[Example, bytes]:
    from tensorflow.core.example import example_pb2

    order, record = keyed
    feature = example_pb2.Example.FromString(record).features.feature
    example = Example(
        order,
        feature[examples.FILENAME].bytes_list.value[0].decode("utf-8"),
        int(feature[examples.LABEL].int64_list.value[0]),
    )
    return example, feature[examples.ENCODED].bytes_list.value[0]


class ReadShards(beam.PTransform):
    """The split's shard files -> PCollection[(Example, encoded bytes)]."""

    def __init__(self, files: list[str]) -> None:
        super().__init__()
        self.files = list(files)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[tuple[Example, bytes]]:
        return (
            pbegin
            | "ListShards" >> beam.Create(list(enumerate(self.files)))
            | "ReadShard" >> beam.ParDo(ReadShardFn())
            | "Spread" >> beam.Reshuffle()
            | "Parse" >> beam.Map(parse_record)
        )


# ---------------------------------------------------------------- scoring


class _ToScored(beam.DoFn):
    def __init__(self, keep_misclassified: bool) -> None:
        self.keep_misclassified = keep_misclassified

    # Any: a PredictionResult (example: bytes, inference: dict), whose fields Beam types as
    # unbound TypeVars
    def process(self, element: tuple[Example, Any]) -> Iterator[Scored | beam.pvalue.TaggedOutput]:
        example, result = element
        if "error" in result.inference:
            core_beam.count(COUNTER_NAMESPACE, "failed")
            yield beam.pvalue.TaggedOutput(FAILED, (example, result.inference["error"]))
            return
        probabilities = np.asarray(result.inference["probabilities"], dtype=np.float32)
        wrong = int(probabilities.argmax()) != example.label
        core_beam.count(COUNTER_NAMESPACE, "scored")
        encoded = result.example if wrong and self.keep_misclassified else b""
        yield Scored(example, probabilities, encoded)


class Score(beam.PTransform):
    """(Example, bytes) -> Scored (main) and (Example, reason) for images the model rejected
    (output FAILED), with RunInference over the SavedModel's serving_default."""

    def __init__(
        self,
        model_dir: str,
        batch_size: int = 32,
        model_copies: int | None = None,
        keep_misclassified: bool = False,
    ) -> None:
        super().__init__()
        self.handler = SignatureModelHandler(
            model_dir, batch_size=batch_size, model_copies=model_copies
        )
        self.keep_misclassified = keep_misclassified

    def expand(self, pcoll: beam.PCollection[tuple[Example, bytes]]) -> beam.pvalue.DoOutputsTuple:
        return (
            pcoll
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler))
            | "ToScored"
            >> beam.ParDo(_ToScored(self.keep_misclassified)).with_outputs(FAILED, main="scored")
        )


# ---------------------------------------------------------------- metrics


class CountsFn(beam.CombineFn):
    """Scored -> (confusion matrix as lists, sum of -log p(true class)): what accuracy, loss
    and per-class precision/recall/F1 need, merged across workers."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def create_accumulator(self) -> list[Any]:
        return [np.zeros((self.num_classes, self.num_classes), dtype=np.int64), 0.0]

    def add_input(self, acc: list[Any], scored: Scored) -> list[Any]:
        acc[0][scored.example.label, int(scored.probabilities.argmax())] += 1
        acc[1] += metrics.example_loss(scored.probabilities, scored.example.label)
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        merged = self.create_accumulator()
        for cm, loss_sum in accumulators:
            merged[0] += cm
            merged[1] += loss_sum
        return merged

    def extract_output(self, acc: list[Any]) -> tuple[list[list[int]], float]:
        return acc[0].tolist(), float(acc[1])


class ScoreCountsFn(beam.CombineFn):
    """(score, positive) -> {score: [negatives, positives]} within one AUC bucket (bounded:
    a bucket spans 2**16 float32 values)."""

    def create_accumulator(self) -> dict[float, list[int]]:
        return {}

    def add_input(
        self, acc: dict[float, list[int]], item: tuple[float, bool]
    ) -> dict[float, list[int]]:
        score, positive = item
        acc.setdefault(score, [0, 0])[1 if positive else 0] += 1
        return acc

    def merge_accumulators(
        self, accumulators: Iterable[dict[float, list[int]]]
    ) -> dict[float, list[int]]:
        merged: dict[float, list[int]] = {}
        for acc in accumulators:
            for score, (neg, pos) in acc.items():
                counts = merged.setdefault(score, [0, 0])
                counts[0] += neg
                counts[1] += pos
        return merged

    def extract_output(self, acc: dict[float, list[int]]) -> dict[float, list[int]]:
        return acc


def _auc_item(scored: Scored) -> tuple[int, tuple[float, bool]]:
    score = float(scored.probabilities[1]) + 0.0  # the positive class = labels[1]
    return metrics.auc_bucket(score), (score, scored.example.label == 1)


def _finish(
    counts: tuple[list[list[int]], float], labels: list[str], auc: float | None
) -> dict[str, Any]:
    cm, loss_sum = counts
    num = int(np.sum(cm))
    return metrics.metrics_from_counts(
        np.array(cm, dtype=np.int64), loss_sum / num if num else float("nan"), labels, auc
    )


class ComputeMetrics(beam.PTransform):
    """PCollection[Scored] -> one metrics dict (metrics.json), equal to
    metrics.classification_metrics over all the predictions at once."""

    def __init__(self, labels: list[str]) -> None:
        super().__init__()
        self.labels = list(labels)

    def expand(self, scored: beam.PCollection[Scored]) -> beam.PCollection[dict[str, Any]]:
        counts = scored | "Counts" >> beam.CombineGlobally(CountsFn(len(self.labels)))
        if len(self.labels) != 2:
            return counts | "Finish" >> beam.Map(_finish, self.labels, None)
        auc = (
            scored
            | "ScoreBucket" >> beam.Map(_auc_item)
            | "CountPerScore" >> beam.CombinePerKey(ScoreCountsFn())
            | "BucketAuc" >> beam.MapTuple(lambda bucket, c: (bucket, *metrics.bucket_auc(c)))
            | "Buckets" >> beam.combiners.ToList()
            | "Auc" >> beam.Map(metrics.auc_from_buckets)
        )
        return counts | "Finish" >> beam.Map(_finish, self.labels, beam.pvalue.AsSingleton(auc))


# ---------------------------------------------------------------- predictions.csv, errors.png


def predictions_header(labels: list[str]) -> list[str]:
    return ["filename", "label", "predicted", "score", *[f"p_{c}" for c in labels]]


def prediction_row(filename: str, label: int, p: np.ndarray, labels: list[str]) -> list[str]:
    """One row of predictions.csv (the format the InfraValidator reads)."""
    return [
        filename,
        labels[label],
        labels[int(p.argmax())],
        f"{p.max():.6f}",
        *[f"{v:.6f}" for v in p],
    ]


class WriteFragmentFn(beam.DoFn):
    """(shard, [(record, filename, label, probabilities)]) -> work/_predictions-SSSSS.csv, rows
    in record order (one shard's rows: bounded by the shard size)."""

    def __init__(self, work_dir: str, labels: list[str]) -> None:
        self.work_dir = work_dir
        self.labels = list(labels)

    def process(
        self, element: tuple[int, Iterable[tuple[int, str, int, np.ndarray]]]
    ) -> Iterator[str]:
        shard, rows = element
        buf = io.StringIO()
        writer = csv.writer(buf)
        for _, filename, label, p in sorted(rows, key=lambda r: r[0]):
            writer.writerow(prediction_row(filename, label, p, self.labels))
        path = fsutil.join(self.work_dir, PREDICTIONS_PART.format(shard))
        fsutil.write_atomic(path, buf.getvalue().encode("utf-8"))
        yield path


class WritePredictions(beam.PTransform):
    def __init__(self, work_dir: str, labels: list[str]) -> None:
        super().__init__()
        self.fn = WriteFragmentFn(work_dir, labels)

    def expand(self, scored: beam.PCollection[Scored]) -> beam.PCollection[str]:
        return (
            scored
            | "ByShard"
            >> beam.Map(
                lambda s: (
                    s.example.order[0],
                    (s.example.order[1], s.example.filename, s.example.label, s.probabilities),
                )
            )
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteFragment" >> beam.ParDo(self.fn)
        )


def join_predictions(work_dir: str, path: str, labels: list[str]) -> None:
    """predictions.csv = the header + every fragment in shard order (streamed, not held in
    memory); the fragments are removed."""
    gfile = fsutil.gfile()
    parts = sorted(gfile.glob(fsutil.join(work_dir, PREDICTIONS_PARTS_GLOB)))
    with gfile.GFile(path, "wb") as out:  # bytes: csv's \r\n line ends stay as they are
        buf = io.StringIO()
        csv.writer(buf).writerow(predictions_header(labels))
        out.write(buf.getvalue().encode("utf-8"))
        for part in parts:
            out.write(fsutil.read_bytes(part))
    for part in parts:
        gfile.remove(part)


def _error_item(scored: Scored) -> tuple[tuple[int, int], dict[str, Any]]:
    p = scored.probabilities
    return scored.example.order, {
        "encoded": base64.b64encode(scored.encoded).decode("ascii"),
        "filename": scored.example.filename,
        "true": scored.example.label,
        "pred": int(p.argmax()),
        "score": float(p.max()),
    }


def decode_errors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**item, "encoded": base64.b64decode(item["encoded"])} for item in items]


class FirstErrors(beam.PTransform):
    """The first `n` misclassified examples in predictions.csv order -> one list of dicts
    (encoded as base64) for errors.png."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def expand(self, scored: beam.PCollection[Scored]) -> beam.PCollection[list[dict[str, Any]]]:
        return (
            scored
            | "Misclassified" >> beam.Filter(lambda s: bool(s.encoded))
            | "WithOrder" >> beam.Map(_error_item)
            | "First" >> beam.combiners.Top.Smallest(self.n, key=lambda item: item[0])
            | "DropOrder" >> beam.Map(lambda items: [item for _, item in items])
        )


class FirstFailure(beam.PTransform):
    """(Example, reason) of images the model rejected -> [] or [filename, reason] of the first."""

    def expand(
        self, failed: beam.PCollection[tuple[Example, str]]
    ) -> beam.PCollection[list[list[str]]]:
        return (
            failed
            | "First" >> beam.combiners.Top.Smallest(1, key=lambda item: item[0].order)
            | "Describe" >> beam.Map(lambda items: [[e.filename, r] for e, r in items])
        )


# ---------------------------------------------------------------- the whole job


def build_pipeline(
    p: beam.Pipeline,
    files: list[str],
    work_dir: str,
    labels: list[str],
    model_dir: str,
    *,
    baseline_dir: str | None = None,
    batch_size: int = 32,
    model_copies: int | None = None,
    num_error_examples: int = 12,
) -> None:
    """Score the candidate (and the baseline) on the shards; write the working files the driver
    reads: _metrics-{candidate,baseline}.json, _failures-{candidate,baseline}.json,
    _predictions-*.csv and _errors.json."""
    records = p | "ReadTestSplit" >> ReadShards(files)
    scored = records | "ScoreCandidate" >> Score(
        model_dir, batch_size, model_copies, keep_misclassified=num_error_examples > 0
    )
    _ = (
        scored.scored
        | "CandidateMetrics" >> ComputeMetrics(labels)
        | "WriteCandidateMetrics"
        >> beam.ParDo(WriteJson(fsutil.join(work_dir, METRICS_PART.format("candidate"))))
    )
    _ = scored.scored | "WritePredictions" >> WritePredictions(work_dir, labels)
    if num_error_examples > 0:
        _ = (
            scored.scored
            | "FirstErrors" >> FirstErrors(num_error_examples)
            | "WriteErrors" >> beam.ParDo(WriteJson(fsutil.join(work_dir, ERRORS_PART)))
        )
    _ = (
        scored[FAILED]
        | "FirstFailure" >> FirstFailure()
        | "WriteFailures"
        >> beam.ParDo(WriteJson(fsutil.join(work_dir, FAILURES_PART.format("candidate"))))
    )
    if baseline_dir:
        base = records | "ScoreBaseline" >> Score(baseline_dir, batch_size, model_copies)
        _ = (
            base.scored
            | "BaselineMetrics" >> ComputeMetrics(labels)
            | "WriteBaselineMetrics"
            >> beam.ParDo(WriteJson(fsutil.join(work_dir, METRICS_PART.format("baseline"))))
        )
        _ = (
            base[FAILED]
            | "BaselineFirstFailure" >> FirstFailure()
            | "WriteBaselineFailures"
            >> beam.ParDo(WriteJson(fsutil.join(work_dir, FAILURES_PART.format("baseline"))))
        )
