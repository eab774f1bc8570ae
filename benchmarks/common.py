"""Shared helpers for the ratio benchmarks: alternating timed runs, medians, ratios, results.

A benchmark times several variants of the same job. `alternate` runs them in turn (A B C, A B C,
...) so that load from other processes on a shared machine hits every variant alike; results are
medians, and the claims are ratios between variants measured in the same session.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

DEFAULT_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(name: str) -> str:
    """A persistent folder for generated benchmark inputs ($BENCH_CACHE or ~/.cache)."""
    base = os.environ.get("BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "transfer-pipeline-benchmarks"
    )
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time of this process plus its finished (reaped) child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def alternate(
    variants: dict[str, Callable[[], object]],
    repeats: int,
    warmup: bool = False,
    log: Callable[[str], None] = print,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds per run for each variant, the variants run in turn `repeats` times.

    Pass a dict as `cpu` to also collect CPU seconds per run (this process and the child
    processes that finished during the run): on a shared machine wall time depends on the
    neighbours' load, CPU time much less.
    """
    if warmup:
        for fn in variants.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeats):
        for name, fn in variants.items():
            cpu_start = cpu_seconds()
            seconds[name].append(timed(fn))
            used = cpu_seconds() - cpu_start
            if cpu is not None:
                cpu.setdefault(name, []).append(used)
            log(
                f"  round {round_ + 1}/{repeats}  {name:<40} {seconds[name][-1]:8.2f} s wall"
                f" {used:8.2f} s cpu"
            )
    return seconds


def summarize(seconds: dict[str, list[float]], work: float, unit: str) -> dict[str, dict]:
    """{variant: {median_s, runs_s, <unit>_per_s}} for `work` units done per run."""
    out = {}
    for name, runs in seconds.items():
        median = statistics.median(runs)
        out[name] = {
            "median_s": round(median, 4),
            "runs_s": [round(r, 4) for r in runs],
            f"{unit}_per_s": round(work / median, 2) if median > 0 else None,
        }
    return out


def ratio(summary: dict[str, dict], slower: str, faster: str) -> float:
    """How many times longer `slower` takes than `faster` (median wall time)."""
    return round(summary[slower]["median_s"] / summary[faster]["median_s"], 3)


def round_ratios(slower: list[float], faster: list[float]) -> list[float]:
    """slower/faster of each round (the i-th run of one against the i-th of the other)."""
    return [round(s / f, 3) for s, f in zip(slower, faster, strict=True) if f > 0]


def paired_ratio(seconds: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over rounds of slower/faster measured in the same round: robust to load that
    drifts between rounds."""
    return round(statistics.median(round_ratios(seconds[slower], seconds[faster])), 3)


def spread(values: list[float]) -> list[float] | None:
    """[min, max] of per-round values (None without any): what a single median hides."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return [round(min(finite), 3), round(max(finite), 3)] if finite else None


def format_ratio(ratio: float, lo_hi: list[float] | None = None, rounds: int | None = None) -> str:
    """`2.16x` with its spread over rounds when known: `2.16x (1.98-2.40 over 3 rounds)`."""
    text = f"{ratio:.2f}x"
    if lo_hi:
        over = f" over {rounds} rounds" if rounds else ""
        text += f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f}{over})"
    return text


def load_avg() -> float | None:
    """The 1-minute load average now (None where the system has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": load_avg(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list]) -> str:
    table = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    )


VARIANT_HEADER = ["variant", "median wall s", "images/s", "median cpu s"]


def variant_rows(results: dict) -> list[list]:
    """One row per variant under VARIANT_HEADER: its median wall time, images/s and cpu."""
    return [
        [k, v["median_s"], v["images_per_s"], v["median_cpu_s"]]
        for k, v in results["variants"].items()
    ]


def render(title: str, header: list[str], rows: list[list], notes: list[str]) -> tuple[str, str]:
    """(console text, Markdown) of one benchmark's table and its notes."""
    text = "\n".join([title, text_table(header, rows), *notes])
    markdown = "\n".join(
        [f"### {title}", "", markdown_table(header, rows), "", *(f"- {n}" for n in notes)]
    )
    return text, markdown


def parser(name: str, description: str | None, quick_help: str) -> argparse.ArgumentParser:
    """A benchmark script's argument parser with the options every script has."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--output-dir", default=None, help=f"where to write {name}.json/.md")
    return p


def finish(
    name: str,
    results: dict,
    report: Callable[[dict], tuple[str, str]],
    out_dir: str | None,
) -> int:
    """Print a script's report and write its results (the end of every script's main)."""
    text, markdown = report(results)
    print(text)
    print("results:", write_results(name, results, markdown, out_dir))
    return 0


def write_results(name: str, results: dict, markdown: str, out_dir: str | None = None) -> str:
    """Write <out_dir>/<name>.json and <name>.md; returns the JSON path."""
    out_dir = out_dir or DEFAULT_RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown.rstrip() + "\n")
    return path


# One pool of photo-like JPEGs, shared by every benchmark that converts or reads photos, so that
# ExampleGen and the input pipeline are measured on the very same files.
PHOTO_POOL = "photo_pool"  # cache_dir(PHOTO_POOL)/<W>x<H>-<fmt>/<class>/NNNNN.<fmt>
PHOTO_POOL_SEED = 20240


def _pool_image(pool: str, cls: str, index: int, size: tuple[int, int], fmt: str) -> str:
    """pool/<cls>/<index>.<fmt>, drawn now if missing; each image has its own seed, so the pool
    is the same however it grows."""
    import zlib

    import numpy as np

    from pipeline_components.tools import sample_data

    path = os.path.join(pool, cls, f"{index:05d}.{fmt}")
    if not os.path.exists(path):
        rng = np.random.default_rng([PHOTO_POOL_SEED, zlib.crc32(cls.encode()), index])
        data = sample_data.encode(sample_data.draw_shape(cls, rng, size, photo_like=True), fmt)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a killed run never leaves half an image in the pool
    return path


def _link(source: str, target: str) -> None:
    import contextlib
    import shutil

    with contextlib.suppress(FileNotFoundError):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:  # another file system, or no hard links there
        shutil.copyfile(source, target)


def photo_dataset(
    output: str,
    per_split: tuple[int, ...],
    size: tuple[int, int] = (500, 375),
    classes: tuple[str, ...] = ("circles", "squares"),
    fmt: str = "jpg",
    splits: tuple[str, ...] = ("train", "validation", "test"),
) -> dict:
    """`<output>/<split>/<class>/NNNN.<fmt>` photo-like images hard-linked from the shared pool:
    per class, split after split, the pool's images 0, 1, 2, ... (no image is in two splits).
    Returns {split: {class: count}} like sample_data.generate."""
    from pipeline_components.tools.sample_data import write_tree

    size = (int(size[0]), int(size[1]))
    pool = cache_dir(os.path.join(PHOTO_POOL, f"{size[0]}x{size[1]}-{fmt}"))

    def link(cls: str, index: int, path: str) -> None:
        _link(_pool_image(pool, cls, index, size, fmt), path)

    return write_tree(output, classes, per_split, fmt, splits, link)
