"""Every Beam job of the pipeline is built and run here (docs/ARCHITECTURE.md, "Beam jobs").

- **Options.** pipeline.yaml's `beam:` section (`BeamConfig`, a settings section like `kfp:`:
  never part of a cache key) holds every Beam job's options, `beam.args`. A Beam component's own
  `beam_args` (its section, or `-- BEAM_ARGS` on its command line) replaces them for its jobs;
  null means the pipeline's. `setup(own, pipeline)` resolves the two into a `BeamSetup`.
- **The pipeline.** `pipeline(setup)`: a `beam.Pipeline` for those options (a bad option or an
  unknown runner is one line). DirectRunner is Beam's in-process FnApiRunner, the runner every
  benchmark measured: Beam (2.6x+) otherwise tries its Prism runner first, downloading a binary
  from GitHub at run time where the machine has egress, ignoring the DirectRunner's running mode.
- **The DirectRunner's mode** by input size and cores (`direct_mode_args`), for jobs that know
  their input size (ExampleGen), and the file systems' options for listing and reading outside a
  pipeline (`set_filesystem_options`).
- **Running** (`run`): to completion, a failure as one line, its counters returned. While it
  runs, every `progress_seconds` (`beam.progress_seconds`; 0: never) one log line of its counters,
  `ExampleGen: 12,400/20,000 files read, 3 skipped (after 40 s)`: a job shorter than that prints
  none. Beam's in-process runner reports metrics only when the job is done (its `run` returns
  then), so DoFns also count with `count` / `live`: in the driver's process (in_memory,
  multi_threading) the reporter reads those counts directly, DirectRunner's worker processes
  (multi_processing) write theirs to a small file each at most once a second. Runners whose `run`
  returns while the job runs (Dataflow, Flink, Beam's BundleBasedDirectRunner) are asked for
  their metrics instead.

Beam is imported inside functions only: every component spec imports this module, and
`transfer-pipeline --help` imports no Beam.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline_components.core import locking
from pipeline_components.core.config import PipelineConfig, option
from pipeline_components.core.errors import PipelineError
from pipeline_components.core.machine import usable_cpus

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)

SECTION = "beam"
DEFAULT_ARGS = ("--runner=DirectRunner",)
DEFAULT_PROGRESS_SECONDS = 10.0


@dataclasses.dataclass
class BeamConfig:
    """pipeline.yaml's `beam:` section: how every Beam job runs (never what it computes)."""

    args: list[str] = option(
        factory=lambda: list(DEFAULT_ARGS),
        key=False,
        doc="Beam pipeline options of every Beam job (ExampleGen, StatisticsGen, Evaluator, "
        "BulkInferrer); a component's own beam_args replace them for its jobs",
    )
    progress_seconds: float = option(
        DEFAULT_PROGRESS_SECONDS,
        ge=0,
        le=86_400,
        key=False,
        doc="a log line of a running Beam job's counters this often (0: never)",
    )

    @staticmethod
    def upgrade_config(data: dict, source: str) -> dict:
        """Until the next release: a config without a `beam:` section whose `example_gen` sets
        `beam_args` and whose `statistics_gen` does not keeps running StatisticsGen with
        ExampleGen's options, as `statistics_gen.beam_args: null` meant before (one line says
        so). Applied where the config loads, so StatisticsGen reads its own section only."""
        example_gen, stats = data.get("example_gen"), data.get("statistics_gen")
        if SECTION in data or not isinstance(example_gen, dict):
            return data
        if example_gen.get("beam_args") is None or not isinstance(stats, dict | None):
            return data
        if stats is not None and stats.get("beam_args") is not None:
            return data
        _warn_once(
            f"{source}: statistics_gen.beam_args is null and there is no beam: section, so "
            "StatisticsGen runs with example_gen.beam_args as before; that goes in the next "
            "release: put the options every Beam job shares in beam.args, or set "
            "statistics_gen.beam_args"
        )
        upgraded = {**(stats or {}), "beam_args": example_gen["beam_args"]}
        return {**data, "statistics_gen": upgraded}


_warned: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        log.warning("%s", text)


@dataclasses.dataclass(frozen=True)
class BeamSetup:
    """How one component's Beam jobs run: their options and the progress interval."""

    args: tuple[str, ...] = DEFAULT_ARGS
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS


