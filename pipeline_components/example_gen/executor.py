"""ExampleGen's executor: `<data_root>/<split>/<class>/<image>` folders to GZIP TFRecord shards
with Apache Beam (the spec and CLI are in component.py).

Files are listed and read through Beam's FileSystems (local, gs://, s3://), checked with the
decoder training uses, and written as `<O>/<split>/examples-SSSSS-of-NNNNN.tfrecord.gz` plus
`labels.txt` and `stats.json` (docs/ARCHITECTURE.md). The output appears only when the whole job
succeeded. The same input gives the same records in the same shards, in the same order, on every
runner: a file's shard and its place inside the shard are stable hashes of its relative path, so
the classes are mixed along every shard (never `train/cats/...` before `train/dogs/...`).
Identical images in two splits (train/test leakage) are dropped from the less held-out split,
reported, or fail the run (`on_duplicates`).

A flat folder, `<data_root>/<class>/<image>` with no split level, is read when
`example_gen.test_fraction` is set: each file's split follows from a stable hash of its relative
path (`flat_split`), the rule that carves validation from train when validation/ is absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.machine import usable_cpus
from pipeline_components.example_gen import image_check

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "example_gen"
# Working files inside the temporary output directory, removed before it is renamed into place.
# The file lists and per-file results travel as files, one per shard, not as a Create or a
# ToList: a Dataflow job graph has a size limit, and one worker need not hold a million results.
# Only the shard keys go through the pipeline, so Beam handles one element per shard, not one per
# image (per-element transforms cost ~0.1 ms each in the Python SDK, as much as a decode).
FILE_LIST = "_file_list"  # <work>/_file_list-<split>-SSSSS.jsonl: that shard's SourceFiles
RESULTS_PREFIX = "_file_results"  # <work>/_file_results-<split>-SSSSS.jsonl: its FileResults
DROP_LIST = "_drop_list"  # <work>/_drop_list-<split>-SSSSS.jsonl: leaked copies to drop


class SourceFile(NamedTuple):
    relpath: str  # relative to data_root, '/'-separated, starts with the split folder (or flat:
    # with the class folder)
    folder_split: str  # the folder it was found in; '' in a flat layout
    split: str  # the split it is written to (validation when carved from train)
    label: int  # index into labels, -1 when not inside a class folder


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


class ListedFile(NamedTuple):
    relpath: str  # relative to data_root, '/'-separated, starts with the split folder
    size: int
    mtime: float


class Layout(NamedTuple):
    root: str
    labels: list[str]
    splits: list[str]  # split folders present, in SPLITS order; [] in a flat layout
    sources: list[SourceFile]


# ---------------------------------------------------------------- stable hashing


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) for a string (same on every machine, Python and runner)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def flat_split(relpath: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of a file in a flat layout: the first `test_fraction` of the hash range of its
    relative path is test, the next `validation_fraction` validation, the rest train. Stable: a
    file keeps its split when others are added or removed."""
    u = unit_hash(relpath)
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def shard_index(relpath: str, num_shards: int) -> int:
    return int(unit_hash("shard:" + relpath) * num_shards)


def record_order(src: SourceFile) -> tuple[float, str]:
    """Sort key of a file's record inside its shard: a stable hash of its relative path (ties:
    the path). Class folders are interleaved pseudo-randomly along every shard, and the order is
    the same on every runner and machine."""
    return unit_hash("order:" + src.relpath), src.relpath


def shard_name(split: str, index: int, num_shards: int) -> str:
    return artifacts.shard_path(split, index, num_shards)


# ---------------------------------------------------------------- listing (driver side)


def _normalized_root(data_root: str) -> str:
    root = str(data_root).rstrip("/")
    return root if fsutil.is_remote(root) else os.path.abspath(root)


def list_split(root: str, split: str) -> list[ListedFile]:
    """Every file below root/split (root itself for split '': a flat layout), at any depth
    (`split/class/2019/x.jpg` included), through Beam's FileSystems: THE listing of the data.
    ExampleGen reads exactly these files, and the data fingerprint in its cache key
    (data_fingerprint) is made of exactly this listing, so a file ExampleGen would read cannot
    change without re-running it."""
    pattern = FileSystems.join(root, split, "**") if split else FileSystems.join(root, "**")
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # BeamIOError: unknown scheme, missing credentials, ...
        raise PipelineError(f"cannot list {pattern}: {str(e).splitlines()[0]}") from None
    prefix = root.rstrip("/\\")
    files = [
        ListedFile(
            m.path[len(prefix) :].lstrip("/\\").replace("\\", "/"),
            int(m.size_in_bytes),
            float(m.last_updated_in_seconds or 0.0),
        )
        for m in metadata
    ]
    return sorted(files)


