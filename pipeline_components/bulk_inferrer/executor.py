"""The BulkInferrer's executor: label a folder of images (or ExampleGen's TFRecords) with a
SavedModel, as a Beam job with RunInference (the spec and CLI are in component.py).

    files ──MatchFiles──Reshuffle──ReadAndCheck──┬─▶ (path, bytes) ──RunInference──ToRows──┐
    TFRecords ──ReadAllFromTFRecord──ParseExample─┘                                        │
        rows ─▶ predictions-SSSSS-of-NNNNN.jsonl (or .csv)      ◀──────────────────────────┤
        PredictionLogs ─▶ prediction_logs-SSSSS-of-NNNNN.tfrecord                       │
        errors (read, header, model) ─▶ errors-SSSSS-of-NNNNN.jsonl                        │
        counts per class, errors ─▶ summary.json                                           ┘

Files are listed and read through Beam's FileSystems (local, gs://, s3://). Before an image
reaches the model its header is read (`core.image_header`, the check ExampleGen makes): empty
files, non-images, WebP and images over the pixel limit become error rows without being decoded;
an image the model still rejects (a corrupt JPEG body) is isolated by the model handler and
becomes an error row too. Nothing stops the job but a broken model or an unreadable output.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipeline_components.bulk_inferrer.config import BatchPredictConfig
from pipeline_components.core import artifacts, examples, fsutil, image_header
from pipeline_components.core import beam as core_beam
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.inference import results
from pipeline_components.inference.handler import SignatureModelHandler

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "batch_predict"
ERRORS = "errors"
LOGS = "logs"
SUMMARY_PART = "_summary.json"  # working file, replaced by summary.json
FORMATS = ("jsonl", "csv")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")
_GLOB_CHARS = "*?["
NUM_ERROR_EXAMPLES = 20  # in summary.json; every error is in errors-*.jsonl


# ---------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The SavedModel to use and how rows name it."""

    path: str
    name: str
    version: int | None
    labels: tuple[str, ...] = ()
    max_image_pixels: int | None = None  # the limit recorded at export


def resolve_model(
    model: str,
    version: int | None = None,
    version_label: str | None = None,
    model_config_file: str | None = None,
    model_name: str | None = None,
) -> ModelRef:
    """`model` is a SavedModel directory or a model base path (<serving_dir>/<name>, with
    numbered versions): then its newest version, `version`, or the version `version_label`
    names in a TF Serving models.config. One-line errors."""
    model = str(model).rstrip("/")
    if version is not None and version_label:
        raise PipelineError("give --version or --version-label, not both")
    if artifacts.is_saved_model(model):
        if version is not None or version_label:
            raise PipelineError(
                f"{model} is a SavedModel; --version and --version-label pick a version of a "
                "model base path (<serving_dir>/<model_name>)"
            )
        base = fsutil.basename(model)
        numbered = artifacts.VERSION_DIR.fullmatch(base) is not None
        name = model_name or (fsutil.basename(fsutil.parent(model)) if numbered else base)
        return _ref(model, name, int(base) if numbered else None)
    versions = artifacts.served_versions(model)
    if not versions:
        raise PipelineError(
            f"--model {model} is neither a SavedModel nor a model base path with versions "
            "(<serving_dir>/<model_name>/<version>/saved_model.pb)"
        )
    name = model_name or fsutil.basename(model)
    if version_label:
        version = _version_for_label(version_label, model_config_file, name)
    if version is None:
        version = max(versions)
    if version not in versions:
        listed = ", ".join(map(str, versions))
        raise PipelineError(f"version {version} of {model} does not exist (versions: {listed})")
    return _ref(versions[version], name, version)


def _ref(path: str, name: str, version: int | None) -> ModelRef:
    try:
        labels = tuple(artifacts.read_labels_asset(path))
    except Exception:
        raise PipelineError(f"SavedModel {path} has no assets/labels.txt") from None
    return ModelRef(path, name, version, labels, artifacts.read_max_image_pixels(path))


