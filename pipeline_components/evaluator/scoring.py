"""The Evaluator's Beam job: the test split's raw `image/encoded` bytes through RunInference on
the exported `serving_default`; every prediction goes to per-shard fragments the driver reads.

    shards --ReadShards--> (Example, bytes) --Reshuffle--> --Score[candidate]--> Scored
        Scored --WritePredictions--> per input shard, in record order:
                 _predictions-SSSSS.csv        (predictions.csv's rows)
                 _scores-candidate-SSSSS.npz   (labels, float32 probabilities, height, width,
                                                filenames: what every metric and slice needs)
        Scored --TopMistakes--> the `mistakes_per_class` most confident wrong images of each
                                true class, `num_error_examples` in all (mistakes.png, with
                                Grad-CAM heat maps)
    (Example, bytes) --Score[baseline]--> WriteScores --> _scores-baseline-SSSSS.npz
                                          (same run, same records: a paired comparison)

Metrics are computed by the driver on the collected predictions (analysis.py), not by combiners:
the bootstrap and the paired comparison resample examples jointly, AUC and average precision
need every score sorted, and slices are group-bys of the same rows. The test split is bounded;
the driver holds 4 x (C + 4) bytes per example and model (1M images of 10 classes: ~56 MB each)
and reads the fragments one shard at a time.

Rows keep today's order: `Example.order` is (shard index, record index), and the driver joins
the per-shard fragments in shard order. Every transform here is tested on its own with
TestPipeline; `executor.run_evaluator` builds and runs the whole job.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline_components.core import beam as core_beam
from pipeline_components.core import examples, fsutil
from pipeline_components.evaluator.slicing import SliceBuilder
from pipeline_components.inference.handler import SignatureModelHandler
from pipeline_components.inference.results import WriteJson

COUNTER_NAMESPACE = "evaluator"
FAILED = "failed"
# Working files inside the temporary output directory, removed before it is renamed into place.
PREDICTIONS_PART = "_predictions-{:05d}.csv"
PREDICTIONS_PARTS_GLOB = "_predictions-*.csv"
SCORES_PART = "_scores-{}-{:05d}.npz"  # candidate | baseline, input shard
SCORES_PARTS_GLOB = "_scores-{}-*.npz"
MISTAKES_PART = "_mistakes.json"
FAILURES_PART = "_failures-{}.json"  # candidate | baseline


class Example(NamedTuple):
    order: tuple[int, int]  # (shard index, record index): predictions.csv's row order
    filename: str
    label: int
    height: int = 0  # as ExampleGen recorded them (the size slices)
    width: int = 0


class Scored(NamedTuple):
    example: Example
    probabilities: np.ndarray  # float32 [C], as the signature returned them
    encoded: bytes  # the image, kept only for misclassified examples (mistakes.png); else b""


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
        int(feature[examples.HEIGHT].int64_list.value[0]),
        int(feature[examples.WIDTH].int64_list.value[0]),
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


# ------------------------------------------------------------- predictions.csv, mistakes.png


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


class Row(NamedTuple):
    """One scored example inside its shard's group."""

    record: int
    filename: str
    label: int
    height: int
    width: int
    probabilities: np.ndarray


def _row(scored: Scored) -> tuple[int, Row]:
    e = scored.example
    return e.order[0], Row(e.order[1], e.filename, e.label, e.height, e.width, scored.probabilities)


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def scores_fragment(rows: list[Row], num_classes: int, with_examples: bool) -> bytes:
    """A shard's scores as .npz: record, probabilities and, for the candidate, label, height,
    width and filenames (JSON, UTF-8: any name round-trips)."""
    arrays = {
        "record": np.array([r.record for r in rows], dtype=np.int64),
        "probabilities": np.array([r.probabilities for r in rows], dtype=np.float32).reshape(
            len(rows), num_classes
        ),
    }
    if with_examples:
        arrays["label"] = np.array([r.label for r in rows], dtype=np.int32)
        arrays["height"] = np.array([r.height for r in rows], dtype=np.int32)
        arrays["width"] = np.array([r.width for r in rows], dtype=np.int32)
        names = json.dumps([r.filename for r in rows], ensure_ascii=False).encode("utf-8")
        arrays["filenames"] = np.frombuffer(names, dtype=np.uint8)
    return npz_bytes(arrays)


