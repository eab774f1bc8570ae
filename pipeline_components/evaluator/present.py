"""The Evaluator's line in the run table, its fields of run.json (`blessing`, `metrics`) and its
section of report.html: the verdict, every threshold (value, interval, bound, passed), the
classes, the slices as bars, the confusion matrix, the reliability diagram and the most
confident mistakes with their Grad-CAM heat maps. Read from blessing.json (the entry's result),
metrics.json and analysis.json; an execution from before analysis.json existed shows what it
has. Bounded: at most MAX_ROWS thresholds, classes and mistakes and MAX_SLICE_ROWS slices are
listed (the rest are in blessing.json and analysis.json), figures over
reporting.MAX_INLINE_BYTES are named rather than inlined."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.reporting import (
    Html,
    bar,
    bullets,
    code,
    e,
    figures,
    img,
    key_values,
    number,
    result,
    section,
    table,
)
from pipeline_components.evaluator.vocabulary import METRICS, slice_name

MAX_ROWS = 100
MAX_SLICE_ROWS = 60
# run.json's `metrics`: metrics.json's keys, then the gate's overall metrics (analysis.json;
# precision, recall and F1 as their macro means) and each one's interval
RUN_METRICS = {
    "auc": "auc",
    "auc_pr": "auc_pr",
    "log_loss": "log_loss",
    "ece": "ece",
    "precision": "macro_precision",
    "recall": "macro_recall",
    "f1": "macro_f1",
}


def _read(out_dir: str | None, name: str) -> dict:
    path = fsutil.join(out_dir, name) if out_dir else None
    return fsutil.read_json(path) if path and fsutil.exists(path) else {}


def failed_thresholds(blessing: dict) -> list[dict]:
    return [t for t in blessing.get("thresholds") or [] if t.get("passed") is False]


def summary(entry: dict) -> str:
    r = result(entry)
    verdict = "BLESSED" if r.get("blessed") else "not blessed"
    base = r.get("baseline_accuracy")
    extra = f", baseline {base:.4f}" if base is not None else ""
    if r.get("baseline_comparable") is False:
        extra = ", baseline not comparable (labels differ)"
    lines = r.get("thresholds") or []
    failed = len(failed_thresholds(r))
    gate = f", {failed} of {len(lines)} thresholds failed" if failed else ""
    return f"accuracy {r.get('accuracy', 0):.4f} (min {r.get('threshold')}{extra}){gate} {verdict}"


def record_fields(entry: dict) -> dict:
    """`blessing` (blessing.json: the verdict and one line per threshold) and `metrics`:
    accuracy, loss, auc, num_examples, the gate's overall metrics and their intervals."""
    if not entry.get("result"):
        return {}
    fields: dict[str, Any] = {"blessing": entry["result"]}
    out_dir = entry.get("output_dir")
    m = _read(out_dir, artifacts.METRICS_FILE)
    if not m:
        return fields
    metrics = fields["metrics"] = {k: m.get(k) for k in ("accuracy", "loss", "auc", "num_examples")}
    overall = _read(out_dir, artifacts.ANALYSIS_FILE).get("overall")
    if overall:  # an execution from before analysis.json has metrics.json's four
        intervals = {"accuracy": overall["metrics"]["accuracy"]["interval"]}
        for name, key in RUN_METRICS.items():
            metrics[key] = overall["metrics"][name]["value"]
            intervals[key] = overall["metrics"][name]["interval"]
        recalls = [c["recall"]["value"] for c in overall["per_class"].values()]
        defined = [r for r in recalls if r is not None]
        metrics["min_class_recall"] = min(defined) if defined else None
        metrics["intervals"] = intervals
    return fields


# ------------------------------------------------------------------------------ report.html


def _interval(iv: Sequence[float] | None, signed: bool = False) -> Html:
    if not iv:
        return Html("—")
    f = "{:+.4f}" if signed else "{:.4f}"
    return Html(f"[{f.format(iv[0])}, {f.format(iv[1])}]")