def setup(own: Sequence[str] | None, pipeline: PipelineConfig | None = None) -> BeamSetup:
    """A component's Beam setup: its own `beam_args` when set (the override), else the
    pipeline's `beam.args`; the progress interval is the pipeline's."""
    section = pipeline.sections.get(SECTION) if pipeline is not None else None
    base = section if isinstance(section, BeamConfig) else BeamConfig()
    args = base.args if own is None else own
    return BeamSetup(tuple(args), base.progress_seconds)


# ---------------------------------------------------------------------------- options


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value given for `flag` (`--flag=v` or `--flag v`), None if absent."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag:
            value = args[i + 1] if i + 1 < len(args) else ""
    return value


def is_direct(args: Sequence[str]) -> bool:
    """The options name DirectRunner (or no runner: Beam's default)."""
    runner = flag_value(args, "--runner")
    return runner is None or runner.lower() in ("directrunner", "direct")


def pipeline_options(args: Sequence[str] | None) -> PipelineOptions:
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(args or [])
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # worker processes' INFO chatter
    return PipelineOptions(args)


def set_filesystem_options(args: Sequence[str] | None) -> None:
    """Hand the Beam options to Beam's file systems before anything is listed or read outside a
    pipeline: s3:// refuses without them (no client, no endpoint, no credentials), and gs://
    reads its project and credentials options from them. A pipeline sets them only when built."""
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(pipeline_options(args))


def quiet() -> None:
    """Beam's INFO lines (runner choice, state cache, ...) only when this process logs DEBUG."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("apache_beam").setLevel(logging.WARNING)


# Without runner options, DirectRunner runs in one thread (in_memory). Threads start free and
# TensorFlow's decoder releases the GIL; the per-file Python work (~40% of a file's CPU: header
# check, sha256, building and writing the Example) does not, so threads keep at most ~2.5 cores
# busy. Worker processes scale past that but cost ~7 CPU-s each to start (Python, Beam and
# TensorFlow imports, the runner's gRPC): on 2 cores they lost at 2,000 and at 20,000 files
# (benchmarks/example_gen.py, (c) vs (e)), so they are used only with more cores and many files.
DEFAULT_MULTI_PROCESSING_MIN_FILES = 10_000
MULTI_PROCESSING_MIN_CPUS = 3
DIRECT_MODE_FLAGS = ("--direct_running_mode", "--direct_num_workers")


def direct_mode_args(
    args: Sequence[str] | None,
    num_files: int,
    multi_processing_min_files: int = DEFAULT_MULTI_PROCESSING_MIN_FILES,
    cpus: int | None = None,
    setting: str = "example_gen.multi_processing_min_files",
) -> tuple[list[str], str]:
    """(the Beam options to run with, why): with DirectRunner and no `--direct_running_mode` /
    `--direct_num_workers` in `args`, multi_threading on every usable core below
    `multi_processing_min_files` files or on fewer than MULTI_PROCESSING_MIN_CPUS cores, and
    multi_processing otherwise (in_memory on one core). Options the user gave, or another runner,
    are left exactly as they are. `setting`: the config key of the threshold, for the reason."""
    args = list(args or [])
    if not is_direct(args):
        return args, f"runner {flag_value(args, '--runner')} from beam_args"
    given = [a.split("=")[0] for a in args if a.split("=")[0] in DIRECT_MODE_FLAGS]
    if given:
        return args, f"{', '.join(sorted(set(given)))} from beam_args"
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 2:
        return [*args, "--direct_running_mode=in_memory"], "DirectRunner in_memory: 1 usable CPU"
    if num_files < multi_processing_min_files:
        mode, why = "multi_threading", f"{num_files} files < {multi_processing_min_files}"
    elif cpus < MULTI_PROCESSING_MIN_CPUS:
        mode = "multi_threading"
        why = f"{cpus} cores: threads keep them busy, worker processes would only add start-up"
    else:
        mode, why = "multi_processing", f"{num_files} files >= {multi_processing_min_files}"
    return [
        *args,
        f"--direct_running_mode={mode}",
        f"--direct_num_workers={cpus}",
    ], f"DirectRunner {mode} x{cpus}: {why} ({setting})"


# ---------------------------------------------------------------------------- the pipeline


def _direct_runner() -> Any:
    """Beam's DirectRunner without its Prism attempt: the in-process FnApiRunner for a batch
    job (BundleBasedDirectRunner where the FnApiRunner cannot run it), whatever the network."""
    from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner

    runner = SwitchingDirectRunner()
    runner.is_interactive()  # the one switch Beam has that keeps DirectRunner off Prism
    return runner


def pipeline(beam_setup: BeamSetup) -> beam.Pipeline:
    """A Pipeline for these options; an unknown runner or a bad option is one line."""
    import apache_beam as beam

    args = list(beam_setup.args)
    try:
        runner = _direct_runner() if is_direct(args) else None
        return beam.Pipeline(runner=runner, options=pipeline_options(args))
    except Exception as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise PipelineError(f"bad Beam options {' '.join(args)}: {text}") from None


# ---------------------------------------------------------------------------- counting

LIVE_ENV = "TRANSFER_PIPELINE_BEAM_LIVE"  # a worker process's folder for its counts
LIVE_PREFIX = "transfer-pipeline-beam-"  # <tmp>/transfer-pipeline-beam-<driver pid>-<random>/
# a job's own temporary directory (own_tempdir): <tmp>/transfer-pipeline-beamtmp-<pid>-<random>/
SCRATCH_PREFIX = "transfer-pipeline-beamtmp-"
FLUSH_SECONDS = 1.0  # a worker process writes its counts at most this often


class _Live:
    """This process's counts of the running job (live / count), for the progress line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.driver = False  # this process runs the job: its worker threads count here
        self.folder: str | None = None  # in a worker process: where its counts go
        self.counts: dict[str, int] = {}
        self.flushed = 0.0