class WriteFragmentFn(beam.DoFn):
    """(shard, [Row]) -> work/_predictions-SSSSS.csv and work/_scores-<role>-SSSSS.npz, rows in
    record order (one shard's rows: bounded by the shard size). The baseline writes scores
    only."""

    def __init__(self, work_dir: str, labels: list[str], role: str = "candidate") -> None:
        self.work_dir = work_dir
        self.labels = list(labels)
        self.role = role

    def process(self, element: tuple[int, Iterable[Row]]) -> Iterator[str]:
        shard, group = element
        rows = sorted(group, key=lambda r: r.record)
        candidate = self.role == "candidate"
        if candidate:
            buf = io.StringIO()
            writer = csv.writer(buf)
            for r in rows:
                writer.writerow(prediction_row(r.filename, r.label, r.probabilities, self.labels))
            path = fsutil.join(self.work_dir, PREDICTIONS_PART.format(shard))
            fsutil.write_atomic(path, buf.getvalue().encode("utf-8"))
            yield path
        path = fsutil.join(self.work_dir, SCORES_PART.format(self.role, shard))
        fsutil.write_atomic(path, scores_fragment(rows, len(self.labels), candidate))
        yield path


class WritePredictions(beam.PTransform):
    """Scored -> the per-shard fragments of predictions.csv and the scores (role candidate),
    or the scores alone (role baseline)."""

    def __init__(self, work_dir: str, labels: list[str], role: str = "candidate") -> None:
        super().__init__()
        self.fn = WriteFragmentFn(work_dir, labels, role)

    def expand(self, scored: beam.PCollection[Scored]) -> beam.PCollection[str]:
        return (
            scored
            | "ByShard" >> beam.Map(_row)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteFragment" >> beam.ParDo(self.fn)
        )


class ShardScores(NamedTuple):
    record: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float32 [n, C]
    label: np.ndarray | None  # int32 [n] (candidate only)
    height: np.ndarray | None
    width: np.ndarray | None
    filenames: list[str] | None


def read_fragment(path: str) -> ShardScores:
    with np.load(io.BytesIO(fsutil.read_bytes(path)), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    names = arrays.pop("filenames", None)
    return ShardScores(
        arrays["record"],
        arrays["probabilities"],
        arrays.get("label"),
        arrays.get("height"),
        arrays.get("width"),
        json.loads(names.tobytes().decode("utf-8")) if names is not None else None,
    )


class Collected(NamedTuple):
    y: np.ndarray  # int64 [n], in predictions.csv's order
    candidate: np.ndarray  # float32 [n, C]
    baseline: np.ndarray | None  # float32 [n, C] of the same records; None: not scored/complete


def collect(
    work_dir: str, num_classes: int, slices: SliceBuilder, with_baseline: bool
) -> Collected:
    """Every scores fragment in shard order, one shard in memory at a time besides the arrays;
    the slice codes go to `slices` (filenames are not kept). The fragments are removed. The
    baseline is dropped unless it scored exactly the candidate's records."""
    gfile = fsutil.gfile()
    ys: list[np.ndarray] = []
    cands: list[np.ndarray] = []
    bases: list[np.ndarray] | None = [] if with_baseline else None
    for path in sorted(gfile.glob(fsutil.join(work_dir, SCORES_PARTS_GLOB.format("candidate")))):
        part = read_fragment(path)
        assert part.label is not None and part.filenames is not None
        assert part.height is not None and part.width is not None
        ys.append(part.label.astype(np.int64))
        cands.append(part.probabilities)
        slices.add(part.filenames, part.label, part.height, part.width)
        gfile.remove(path)
        base_path = path.replace("_scores-candidate-", "_scores-baseline-")
        if bases is not None and fsutil.exists(base_path):
            base = read_fragment(base_path)
            gfile.remove(base_path)
            if np.array_equal(base.record, part.record):
                bases.append(base.probabilities)
            else:
                bases = None
        elif bases is not None:
            bases = None
    for leftover in gfile.glob(fsutil.join(work_dir, SCORES_PARTS_GLOB.format("baseline"))):
        gfile.remove(leftover)

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, num_classes), np.float32)

    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    return Collected(y, joined(cands), joined(bases) if bases is not None else None)


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


