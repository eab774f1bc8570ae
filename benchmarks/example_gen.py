"""ExampleGen throughput: images/s for one folder of photo-sized JPEGs (500x375), four ways.

    python -m benchmarks.example_gen [--quick] [--num-images N] [--repeats R]

(a) plain loop: one process reads each file, checks it with tf.io.decode_image, writes a GZIP
    TFRecord with the same Example and compression; (b) ExampleGen, DirectRunner in_memory;
    (c) ExampleGen, DirectRunner multi_processing with 2 workers; (d) decode-only floor: 2 fresh
    processes that only read and decode the files (started per run, as (c)'s workers are).
For reference: (d-warm) = (d) with the processes started and TensorFlow imported before the clock
starts; (e) ExampleGen multi_threading with 2 workers (no worker processes to start).
Everything runs inside this process, where TensorFlow and Beam are already imported; a fresh
`transfer-pipeline example-gen` adds its own imports (~5 CPU-seconds) to (b), (c) and (e).
Goal (issue 2): (c) within 1.5x of (d), and faster than (a).
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile

from benchmarks import common

NAME = "example_gen"
SIZE = (500, 375)
WORKERS = 2
VARIANTS = {
    "a": "(a) plain loop, 1 process",
    "b": "(b) ExampleGen in_memory",
    "c": "(c) ExampleGen multi_processing x2",
    "d": "(d) decode-only floor, 2 processes",
    "d_warm": "(d-warm) decode-only, 2 warm processes",
    "e": "(e) ExampleGen multi_threading x2",
}


def make_dataset(num_images: int) -> str:
    """~num_images photo-like JPEGs split 70/15/15 over two classes, cached between runs."""

    per_class = num_images // 2
    per_split = (
        per_class - 2 * (per_class * 15 // 100),
        per_class * 15 // 100,
        per_class * 15 // 100,
    )
    root = os.path.join(common.cache_dir(NAME), f"photos-{num_images}")
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {2 * sum(per_split)} {SIZE[0]}x{SIZE[1]} JPEGs in {root} ...")
        common.photo_dataset(root, per_split=per_split, size=SIZE)
        open(done, "w").close()
    return root


def list_images(root: str) -> list[str]:
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if not f.startswith(".")
    )


def plain_loop(paths: list[str], root: str, out_dir: str) -> None:
    """(a): what one would write without Beam."""
    import tensorflow as tf

    from pipeline_components.core import examples
    from pipeline_components.example_gen import executor as example_gen
    from pipeline_components.example_gen import image_check

    labels = sorted(os.listdir(os.path.join(root, "train")))
    options = tf.io.TFRecordOptions(
        compression_type="GZIP",
        compression_level=example_gen.GZIP_LEVEL,  # as ExampleGen writes
    )
    with tf.io.TFRecordWriter(os.path.join(out_dir, "plain.tfrecord.gz"), options) as writer:
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            image = tf.io.decode_image(data, channels=0, expand_animations=False)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            name = rel.split("/")[1]
            example = examples.make_example(
                encoded=data,
                fmt="jpeg",
                height=image.shape[0],
                width=image.shape[1],
                channels=image.shape[2],
                label=labels.index(name),
                text=name,
                filename=rel,
                sha256=image_check.sha256_hex(data),
            )
            writer.write(example.SerializeToString())


def decode_files(paths: list[str]) -> int:
    """(d)'s work in one process: read and decode, nothing else."""
    import tensorflow as tf

    for path in paths:
        with open(path, "rb") as f:
            tf.io.decode_image(f.read(), channels=0, expand_animations=False)
    return len(paths)


def _import_tf(_=None) -> bool:
    import tensorflow  # noqa: F401

    return True


def decode_floor(paths: list[str], pool=None) -> None:
    """(d): 2 processes, each reads and decodes every other file. A fresh pool unless given."""
    chunks = [paths[i::WORKERS] for i in range(WORKERS)]
    if pool is not None:
        assert sum(pool.map(decode_files, chunks)) == len(paths)
        return
    with multiprocessing.get_context("spawn").Pool(WORKERS) as fresh:
        assert sum(fresh.map(decode_files, chunks)) == len(paths)


def example_gen(root: str, out_dir: str, beam_args: list[str]) -> None:
    from pipeline_components.example_gen.executor import run_example_gen

    out = os.path.join(out_dir, "examples")
    with contextlib.redirect_stdout(io.StringIO()):  # the per-run summary table
        stats = run_example_gen(root, out, num_shards=WORKERS * 2, beam_args=beam_args)
    assert not stats["skipped"], stats["skipped"][:3]


