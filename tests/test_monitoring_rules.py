"""The shipped alert rules (k8s/components/prometheus-operator/prometheusrule.yaml), checked and
unit-tested by the real `promtool` on the rule file inside the PrometheusRule: every alert
fires when it should and stays silent when it should; a kustomize patch moves a threshold.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_tools import DASHBOARD, PROMETHEUS_RULE, ROOT, promtool, rule_groups

RUN = 'job="transfer_pipeline",pipeline="nightly"'  # a run group's labels after honor_labels
RUN_LABELS = {"job": "transfer_pipeline", "pipeline": "nightly"}
SERVE = 'model_name="cats_dogs",job="tf-serving",instance="10.0.0.7:8501"'
LONG = "30m"  # the step of cases that span days: a sample and an evaluation every 30 minutes
HOUR, DAY = 2, 48  # in samples of LONG


@dataclasses.dataclass
class Case:
    alert: str
    why: str
    at: str  # eval_time
    series: dict[str, str]  # series -> promtool's values notation, one sample a step
    fires: list[dict] = dataclasses.field(default_factory=list)  # expected labels; [] silent
    step: str = "1m"  # the input series' interval and the rules' evaluation interval


def lasting(value: str, minutes: int) -> str:
    return f"{value}x{minutes}"


CASES = [
    Case(
        "TransferPipelineRunFailed",
        "the newest run failed",
        "2m",
        {
            f"transfer_pipeline_run_success{{{RUN}}}": "0x10",
            f'transfer_pipeline_run_info{{{RUN},run_id="r7",status="failed",'
            'failed_component="Trainer",model_name="cats_dogs"}': "1x10",
        },
        [{**RUN_LABELS, "severity": "warning", "run_id": "r7", "failed_component": "Trainer"}],
    ),
    Case(
        "TransferPipelineRunFailed",
        "the newest run completed",
        "2m",
        {
            f"transfer_pipeline_run_success{{{RUN}}}": "1x10",
            f'transfer_pipeline_run_info{{{RUN},run_id="r8",status="completed",'
            'failed_component="",model_name="cats_dogs"}': "1x10",
        },
    ),
    Case(
        "TransferPipelineNoSuccessfulRun",
        "the last success ended 27 h ago",
        "27h",
        {f"transfer_pipeline_last_success_timestamp_seconds{{{RUN}}}": lasting("0", 28 * HOUR)},
        [{**RUN_LABELS, "severity": "critical"}],
        step=LONG,
    ),
    Case(
        "TransferPipelineNoSuccessfulRun",
        "the last success ended 25 h ago",
        "25h",
        {f"transfer_pipeline_last_success_timestamp_seconds{{{RUN}}}": lasting("0", 28 * HOUR)},
        step=LONG,
    ),
    Case(
        "TransferPipelineNoSuccessfulRun",
        "no run ever succeeded, the first started 27 h ago",
        "27h",
        {f"transfer_pipeline_first_run_timestamp_seconds{{{RUN}}}": lasting("0", 28 * HOUR)},
        [{**RUN_LABELS, "severity": "critical"}],
        step=LONG,
    ),
    Case(
        "TransferPipelineNoSuccessfulRun",
        "the first run started 27 h ago, one succeeded 40 min ago",
        "27h",
        {
            f"transfer_pipeline_first_run_timestamp_seconds{{{RUN}}}": lasting("0", 28 * HOUR),
            f"transfer_pipeline_last_success_timestamp_seconds{{{RUN}}}": lasting(
                str(27 * 3600 - 2400), 28 * HOUR
            ),
        },
        step=LONG,
    ),
    Case(
        "TransferPipelineRunMetricsAbsent",
        "no run metrics for 27 h",
        "27h",
        {'up{job="pushgateway"}': lasting("1", 28 * HOUR)},
        [{"severity": "warning"}],
        step=LONG,
    ),
    Case(
        "TransferPipelineRunMetricsAbsent",
        "run metrics present",
        "27h",
        {f"transfer_pipeline_run_success{{{RUN}}}": lasting("1", 28 * HOUR)},
        step=LONG,
    ),
    Case(
        "TransferPipelineNoPushWhileDataChanged",
        "8 days without a push, data changed",
        "8d",
        {
            f"transfer_pipeline_last_push_timestamp_seconds{{{RUN}}}": lasting("0", 8 * DAY + 60),
            f"transfer_pipeline_data_changed_since_push{{{RUN}}}": lasting("1", 8 * DAY + 60),
        },
        [{**RUN_LABELS, "severity": "warning"}],
        step=LONG,
    ),
    Case(
        "TransferPipelineNoPushWhileDataChanged",
        "8 days without a push, the data did not change",
        "8d",
        {
            f"transfer_pipeline_last_push_timestamp_seconds{{{RUN}}}": lasting("0", 8 * DAY + 60),
            f"transfer_pipeline_data_changed_since_push{{{RUN}}}": lasting("0", 8 * DAY + 60),
        },
        step=LONG,
    ),
    Case(
        "TransferPipelineNoPushWhileDataChanged",
        "6 days without a push, data changed",
        "6d",
        {
            f"transfer_pipeline_last_push_timestamp_seconds{{{RUN}}}": lasting("0", 8 * DAY + 60),
            f"transfer_pipeline_data_changed_since_push{{{RUN}}}": lasting("1", 8 * DAY + 60),
        },
        step=LONG,
    ),
    Case(
        "TransferPipelineAccuracyDropped",
        "0.80 against 0.90 pushed",
        "2m",
        {
            f"transfer_pipeline_last_push_accuracy{{{RUN}}}": "0.9x10",
            f'transfer_pipeline_model_accuracy{{{RUN},component="Evaluator"}}': "0.8x10",
        },
        [{**RUN_LABELS, "severity": "warning"}],
    ),
    Case(
        "TransferPipelineAccuracyDropped",
        "0.88 against 0.90 pushed",
        "2m",
        {
            f"transfer_pipeline_last_push_accuracy{{{RUN}}}": "0.9x10",
            f'transfer_pipeline_model_accuracy{{{RUN},component="Evaluator"}}': "0.88x10",
        },
    ),
    Case(
        "TransferPipelineGateRefusing",
        "3 refusals in a row",
        "2m",
        {f"transfer_pipeline_gate_refusals_in_a_row{{{RUN}}}": "3x10"},
        [{**RUN_LABELS, "severity": "warning"}],
    ),
    Case(
        "TransferPipelineGateRefusing",
        "2 refusals in a row",
        "2m",
        {f"transfer_pipeline_gate_refusals_in_a_row{{{RUN}}}": "2x10"},
    ),
    Case(
        "TFServingErrorRatioHigh",
        "10% errors for 10 minutes",
        "12m",
        {
            f':tensorflow:serving:request_count{{{SERVE},status="OK"}}': "0+90x20",
            f':tensorflow:serving:request_count{{{SERVE},status="INVALID_ARGUMENT"}}': "0+10x20",
        },
        [{"model_name": "cats_dogs", "severity": "critical"}],
    ),
    Case(
        "TFServingErrorRatioHigh",
        "1% errors",
        "12m",
        {
            f':tensorflow:serving:request_count{{{SERVE},status="OK"}}': "0+99x20",
            f':tensorflow:serving:request_count{{{SERVE},status="INVALID_ARGUMENT"}}': "0+1x20",
        },
    ),
    Case(
        "TFServingErrorRatioHigh",
        "10% errors for 3 minutes only (for: 5m)",
        "12m",
        {
            f':tensorflow:serving:request_count{{{SERVE},status="OK"}}': "0+90x20",
            f':tensorflow:serving:request_count{{{SERVE},status="INVALID_ARGUMENT"}}': (
                "0x8 0+10x11"
            ),
        },
    ),
    Case(
        "TFServingLatencyP99High",
        "every request between 1 s and 10 s",
        "12m",
        {
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="1e+06"}': "0x20",
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="1e+07"}': "0+100x20",
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="+Inf"}': "0+100x20",
        },
        [{"model_name": "cats_dogs", "severity": "warning"}],
    ),
    Case(
        "TFServingLatencyP99High",
        "every request under 1 ms",
        "12m",
        {
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="1000"}': "0+100x20",
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="1e+06"}': "0+100x20",
            f':tensorflow:serving:request_latency_bucket{{{SERVE},API="Predict",'
            'entrypoint="GRPC",le="+Inf"}': "0+100x20",
        },
    ),
    Case(
        "TFServingNoAvailableVersion",
        "transfer-pipeline serve has no version loaded",
        "15m",
        {f"transfer_pipeline_serving_available_versions{{{SERVE}}}": "0x20"},
        [{"model_name": "cats_dogs", "severity": "critical"}],
    ),
    Case(
        "TFServingNoAvailableVersion",
        "no TF Serving pod is ready (kube-state-metrics)",
        "15m",
        {
            'kube_deployment_status_replicas_available{job="kube-state-metrics",'
            'namespace="transfer-pipeline",deployment="tf-serving"}': "0x20"
        },
        [{"namespace": "transfer-pipeline", "deployment": "tf-serving", "severity": "critical"}],
    ),
    Case(
        "TFServingNoAvailableVersion",
        "a version loaded, two pods ready",
        "15m",
        {
            f"transfer_pipeline_serving_available_versions{{{SERVE}}}": "1x20",
            'kube_deployment_status_replicas_available{job="kube-state-metrics",'
            'namespace="transfer-pipeline",deployment="tf-serving"}': "2x20",
        },
    ),
]


def alert_names(groups: dict) -> set[str]:
    return {r["alert"] for g in groups["groups"] for r in g["rules"] if "alert" in r}


def without_annotations(groups: dict) -> dict:
    """The rules as promtool tests compare them: labels only (annotation templates are checked
    by `promtool check rules`, and rendered in test_run_failed_annotations_render)."""
    out = yaml.safe_load(yaml.safe_dump(groups))
    for g in out["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    return out


def unit_tests(cases: list[Case], step: str = "1m") -> dict:
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": step,
        "tests": [
            {
                "name": f"{c.alert}: {c.why}",
                "interval": step,
                "input_series": [{"series": s, "values": v} for s, v in c.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": c.at,
                        "alertname": c.alert,
                        "exp_alerts": [{"exp_labels": labels} for labels in c.fires],
                    }
                ],
            }
            for c in cases
            if c.step == step
        ],
    }


def run_unit_tests(tmp_path: Path, groups: dict, cases: list[Case]) -> subprocess.CompletedProcess:
    """promtool test rules, one test file per step (cases over days evaluate every 30 min)."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(groups)))
    files = []
    for step in sorted({c.step for c in cases}):
        files.append(f"tests-{step}.yaml")
        (tmp_path / files[-1]).write_text(yaml.safe_dump(unit_tests(cases, step), sort_keys=False))
    return promtool("test", "rules", *files, cwd=tmp_path)


