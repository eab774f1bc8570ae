"""The Pusher's line in the run table, its fields of run.json (`push`, `serving`, `contract`)
and its sections of report.html (the serving contract, the served versions)."""

from __future__ import annotations

from typing import Any

from pipeline_components.core.reporting import (
    bullets,
    code,
    e,
    key_values,
    pairs,
    result,
    section,
    table,
)


def summary(entry: dict) -> str:
    r = result(entry)
    labels = pairs(r.get("labels"))
    labels = f" [{labels}]" if labels else ""
    repaired = "".join(f"; {repair_note(x)}" for x in r.get("repaired", []))
    if r.get("pushed"):
        label = r.get("label", "stable")
        return f"pushed version {r['version']} as {label} -> {r['path']}{labels}{repaired}"
    return f"not pushed: {r.get('reason', '')}{labels}{repaired}"


def repair_note(item: dict) -> str:
    """A few words for what the push's repair did (pusher/journal.py says it in full)."""
    if item.get("action") == "finished":
        return f"finished the interrupted push of version {item['version']}"
    if item.get("action") == "rolled_back":
        return f"rolled back the interrupted push of version {item['version']}"
    if item.get("action") == "models_config":
        return "rewrote models.config from the registry"
    return f"removed {len(item.get('removed', []))} leftover(s) of interrupted pushes"


def record_fields(entry: dict) -> dict:
    r = entry.get("result")
    if not r:
        return {}
    fields: dict[str, Any] = {"push": r}
    if "labels" in r:
        keys = ("labels", "served_versions", "rolled_back", "models_config")
        fields["serving"] = {k: r[k] for k in keys}
    if "contract" in r:
        fields["contract"] = r["contract"]
    return fields


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    return _contract_html(r) + _serving_html(r)


def _serving_html(r: dict) -> str:
    if "labels" not in r:
        return ""
    rolled = [
        (
            x["version"],
            x.get("rolled_back_at"),
            code(str(x.get("fingerprint"))[:12]),
            x.get("reason") or "",
        )
        for x in r.get("rolled_back", [])
    ]
    rolled_table = (
        "<p>Rolled back (never pushed again):</p>"
        + table(rolled, ("version", "at", "fingerprint", "reason"), num=(0,))
        if rolled
        else "<p>No version was rolled back.</p>"
    )
    served = ", ".join(map(str, r.get("served_versions", []))) or "none"
    repaired = r.get("repaired_text", [])
    repaired_html = f"<p>Repaired before pushing:</p>{bullets(repaired)}" if repaired else ""
    return section(
        "Serving",
        repaired_html
        + f"<p>served versions: {e(served)}; labels in {code(r.get('models_config', ''))}:</p>"
        + key_values(r["labels"].items(), num=True)
        + rolled_table,
    )


def _contract_html(r: dict) -> str:
    c = r.get("contract")
    if not c:
        return ""
    if c.get("compared_with") is None:
        return section("Serving contract", "<p>No version served yet: nothing to compare.</p>")
    head = f"<p>Compared with served version {e(c['compared_with'])}: "
    if not c.get("differences"):
        return section("Serving contract", head + "labels, signatures and input unchanged.</p>")
    verdict = (
        "<b>changed, pushed on purpose</b> (pusher.allow_contract_change)"
        if c.get("allowed")
        else "<b>changed: not pushed</b>"
    )
    return section("Serving contract", head + f"{verdict}</p>" + bullets(c["differences"]))
