"""ExampleGen's shards and working files: which shard holds which file (planned once by the
driver), the file lists and per-file results that travel as files (one per shard), and the
GZIP TFRecord options every shard is written with.

Working files live inside the temporary output directory and are removed before it is renamed
into place. The file lists and per-file results travel as files, one per shard, not as a Create
or a ToList: a Dataflow job graph has a size limit, and one worker need not hold a million
results. Only the shard keys go through the pipeline, so Beam handles one element per shard, not
one per image (per-element transforms cost ~0.1 ms each in the Python SDK, as much as a decode).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.example_gen.layout import Layout, SourceFile, assign_split, shard_index

if TYPE_CHECKING:
    import tensorflow as tf

FILE_LIST = "_file_list"  # <work>/_file_list-<split>-SSSSS.jsonl: that shard's SourceFiles
RESULTS_PREFIX = "_file_results"  # <work>/_file_results-<split>-SSSSS.jsonl: its FileResults
DROP_LIST = "_drop_list"  # <work>/_drop_list-<split>-SSSSS.jsonl: leaked copies to drop
# Image files are compressed already: deflate level 6 saves ~2% of a JPEG shard for ~9x the
# write CPU (measured, benchmarks/example_gen.py), so shards are GZIP files of stored blocks.
GZIP_LEVEL = 0

ShardKey = tuple[str, int]  # (split, shard index)


def shard_name(split: str, index: int, num_shards: int) -> str:
    return artifacts.shard_path(split, index, num_shards)


def shard_file(output_dir: str, split: str, index: int, num_shards: int) -> str:
    return fsutil.join(output_dir, *shard_name(split, index, num_shards).split("/"))


def shard_options() -> tf.io.TFRecordOptions:
    import tensorflow as tf

    return tf.io.TFRecordOptions(compression_type="GZIP", compression_level=GZIP_LEVEL)


def work_file(work_dir: str, prefix: str, split: str, index: int) -> str:
    return fsutil.join(work_dir, f"{prefix}-{split}-{index:05d}.jsonl")


def read_jsonl(path: str) -> list:
    return [json.loads(line) for line in fsutil.read_text(path).splitlines() if line]


def output_splits(layout: Layout, carve_fraction: float | None) -> list[str]:
    """The split folders found, plus validation when it is carved from train (flat: all)."""
    if not layout.splits:
        return list(SPLITS)
    return [s for s in SPLITS if s in layout.splits or (carve_fraction and s == "validation")]


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


def read_results(work_dir: str) -> list[dict]:
    """The per-file results the pipeline wrote, sorted by path; removes the working files."""
    gfile = fsutil.gfile()
    paths = gfile.glob(fsutil.join(work_dir, RESULTS_PREFIX + "*"))
    results = [r for p in paths for r in read_jsonl(p)]
    lists = gfile.glob(fsutil.join(work_dir, FILE_LIST + "*"))
    lists += gfile.glob(fsutil.join(work_dir, DROP_LIST + "*"))
    for p in [*paths, *lists]:
        gfile.remove(p)
    return sorted(results, key=lambda r: r["relpath"])
