"""The feature writer: one Beam job (RunInference, on any runner, as the Evaluator's) that runs
the frozen backbone once over the train and validation splits and writes the features artifact
(files.py) atomically, on local disks, volumes and object stores.

    (split, shard, path) --ReadShard--> ((split, shard, i, label, key), encoded) --Reshuffle-->
        --RunInference[backbone from backbone.weights.h5]--> (..., feature bytes | error)
        --ToChunk--> ((split, shard, i // records per file), (i, label, key, bytes))
        --GroupByKey--> --WriteChunk--> <split>/features-SSSSS-CCCCC.tfrecord (record order)
        --ToList--> the files' entries (count, bytes, sha256) -> manifest.json, written last

A chunk holds at most `features.file_mb` MiB of features, so no worker holds more than one
file's worth; a retried bundle rewrites the same file. While the job runs, its progress line
(core/beam.py, every `beam.progress_seconds`) counts the images the backbone has passed:
`FeatureGen: backbone pass: 1,200/4,000 images, 2 files written (after 30 s)`. An image the
backbone cannot decode fails the job with its key (ExampleGen already decoded every image
once, so this is not expected).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.errors import PipelineError
from pipeline_components.features import files
from pipeline_components.features.config import FeaturesConfig, FeatureSpec
from pipeline_components.features.extractor import FeatureHandler
from pipeline_components.inference import results

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "features"
FILES_PART = "_files.json"  # the Beam job's list of written files, removed before the rename
RANDOM_BACKBONE_SEED = 0  # weights `none`: the random backbone's initialisation


class Record(NamedTuple):
    split: str
    shard: int
    position: int  # in the shard: the order the files keep
    label: int
    key: str  # image/filename


class ReadShardFn(beam.DoFn):
    """(split, shard index, path) -> (Record, encoded image) for every record of a GZIP shard
    (read whole by one worker; the Reshuffle after it spreads the records)."""

    def setup(self) -> None:
        import tensorflow  # noqa: F401  (once per worker, not inside the first bundle)

    def process(self, element: tuple[str, int, str]) -> Iterator[tuple[Record, bytes]]:
        import tensorflow as tf
        from tensorflow.core.example import example_pb2

        split, shard, path = element
        dataset = tf.data.TFRecordDataset(path, compression_type="GZIP")
        for i, serialized in enumerate(dataset.as_numpy_iterator()):
            feature = example_pb2.Example.FromString(serialized).features.feature
            key = feature[examples.FILENAME].bytes_list.value[0].decode("utf-8")
            label = int(feature[examples.LABEL].int64_list.value[0])
            Metrics.counter(COUNTER_NAMESPACE, "images_read").inc()
            yield Record(split, shard, i, label, key), feature[examples.ENCODED].bytes_list.value[0]


class ToChunk(beam.DoFn):
    def __init__(self, per_file: int) -> None:
        self.per_file = per_file

    def process(
        self, element: tuple[Record, PredictionResult]
    ) -> Iterator[tuple[tuple[str, int, int], tuple[int, int, str, bytes]]]:
        record, result = element
        if isinstance(result.inference, str):
            raise ValueError(
                f"features: cannot read {record.split} image {record.key}: {result.inference}"
            )
        core_beam.live(COUNTER_NAMESPACE, "images_extracted")  # the progress line, per image
        chunk = record.position // self.per_file
        raw = cast(bytes, result.inference)
        value = (record.position, record.label, record.key, raw)
        yield (record.split, record.shard, chunk), value


class WriteChunkFn(beam.DoFn):
    """One chunk's records, in shard order, as one feature file under `root`."""

    def __init__(self, root: str, dtype: str) -> None:
        self.root, self.dtype = root, dtype

    def process(
        self, element: tuple[tuple[str, int, int], Iterable[tuple[int, int, str, bytes]]]
    ) -> Iterator[dict[str, Any]]:
        (split, shard, chunk), items = element
        ordered = sorted(items, key=lambda item: item[0])
        records = [
            files.encode_record(raw, label, key, self.dtype) for _, label, key, raw in ordered
        ]
        name = files.file_name(split, shard, chunk)
        path = fsutil.join(self.root, *name.split("/"))
        entry = files.write_file(path, records)
        Metrics.counter(COUNTER_NAMESPACE, "images_written").inc(len(records))
        core_beam.count(COUNTER_NAMESPACE, "files_written")
        yield {"split": split, "path": name, **entry}


def build_pipeline(
    p: beam.Pipeline,
    shards: Sequence[tuple[str, int, str]],
    root: str,
    spec: FeatureSpec,
    weights_file: str,
    per_file: int,
    config: FeaturesConfig,
) -> None:
    handler = FeatureHandler(
        spec, weights_file, batch_size=config.batch_size, model_copies=config.model_copies
    )
    _ = (
        p
        | "ListShards" >> beam.Create(list(shards))
        | "ReadShard" >> beam.ParDo(ReadShardFn())
        | "Spread" >> beam.Reshuffle()
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "ToChunk" >> beam.ParDo(ToChunk(per_file))
        | "GroupChunks" >> beam.GroupByKey()
        | "WriteChunk" >> beam.ParDo(WriteChunkFn(root, spec.dtype))
        | "Files" >> beam.combiners.ToList()
        | "WriteList" >> beam.ParDo(results.WriteJson(fsutil.join(root, FILES_PART)))
    )


