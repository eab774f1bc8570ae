"""Results as a table, JSON, CSV or JSON Lines; names in any alphabet written byte-exactly
(UTF-8, no escapes)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from .common import Prediction, PredictionFailure

FORMATS = ("table", "json", "csv", "jsonl")
Result = Prediction | PredictionFailure


def format_table(
    rows: Sequence[Sequence[str]], header: Sequence[str] = ("file", "class", "score")
) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [f"{c:<{w}}" for c, w in zip(row[:-1], widths, strict=False)]
        last = row[-1]
        cells.append(f"{last:>{widths[-1]}}" if header[-1] == "score" else last)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def record(file: str, result: Result) -> dict[str, Any]:
    if isinstance(result, PredictionFailure):
        return {"file": file, "error": result.message}
    return {
        "file": file, "class": result.class_name, "class_id": result.class_id,
        "score": result.score, "probabilities": result.probabilities, "version": result.version,
    }  # fmt: skip


def render(files: list[str], results: list[Result], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([record(f, r) for f, r in zip(files, results, strict=True)],
                          indent=2, ensure_ascii=False)  # fmt: skip
    if fmt == "jsonl":
        return "\n".join(
            json.dumps(record(f, r), ensure_ascii=False)
            for f, r in zip(files, results, strict=True)
        )
    if fmt == "csv":
        return _csv(files, results)
    failed = any(isinstance(r, PredictionFailure) for r in results)
    rows: list[tuple[str, ...]] = []
    for file, r in zip(files, results, strict=True):
        if isinstance(r, PredictionFailure):
            rows.append((file, "-", "-", r.message))
        else:
            rows.append((file, r.class_name, f"{r.score:.4f}") + (("",) if failed else ()))
    header = ("file", "class", "score", "error") if failed else ("file", "class", "score")
    return format_table(rows, header)


def _csv(files: list[str], results: list[Result]) -> str:
    labels: list[str] = []
    for r in results:
        if isinstance(r, Prediction):
            labels = list(r.probabilities)
            break
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "class", "class_id", "score", "version", "error",
                     *(f"probability:{label}" for label in labels)])  # fmt: skip
    for file, r in zip(files, results, strict=True):
        if isinstance(r, PredictionFailure):
            writer.writerow([file, "", "", "", "", r.message, *([""] * len(labels))])
        else:
            probabilities = (repr(r.probabilities.get(label, float("nan"))) for label in labels)
            writer.writerow(
                [file, r.class_name, r.class_id, repr(r.score), r.version or "", "", *probabilities]
            )
    return buffer.getvalue().rstrip("\n")
