"""`transfer-pipeline-predict` (this package) and `transfer-pipeline predict` (the project's CLI):
the same flags, the same answers.

    transfer-pipeline-predict --server http://localhost:8501 --model-name cats_dogs photos/
    transfer-pipeline-predict --server localhost:8500 --model-name cats_dogs 'a/*.jpg' \
        --output-format csv

Old spellings keep working for one release, each with one line on stderr naming the new one
(DEPRECATED: the project's `predict` rows of pipeline_components/core/commandline.py's table,
which this package cannot import; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .client import PredictionClient, Result
from .common import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_SIGNATURE,
    ClientError,
    PredictionFailure,
)
from .files import expand_inputs
from .output import FORMATS, render

PROG = "transfer-pipeline-predict"
# (old, new, an example of the old spelling as typed)
DEPRECATED = (
    ("--format", "--output-format", ("--format", "csv")),
    ("--batch-size", "--max-batch-size", ("--batch-size", "8")),
)


def deprecation_line(prog: str, old: str, new: str) -> str:
    return f"{prog}: {old} is deprecated and goes in the next release: use {new}"


def _announced(line: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse `type=` of an old spelling: its value as the new flag's, and its line once."""

    def parse(text: str) -> Any:
        print(line, file=sys.stderr, flush=True)
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid int value"
    return parse


def _add_deprecated(p: argparse.ArgumentParser) -> None:
    """The old spellings, hidden from --help, parsed into the new flags' destinations."""
    actions = {o: a for a in p._actions for o in a.option_strings}
    for old, new, _ in DEPRECATED:
        action = actions[new]
        line = deprecation_line(p.prog, old, new)
        convert = action.type if callable(action.type) else str
        p.add_argument(
            old,
            dest=action.dest,
            type=_announced(line, convert),
            choices=action.choices,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Classify images through TF Serving: gRPC (--server HOST:PORT) or its REST "
        "API (--server http://HOST:PORT).",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (their images, recursively) or quoted globs",
    )
    p.add_argument(
        "--server",
        required=True,
        help="HOST:PORT for gRPC (e.g. localhost:8500), http(s)://HOST:PORT for REST",
    )
    p.add_argument("--model-name", required=True)
    p.add_argument("--signature-name", default=DEFAULT_SIGNATURE)
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--version", type=int, help="ask for this model version")
    pin.add_argument(
        "--version-label", help="ask for the version with this label (e.g. stable, canary)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    p.add_argument("--labels", help="labels.txt naming the probability columns")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help=f"images per request (default {DEFAULT_MAX_BATCH_SIZE}, the shipped "
        "batching_parameters.txt's max_batch_size)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help="requests in flight at once",
    )
    p.add_argument("--output-format", choices=FORMATS, default=None, help="output (default table)")
    p.add_argument("--json", action="store_true", help="the same as --output-format json")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: when more than one request is needed)",
    )
    p.add_argument("--tls", action="store_true", help="gRPC over TLS (system root certificates)")
    p.add_argument("--root-certificates", help="PEM file of root certificates (implies TLS)")
    _add_deprecated(p)
    return p  # fmt: skip


class ProgressLine:
    """`N/M images` on stderr, at most every half second (a line of its own when not a TTY)."""

    def __init__(self, prog: str, stream: TextIO) -> None:
        self.prog, self.stream, self.shown = prog, stream, 0.0
        self.tty = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.shown < 0.5:
            return
        self.shown = now
        end = "\r" if self.tty and done < total else "\n"
        print(f"{self.prog}: {done}/{total} images", end=end, file=self.stream, flush=True)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    batch = args.max_batch_size or DEFAULT_MAX_BATCH_SIZE
    if batch < 1 or args.max_concurrency < 1:
        raise ClientError("--max-batch-size and --max-concurrency must be >= 1")
    return {
        "signature_name": args.signature_name,
        "version": args.version,
        "version_label": args.version_label,
        "timeout": args.timeout,
        "tls": args.tls,
        "root_certificates": args.root_certificates,
        "labels": args.labels,
        "max_batch_size": batch,
        "max_concurrency": args.max_concurrency,
    }


def run(
    argv: list[str] | None,
    *,
    prog: str = PROG,
    client_class: type[PredictionClient] = PredictionClient,
    expand: Callable[[list[str]], list[str]] = expand_inputs,
    out: TextIO | None = None,
) -> int:
    """Parse, predict, print; 0 when every image got an answer, 1 when some did not (their
    errors are in the output). Raises ClientError (or the client's errors) for the whole run."""
    args = build_parser(prog).parse_args(argv)
    options = _options(args)
    files = expand(args.images)  # every argument checked before anything is sent
    progress = args.progress
    if progress is None:
        progress = len(files) > options["max_batch_size"]
    with client_class(args.server, args.model_name, **options) as client:
        results: list[Result] = client.predict_each(
            files, progress=ProgressLine(prog, sys.stderr) if progress else None
        )
    fmt = "json" if args.json and args.output_format is None else (args.output_format or "table")
    print(render(files, results, fmt), file=out or sys.stdout)
    failed = sum(isinstance(r, PredictionFailure) for r in results)
    if failed:
        print(f"{prog}: {failed} of {len(files)} images failed", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """The console script: errors as one line on stderr, exit status 1."""
    try:
        return run(argv)
    except ClientError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
