"""The benchmarks run and their results are well formed (not the numbers: those need real sizes).

The slow test runs `python -m benchmarks --smoke` once (every script's run(quick=True) at even
smaller sizes, each in its own subprocess, ~3 minutes on 2 cores) and checks each result; the
others check the aggregator with stand-in results, in a second or two.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

import benchmarks.__main__ as bench
from benchmarks import (
    batch_inference,
    common,
    example_gen,
    feature_stream,
    headline,
    input_pipeline,
    multi_worker,
    serving,
    statistics_gen,
    training,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(bench.BENCHMARKS)
MODULES = {
    "example_gen": example_gen,
    "statistics_gen": statistics_gen,
    "input_pipeline": input_pipeline,
    "training": training,
    "feature_stream": feature_stream,
    "serving": serving,
    "batch_inference": batch_inference,
    "multi_worker": multi_worker,
}


def run_cli(args, tmp_path, timeout, cache=None):
    env = {
        **os.environ,
        "BENCH_CACHE": str(cache or tmp_path / "cache"),
        "PYTHONPATH": REPO,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# --- the real thing, in smoke sizes ---------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = run_cli(["--smoke"], tmp, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = tmp / "out"
    return {
        "out": out,
        "cache": tmp / "cache",
        "summary": json.loads((out / "results.json").read_text()),
        "markdown": (out / "results.md").read_text(),
        "stdout": proc.stdout,
    }


@pytest.mark.slow
def test_smoke_run_writes_one_table_with_a_row_per_benchmark(smoke):
    summary = smoke["summary"]
    assert summary["ok"] is True and summary["mode"] == "smoke"
    assert list(summary["benchmarks"]) == NAMES  # all, in the fixed order
    assert summary["machine"]["cpus"] >= 1 and summary["duration_s"] > 0
    rows = [ln for ln in smoke["markdown"].splitlines() if ln.startswith("| ")]
    for name in NAMES:
        assert any(ln.startswith(f"| {name} |") for ln in rows), name
        assert (smoke["out"] / "results" / f"{name}.md").read_text().strip()
    assert "failed" not in smoke["markdown"]
    assert "Machine:" in smoke["markdown"] and "Load average" in smoke["markdown"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_result_is_well_formed(smoke, name):
    entry = smoke["summary"]["benchmarks"][name]
    assert entry["status"] == "ok", entry.get("error")
    results = entry["results"]
    # what the script itself wrote is what the summary holds
    own = json.loads((smoke["out"] / "results" / f"{name}.json").read_text())
    assert own == results
    assert results["quick"] is True
    if name == "serving":
        assert results["models"]["primary"] in results["latency"]
        for model in results["latency"].values():
            assert finite_positive(model["in_process"]["p50_ms"])
            assert finite_positive(model["grpc"]["p50_ms"])
            assert finite_positive(model["p50_ratio_grpc_over_in_process"])
        assert all(finite_positive(v) for v in results["throughput"]["requests_per_s"].values())
        assert isinstance(results["goal_met"], bool)
    else:
        assert results["variants"] and results["ratios"] and results["goals"]
        for variant in results["variants"].values():
            assert finite_positive(variant["median_s"])
            assert all(finite_positive(r) for r in variant["runs_s"])
        assert all(finite_positive(r) for r in results["ratios"].values())
        assert all(isinstance(g, bool) for g in results["goals"].values())
    claims = entry["headline"]["claims"]
    # example_gen's second claim is at 20,000 images: full mode only
    unmeasured = name == "example_gen" and not results.get("large")
    assert len(claims) == len(bench.BENCHMARKS[name].goals) - unmeasured
    for c in claims:
        assert finite_positive(c["ratio"]) and c["met"] in (True, False, None)
        assert c["compared"] and c["goal"] and c["ratio_label"]


@pytest.mark.slow
def test_smoke_run_draws_the_photos_once(smoke):
    """example_gen and input_pipeline get the very same files from the shared pool."""
    cache = smoke["cache"]
    eg = cache / "example_gen" / "photos-40" / "train" / "circles" / "0000.jpg"
    ip = cache / "input_pipeline" / "photos-20" / "images" / "train" / "circles" / "0000.jpg"
    pool = cache / common.PHOTO_POOL / "500x375-jpg" / "circles" / "00000.jpg"
    assert os.path.samefile(eg, pool) and os.path.samefile(ip, pool)


# --- the aggregator, with stand-in results ----------------------------------------------------


def fake_results(name: str) -> dict:
    env = {"load_avg_1m": 1.5}
    if name == "serving":
        lat = {
            "in_process": {"p50_ms": 5.0},
            "grpc": {"p50_ms": 6.0},
            "p50_ratio_grpc_over_in_process": 1.2,
            "p50_ratio_per_round": [1.2],
            "noop_rpc_p50_ms": 0.4,
        }
        return {
            "environment": env,
            "quick": True,
            "models": {"primary": "m", "sizes": {"m": 96}},
            "latency": {"m": lat},
            "throughput": {"clients": 8, "requests_per_s": {"off": 100, "on": 150},
                           "speedup_on_over_off": 1.5},
            "goal_met": True,
        }  # fmt: skip
    variants = {f"({k}) variant {k}": {"median_s": 1.0 + i} for i, k in enumerate("abcdet")}
    ratios = {
        "batch_inference": {"b_over_a": 1.2, "a_over_c": 1.1, "e_over_d": 1.5},
        "example_gen": {"a_over_b": 1.4, "b_over_d": 2.0},
        "statistics_gen": {"s_over_c": 0.4, "t_over_c": 0.5, "p_over_t": 1.5},
        "input_pipeline": {"a_over_b": 6.0, "a_over_d": 9.0},
        "training": {"a_over_b": 12.0, "b_over_floor": 1.3, "ideal_a_over_b": 20.0},
        "feature_stream": {"streamed_speed": 0.9, "past_cap_speed": 0.4},
        "multi_worker": {
            "b_over_a_training_images_per_s": 0.8,
            "b_over_a_wall_time": 1.9,
            "b_over_a_cpu_time": 1.7,
        },
    }[name]
    goals = {
        "batch_inference": {"b_within_1.3x_of_a": True, "c_faster_than_a": False},
        "example_gen": {"b_no_slower_than_a": True},
        "statistics_gen": {"none_set": True},
        "input_pipeline": {"a_over_b_at_least_5": True, "b_at_least_0.85_of_floor": False},
        "training": {"a_over_b_at_least_10": False},
        "feature_stream": {"streamed_at_least_0.8": True},
        "multi_worker": {"b_faster_in_every_round": False},
    }[name]
    return {
        "environment": env,
        "quick": True,
        "num_images": 10,
        "image_size": [64, 64],
        "repeats": 1,
        "batch_size": 100,
        "epochs": 20,
        "model": "m",
        "default_mode": "multi_threading",
        "steps_per_epoch": 8,
        "variants": variants,
        "ratios": ratios,
        "goals": goals,
    }


@pytest.fixture
def fakes(monkeypatch):
    """Every script's run() and report() replaced by stand-ins; returns {name: calls}."""
    calls = {name: [] for name in NAMES}
    for name, module in MODULES.items():

        def run(quick=False, _name=name, **kwargs):
            calls[_name].append({"quick": quick, **kwargs})
            return fake_results(_name)

        monkeypatch.setattr(module, "run", run)
        monkeypatch.setattr(module, "report", lambda r: ("text", "### details\n\nbody"))
    return calls


