"""How every command logs: `--quiet` and `--log-format text|json` (part of the generated grammar,
core/commandline.py), and progress events.

A progress event is an INFO record with structured fields (`progress(log, message, event=...,
**fields)`): the runner's `[7/11] Trainer started` / `finished in 42.1s`, the Trainer's epochs and
steps (a Beam job's progress line, core/beam.py, is a plain INFO record). In text format it is
one line, `HH:MM:SS [7/11] Trainer started`; with `--log-format json` every record is one JSON
object per line (`time`, `level`, `logger`, `message`, and a progress event's fields), for
schedulers and log collectors. `--quiet` keeps warnings and errors only (what a command prints on
stdout, its summary table, stays).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
FIELDS = "progress_fields"  # the LogRecord attribute a progress event's fields travel in
RESERVED = ("time", "level", "logger", "message")
QUIET_HELP = "log warnings and errors only (no progress lines); printed results stay"
FORMAT_HELP = (
    "text: one line per record (default); json: one JSON object per line with time, level, "
    "logger, message and a progress event's fields, for schedulers"
)


def progress(log: logging.Logger, message: str, *, event: str, **fields: Any) -> None:
    """Log a progress event: `message` for people, `event` and `fields` for machines."""
    clash = set(fields) & set(RESERVED)
    if clash:
        raise ValueError(f"progress field names {sorted(clash)} are reserved")
    log.info("%s", message, extra={FIELDS: {"event": event, **fields}})


class TextFormatter(logging.Formatter):
    """The usual `time LEVEL logger: message`; a progress event as `time message` alone."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, FIELDS, None) is not None and record.levelno == logging.INFO:
            return f"{self.formatTime(record, DATE_FORMAT)} {record.getMessage()}"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, the progress
    event's fields, and `exception` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _drop_import_noise(record: logging.LogRecord) -> bool:
    # Beam says at import time that optional GCP clients are missing; irrelevant off GCP.
    return not (
        str(record.msg).startswith("apitools not found")
        or (record.name == "apache_beam.io.gcp.bigquery" and record.levelno <= logging.INFO)
    )


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written (not when the handler
    was made: a stream replaced since, by a test's capture or a reconfigure, stays followed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(quiet: bool = False, log_format: str = "text") -> None:
    """The root logger of a command: one handler on stderr, in `log_format`, at INFO (or
    $LOGLEVEL), at WARNING under `quiet`. Called again, it replaces the handler it added before.
    Where logging is configured already by whoever runs the command in-process (a program
    embedding it, pytest), it changes nothing, as logging.basicConfig would not."""
    root = logging.getLogger()
    if any(not isinstance(h, StderrHandler) for h in root.handlers):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_drop_import_noise)
    root.addHandler(handler)
    root.setLevel("WARNING" if quiet else os.environ.get("LOGLEVEL", "INFO"))
    logging.captureWarnings(True)  # Python warnings through the same handler and format


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--quiet` and `--log-format`, as every command of the generated grammar takes them."""
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("--log-format", choices=FORMATS, default="text", help=FORMAT_HELP)


def options(argv: Sequence[str]) -> tuple[bool, str]:
    """(quiet, log format) from a command line, before its own parser reads it: logging is set
    up before the command runs. Only what comes before `--` (Beam's options) counts; a bad
    value is left to the command's parser to refuse."""
    argv = list(argv)
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--log-format", default="text")
    args, _ = p.parse_known_args(own)
    return args.quiet, args.log_format if args.log_format in FORMATS else "text"


def last_line(text: str, log_format: str) -> None:
    """A command's closing error line on stderr: as it is, or as a JSON record (level ERROR)
    under `--log-format json`, so that every line a scheduler reads parses."""
    if log_format == "json":
        logging.getLogger("transfer_pipeline").error("%s", text)
    else:
        print(text, file=sys.stderr)
