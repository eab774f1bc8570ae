"""What a run's metrics need from earlier runs, read from durable state every time.

A Pushgateway group is replaced whole by each push, and a run that fails early knows nothing of
the last push, so the values that must survive a failed run are never carried in memory or in
the gateway: they are recomputed at each publish from

- the run records under `<pipeline_root>/runs/` (`run.json`, or `steps/<Component>.json` for a
  run made of separate tasks: Kubeflow Pipelines), the newest `monitoring.history_runs` of them;
- the version registry `<serving_dir>/_versions/<model_name>.json` (pushes, their time, version,
  run id and accuracy);
- lineage (core/lineage.py): the fingerprint of the Examples an execution consumed.

Components are found through the contract (the producer of ModelBlessing is the gate, the
producer of Model the trainer, consumers of Examples record the data's fingerprint), never by
name.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from pipeline_components.core import artifacts, fsutil, lineage, registry
from pipeline_components.core.artifacts import ArtifactType

log = logging.getLogger(__name__)

DONE = ("completed", "cached", "skipped")  # a step that will not run again in its run


def timestamp(text: Any) -> float | None:
    """Unix seconds of an ISO time written by the runner (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def producer(artifact_type: ArtifactType) -> str | None:
    """The name of the registered component that produces this artifact type."""
    for component in registry.components():
        if any(t.name == artifact_type.name for t in component.outputs.values()):
            return component.name
    return None


# ------------------------------------------------------------------------------ run records


def merge_steps(run_id: str, steps: Iterable[dict]) -> dict:
    """One run record from the per-task records of a run made of separate tasks: every
    component's entry, every record field, the earliest start and the latest finish, and a
    status: failed when a step failed, completed when every registered component has a step
    that will not run again, else running."""
    record: dict[str, Any] = {"run_id": run_id, "components": {}, "steps": True}
    started, finished, failed = [], [], []
    for step in steps:
        for key, value in step.items():
            if key == "components":
                record["components"].update(value or {})
            elif key not in ("status", "started", "finished", "run_id", "component"):
                record.setdefault(key, value)
        started += [step["started"]] if step.get("started") else []
        finished += [step["finished"]] if step.get("finished") else []
        if step.get("status") == "failed":
            failed.append(step.get("component") or "")
    entries = record["components"]
    names = [c.name for c in registry.pipeline_order()]
    if failed:
        record["status"] = "failed"
        record["error"] = f"{failed[0]} failed"
    elif all((entries.get(n) or {}).get("status") in DONE for n in names):
        record["status"] = "completed"
    else:
        record["status"] = "running"
    record["started"] = min(started, key=lambda t: timestamp(t) or 0.0) if started else None
    record["finished"] = max(finished, key=lambda t: timestamp(t) or 0.0) if finished else None
    return record


def read_run(pipeline_root: str, run_id: str) -> dict | None:
    """A run's record (run.json, or its steps merged); None when there is none."""
    run_dir = artifacts.run_dir(pipeline_root, run_id)
    path = fsutil.join(run_dir, artifacts.RUN_RECORD)
    try:
        if fsutil.exists(path):
            return dict(fsutil.read_json(path, "run record"))
        steps_dir = fsutil.join(run_dir, artifacts.STEPS_DIR)
        if not fsutil.isdir(steps_dir):
            return None
        steps = [
            fsutil.read_json(fsutil.join(steps_dir, name), "step record")
            for name in sorted(fsutil.listdir(steps_dir))
            if name.endswith(".json")
        ]
    except Exception as e:  # one unreadable record must not hide the others
        log.warning("monitoring: skipping run %s: %s", run_id, e)
        return None
    return merge_steps(run_id, steps) if steps else None


def _modified(path: str) -> float:
    try:
        return float(fsutil.gfile().stat(path).mtime_nsec) / 1e9
    except Exception:
        return 0.0


def recent_runs(pipeline_root: str, limit: int) -> list[dict]:
    """The newest `limit` run records, newest first (by start time; by the record file's
    modification time to choose which to read)."""
    runs_dir = fsutil.join(pipeline_root, artifacts.RUNS_DIR)
    if not fsutil.isdir(runs_dir):
        return []
    candidates = []
    for name in fsutil.listdir(runs_dir):
        run_id = name.rstrip("/")
        run_dir = artifacts.run_dir(pipeline_root, run_id)
        record = fsutil.join(run_dir, artifacts.RUN_RECORD)
        where = record if fsutil.exists(record) else fsutil.join(run_dir, artifacts.STEPS_DIR)
        candidates.append((_modified(where), run_id))
    candidates.sort(reverse=True)
    records = [r for _, run_id in candidates[:limit] if (r := read_run(pipeline_root, run_id))]
    records.sort(key=lambda r: timestamp(r.get("started")) or 0.0, reverse=True)
    return records


# ------------------------------------------------------------------------------ the values


def examples_fingerprint(record: dict) -> str | None:
    """The fingerprint of the Examples a run's components consumed (the data it trained on)."""
    entries = record.get("components") or {}
    for component in registry.pipeline_order():
        entry = entries.get(component.name)
        if entry and entry.get("inputs"):
            found = lineage.input_fingerprint(entry, component, artifacts.EXAMPLES)
            if found:
                return found
    return None


def trained_on(record: dict) -> str | None:
    """The fingerprint of the Examples the run's Model was trained on."""
    name = producer(artifacts.MODEL)
    entry = (record.get("components") or {}).get(name or "")
    if not name or not entry or not entry.get("inputs"):
        return None
    return lineage.input_fingerprint(entry, registry.get(name), artifacts.EXAMPLES)


def gate_verdict(record: dict) -> bool | None:
    """Whether the run's gate (the producer of ModelBlessing) blessed its model; None when the
    gate gave no verdict in this run (it did not run, or failed)."""
    name = producer(artifacts.MODEL_BLESSING)
    entry = (record.get("components") or {}).get(name or "")
    if not entry or entry.get("status") not in ("completed", "cached"):
        return None
    blessed = (entry.get("result") or {}).get("blessed")
    return blessed if isinstance(blessed, bool) else None


@dataclasses.dataclass
class LastPush:
    at: float
    version: int
    run_id: str | None
    accuracy: float | None


def last_push(serving_dir: str, model_name: str) -> LastPush | None:
    """The newest push in the model's version registry, with that version's accuracy."""
    path = artifacts.version_registry_path(serving_dir, model_name)
    try:
        if not fsutil.exists(path):
            return None
        registry_data = fsutil.read_json(path, "version registry")
    except Exception as e:
        log.warning("monitoring: cannot read %s: %s", path, e)
        return None
    pushes = [
        e
        for e in registry_data.get("events") or []
        if e.get("action") == "push" and timestamp(e.get("at")) is not None
    ]
    if not pushes:
        return None
    newest = max(pushes, key=lambda e: timestamp(e["at"]) or 0.0)
    version = int(newest["version"])
    entry = (registry_data.get("versions") or {}).get(str(version)) or {}
    accuracy = entry.get("accuracy")
    return LastPush(
        at=timestamp(newest["at"]) or 0.0,
        version=version,
        run_id=newest.get("run_id") or entry.get("run_id"),
        accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
    )


@dataclasses.dataclass
class History:
    """The values kept across runs (None: unknown, the metric is left out)."""

    last_success: float | None = None
    first_run: float | None = None
    refusals_in_a_row: int = 0
    last_push: LastPush | None = None
    data_changed_since_push: bool | None = None
    runs_read: int = 0


def history(pipeline_root: str, serving_dir: str, model_name: str, limit: int) -> History:
    runs = recent_runs(pipeline_root, limit)
    found = History(runs_read=len(runs))
    starts = [t for r in runs if (t := timestamp(r.get("started"))) is not None]
    found.first_run = min(starts) if starts else None
    for record in runs:  # newest first
        if record.get("status") == "completed":
            found.last_success = timestamp(record.get("finished"))
            break
    for record in runs:
        verdict = gate_verdict(record)
        if verdict is True:
            break
        if verdict is False:
            found.refusals_in_a_row += 1
    found.last_push = last_push(serving_dir, model_name)
    newest_data = next((fp for r in runs if (fp := examples_fingerprint(r))), None)
    if found.last_push is not None and found.last_push.run_id and newest_data:
        pushed_run = read_run(pipeline_root, found.last_push.run_id)
        pushed_data = trained_on(pushed_run) if pushed_run else None
        if pushed_data:
            found.data_changed_since_push = pushed_data != newest_data
    return found
