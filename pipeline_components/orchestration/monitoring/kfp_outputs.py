"""What a Kubeflow Pipelines task shows in the KFP UI: its metrics as a `system.Metrics`
artifact, and for the gate (the producer of ModelBlessing) the run's report as a
`system.HTML` artifact (issue 32).

compile-kfp declares them as output artifacts of each task (`task_artifacts`) and passes
`step_args`: the artifacts' local paths (`{{$.outputs.artifacts['metrics'].path}}`, which the
launcher uploads) and KFP's executor input (`{{$}}`), whose `outputs.outputFile` is where a task
writes its ExecutorOutput: the launcher merges the metadata written there into the artifact it
registers (backend launcher_v2.go mergeRuntimeArtifacts), and the UI's "Scalar metrics" read a
Metrics artifact's metadata. `transfer-pipeline step` writes them after a successful execution
(`write_task_artifacts`); a failed task uploads no artifact anyway.

Light: the kfp SDK is imported only by `task_artifacts` (compile time).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from pipeline_components.core import artifacts

log = logging.getLogger(__name__)

METRICS = "metrics"  # the output artifact names, as the KFP UI lists them
REPORT = "report"


def reports(component: Any) -> bool:
    """The gate (producer of ModelBlessing) publishes the run's report."""
    return any(t.name == artifacts.MODEL_BLESSING.name for t in component.outputs.values())


def task_artifacts(component: Any) -> dict[str, Any]:
    """{output artifact name: kfp artifact class} of a component's task."""
    from kfp import dsl

    found: dict[str, Any] = {METRICS: dsl.Metrics}
    if reports(component):
        found[REPORT] = dsl.HTML
    return found


def step_args(values: dict[str, Any], names: dict[str, Any]) -> list[Any]:
    """The `transfer-pipeline step` flags that write them (values: the artifact placeholders)."""
    from kfp import dsl

    out: list[Any] = ["--metrics-artifact", values[METRICS].path]
    if REPORT in names:
        out += ["--html-artifact", values[REPORT].path]
    return [*out, "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-artifact", metavar="PATH", help="write the task's KFP Metrics here")
    p.add_argument("--html-artifact", metavar="PATH", help="write the run's report (KFP HTML)")
    p.add_argument(
        "--executor-input",
        metavar="JSON",
        help="KFP's executor input ({{$}}): where to write the artifacts' metadata",
    )


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def task_metrics(cfg: Any, component: str, entry: dict) -> dict[str, float]:
    """The numbers a task shows: its group's samples flattened (run_metrics.flat_values)."""
    from pipeline_components.orchestration.monitoring import run_metrics

    return run_metrics.flat_values(run_metrics.component_group(cfg.pipeline_name, component, entry))


def write_task_artifacts(
    args: argparse.Namespace, cfg: Any, component: str, entry: dict, run_id: str
) -> None:
    """After a step's execution: the Metrics artifact (and the report), and their metadata in
    the executor output. A failure here is a warning: the step's own outcome stands."""
    if not args.metrics_artifact and not args.html_artifact:
        return
    try:
        outputs: dict[str, Any] = {}
        if args.metrics_artifact:
            values = task_metrics(cfg, component, entry)
            _write(args.metrics_artifact, json.dumps(values, indent=1, sort_keys=True).encode())
            outputs[METRICS] = {"artifacts": [{"metadata": values}]}
        if args.html_artifact:
            from pipeline_components.orchestration import report
            from pipeline_components.orchestration.monitoring import history

            record = history.read_run(cfg.pipeline_root, run_id) or {}
            record.setdefault("run_id", run_id)
            record.setdefault("status", "running")
            _write(args.html_artifact, report.render(record).encode("utf-8"))
            outputs[REPORT] = {"artifacts": [{"metadata": {"run_id": run_id}}]}
        output_file = _output_file(args.executor_input)
        if output_file:
            _write(output_file, json.dumps({"artifacts": outputs}).encode())
    except Exception as e:
        log.warning(
            "monitoring: could not write the task's KFP artifacts: %s: %s", type(e).__name__, e
        )


def _output_file(executor_input: str | None) -> str | None:
    if not executor_input:
        return None
    found = (json.loads(executor_input).get("outputs") or {}).get("outputFile")
    return str(found) if found else None