def below_split(relpath: str, folder_split: str) -> list[str]:
    """The path components below the split folder (all of them in a flat layout)."""
    parts = relpath.split("/")
    return parts[1:] if folder_split else parts


def _class_of(relpath: str, folder_split: str = "split") -> str | None:
    parts = below_split(relpath, folder_split)
    return parts[0] if image_check.name_skip_reason(parts) is None else None


def _empty_class_folders(root: str, split: str, classes: set[str]) -> list[str]:
    """Class folders with no files at all. Only local folders can exist empty; object stores
    have no folders, so there an empty class simply is not found."""
    split_dir = os.path.join(root, split)
    if fsutil.is_remote(root) or not fsutil.isdir(split_dir):
        return []
    return [
        name
        for name in sorted(os.listdir(split_dir))  # not gfile: it fails on non-UTF-8 names
        if name not in classes
        and image_check.name_skip_reason([name, "x"]) is None
        and os.path.isdir(os.path.join(split_dir, name))
    ]


def list_sources(data_root: str, flat: bool = False) -> Layout:
    """Every file of every split folder (`flat`: of every class folder), with labels; a bad
    layout is a one-line PipelineError."""
    root = _normalized_root(data_root)
    if not fsutil.is_remote(root) and not fsutil.isdir(root):
        raise PipelineError(f"data root {root} does not exist or is not a folder")
    if flat:
        return _list_flat(root)
    found = {split: [f.relpath for f in list_split(root, split)] for split in SPLITS}
    if not any(found.values()) and list_split(root, ""):
        raise PipelineError(
            f"data root {root} has no split folders ({', '.join(SPLITS)}); for a flat "
            f"{root}/<class>/<image> folder set example_gen.test_fraction (transfer-pipeline "
            "init writes it): each file's split then follows from a hash of its path"
        )
    if not fsutil.is_remote(root):
        _warn_unknown_folders(root)
    classes = {s: {c for c in map(_class_of, rels) if c} for s, rels in found.items()}
    for split in SPLITS:
        folder = FileSystems.join(root, split)
        _check_class_names(folder, classes[split])
        optional = split == "validation" and not found[split]
        if not classes[split] and not optional:
            raise PipelineError(
                f"split folder {folder} is missing or has no class folders with files "
                f"(expected {folder}/<class>/<image>)"
            )
        empty = _empty_class_folders(root, split, classes[split])
        if empty:
            shown = image_check.shown(empty[0])
            raise PipelineError(f"class folder {FileSystems.join(folder, shown)} is empty")
    labels = sorted(classes["train"])
    if len(labels) < 2:
        raise PipelineError(
            f"{FileSystems.join(root, 'train')} has {len(labels)} class folder(s) "
            f"({', '.join(labels)}); at least 2 are needed"
        )
    splits = [s for s in SPLITS if classes[s]]
    for split in splits[1:]:
        _check_same_classes(root, split, classes[split], labels)
    index: dict[str | None, int] = {name: i for i, name in enumerate(labels)}
    sources = [
        SourceFile(rel, split, split, index.get(_class_of(rel), -1))
        for split in splits
        for rel in found[split]
    ]
    return Layout(root, labels, splits, sources)


def _list_flat(root: str) -> Layout:
    """A flat layout: `<root>/<class>/<image>`, no split folders (they would be read as classes:
    refused, naming the folder)."""
    relpaths = [f.relpath for f in list_split(root, "")]
    classes = {c for c in (_class_of(rel, "") for rel in relpaths) if c}
    split_folders = sorted(classes & set(SPLITS))
    if split_folders:
        raise PipelineError(
            f"data root {root} has split folders ({', '.join(split_folders)}) but "
            "example_gen.test_fraction is set, which is for a flat <class>/<image> folder: "
            "unset it to read the split folders"
        )
    _check_class_names(root, classes)
    empty = _empty_class_folders(root, "", classes)
    if empty:
        raise PipelineError(
            f"class folder {FileSystems.join(root, image_check.shown(empty[0]))} is empty"
        )
    labels = sorted(classes)
    if len(labels) < 2:
        raise PipelineError(
            f"{root} has {len(labels)} class folder(s) ({', '.join(labels)}); at least 2 are needed"
        )
    index: dict[str | None, int] = {name: i for i, name in enumerate(labels)}
    sources = [SourceFile(rel, "", "train", index.get(_class_of(rel, ""), -1)) for rel in relpaths]
    return Layout(root, labels, [], sources)


def data_fingerprint(
    data_root: str, beam_args: list[str] | None = None, flat: bool = False
) -> dict:
    """(relative path, size, mtime) of every file ExampleGen would read: list_split's listing of
    each split folder (`flat`: of the whole root), the one ExampleGen itself reads (nested
    folders included), one listing call per split (cheap on gs://), not a read of every image.
    A missing root lists nothing (ExampleGen then fails with its own one-line error).
    `beam_args` carry what the file system needs (s3:// cannot list without them)."""
    set_filesystem_options(beam_args)
    root = _normalized_root(data_root)
    folders = [""] if flat else SPLITS
    listing = [tuple(f) for split in folders for f in list_split(root, split)]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"num_files": len(listing), "sha256": digest}