def _version_for_label(label: str, config_file: str | None, name: str) -> int:
    # TF Serving's models.config is the one place labels are defined; its parser (with the
    # tensorflow_serving protos) lives with the model server.
    from serving.model_config import load_model_config_file

    if not config_file:
        raise PipelineError(
            f"--version-label {label} needs --model-config-file (the models.config that "
            "defines the label)"
        )
    configs = {c.name: c for c in load_model_config_file(config_file)}
    if name not in configs:
        raise PipelineError(
            f"{config_file} has no model named {name!r} (models: {', '.join(configs)}); "
            "set --model-name"
        )
    labels = configs[name].labels
    if label not in labels:
        known = ", ".join(sorted(labels)) or "none"
        raise PipelineError(
            f"version label {label!r} is not defined for model {name!r} in {config_file} "
            f"(labels: {known})"
        )
    return int(labels[label])


# ---------------------------------------------------------------- the input


@dataclasses.dataclass(frozen=True)
class InputSpec:
    kind: str  # "files" (image files) or "tfrecords" (ExampleGen's tf.train.Examples)
    patterns: tuple[str, ...]


def _has_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def resolve_input(path: str) -> InputSpec:
    """An image folder (every file below it, any depth), a glob, one file, an ExampleGen output
    directory (every split) or a glob of TFRecord files. Fails in one line when nothing
    matches."""
    path = str(path)
    if not fsutil.is_remote(path):
        path = os.path.abspath(path)
        if not _has_glob(path) and not fsutil.exists(path):
            raise PipelineError(f"input {path} does not exist")
    if not _has_glob(path) and _is_examples_dir(path):
        patterns = tuple(
            artifacts.shard_pattern(path, split)
            for split in artifacts.SPLITS
            if _matches(artifacts.shard_pattern(path, split))
        )
        return InputSpec("tfrecords", patterns)
    if _has_glob(path):
        spec = InputSpec(
            "tfrecords" if path.lower().endswith(TFRECORD_SUFFIXES) else "files", (path,)
        )
    elif fsutil.is_remote(path) or fsutil.isdir(path):
        spec = InputSpec("files", (FileSystems.join(path.rstrip("/"), "**"),))
    else:
        spec = InputSpec("tfrecords" if path.lower().endswith(TFRECORD_SUFFIXES) else "files",
                         (path,))  # fmt: skip
    if not _matches(spec.patterns[0]):
        raise PipelineError(f"input {path} matches no files")
    return spec


def _is_examples_dir(path: str) -> bool:
    """ExampleGen's layout: labels.txt next to <split>/ folders of TFRecord shards."""
    try:  # Beam's FileSystems, not tf.io.gfile: TensorFlow 2.21 has no s3://
        labels = FileSystems.exists(FileSystems.join(path, artifacts.LABELS_FILE))
    except Exception:
        return False
    return labels and any(
        _matches(artifacts.shard_pattern(path, split)) for split in artifacts.SPLITS
    )


def _matches(pattern: str) -> bool:
    try:
        return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    except Exception as e:  # BeamIOError: unknown scheme, missing credentials, ...
        if "No files found" in str(e) or "not found" in str(e).lower():
            return False
        raise PipelineError(f"cannot list {pattern}: {' '.join(str(e).split())}") from None


def input_fingerprint(path: str, beam_args: Sequence[str] | None = None) -> dict[str, Any]:
    """(path, size, mtime) of every input file, hashed: one listing, no reads (cache key)."""
    import hashlib

    core_beam.set_filesystem_options(beam_args)
    spec = resolve_input(path)
    listing = []
    for pattern in spec.patterns:
        for m in FileSystems.match([pattern])[0].metadata_list:
            listing.append((m.path, m.size_in_bytes, m.last_updated_in_seconds))
    digest = hashlib.sha256(json.dumps(sorted(listing)).encode()).hexdigest()
    return {"num_files": len(listing), "sha256": digest}


# ---------------------------------------------------------------- reading and checking


def _is_hidden(path: str) -> bool:
    name = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini")


def check_image(data: bytes, max_image_pixels: int) -> str | None:
    """Why these bytes cannot be sent to `serving_default`, judged from the header only (no
    decoding): None when they may be."""
    if not data:
        return "empty file (0 bytes)"
    try:
        header = image_header.read_header(data)
    except image_header.HeaderError as e:
        if str(e).startswith("not a "):
            return "not an image (not a JPEG, PNG, GIF, BMP or WebP file)"
        return f"corrupt image: {e}"
    if header.fmt == "webp":
        return "unsupported image format webp (serving_default takes JPEG, PNG, GIF or BMP)"
    return header.too_large(max_image_pixels)


