"""Shared helpers for the ratio benchmarks: alternating timed runs, medians, ratios, results.

A benchmark times several variants of the same job. `alternate` runs them in turn (A B C, A B C,
...) so that load from other processes on a shared machine hits every variant alike; results are
medians, and the claims are ratios between variants measured in the same session.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable

DEFAULT_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def paired_ratio(seconds: dict[str, list[float]], slower: str, faster: str) -> float:
    """Median over rounds of slower/faster measured in the same round: robust to load that
    drifts between rounds."""
    pairs = zip(seconds[slower], seconds[faster], strict=True)
    return round(statistics.median(s / f for s, f in pairs), 3)


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
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
