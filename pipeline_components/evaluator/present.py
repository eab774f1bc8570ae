"""The Evaluator's line in the run table, its fields of run.json (`blessing`, `metrics`) and its
section of report.html."""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.reporting import (
    bullets,
    figures,
    img,
    key_values,
    number,
    result,
    section,
    table,
)


def summary(entry: dict) -> str:
    r = result(entry)
    verdict = "BLESSED" if r.get("blessed") else "not blessed"
    base = r.get("baseline_accuracy")
    extra = f", baseline {base:.4f}" if base is not None else ""
    if r.get("baseline_comparable") is False:
        extra = ", baseline not comparable (labels differ)"
    return f"accuracy {r.get('accuracy', 0):.4f} (min {r.get('threshold')}{extra}) {verdict}"


def record_fields(entry: dict) -> dict:
    if not entry.get("result"):
        return {}
    fields: dict[str, Any] = {"blessing": entry["result"]}
    metrics_path = fsutil.join(entry["output_dir"], artifacts.METRICS_FILE)
    if fsutil.exists(metrics_path):
        m = fsutil.read_json(metrics_path)
        fields["metrics"] = {k: m.get(k) for k in ("accuracy", "loss", "auc", "num_examples")}
    return fields


def report_html(entry: dict, record: dict) -> str:
    out_dir = entry.get("output_dir")
    if not out_dir or not fsutil.exists(fsutil.join(out_dir, artifacts.METRICS_FILE)):
        return ""
    m = fsutil.read_json(fsutil.join(out_dir, artifacts.METRICS_FILE))
    b = result(entry)
    facts = [
        ("accuracy", m.get("accuracy")),
        ("min_accuracy (gate)", b.get("threshold")),
        ("baseline accuracy", b.get("baseline_accuracy")),
        ("loss", m.get("loss")),
        ("ROC AUC", m.get("auc")),
        ("test examples", m.get("num_examples")),
    ]
    per_class = [
        (name, number(c["precision"], 3), number(c["recall"], 3), number(c["f1"], 3), c["support"])
        for name, c in m.get("per_class", {}).items()
    ]
    return section(
        "Evaluation (exported SavedModel, raw test bytes)",
        key_values([(k, number(v)) for k, v in facts], num=True)
        + bullets(b.get("reasons", []))
        + table(per_class, ("class", "precision", "recall", "F1", "support"), num=(1, 2, 3, 4))
        + figures(
            img(
                fsutil.join(out_dir, artifacts.CONFUSION_MATRIX_PNG),
                "Confusion matrix (test split)",
            ),
            img(fsutil.join(out_dir, artifacts.ERRORS_PNG), "Misclassified test images"),
        ),
    )