class ReadAndCheckFn(beam.DoFn):
    """path -> (path, bytes), or (path, reason) on the ERRORS output; hidden and system files
    (.DS_Store, Thumbs.db, dotfiles) are skipped and only counted."""

    def __init__(self, max_image_pixels: int) -> None:
        self.max_image_pixels = max_image_pixels

    def process(self, path: str) -> Iterator[tuple[str, bytes] | beam.pvalue.TaggedOutput]:
        if _is_hidden(path):
            core_beam.count(COUNTER_NAMESPACE, "hidden_files_skipped")
            return
        try:
            # UNCOMPRESSED: FileSystems would otherwise gunzip a file that ends in .gz
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except Exception as e:  # permission denied, object vanished, ...
            reason = f"unreadable: {' '.join(str(e).split())}"
            yield beam.pvalue.TaggedOutput(ERRORS, (path, reason))
            return
        core_beam.count(COUNTER_NAMESPACE, "files_read")
        yield from _checked(path, data, self.max_image_pixels)


def _checked(
    path: str, data: bytes, max_image_pixels: int
) -> Iterator[tuple[str, bytes] | beam.pvalue.TaggedOutput]:
    reason = check_image(data, max_image_pixels)
    if reason:
        yield beam.pvalue.TaggedOutput(ERRORS, (path, reason))
    else:
        yield path, data


class ParseExampleFn(beam.DoFn):
    """A serialized tf.train.Example of ExampleGen -> (image/filename, image/encoded)."""

    def __init__(self, max_image_pixels: int) -> None:
        self.max_image_pixels = max_image_pixels

    def process(self, record: bytes) -> Iterator[tuple[str, bytes] | beam.pvalue.TaggedOutput]:
        from tensorflow.core.example import example_pb2

        core_beam.count(COUNTER_NAMESPACE, "records_read")
        try:
            feature = example_pb2.Example.FromString(record).features.feature
            path = feature[examples.FILENAME].bytes_list.value[0].decode("utf-8")
            data = feature[examples.ENCODED].bytes_list.value[0]
        except Exception as e:
            reason = f"not an ExampleGen record: {' '.join(str(e).split()) or type(e).__name__}"
            yield beam.pvalue.TaggedOutput(ERRORS, ("<record>", reason))
            return
        yield from _checked(path, data, self.max_image_pixels)


class ReadImages(beam.PTransform):
    """InputSpec -> PCollection[(path, bytes)] and, on ERRORS, PCollection[(path, reason)]."""

    def __init__(self, spec: InputSpec, max_image_pixels: int) -> None:
        super().__init__()
        self.spec = spec
        self.max_image_pixels = max_image_pixels

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        if self.spec.kind == "tfrecords":
            return (
                pbegin
                | "Patterns" >> beam.Create(list(self.spec.patterns))
                | "ReadTFRecords" >> beam.io.ReadAllFromTFRecord()
                | "Spread" >> beam.Reshuffle()
                | "ParseExamples"
                >> beam.ParDo(ParseExampleFn(self.max_image_pixels)).with_outputs(
                    ERRORS, main="images"
                )
            )
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.spec.patterns[0])
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Spread" >> beam.Reshuffle()
            | "ReadAndCheck"
            >> beam.ParDo(ReadAndCheckFn(self.max_image_pixels)).with_outputs(ERRORS, main="images")
        )


# ---------------------------------------------------------------- predictions


def prediction_row(path: str, out: dict[str, Any], model: ModelRef) -> dict[str, Any]:
    """One output row: path, class, class_id, score, every probability, model name, version."""
    probabilities = np.asarray(out["probabilities"], dtype=np.float32)
    labels = model.labels or tuple(str(i) for i in range(len(probabilities)))
    class_id = int(out.get("class_ids", int(probabilities.argmax())))
    return {
        "path": path,
        "class": str(out.get("classes", labels[class_id])),
        "class_id": class_id,
        "score": float(out.get("scores", probabilities[class_id])),
        "probabilities": {c: float(p) for c, p in zip(labels, probabilities, strict=True)},
        "model_name": model.name,
        "model_version": model.version,
    }


