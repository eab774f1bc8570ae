"""`runs/<run_id>/report.html`: one self-contained page a person opens after a scheduled run.

Gate decision and pushed version first, then the components' alerts (`report_alerts`: data
anomalies, failures first), then each component's own section (`report_html`: the test metrics,
confusion matrix and misclassified examples, the training curves, the data statistics, ...) and
the lineage of every component. Images are inlined
(base64), so the file can be mailed or attached to a ticket as is.
"""

from __future__ import annotations

from pipeline_components.core import fsutil, registry
from pipeline_components.core.reporting import e as _e
from pipeline_components.core.reporting import fmt as _fmt
from pipeline_components.orchestration.summary import component_names, has_result, result_text

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#1d2430;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid
#dde3ea;padding-bottom:.2em}.muted{color:#667}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #dde3ea;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f3f6f9}.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.9em 1.1em;border-radius:6px;margin:1em 0;font-size:1.05em}
.ok{background:#e5f6ea;border:1px solid #8fd19e}.no{background:#fdf1e4;border:1px solid #f1b879}
.fail{background:#fde8e8;border:1px solid #f19a9a}.imgs{display:flex;flex-wrap:wrap;gap:1em}
.imgs figure{margin:0}.imgs img{max-width:520px;border:1px solid #dde3ea}
figcaption{color:#667;font-size:.9em}code{background:#f3f6f9;padding:0 .25em;border-radius:3px}
.alerts{margin:.4em 0 0;padding-left:1.2em}
"""


def _banner(record: dict) -> str:
    push = record.get("push") or {}
    blessing = record.get("blessing") or {}
    if record.get("status") == "failed":
        return f'<div class="banner fail"><b>Run failed.</b> {_e(record.get("error", ""))}</div>'
    if push.get("pushed"):
        return (
            f'<div class="banner ok"><b>Pushed version {_e(push["version"])}</b> to '
            f"<code>{_e(push['path'])}</code>. "
            + _e("; ".join(blessing.get("reasons", [])))
            + "</div>"
        )
    reason = push.get("reason") or "; ".join(blessing.get("reasons", [])) or "not pushed"
    return f'<div class="banner no"><b>Not pushed.</b> {_e(reason)}</div>'


def _alerts(record: dict) -> str:
    """Every component's `report_alerts` (data anomalies, ...), failures first, at the top."""
    alerts: list[tuple[str, str, str]] = []
    for component in registry.pipeline_order():
        entry = record["components"].get(component.name)
        if entry and has_result(entry):
            try:
                found = component.report_alerts(entry)
                alerts += [(level, component.name, text) for level, text in found]
            except Exception as e:  # a broken hook must not cost the whole page
                alerts.append(("warn", component.name, f"alerts unavailable: {e}"))
    if not alerts:
        return ""
    alerts.sort(key=lambda a: a[0] != "fail")
    items = "".join(
        f"<li><b>{_e(level.upper())}</b> {_e(name)}: {_e(text)}</li>"
        for level, name, text in alerts
    )
    css = "fail" if any(level == "fail" for level, _, _ in alerts) else "no"
    return f'<div class="banner {css}"><b>Alerts</b><ul class=alerts>{items}</ul></div>'


def _component_sections(record: dict) -> str:
    """Each component's own section, the last in the pipeline first (the evaluation a reader
    looks for comes before the training and the data behind it)."""
    html_parts = []
    for component in reversed(registry.pipeline_order()):
        entry = record["components"].get(component.name)
        if entry and has_result(entry):
            try:
                html_parts.append(component.report_html(entry, record))
            except Exception as e:  # one broken section must not cost the whole page
                html_parts.append(
                    f"<h2>{_e(component.name)}</h2><p class=muted>section unavailable: "
                    f"{_e(type(e).__name__)}: {_e(e)}</p>"
                )
    return "".join(html_parts)


def _lineage_section(record: dict) -> str:
    rows = ""
    for name in component_names(record):
        c = record["components"].get(name)
        if not c:
            rows += f"<tr><td>{name}</td><td>not run</td>" + "<td></td>" * 4 + "</tr>"
            continue
        cached = f" (run {c['cached_from_run']})" if c.get("cached_from_run") else ""
        rows += (
            f"<tr><td>{name}</td><td>{_e(c['status'])}{_e(cached)}</td>"
            f"<td class=num>{_fmt(c.get('duration_s'), 1)}</td>"
            f"<td><code>{_e(c.get('output_dir', ''))}</code></td>"
            f"<td><code>{_e(str(c.get('code_fingerprint') or '')[:12])}</code></td>"
            f"<td>{_e(result_text(name, c))}</td></tr>"
        )
    return (
        "<h2>Components</h2><table><tr><th>component</th><th>status</th><th>seconds</th>"
        f"<th>output</th><th>code</th><th>result</th></tr>{rows}</table>"
    )


def render(record: dict) -> str:
    title = f"{record.get('pipeline_name', 'pipeline')} — run {record['run_id']}"
    meta = (
        f"status <b>{_e(record['status'])}</b> · started {_e(record.get('started'))} · "
        f"finished {_e(record.get('finished'))} · code {_e(record.get('code_version'))}"
        f" · code fingerprint <code>{_e(str(record.get('code_fingerprint') or '')[:12])}</code>"
    )
    body = _banner(record) + _alerts(record) + _component_sections(record)
    body += _lineage_section(record)
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class=muted>{meta}</p>"
        f"{body}</body></html>\n"
    )


def write_report(record: dict, path: str) -> str:
    fsutil.write_atomic(path, render(record))
    return path
