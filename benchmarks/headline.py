"""How a benchmark declares itself, and the helpers its headline claims are built with.

Every benchmark script defines `BENCHMARK = Benchmark(...)` at module level: its name, its place
in the table, what it compares, the goals its issues set, how its results become headline claims
(`extract`) and its `--smoke` sizes. `python -m benchmarks` finds the scripts by that attribute
(`discover`), so a new benchmark is one new file: nothing else lists them.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from benchmarks import common


@dataclass(frozen=True)
class Benchmark:
    name: str
    order: int  # its row in the table: smaller first
    compared: tuple[str, ...]  # per claim: "baseline -> ours"
    goals: tuple[str, ...]  # per claim, as its issue set it
    extract: Callable[[dict], tuple[str, list[dict]]]  # results -> (workload, claims)
    # keyword arguments of run(quick=True, ...) for --smoke: proves it runs, numbers mean nothing
    smoke: Mapping[str, object] = field(default_factory=dict)
    module: str = ""  # filled in by discover()


def discover(package: str = "benchmarks") -> dict[str, Benchmark]:
    """{name: Benchmark} of every module of `package` that defines BENCHMARK, by `order`.
    The scripts import their heavy libraries inside functions, so this stays cheap."""
    found: list[Benchmark] = []
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.ispkg:
            continue
        module_name = f"{package}.{info.name}"
        declared = getattr(importlib.import_module(module_name), "BENCHMARK", None)
        if isinstance(declared, Benchmark):
            found.append(dataclasses.replace(declared, module=module_name))
    names = [b.name for b in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"two benchmarks are named {', '.join(duplicated)}")
    return {b.name: b for b in sorted(found, key=lambda b: (b.order, b.name))}


# ---------------------------------------------------------------------------------------------
# Claims: the one shape every headline row has.


def claim(
    ratio: float,
    label: str,
    met: bool | None,
    floor: str,
    per_round: list[float] | None = None,
) -> dict:
    """One measured claim: `ratio` (a float), what it is (`label`), goal met, the floor, and
    the same ratio in each round (`per_round`, for its spread; found from the variants' runs
    by `headline` when the label is `(x)/(y) time` and none is given)."""
    ratio = float(ratio)
    if not math.isfinite(ratio):
        raise ValueError(f"ratio {label} is {ratio}")
    out: dict = {"ratio": round(ratio, 3), "ratio_label": label, "met": met, "floor": floor}
    if per_round:
        out["per_round"] = [round(float(r), 3) for r in per_round]
        out["spread"] = common.spread(out["per_round"])
    return out


_TIME_RATIO = re.compile(r"^(\([a-z0-9_-]+\))/(\([a-z0-9_-]+\)) (time|training images/s)")


def per_round_ratios(results: dict, label: str) -> list[float] | None:
    """The ratio a label names, `(x)/(y) time` (or `training images/s`), in every round, from
    the two variants' per-round figures; None when the results do not hold them."""
    match = _TIME_RATIO.match(label)
    if not match:
        return None
    x, y, kind = match.groups()
    key = "runs_s" if kind == "time" else "training_images_per_s_runs"
    try:
        xs, ys = variant(results, x).get(key), variant(results, y).get(key)
    except (KeyError, AttributeError):
        return None
    if not xs or not ys or len(xs) != len(ys):
        return None
    return common.round_ratios(xs, ys)


def variant(results: dict, tag: str) -> dict:
    """The variant whose name starts with `tag`, e.g. "(a)"."""
    for name, v in results["variants"].items():
        if name == tag or name.startswith(tag + " "):
            return v
    raise KeyError(f"no variant {tag} in {list(results['variants'])}")


def headline(bench: Benchmark, results: dict) -> dict:
    """{"workload", "claims"}: the benchmark's claims with their spreads, goals and comparisons."""
    workload, claims = bench.extract(results)
    for c in claims:
        if "spread" not in c:
            per_round = per_round_ratios(results, c["ratio_label"])
            if per_round:
                c["per_round"], c["spread"] = per_round, common.spread(per_round)
    for c, compared, goal in zip(claims, bench.compared, bench.goals, strict=False):
        c["compared"], c["goal"] = compared, goal
    for c in claims:
        c.setdefault("compared", bench.name)
        c.setdefault("goal", "")
    return {"workload": workload, "claims": claims}


def generic(r: dict) -> tuple[str, list[dict]]:
    """For a benchmark without an extractor of its own: every ratio, goals in the label."""
    goals = r.get("goals", {})
    claims = [claim(v, k, None, "") for k, v in r["ratios"].items()]
    if goals and claims:
        claims[0]["met"] = all(goals.values())
        claims[0]["ratio_label"] += " (goals: " + ", ".join(goals) + ")"
    return "", claims


# ---------------------------------------------------------------------------------------------
# Short formats for the floor and workload texts.


def seconds(value: float) -> str:
    return f"{value:.3g} s"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x"


def rounds(n: int) -> str:
    return f"{n} round" + ("" if n == 1 else "s")
