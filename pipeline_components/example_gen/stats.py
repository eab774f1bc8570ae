"""ExampleGen's stats.json (docs/ARCHITECTURE.md, "Examples"), the data fingerprint of what the
examples hold, the checks on the per-file results (too many bad files, a class left empty), and
the per-class table it prints.
"""

from __future__ import annotations

import hashlib
import json
import logging

from apache_beam.io.filesystems import FileSystems

from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.duplicates import find_duplicates
from pipeline_components.example_gen.layout import Layout
from pipeline_components.example_gen.shards import output_splits

log = logging.getLogger(__name__)

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
