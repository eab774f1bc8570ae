"""core/beam.py, the one place Beam jobs are built and run: options from the pipeline's `beam:`
section with a component's `beam_args` as the override, DirectRunner's mode by input size,
DirectRunner kept off Prism, and the progress lines of a running job (issues 27 and 28), with
real Beam pipelines on tiny inputs and a short interval."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics

from pipeline_components.core import beam as core_beam
from pipeline_components.core import registry
from pipeline_components.core.beam import BeamSetup
from pipeline_components.core.errors import PipelineError

NS = "beam_test"
LOGGER = "pipeline_components.core.beam"


def slow_item(x: int, seconds: float) -> int:
    time.sleep(seconds)
    core_beam.count(NS, "items")
    return x


def progress_lines(caplog: pytest.LogCaptureFixture, job: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{job}: ")]


def numbers(lines: list[str]) -> list[int]:
    return [int(re.search(r"(\d+) items", line).group(1)) for line in lines]  # type: ignore[union-attr]


def items_job(args: list[str], n: int, seconds: float, progress: float) -> tuple[dict, BeamSetup]:
    setup = BeamSetup(tuple(args), progress)
    p = core_beam.pipeline(setup)
    _ = p | beam.Create(list(range(n))) | beam.Map(slow_item, seconds)
    describe = lambda c: f"{c.get(f'{NS}.items', 0)} items"  # noqa: E731
    return core_beam.run(p, setup, job="Toy", namespaces=[NS], describe=describe), setup


# ------------------------------------------------------------------------ progress lines


def test_a_running_job_reports_its_counters_every_interval(caplog):
    """The in-process runner returns only when the job is done: the lines come from the DoFns'
    own counts, read by the reporter thread while the job runs."""
    caplog.set_level(logging.INFO, LOGGER)
    counters, _ = items_job(["--direct_running_mode=in_memory"], 40, 0.03, 0.2)
    assert counters == {f"{NS}.items": 40}
    lines = progress_lines(caplog, "Toy")
    assert len(lines) >= 2, lines
    assert all(re.fullmatch(r"Toy: \d+ items \(after \d+ s\)", line) for line in lines), lines
    counts = numbers(lines)
    assert counts == sorted(counts) and counts[-1] > 0 and counts[0] < 40


def test_threads_of_multi_threading_count_in_the_driver(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    args = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
    counters, _ = items_job(args, 40, 0.03, 0.2)
    assert counters == {f"{NS}.items": 40}
    assert max(numbers(progress_lines(caplog, "Toy"))) > 0


def test_a_job_shorter_than_the_interval_prints_no_progress(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    counters, _ = items_job([], 5, 0.0, 30.0)
    assert counters == {f"{NS}.items": 5}
    assert progress_lines(caplog, "Toy") == []


def test_progress_zero_is_off_and_nothing_is_counted(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    items_job([], 20, 0.02, 0.0)
    assert progress_lines(caplog, "Toy") == []
    assert core_beam._read_counts(None) == {}  # no job counts now


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_worker_processes_report_through_files_removed_afterwards(caplog, monkeypatch):
    """multi_processing: the DoFns run in worker processes that inherit the job's folder; each
    writes its counts there, the reporter sums them. A folder a killed driver left (its pid is
    gone) is removed by the next such job; the job's own is removed at its end."""
    caplog.set_level(logging.INFO, LOGGER)
    here = os.path.dirname(os.path.abspath(__file__))  # the workers unpickle slow_item from here
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    stale = tempfile.mkdtemp(prefix=f"{core_beam.LIVE_PREFIX}{_dead_pid()}-")
    args = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    counters, _ = items_job(args, 60, 0.05, 0.3)
    assert counters == {f"{NS}.items": 60}
    assert max(numbers(progress_lines(caplog, "Toy"))) > 0
    assert not os.path.exists(stale)
    mine = f"{core_beam.LIVE_PREFIX}{os.getpid()}-"
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(mine)]
    assert core_beam.LIVE_ENV not in os.environ


