"""StatisticsGen's executor: ExampleGen's TFRecords -> statistics.json and plots, with Apache Beam
(the spec and CLI are in component.py; the format is core/data_stats.py).

The job reads every split's shards, keeps a few facts of each record (class, format, size,
channels, bytes, sha256; never the image bytes) and combines them three ways:

- exact counts per split (`SplitStatsFn`, one combiner: classes, formats, channels, and per
  feature and per class the count, min, max, sum and a histogram over fixed bins);
- quantiles per (split, class, feature) with Beam's ApproximateQuantiles sketch, whose rank error
  is below `quantile_epsilon` x N (stated in statistics.json);
- duplicates: copies of one image (same sha256) within a split and across splits.

Its small results go to one text file the driver reads; the skipped files come from ExampleGen's
stats.json (they never became records). Runs on any Beam runner (core/beam.py), like ExampleGen.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from pipeline_components.core import artifacts, data_stats, examples, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.data_stats import FEATURES
from pipeline_components.statistics_gen import records
from pipeline_components.statistics_gen.records import Facts

log = logging.getLogger(__name__)

RESULTS = "_statistics_results"  # working file inside the temporary output directory
COUNTER_NAMESPACE = "statistics_gen"


def counted_facts(serialized: bytes, split: str) -> Facts:
    """records.facts, counted for the progress line (per record: no Beam metric)."""
    core_beam.live(COUNTER_NAMESPACE, "records_read")
    return records.facts(serialized, split)


def feature_values(f: Facts) -> dict[str, float]:
    return {
        "width": f.width,
        "height": f.height,
        "megapixels": f.width * f.height / 1e6,
        "encoded_bytes": f.encoded_bytes,
    }


def _feature_acc() -> dict:
    return {"count": 0, "min": None, "max": None, "sum": 0.0, "histogram": {}}


def _add_value(acc: dict, value: float) -> None:
    acc["count"] += 1
    acc["sum"] += value
    acc["min"] = value if acc["min"] is None else min(acc["min"], value)
    acc["max"] = value if acc["max"] is None else max(acc["max"], value)
    key = str(data_stats.bin_index(value))
    acc["histogram"][key] = acc["histogram"].get(key, 0) + 1


def _merge_feature(into: dict, other: dict) -> None:
    into["count"] += other["count"]
    into["sum"] += other["sum"]
    for key, pick in (("min", min), ("max", max)):
        if other[key] is not None:
            into[key] = other[key] if into[key] is None else pick(into[key], other[key])
    for k, n in other["histogram"].items():
        into["histogram"][k] = into["histogram"].get(k, 0) + n


def _add_counts(into: dict, other: dict) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


class SplitStatsFn(beam.CombineFn):
    """Exact counts of one split: Facts -> {n, classes, formats, channels, features, per_class}."""

    def create_accumulator(self) -> dict:
        return {
            "n": 0,
            "classes": {},
            "formats": {},
            "channels": {},
            "features": {f: _feature_acc() for f in FEATURES},
            "per_class": {},
        }

    def add_input(self, acc: dict, f: Facts) -> dict:
        acc["n"] += 1
        _add_counts(acc["classes"], {f.label: 1})
        _add_counts(acc["formats"], {f.fmt: 1})
        _add_counts(acc["channels"], {str(f.channels): 1})
        per_class = acc["per_class"].setdefault(f.label, {x: _feature_acc() for x in FEATURES})
        for name, value in feature_values(f).items():
            _add_value(acc["features"][name], value)
            _add_value(per_class[name], value)
        return acc

    def merge_accumulators(self, accumulators: Any) -> dict:
        accumulators = iter(accumulators)
        out = next(accumulators)
        for acc in accumulators:
            out["n"] += acc["n"]
            for key in ("classes", "formats", "channels"):
                _add_counts(out[key], acc[key])
            for name in FEATURES:
                _merge_feature(out["features"][name], acc["features"][name])
            for label, features in acc["per_class"].items():
                mine = out["per_class"].setdefault(label, {x: _feature_acc() for x in FEATURES})
                for name in FEATURES:
                    _merge_feature(mine[name], features[name])
        return out

    def extract_output(self, acc: dict) -> dict:
        return acc


def quantile_inputs(f: Facts) -> Iterator[tuple[str, float]]:
    """((split, class or '' for the whole split, feature) as a JSON key, value)."""
    for name, value in feature_values(f).items():
        yield json.dumps([f.split, "", name]), value
        yield json.dumps([f.split, f.label, name]), value


def duplicate_counts(element: tuple[str, Any]) -> Iterator[tuple[str, int]]:
    """(sha256, [(split, copies), ...]) -> (split|within, extra copies in the split) and
    (split|shared, records of the split whose image is also in another split)."""
    _sha, per_split = element
    per_split = list(per_split)
    for split, copies in per_split:
        if copies > 1:
            yield f"{split}|within", copies - 1
        if len(per_split) > 1:
            yield f"{split}|shared", copies


def quantile_combiner(num_quantiles: int, epsilon: float) -> ApproximateQuantilesCombineFn:
    """Beam's quantile sketch (Manku, Rajagopalan & Lindsay): `num_quantiles` values from the
    minimum to the maximum, each within rank epsilon x N of the exact quantile (N < 1e9)."""
    return ApproximateQuantilesCombineFn.create(num_quantiles=num_quantiles, epsilon=epsilon)


def build_pipeline(
    p: beam.Pipeline,
    examples_dir: str,
    splits: list[str],
    *,
    num_quantiles: int,
    epsilon: float,
    results_prefix: str,
) -> None:
    """The statistics job; writes JSON lines ["split"|"quantiles"|"duplicates", key, value]."""
    per_split = [
        p
        | f"Read[{split}]"
        >> beam.io.ReadFromTFRecord(
            artifacts.shard_pattern(examples_dir, split), compression_type=CompressionTypes.GZIP
        )
        | f"Facts[{split}]" >> beam.Map(counted_facts, split)
        for split in splits
    ]
    facts = per_split | "AllSplits" >> beam.Flatten()
    counts = (
        facts
        | "KeyBySplit" >> beam.Map(lambda f: (f.split, f))
        | "SplitCounts" >> beam.CombinePerKey(SplitStatsFn())
        | "CountsJson" >> beam.Map(lambda kv: json.dumps(["split", kv[0], kv[1]]))
    )
    quantiles = (
        facts
        | "FeatureValues" >> beam.FlatMap(quantile_inputs)
        | "Quantiles" >> beam.CombinePerKey(quantile_combiner(num_quantiles, epsilon))
        | "QuantilesJson" >> beam.Map(lambda kv: json.dumps(["quantiles", kv[0], kv[1]]))
    )
    duplicates = (
        facts
        | "ShaSplit" >> beam.Map(lambda f: (f.sha256, f.split))
        | "CopiesPerSplit" >> beam.combiners.Count.PerElement()
        | "BySha" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "GroupBySha" >> beam.GroupByKey()
        | "DuplicateCounts" >> beam.FlatMap(duplicate_counts)
        | "SumDuplicates" >> beam.CombinePerKey(sum)
        | "DuplicatesJson" >> beam.Map(lambda kv: json.dumps(["duplicates", kv[0], kv[1]]))
    )
    _ = (
        (counts, quantiles, duplicates)
        | "AllResults" >> beam.Flatten()
        | "WriteResults" >> beam.io.WriteToText(results_prefix, shard_name_template="")
    )


# ------------------------------------------------------------------------------- assembling


def _feature(acc: dict | None, qs: list | None) -> dict:
    if not acc or not acc["count"]:
        return {
            "count": 0,
            "min": None,
            "max": None,
            "mean": None,
            "quantiles": [],
            "histogram": {},
        }
    histogram = dict(sorted(acc["histogram"].items(), key=lambda kv: int(kv[0])))
    return {
        "count": acc["count"],
        "min": acc["min"],
        "max": acc["max"],
        "mean": acc["sum"] / acc["count"],
        "quantiles": list(qs or []),
        "histogram": histogram,
    }


def _sorted_counts(counts: dict, key: Any = str) -> dict:
    return dict(sorted(counts.items(), key=lambda kv: key(kv[0])))


def _skipped(example_gen_stats: dict, split: str, num_examples: int) -> dict:
    rows = [s for s in example_gen_stats.get("skipped", []) if s["path"].split("/")[0] == split]
    bad = sum(1 for s in rows if s.get("counts_as_bad", True))
    by_reason: dict[str, int] = {}
    for s in rows:
        category = data_stats.skip_category(s["reason"])
        by_reason[category] = by_reason.get(category, 0) + 1
    considered = num_examples + bad
    return {
        "bad": bad,
        "ignored": len(rows) - bad,
        "bad_fraction": bad / considered if considered else 0.0,
        "by_reason": dict(sorted(by_reason.items())),
    }


def assemble(examples_dir: str, lines: list[str], *, num_quantiles: int, epsilon: float) -> dict:
    """statistics.json (core/data_stats.py) from the job's result lines and ExampleGen's files."""
    labels = examples.read_labels(examples_dir)
    eg_stats = examples.read_stats(examples_dir)
    counts: dict[str, dict] = {}
    quantiles: dict[tuple, list] = {}
    duplicates: dict[str, int] = {}
    for line in lines:
        kind, key, value = json.loads(line)
        if kind == "split":
            counts[key] = value
        elif kind == "quantiles":
            quantiles[tuple(json.loads(key))] = value
        else:
            duplicates[key] = value
    splits = {}
    for split in eg_stats["splits"]:
        acc = counts.get(split) or SplitStatsFn().create_accumulator()
        n = acc["n"]
        classes = {c: acc["classes"].get(c, 0) for c in labels}
        classes.update({c: k for c, k in acc["classes"].items() if c not in classes})
        splits[split] = {
            "num_examples": n,
            "classes": classes,
            "class_shares": {c: (k / n if n else 0.0) for c, k in classes.items()},
            "formats": _sorted_counts(acc["formats"]),
            "channels": _sorted_counts(acc["channels"], int),
            "skipped": _skipped(eg_stats, split, n),
            "duplicates": {
                "within_split": duplicates.get(f"{split}|within", 0),
                "shared_with_other_splits": duplicates.get(f"{split}|shared", 0),
            },
            "features": {
                f: _feature(acc["features"][f], quantiles.get((split, "", f))) for f in FEATURES
            },
            "per_class": {
                c: {
                    f: _feature(acc["per_class"].get(c, {}).get(f), quantiles.get((split, c, f)))
                    for f in FEATURES
                }
                for c in classes
            },
        }
    return {
        "version": data_stats.VERSION,
        "examples": examples_dir,
        "examples_fingerprint": eg_stats.get("fingerprint"),
        "labels": labels,
        "quantiles": {"num_quantiles": num_quantiles, "epsilon": epsilon},
        "histogram_bins_per_octave": data_stats.BINS_PER_OCTAVE,
        "splits": splits,
    }


# ---------------------------------------------------------------------------------- running


def run_statistics_gen(
    examples_dir: str,
    output_dir: str,
    *,
    num_quantiles: int = 101,
    epsilon: float = 0.01,
    beam_setup: core_beam.BeamSetup | None = None,
) -> dict:
    """Compute the statistics of an ExampleGen output into output_dir; returns them."""
    beam_setup = beam_setup or core_beam.BeamSetup()
    core_beam.quiet()
    eg_stats = examples.read_stats(examples_dir)
    splits = list(eg_stats.get("splits") or {})
    for split in splits:
        examples.split_files(examples_dir, split)  # a missing split: one line, before Beam
    total = sum(int(v.get("num_examples", 0)) for v in (eg_stats.get("splits") or {}).values())
    started = time.monotonic()
    with fsutil.atomic_dir(output_dir) as work:
        prefix = fsutil.join(work, RESULTS)
        p = core_beam.pipeline(beam_setup)
        build_pipeline(
            p,
            examples_dir,
            splits,
            num_quantiles=num_quantiles,
            epsilon=epsilon,
            results_prefix=prefix,
        )

        def describe(counters: Mapping[str, int]) -> str:
            return f"{sum(counters.values()):,}/{total:,} records read"

        core_beam.run(
            p, beam_setup, job="StatisticsGen", namespaces=[COUNTER_NAMESPACE], describe=describe
        )
        results = fsutil.read_text(prefix).splitlines() if fsutil.exists(prefix) else []
        fsutil.gfile().remove(prefix)
        stats = assemble(examples_dir, results, num_quantiles=num_quantiles, epsilon=epsilon)
        fsutil.write_json(fsutil.join(work, artifacts.STATISTICS_FILE), stats)
        data_stats.write_plots(stats, fsutil.join(work, artifacts.PLOTS_DIR))
    log.info(
        "StatisticsGen: %s in %.1f s",
        ", ".join(f"{s}={v['num_examples']}" for s, v in stats["splits"].items()),
        time.monotonic() - started,
    )
    return stats
