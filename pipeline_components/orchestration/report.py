"""`runs/<run_id>/report.html`: one self-contained page a person opens after a scheduled run.

Gate decision and pushed version first, then the test metrics, confusion matrix, misclassified
examples, training curves, data summary and the lineage of every component. Images are inlined
(base64), so the file can be mailed or attached to a ticket as is.
"""

from __future__ import annotations

import base64
import html

from pipeline_components.core import fsutil

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
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(path: str | None, caption: str) -> str:
    if not path or not fsutil.exists(path):
        return ""
    data = base64.b64encode(fsutil.read_bytes(path)).decode()
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _fmt(v, digits=4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _e(v)


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


def _metrics_section(record: dict) -> str:
    ev = record["components"].get("Evaluator") or {}
    out_dir = ev.get("output_dir")
    if not out_dir or not fsutil.exists(fsutil.join(out_dir, "metrics.json")):
        return ""
    m = fsutil.read_json(fsutil.join(out_dir, "metrics.json"))
    b = record.get("blessing") or {}
    rows = [
        ("accuracy", m.get("accuracy")),
        ("min_accuracy (gate)", b.get("threshold")),
        ("baseline accuracy", b.get("baseline_accuracy")),
        ("loss", m.get("loss")),
        ("ROC AUC", m.get("auc")),
        ("test examples", m.get("num_examples")),
    ]
    summary = "".join(
        f"<tr><th>{_e(k)}</th><td class=num>{_fmt(v)}</td></tr>" for k, v in rows if k
    )
    per_class = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{_fmt(c['precision'], 3)}</td>"
        f"<td class=num>{_fmt(c['recall'], 3)}</td><td class=num>{_fmt(c['f1'], 3)}</td>"
        f"<td class=num>{_e(c['support'])}</td></tr>"
        for name, c in m.get("per_class", {}).items()
    )
    figures = _img(fsutil.join(out_dir, "confusion_matrix.png"), "Confusion matrix (test split)")
    figures += _img(fsutil.join(out_dir, "errors.png"), "Misclassified test images")
    reasons = "".join(f"<li>{_e(r)}</li>" for r in b.get("reasons", []))
    return (
        "<h2>Evaluation (exported SavedModel, raw test bytes)</h2>"
        f"<table>{summary}</table><ul>{reasons}</ul>"
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>"
        f"</tr>{per_class}</table><div class=imgs>{figures}</div>"
    )


def _training_section(record: dict) -> str:
    tr = record["components"].get("Trainer") or {}
    out_dir = tr.get("output_dir")
    if not out_dir:
        return ""
    figures = _img(
        fsutil.join(out_dir, "plots", "accuracy.png"), "Training and validation accuracy"
    )
    figures += _img(fsutil.join(out_dir, "plots", "loss.png"), "Training and validation loss")
    t = record.get("config", {}).get("trainer", {})
    keys = ("backbone", "weights", "image_size", "head", "fine_tune_from", "epochs", "batch_size")
    cfg_rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(t.get(k))}</td></tr>" for k in keys)
    r = tr.get("result") or {}
    facts = {
        "epochs run": r.get("epochs_run"),
        "best epoch": r.get("best_epoch"),
        "cached features": r.get("cached_features"),
        "training images/s": r.get("images_per_sec"),
    }
    fact_rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_fmt(v, 1)}</td></tr>" for k, v in facts.items() if v is not None
    )
    return f"<h2>Training</h2><table>{cfg_rows}{fact_rows}</table><div class=imgs>{figures}</div>"


def _data_section(record: dict) -> str:
    eg = record["components"].get("ExampleGen") or {}
    r = eg.get("result") or {}
    if not r:
        return ""
    splits = "".join(
        f"<tr><td>{_e(s)}</td><td class=num>{_e(n)}</td></tr>" for s, n in r["splits"].items()
    )
    warn = ""
    if r.get("duplicates"):
        warn = (
            f"<p><b>Warning:</b> {_e(r['duplicates'])} identical image(s) appear in more than "
            "one split (train/test leakage); see stats.json.</p>"
        )
    return (
        f"<h2>Data</h2><p>classes: {_e(', '.join(r.get('labels', [])))}; "
        f"skipped files: {_e(r.get('skipped', 0))}</p>"
        f"<table><tr><th>split</th><th>examples</th></tr>{splits}</table>{warn}"
    )


def _lineage_section(record: dict) -> str:
    from pipeline_components.orchestration.runner import COMPONENTS, _result_text

    rows = ""
    for name in COMPONENTS:
        c = record["components"].get(name)
        if not c:
            rows += f"<tr><td>{name}</td><td>not run</td><td></td><td></td><td></td></tr>"
            continue
        cached = f" (run {c['cached_from_run']})" if c.get("cached_from_run") else ""
        rows += (
            f"<tr><td>{name}</td><td>{_e(c['status'])}{_e(cached)}</td>"
            f"<td class=num>{_fmt(c.get('duration_s'), 1)}</td>"
            f"<td><code>{_e(c.get('output_dir', ''))}</code></td>"
            f"<td>{_e(_result_text(name, c))}</td></tr>"
        )
    return (
        "<h2>Components</h2><table><tr><th>component</th><th>status</th><th>seconds</th>"
        f"<th>output</th><th>result</th></tr>{rows}</table>"
    )


def render(record: dict) -> str:
    title = f"{record.get('pipeline_name', 'pipeline')} — run {record['run_id']}"
    meta = (
        f"status <b>{_e(record['status'])}</b> · started {_e(record.get('started'))} · "
        f"finished {_e(record.get('finished'))} · code {_e(record.get('code_version'))}"
    )
    body = (
        _banner(record)
        + _metrics_section(record)
        + _training_section(record)
        + _data_section(record)
        + _lineage_section(record)
    )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class=muted>{meta}</p>"
        f"{body}</body></html>\n"
    )


def write_report(record: dict, path: str) -> str:
    fsutil.write_atomic(path, render(record))
    return path
