"""The Evaluator's section of report.html and its run.json fields (evaluator/present.py) on
hand-written artifacts: bounded however many thresholds, classes and slices, and readable from
an execution written before analysis.json existed. The end-to-end page is parsed in
test_pipeline.py."""

import json

from report_html import Report

from pipeline_components.core import reporting
from pipeline_components.evaluator import present


def _value(v, iv=None):
    return {"value": v, "interval": iv}


def write_execution(out, n_classes=3, n_slices=3, with_analysis=True):
    labels = [f"c{i} 🐈" for i in range(n_classes)]
    per_class = {n: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for n in labels}
    metrics = {
        "accuracy": 0.5, "loss": 0.7, "num_examples": 2 * n_classes, "labels": labels,
        "per_class": per_class,
    }  # fmt: skip
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(metrics))
    if with_analysis:
        names = ("accuracy", "precision", "recall", "f1", "auc", "auc_pr", "log_loss", "ece")
        overall = {k: _value(0.5, [0.25, 0.75]) for k in names}
        classes = {
            n: {**{k: _value(i / n_classes) for k in ("precision", "recall", "f1", "auc")},
                "support": 2}
            for i, n in enumerate(labels)
        }  # fmt: skip
        slices = [
            {"slice": {"camera": f"cam {i}"}, "count": 40 - i, "gated": i < n_slices - 1,
             "metrics": {"accuracy": _value(0.6, [0.5, 0.7])}}
            for i in range(n_slices)
        ]  # fmt: skip
        doc = {
            "labels": labels, "overall": {"metrics": overall, "per_class": classes},
            "slices": slices, "bootstrap": {"resamples": 1000, "seed": 0},
            "dimensions": {"id": {"values": 500, "skipped": "500 values, over max 100"}},
            "mistakes": [{"filename": "test/c1 🐈/x.png", "true": 1, "pred": 0, "score": 0.9,
                          "grad_cam": True}],
        }  # fmt: skip
        (out / "analysis.json").write_text(json.dumps(doc))
    return labels


def line(i, passed):
    return {
        "metric": "recall", "class": f"c{i}", "slice": None, "kind": "value", "bound": ">= 0.5000",
        "value": 0.4, "interval": [0.3, 0.5], "with_confidence": False, "count": 2,
        "candidate": None, "baseline": None, "passed": passed,
        "origin": f"evaluator.thresholds[{i}]",
        "reason": f"recall of class 'c{i}': not gated, why" if passed is None else "r",
    }  # fmt: skip


def test_the_section_lists_failures_first_and_stays_bounded(tmp_path):
    out = tmp_path / "e"
    write_execution(out, n_classes=present.MAX_ROWS + 20, n_slices=present.MAX_SLICE_ROWS + 5)
    lines = [line(i, [True, None, False][i % 3]) for i in range(present.MAX_ROWS + 50)]
    entry = {"output_dir": str(out), "result": {"blessed": False, "thresholds": lines}}
    report = Report(present.report_html(entry, {}))
    rows = report.table("Thresholds")[1:]
    assert len(rows) == present.MAX_ROWS
    firsts = [r[0] for r in rows]
    assert firsts == ["FAIL"] * 50 + ["not gated"] * 50  # failed first, then not gated
    assert rows[50][-1] == "not gated, why"
    assert len(report.table("Classes")[1:]) == present.MAX_ROWS
    assert report.table("Classes")[1][0] == "c0 🐈"  # the worst recalled first, names exact
    slices = report.table("Accuracy per slice")[1:]
    assert len(slices) == present.MAX_SLICE_ROWS and slices[0][:2] == ["camera=cam 0", "40"]
    html = present.report_html(entry, {})
    assert "50 more in blessing.json" in html and "20 more in analysis.json" in html
    assert "5 more slices in analysis.json" in html and "not sliced: id: 500 values" in html
    assert report.table("Most confident mistakes")[1][1:4] == ["test/c1 🐈/x.png", "c1 🐈", "c0 🐈"]
    assert present.summary(entry).endswith(
        f"{len(lines) // 3} of {len(lines)} thresholds failed not blessed"
    )


def test_an_execution_from_before_the_analysis_still_shows(tmp_path):
    out = tmp_path / "e"
    write_execution(out, with_analysis=False)
    entry = {"output_dir": str(out), "result": {"blessed": True, "accuracy": 0.5, "threshold": 0.4}}
    report = Report(present.report_html(entry, {}))
    assert report.tables[1][1][0] == ["class", "precision", "recall", "F1", "support"]
    fields = present.record_fields(entry)
    assert fields["metrics"] == {"accuracy": 0.5, "loss": 0.7, "auc": None, "num_examples": 6}


def test_record_fields_carry_the_gate_metrics_and_the_worst_class(tmp_path):
    out = tmp_path / "e"
    write_execution(out)
    metrics = present.record_fields({"output_dir": str(out), "result": {"blessed": True}})[
        "metrics"
    ]
    assert metrics["macro_recall"] == 0.5 and metrics["min_class_recall"] == 0.0
    assert metrics["intervals"]["log_loss"] == [0.25, 0.75]


def test_a_figure_over_the_limit_is_named_not_inlined(tmp_path):
    png = tmp_path / "big.png"
    png.write_bytes(b"\x89PNG" + b"\0" * 2000)
    assert "data:image/png;base64," in reporting.img(str(png), "fig")
    named = reporting.img(str(png), "fig", max_bytes=1000)
    assert "base64" not in named and "not inlined" in named and str(png) in named
