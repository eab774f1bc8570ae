"""ExampleGen's conversion: one image file to a checked `tf.train.Example`, and the Beam
transforms that write every shard (the worker that reads an image also writes it: image bytes
never cross a shuffle).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline_components.core import beam as core_beam
from pipeline_components.core import examples, fsutil
from pipeline_components.example_gen import image_check
from pipeline_components.example_gen.layout import (
    COUNTER_NAMESPACE,
    Layout,
    SourceFile,
    assign_split,
    below_split,
    record_order,
    shard_index,
)
from pipeline_components.example_gen.shards import (
    FILE_LIST,
    RESULTS_PREFIX,
    ShardKey,
    read_jsonl,
    shard_file,
    shard_options,
    work_file,
)


class FileResult(NamedTuple):
    """What became of one file; the driver's statistics and checks are built from these."""

    relpath: str
    folder_split: str
    split: str
    label: int
    sha256: str  # of the file's bytes; '' when not read
    reason: str  # why it was skipped; '' when kept
    bad: bool  # counts against --max-bad-fraction
    source_fmt: str  # sniffed from the file's bytes; '' when skipped
    fmt: str  # image/format of the stored bytes; '' when skipped


def read_file(path: str) -> bytes:
    # UNCOMPRESSED: FileSystems would otherwise gunzip a file that happens to end in .gz
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def convert_file(
    data_root: str,
    labels: list[str],
    src: SourceFile,
    max_image_pixels: int | None = image_check.DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[FileResult, bytes | None]:
    """Read and decode-check one file: its FileResult and serialized Example (None: skipped)."""
    result = FileResult(src.relpath, src.folder_split, src.split, src.label, "", "", False, "", "")
    try:
        reason = image_check.name_skip_reason(below_split(src.relpath, src.folder_split))
        if reason:
            raise image_check.SkipFile(reason, bad=False)
        problem = image_check.name_problem(src.relpath)
        if problem:  # it could not be written as image/filename, nor in stats or CSVs
            raise image_check.SkipFile(f"file name {problem}")
        try:
            data = read_file(FileSystems.join(data_root, *src.relpath.split("/")))
        except Exception as e:  # permission denied, object vanished, ...
            raise image_check.SkipFile(f"unreadable: {' '.join(str(e).split())}") from None
        result = result._replace(sha256=image_check.sha256_hex(data))
        stored = image_check.check_image(src.relpath, data, max_image_pixels)
    except image_check.SkipFile as skip:
        return result._replace(reason=skip.reason, bad=skip.bad), None
    reencoded = stored.encoded is not data
    example = examples.make_example(
        encoded=stored.encoded,
        fmt=stored.fmt,
        height=stored.height,
        width=stored.width,
        channels=stored.channels,
        label=src.label,
        text=labels[src.label],
        filename=src.relpath,
        sha256=image_check.sha256_hex(stored.encoded) if reencoded else result.sha256,
    )
    # deterministic: map fields in a fixed order, so every runner writes identical bytes
    serialized = example.SerializeToString(deterministic=True)
    return result._replace(source_fmt=stored.source_fmt, fmt=stored.fmt), serialized


class AssignSplits(beam.PTransform):
    """With validation_fraction set (no validation/ folder), move that share of train."""

    def __init__(self, validation_fraction: float | None) -> None:
        super().__init__()
        self.validation_fraction = validation_fraction

    def expand(self, sources: beam.PCollection[SourceFile]) -> beam.PCollection[SourceFile]:
        return sources | "CarveValidation" >> beam.Map(assign_split, self.validation_fraction)


class ConvertShardFn(beam.DoFn):
    """((split, shard), {'sources': [...]}) -> writes that shard file, yields a FileResult per file.

    The worker that reads an image also writes it: image bytes never cross a shuffle. Records
    are written in `record_order` (hash of the path), not path order.
    """

    def __init__(
        self, data_root: str, labels: Sequence[str], output_dir: str, num_shards: int,
        max_image_pixels: int | None = image_check.DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:  # fmt: skip
        self.data_root = data_root
        self.labels = list(labels)
        self.output_dir = output_dir
        self.num_shards = num_shards
        self.max_image_pixels = max_image_pixels

    def setup(self) -> None:
        import tensorflow  # noqa: F401  (once per worker, not inside the first bundle)

    def process(
        self, element: tuple[ShardKey, Mapping[str, Iterable[Any]]]
    ) -> Iterator[FileResult]:
        (split, index), groups = element
        yield from self.convert_shard(split, index, groups["sources"])

    def convert_shard(
        self, split: str, index: int, sources: Iterable[SourceFile]
    ) -> Iterator[FileResult]:
        import tensorflow as tf

        path = shard_file(self.output_dir, split, index, self.num_shards)
        tf.io.gfile.makedirs(fsutil.parent(path))
        # Deterministic name, whole file rewritten: a retried bundle cannot leave a duplicate.
        counts: dict[str, int] = {}
        with tf.io.TFRecordWriter(path, shard_options()) as writer:
            for src in sorted(sources, key=record_order):
                result, example = convert_file(
                    self.data_root, self.labels, src, self.max_image_pixels
                )
                outcome = "skipped" if example is None else "kept"
                folder = src.folder_split or src.split  # flat: the split it was given
                for name in (f"{folder}_read", f"{folder}_{outcome}"):
                    counts[name] = counts.get(name, 0) + 1
                    core_beam.live(COUNTER_NAMESPACE, name)  # the progress line, per file
                if example is not None:
                    writer.write(example)
                yield result
        for name, count in counts.items():  # once per shard: a counter update costs ~25 us
            Metrics.counter(COUNTER_NAMESPACE, name).inc(count)


class ConvertShards(beam.PTransform):
    """PCollection[SourceFile] -> <out>/<split>/examples-SSSSS-of-NNNNN.tfrecord.gz, and a
    PCollection[FileResult].

    A file's shard and its place in the shard are hashes of its path, and every shard file is
    written (empty ones too): same input, same files, on any runner.
    (Beam's WriteToTFRecord assigns records to shards by bundle, which changes between runs.)
    Parallelism is one shard at a time per worker: use at least as many shards as workers.
    """

    def __init__(
        self, data_root: str, labels: Sequence[str], output_dir: str, splits: Sequence[str],
        num_shards: int, max_image_pixels: int | None = image_check.DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:  # fmt: skip
        super().__init__()
        self.fn = ConvertShardFn(data_root, labels, output_dir, num_shards, max_image_pixels)
        self.shards = [(s, i) for s in splits for i in range(num_shards)]

    def expand(self, sources: beam.PCollection[SourceFile]) -> beam.PCollection[FileResult]:
        num_shards = self.fn.num_shards
        keyed = sources | "KeyByShard" >> beam.Map(
            lambda s: ((s.split, shard_index(s.relpath, num_shards)), s)
        )
        every_shard = sources.pipeline | "EveryShard" >> beam.Create(
            [(key, None) for key in self.shards]
        )
        return (
            {"sources": keyed, "shard": every_shard}
            | "GroupByShard" >> beam.CoGroupByKey()
            | "ConvertShard" >> beam.ParDo(self.fn)
        )


def _result_json(result: FileResult) -> str:
    return json.dumps(result._asdict())


class ConvertListedShardFn(ConvertShardFn):
    """(key, (split, index)) -> reads that shard's file list (write_shard_lists), writes the
    shard and its results file (both with deterministic names: a retried bundle rewrites them)."""

    # Not ConvertShardFn's element and output: this DoFn reuses its convert_shard only.
    def process(  # type: ignore[override]
        self, element: tuple[str, Iterable[ShardKey]]
    ) -> Iterator[tuple[str, int, int]]:
        _, ((split, index), *_) = element  # after the GroupByKey that deals shards to workers
        listed = read_jsonl(work_file(self.output_dir, FILE_LIST, split, index))
        sources = [SourceFile(*row) for row in listed]
        results = list(self.convert_shard(split, index, sources))
        text = "".join(_result_json(r) + "\n" for r in results)
        fsutil.write_atomic(work_file(self.output_dir, RESULTS_PREFIX, split, index), text)
        yield split, index, len(results)


def build_pipeline(
    p: beam.Pipeline,
    layout: Layout,
    work_dir: str,
    *,
    num_shards: int,
    shard_keys: list[ShardKey],
    max_image_pixels: int | None = image_check.DEFAULT_MAX_IMAGE_PIXELS,
) -> None:
    """Converts the shards listed in work_dir (write_shard_lists): each worker reads its shards'
    images and writes those shards and their per-file results. The GroupByKey spreads the shards
    over the workers (DirectRunner deals its keys out in turn)."""
    fn = ConvertListedShardFn(layout.root, layout.labels, work_dir, num_shards, max_image_pixels)
    _ = (
        p
        | "ShardKeys" >> beam.Create([(f"{s}/{i}", (s, i)) for s, i in shard_keys])
        | "SpreadShards" >> beam.GroupByKey()
        | "ConvertShard" >> beam.ParDo(fn)
    )
