"""Run metrics from durable state, without running a pipeline: run records as the runner and
the step write them, a version registry as the Pusher writes it (orchestration/monitoring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_components.core import registry
from pipeline_components.orchestration.monitoring import _decided, history, run_metrics

EXAMPLES_A, EXAMPLES_B = "a" * 64, "b" * 64


def entry(component: str, status: str = "completed", **fields) -> dict:
    return {"component": component, "status": status, "duration_s": 1.5, **fields}


def gate(blessed: bool, accuracy: float = 0.9, baseline: float | None = None) -> dict:
    result = {"blessed": blessed, "accuracy": accuracy, "threshold": 0.8, "max_regression": 0.01}
    return entry("Evaluator", result={**result, "baseline_accuracy": baseline})


def write_run(root: Path, run_id: str, started: str, status: str, components: dict) -> None:
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "status": status,
        "started": started,
        "finished": started.replace(":00+", ":30+"),
        "components": components,
    }
    (run_dir / "run.json").write_text(json.dumps(record))


def trained(fingerprint: str) -> dict:
    return entry("Trainer", inputs={"config": {}, "inputs": {"examples": fingerprint}})


@pytest.fixture
def roots(tmp_path):
    root, serving = tmp_path / "root", tmp_path / "serving"
    day = "2026-01-0{}T03:00:00+00:00"
    write_run(
        root,
        "r1",
        day.format(1),
        "completed",
        {"Trainer": trained(EXAMPLES_A), "Evaluator": gate(True)},
    )
    write_run(root, "r2", day.format(2), "failed", {"Trainer": entry("Trainer", "failed")})
    write_run(
        root,
        "r3",
        day.format(3),
        "completed",
        {"Trainer": trained(EXAMPLES_B), "Evaluator": gate(False)},
    )
    write_run(
        root,
        "r4",
        day.format(4),
        "completed",
        {"Trainer": trained(EXAMPLES_B), "Evaluator": {**gate(False), "status": "cached"}},
    )
    registry = {
        "versions": {"1": {"version": 1, "accuracy": 0.91, "run_id": "r1"}},
        "events": [
            {"at": "2026-01-01T03:00:20+00:00", "action": "push", "version": 1, "run_id": "r1"}
        ],
    }
    (serving / "_versions").mkdir(parents=True)
    (serving / "_versions" / "m.json").write_text(json.dumps(registry))
    return root, serving


def test_values_kept_across_runs_come_from_the_records_and_the_registry(roots):
    root, serving = roots
    found = history.history(str(root), str(serving), "m", limit=100)
    assert found.runs_read == 4
    assert found.last_success == history.timestamp("2026-01-04T03:00:30+00:00")
    assert found.first_run == history.timestamp("2026-01-01T03:00:00+00:00")
    # r4 (cached refusal) and r3 refused; r2 gave no verdict (skipped over); r1 blessed: stop
    assert found.refusals_in_a_row == 2
    assert found.last_push is not None and found.last_push.version == 1
    assert found.last_push.accuracy == 0.91
    # the pushed model (r1) was trained on A, the newest data is B
    assert found.data_changed_since_push is True


def test_a_failed_run_does_not_lose_what_earlier_runs_did(roots):
    root, serving = roots
    write_run(
        root, "r5", "2026-01-05T03:00:00+00:00", "failed", {"Trainer": entry("Trainer", "failed")}
    )
    found = history.history(str(root), str(serving), "m", limit=100)
    assert found.last_success == history.timestamp("2026-01-04T03:00:30+00:00")
    assert found.refusals_in_a_row == 2 and found.last_push.version == 1


def test_history_reads_the_newest_records_only(roots):
    root, serving = roots
    found = history.history(str(root), str(serving), "m", limit=2)
    assert found.runs_read == 2


def test_a_kfp_run_is_its_steps_merged(tmp_path):
    steps = tmp_path / "runs" / "uuid-1" / "steps"
    steps.mkdir(parents=True)
    for name, status in (("ExampleGen", "completed"), ("Trainer", "running")):
        (steps / f"{name}.json").write_text(
            json.dumps(
                {
                    "run_id": "uuid-1",
                    "component": name,
                    "status": status,
                    "started": "2026-01-01T03:00:00+00:00",
                    "components": {name: entry(name, status)},
                }
            )
        )
    record = history.read_run(str(tmp_path), "uuid-1")
    assert record["status"] == "running" and set(record["components"]) == {"ExampleGen", "Trainer"}
    (steps / "Trainer.json").write_text(
        json.dumps(
            {
                "component": "Trainer",
                "status": "failed",
                "components": {"Trainer": entry("Trainer", "failed")},
            }
        )
    )
    assert history.read_run(str(tmp_path), "uuid-1")["status"] == "failed"


@pytest.mark.parametrize(
    "step, decided",
    [
        ({"status": "failed", "attempts": 1, "permanent_error": "bad input"}, True),
        ({"status": "failed", "attempts": 1}, False),  # KFP retries it (kfp.retries: 3)
        ({"status": "failed", "attempts": 4}, True),  # the last of 1 + 3 attempts
        ({"status": "completed", "attempts": 1}, False),  # later steps still to run
    ],
)
def test_a_step_decides_the_run_when_its_failure_is_final(tmp_path, step, decided):
    cfg = registry.config_from_dict({"pipeline_root": str(tmp_path)})
    path = tmp_path / "runs" / "u" / "steps" / "Trainer.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"component": "Trainer", **step}))
    record = history.read_run(str(tmp_path), "u")
    assert _decided(cfg, record, ["Trainer"]) is decided


def test_groups_hold_status_one_hot_and_what_each_component_measured():
    record = {
        "run_id": "r",
        "status": "completed",
        "started": "2026-01-01T03:00:00+00:00",
        "finished": "2026-01-01T03:10:00+00:00",
        "components": {
            "ExampleGen": entry("ExampleGen", result={"splits": {"train": 16, "test": 6}}),
            "Evaluator": {**gate(False, 0.7, baseline=0.9), "output_dir": "/nonexistent"},
        },
    }
    past = history.History(refusals_in_a_row=1)
    groups = {
        g.key.get("component", "run"): g for g in run_metrics.all_groups("p", record, past, "m")
    }
    run = {s.name: s.value for s in groups["run"].samples}
    assert run["run_success"] == 1 and run["run_duration_seconds"] == 600
    assert run["gate_refusals_in_a_row"] == 1 and "last_push_version" not in run
    status = {
        dict(s.labels)["status"]: s.value
        for s in groups["Trainer"].samples
        if s.name == "component_status"
    }
    assert status == dict.fromkeys(run_metrics.STATUSES, 0.0) | {"not_run": 1.0}
    evaluator = {(s.name, s.labels): s.value for s in groups["Evaluator"].samples}
    assert evaluator[("model_blessed", (("reason", "below_min_accuracy_and_regression"),))] == 0
    assert evaluator[("gate_baseline_accuracy", ())] == 0.9
    examples = {
        dict(s.labels)["split"]: s.value
        for s in groups["ExampleGen"].samples
        if s.name == "examples"
    }
    assert examples == {"train": 16, "test": 6}
    flat = run_metrics.flat_values(groups["Evaluator"])
    assert flat["success"] == 1 and flat["model_blessed_below_min_accuracy_and_regression"] == 0


@pytest.mark.parametrize(
    "blessing, reason",
    [
        ({"blessed": True, "accuracy": 0.9, "threshold": 0.8}, "passed"),
        ({"blessed": False, "accuracy": 0.7, "threshold": 0.8}, "below_min_accuracy"),
        (
            {
                "blessed": False,
                "accuracy": 0.85,
                "threshold": 0.8,
                "baseline_accuracy": 0.9,
                "max_regression": 0.01,
            },
            "regression",
        ),
    ],
)
def test_the_gate_reason_comes_from_its_numbers(blessing, reason):
    assert run_metrics.gate_reason(blessing) == reason


def _lines(**passed):
    return [{"origin": origin, "passed": ok} for origin, ok in passed.items()]


@pytest.mark.parametrize(
    "lines, reason",
    [
        (_lines(min_accuracy=True, max_regression=None, rare=False), "thresholds"),
        (_lines(min_accuracy=True, max_regression=False, rare=True), "regression"),
        (_lines(min_accuracy=False, max_regression=True, rare=False), "below_min_accuracy"),
        (
            _lines(min_accuracy=False, max_regression=False),
            "below_min_accuracy_and_regression",
        ),
    ],
)
def test_the_gate_reason_reads_the_threshold_lines(lines, reason):
    """blessing.json's lines decide (an accuracy a hair above baseline - max_regression is no
    regression; a failed per-class floor is `thresholds`), and they are counted."""
    for line in lines:
        if line["origin"] in ("min_accuracy", "max_regression"):
            line["origin"] = "evaluator." + line["origin"]
    blessing = {"blessed": False, "accuracy": 0.8, "threshold": 0.5, "baseline_accuracy": 0.81}
    blessing |= {"max_regression": 0.01, "thresholds": lines}
    assert run_metrics.gate_reason(blessing) == reason
    samples = {s.name: s.value for s in run_metrics._model(None, blessing)}
    assert samples["gate_thresholds"] == len(lines)
    assert samples["gate_thresholds_failed"] == sum(t["passed"] is False for t in lines)
