"""`transfer-pipeline gc --config pipeline.yaml`: remove what dead runs left behind.

The same collection runs at the start of every `transfer-pipeline run`, once the run holds the
pipeline_root's lock (core/locking.py): a live holder keeps the lock, so taking it proves that
whoever wrote there before is gone, and what it left is garbage nothing will finish. `gc`
takes the lock the same way and so refuses, naming the holder, while a live run has it.

Inside pipeline_root (down to `runs/<id>/steps/`; a serving_dir or data_root inside it is
skipped):
- temporaries: `.<name>.tmp-<8 hex>` and `.<name>.old-<8 hex>` (fsutil.atomic_dir and
  write_atomic siblings: an unfinished output, a half-written record) and
  `<file>.<12 hex>.tmp` (locking's exclusive-create copies) are removed;
- execution records `<Component>/<n>.json`: an empty one (an id claimed by a run that died
  before writing it) is removed; one still `running` whose process is gone is marked `failed`
  with `abandoned: {at, by_run, reason}` (kept: it is lineage). A resumable component's output
  (the Trainer's checkpoints) is kept, and the next run with the same inputs resumes it: the
  runner resumes `running` and `failed` executions alike. Any other component's partial
  output directory is removed: nothing reads or resumes an execution that did not complete;
- run records `runs/<id>/run.json` and KFP step records `runs/<id>/steps/<C>.json` still
  `running` are marked `failed`, with `abandoned` and an error saying so.
A run reads only the newest RECENT records of each component and the newest RECENT runs (what
the runs since the previous one can have left); `gc` reads them all.
Outside it, each component's `recover(pipeline)`: the Pusher finishes or rolls back an
interrupted push in the serving directory (pusher/journal.py).

What it did is reported: a log line and `cleanup` in the new run's run.json (`removed` paths with
their bytes, `bytes_freed`, `abandoned` records, `serving` repairs); `gc` prints it.
Processes a dead run started do not need collecting: they died with it (core/children.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from pipeline_components.core import artifacts, commandline, fsutil, locking, registry
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration.executions import now, owner_alive

log = logging.getLogger(__name__)

LOCK_TEMPORARY = re.compile(r".+\.[0-9a-f]{12}\.tmp")  # core/locking.py's _LocalStore copies
DEPTH = 4  # <root>/runs/<id>/steps/<file>: the deepest place a temporary is written
RECORD = re.compile(r"(\d+)\.json")
RECENT = 20  # records per component (and runs) a run reads at its start; `gc` reads all


def collect(
    cfg: PipelineConfig, run_id: str | None = None, recent: int | None = None
) -> dict[str, Any]:
    """Remove and close what dead runs left in cfg's pipeline_root and serving_dir; call it
    holding the root's lock. `run_id`: the run collecting (its own records are left alone);
    `recent`: read only the newest that many records of each component and runs (a run
    collects at its start what the runs since the previous one left), None: all (`gc`)."""
    root = cfg.pipeline_root
    report: dict[str, Any] = {"removed": [], "bytes_freed": 0, "abandoned": [], "serving": []}
    if fsutil.isdir(root):
        by = run_id or "transfer-pipeline gc"
        skip = _skipped(cfg)
        report["abandoned"] += _close_records(root, by, report["removed"], skip, recent)
        report["abandoned"] += _close_run_records(root, run_id, by, recent)
        for path in _temporaries(root, DEPTH, _skipped(cfg)):
            _remove(path, report["removed"])
        report["bytes_freed"] = sum(item["bytes"] for item in report["removed"])
    for component in registry.components():
        report["serving"] += component.recover(cfg)
    return report


def found_anything(report: dict[str, Any]) -> bool:
    return bool(report["removed"] or report["abandoned"] or report["serving"])


def describe(report: dict[str, Any]) -> list[str]:
    """Lines saying what `collect` did."""
    lines = [f"removed {r['path']} ({r['bytes']} bytes)" for r in report["removed"]]
    for a in report["abandoned"]:
        kept = "; kept for the next run to resume" if a.get("kept_for_resume") else ""
        lines.append(f"marked {a['record']} failed (abandoned: {a['reason']}){kept}")
    lines += [f"serving: {s['text']}" for s in report["serving"]]
    freed = report["bytes_freed"]
    lines.append(
        f"cleanup: removed {len(report['removed'])} path(s), {freed} bytes "
        f"({freed / 1e6:.1f} MB) freed; closed {len(report['abandoned'])} record(s) of dead "
        f"runs; {len(report['serving'])} serving repair(s)"
    )
    return lines


# ------------------------------------------------------------------------------ pieces


def _skipped(cfg: PipelineConfig) -> set[str]:
    """Folders under the root that are not the pipeline's to collect."""
    return {_norm(p) for p in (cfg.serving_dir, cfg.data_root) if p}


def _norm(path: str) -> str:
    return str(path).rstrip("/") if fsutil.is_remote(path) else os.path.abspath(path)