def save_backbone(spec: FeatureSpec, path: str, backbone: Any = None) -> tuple[int, ...]:
    """Write the backbone's weights to `path` (the given keras.Model, e.g. the Trainer's own,
    else one built from the spec: with weights `none` the same random one every time, seeded
    by RANDOM_BACKBONE_SEED, so the same key gives the same features); returns its output
    shape."""
    import keras

    from pipeline_components.trainer import model as model_lib

    if backbone is None:
        if spec.weights.strip().lower() == "none":
            keras.utils.set_random_seed(RANDOM_BACKBONE_SEED)
        with model_lib.dtype_policy("float32"):
            backbone = model_lib.build_backbone(spec.backbone, spec.weights, spec.image_size)
    with tempfile.TemporaryDirectory() as tmp:  # Keras writes h5 files on local disks only
        local = os.path.join(tmp, artifacts.FEATURES_BACKBONE)
        backbone.save_weights(local)
        fsutil.gfile().copy(local, path, overwrite=True)
    return tuple(int(d) for d in backbone.output.shape[1:])


def write_features(
    examples_dir: str,
    output_dir: str,
    spec: FeatureSpec,
    config: FeaturesConfig | None = None,
    *,
    backbone: Any = None,
    splits: Sequence[str] = files.SPLITS,
    beam_setup: core_beam.BeamSetup | None = None,
    job: str = "FeatureGen",
) -> files.Manifest:
    """Run the Beam job over `splits` of `examples_dir`; write the artifact to `output_dir`
    (atomically: a failed job leaves nothing). `beam_setup` (core/beam.py): how the job runs
    (default: `config.beam_args`, else the default options). `backbone` (a keras.Model) is the
    backbone to use, e.g. the Trainer's; else one is built from the spec. `job`: the name its
    progress lines carry (the component running it). Returns the manifest."""
    config = config or FeaturesConfig()
    spec = dataclasses.replace(spec, dtype=config.dtype).for_examples(examples_dir)
    started = time.monotonic()
    labels = examples.read_labels(examples_dir)
    key = files.key_material(spec, examples_dir, config.file_mb)
    shards = [
        (split, i, path)
        for split in splits
        for i, path in enumerate(examples.split_files(examples_dir, split))
    ]
    beam_setup = beam_setup or core_beam.setup(config.beam_args)
    core_beam.set_filesystem_options(beam_setup.args)
    with fsutil.atomic_dir(output_dir) as tmp:
        weights = fsutil.join(tmp, artifacts.FEATURES_BACKBONE)
        shape = save_backbone(spec, weights, backbone)
        counts = [examples.num_examples(examples_dir, split) for split in splits]
        total = None if None in counts else sum(c or 0 for c in counts)
        progress = (job, _progress(total))
        written, counters = run_job(shards, tmp, spec, weights, shape, config, beam_setup, progress)
        entries = {split: split_entries(written, split) for split in splits}
        manifest = files.Manifest(
            tmp, shape, spec.dtype, labels, entries, key, files.fingerprint(key, entries)
        )
        check_counts(manifest, examples_dir, splits)
        manifest.seconds = round(time.monotonic() - started, 3)
        files.write_manifest(manifest)
    manifest.path = output_dir
    log.info(
        "backbone pass: features of %s in %.1fs: %s x %s %s (%s)",
        ", ".join(f"{manifest.count(s)} {s}" for s in splits),
        manifest.seconds,
        "x".join(map(str, shape)),
        spec.backbone,
        spec.dtype,
        ", ".join(f"{k}={v}" for k, v in counters.items()),
    )
    return manifest


def run_job(
    shards: Sequence[tuple[str, int, str]],
    root: str,
    spec: FeatureSpec,
    weights: str,
    shape: tuple[int, ...],
    config: FeaturesConfig,
    beam_setup: core_beam.BeamSetup,
    progress: tuple[str, core_beam.Describe] = ("FeatureGen", core_beam.describe_counters),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Run the Beam job writing into `root`: (the files' entries, the job's counters).
    `progress`: the job's name and its progress line (core/beam.py `run`)."""
    per_file = files.records_per_file(shape, spec.dtype, config.file_mb)
    core_beam.quiet()
    p = core_beam.pipeline(beam_setup)
    build_pipeline(p, shards, root, spec, weights, per_file, config)
    counters = core_beam.run(
        p,
        beam_setup,
        job=progress[0],
        namespaces=[COUNTER_NAMESPACE, results.RUN_INFERENCE_NAMESPACE],
        describe=progress[1],
    )
    written = results.read_json_result(fsutil.join(root, FILES_PART), "feature files")
    return list(written), counters


def _progress(total: int | None) -> core_beam.Describe:
    """The backbone pass's progress line: `backbone pass: 1,200/4,000 images, 2 files written`
    (`total`: the images of the splits, None when stats.json does not say)."""

    def describe(counters: Mapping[str, int]) -> str:
        done = counters.get(f"{COUNTER_NAMESPACE}.images_extracted", 0)
        written = counters.get(f"{COUNTER_NAMESPACE}.files_written", 0)
        of = f"/{total:,}" if total else ""
        return f"backbone pass: {done:,}{of} images, {written:,} files written"

    return describe


def split_entries(written: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The manifest's entries of one split's files, in record order (by name)."""
    mine = [{k: v for k, v in w.items() if k != "split"} for w in written if w["split"] == split]
    return sorted(mine, key=lambda w: w["path"])


def check_counts(manifest: files.Manifest, examples_dir: str, splits: Sequence[str]) -> None:
    """Every record of every split has its features (what stats.json counts, when it does)."""
    for split in splits:
        expected = examples.num_examples(examples_dir, split)
        if expected is not None and manifest.count(split) != expected:
            raise PipelineError(
                f"features: the job wrote {manifest.count(split)} {split} records, the examples"
                f" at {examples_dir} hold {expected}"
            )