def test_aggregator_reports_a_failing_benchmark_and_still_writes_the_others(
    fakes, monkeypatch, tmp_path, capsys
):
    def boom(quick=False):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "run", boom)
    monkeypatch.setattr(serving, "run", lambda quick=False: {"environment": {}})  # malformed
    out = tmp_path / "out"
    status = bench.main(["--quick", "--in-process", "--out", str(out)])
    assert status == 1
    summary = json.loads((out / "results.json").read_text())
    assert summary["ok"] is False and list(summary["benchmarks"]) == NAMES
    b = summary["benchmarks"]
    assert b["example_gen"]["status"] == "ok" and b["input_pipeline"]["status"] == "ok"
    assert b["training"] == {
        **b["training"],
        "status": "failed",
        "error": "RuntimeError: disk on fire",
    }
    assert b["serving"]["status"] == "failed" and "unreadable results" in b["serving"]["error"]
    assert fakes["example_gen"] == [{"quick": True}]
    md = (out / "results.md").read_text()
    rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "**failed**" in rows["training"] and "disk on fire" in rows["training"]
    assert "(a)/(b) >= 10 for 20 epochs" in rows["training"]  # the goal, even when failed
    assert "**failed**" in rows["serving"]
    assert "1.40x (a)/(b) time" in rows["example_gen"] and "| yes |" in rows["example_gen"]
    assert "6.00x (a)/(b) time" in rows["input_pipeline"]
    # issue 19's claim on its own row: (a)/(b) over (a)/(d) = 6 / 9, goal 0.85, missed
    (share,) = [ln for ln in md.splitlines() if "share of the floor" in ln]
    assert "0.67x (b)'s share of the floor" in share and "| **no** |" in share
    assert (out / "results" / "example_gen.md").exists()
    assert "### example_gen" in md  # the details section carries each script's own table
    assert "FAILED: training, serving" in capsys.readouterr().err