def _mistake_item(scored: Scored) -> tuple[int, tuple[float, tuple[int, int], dict[str, Any]]]:
    order, item = _error_item(scored)
    return scored.example.label, (item["score"], order, item)


def _ranked(
    element: tuple[int, list[tuple[float, tuple[int, int], dict[str, Any]]]],
) -> Iterator[tuple[tuple[int, float, int, tuple[int, int]], dict[str, Any]]]:
    """A class's most confident mistakes -> ((rank in class, -score, class, order), item)."""
    label, ranked = element
    for rank, (score, order, item) in enumerate(ranked):
        yield (rank, -score, label, order), item


def _by_class(chosen: list[tuple[tuple[int, float, int, tuple[int, int]], Any]]) -> list[Any]:
    """The chosen mistakes class by class, each class's most confident first."""
    return [item for _, item in sorted(chosen, key=lambda c: (c[0][2], c[0][0]))]


class TopMistakes(beam.PTransform):
    """The `n` most confident wrong predictions of each true class (highest score of the wrong
    class; ties: the earlier record), at most `limit` in all -> one list of dicts (encoded as
    base64), class by class: the images the Grad-CAM gallery explains. Over the limit, every
    class's first mistake comes before any class's second (the most confident first), so many
    classes still each get one; no step holds more than n per class or `limit` images."""

    def __init__(self, n: int, limit: int = 24) -> None:
        super().__init__()
        self.n = n
        self.limit = limit

    def expand(self, scored: beam.PCollection[Scored]) -> beam.PCollection[list[dict[str, Any]]]:
        return (
            scored
            | "Misclassified" >> beam.Filter(lambda s: bool(s.encoded))
            | "ByTrueClass" >> beam.Map(_mistake_item)
            | "MostConfident"
            >> beam.combiners.Top.PerKey(self.n, key=lambda item: (item[0], _neg(item[1])))
            | "Ranked" >> beam.FlatMap(_ranked)
            | "UpToLimit" >> beam.combiners.Top.Smallest(self.limit, key=lambda c: c[0])
            | "ByClass" >> beam.Map(_by_class)
        )


def _neg(order: tuple[int, int]) -> tuple[int, int]:
    return -order[0], -order[1]


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
    mistakes_per_class: int = 0,
    max_mistakes: int = 24,
) -> None:
    """Score the candidate (and the baseline) on the shards; write the working files the driver
    reads: _scores-{candidate,baseline}-*.npz, _predictions-*.csv,
    _failures-{candidate,baseline}.json and _mistakes.json."""
    records = p | "ReadTestSplit" >> ReadShards(files)
    keep = mistakes_per_class > 0 and max_mistakes > 0
    scored = records | "ScoreCandidate" >> Score(
        model_dir, batch_size, model_copies, keep_misclassified=keep
    )
    _ = scored.scored | "WritePredictions" >> WritePredictions(work_dir, labels)
    if keep:
        _ = (
            scored.scored
            | "TopMistakes" >> TopMistakes(mistakes_per_class, max_mistakes)
            | "WriteMistakes" >> beam.ParDo(WriteJson(fsutil.join(work_dir, MISTAKES_PART)))
        )
    _ = (
        scored[FAILED]
        | "FirstFailure" >> FirstFailure()
        | "WriteFailures"
        >> beam.ParDo(WriteJson(fsutil.join(work_dir, FAILURES_PART.format("candidate"))))
    )
    if baseline_dir:
        base = records | "ScoreBaseline" >> Score(baseline_dir, batch_size, model_copies)
        _ = base.scored | "WriteBaselineScores" >> WritePredictions(work_dir, labels, "baseline")
        _ = (
            base[FAILED]
            | "BaselineFirstFailure" >> FirstFailure()
            | "WriteBaselineFailures"
            >> beam.ParDo(WriteJson(fsutil.join(work_dir, FAILURES_PART.format("baseline"))))
        )