def _temporaries(folder: str, depth: int, skip: set[str]) -> Iterator[str]:
    for name in fsutil.listdir(folder):
        path = fsutil.join(folder, name)
        if _norm(path) in skip or name.startswith(f"{artifacts.LOCK_FILE}."):
            continue  # the lock we hold renews through such copies
        if fsutil.TEMPORARY.fullmatch(name) or LOCK_TEMPORARY.fullmatch(name):
            yield path
        elif depth > 1 and fsutil.isdir(path):
            yield from _temporaries(path, depth - 1, skip)


def _remove(path: str, removed: list[dict]) -> None:
    size = fsutil.tree_bytes(path)
    fsutil.rmtree(path)
    removed.append({"path": path, "bytes": size})
    log.info("gc: removed %s (%d bytes)", path, size)


def _abandoned(by: str, reason: str) -> dict:
    return {"at": now(), "by_run": by, "reason": reason}


def _newest(names: list[str], recent: int | None) -> list[str]:
    return names if recent is None else names[-recent:]


def _close_records(
    root: str, by: str, removed: list[dict], skip: set[str], recent: int | None
) -> list[dict]:
    """Execution records of dead runs: see the module docstring."""
    closed = []
    for component in fsutil.listdir(root):
        folder = fsutil.join(root, component)
        if component == artifacts.RUNS_DIR or _norm(folder) in skip or not fsutil.isdir(folder):
            continue
        try:
            resumable = registry.get(component).resumable
        except KeyError:  # a component no longer registered: nothing resumes it
            resumable = False
        records = [n for n in fsutil.listdir(folder) if RECORD.fullmatch(n)]
        for name in _newest(sorted(records, key=lambda n: int(n[:-5])), recent):
            path = fsutil.join(folder, name)
            closed += _close_record(path, component, resumable, by, removed)
    return closed


def _close_record(
    path: str, component: str, resumable: bool, by: str, removed: list[dict]
) -> list[dict]:
    try:
        rec = fsutil.read_json(path, "execution record")
    except PipelineError as e:
        log.warning("gc: %s", e)
        return []
    if rec == {}:  # claimed, never written
        _remove(path, removed)
        return []
    if not isinstance(rec, dict) or rec.get("status") != "running" or owner_alive(rec):
        return []
    reason = "its run died while it was running"
    rec.update(status="failed", error=f"abandoned: {reason}", abandoned=_abandoned(by, reason))
    output = rec.get("output_dir")
    if not resumable and output and fsutil.exists(output):
        _remove(output, removed)  # partial: nothing reads or resumes it
    fsutil.write_json(path, rec)
    log.warning("gc: %s execution %s was left running by a dead run", component, path)
    return [
        {
            "record": path,
            "component": component,
            "execution_id": rec.get("execution_id"),
            "reason": reason,
            "kept_for_resume": resumable,
        }
    ]


def _close_run_records(root: str, run_id: str | None, by: str, recent: int | None) -> list[dict]:
    runs = fsutil.join(root, artifacts.RUNS_DIR)
    if not fsutil.isdir(runs):
        return []
    closed = []
    for rid in _newest(fsutil.listdir(runs), recent):  # run ids start with their time
        if rid == run_id:
            continue
        run_dir = artifacts.run_dir(root, rid)
        steps = fsutil.join(run_dir, artifacts.STEPS_DIR)
        paths = [fsutil.join(run_dir, artifacts.RUN_RECORD)]
        if fsutil.isdir(steps):
            paths += [fsutil.join(steps, n) for n in fsutil.listdir(steps) if n.endswith(".json")]
        for path in paths:
            if _close_run_record(path, by):
                reason = "its process died while it was running"
                closed.append({"record": path, "run_id": rid, "reason": reason})
    return closed


def _close_run_record(path: str, by: str) -> bool:
    if not fsutil.exists(path):
        return False
    try:
        rec = fsutil.read_json(path, "run record")
    except PipelineError as e:
        log.warning("gc: %s", e)
        return False
    if not isinstance(rec, dict) or rec.get("status") != "running":
        return False
    reason = "its process died while it was running"
    rec.update(status="failed", error=f"abandoned: {reason}", abandoned=_abandoned(by, reason))
    fsutil.write_json(path, rec)
    return True


# ---------------------------------------------------------------------------- command


def parser() -> argparse.ArgumentParser:
    p = commandline.new_parser(
        "gc",
        "Remove what dead runs left in pipeline_root (temporary outputs, records left running) "
        "and finish or roll back an interrupted push in serving_dir. Refused while a live run "
        "holds the pipeline_root. Every run does this when it starts.",
    )
    commandline.add_config_arguments(p, None, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    cfg, _ = commandline.load_config(args.config, args.overrides, None)
    if not fsutil.isdir(cfg.pipeline_root):
        raise PipelineError(f"pipeline_root {cfg.pipeline_root} does not exist: nothing to collect")
    with locking.hold(cfg.pipeline_root, None, "transfer-pipeline gc"):
        report = collect(cfg)
    for line in describe(report):
        print(line)
    return 0