def csv_header(model: ModelRef) -> str:
    return _csv_line(
        ["path", "class", "score", *[f"p_{c}" for c in model.labels], "model_name", "model_version"]
    )


def csv_row(row: dict[str, Any]) -> str:
    return _csv_line(
        [
            row["path"],
            row["class"],
            repr(row["score"]),
            *[repr(p) for p in row["probabilities"].values()],
            row["model_name"],
            "" if row["model_version"] is None else row["model_version"],
        ]
    )


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def prediction_log(encoded: bytes, out: dict[str, Any], model: ModelRef) -> bytes:
    """A serialized tensorflow.serving.PredictionLog (predict_log: the request TF Serving would
    have received for this image, and its response), as TFX's BulkInferrer writes them."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    def tensor(dtype: int, dims: list[int]) -> tensor_pb2.TensorProto:
        shape = tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]
        )
        return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape)

    entry = prediction_log_pb2.PredictionLog()
    request, response = entry.predict_log.request, entry.predict_log.response
    for spec in (request.model_spec, response.model_spec):
        spec.name = model.name
        spec.signature_name = artifacts.SERVING_SIGNATURE
        if model.version is not None:
            spec.version.value = model.version
    images = tensor(types_pb2.DT_STRING, [1])
    images.string_val.append(encoded)
    request.inputs[artifacts.IMAGES_INPUT].CopyFrom(images)
    probabilities = np.asarray(out["probabilities"], dtype=np.float32)
    outputs = response.outputs
    outputs["probabilities"].CopyFrom(tensor(types_pb2.DT_FLOAT, [1, len(probabilities)]))
    outputs["probabilities"].float_val.extend(probabilities.tolist())
    outputs["scores"].CopyFrom(tensor(types_pb2.DT_FLOAT, [1]))
    outputs["scores"].float_val.append(float(out["scores"]))
    outputs["class_ids"].CopyFrom(tensor(types_pb2.DT_INT64, [1]))
    outputs["class_ids"].int64_val.append(int(out["class_ids"]))
    outputs["classes"].CopyFrom(tensor(types_pb2.DT_STRING, [1]))
    outputs["classes"].string_val.append(str(out["classes"]).encode("utf-8"))
    return entry.SerializeToString(deterministic=True)


class ToRowsFn(beam.DoFn):
    """(path, PredictionResult) -> row dict (main), serialized PredictionLog (LOGS), or
    (path, reason) (ERRORS) when the model rejected the image."""

    def __init__(self, model: ModelRef) -> None:
        self.model = model

    # Any: a PredictionResult (example: bytes, inference: dict), whose fields Beam types as
    # unbound TypeVars
    def process(
        self, element: tuple[str, Any]
    ) -> Iterator[dict[str, Any] | beam.pvalue.TaggedOutput]:
        path, result = element
        out = result.inference
        if "error" in out:
            core_beam.count(COUNTER_NAMESPACE, "model_errors")
            yield beam.pvalue.TaggedOutput(ERRORS, (path, f"undecodable: {out['error']}"))
            return
        row = prediction_row(path, out, self.model)
        core_beam.count(COUNTER_NAMESPACE, "predicted")
        core_beam.count(COUNTER_NAMESPACE, f"class_{row['class']}")
        yield row
        yield beam.pvalue.TaggedOutput(LOGS, prediction_log(result.example, out, self.model))


class Predict(beam.PTransform):
    """(path, bytes) -> rows (main), PredictionLogs (LOGS), model rejections (ERRORS)."""

    def __init__(
        self, model: ModelRef, batch_size: int = 32, model_copies: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.handler = SignatureModelHandler(
            model.path, batch_size=batch_size, model_copies=model_copies
        )

    def expand(self, images: beam.PCollection[tuple[str, bytes]]) -> beam.pvalue.DoOutputsTuple:
        return (
            images
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler))
            | "ToRows" >> beam.ParDo(ToRowsFn(self.model)).with_outputs(LOGS, ERRORS, main="rows")
        )


def _error_row(item: tuple[str, str]) -> dict[str, str]:
    core_beam.count(COUNTER_NAMESPACE, "errors")
    return {"path": item[0], "reason": item[1]}


def _summary(
    per_class: list[tuple[str, int]], num_errors: int, first_errors: list[dict[str, str]]
) -> dict[str, Any]:
    counts = dict(sorted(per_class))
    return {
        "num_predictions": sum(counts.values()),
        "per_class": counts,
        "num_errors": num_errors,
        "first_errors": first_errors,
    }


def _write_predictions(
    rows: beam.PCollection, out_dir: str, output_format: str, num_shards: int, model: ModelRef
) -> None:
    """predictions-*.jsonl, or predictions-*.csv with a header in every shard."""
    prefix = fsutil.join(out_dir, artifacts.BATCH_PREDICTIONS_PREFIX)
    if output_format == "csv":
        _ = (
            rows
            | "ToCsv" >> beam.Map(csv_row)
            | "WriteCsv"
            >> beam.io.WriteToText(
                prefix, file_name_suffix=".csv", num_shards=num_shards, header=csv_header(model)
            )
        )
    else:
        _ = (
            rows
            | "ToJson" >> beam.Map(json.dumps)
            | "WriteJsonLines"
            >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", num_shards=num_shards)
        )


def build_pipeline(
    p: beam.Pipeline,
    spec: InputSpec,
    model: ModelRef,
    out_dir: str,
    *,
    output_format: str = "jsonl",
    batch_size: int = 32,
    num_shards: int = 0,
    max_image_pixels: int = image_header.DEFAULT_MAX_IMAGE_PIXELS,
    model_copies: int | None = None,
) -> None:
    """Everything the job writes goes under out_dir (see the module docstring)."""
    read = p | "ReadImages" >> ReadImages(spec, max_image_pixels)
    predicted = read.images | "Predict" >> Predict(model, batch_size, model_copies)
    rows = predicted.rows
    _write_predictions(rows, out_dir, output_format, num_shards, model)
    _ = predicted[LOGS] | "WritePredictionLogs" >> beam.io.WriteToTFRecord(
        fsutil.join(out_dir, artifacts.PREDICTION_LOGS_PREFIX),
        file_name_suffix=artifacts.PREDICTION_LOGS_SUFFIX,
        num_shards=num_shards,
    )
    errors = (read[ERRORS], predicted[ERRORS]) | "AllErrors" >> beam.Flatten()
    error_rows = errors | "ErrorRows" >> beam.Map(_error_row)
    _ = (
        error_rows
        | "ErrorsToJson" >> beam.Map(json.dumps)
        | "WriteErrors"
        >> beam.io.WriteToText(
            fsutil.join(out_dir, artifacts.BATCH_ERRORS_PREFIX),
            file_name_suffix=".jsonl",
            num_shards=num_shards,
        )
    )
    per_class = (
        rows
        | "Classes" >> beam.Map(lambda row: row["class"])
        | "CountPerClass" >> beam.combiners.Count.PerElement()
        | "PerClassList" >> beam.combiners.ToList()
    )
    num_errors = error_rows | "CountErrors" >> beam.combiners.Count.Globally()
    first_errors = error_rows | "FirstErrors" >> beam.combiners.Top.Smallest(
        NUM_ERROR_EXAMPLES, key=lambda row: row["path"]
    )
    _ = (
        per_class
        | "Summary"
        >> beam.Map(
            _summary, beam.pvalue.AsSingleton(num_errors), beam.pvalue.AsSingleton(first_errors)
        )
        | "WriteSummary" >> beam.ParDo(results.WriteJson(fsutil.join(out_dir, SUMMARY_PART)))
    )


# ---------------------------------------------------------------- running


@dataclasses.dataclass
class BatchPredictOptions:
    output_format: str = "jsonl"
    batch_size: int = 32
    num_shards: int = 0
    max_image_pixels: int | None = None  # None: the model's recorded limit (or the default)
    model_copies: int | None = None
    beam_setup: core_beam.BeamSetup = core_beam.BeamSetup()

    def check(self) -> None:
        """A value out of range is one line naming its flag."""
        if self.output_format not in FORMATS:
            raise PipelineError(
                f"--output-format must be one of {', '.join(FORMATS)}, got {self.output_format!r}"
            )
        for name in ("batch_size", "max_image_pixels", "model_copies"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PipelineError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.num_shards < 0:
            raise PipelineError(f"--num-shards must be >= 0, got {self.num_shards}")


def options_from(cfg: BatchPredictConfig, pipeline: PipelineConfig) -> BatchPredictOptions:
    """The run's options from the `batch_predict:` section (its Beam options: its beam_args,
    else the pipeline's `beam.args`)."""
    return BatchPredictOptions(
        output_format=cfg.output_format,
        batch_size=cfg.batch_size,
        num_shards=cfg.num_shards,
        max_image_pixels=cfg.max_image_pixels,
        model_copies=cfg.model_copies,
        beam_setup=core_beam.setup(cfg.beam_args, pipeline),
    )


