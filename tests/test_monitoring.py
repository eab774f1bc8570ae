"""Run and server metrics end to end, with the real tools on 127.0.0.1 (tests/prometheus_tools.py):

a pipeline run that fails in the Trainer and one that succeeds push to a real Pushgateway; a
real Prometheus scrapes it (honor_labels) and the local server's metrics path; PromQL returns
the runs' status, the accuracy and N requests after N predictions; every dashboard panel's
query runs; a Pushgateway that is down or hangs costs a successful run one warning line.
One module-scoped stack (two pipeline runs) serves every assertion.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_tools import DASHBOARD, ROOT, Prometheus, prometheus, pushgateway
from test_pipeline import TRAINER as PIPELINE_TRAINER

from pipeline_components import cli
from pipeline_components.tools import sample_data
from serving.client import PredictionClient
from serving.server import start_server

PIPELINE = "nightly-🐱"  # a name from another alphabet round-trips through both tools
MODEL = "shapes"
SERVING_JOB = "serving"
TRAINER = {**PIPELINE_TRAINER, "epochs": 1}  # weights none, 32x32: seconds
GRPC_REQUESTS, REST_REQUESTS = 3, 2
RUN = f'{{pipeline="{PIPELINE}"}}'


def write_config(root: Path, data: Path, monitoring: dict, name: str = "p.yaml") -> Path:
    path = root / name
    config = {
        "pipeline_name": PIPELINE,
        "pipeline_root": str(root / "root"),
        "data_root": str(data),
        "serving_dir": str(root / "serving"),
        "model_name": MODEL,
        "example_gen": {"num_shards": 1},
        "trainer": TRAINER,
        "evaluator": {"min_accuracy": 0.0},
        "infra_validator": {"num_examples": 4},
        "monitoring": monitoring,
    }
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def run(config: Path, *overrides: str) -> int:
    return cli.main(["run", "--config", str(config), *overrides])


def newest_record(root: Path) -> dict:
    runs = sorted((root / "root" / "runs").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((runs[-1] / "run.json").read_text())


@contextlib.contextmanager
def served(root: Path) -> object:
    handle = start_server(
        str(root / "serving" / MODEL),
        MODEL,
        0,
        rest_api_port=0,
        monitoring_config_file=str(ROOT / "serving/config/monitoring.config"),
    )
    try:
        yield handle
    finally:
        handle.stop(grace=1.0)


class Stack:
    """What the module's runs left: the tools, the records, the server."""

    prom: Prometheus
    gateway_url: str
    root: Path
    config: Path
    failed: dict
    succeeded: dict
    server: object
    data: Path


@contextlib.contextmanager
def monitoring_stack(tmp: Path) -> Iterator[Stack]:
    """A Pushgateway and a Prometheus scraping it and the local server; a run failing in the
    Trainer, one succeeding, the server on its pushed model, N predictions."""
    data = tmp / "data"
    sample_data.generate(str(data), ("circles", "squares"), (8, 3, 3), (32, 32), "jpg", 0)
    targets = tmp / "serving-targets.json"
    targets.write_text("[]")
    with pushgateway(tmp) as gateway:
        jobs = {
            "pushgateway": {
                "honor_labels": True,
                "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}],
            },
            SERVING_JOB: {
                "metrics_path": "/monitoring/prometheus/metrics",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            },
        }
        with prometheus(tmp, jobs) as prom:
            s = Stack()
            s.prom, s.gateway_url, s.root, s.data = prom, gateway.url, tmp, data
            s.config = write_config(tmp, data, {"pushgateway": gateway.url, "timeout_seconds": 5})
            # a run that fails in the Trainer: a layer the backbone does not have
            assert run(s.config, "trainer.fine_tune_from=no_such_layer") == 1
            s.failed = newest_record(tmp)
            prom.wait_for(f"transfer_pipeline_run_success{RUN}", lambda v: v == 0)
            assert run(s.config) == 0
            s.succeeded = newest_record(tmp)
            prom.wait_for(f"transfer_pipeline_run_success{RUN}", lambda v: v == 1)
            with served(tmp) as handle:
                address = handle.rest_url.removeprefix("http://")
                targets.write_text(json.dumps([{"targets": [address]}]))
                s.server = handle
                prom.wait_for(f'up{{job="{SERVING_JOB}"}}', lambda v: v == 1)
                # one request, scraped, then the rest: rates see the counters grow
                predict(handle, data, grpc=1, rest=0)
                prom.wait_for("sum(:tensorflow:serving:request_count)", lambda v: v == 1)
                predict(handle, data, grpc=GRPC_REQUESTS - 1, rest=REST_REQUESTS)
                yield s


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with monitoring_stack(tmp_path_factory.mktemp("monitoring")) as s:
        yield s