def test_promtool_checks_the_shipped_rules(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    out = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 15 rules found" in out.stdout, out.stdout


def test_every_alert_fires_when_it_should_and_stays_silent_otherwise(tmp_path):
    groups = rule_groups()
    fired = {c.alert for c in CASES if c.fires}
    silent = {c.alert for c in CASES if not c.fires}
    assert fired == silent == alert_names(groups), "a firing and a silent case for each alert"
    out = run_unit_tests(tmp_path, groups, CASES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_unit_tests_catch_a_rule_that_never_fires(tmp_path):
    """The unit tests fail when a rule is broken (here: the run-failed alert compares with 2)."""
    groups = rule_groups()
    for g in groups["groups"]:
        for r in g["rules"]:
            if r.get("alert") == "TransferPipelineRunFailed":
                r["expr"] = r["expr"].replace("== 0", "== 2")
    cases = [c for c in CASES if c.alert == "TransferPipelineRunFailed"]
    out = run_unit_tests(tmp_path, groups, cases)
    assert out.returncode != 0 and "TransferPipelineRunFailed" in out.stdout + out.stderr


def test_run_failed_annotations_render(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    case = CASES[0]
    tests = unit_tests([case])
    (rule,) = [
        r for g in rule_groups()["groups"] for r in g["rules"] if r.get("alert") == case.alert
    ]
    assert "{{ $labels.run_id }}" in rule["annotations"]["summary"]
    tests["tests"][0]["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"] = {
        "summary": "Pipeline nightly: run r7 failed in Trainer",
        "description": rule["annotations"]["description"]
        .replace("{{ $labels.pipeline }}", "nightly")
        .replace("{{ $labels.run_id }}", "r7"),
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def kustomize(path: Path) -> list[dict]:
    from test_deploy import kustomize as build

    return [d for d in yaml.safe_load_all(build(path)) if d]


def test_a_kustomize_patch_moves_a_threshold(tmp_path):
    """The documented patch (prometheusrule.yaml's header, docs/monitoring.md): a JSON patch of
    one threshold rule's expr; here the gate may refuse 5 runs in a row before it alerts."""
    component = ROOT / "k8s/components/prometheus-operator"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "k8s/base", tmp_path)],
                "components": [os.path.relpath(component, tmp_path)],
                "patches": [
                    {
                        "target": {"kind": "PrometheusRule", "name": "transfer-pipeline"},
                        "patch": "- op: replace\n  path: /spec/groups/0/rules/3/expr\n"
                        "  value: vector(5)\n",
                    }
                ],
            }
        )
    )
    (rule,) = [d for d in kustomize(tmp_path) if d["kind"] == "PrometheusRule"]
    patched = rule["spec"]["groups"][0]["rules"][3]
    assert patched == {"record": "transfer_pipeline:threshold:gate_refusals", "expr": "vector(5)"}
    refusals = [c for c in CASES if c.alert == "TransferPipelineGateRefusing"]
    three = dataclasses.replace(refusals[0], fires=[])  # 3 in a row: silent now
    five = dataclasses.replace(
        refusals[0], why="5 in a row", series={k: "5x10" for k in refusals[0].series}
    )
    out = run_unit_tests(tmp_path, {"groups": rule["spec"]["groups"]}, [three, five])
    assert out.returncode == 0, out.stdout + out.stderr