_LIVE = _Live()


def live(namespace: str, name: str, n: int = 1) -> None:
    """Count towards the running job's progress line only (no Beam metric): cheap enough per
    element, for DoFns that update their Beam counters once per bundle or shard."""
    state = _LIVE
    key = f"{namespace}.{name}"
    if state.driver:  # a worker thread of the driver's process (in_memory, multi_threading)
        with state.lock:
            state.counts[key] = state.counts.get(key, 0) + n
        return
    folder = os.environ.get(LIVE_ENV)
    if not folder:  # no job reports progress, or a remote worker
        return
    with state.lock:
        if state.folder != folder:  # a new job in a reused process
            state.folder, state.counts, state.flushed = folder, {}, 0.0
        state.counts[key] = state.counts.get(key, 0) + n
        now = time.monotonic()
        if now - state.flushed < FLUSH_SECONDS:
            return
        state.flushed = now
        counts = dict(state.counts)
    _write_counts(folder, counts)


def count(namespace: str, name: str, n: int = 1) -> None:
    """A Beam counter (`Metrics.counter(namespace, name).inc(n)`) that the progress line sees
    while the job runs."""
    from apache_beam.metrics import Metrics

    Metrics.counter(namespace, name).inc(n)
    live(namespace, name, n)


def _write_counts(folder: str, counts: Mapping[str, int]) -> None:
    path = os.path.join(folder, f"{os.getpid()}.json")
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(counts, f)
        os.replace(path + ".tmp", path)
    except OSError:  # the job ended and its folder went: nothing to report to
        pass


def _read_counts(folder: str | None) -> dict[str, int]:
    """The driver's own counts plus every worker process's last written ones."""
    with _LIVE.lock:
        total = dict(_LIVE.counts)
    if not folder or not os.path.isdir(folder):
        return total
    for name in os.listdir(folder):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError):  # being replaced, or gone
            continue
        for key, value in found.items():
            total[key] = total.get(key, 0) + int(value)
    return total


