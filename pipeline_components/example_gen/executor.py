"""ExampleGen's executor: `<data_root>/<split>/<class>/<image>` folders (or a flat
`<data_root>/<class>/<image>` folder, split by path hash) to GZIP TFRecord shards with Apache
Beam (the spec and CLI are in component.py). This module is the driver; the work is in its
sections:

    layout.py      the listing of data_root, its checks, the data fingerprint, the stable hashes
                   that place a file (validation carved from train, its shard, its place in it)
    shards.py      the shard plan and the working files (file lists, per-file results)
    convert.py     one file to a checked Example; the Beam transforms that write the shards
    duplicates.py  identical images across splits: dropped, reported or a failure
    stats.py       stats.json, the data fingerprint of the examples, the checks on the results
    metadata.py    the optional metadata.csv, checked first, carried as metadata.jsonl

Files are listed and read through Beam's FileSystems (local, gs://, s3://), checked with the
decoder training uses, and written as `<O>/<split>/examples-SSSSS-of-NNNNN.tfrecord.gz` plus
`labels.txt` and `stats.json` (docs/ARCHITECTURE.md). The output appears only when the whole job
succeeded. The same input gives the same records in the same shards, in the same order, on every
runner: a file's shard and its place inside the shard are stable hashes of its relative path, so
the classes are mixed along every shard (never `train/cats/...` before `train/dogs/...`).
Identical images in two splits (train/test leakage) are dropped from the less held-out split,
reported, or fail the run (`on_duplicates`). The Beam jobs are built and run by core/beam.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

import apache_beam as beam

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen import image_check, metadata
from pipeline_components.example_gen.convert import build_pipeline
from pipeline_components.example_gen.duplicates import (
    DUPLICATE_POLICIES,
    build_drop_pipeline,
    handle_duplicates,
)
from pipeline_components.example_gen.layout import COUNTER_NAMESPACE, Layout, list_sources
from pipeline_components.example_gen.shards import (
    output_splits,
    plan_shards,
    read_results,
    write_shard_lists,
)
from pipeline_components.example_gen.stats import (
    build_stats,
    check_bad_fraction,
    check_classes_kept,
    format_summary,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options:
    """What run_example_gen was asked for (example_gen's config section)."""

    num_shards: int = 4
    max_bad_fraction: float = 0.01
    validation_fraction: float = 0.1
    max_image_pixels: int = image_check.DEFAULT_MAX_IMAGE_PIXELS
    on_duplicates: str = "drop"
    multi_processing_min_files: int = core_beam.DEFAULT_MULTI_PROCESSING_MIN_FILES
    exif_transpose: bool = True
    metadata_limits: metadata.Limits = metadata.DEFAULT_LIMITS
    test_fraction: float | None = None  # set: a flat <class>/<image> folder

    def check(self) -> None:
        def fail(flag: str, what: str, value: object) -> None:
            raise PipelineError(f"--{flag} must be {what}, got {value}")

        if self.num_shards < 1:
            fail("num-shards", ">= 1", self.num_shards)
        if not 0 <= self.max_bad_fraction <= 1:
            fail("max-bad-fraction", "in [0, 1]", self.max_bad_fraction)
        if not 0 < self.validation_fraction < 1:
            fail("validation-fraction", "in (0, 1)", self.validation_fraction)
        if self.on_duplicates not in DUPLICATE_POLICIES:
            policies = ", ".join(DUPLICATE_POLICIES)
            fail("on-duplicates", f"one of {policies}", repr(self.on_duplicates))
        if self.max_image_pixels < 1:
            fail("max-image-pixels", ">= 1", self.max_image_pixels)
        if self.multi_processing_min_files < 0:
            fail("multi-processing-min-files", ">= 0", self.multi_processing_min_files)


def run_example_gen(
    data_root: str,
    output: str,
    *,
    num_shards: int = 4,
    max_bad_fraction: float = 0.01,
    validation_fraction: float = 0.1,
    beam_setup: core_beam.BeamSetup | None = None,
    max_image_pixels: int = image_check.DEFAULT_MAX_IMAGE_PIXELS,
    on_duplicates: str = "drop",
    multi_processing_min_files: int = core_beam.DEFAULT_MULTI_PROCESSING_MIN_FILES,
    exif_transpose: bool = True,
    metadata_limits: metadata.Limits = metadata.DEFAULT_LIMITS,
    test_fraction: float | None = None,
) -> dict:
    """Convert the image folders under data_root to `output`; returns the stats.json dict.

    test_fraction: read data_root as a flat `<class>/<image>` folder; each file's split follows
    from a hash of its path (layout.flat_split: test_fraction test, validation_fraction
    validation, the rest train).

    exif_transpose is recorded, not applied: the stored bytes are the files' own, and every
    decoder of them (the Trainer's, the exported model's) turns a JPEG as its EXIF orientation
    says when it is set (trainer/exif.py). It is part of the data fingerprint.

    Without DirectRunner options in the Beam setup's args the running mode follows the number
    of files (`core.beam.direct_mode_args`); the choice and the reason are logged.

    on_duplicates: an image (same sha256) in two splits is dropped from the less held-out
    split ('drop': test keeps its copy, train/validation lose theirs), only reported ('warn'),
    or fails the run ('fail', nothing written)."""
    opts = Options(
        num_shards, max_bad_fraction, validation_fraction, max_image_pixels, on_duplicates,
        multi_processing_min_files, exif_transpose, metadata_limits, test_fraction,
    )  # fmt: skip
    opts.check()
    beam_setup = beam_setup or core_beam.BeamSetup()
    core_beam.quiet()
    started = time.monotonic()
    core_beam.set_filesystem_options(beam_setup.args)
    layout = list_sources(data_root, flat=test_fraction is not None)
    extra = metadata.read(layout.root, opts.metadata_limits)  # a bad one fails before any work
    carve = None if "validation" in layout.splits else opts.validation_fraction
    _describe(layout, carve, test_fraction)
    run_args, why = core_beam.direct_mode_args(
        beam_setup.args, len(layout.sources), opts.multi_processing_min_files
    )
    log.info("ExampleGen: running with %s (%s)", " ".join(run_args) or "Beam's defaults", why)
    job = dataclasses.replace(beam_setup, args=tuple(run_args))
    with fsutil.atomic_dir(output) as work:
        stats = _convert(layout, work, carve, opts, job, extra)
    _report(stats, output, time.monotonic() - started)
    return stats


def _describe(layout: Layout, carve: float | None, test_fraction: float | None) -> None:
    """The line saying what was found and how the splits are drawn."""
    if test_fraction is not None and carve is not None:
        how = f" (by path hash: test {test_fraction:g}, validation {carve:g})"
    else:
        how = f" (validation carved from train, {carve:g})" if carve else ""
    log.info(
        "ExampleGen: %d files, classes %s, splits %s%s",
        len(layout.sources),
        ", ".join(layout.labels),
        ", ".join(output_splits(layout, carve)),
        how,
    )


def _convert(
    layout: Layout,
    work: str,
    carve: float | None,
    opts: Options,
    job: core_beam.BeamSetup,
    extra: metadata.Parsed | None,
) -> dict:
    """The Beam jobs writing the shards into `work`, the checks of their results, then
    labels.txt, stats.json and metadata.jsonl (`extra`: metadata.csv's rows); returns the
    stats."""
    plan = plan_shards(layout, carve, opts.num_shards, opts.test_fraction)
    shard_keys = write_shard_lists(work, plan)
    p = core_beam.pipeline(job)
    build_pipeline(
        p,
        layout,
        work,
        num_shards=opts.num_shards,
        shard_keys=shard_keys,
        max_image_pixels=opts.max_image_pixels,
    )
    counters = run_pipeline(p, job, _progress(len(layout.sources)))
    carved = sum(
        1 for files in plan.values() for s in files if s.folder_split and s.split != s.folder_split
    )
    if carved:
        counters["carved_to_validation"] = carved
    summaries = read_results(work)
    check_bad_fraction(layout, summaries, opts.max_bad_fraction)
    dropped = handle_duplicates(summaries, opts.on_duplicates, layout.root)
    if dropped:  # on_duplicates drop: rewrite the shards that hold leaked copies
        for name, value in _drop(work, opts.num_shards, dropped, job).items():
            counters[name] = counters.get(name, 0) + value
    log.info("counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    check_classes_kept(layout, summaries, carve)
    stats = build_stats(
        layout,
        summaries,
        num_shards=opts.num_shards,
        carve_fraction=carve,
        on_duplicates=opts.on_duplicates,
        dropped=dropped,
        exif_transpose=opts.exif_transpose,
    )
    if extra is not None:  # metadata.csv's rows of the images written, for the Evaluator
        metadata.attach(stats, extra, summaries, work, layout.root)
    fsutil.write_atomic(fsutil.join(work, artifacts.LABELS_FILE), "\n".join(layout.labels) + "\n")
    fsutil.write_json(fsutil.join(work, artifacts.STATS_FILE), stats)
    return stats


def _drop(
    work: str, num_shards: int, dropped: list[dict], job: core_beam.BeamSetup
) -> dict[str, int]:
    """The second job: the shards holding leaked copies rewritten without them."""
    p = core_beam.pipeline(job)
    build_drop_pipeline(p, work, num_shards, dropped)

    def describe(counters: Mapping[str, int]) -> str:
        done = sum(counters.values())
        return f"{done:,}/{len(dropped):,} leaked copies dropped"

    counters = run_pipeline(p, job, describe)
    read_results(work)  # removes the drop lists
    return counters


def _progress(num_files: int) -> core_beam.Describe:
    """The conversion's progress line: `12,400/20,000 files read, 3 skipped`."""

    def describe(counters: Mapping[str, int]) -> str:
        read = sum(v for k, v in counters.items() if k.endswith("_read"))
        skipped = sum(v for k, v in counters.items() if k.endswith("_skipped"))
        return f"{read:,}/{num_files:,} files read, {skipped:,} skipped"

    return describe


def run_pipeline(
    p: beam.Pipeline, job: core_beam.BeamSetup, describe: core_beam.Describe
) -> dict[str, int]:
    """Run to completion (core/beam.py); returns the ExampleGen counters by name."""
    found = core_beam.run(
        p, job, job="ExampleGen", namespaces=[COUNTER_NAMESPACE], describe=describe
    )
    return {key.split(".", 1)[1]: value for key, value in found.items()}


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