def test_a_runner_that_returns_while_running_is_asked_for_its_metrics(caplog):
    """BundleBasedDirectRunner's run() returns at once (like Dataflow's): the reporter reads the
    runner's metrics, here a Beam counter of a first step that finished while a slow second
    step still runs (no `live` counts at all)."""
    caplog.set_level(logging.INFO, LOGGER)

    def first(x: int) -> tuple[int, int]:
        Metrics.counter(NS, "first").inc()
        return x % 4, x

    setup = BeamSetup(("--runner=BundleBasedDirectRunner",), 0.2)
    p = core_beam.pipeline(setup)
    _ = (
        p
        | beam.Create(list(range(30)))
        | beam.Map(first)
        | beam.GroupByKey()
        | beam.FlatMap(lambda kv: kv[1])
        | beam.Map(lambda x: time.sleep(0.06) or x)
    )
    counters = core_beam.run(p, setup, job="Async", namespaces=[NS])
    assert counters == {f"{NS}.first": 30}
    assert "Async: first 30 (after" in "\n".join(progress_lines(caplog, "Async"))


def test_a_failing_job_is_one_line_and_stops_reporting(caplog):
    caplog.set_level(logging.INFO, LOGGER)

    def boom(x: int) -> int:
        time.sleep(0.02)
        raise ValueError(f"bad element {x}")

    setup = BeamSetup(("--direct_running_mode=in_memory",), 0.1)
    p = core_beam.pipeline(setup)
    _ = p | beam.Create([1]) | beam.Map(boom)
    with pytest.raises(PipelineError, match=r"^Beam pipeline failed: .*bad element 1") as e:
        core_beam.run(p, setup, job="Boom", namespaces=[NS])
    assert "\n" not in str(e.value)
    threads = [t.name for t in threading.enumerate()]
    assert "Boom progress" not in threads


# ------------------------------------------------------------------------ the runner


def test_direct_runner_never_tries_prism(caplog):
    """Beam's DirectRunner tries its Prism runner first (a binary downloaded from GitHub where
    there is egress; here a failed download, then a fallback): the project's jobs run on the
    in-process FnApiRunner every benchmark measured, whatever the network."""
    caplog.set_level(logging.INFO, "apache_beam.runners.direct.direct_runner")
    p = core_beam.pipeline(BeamSetup(("--runner=DirectRunner",), 0))
    _ = p | beam.Create([1, 2]) | beam.Map(lambda x: x)
    p.run().wait_until_finish()
    assert "Prism" not in caplog.text


def test_bad_options_are_one_line():
    with pytest.raises(PipelineError, match=r"^bad Beam options --runner=NoSuchRunner: "):
        core_beam.pipeline(BeamSetup(("--runner=NoSuchRunner",), 0))


MP = "--direct_running_mode=multi_processing"
MT = "--direct_running_mode=multi_threading"


@pytest.mark.parametrize(
    "beam_args, files, cpus, added, why",
    [
        # no runner options (the default config's): the number of files decides
        (["--runner=DirectRunner"], 1999, 2, [MT, "--direct_num_workers=2"], "1999 files < 2000"),
        (["--runner=DirectRunner"], 2000, 4, [MP, "--direct_num_workers=4"], "2000 files >= 2000"),
        (None, 50_000, 8, [MP, "--direct_num_workers=8"], "multi_processing x8"),
        # two cores: threads keep both busy at any size (processes only add start-up)
        (["--runner=DirectRunner"], 50_000, 2, [MT, "--direct_num_workers=2"], "2 cores"),
        ([], 10, 4, [MT, "--direct_num_workers=4"], "multi_threading x4"),
        (["--runner", "direct"], 10, 2, [MT, "--direct_num_workers=2"], "10 files"),
        # one core: threads or processes only add overhead
        ([], 50_000, 1, ["--direct_running_mode=in_memory"], "1 usable CPU"),
        # what the user gave always wins, untouched
        (["--direct_num_workers=1"], 50_000, 8, [], "--direct_num_workers from beam_args"),
        ([MT], 50_000, 8, [], "--direct_running_mode from beam_args"),
        (["--direct_running_mode", "in_memory"], 50_000, 8, [], "from beam_args"),
        (["--runner=DataflowRunner", "--project=p"], 50_000, 8, [], "runner DataflowRunner"),
        (["--runner", "FlinkRunner"], 5, 8, [], "runner FlinkRunner"),
    ],
)
def test_direct_mode_follows_input_size_unless_beam_args_say(beam_args, files, cpus, added, why):
    args, reason = core_beam.direct_mode_args(beam_args, files, 2000, cpus=cpus)
    assert args == list(beam_args or []) + added
    assert why in reason