def _subject(line: dict) -> str:
    text = str(line.get("metric"))
    if line.get("class") is not None:
        text += f" of {line['class']}"
    if line.get("slice"):
        text += " on " + slice_name(tuple(line["slice"].items()))
    return text


def _passed(value: bool | None) -> Html:
    if value is None:
        return Html("<span class=muted>not gated</span>")
    return Html("<b>pass</b>" if value else "<b style='color:#b22222'>FAIL</b>")


def _why_not_gated(line: dict) -> str:
    """A line's reason after its subject, for a line that was not gated."""
    if line.get("passed") is not None:
        return ""
    reason = str(line.get("reason", ""))
    return reason.split(": ", 1)[1] if ": " in reason else reason


def _thresholds(blessing: dict) -> str:
    lines = blessing.get("thresholds") or []
    if not lines:
        return ""

    def rank(t: dict) -> int:  # failed first, then not gated, then passed
        return 0 if t.get("passed") is False else 1 if t.get("passed") is None else 2

    rows = []
    for t in sorted(lines, key=rank)[:MAX_ROWS]:
        change = t.get("kind") == "change"
        value = t.get("value")
        pair = ""
        if change and t.get("candidate") is not None and t.get("baseline") is not None:
            pair = f"{t['candidate']:.4f} vs {t['baseline']:.4f}"
        rows.append(
            (
                _passed(t.get("passed")),
                _subject(t),
                t.get("bound", ""),
                Html(f"{value:+.4f}") if change and value is not None else number(value),
                _interval(t.get("interval"), signed=change),
                "yes" if t.get("with_confidence") else "",
                t.get("count"),
                pair,
                code(t.get("origin", "")),
                _why_not_gated(t),
            )
        )
    more = len(lines) - MAX_ROWS
    note = f"<p class=muted>{more} more in blessing.json</p>" if more > 0 else ""
    head = (
        "passed", "threshold", "bound", "value", "95% interval", "with_confidence", "images",
        "candidate vs baseline", "config", "not gated because",
    )  # fmt: skip
    return "<h3>Thresholds</h3>" + table(rows, head, num=(3, 4, 6)) + note


def _classes(m: dict, doc: dict) -> str:
    per_class = doc.get("overall", {}).get("per_class")
    if not per_class:  # an execution from before analysis.json: metrics.json's table
        rows: list[tuple[Any, ...]] = [
            (name, number(c["precision"], 3), number(c["recall"], 3), number(c["f1"], 3),
             c["support"])
            for name, c in list(m.get("per_class", {}).items())[:MAX_ROWS]
        ]  # fmt: skip
        return table(rows, ("class", "precision", "recall", "F1", "support"), num=(1, 2, 3, 4))
    names = list(per_class)
    if len(names) > MAX_ROWS:  # the classes recalled worst
        names = sorted(names, key=lambda n: per_class[n]["recall"]["value"] or 0.0)[:MAX_ROWS]
    rows = []
    for name in names:
        c = per_class[name]
        recall = c["recall"]
        rows.append(
            (
                name,
                c["support"],
                number(c["precision"]["value"], 3),
                number(recall["value"], 3),
                _interval(recall["interval"]),
                bar(recall["value"], recall["interval"]),
                number(c["f1"]["value"], 3),
                number(c["auc"]["value"], 3),
            )
        )
    head = ("class", "images", "precision", "recall", "recall 95% interval", "", "F1", "AUC")
    more = len(per_class) - len(names)
    note = f"<p class=muted>the {MAX_ROWS} classes recalled worst; {more} more in analysis.json</p>"
    return "<h3>Classes</h3>" + table(rows, head, num=(1, 2, 3, 4, 6, 7)) + (note if more else "")


