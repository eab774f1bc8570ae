"""Run metrics for Prometheus (issue 32, docs/monitoring.md): every `transfer-pipeline run` and
every `transfer-pipeline step` publishes, at its end, success or failure, `transfer_pipeline_*`
gauges to the sinks of pipeline.yaml's `monitoring:` section (settings.py).

    settings.py     the `monitoring:` section (a Pushgateway URL, a node-exporter textfile)
    history.py      values kept across runs, recomputed from run records and the registry
    run_metrics.py  the metric catalog and the groups (grouping keys) of one run
    sinks.py        the Pushgateway and the textfile, bounded in time, never failing a run
    kfp_outputs.py  a KFP task's Metrics artifact and the Evaluator's HTML report artifact

The two hooks below are what the runner and the step call; they never raise and take at most
about `monitoring.timeout_seconds` per sink. Light to import: prometheus_client is imported
only when something is published.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _settings(cfg: Any) -> Any:
    settings = cfg.sections.get("monitoring")
    return settings if settings is not None and settings.enabled else None


def publish_run(cfg: Any, record: dict) -> list[str]:
    """At the end of `transfer-pipeline run` (the record is final and saved): every group.
    Returns the warnings (already logged); never raises."""
    settings = _settings(cfg)
    if settings is None:
        return []
    try:
        from pipeline_components.orchestration.monitoring import history, run_metrics, sinks

        past = history.history(
            cfg.pipeline_root, cfg.serving_dir, cfg.model_name, settings.history_runs
        )
        groups = run_metrics.all_groups(cfg.pipeline_name, record, past, cfg.model_name)
    except Exception as e:  # metrics must never change a run's outcome
        line = f"monitoring: could not compute the run's metrics: {type(e).__name__}: {e}"
        log.warning("%s", line)
        return [line]
    return sinks.publish(settings, groups, groups)


def publish_step(cfg: Any, run_id: str, components: list[str]) -> list[str]:
    """At the end of `transfer-pipeline step` (its step records are final and saved): the
    groups of these components; when this step decides the run (a final failure, or the last
    component done), also the run group and `not_run` for the components it never reached.
    The textfile gets the whole run as its records stand. Never raises."""
    settings = _settings(cfg)
    if settings is None:
        return []
    try:
        from pipeline_components.orchestration.monitoring import history, run_metrics, sinks

        record = history.read_run(cfg.pipeline_root, run_id) or {"run_id": run_id}
        entries = record.get("components") or {}
        name = cfg.pipeline_name
        groups = [run_metrics.component_group(name, c, entries.get(c)) for c in components]
        past = history.history(
            cfg.pipeline_root, cfg.serving_dir, cfg.model_name, settings.history_runs
        )
        whole = run_metrics.all_groups(name, record, past, cfg.model_name)
        if _decided(cfg, record, components):
            others = set(entries) - set(components)  # their own tasks published them
            groups = [g for g in whole if g.key.get("component") not in others]
    except Exception as e:
        line = f"monitoring: could not compute the step's metrics: {type(e).__name__}: {e}"
        log.warning("%s", line)
        return [line]
    return sinks.publish(settings, groups, whole)


def _decided(cfg: Any, record: dict, components: list[str]) -> bool:
    """Whether the run's outcome is known now: every component done, or one of these failed
    for good (bad input is not retried; another failure once KFP's retries are used up)."""
    if record.get("status") == "completed":
        return True
    from pipeline_components.core import artifacts, fsutil

    for component in components:
        path = artifacts.step_record(cfg.pipeline_root, str(record.get("run_id")), component)
        if not fsutil.exists(path):
            continue
        step = fsutil.read_json(path, "step record")
        if step.get("status") != "failed":
            continue
        retries = getattr(cfg.sections.get("kfp"), "retries", 0)
        if step.get("permanent_error") or int(step.get("attempts") or 0) > retries:
            return True
    return False