def _remove_stale_folders() -> None:
    """Count and scratch folders of jobs whose driver died (kill -9): the next job removes
    them."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        prefix = next((p for p in (SCRATCH_PREFIX, LIVE_PREFIX) if name.startswith(p)), None)
        if prefix is None:
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not locking.pid_alive(int(pid)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


@contextlib.contextmanager
def own_tempdir() -> Iterator[str]:
    """Run a job with Python's temporary directory (and TMPDIR, for the processes it starts)
    inside a fresh folder, removed afterwards: the DirectRunner leaves beam-temp-*,
    beam-requirements-cache and tmp* folders in the temporary directory otherwise. A killed
    driver's folder is removed by the next job (_remove_stale_folders)."""
    scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = scratch
    os.environ["TMPDIR"] = scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _counting(args: Sequence[str]) -> Iterator[str | None]:
    """While a job reports progress: this process counts its worker threads' `live` calls;
    with DirectRunner multi_processing, worker processes (which inherit the environment) write
    theirs into a folder, yielded, that is removed afterwards."""
    folder = None
    if is_direct(args) and flag_value(args, "--direct_running_mode") == "multi_processing":
        folder = tempfile.mkdtemp(prefix=f"{LIVE_PREFIX}{os.getpid()}-")
        os.environ[LIVE_ENV] = folder
    with _LIVE.lock:
        _LIVE.driver, _LIVE.counts = True, {}
    try:
        yield folder
    finally:
        with _LIVE.lock:
            _LIVE.driver, _LIVE.counts = False, {}
        if folder is not None:
            os.environ.pop(LIVE_ENV, None)
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- running

Describe = Callable[[Mapping[str, int]], str]


def describe_counters(counters: Mapping[str, int]) -> str:
    """The default progress text: every counter, `name value`."""
    shown = [f"{key.split('.', 1)[-1]} {value:,}" for key, value in sorted(counters.items())]
    return ", ".join(shown) or "running"


class _Reporter:
    """Every `seconds` while the job runs: one log line, `<job>: <describe(counters)>`."""

    def __init__(
        self,
        job: str,
        seconds: float,
        describe: Describe,
        read: Callable[[], dict[str, int]],
    ) -> None:
        self.job, self.seconds, self.describe, self.read = job, seconds, describe, read
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"{job} progress", daemon=True)

    def __enter__(self) -> _Reporter:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.stopped.wait(self.seconds):
            try:
                text = self.describe(self.read())
            except Exception:  # a progress line never fails the job
                log.debug("%s: no progress line", self.job, exc_info=True)
                continue
            if not self.stopped.is_set():
                log.info("%s: %s (after %.0f s)", self.job, text, time.monotonic() - self.started)


def counters(result: Any, namespaces: Iterable[str]) -> dict[str, int]:
    """{"<namespace>.<name>": n} of a PipelineResult (committed where the runner has them)."""
    from apache_beam.metrics.metric import MetricsFilter

    found: dict[str, int] = {}
    for namespace in namespaces:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
        for c in query["counters"]:
            value = c.committed if c.committed is not None else c.attempted
            key = f"{namespace}.{c.key.metric.name}"
            found[key] = found.get(key, 0) + int(value or 0)
    return dict(sorted(found.items()))


def run(
    p: beam.Pipeline,
    beam_setup: BeamSetup,
    *,
    job: str,
    namespaces: Sequence[str],
    describe: Describe = describe_counters,
) -> dict[str, int]:
    """Run `p` to completion and return the counters of `namespaces` as
    {"<namespace>.<name>": n}; a failure is one PipelineError line. While it runs, one progress
    line every `beam_setup.progress_seconds` (0: none), named `job`."""
    running: list[Any] = []  # the PipelineResult, once a runner returns it while running

    def read() -> dict[str, int]:
        found = _read_counts(folder)
        if running:  # the runner's own metrics, where it has them while running
            for key, value in counters(running[0], namespaces).items():
                found[key] = max(found.get(key, 0), value)
        return found

    seconds = beam_setup.progress_seconds
    _remove_stale_folders()
    counting = _counting(beam_setup.args) if seconds > 0 else contextlib.nullcontext(None)
    with counting as folder:
        reporter = _Reporter(job, seconds, describe, read) if seconds > 0 else None
        with reporter or contextlib.nullcontext(), own_tempdir():
            result = _run_to_end(p, running)
    return counters(result, namespaces)


def _run_to_end(p: beam.Pipeline, running: list[Any]) -> Any:
    """p.run() and wait (`running` gets the result as soon as the runner returns it); a
    failure is one PipelineError line, its last non-empty line."""
    try:
        result = p.run()
        running.append(result)
        result.wait_until_finish()
    except Exception as e:
        log.debug("Beam pipeline failed", exc_info=True)
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise PipelineError(f"Beam pipeline failed: {lines[-1] if lines else e!r}") from None
    return result