THRESHOLDS = {
    "transfer-pipeline-runs": [
        "no_success_seconds",
        "no_push_seconds",
        "accuracy_drop",
        "gate_refusals",
    ],
    "transfer-pipeline-serving": ["serving_error_ratio", "serving_p99_seconds"],
}


def test_thresholds_head_each_group_at_the_documented_indices():
    """The JSON patch paths prometheusrule.yaml's header and docs/monitoring.md name; each
    group evaluates its thresholds before its alerts (rules of a group run in order)."""
    groups = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
    assert [g["name"] for g in groups] == list(THRESHOLDS)
    docs = (ROOT / "docs/monitoring.md").read_text()
    for g, (group, names) in enumerate(zip(groups, THRESHOLDS.values(), strict=True)):
        head = group["rules"][: len(names)]
        assert [r["record"] for r in head] == [f"transfer_pipeline:threshold:{n}" for n in names]
        assert all("record" not in r for r in group["rules"][len(names) :])
        for i, name in enumerate(names):
            assert f"/spec/groups/{g}/rules/{i}/expr" in docs and name in docs


def published_names() -> set[str]:
    """Every metric family the pipeline and `transfer-pipeline serve` publish."""
    from pipeline_components.orchestration.monitoring.run_metrics import CATALOG, PREFIX
    from serving.metrics import ServingMetrics

    metrics = ServingMetrics()
    try:
        page = metrics.render().decode()
    finally:
        metrics.close()
    served = {line.split()[2] for line in page.splitlines() if line.startswith("# TYPE ")}
    return {PREFIX + name for name in CATALOG} | served


@pytest.mark.parametrize("path", [PROMETHEUS_RULE, DASHBOARD])
def test_rules_and_dashboard_read_only_published_metrics(path):
    published = published_names()
    found = set(
        re.findall(r"(transfer_pipeline_[a-z0-9_]+|:tensorflow:[a-z_:]+)", path.read_text())
    )
    names = {n if n in published else re.sub(r"_(bucket|sum|count)$", "", n) for n in found}
    assert len(names) > 10, path
    assert names <= published, sorted(names - published)


def test_docs_describe_every_metric_and_alert():
    docs = (ROOT / "docs/monitoring.md").read_text()
    missing = sorted(n for n in published_names() if f"`{n}`" not in docs)
    assert not missing, f"docs/monitoring.md does not describe {missing}"
    assert not sorted(a for a in alert_names(rule_groups()) if f"`{a}`" not in docs)
