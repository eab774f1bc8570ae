"""Every version of a served model, its TF Serving labels, and the commands that change them.

    transfer-pipeline versions --serving-dir S --model-name M [--json]
    transfer-pipeline rollback --serving-dir S --model-name M [--version N] [--reason TEXT]
    transfer-pipeline promote  --serving-dir S --model-name M [--version N]

The registry itself (its data, persistence and models.config) is pusher/version_registry.py;
this module takes its lock, which first repairs a push a dead process left (pusher/journal.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator

from pipeline_components.core import artifacts, commandline, fsutil, locking
from pipeline_components.pusher import journal
from pipeline_components.pusher.version_registry import VersionRegistry


class ModelVersions(VersionRegistry):
    """A model's version registry (pusher/version_registry.py) and the one way to change it:
    `locked()`."""

    @contextlib.contextmanager
    def locked(
        self, command: str, run_id: str | None = None, wait_s: float = 600.0
    ) -> Iterator[ModelVersions]:
        """Hold this model's registry lock (pushers, rollbacks and promotions of one model
        wait for each other), loaded on entry and repaired: a push a dead process left
        unfinished is finished or rolled back first (pusher/journal.py; what was done is in
        `self.repaired`)."""
        what = f"the versions of model {self.model_name} in {self.serving_dir}"
        with locking.hold_file(self.path + ".lock", what, run_id, command, wait_s=wait_s):
            self.load()
            self.repaired = journal.repair(self)
            yield self


# ------------------------------------------------------------------------------ commands


COMMANDS = {
    "versions": "List every pushed version of a model: state (served, rolled_back, removed, "
    "abandoned), labels, accuracy, push time, fingerprint. A push a dead process left "
    "unfinished is finished or rolled back first, and said so.",
    "rollback": "Serve an older version as stable and move the newer ones aside (not deleted); "
    "the Pusher will not push their models again.",
    "promote": "Move the `stable` label to a version (default: the canary).",
}
VERSION_HELP = {
    "rollback": "the version to serve (default: the one before the newest)",
    "promote": "the version to make stable (default: the canary)",
}


def parser(command: str) -> argparse.ArgumentParser:
    """The command line of `versions`, `rollback` or `promote` (core/commandline.py): the model
    by --serving-dir and --model-name, or --config / KEY=VALUE."""
    p = commandline.new_parser(command, COMMANDS[command])
    commandline.add_served_model_arguments(p)
    if command in VERSION_HELP:
        p.add_argument("--version", type=int, metavar="N", help=VERSION_HELP[command])
    if command == "rollback":
        p.add_argument("--reason", default="", help="recorded in the registry")
    if command == "versions":
        p.add_argument("--json", action="store_true", help="print JSON")
    return p


def format_rows(rows: list[dict]) -> str:
    header = ("version", "state", "labels", "accuracy", "pushed", "fingerprint")
    table = [header] + [
        (
            str(r["version"]),
            r["state"] or "",
            ",".join(r["labels"]) or "-",
            "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
            r["pushed_at"] or "-",
            (r["fingerprint"] or "")[:12],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def versions_main(argv: list[str] | None = None) -> int:
    args = commandline.parse_served_model(parser("versions"), argv)
    versions, note = _repaired_for_listing(ModelVersions(args.serving_dir, args.model_name))
    versions.sync()  # what the disk says now, not saved
    rows = versions.rows()
    pending = versions.pending()
    if args.json:
        out = {"labels": versions.labels(), "versions": rows, "repaired": versions.repaired}
        print(json.dumps({**out, "pending": pending, "note": note}, indent=2))
        return 0
    print_repairs(versions)
    if note:
        print(note, file=sys.stderr)
    if pending:
        run = pending.get("run_id") or "-"
        print(f"a push of version {pending['version']} is in progress (run {run})")
    if not rows:
        print(f"no versions of model {args.model_name} in {args.serving_dir}")
    else:
        print(format_rows(rows))
    return 0


def _repaired_for_listing(versions: ModelVersions) -> tuple[ModelVersions, str | None]:
    """The registry, repaired under its lock when it can be taken within seconds; otherwise
    (a live push holds it, or the serving_dir is read-only) as it is, with a note why."""
    if not (versions.exists() or fsutil.isdir(versions.base_path)):
        return versions, None
    try:
        with versions.locked("transfer-pipeline versions", wait_s=5.0):
            return versions, None
    except locking.PipelineLocked as e:
        note = f"not repaired: {e}"
    except OSError as e:
        note = f"not repaired: cannot take the lock {versions.path}.lock: {e.strerror or e}"
    return versions.load(), note


def print_repairs(versions: ModelVersions) -> None:
    """One line per repair `locked()` made (pusher/journal.py)."""
    for item in versions.repaired:
        print(f"model {versions.model_name}: repaired: {journal.describe(item)}")


def rollback_main(argv: list[str] | None = None) -> int:
    args = commandline.parse_served_model(parser("rollback"), argv)
    with ModelVersions(args.serving_dir, args.model_name).locked("transfer-pipeline rollback") as v:
        print_repairs(v)
        result = v.rollback(args.version, args.reason)
    moved = ", ".join(str(m["version"]) for m in result["rolled_back"])
    print(
        f"model {args.model_name}: version {result['to']} is stable; rolled back {moved} "
        f"(moved to {fsutil.join(args.serving_dir, artifacts.ROLLED_BACK_DIR, args.model_name)})"
    )
    return 0


def promote_main(argv: list[str] | None = None) -> int:
    args = commandline.parse_served_model(parser("promote"), argv)
    with ModelVersions(args.serving_dir, args.model_name).locked("transfer-pipeline promote") as v:
        print_repairs(v)
        result = v.promote(args.version)
    print(
        f"model {args.model_name}: version {result['stable']} is stable "
        f"(was {result['previous_stable']}); labels {result['labels']}"
    )
    return 0
