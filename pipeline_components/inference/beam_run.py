"""Running a Beam job the project's way: options from `beam_args`, one-line errors, counters.

ExampleGen's executor has its own copy of the first two (kept as it is to keep that module
stable); the Evaluator and the BulkInferrer share these.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

# RunInference's own counters (num_inferences, failed_batches_counter, ...).
RUN_INFERENCE_NAMESPACE = "RunInference"


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    args = list(beam_args or [])
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # worker processes' INFO chatter
    return PipelineOptions(args)


def set_filesystem_options(beam_args: list[str] | None) -> None:
    """Hand the Beam options to Beam's file systems before anything is listed or read outside a
    pipeline (s3:// needs its region and credentials options; a pipeline sets them only when
    it is built)."""
    from apache_beam.io.filesystems import FileSystems

    FileSystems.set_options(pipeline_options(beam_args))


def make_pipeline(beam_args: list[str] | None) -> beam.Pipeline:
    """A Pipeline for these options; an unknown runner or a bad option is one line."""
    try:
        return beam.Pipeline(options=pipeline_options(beam_args))
    except Exception as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise PipelineError(f"bad Beam options {' '.join(beam_args or [])}: {text}") from None


@contextlib.contextmanager
def own_tempdir() -> Iterator[str]:
    """Run a job with Python's temporary directory (and TMPDIR, for the processes it starts)
    inside a fresh folder, removed afterwards: the DirectRunner leaves beam-temp-*,
    beam-requirements-cache and tmp* folders behind in the temporary directory otherwise."""
    import os
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="transfer-pipeline-beam-")
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


def quiet_beam() -> None:
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("apache_beam").setLevel(logging.WARNING)


def run_pipeline(p: beam.Pipeline, namespaces: Iterable[str]) -> dict[str, int]:
    """Run to completion; returns the counters of `namespaces` as {"<namespace>.<name>": n}
    (committed where the runner has them). A failure is one PipelineError line."""
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:
        log.debug("Beam pipeline failed", exc_info=True)
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise PipelineError(f"Beam pipeline failed: {lines[-1] if lines else e!r}") from None
    counters: dict[str, int] = {}
    for namespace in namespaces:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
        for c in query["counters"]:
            value = c.committed if c.committed is not None else c.attempted
            key = f"{namespace}.{c.key.metric.name}"
            counters[key] = counters.get(key, 0) + int(value or 0)
    return dict(sorted(counters.items()))


class WriteJson(beam.DoFn):
    """Writes each element (one, from a global combine) as JSON to `path`, atomically; a retried
    bundle rewrites the same file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def process(self, element: Any) -> Iterator[str]:
        fsutil.write_json(self.path, element)
        yield self.path


def read_json_result(path: str, what: str) -> Any:
    """A result a pipeline wrote with WriteJson; removes the file."""
    if not fsutil.exists(path):
        raise PipelineError(f"the Beam job wrote no {what} ({path} is missing)")
    value = fsutil.read_json(path, what)
    fsutil.gfile().remove(path)
    return value