def _check_class_names(folder: str, names: set[str]) -> None:
    """A class name goes everywhere (labels.txt, the schema, the model's outputs, CSVs): one that
    cannot be written byte-exactly is refused, naming the folder."""
    for name in sorted(names):
        problem = image_check.name_problem(name)
        if problem:
            shown = FileSystems.join(folder, image_check.shown(name))
            fix = "" if "PYTHONUTF8" in problem else "; rename it"  # else the locale is at fault
            raise PipelineError(f"class folder {shown}: the name {problem}{fix}")


def _warn_unknown_folders(root: str) -> None:
    for name in sorted(os.listdir(root)):  # not gfile: it fails on non-UTF-8 names
        path = os.path.join(root, name)
        if name not in SPLITS and not name.startswith(".") and os.path.isdir(path):
            log.warning("ignoring %s: split folders are %s", path, ", ".join(SPLITS))


def _check_same_classes(root: str, split: str, classes: set[str], labels: list[str]) -> None:
    folder = FileSystems.join(root, split)
    unknown, missing = sorted(classes - set(labels)), sorted(set(labels) - classes)
    if unknown:
        raise PipelineError(
            f"class folder {FileSystems.join(folder, unknown[0])} has no counterpart in "
            f"{FileSystems.join(root, 'train')} (train classes: {', '.join(labels)})"
        )
    if missing:
        raise PipelineError(
            f"class folder {FileSystems.join(folder, missing[0])} is missing or empty "
            f"(every train class needs images in {split})"
        )


# ---------------------------------------------------------------- reusable transforms

# Image files are compressed already: deflate level 6 saves ~2% of a JPEG shard for ~9x the
# write CPU (measured, benchmarks/example_gen.py), so shards are GZIP files of stored blocks.
GZIP_LEVEL = 0


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


def assign_split(
    src: SourceFile, validation_fraction: float | None, test_fraction: float | None = None
) -> SourceFile:
    """Carve validation from train by a stable hash of the relative path; in a flat layout
    (test_fraction set) every file's split by the same hash (flat_split)."""
    if test_fraction is not None and not src.folder_split:
        return src._replace(split=flat_split(src.relpath, validation_fraction or 0, test_fraction))
    if (
        validation_fraction
        and src.folder_split == "train"
        and unit_hash(src.relpath) < validation_fraction
    ):
        Metrics.counter(COUNTER_NAMESPACE, "carved_to_validation").inc()
        return src._replace(split="validation")
    return src


class AssignSplits(beam.PTransform):
    """With validation_fraction set (no validation/ folder), move that share of train."""

    def __init__(self, validation_fraction: float | None) -> None:
        super().__init__()
        self.validation_fraction = validation_fraction

    def expand(self, sources: beam.PCollection[SourceFile]) -> beam.PCollection[SourceFile]:
        return sources | "CarveValidation" >> beam.Map(assign_split, self.validation_fraction)


def _shard_file(output_dir: str, split: str, index: int, num_shards: int) -> str:
    return fsutil.join(output_dir, *shard_name(split, index, num_shards).split("/"))


def _shard_options() -> tf.io.TFRecordOptions:
    import tensorflow as tf

    return tf.io.TFRecordOptions(compression_type="GZIP", compression_level=GZIP_LEVEL)


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

        path = _shard_file(self.output_dir, split, index, self.num_shards)
        tf.io.gfile.makedirs(fsutil.parent(path))
        # Deterministic name, whole file rewritten: a retried bundle cannot leave a duplicate.
        counts: dict[str, int] = {}
        with tf.io.TFRecordWriter(path, _shard_options()) as writer:
            for src in sorted(sources, key=record_order):
                result, example = convert_file(
                    self.data_root, self.labels, src, self.max_image_pixels
                )
                outcome = "skipped" if example is None else "kept"
                folder = src.folder_split or src.split  # flat: the split it was given
                for name in (f"{folder}_read", f"{folder}_{outcome}"):
                    counts[name] = counts.get(name, 0) + 1
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


def _parse_source(line: str) -> SourceFile:
    return SourceFile(*json.loads(line))


def _result_json(result: FileResult) -> str:
    return json.dumps(result._asdict())


def work_file(work_dir: str, prefix: str, split: str, index: int) -> str:
    return fsutil.join(work_dir, f"{prefix}-{split}-{index:05d}.jsonl")


ShardKey = tuple[str, int]  # (split, shard index)


