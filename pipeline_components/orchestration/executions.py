"""Execution records `<pipeline_root>/<Component>/<n>.json`: their ids, their owner and the
lookup of one by cache key. The runner (orchestration/runner.py) writes them, the collector of
what dead runs left (orchestration/gc.py) closes them; both read them through here."""

from __future__ import annotations

import datetime as dt
import os
import re
import socket

from pipeline_components.core import fsutil, locking


def now() -> str:
    """The time records are stamped with: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def execution_ids(component_dir: str) -> list[int]:
    """The ids in use in a component's folder (a record `<n>.json` or an output `<n>/`)."""
    if not fsutil.isdir(component_dir):
        return []
    ids = set()
    for name in fsutil.listdir(component_dir):
        m = re.fullmatch(r"(\d+)(\.json)?", name)
        if m:
            ids.add(int(m.group(1)))
    return sorted(ids)


def record_path(component_dir: str, execution_id: int) -> str:
    return fsutil.join(component_dir, f"{execution_id}.json")


def owner() -> dict:
    """The `owner` of a record this process writes: what owner_alive reads back."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def owner_alive(rec: dict) -> bool:
    """Whether the process that wrote an execution record still runs (same host only; on
    another host the pipeline_root lock already rules out a live writer)."""
    who = rec.get("owner") or {}
    pid = who.get("pid")
    if who.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return pid != os.getpid() and locking.pid_alive(pid)


def find_execution(component_dir: str, key: str, statuses: tuple[str, ...]) -> dict | None:
    """The newest execution record with this cache key and one of these statuses (a running
    one only when its process is gone)."""
    for execution_id in reversed(execution_ids(component_dir)):
        path = record_path(component_dir, execution_id)
        if not fsutil.exists(path):
            continue
        rec = fsutil.read_json(path, "execution record")
        if not rec:  # claimed a moment ago, not written yet
            continue
        complete = rec.get("status") != "completed" or fsutil.exists(rec["output_dir"])
        if rec.get("cache_key") == key and rec.get("status") in statuses and complete:
            if rec.get("status") == "running" and owner_alive(rec):
                continue
            return rec
    return None