def test_missed_goal_is_not_a_failure_and_only_runs_what_is_asked(fakes, tmp_path):
    status = bench.main(["--smoke", "--in-process", "--only", "training", "--out", str(tmp_path)])
    assert status == 0
    summary = json.loads((tmp_path / "results.json").read_text())
    assert list(summary["benchmarks"]) == ["training"]
    assert summary["benchmarks"]["training"]["headline"]["claims"][0]["met"] is False
    assert fakes["training"] == [{"quick": True, **bench.SMOKE["training"]}]
    assert "| **no** |" in (tmp_path / "results.md").read_text()


def test_only_refreshes_its_rows_and_keeps_the_rest_of_the_last_run(fakes, monkeypatch, tmp_path):
    args = ["--quick", "--in-process", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    first = json.loads((tmp_path / "results.json").read_text())

    def boom(quick=False):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(training, "run", boom)
    monkeypatch.setattr(bench.time, "strftime", lambda fmt: "2099-01-01 00:00:00")
    assert bench.main([*args, "--only", "training"]) == 1
    summary = json.loads((tmp_path / "results.json").read_text())
    assert list(summary["benchmarks"]) == NAMES
    b = summary["benchmarks"]
    assert b["training"]["status"] == "failed" and b["serving"]["status"] == "ok"
    assert b["serving"]["run_started"] == first["started"] != summary["started"]
    md = (tmp_path / "results.md").read_text()
    assert f"Rows from earlier runs: example_gen ({first['started']})" in md
    assert "| serving |" in md and "out of memory" in md
    # an earlier row's failure is not this run's: refreshing another row exits 0
    assert bench.main([*args, "--only", "serving"]) == 0
    # another mode never mixes with these rows
    assert bench.main([*args[1:], "--smoke", "--only", "serving"]) == 0
    assert list(json.loads((tmp_path / "results.json").read_text())["benchmarks"]) == ["serving"]


def test_smoke_sizes_are_arguments_of_each_run():
    """--smoke passes only keywords a script's run() takes; keep them in step with the scripts."""
    import inspect

    for name, module in MODULES.items():
        accepted = inspect.signature(module.run).parameters
        assert set(bench.SMOKE[name]) <= set(accepted), name


def test_unknown_benchmark_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_a_benchmark_failing_in_its_subprocess_is_reported(tmp_path):
    """The child cannot make its data folder: it fails, the parent says why, exits 1."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = run_cli(["--smoke", "--only", "example_gen"], tmp_path, 120, cache=blocker / "c")
    assert proc.returncode == 1, proc.stdout[-3000:]
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["example_gen"]
    assert entry["status"] == "failed" and "Error" in entry["error"]
    assert entry["log_tail"] and "Traceback" in "\n".join(entry["log_tail"])
    assert "**failed**" in (tmp_path / "out" / "results.md").read_text()


def test_a_hanging_benchmark_is_stopped_at_its_timeout(tmp_path):
    proc = run_cli(["--smoke", "--only", "serving", "--timeout", "2"], tmp_path, 120)
    assert proc.returncode == 1
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["serving"]
    assert entry["status"] == "failed" and entry["error"].startswith("timed out after 2")


def test_photo_pool_links_the_same_images_into_every_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    counts = common.photo_dataset(str(tmp_path / "a"), per_split=(3, 1, 1), size=(40, 30))
    common.photo_dataset(str(tmp_path / "b"), per_split=(5, 0, 0), size=(40, 30))
    assert counts == {s: {"circles": n, "squares": n} for s, n in
                      (("train", 3), ("validation", 1), ("test", 1))}  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b" / "train"
    # per class, split after split: a's validation image is the pool's 4th, as is b's
    assert os.path.samefile(a / "validation" / "squares" / "0000.jpg", b / "squares" / "0003.jpg")
    assert os.path.samefile(a / "test" / "circles" / "0000.jpg", b / "circles" / "0004.jpg")
    pool = tmp_path / "cache" / common.PHOTO_POOL / "40x30-jpg" / "circles"
    assert len(list(pool.iterdir())) == 5
    assert not (tmp_path / "b" / "validation").exists()


# --- honest numbers: each ratio with its spread and the load average ---------------------------


def test_spread_and_ratio_formatting():
    assert common.round_ratios([2.0, 3.0, 9.0], [1.0, 2.0, 3.0]) == [2.0, 1.5, 3.0]
    assert common.paired_ratio({"x": [2.0, 3.0, 9.0], "y": [1.0, 2.0, 3.0]}, "x", "y") == 2.0
    assert common.spread([2.0, 1.5, 3.0]) == [1.5, 3.0]
    assert common.spread([]) is None
    assert common.format_ratio(2.0, [1.5, 3.0], 3) == "2.00x (1.50-3.00 over 3 rounds)"
    assert common.format_ratio(2.0) == "2.00x"


def test_each_ratio_in_results_md_carries_its_spread_and_the_load(fakes, monkeypatch, tmp_path):
    """The per-round ratios come from the variants' runs (time ratios), from the serving
    script's per-round p50 ratios and throughput runs; the row shows min-max and the load
    average when the benchmark started and ended."""
    eg = fake_results("example_gen")
    eg["variants"] = {
        "(a) loop": {"median_s": 4.0, "runs_s": [4.0, 4.0, 4.0]},
        "(b) ours": {"median_s": 2.0, "runs_s": [2.0, 2.5, 1.6]},
        "(d) floor": {"median_s": 1.6, "runs_s": [1.0, 2.0, 1.6]},
    }
    eg["ratios"] = {"a_over_b": 2.0, "b_over_d": 1.25, "large_b_over_d": 1.4}
    eg["ratios"] |= {"large_c_over_d": 1.3, "large_e_over_d": 2.0}
    eg["goals"]["large_b_within_1.5x_of_d"] = True
    eg["large"] = {"num_images": 20000, "default_mode": "multi_processing",
                   "variants": eg["variants"]}  # fmt: skip
    monkeypatch.setattr(example_gen, "run", lambda quick=False: eg)
    sv = fake_results("serving")
    sv["latency"]["m"]["p50_ratio_per_round"] = [1.1, 1.3, 1.2]
    sv["throughput"]["runs"] = {"off": [100.0, 100.0], "on": [120.0, 180.0]}
    monkeypatch.setattr(serving, "run", lambda quick=False: sv)
    loads = iter([0.5, 0.75] + [1.0] * 100)
    monkeypatch.setattr(common, "load_avg", lambda: next(loads))
    assert bench.main(["--quick", "--in-process", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ")}
    # (a)/(b) per round: 2.0, 1.6, 2.5; (b)/(d): 2.0, 1.25, 1.0
    assert "2.00x (1.60-2.50 over 3 rounds) (a)/(b) time" in rows["example_gen"]
    assert "1.40x (1.00-2.00 over 3 rounds) (b)/(d) time at 20000" in md
    assert "1.20x (1.10-1.30 over 3 rounds) gRPC/in-process p50" in rows["serving"]
    assert "1.50x (1.20-1.80 over 2 rounds) on/off requests/s" in md
    assert "load 1m start -> end" in md
    summary = json.loads((tmp_path / "results.json").read_text())
    b = summary["benchmarks"]
    assert summary["load_avg_1m_start"] == 0.5
    assert (b["example_gen"]["load_avg_1m_at_start"], b["example_gen"]["load_avg_1m_at_end"]) == (
        0.75,
        1.0,
    )
    assert "| 0.75 -> 1.0 |" in rows["example_gen"]
    claims = b["example_gen"]["headline"]["claims"]
    assert claims[1]["per_round"] == [2.0, 1.25, 1.0] and claims[1]["spread"] == [1.0, 2.0]
    # a ratio without per-round figures is shown without a spread, not with a made-up one
    assert "6.00x (a)/(b) time" in rows["input_pipeline"]
    assert "spread" not in b["input_pipeline"]["headline"]["claims"][0]


# --- discovery: a benchmark is one file ---------------------------------------------------------


def test_the_benchmarks_declare_themselves_in_table_order():
    assert NAMES == [
        "example_gen", "statistics_gen", "input_pipeline", "training", "feature_stream",
        "serving", "batch_inference", "multi_worker",
    ]  # fmt: skip
    for name, module in MODULES.items():
        assert module.BENCHMARK is not None and bench.BENCHMARKS[name].module == module.__name__
        assert bench.SMOKE[name] == dict(module.BENCHMARK.smoke)


def test_a_new_benchmark_is_found_without_editing_the_runner(tmp_path, monkeypatch):
    """A module that declares BENCHMARK is discovered (in its order); one that does not is not."""
    pkg = tmp_path / "morebench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("VALUE = 1\n")
    for name, order in (("zeta", 5), ("alpha", 7)):
        (pkg / f"{name}.py").write_text(
            textwrap.dedent(f"""
            from benchmarks.headline import Benchmark, generic

            def run(quick=False, n=1):
                return {{"ratios": {{"x_over_y": 2.0}}, "goals": {{"x_fast": True}}}}

            def report(results):
                return "text", "table"

            BENCHMARK = Benchmark("{name}", {order}, ("x -> y",), ("x/y >= 2",), generic,
                                  smoke={{"n": 2}})
        """)
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = headline.discover("morebench")
    assert list(found) == ["zeta", "alpha"]  # by order, not by name
    assert found["zeta"].module == "morebench.zeta" and found["alpha"].smoke == {"n": 2}
    line = headline.headline(found["zeta"], {"ratios": {"x_over_y": 2.0}, "goals": {"x": True}})
    assert line["claims"][0]["ratio"] == 2.0 and line["claims"][0]["goal"] == "x/y >= 2"
    (pkg / "dup.py").write_text(
        "from benchmarks.headline import Benchmark, generic\n"
        "BENCHMARK = Benchmark('zeta', 1, (), (), generic)\n"
    )
    with pytest.raises(ValueError, match="two benchmarks are named zeta"):
        headline.discover("morebench")