# ------------------------------------------------------------------------ the `beam:` section


def test_a_components_beam_args_override_the_pipelines_and_null_means_the_pipelines():
    cfg = registry.config_from_dict(
        {
            "beam": {"args": ["--runner=DirectRunner", "--x=1"], "progress_seconds": 2.5},
            "evaluator": {"beam_args": ["--runner=DirectRunner", "--y=2"]},
        }
    )
    evaluator, stats = cfg.sections["evaluator"], cfg.sections["statistics_gen"]
    assert core_beam.setup(evaluator.beam_args, cfg) == BeamSetup(
        ("--runner=DirectRunner", "--y=2"), 2.5
    )
    assert core_beam.setup(stats.beam_args, cfg) == BeamSetup(
        ("--runner=DirectRunner", "--x=1"), 2.5
    )
    default = registry.config_from_dict({})
    for section in ("example_gen", "statistics_gen", "evaluator", "batch_predict"):
        own = default.sections[section].beam_args
        assert own is None
        assert core_beam.setup(own, default) == BeamSetup(("--runner=DirectRunner",), 10.0)
    with pytest.raises(PipelineError, match=r"beam.progress_seconds: must be in \[0, 86400\]"):
        registry.config_from_dict({"beam": {"progress_seconds": -1}})


def test_an_old_config_keeps_statistics_gen_on_example_gens_options_for_a_release(caplog):
    """Before the `beam:` section, statistics_gen.beam_args: null meant example_gen's. A config
    that relies on it keeps working, with one line saying how to say it now; StatisticsGen
    itself reads only its own section."""
    old = {"example_gen": {"beam_args": ["--runner=DirectRunner", "--direct_num_workers=3"]}}
    with caplog.at_level(logging.WARNING, LOGGER):
        cfg = registry.config_from_dict(dict(old), source="old.yaml")
        again = registry.config_from_dict(dict(old), source="old.yaml")
    assert cfg.sections["statistics_gen"].beam_args == old["example_gen"]["beam_args"]
    assert again.sections["statistics_gen"].beam_args == old["example_gen"]["beam_args"]
    warned = [
        r.getMessage() for r in caplog.records if "statistics_gen.beam_args" in r.getMessage()
    ]
    assert len(warned) == 1 and warned[0].startswith("old.yaml: ")
    assert "beam.args" in warned[0] and "next release" in warned[0]
    # the new section, or StatisticsGen's own options, and the old meaning is gone
    caplog.clear()
    for data in (
        {**old, "beam": {"args": ["--runner=DirectRunner"]}},
        {**old, "statistics_gen": {"beam_args": ["--z=1"]}},
        {"statistics_gen": {"num_quantiles": 11}},
    ):
        with caplog.at_level(logging.WARNING, LOGGER):
            cfg = registry.config_from_dict(data, source="new.yaml")
        assert cfg.sections["statistics_gen"].beam_args == data.get("statistics_gen", {}).get(
            "beam_args"
        )
        assert "statistics_gen.beam_args" not in caplog.text


@pytest.mark.parametrize(
    "component", [c for c in registry.components() if c.beam], ids=lambda c: c.name
)
def test_beam_options_are_never_in_a_cache_key(component):
    """A config that does not use the `beam:` section keeps its cache keys: Beam options, the
    pipeline's or a component's, change how a job runs, not what it computes."""
    plain = registry.config_from_dict({})
    busy = registry.config_from_dict(
        {
            "beam": {"args": ["--runner=DirectRunner", "--a=1"], "progress_seconds": 1},
            component.config_section: {"beam_args": ["--b=2"]},
        }
    )
    key = component.key_config(component.section_of(plain))
    assert "beam_args" not in key
    assert component.key_config(component.section_of(busy)) == key