def plan_shards(
    layout: Layout,
    carve_fraction: float | None,
    num_shards: int,
    test_fraction: float | None = None,
) -> dict[ShardKey, list[SourceFile]]:
    """Every shard of every output split (empty ones too) with the files it will hold: validation
    carved from train (flat: every split) by a stable hash of the path, then the shard by another
    (the driver does this once; workers only read their shard's list)."""
    plan: dict[ShardKey, list[SourceFile]] = {
        (split, i): [] for split in output_splits(layout, carve_fraction) for i in range(num_shards)
    }
    for src in layout.sources:
        src = assign_split(src, carve_fraction, test_fraction)
        plan[(src.split, shard_index(src.relpath, num_shards))].append(src)
    return plan


def write_shard_lists(work_dir: str, plan: dict[ShardKey, list[SourceFile]]) -> list[ShardKey]:
    """One file list per shard; returns the shard keys, largest shard first (so that a runner
    dealing them out in turn, as DirectRunner does, gives each worker a similar share)."""
    for (split, index), sources in plan.items():
        text = "".join(json.dumps(list(s)) + "\n" for s in sources)
        fsutil.write_atomic(work_file(work_dir, FILE_LIST, split, index), text)
    return sorted(plan, key=lambda key: (-len(plan[key]), key))


def _read_jsonl(path: str) -> list:
    return [json.loads(line) for line in fsutil.read_text(path).splitlines() if line]


def read_results(work_dir: str) -> list[dict]:
    """The per-file results the pipeline wrote, sorted by path; removes the working files."""
    gfile = fsutil.gfile()
    paths = gfile.glob(fsutil.join(work_dir, RESULTS_PREFIX + "*"))
    results = [r for p in paths for r in _read_jsonl(p)]
    lists = gfile.glob(fsutil.join(work_dir, FILE_LIST + "*"))
    lists += gfile.glob(fsutil.join(work_dir, DROP_LIST + "*"))
    for p in [*paths, *lists]:
        gfile.remove(p)
    return sorted(results, key=lambda r: r["relpath"])


class ConvertListedShardFn(ConvertShardFn):
    """(key, (split, index)) -> reads that shard's file list (write_shard_lists), writes the
    shard and its results file (both with deterministic names: a retried bundle rewrites them)."""

    # Not ConvertShardFn's element and output: this DoFn reuses its convert_shard only.
    def process(  # type: ignore[override]
        self, element: tuple[str, Iterable[ShardKey]]
    ) -> Iterator[tuple[str, int, int]]:
        _, ((split, index), *_) = element  # after the GroupByKey that deals shards to workers
        listed = _read_jsonl(work_file(self.output_dir, FILE_LIST, split, index))
        sources = [SourceFile(*row) for row in listed]
        results = list(self.convert_shard(split, index, sources))
        text = "".join(_result_json(r) + "\n" for r in results)
        fsutil.write_atomic(work_file(self.output_dir, RESULTS_PREFIX, split, index), text)
        yield split, index, len(results)


def output_splits(layout: Layout, carve_fraction: float | None) -> list[str]:
    """The split folders found, plus validation when it is carved from train (flat: all)."""
    if not layout.splits:
        return list(SPLITS)
    return [s for s in SPLITS if s in layout.splits or (carve_fraction and s == "validation")]


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


def build_drop_pipeline(
    p: beam.Pipeline, work_dir: str, num_shards: int, dropped: list[dict]
) -> list[ShardKey]:
    """Rewrites the shards holding leaked copies (handle_duplicates' `dropped` rows) without
    them; the lists travel as files (write_atomic), only shard keys through the pipeline."""
    by_shard: dict[ShardKey, list[str]] = {}
    for d in dropped:
        by_shard.setdefault((d["split"], shard_index(d["path"], num_shards)), []).append(d["path"])
    for (split, index), paths in by_shard.items():
        text = "".join(json.dumps(path) + "\n" for path in sorted(paths))
        fsutil.write_atomic(work_file(work_dir, DROP_LIST, split, index), text)
    keys = sorted(by_shard)
    _ = (
        p
        | "ShardKeys" >> beam.Create([(f"{s}/{i}", (s, i)) for s, i in keys])
        | "SpreadShards" >> beam.GroupByKey()
        | "RewriteShard" >> beam.ParDo(DropListedRecordsFn(work_dir, num_shards))
    )
    return keys


# ---------------------------------------------------------------- duplicates across splits

DUPLICATE_POLICIES = ("drop", "warn", "fail")


def leaked_copies(group: list[dict]) -> list[dict]:
    """Of the kept copies of one image (FileResult dicts with the same sha256), those to drop:
    every copy outside the most held-out split holding it (test, else validation), so the test
    copy stays and train/validation copies go. Copies inside one split are not leakage: kept."""
    splits = {r["split"] for r in group}
    if len(splits) < 2:
        return []
    keep = max(splits, key=SPLITS.index)
    return sorted((r for r in group if r["split"] != keep), key=lambda r: r["relpath"])


