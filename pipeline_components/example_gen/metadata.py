"""`<data_root>/metadata.csv`, optional: per-image columns the Evaluator slices by.

    path,camera,site
    test/cats/001.jpg,phone,north
    test/dogs/002.jpg,dslr,

The first column is `path`: the image's path relative to data_root ('/'-separated, as
ExampleGen's `image/filename`). Every other column is a slicing dimension, its header the name
(any alphabet; not path, class, size or folder, the Evaluator's own); an empty cell is no value.
UTF-8 (a byte-order mark is allowed), standard CSV quoting.

ExampleGen copies the rows of the images it listed into `<examples>/metadata.jsonl`
(core/examples.py) and mixes the file's hash into the Examples fingerprint, so a changed
metadata.csv re-runs what reads it. Rows naming no listed image are counted in stats.json and
the first few logged. Bounded (`Limits`: example_gen.metadata_max_bytes, metadata_max_columns,
metadata_max_cell_chars; 64 MiB, 32 columns, 256 characters per cell by default): beyond, or a
malformed file (a row with another number of cells, a path twice, a bad header),
is a one-line error naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable
from typing import NamedTuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline_components.core import artifacts, examples, fsutil
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 20
MAX_COLUMNS = 32
MAX_VALUE_CHARS = 256


class Limits(NamedTuple):
    """What a metadata.csv may hold (the example_gen options named in each error)."""

    max_bytes: int = MAX_BYTES  # example_gen.metadata_max_bytes
    max_columns: int = MAX_COLUMNS  # example_gen.metadata_max_columns
    max_cell_chars: int = MAX_VALUE_CHARS  # example_gen.metadata_max_cell_chars


DEFAULT_LIMITS = Limits()


RESERVED = ("path", "class", "size", "folder")


# (columns, {path: (line, {column: value})}, sha256 of the file)
Parsed = tuple[list[str], dict[str, tuple[int, dict[str, str]]], str]


def csv_path(data_root: str) -> str:
    return FileSystems.join(data_root, artifacts.METADATA_CSV)


def stat(data_root: str) -> tuple[int, float] | None:
    """(size, mtime) of metadata.csv for the data fingerprint; None when there is none."""
    path = csv_path(data_root)
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception:  # no match (or not listable): as absent; reading it will say why
        return None
    return (
        (int(found[0].size_in_bytes), float(found[0].last_updated_in_seconds or 0))
        if found
        else None
    )


def _normalize(path: str) -> str:
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _header(row: list[str], where: str, limits: Limits) -> list[str]:
    if not row or row[0].strip() != "path":
        raise PipelineError(f"{where} line 1: the first column must be 'path', got {row[:1]}")
    columns = row[1:]
    if len(columns) > limits.max_columns:
        raise PipelineError(
            f"{where} line 1: {len(columns)} columns, at most {limits.max_columns} "
            "(example_gen.metadata_max_columns)"
        )
    for name in columns:
        if not name or len(name) > limits.max_cell_chars or name in RESERVED:
            raise PipelineError(
                f"{where} line 1: bad column name {name[:80]!r} (1 to {limits.max_cell_chars} "
                f"characters, not {', '.join(RESERVED)})"
            )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise PipelineError(f"{where} line 1: column {duplicated[0]!r} appears twice")
    return columns


def parse(
    text: str, where: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]]]:
    """(columns, {path: (line, {column: value})}) of metadata.csv's text; one-line errors."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        columns = _header(next(reader, []), where, limits)
        rows: dict[str, tuple[int, dict[str, str]]] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns) + 1:
                raise PipelineError(
                    f"{where} line {line}: {len(row)} cells, the header has {len(columns) + 1}"
                )
            path = _normalize(row[0])
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise PipelineError(
                    f"{where} line {line}: path {row[0]!r} is not relative to data_root"
                )
            if path in rows:
                raise PipelineError(
                    f"{where} line {line}: path {path!r} also on line {rows[path][0]}"
                )
            long = [c for c in row[1:] if len(c) > limits.max_cell_chars]  # not the path
            if long:
                raise PipelineError(
                    f"{where} line {line}: a cell of {len(long[0])} characters, "
                    f"at most {limits.max_cell_chars} (example_gen.metadata_max_cell_chars)"
                )
            rows[path] = (line, dict(zip(columns, row[1:], strict=True)))
    except csv.Error as e:
        raise PipelineError(f"{where} line {reader.line_num}: {e}") from None
    return columns, rows


def read(data_root: str, limits: Limits = DEFAULT_LIMITS) -> Parsed | None:
    """metadata.csv parsed, with its sha256; None when the data has none."""
    found = stat(data_root)
    if found is None:
        return None
    where = csv_path(data_root)
    limit = limits.max_bytes
    over = f"over the limit of {limit} bytes (example_gen.metadata_max_bytes)"
    if found[0] > limit:
        raise PipelineError(f"{where} is {found[0]} bytes, {over}")
    with FileSystems.open(where, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PipelineError(f"{where} is {over}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{where}: not UTF-8 (byte {e.start})") from None
    columns, rows = parse(text, where, limits)
    return columns, rows, hashlib.sha256(data).hexdigest()


def carry(parsed: Parsed, written: Iterable[str], out_dir: str, where: str) -> dict:
    """Write out_dir/metadata.jsonl with the rows of the images written (their
    image/filename); returns stats.json's `metadata` entry."""
    columns, rows, sha = parsed
    kept = set(written)
    matched = {path: values for path, (_, values) in rows.items() if path in kept}
    unmatched = sorted((line, path) for path, (line, _) in rows.items() if path not in kept)
    fsutil.write_atomic(
        fsutil.join(out_dir, artifacts.METADATA_FILE),
        examples.metadata_lines(columns, matched).encode("utf-8"),
    )
    if unmatched:
        line, path = unmatched[0]
        log.warning(
            "%s: %d row(s) name no image ExampleGen wrote (first: line %d, %s)",
            where, len(unmatched), line, path,
        )  # fmt: skip
    return {
        "columns": columns,
        "rows": len(rows),
        "matched": len(matched),
        "unmatched": [f"line {line}: {path}" for line, path in unmatched[:10]],
        "sha256": sha,
    }


def attach(stats: dict, parsed: Parsed, summaries: list[dict], out_dir: str, root: str) -> None:
    """Carry metadata.csv into out_dir (the images kept: no skip reason) and into stats.json:
    its `metadata` entry, and its hash mixed into the Examples fingerprint."""
    kept = (r["relpath"] for r in summaries if not r["reason"])
    stats["metadata"] = carry(parsed, kept, out_dir, csv_path(root))
    mixed = f"{stats['fingerprint']}:{stats['metadata']['sha256']}"
    stats["fingerprint"] = hashlib.sha256(mixed.encode()).hexdigest()