def predict(handle: object, data: Path, grpc: int, rest: int) -> None:
    images = sorted(str(p) for p in (data / "test").glob("*/*"))[:2]
    with PredictionClient(handle.target, MODEL) as client:
        for _ in range(grpc):
            assert len(client.predict(images)) == len(images)
    image = base64.b64encode(Path(images[0]).read_bytes()).decode()
    body = json.dumps({"instances": [{"b64": image}]})
    for _ in range(rest):
        request = urllib.request.Request(
            f"{handle.rest_url}/v1/models/{MODEL}:predict", body.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert "predictions" in json.loads(answer.read())


def series(prom: Prometheus, expr: str) -> dict[str, float]:
    """{label value of the one varying label or "": value} of an instant query."""
    out = {}
    for item in prom.query(expr):
        labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
        out[json.dumps(labels, sort_keys=True, ensure_ascii=False)] = float(item["value"][1])
    return out


@pytest.mark.slow
def test_promql_sees_the_failed_run_then_the_successful_one(stack):
    prom = stack.prom
    assert stack.failed["status"] == "failed"
    assert stack.failed["components"]["Trainer"]["status"] == "failed"
    # the failed run is in the history; the newest run succeeded and pushed version 1
    assert prom.value(f"min_over_time(transfer_pipeline_run_success{RUN}[10m])") == 0
    assert prom.value(f"transfer_pipeline_run_success{RUN}") == 1
    info = prom.query(f"transfer_pipeline_run_info{RUN}")
    assert [i["metric"]["run_id"] for i in info] == [stack.succeeded["run_id"]]
    assert info[0]["metric"]["job"] == "transfer_pipeline"  # honor_labels kept the group's
    failed_info = prom.query(
        f'last_over_time(transfer_pipeline_run_info{{pipeline="{PIPELINE}",status="failed"}}[10m])'
    )
    assert [i["metric"]["failed_component"] for i in failed_info] == ["Trainer"]
    accuracy = stack.succeeded["metrics"]["accuracy"]
    assert prom.value(f"transfer_pipeline_model_accuracy{RUN}") == pytest.approx(accuracy)
    assert prom.value(f"transfer_pipeline_last_push_accuracy{RUN}") == pytest.approx(accuracy)
    assert prom.value(f"transfer_pipeline_last_push_version{RUN}") == 1
    assert prom.value(f"transfer_pipeline_gate_refusals_in_a_row{RUN}") == 0
    assert prom.value(f"transfer_pipeline_data_changed_since_push{RUN}") == 0
    finished = stack.succeeded["finished"]
    success = prom.value(f"transfer_pipeline_last_success_timestamp_seconds{RUN}")
    assert success == pytest.approx(_ts(finished), abs=1)
    statuses = series(prom, f"transfer_pipeline_component_status{RUN} == 1")
    by_component = {json.loads(k)["component"]: json.loads(k)["status"] for k in statuses}
    assert by_component["Trainer"] == "completed" and by_component["Pusher"] == "completed"
    assert by_component["BulkInferrer"] == "skipped"
    splits = {
        json.loads(k)["split"]: v
        for k, v in series(prom, f"transfer_pipeline_examples{RUN}").items()
    }
    assert splits == {"train": 16.0, "validation": 6.0, "test": 6.0}
    # the failed run's Trainer status reached Prometheus before the success replaced it
    trainer_failed = (
        f'transfer_pipeline_component_status{{pipeline="{PIPELINE}",component="Trainer",'
        'status="failed"}'
    )
    assert prom.value(f"max_over_time({trainer_failed}[10m])") == 1


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


@pytest.mark.slow
def test_promql_counts_n_requests_after_n_predictions(stack):
    prom = stack.prom
    n = GRPC_REQUESTS + REST_REQUESTS
    labels = f'job="{SERVING_JOB}",model_name="{MODEL}",status="OK"'
    ok = f"sum(:tensorflow:serving:request_count{{{labels}}})"
    assert prom.wait_for(ok, lambda v: v == n) == n
    requests = f'transfer_pipeline_serving_requests_total{{job="{SERVING_JOB}",version="1"}}'
    by_entrypoint = series(prom, f"sum by (entrypoint) ({requests})")
    assert by_entrypoint == {
        '{"entrypoint": "GRPC"}': GRPC_REQUESTS,
        '{"entrypoint": "REST"}': REST_REQUESTS,
    }
    count = f'sum(:tensorflow:serving:request_latency_count{{model_name="{MODEL}"}})'
    assert prom.value(count) == n
    buckets = f':tensorflow:serving:request_latency_bucket{{model_name="{MODEL}"}}'
    p99 = prom.value(f"histogram_quantile(0.99, sum by (le) ({buckets}))")
    assert p99 is not None and 0 < p99 < 60e6  # microseconds
    assert prom.value(f'transfer_pipeline_serving_available_versions{{model_name="{MODEL}"}}') == 1


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """A panel's query as Grafana sends it with every value of the variables selected."""
    return expr.replace("$pipeline", ".*").replace("$model_name", ".*")


# panels whose data this stack produces (the rest need batching, an anomaly, kube-state-metrics)
EXPECT_DATA = {
    "Last run",
    "Since the last successful run",
    "Gate refusals in a row",
    "Run history",
    "Accuracy over runs",
    "Component durations",
    "Component status",
    "Examples per split",
    "Requests per second by status",
    "Request latency (answered OK)",
    "Model run latency (runtime_latency)",
    "Available versions",
    "Requests by version and signature",
}


@pytest.mark.slow
def test_every_dashboard_panel_query_runs(stack):
    queries = panel_queries()
    assert {title for title, _ in queries} >= EXPECT_DATA
    prom = stack.prom
    # rates need two scrapes after the predictions
    n = GRPC_REQUESTS + REST_REQUESTS
    prom.wait_for("sum(rate(:tensorflow:serving:request_count[5m]))", lambda v: v > 0)
    prom.wait_for("sum(:tensorflow:serving:request_count)", lambda v: v >= n)
    found: dict[str, int] = {}
    for title, expr in queries:
        result = prom.query(concrete(expr))  # raises on a PromQL error
        found[title] = found.get(title, 0) + len(result)
    empty = sorted(title for title in EXPECT_DATA if not found[title])
    assert not empty, f"panels without data: {empty}"


@pytest.mark.slow
def test_the_textfile_sink_writes_every_group_at_once(stack, tmp_path):
    """node-exporter's textfile: one file, replaced whole, that promtool accepts."""
    from prometheus_client.parser import text_string_to_metric_families

    target = tmp_path / "textfile" / "transfer_pipeline.prom"
    target.parent.mkdir()
    config = write_config(stack.root, stack.data, {"textfile": str(target)}, "textfile.yaml")
    assert run(config) == 0
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left
    text = target.read_text()
    check = promtool_check_metrics(text)
    assert check.returncode == 0, check.stdout + check.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (success,) = families["transfer_pipeline_run_success"].samples
    assert success.labels == {"pipeline": PIPELINE} and success.value == 1
    pusher = [
        s
        for s in families["transfer_pipeline_component_status"].samples
        if s.labels["component"] == "Pusher" and s.value == 1
    ]
    assert [s.labels["status"] for s in pusher] == ["completed"]
    assert families["transfer_pipeline_last_push_version"].samples[0].value == 1


def promtool_check_metrics(text: str) -> object:
    import subprocess

    from prometheus_tools import binary

    return subprocess.run(
        [binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True
    )


# -------------------------------------------------------------------------- sinks that fail


@contextlib.contextmanager
def silent_server() -> object:
    """A TCP port that accepts connections and never answers (a hung gateway)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: connection refused


def monitoring_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.levelno >= logging.WARNING and r.getMessage().startswith("monitoring:")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("gateway", ["refused", "hung"])
def test_a_gateway_down_costs_a_successful_run_one_warning_line(stack, caplog, gateway):
    data = stack.data
    with contextlib.ExitStack() as stacked:
        url = closed_port_url() if gateway == "refused" else stacked.enter_context(silent_server())
        config = write_config(
            stack.root, data, {"pushgateway": url, "timeout_seconds": 1}, f"down-{gateway}.yaml"
        )
        caplog.set_level(logging.WARNING)
        started = time.monotonic()
        assert run(config) == 0  # the components are cached: only the Pusher runs
        took = time.monotonic() - started
    record = newest_record(stack.root)
    assert record["status"] == "completed"
    (line,) = monitoring_warnings(caplog.records)
    assert url in line and "the run goes on as it was" in line
    assert ("no answer within 1 s" in line) == (gateway == "hung")
    assert ("Connection refused" in line) == (gateway == "refused")
    assert took < 60, took  # bounded: one timeout, not one per group


def test_no_monitoring_section_publishes_nothing_and_warns_nothing(tmp_path, caplog):
    """Unit: without `monitoring:` the hooks do nothing (no import of prometheus_client)."""
    from pipeline_components.core import registry
    from pipeline_components.orchestration import monitoring

    cfg = registry.config_from_dict({"pipeline_root": str(tmp_path)})
    assert not cfg.monitoring.enabled
    caplog.set_level(logging.WARNING)
    assert monitoring.publish_run(cfg, {"run_id": "x", "status": "completed"}) == []
    assert monitoring.publish_step(cfg, "x", ["Trainer"]) == []
    assert not caplog.records


@pytest.mark.parametrize(
    "section, message",
    [
        ({"pushgateway": "pushgateway:9091"}, "monitoring.pushgateway: must be an http:// or"),
        ({"textfile": "/var/lib/node/metrics.txt"}, "monitoring.textfile: must be a path ending"),
        ({"textfile": "gs://b/m.prom"}, "monitoring.textfile: must be a local path"),
        ({"timeout_seconds": 0}, "monitoring.timeout_seconds: must be in (0, 120]"),
        ({"job": "a b"}, "monitoring.job: must be letters, digits and _"),
        ({"pushgatway": "http://x"}, "unknown key 'monitoring.pushgatway'"),
    ],
)
def test_monitoring_section_errors_are_one_line(section, message):
    from pipeline_components.core import registry
    from pipeline_components.core.errors import PipelineError

    with pytest.raises(PipelineError) as e:
        registry.config_from_dict({"monitoring": section}, source="p.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)