class DropRecordsFn(beam.DoFn):
    """((split, shard), [relpath, ...]) -> rewrites that shard without those records (same
    order, same options: the output stays identical across runners; a retry is a no-op)."""

    def __init__(self, output_dir: str, num_shards: int) -> None:
        self.output_dir, self.num_shards = output_dir, num_shards

    def process(self, element: tuple[ShardKey, Iterable[str]]) -> Iterator[tuple[str, int, int]]:
        import tensorflow as tf

        (split, index), relpaths = element
        drop = set(relpaths)
        path = _shard_file(self.output_dir, split, index, self.num_shards)
        records = tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
        tmp = path + ".dropping"
        with tf.io.TFRecordWriter(tmp, _shard_options()) as writer:
            for record in records:
                name = tf.train.Example.FromString(record).features.feature[examples.FILENAME]
                if name.bytes_list.value[0].decode("utf-8") in drop:
                    Metrics.counter(COUNTER_NAMESPACE, "dropped_duplicates").inc()
                    continue
                writer.write(record)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        yield split, index, len(drop)


class DropListedRecordsFn(DropRecordsFn):
    """(key, [(split, index)]) -> rewrites that shard without the records in its drop list."""

    def process(  # type: ignore[override]
        self, element: tuple[str, Iterable[ShardKey]]
    ) -> Iterator[tuple[str, int, int]]:
        _, ((split, index), *_) = element
        paths = _read_jsonl(work_file(self.output_dir, DROP_LIST, split, index))
        yield from super().process(((split, index), paths))


def find_duplicates(kept: list[dict]) -> list[dict]:
    """Identical images (same sha256) that ended up in more than one split."""
    by_digest: dict[str, list[dict]] = {}
    for r in kept:
        by_digest.setdefault(r["sha256"], []).append(r)
    return [
        {
            "sha256": digest,
            "paths": sorted(r["relpath"] for r in group),
            "splits": [s for s in SPLITS if s in {r["split"] for r in group}],
        }
        for digest, group in sorted(by_digest.items())
        if len({r["split"] for r in group}) > 1
    ]


def handle_duplicates(summaries: list[dict], policy: str, data_root: str) -> list[dict]:
    """Apply on_duplicates to the per-file results: 'fail' raises a one-line PipelineError,
    'drop' marks the leaked copies (the shards were already rewritten without them) and returns
    them as stats.json's `dropped_duplicates` rows, 'warn' returns []."""
    kept = [r for r in summaries if not r["reason"]]
    found = find_duplicates(kept)
    if not found or policy == "warn":
        return []
    if policy == "fail":
        first = min(d["paths"] for d in found)
        raise PipelineError(
            f"{len(found)} image(s) under {data_root} appear in more than one split "
            f"(train/test leakage), first: {' = '.join(first[:3])}; remove them, or set "
            "example_gen.on_duplicates (--on-duplicates) to drop or warn"
        )
    by_digest: dict[str, list[dict]] = {}
    for r in kept:
        by_digest.setdefault(r["sha256"], []).append(r)
    dropped = []
    for group in by_digest.values():
        drop = leaked_copies(group)
        stays = sorted(r["relpath"] for r in group if r not in drop)
        for r in drop:
            r.update(reason=f"duplicate of {stays[0]}", bad=False, dropped=True)
            dropped.append({"path": r["relpath"], "split": r["split"], "kept": stays})
    return sorted(dropped, key=lambda d: d["path"])


# ---------------------------------------------------------------- statistics and checks

# How records are ordered inside a shard (part of the data fingerprint: a change of order is a
# change of what the Trainer reads).
RECORD_ORDER = "path-hash"


