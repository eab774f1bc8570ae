"""The one exception type users see: a one-line message naming what is at fault."""


class PipelineError(Exception):
    """Bad input or a failed precondition. The CLI prints `error: <message>` and exits non-zero.

    The message must be one line and name the file, folder, field or request at fault.
    """

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line
