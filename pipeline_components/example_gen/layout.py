"""What ExampleGen reads and where each file goes: THE listing of `<data_root>/<split>/<class>/`
(through Beam's FileSystems: local, gs://, s3://), its checks (a bad layout is one line), the data
fingerprint in ExampleGen's cache key, and the stable hashes that place a file (validation
carved from train, its shard, its place inside the shard) the same way on every runner.

A flat folder, `<data_root>/<class>/<image>` with no split level, is read when
`example_gen.test_fraction` is set: each file's split follows from a stable hash of its relative
path (`flat_split`), the rule that carves validation from train when validation/ is absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen import image_check, metadata

log = logging.getLogger(__name__)

COUNTER_NAMESPACE = "example_gen"


class SourceFile(NamedTuple):
    relpath: str  # relative to data_root, '/'-separated, starts with the split folder (or flat:
    # with the class folder)
    folder_split: str  # the folder it was found in; '' in a flat layout
    split: str  # the split it is written to (validation when carved from train)
    label: int  # index into labels, -1 when not inside a class folder


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
    # metadata.csv sits beside the class folders: it describes the images, it is not one
    relpaths = [f.relpath for f in list_split(root, "") if f.relpath != artifacts.METADATA_CSV]
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
    data_root: str, beam_args: Sequence[str] | None = None, flat: bool = False
) -> dict:
    """(relative path, size, mtime) of every file ExampleGen would read: list_split's listing of
    each split folder (`flat`: of the whole root), the one ExampleGen itself reads (nested
    folders included), one listing call per split (cheap on gs://), not a read of every image.
    A missing root lists nothing (ExampleGen then fails with its own one-line error).
    `beam_args` carry what the file system needs (s3:// cannot list without them)."""
    core_beam.set_filesystem_options(beam_args)
    root = _normalized_root(data_root)
    folders = [""] if flat else SPLITS
    listing = [tuple(f) for split in folders for f in list_split(root, split)]
    extra = metadata.stat(root)
    if extra is not None:  # metadata.csv is read too
        listing.append((artifacts.METADATA_CSV, *extra))
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