def run(quick: bool = False, num_images: int | None = None, repeats: int | None = None) -> dict:
    """Measure all variants; returns the results dict (also written as JSON and Markdown)."""
    import logging

    logging.getLogger("pipeline_components").setLevel(logging.WARNING)
    num_images = num_images or (200 if quick else 2000)
    repeats = repeats or (2 if quick else 3)
    root = make_dataset(num_images)
    paths = list_images(root)
    work = tempfile.mkdtemp(prefix="bench-example-gen-")
    warm_pool = multiprocessing.get_context("spawn").Pool(WORKERS)
    try:
        warm_pool.map(_import_tf, range(WORKERS))
        _import_tf()
        mp = ["--direct_running_mode=multi_processing", f"--direct_num_workers={WORKERS}"]
        mt = ["--direct_running_mode=multi_threading", f"--direct_num_workers={WORKERS}"]
        variants = {
            VARIANTS["a"]: lambda: plain_loop(paths, root, work),
            VARIANTS["b"]: lambda: example_gen(root, work, ["--direct_running_mode=in_memory"]),
            VARIANTS["c"]: lambda: example_gen(root, work, mp),
            VARIANTS["d"]: lambda: decode_floor(paths),
            VARIANTS["d_warm"]: lambda: decode_floor(paths, warm_pool),
            VARIANTS["e"]: lambda: example_gen(root, work, mt),
        }
        print(f"{len(paths)} images of {SIZE[0]}x{SIZE[1]}, {repeats} alternating rounds")
        cpu: dict[str, list[float]] = {}
        seconds = common.alternate(variants, repeats, cpu=cpu)
    finally:
        warm_pool.terminate()
        shutil.rmtree(work, ignore_errors=True)
    summary = common.summarize(seconds, len(paths), "images")
    for name, runs in cpu.items():
        summary[name]["median_cpu_s"] = round(statistics.median(runs), 3)
    summary[VARIANTS["d_warm"]]["median_cpu_s"] = None  # its pool's CPU is not reaped per run
    a, b, c, d, d_warm, e = (VARIANTS[k] for k in ("a", "b", "c", "d", "d_warm", "e"))
    ratios = {
        "c_over_d": common.paired_ratio(seconds, c, d),
        "a_over_c": common.paired_ratio(seconds, a, c),
        "c_over_d_median_wall": common.ratio(summary, c, d),
        "a_over_c_median_wall": common.ratio(summary, a, c),
        "c_over_d_cpu": round(summary[c]["median_cpu_s"] / summary[d]["median_cpu_s"], 3),
        "c_over_d_warm": common.paired_ratio(seconds, c, d_warm),
        "b_over_a": common.paired_ratio(seconds, b, a),
        "a_over_e": common.paired_ratio(seconds, a, e),
    }
    return {
        "benchmark": NAME,
        "num_images": len(paths),
        "image_size": list(SIZE),
        "repeats": repeats,
        "quick": quick,
        "variants": summary,
        "ratios": ratios,
        "goals": {
            "c_within_1.5x_of_d": ratios["c_over_d"] <= 1.5,
            "c_faster_than_a": ratios["a_over_c"] > 1.0,
        },
        "environment": common.environment(),
    }


def report(results: dict) -> tuple[str, str]:
    """(text table for the terminal, Markdown for the results file)."""
    header = ["variant", "median wall s", "images/s", "median cpu s"]
    rows = [
        [k, v["median_s"], v["images_per_s"], v["median_cpu_s"] or "n/a"]
        for k, v in results["variants"].items()
    ]
    r, g = results["ratios"], results["goals"]
    met = {True: "met", False: "MISSED"}
    notes = [
        "ratios are medians of per-round ratios (wall time); cpu = this process + its children",
        f"(c)/(d) = {r['c_over_d']}x  (goal <= 1.5: {met[g['c_within_1.5x_of_d']]}); "
        f"of median wall times {r['c_over_d_median_wall']}x, of cpu {r['c_over_d_cpu']}x",
        f"(a)/(c) = {r['a_over_c']}x  (goal > 1: {met[g['c_faster_than_a']]}); "
        f"of median wall times {r['a_over_c_median_wall']}x",
        f"(c)/(d-warm) = {r['c_over_d_warm']}x;  (b)/(a) = {r['b_over_a']}x;  "
        f"(a)/(e) = {r['a_over_e']}x",
    ]
    env = results["environment"]
    title = (
        f"ExampleGen, {results['num_images']} JPEGs {results['image_size'][0]}x"
        f"{results['image_size'][1]}, {env['cpus']} CPUs (load {env['load_avg_1m']})"
    )
    return common.render(title, header, rows, notes)


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
