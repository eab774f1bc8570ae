"""StatisticsGen's cost next to ExampleGen's, on ExampleGen's benchmark data (the same
photo-sized JPEGs, benchmarks/example_gen.make_dataset), four ways:

    python -m benchmarks.statistics_gen [--quick] [--num-images N] [--repeats R]

(c) ExampleGen, DirectRunner multi_processing with 2 workers (example_gen.py's (c));
(s) StatisticsGen over that output, multi_processing with 2 workers;
(t) StatisticsGen in_memory (one process, no workers to start);
(p) plain loop: one process reads the same TFRecords with tf.data, parses every Example and
    computes the same exact counts and histograms, with numpy percentiles for the quantiles
    (what one would write without Beam).
Each round runs all four in turn; (s), (t) and (p) read the output of an ExampleGen run made
before the clock starts. No goal was set (issue 15): the ratio (s)/(c) is the share of the data
preparation's time the statistics add.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile

from benchmarks import common
from benchmarks.example_gen import WORKERS, make_dataset
from benchmarks.headline import Benchmark, claim
from benchmarks.headline import rounds as _rounds
from benchmarks.headline import seconds as _s
from benchmarks.headline import times as _x
from benchmarks.headline import variant as _variant

NAME = "statistics_gen"
VARIANTS = {
    "c": "(c) ExampleGen multi_processing x2",
    "s": "(s) StatisticsGen multi_processing x2",
    "t": "(t) StatisticsGen in_memory",
    "p": "(p) plain loop, tf.data + numpy",
}
MP = ["--direct_running_mode=multi_processing", f"--direct_num_workers={WORKERS}"]


def example_gen(root: str, out: str) -> None:
    from pipeline_components.core.beam import BeamSetup
    from pipeline_components.example_gen.executor import run_example_gen

    with contextlib.redirect_stdout(io.StringIO()):  # ExampleGen's summary table
        run_example_gen(root, out, num_shards=WORKERS * 2, beam_setup=BeamSetup(tuple(MP)))


def statistics_gen(examples: str, out: str, beam_args: list[str]) -> dict:
    from pipeline_components.core.beam import BeamSetup
    from pipeline_components.statistics_gen.executor import run_statistics_gen

    return run_statistics_gen(examples, out, beam_setup=BeamSetup(tuple(beam_args)))


def plain_loop(examples_dir: str) -> dict:
    """(p): the same numbers, one process, no Beam."""
    import numpy as np
    import tensorflow as tf

    from pipeline_components.core import data_stats
    from pipeline_components.core import examples as ex

    out = {}
    for split in ("train", "validation", "test"):
        files = ex.split_files(examples_dir, split)
        classes: collections.Counter = collections.Counter()
        values: dict[str, list[float]] = collections.defaultdict(list)
        shas: collections.Counter = collections.Counter()
        for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            f = tf.train.Example.FromString(raw.numpy()).features.feature
            classes[f[ex.TEXT].bytes_list.value[0]] += 1
            w, h = f[ex.WIDTH].int64_list.value[0], f[ex.HEIGHT].int64_list.value[0]
            values["width"].append(w)
            values["height"].append(h)
            values["megapixels"].append(w * h / 1e6)
            values["encoded_bytes"].append(len(f[ex.ENCODED].bytes_list.value[0]))
            shas[f[ex.SHA256].bytes_list.value[0]] += 1
        out[split] = {
            "classes": dict(classes),
            "duplicates": sum(n - 1 for n in shas.values()),
            "features": {
                name: {
                    "quantiles": np.percentile(vs, np.linspace(0, 100, 101)).tolist(),
                    "histogram": collections.Counter(data_stats.bin_index(v) for v in vs),
                }
                for name, vs in values.items()
            },
        }
    return out


def run(quick: bool = False, num_images: int | None = None, repeats: int | None = None) -> dict:
    import logging

    logging.getLogger("pipeline_components").setLevel(logging.WARNING)
    num_images = num_images or (200 if quick else 2000)
    repeats = repeats or (2 if quick else 3)
    root = make_dataset(num_images)
    work = tempfile.mkdtemp(prefix="bench-statistics-gen-")
    try:
        examples = os.path.join(work, "examples")
        example_gen(root, examples)  # the input of (s), (t), (p), made before the clock starts
        expected = statistics_gen(examples, os.path.join(work, "check"), ["--runner=DirectRunner"])
        num_records = sum(s["num_examples"] for s in expected["splits"].values())
        variants = {
            VARIANTS["c"]: lambda: example_gen(root, os.path.join(work, "eg")),
            VARIANTS["s"]: lambda: statistics_gen(examples, os.path.join(work, "s"), MP),
            VARIANTS["t"]: lambda: statistics_gen(
                examples, os.path.join(work, "t"), ["--direct_running_mode=in_memory"]
            ),
            VARIANTS["p"]: lambda: plain_loop(examples),
        }
        print(f"{num_records} examples from {num_images} JPEGs, {repeats} alternating rounds")
        cpu: dict[str, list[float]] = {}
        seconds = common.alternate(variants, repeats, cpu=cpu)
        plain = plain_loop(examples)
        for split, s in expected["splits"].items():  # the loop computed the same counts
            assert {k.decode(): n for k, n in plain[split]["classes"].items()} == {
                c: n for c, n in s["classes"].items() if n
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = common.summarize(seconds, num_records, "images")
    for name, runs in cpu.items():
        summary[name]["median_cpu_s"] = round(statistics.median(runs), 3)
    c, s, t, p = (VARIANTS[k] for k in ("c", "s", "t", "p"))
    ratios = {
        "s_over_c": common.paired_ratio(seconds, s, c),
        "t_over_c": common.paired_ratio(seconds, t, c),
        "p_over_t": common.paired_ratio(seconds, p, t),
        "s_over_c_cpu": round(summary[s]["median_cpu_s"] / summary[c]["median_cpu_s"], 3),
    }
    return {
        "benchmark": NAME,
        "num_images": num_records,
        "image_size": [500, 375],
        "repeats": repeats,
        "quick": quick,
        "variants": summary,
        "ratios": ratios,
        "goals": {"none_set": True},
        "environment": common.environment(),
    }


def report(results: dict) -> tuple[str, str]:
    header, rows = common.VARIANT_HEADER, common.variant_rows(results)
    r = results["ratios"]
    notes = [
        "ratios are medians of per-round ratios (wall time); cpu = this process + its children",
        f"(s)/(c) = {r['s_over_c']}x: StatisticsGen (2 workers) as a share of ExampleGen's time "
        f"(of cpu {r['s_over_c_cpu']}x); (t)/(c) = {r['t_over_c']}x in one process",
        f"(p)/(t) = {r['p_over_t']}x: a plain tf.data loop against StatisticsGen in one process",
    ]
    env = results["environment"]
    title = (
        f"StatisticsGen next to ExampleGen, {results['num_images']} JPEGs "
        f"{results['image_size'][0]}x{results['image_size'][1]}, {env['cpus']} CPUs "
        f"(load {env['load_avg_1m']})"
    )
    return common.render(title, header, rows, notes)


def headline_claims(r: dict) -> tuple[str, list[dict]]:
    ratios = r["ratios"]
    c = _variant(r, "(c)")["median_s"]
    t = _variant(r, "(t)")["median_s"]
    return f"{r['num_images']} JPEGs 500x375 (example_gen's), {_rounds(r['repeats'])}", [
        claim(
            ratios["s_over_c"],
            "(s)/(c) time",
            None,
            f"(c) ExampleGen itself: {_s(c)}; (t) StatisticsGen in one process: {_s(t)}",
        ),
        claim(
            ratios["p_over_t"],
            "(p)/(t) time",
            None,
            f"(t)/(c) = {_x(ratios['t_over_c'])}: in one process, as a share of ExampleGen's",
        ),
    ]


BENCHMARK = Benchmark(
    NAME,
    20,
    (
        "(c) ExampleGen multi_processing x2 -> (s) StatisticsGen on its output, x2",
        "(p) plain tf.data + numpy loop -> (t) StatisticsGen in one process",
    ),
    ("none set; its cost reported (issue 15)", "none set; reported (issue 15)"),
    headline_claims,
    smoke={"num_images": 40, "repeats": 1},
)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__, "~200 images, 2 rounds")
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    return common.finish(
        NAME, run(args.quick, args.num_images, args.repeats), report, args.output_dir
    )


if __name__ == "__main__":
    sys.exit(main())
