"""The one exception type users see: a one-line message naming what is at fault."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Bad input or a failed precondition. The CLI prints `error: <message>` and exits non-zero.

    The message must be one line and name the file, folder, field or request at fault.
    `result` (optional, JSON-able) is what a component found before it failed (the
    ExampleValidator's anomalies): the runner records it as the failed entry's `result` in
    run.json, so a failure's details are kept, not only its one line.
    """

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(" ".join(str(message).split()))  # force one line
        self.result = result
