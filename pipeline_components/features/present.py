"""FeatureGen's line in the run table and its section of report.html."""

from __future__ import annotations

from pipeline_components.core.reporting import code, key_values, number, pairs, result, section


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def summary(entry: dict) -> str:
    r = result(entry)
    if "counts" not in r:
        return ""
    shape = "x".join(str(d) for d in r.get("shape", []))
    return (
        f"{pairs(r['counts'])} images' {r.get('backbone')} features {shape} {r.get('dtype')}"
        f", {_size(r.get('bytes'))}"
    )


def report_html(entry: dict, record: dict) -> str:
    r = result(entry)
    if "counts" not in r:
        return ""
    rows = [
        ("backbone", r.get("backbone")),
        ("weights", r.get("weights")),
        ("image size", "x".join(str(d) for d in r.get("image_size") or [])),
        ("images", pairs(r.get("counts"))),
        ("features per image", "x".join(str(d) for d in r.get("shape", []))),
        ("stored as", r.get("dtype")),
        ("files", r.get("files")),
        ("size", _size(r.get("bytes"))),
        ("backbone pass, seconds", number(r.get("seconds"), 1)),
        ("images/s", number(r.get("images_per_sec"), 1)),
        ("fingerprint", code(str(r.get("fingerprint", ""))[:16])),
    ]
    if entry.get("cached"):
        rows.append(("reused from run", entry.get("cached_from_run")))
    return section("Backbone features", key_values(rows))