def fingerprint(labels: list[str], kept: list[dict], exif_transpose: bool = True) -> str:
    """Stable hash of what the examples hold: labels, record order, sorted (split, path,
    sha256), and how their images are read (exif_transpose: the Trainer's pixels)."""
    items = sorted((r["split"], r["relpath"], r["sha256"]) for r in kept)
    blob = json.dumps(
        {
            "labels": labels,
            "record_order": RECORD_ORDER,
            "examples": items,
            "exif_transpose": exif_transpose,
        }
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _skipped(r: dict) -> bool:
    """Skipped as unusable (or as not an image), not dropped as a duplicate."""
    return bool(r["reason"]) and not r.get("dropped")


def build_stats(
    layout: Layout,
    summaries: list[dict],
    *,
    num_shards: int,
    carve_fraction: float | None,
    on_duplicates: str = "drop",
    dropped: list[dict] | None = None,
    exif_transpose: bool = True,
) -> dict:
    kept = [r for r in summaries if not r["reason"]]
    splits = {}
    for split in output_splits(layout, carve_fraction):
        per_class = {name: 0 for name in layout.labels}
        for r in kept:
            if r["split"] == split:
                per_class[layout.labels[r["label"]]] += 1
        splits[split] = {
            "num_examples": sum(per_class.values()),
            "per_class": per_class,
            "skipped": sum(
                1 for r in summaries if _skipped(r) and (r["folder_split"] or r["split"]) == split
            ),
            "dropped_duplicates": sum(1 for d in dropped or [] if d["split"] == split),
            "num_shards": num_shards,
        }
    formats: dict[str, int] = {}
    for r in kept:
        formats[r["source_fmt"]] = formats.get(r["source_fmt"], 0) + 1
    found = [r for r in summaries if not r["reason"] or r.get("dropped")]
    return {
        "labels": list(layout.labels),
        "splits": splits,
        "skipped": [
            {"path": r["relpath"], "reason": r["reason"], "counts_as_bad": r["bad"]}
            for r in summaries
            if _skipped(r)
        ],
        "duplicates": find_duplicates(found),
        "on_duplicates": on_duplicates,
        "dropped_duplicates": list(dropped or []),
        "fingerprint": fingerprint(layout.labels, kept, exif_transpose),
        "record_order": RECORD_ORDER,
        "exif_transpose": exif_transpose,
        "source_formats": dict(sorted(formats.items())),
        "data_root": layout.root,
        "validation": f"carved from train ({carve_fraction:g})" if carve_fraction else "folder",
        **({"layout": f"flat: splits by path hash ({layout.root})"} if not layout.splits else {}),
    }


def check_bad_fraction(layout: Layout, summaries: list[dict], max_bad_fraction: float) -> None:
    for split in layout.splits or [""]:
        rows = [r for r in summaries if r["folder_split"] == split]
        bad = [r for r in rows if r["bad"]]
        considered = sum(1 for r in rows if r["bad"] or not r["reason"])
        if bad and len(bad) / considered > max_bad_fraction:
            for r in bad[:20]:
                log.warning("skipped %s: %s", r["relpath"], r["reason"])
            raise PipelineError(
                f"{len(bad)} of {considered} files in {FileSystems.join(layout.root, split)} are "
                f"not usable images ({len(bad) / considered:.1%} > --max-bad-fraction "
                f"{max_bad_fraction:g}); first: {bad[0]['relpath']}: {bad[0]['reason']}"
            )


def check_classes_kept(layout: Layout, summaries: list[dict], carve_fraction: float | None) -> None:
    for split in layout.splits or [""]:
        for label, name in enumerate(layout.labels):
            rows = [r for r in summaries if r["folder_split"] == split and r["label"] == label]
            if not any(not r["reason"] for r in rows):
                dropped = sum(1 for r in rows if r.get("dropped"))
                why = f", {dropped} dropped as duplicates of held-out images" if dropped else ""
                raise PipelineError(
                    f"class folder {FileSystems.join(layout.root, split, name)} has no usable "
                    f"images ({len(rows) - dropped} file(s) skipped{why})"
                )
    if carve_fraction and not any(
        not r["reason"] and r["split"] == "validation" for r in summaries
    ):
        raise PipelineError(
            f"validation carved from {FileSystems.join(layout.root, 'train')} with fraction "
            f"{carve_fraction:g} is empty; add a validation/ folder or raise --validation-fraction"
        )
    if not layout.splits:  # flat: every split drawn by path hash must hold something
        for split in SPLITS:
            if not any(not r["reason"] and r["split"] == split for r in summaries):
                fix = "lower" if split == "train" else "raise"
                raise PipelineError(
                    f"the {split} split drawn from {layout.root} by path hash is empty; add "
                    f"images or {fix} example_gen.test_fraction / validation_fraction"
                )


def format_summary(stats: dict) -> str:
    """Per class rows, per split columns (scales to many classes), then totals and skipped."""
    splits = list(stats["splits"])
    table = [["class", *splits]]
    table += [[c, *(stats["splits"][s]["per_class"][c] for s in splits)] for c in stats["labels"]]
    table.append(["total", *(stats["splits"][s]["num_examples"] for s in splits)])
    table.append(["skipped", *(stats["splits"][s]["skipped"] for s in splits)])
    if stats.get("dropped_duplicates"):
        table.append(
            ["duplicates", *(stats["splits"][s].get("dropped_duplicates", 0) for s in splits)]
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(
            str(v).ljust(w) if i == 0 else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    )


# ---------------------------------------------------------------- running


def _check_params(
    num_shards: int, max_bad_fraction: float, validation_fraction: float, on_duplicates: str
) -> None:
    if num_shards < 1:
        raise PipelineError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= max_bad_fraction <= 1:
        raise PipelineError(f"--max-bad-fraction must be in [0, 1], got {max_bad_fraction}")
    if not 0 < validation_fraction < 1:
        raise PipelineError(f"--validation-fraction must be in (0, 1), got {validation_fraction}")
    if on_duplicates not in DUPLICATE_POLICIES:
        raise PipelineError(
            f"--on-duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {on_duplicates!r}"
        )


# ---------------------------------------------------------------- DirectRunner mode by input size

# Without runner options, DirectRunner runs in one thread (in_memory). Threads start free and
# TensorFlow's decoder releases the GIL; the per-file Python work (~40% of a file's CPU: header
# check, sha256, building and writing the Example) does not, so threads keep at most ~2.5 cores
# busy. Worker processes scale past that but cost ~7 CPU-s each to start (Python, Beam and
# TensorFlow imports, the runner's gRPC): on 2 cores they lost at 2,000 and at 20,000 files
# (benchmarks/example_gen.py, (c) vs (e)), so they are used only with more cores and many files.
DEFAULT_MULTI_PROCESSING_MIN_FILES = 10_000
MULTI_PROCESSING_MIN_CPUS = 3
DIRECT_MODE_FLAGS = ("--direct_running_mode", "--direct_num_workers")


def _flag_value(args: list[str], flag: str) -> str | None:
    """The last value given for `flag` (`--flag=v` or `--flag v`), None if absent."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag:
            value = args[i + 1] if i + 1 < len(args) else ""
    return value


def direct_mode_args(
    beam_args: list[str] | None,
    num_files: int,
    multi_processing_min_files: int = DEFAULT_MULTI_PROCESSING_MIN_FILES,
    cpus: int | None = None,
) -> tuple[list[str], str]:
    """(the Beam options to run with, why): with DirectRunner and no `--direct_running_mode` /
    `--direct_num_workers` in `beam_args`, multi_threading on every usable core below
    `multi_processing_min_files` files or on fewer than MULTI_PROCESSING_MIN_CPUS cores, and
    multi_processing otherwise (in_memory on one core). Options the user gave, or another runner,
    are left exactly as they are."""
    args = list(beam_args or [])
    runner = _flag_value(args, "--runner")
    if runner is not None and runner.lower() not in ("directrunner", "direct"):
        return args, f"runner {runner} from beam_args"
    given = [a.split("=")[0] for a in args if a.split("=")[0] in DIRECT_MODE_FLAGS]
    if given:
        return args, f"{', '.join(sorted(set(given)))} from beam_args"
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 2:
        return [*args, "--direct_running_mode=in_memory"], "DirectRunner in_memory: 1 usable CPU"
    if num_files < multi_processing_min_files:
        mode, why = "multi_threading", f"{num_files} files < {multi_processing_min_files}"
    elif cpus < MULTI_PROCESSING_MIN_CPUS:
        mode = "multi_threading"
        why = f"{cpus} cores: threads keep them busy, worker processes would only add start-up"
    else:
        mode, why = "multi_processing", f"{num_files} files >= {multi_processing_min_files}"
    return [
        *args,
        f"--direct_running_mode={mode}",
        f"--direct_num_workers={cpus}",
    ], f"DirectRunner {mode} x{cpus}: {why} (example_gen.multi_processing_min_files)"


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    args = list(beam_args or [])
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # worker processes' INFO chatter
    return PipelineOptions(args)


def set_filesystem_options(beam_args: list[str] | None) -> None:
    """Hand the Beam options to Beam's file systems before anything is listed or read outside a
    pipeline: s3:// refuses without them (no client, no endpoint, no credentials), and gs://
    reads its project and credentials options from them. A pipeline sets them only when built."""
    FileSystems.set_options(pipeline_options(beam_args))


def run_pipeline(p: beam.Pipeline) -> dict[str, int]:
    """Run to completion; returns the ExampleGen counters. A failure is one line."""
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        log.debug("Beam pipeline failed", exc_info=True)
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise PipelineError(f"Beam pipeline failed: {lines[-1] if lines else e!r}") from None
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))
    counters: dict[str, int] = {}
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(counters.items()))


def run_example_gen(
    data_root: str,
    output: str,
    *,
    num_shards: int = 4,
    max_bad_fraction: float = 0.01,
    validation_fraction: float = 0.1,
    beam_args: list[str] | None = None,
    max_image_pixels: int = image_check.DEFAULT_MAX_IMAGE_PIXELS,
    on_duplicates: str = "drop",
    multi_processing_min_files: int = DEFAULT_MULTI_PROCESSING_MIN_FILES,
    exif_transpose: bool = True,
    test_fraction: float | None = None,
) -> dict:
    """Convert the image folders under data_root to `output`; returns the stats.json dict.

    test_fraction: read data_root as a flat `<class>/<image>` folder; each file's split follows
    from a hash of its path (flat_split: test_fraction test, validation_fraction validation).

    exif_transpose is recorded, not applied: the stored bytes are the files' own, and every
    decoder of them (the Trainer's, the exported model's) turns a JPEG as its EXIF orientation
    says when it is set (trainer/exif.py). It is part of the data fingerprint.

    Without DirectRunner options in beam_args the running mode follows the number of files
    (`direct_mode_args`); the choice and the reason are logged.

    on_duplicates: an image (same sha256) in two splits is dropped from the less held-out
    split ('drop': test keeps its copy, train/validation lose theirs), only reported ('warn'),
    or fails the run ('fail', nothing written)."""
    _check_params(num_shards, max_bad_fraction, validation_fraction, on_duplicates)
    if max_image_pixels < 1:
        raise PipelineError(f"--max-image-pixels must be >= 1, got {max_image_pixels}")
    if multi_processing_min_files < 0:
        raise PipelineError(
            f"--multi-processing-min-files must be >= 0, got {multi_processing_min_files}"
        )
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    started = time.monotonic()
    set_filesystem_options(beam_args)
    flat = test_fraction is not None
    layout = list_sources(data_root, flat=flat)
    carve = None if "validation" in layout.splits else validation_fraction
    log.info(
        "ExampleGen: %d files, classes %s, splits %s%s",
        len(layout.sources),
        ", ".join(layout.labels),
        ", ".join(output_splits(layout, carve)),
        f" (by path hash: test {test_fraction:g}, validation {carve:g})"
        if flat
        else (f" (validation carved from train, {carve:g})" if carve else ""),
    )
    run_args, why = direct_mode_args(beam_args, len(layout.sources), multi_processing_min_files)
    log.info("ExampleGen: running with %s (%s)", " ".join(run_args) or "Beam's defaults", why)
    with fsutil.atomic_dir(output) as work:
        plan = plan_shards(layout, carve, num_shards, test_fraction)
        shard_keys = write_shard_lists(work, plan)
        p = beam.Pipeline(options=pipeline_options(run_args))
        build_pipeline(
            p,
            layout,
            work,
            num_shards=num_shards,
            shard_keys=shard_keys,
            max_image_pixels=max_image_pixels,
        )
        counters = run_pipeline(p)
        carved = sum(
            1 for v in plan.values() for s in v if s.folder_split and s.split != s.folder_split
        )
        if carved:
            counters["carved_to_validation"] = carved
        summaries = read_results(work)
        check_bad_fraction(layout, summaries, max_bad_fraction)
        dropped = handle_duplicates(summaries, on_duplicates, layout.root)
        if dropped:  # on_duplicates drop: rewrite the shards that hold leaked copies
            p = beam.Pipeline(options=pipeline_options(run_args))
            build_drop_pipeline(p, work, num_shards, dropped)
            for name, value in run_pipeline(p).items():
                counters[name] = counters.get(name, 0) + value
            read_results(work)  # removes the drop lists
        log.info("counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
        check_classes_kept(layout, summaries, carve)
        stats = build_stats(
            layout,
            summaries,
            num_shards=num_shards,
            carve_fraction=carve,
            on_duplicates=on_duplicates,
            dropped=dropped,
            exif_transpose=exif_transpose,
        )
        fsutil.write_atomic(
            fsutil.join(work, artifacts.LABELS_FILE), "\n".join(layout.labels) + "\n"
        )
        fsutil.write_json(fsutil.join(work, artifacts.STATS_FILE), stats)
    _report(stats, output, time.monotonic() - started)
    return stats


def _report(stats: dict, output: str, seconds: float) -> None:
    for dup in stats["duplicates"][:10]:
        log.warning(
            "identical image in %s: %s", " and ".join(dup["splits"]), ", ".join(dup["paths"])
        )
    if stats["dropped_duplicates"]:
        log.warning(
            "dropped %d train/validation copies of %d image(s) also found in a more held-out "
            "split (train/test leakage); see %s dropped_duplicates",
            len(stats["dropped_duplicates"]),
            len(stats["duplicates"]),
            fsutil.join(output, artifacts.STATS_FILE),
        )
    elif stats["duplicates"]:
        log.warning(
            "%d image(s) appear in more than one split (train/test leakage); see %s duplicates",
            len(stats["duplicates"]),
            fsutil.join(output, artifacts.STATS_FILE),
        )
    total = sum(s["num_examples"] for s in stats["splits"].values())
    print(format_summary(stats))
    print(
        f"wrote {total} examples to {output} in {seconds:.1f}s; "
        f"skipped {len(stats['skipped'])} file(s) (reasons in stats.json)"
        + (
            f"; dropped {len(stats['dropped_duplicates'])} duplicate(s) of held-out images"
            if stats["dropped_duplicates"]
            else ""
        )
    )
