"""Slices of the test split: which examples a metric is computed on.

Dimensions (a slice is one value of one dimension, or, named by a threshold, several at once):
- `class`: the true class (always);
- `size`: the image's shorter side in pixels, from the record's height and width, in buckets
  0-31, 32-63, 64-127, 128-255, 256-511, 512-1023, 1024+;
- `folder`: the image's folder under its class folder (`test/cats/2019/a.jpg` -> `2019`,
  `test/cats/a/b/c.jpg` -> `a/b`, `test/cats/a.jpg` -> `.`);
- every column of the data's `metadata.csv` (ExampleGen carries it into the Examples as
  metadata.jsonl: core/examples.py); an image without a value is in no slice of that column.

A dimension with more than `max_values` distinct values in the test split (a per-image id, say)
is not sliced: the report says so and a threshold naming it fails. Slices with fewer than
`min_slice_size` examples are reported with their count and never gated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from pipeline_components.evaluator.vocabulary import (
    CLASS,
    DEFAULT_MAX_VALUES,
    FOLDER,
    SIZE,
    SIZE_BUCKETS,
    SIZE_EDGES,
    SliceKey,
    slice_name,
)

NO_VALUE = -1


def size_bucket(height: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Bucket index (into SIZE_BUCKETS) of each image's shorter side."""
    shorter = np.minimum(np.asarray(height), np.asarray(width))
    return np.searchsorted(np.array(SIZE_EDGES), shorter, side="right").astype(np.int32)


def source_folder(filename: str) -> str:
    """The folder between the class folder and the file ('.' when none): filenames are
    `<split>/<class>/[<folders>/]<file>`, relative to data_root."""
    parts = filename.split("/")
    return "/".join(parts[2:-1]) or "."


@dataclasses.dataclass
class Dimension:
    name: str
    values: list[str]  # code -> value
    codes: np.ndarray | None  # int32 [n]; NO_VALUE: none; None when not sliced
    skipped: str = ""  # why it is not sliced

    def counts(self) -> np.ndarray:
        assert self.codes is not None
        present = self.codes[self.codes >= 0]
        return np.bincount(present, minlength=len(self.values))


class _Codes:
    """Values -> int codes for one dimension, chunk by chunk, up to max_values."""

    def __init__(self, name: str, max_values: int, values: Sequence[str] = ()) -> None:
        self.name = name
        self.max_values = max_values
        self.index: dict[str, int] = {v: i for i, v in enumerate(values)}
        self.chunks: list[np.ndarray] = []
        self.too_many = False

    def add(self, values: Iterable[str | None]) -> None:
        codes = []
        for value in values:
            if value is None or value == "":
                codes.append(NO_VALUE)
                continue
            code = self.index.get(value)
            if code is None:
                code = self.index[value] = len(self.index)
            codes.append(code)
        if len(self.index) > self.max_values:
            self.too_many = True
        if not self.too_many:
            self.chunks.append(np.array(codes, dtype=np.int32))

    def finish(self) -> Dimension:
        if self.too_many:
            reason = f"more than {self.max_values} distinct values in the test split"
            return Dimension(self.name, [], None, reason)
        values = list(self.index)
        codes = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int32)
        return Dimension(self.name, values, codes)


class SliceBuilder:
    """Collects every dimension's codes while the scored examples are read, chunk by chunk
    (only the codes are kept, not the filenames)."""

    def __init__(
        self,
        labels: Sequence[str],
        metadata: Mapping[str, Mapping[str, str]] | None = None,
        columns: Sequence[str] = (),
        max_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        self.labels = list(labels)
        self.metadata = metadata or {}
        self.columns = list(columns)
        self.classes: list[np.ndarray] = []
        self.sizes: list[np.ndarray] = []
        self.folder = _Codes(FOLDER, max_values)
        self.meta = {c: _Codes(c, max_values) for c in self.columns}

    def add(
        self, filenames: Sequence[str], y: np.ndarray, height: np.ndarray, width: np.ndarray
    ) -> None:
        self.classes.append(np.asarray(y, dtype=np.int32))
        self.sizes.append(size_bucket(height, width))
        self.folder.add(source_folder(f) for f in filenames)
        rows = [self.metadata.get(f, {}) for f in filenames]
        for column, codes in self.meta.items():
            codes.add(row.get(column) for row in rows)

    def finish(self) -> list[Dimension]:
        def joined(chunks: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)

        dims = [
            Dimension(CLASS, list(self.labels), joined(self.classes)),
            Dimension(SIZE, list(SIZE_BUCKETS), joined(self.sizes)),
            _sorted(self.folder.finish()),
        ]
        return dims + [_sorted(codes.finish()) for codes in self.meta.values()]


def _sorted(dim: Dimension) -> Dimension:
    """Values in sorted order (codes renumbered), so reports list them the same every run."""
    if dim.codes is None or not dim.values:
        return dim
    order = sorted(range(len(dim.values)), key=lambda i: dim.values[i])
    renumber = np.empty(len(order) + 1, dtype=np.int32)
    renumber[np.array(order)] = np.arange(len(order), dtype=np.int32)
    renumber[-1] = NO_VALUE  # codes of NO_VALUE (-1) index the last entry
    return Dimension(dim.name, [dim.values[i] for i in order], renumber[dim.codes])


@dataclasses.dataclass(frozen=True)
class Slice:
    key: SliceKey
    index: np.ndarray  # the examples in the slice (int64, ascending)

    @property
    def count(self) -> int:
        return len(self.index)

    @property
    def name(self) -> str:
        return slice_name(self.key)


def single_slices(dims: Sequence[Dimension]) -> list[Slice]:
    """One slice per value of every sliced dimension that has examples, in dimension order."""
    found = []
    for dim in dims:
        if dim.codes is None:
            continue
        order = np.argsort(dim.codes, kind="stable")
        counts = dim.counts()
        start = int(np.sum(dim.codes < 0))
        for code, value in enumerate(dim.values):
            stop = start + int(counts[code])
            if stop > start:
                found.append(Slice(((dim.name, value),), np.sort(order[start:stop])))
            start = stop
    return found


def select(dims: Sequence[Dimension], key: SliceKey) -> Slice:
    """The examples in every named (dimension, value); a value no example has gives an empty
    slice. The dimensions must exist and be sliced (thresholds.resolve checked it)."""
    by_name = {d.name: d for d in dims}
    mask: np.ndarray | None = None
    for name, value in key:
        dim = by_name[name]
        assert dim.codes is not None
        code = dim.values.index(value) if value in dim.values else -2
        hit = dim.codes == code
        mask = hit if mask is None else mask & hit
    assert mask is not None
    return Slice(key, np.flatnonzero(mask))
