"""Identical images in more than one split (train/test leakage): found from the per-file
results, then dropped from the less held-out split (the shards holding them rewritten), only
reported, or a failed run (`example_gen.on_duplicates`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import apache_beam as beam

from pipeline_components.core import beam as core_beam
from pipeline_components.core import examples, fsutil
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.layout import COUNTER_NAMESPACE, shard_index
from pipeline_components.example_gen.shards import (
    DROP_LIST,
    ShardKey,
    read_jsonl,
    shard_file,
    shard_options,
    work_file,
)

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
        path = shard_file(self.output_dir, split, index, self.num_shards)
        records = tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator()
        tmp = path + ".dropping"
        with tf.io.TFRecordWriter(tmp, shard_options()) as writer:
            for record in records:
                name = tf.train.Example.FromString(record).features.feature[examples.FILENAME]
                if name.bytes_list.value[0].decode("utf-8") in drop:
                    core_beam.count(COUNTER_NAMESPACE, "dropped_duplicates")
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
        paths = read_jsonl(work_file(self.output_dir, DROP_LIST, split, index))
        yield from super().process(((split, index), paths))


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