def _slices(doc: dict, metric: str = "accuracy") -> str:
    slices = doc.get("slices") or []
    skipped = [
        f"{name}: {d['skipped']}"
        for name, d in (doc.get("dimensions") or {}).items()
        if d["skipped"]
    ]
    if not slices and not skipped:
        return ""
    overall = doc["overall"]["metrics"][metric]["value"]
    rows = []
    for s in slices[:MAX_SLICE_ROWS]:
        v = s["metrics"][metric]
        gated = s.get("gated", True)
        rows.append(
            (
                slice_name(tuple(s["slice"].items())),
                s["count"],
                number(v["value"]),
                _interval(v["interval"]),
                bar(v["value"], v["interval"], mark=overall, muted=not gated),
                "" if gated else Html("<span class=muted>under min_slice_size</span>"),
            )
        )
    more = len(slices) - MAX_SLICE_ROWS
    notes = [f"{more} more slices in analysis.json"] if more > 0 else []
    notes += [f"not sliced: {text}" for text in skipped]
    title = f"{METRICS[metric].title.capitalize()} per slice (red: all test images, {overall:.4f})"
    head = ("slice", "images", metric, "95% interval", "", "")
    return (
        f"<h3>{e(title)}</h3>"
        + table(rows, head, num=(1, 2, 3))
        + (bullets(notes) if notes else "")
    )


def _mistakes(out_dir: str, doc: dict, labels: list[str]) -> str:
    found = doc.get("mistakes") or []
    fig = img(fsutil.join(out_dir, artifacts.MISTAKES_PNG), "Most confident mistakes per class")
    if not found:
        return figures(fig) if fig else ""
    rows = [
        (i + 1, m["filename"], labels[m["true"]], labels[m["pred"]], number(m["score"], 3),
         "yes" if m.get("grad_cam") else "no")
        for i, m in enumerate(found[:MAX_ROWS])
    ]  # fmt: skip
    head = ("#", "test image", "true class", "predicted", "score", "heat map")
    return (
        "<h3>Most confident mistakes (heat map: Grad-CAM for the predicted class)</h3>"
        + figures(fig)
        + table(rows, head, num=(0, 4))
    )


def _facts(m: dict, b: dict, doc: dict) -> list[tuple[str, Any]]:
    overall = doc.get("overall", {}).get("metrics", {})

    def with_interval(name: str, fallback: Any = None) -> Any:
        if name not in overall:
            return number(fallback)
        v = overall[name]
        return Html(f"{number(v['value'])} {_interval(v['interval'])}")

    facts = [
        ("accuracy (95% interval)", with_interval("accuracy", m.get("accuracy"))),
        ("min_accuracy (gate)", number(b.get("threshold"))),
        ("baseline accuracy", number(b.get("baseline_accuracy"))),
        ("loss (Keras)", number(m.get("loss"))),
    ]
    if overall:
        facts += [
            ("macro recall", with_interval("recall")),
            ("ROC AUC" + (" (macro one-vs-rest)" if len(m.get("labels", [])) > 2 else ""),
             with_interval("auc")),
            ("log loss", with_interval("log_loss")),
            ("expected calibration error", with_interval("ece")),
        ]  # fmt: skip
    else:
        facts.append(("ROC AUC", number(m.get("auc"))))
    facts.append(("test images", m.get("num_examples")))
    if doc.get("bootstrap"):
        boot = doc["bootstrap"]
        facts.append(("intervals", f"{boot['resamples']} bootstrap resamples, seed {boot['seed']}"))
    return facts


def report_html(entry: dict, record: dict) -> str:
    out_dir = entry.get("output_dir")
    if not out_dir or not fsutil.exists(fsutil.join(out_dir, artifacts.METRICS_FILE)):
        return ""
    m = fsutil.read_json(fsutil.join(out_dir, artifacts.METRICS_FILE))
    doc = _read(out_dir, artifacts.ANALYSIS_FILE)
    b = result(entry)
    labels = list(m.get("labels") or doc.get("labels") or [])
    return section(
        "Evaluation (exported SavedModel, raw test bytes)",
        key_values(_facts(m, b, doc), num=True)
        + bullets(b.get("reasons", []))
        + _thresholds(b)
        + _classes(m, doc)
        + _slices(doc)
        + figures(
            img(
                fsutil.join(out_dir, artifacts.CONFUSION_MATRIX_PNG),
                "Confusion matrix (test split)",
            ),
            img(fsutil.join(out_dir, artifacts.RELIABILITY_PNG), "Reliability (calibration)"),
        )
        + _mistakes(out_dir, doc, labels),
    )