def run_result(summary: dict[str, Any]) -> dict[str, Any]:
    """What a pipeline run records of summary.json (the execution's result)."""
    return {
        "input": summary["input"],
        "model_version": summary["model"]["version"],
        "num_predictions": summary["num_predictions"],
        "per_class": summary["per_class"],
        "num_errors": summary["num_errors"],
        "seconds": summary["seconds"],
    }


def progress(counters: Mapping[str, int]) -> str:
    """The job's progress line: `1,234 images read, 1,200 labelled, 3 errors`."""

    def n(name: str) -> int:
        return counters.get(f"{COUNTER_NAMESPACE}.{name}", 0)

    read = n("files_read") + n("records_read")
    return f"{read:,} images read, {n('predicted'):,} labelled, {n('errors'):,} errors"


def run_batch_predict(
    model: ModelRef, input_path: str, output: str, options: BatchPredictOptions | None = None
) -> dict[str, Any]:
    """Label every image of `input_path` with `model` into `output` (replaced atomically);
    returns the summary.json dict."""
    options = options or BatchPredictOptions()
    options.check()
    core_beam.quiet()
    started = time.monotonic()
    core_beam.set_filesystem_options(options.beam_setup.args)
    spec = resolve_input(input_path)
    limit = options.max_image_pixels or model.max_image_pixels
    limit = limit or image_header.DEFAULT_MAX_IMAGE_PIXELS
    log.info(
        "batch-predict: %s version %s (%s) on %s (%s)",
        model.name, model.version, model.path, input_path, spec.kind,
    )  # fmt: skip
    with fsutil.atomic_dir(output) as work:
        p = core_beam.pipeline(options.beam_setup)
        build_pipeline(
            p,
            spec,
            model,
            work,
            output_format=options.output_format,
            batch_size=options.batch_size,
            num_shards=options.num_shards,
            max_image_pixels=limit,
            model_copies=options.model_copies,
        )
        counters = core_beam.run(
            p,
            options.beam_setup,
            job="BulkInferrer",
            namespaces=[COUNTER_NAMESPACE, results.RUN_INFERENCE_NAMESPACE],
            describe=progress,
        )
        summary = results.read_json_result(fsutil.join(work, SUMMARY_PART), "summary")
        files = sorted(fsutil.basename(f) for f in fsutil.gfile().glob(fsutil.join(work, "*")))
        summary = {
            **summary,
            "model": {"path": model.path, "name": model.name, "version": model.version},
            "input": input_path,
            "input_kind": spec.kind,
            "format": options.output_format,
            "max_image_pixels": limit,
            "seconds": round(time.monotonic() - started, 2),
            "counters": counters,
            "files": files,
        }
        fsutil.write_json(fsutil.join(work, artifacts.BATCH_SUMMARY_FILE), summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Counts per class, errors, and where everything is."""
    rows = [(name, str(n)) for name, n in summary["per_class"].items()]
    rows += [("total", str(summary["num_predictions"])), ("errors", str(summary["num_errors"]))]
    width = max(len(r[0]) for r in rows + [("class", "")])
    lines = [f"{'class':<{width}}  images"] + [f"{a:<{width}}  {b:>6}" for a, b in rows]
    for err in summary["first_errors"][:5]:
        lines.append(f"error: {err['path']}: {err['reason']}")
    model, seconds = summary["model"], summary["seconds"]
    rate = summary["num_predictions"] / max(seconds, 1e-9)
    lines.append(
        f"labelled {summary['num_predictions']} images with {model['name']} version "
        f"{model['version']} in {seconds:.1f}s ({rate:.1f} images/s); "
        f"{summary['num_errors']} error(s) in errors-*.jsonl"
    )
    return "\n".join(lines)
