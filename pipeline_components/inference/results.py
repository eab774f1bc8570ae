"""What the Evaluator's and the BulkInferrer's Beam jobs share around RunInference (the jobs
themselves are built and run by core/beam.py): RunInference's counter namespace, and a small
JSON result written from inside a pipeline and read back by the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError

# RunInference's own counters (num_inferences, failed_batches_counter, ...).
RUN_INFERENCE_NAMESPACE = "RunInference"


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
