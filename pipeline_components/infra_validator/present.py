"""The InfraValidator's line in the run table and its field of run.json (`infra_blessing`)."""

from __future__ import annotations

from pipeline_components.core.reporting import result, verdict


def summary(entry: dict) -> str:
    r = result(entry)
    return verdict(bool(r.get("blessed")), r.get("reasons", []))


def record_fields(entry: dict) -> dict:
    return {"infra_blessing": entry["result"]} if entry.get("result") else {}
