"""`transfer-pipeline step COMPONENT ...`: one component of a pipeline run, run as its own process
(a Kubeflow Pipelines task; `compile-kfp` writes these command lines into the spec).

It runs the component exactly as `transfer-pipeline run` does (runner.Pipeline.step): the same
cache key over its config section, its input artifacts' fingerprints and its external inputs; a
completed execution with that key under pipeline_root is reused, an interrupted resumable one
(the Trainer's) continues in place. So this project's execution records stay the source of
truth for caching, and a KFP run and `transfer-pipeline run` on one pipeline_root reuse each
other's executions.

    transfer-pipeline step Trainer --run-id RUN (--config pipeline.yaml | --config-text YAML)
        [--param trainer.epochs 20 ...]        run-time values of config keys (KFP parameters)
        [--input examples URI ...]             upstream artifacts ("" = its producer was skipped)
        [--output-param Trainer.model FILE ...] where to write each published value
    transfer-pipeline step InfraValidator Pusher --skip REASON --run-id RUN ...

Published values (`output_parameters`): each output artifact's URI (`<output>`), whether a
verdict output passed (`<output>_verdict`), and the component's `task_outputs`.

Records: `<pipeline_root>/runs/<run_id>/steps/<Component>.json` (artifacts.step_record), one per
component, plus the usual execution records. Kubeflow Pipelines retries a failed task whatever
its exit code, so a step that failed on bad input (PipelineError: exit 1, or 2 for a bad
command line) records it, and a retry of it in the same run fails at once with the same message
instead of repeating the work; any other failure (an unexpected exception, an out-of-memory
kill, SIGTERM on preemption) is retried in full, a resumable component (the Trainer) continuing
its interrupted execution.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from pipeline_components.core import artifacts, commandline, fsutil, locking, registry
from pipeline_components.core import config as config_lib
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.commandline import UsageError
from pipeline_components.core.component import Component
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import monitoring, runner
from pipeline_components.orchestration.executions import now
from pipeline_components.orchestration.monitoring import kfp_outputs

log = logging.getLogger(__name__)

VERDICT_SUFFIX = "_verdict"
ZERO: dict[type, Any] = {bool: False, int: 0, float: 0.0, str: ""}


# ------------------------------------------------------------------------ published values


def output_parameters(component: Component) -> dict[str, type]:
    """{name: type} of the values a step publishes: each output's URI, each verdict output's
    verdict, then the component's `task_outputs`."""
    published: dict[str, type] = {}
    for name, artifact_type in component.outputs.items():
        published[name] = str
        if artifact_type.verdict is not None:
            published[name + VERDICT_SUFFIX] = bool
    for key, tp in component.task_outputs.items():
        if key in published:
            raise PipelineError(
                f"{component.name}: task output {key!r} has the name of an output artifact"
            )
        if tp not in ZERO:
            raise PipelineError(
                f"{component.name}: task output {key!r} must be bool, int, "
                f"float or str, not {getattr(tp, '__name__', tp)}"
            )
        published[key] = tp
    return published


def output_values(component: Component, entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """The published values of one execution entry (zero values when it did not run)."""
    types = output_parameters(component)
    values = {name: ZERO[tp] for name, tp in types.items()}
    if not entry or entry.get("status") not in ("completed", "cached"):
        return values
    outputs = entry.get("outputs") or {}
    for name, artifact_type in component.outputs.items():
        uri = outputs.get(name, "")
        values[name] = uri
        if artifact_type.verdict is not None and uri:
            values[name + VERDICT_SUFFIX] = bool(artifact_type.verdict(uri))
    result = entry.get("result") or {}
    for key, tp in component.task_outputs.items():
        if result.get(key) is not None:
            values[key] = tp(result[key])
    return values


def format_value(value: Any) -> str:
    """As Kubeflow Pipelines reads an output parameter file of that type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, float) else repr(value)


# ------------------------------------------------------------------------------- config


def field_type(key: str) -> Any:
    """The declared type of a dotted config key (`data_root`, `trainer.epochs`)."""
    section, _, field = key.partition(".")
    if not field:
        if section not in config_lib.CORE_FIELDS:
            raise UsageError(f"--param {key}: not a config key")
        return typing.get_type_hints(PipelineConfig)[section]
    classes = registry.section_classes()
    if section not in classes or "." in field:
        raise UsageError(f"--param {key}: not a config key")
    hints = typing.get_type_hints(classes[section])
    if field not in hints:
        raise UsageError(f"--param {key}: not a config key")
    return hints[field]


def apply_parameters(data: dict, params: list[list[str]]) -> dict:
    """Run-time values of config keys, as KFP substitutes its parameters: a string-typed key
    takes the text as it is, any other key its YAML value (numbers, true/false, null, lists)."""
    for key, text in params:
        value: Any = text
        if field_type(key) is not str:
            config_lib.apply_overrides(data, [f"{key}={text}"], source="--param")
            continue
        section, _, field = key.partition(".")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return data


def config_data(path: str | None, text: str | None) -> tuple[dict, str]:
    """The config's content (before parameters) and where it came from."""
    if text is not None:
        try:
            data = config_lib.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"--config-text is not valid YAML: {e}") from None
        source = "--config-text"
    else:
        data = config_lib.load_yaml(path or "")
        source = path or ""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping at the top level")
    return data, source


# ------------------------------------------------------------------------------- records


class StepRun(runner.Run):
    """runner.Run whose record is one component's file in a run made of separate tasks."""

    def __init__(
        self,
        cfg: PipelineConfig,
        run_id: str,
        component: str,
        config_path: str,
        lock: locking.PipelineLock | None = None,
    ):
        self.cfg, self.force, self.lock = cfg, False, lock
        self.root = cfg.pipeline_root
        self.run_id = run_id
        self.run_dir = artifacts.run_dir(self.root, run_id)
        self.record_path = artifacts.step_record(self.root, run_id, component)
        if fsutil.exists(self.record_path):
            self.record = fsutil.read_json(self.record_path, "step record")
        else:
            self.record = {
                "run_id": run_id,
                "pipeline_name": cfg.pipeline_name,
                "component": component,
                "started": now(),
                "code_version": runner.__version__,
                "config_path": config_path,
                "config": config_lib.to_dict(cfg),
                "components": {},
                "attempts": 0,
            }
        fsutil.makedirs(fsutil.parent(self.record_path))

    def finish(self, status: str) -> None:
        self.record["status"] = status
        self.record["finished"] = now()
        self.save()


def remember_failure(root: str, run_id: str, component: str, error: PipelineError) -> None:
    """Record that this step failed on bad input, so that KFP's retries of it fail at once."""
    path = artifacts.step_record(root, run_id, component)
    record = fsutil.read_json(path, "step record") if fsutil.exists(path) else {}
    record.update(
        run_id=run_id,
        component=component,
        status="failed",
        finished=now(),
        permanent_error=str(error),
        exit_code=error.exit_code,
    )
    fsutil.makedirs(fsutil.parent(path))
    fsutil.write_json(path, record)


def refuse_repeat(root: str, run_id: str, component: str) -> None:
    """Fail at once when an earlier attempt of this step in this run failed on bad input."""
    path = artifacts.step_record(root, run_id, component)
    if not fsutil.exists(path):
        return
    record = fsutil.read_json(path, "step record")
    if record.get("permanent_error"):
        error = PipelineError(
            f"{record['permanent_error']} (this step failed on bad input in an earlier attempt "
            f"of run {run_id}; not retried)"
        )
        error.exit_code = int(record.get("exit_code", 1))
        raise error


def write_outputs(files: Mapping[str, str], values: Mapping[str, Any]) -> None:
    for key, path in files.items():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(format_value(values[key]))


def _output_files(pairs: list[list[str]], components: list[Component]) -> dict[str, str]:
    """`Component.key` -> file, every key one of a named component's published values."""
    known = {f"{c.name}.{k}" for c in components for k in output_parameters(c)}
    files = {}
    for key, path in pairs:
        if key not in known:
            raise UsageError(f"--output-param {key}: not one of {sorted(known)}")
        files[key] = path
    return files


# ---------------------------------------------------------------------------------- main


def run_step(
    cfg: PipelineConfig,
    component: Component,
    run_id: str,
    inputs: Mapping[str, str],
    config_path: str = "",
) -> dict:
    """Run (or reuse) one component in run `run_id`; returns its entry."""
    refuse_repeat(cfg.pipeline_root, run_id, component.name)
    # one writer per pipeline_root, as for `run`: a task holds the lock while it runs
    command = f"transfer-pipeline step {component.name}"
    with locking.hold(cfg.pipeline_root, run_id, command) as lock:
        try:
            return _run_step_locked(cfg, component, run_id, inputs, config_path, lock)
        finally:  # issue 32: its metrics, success or failure; never raises, bounded in time
            monitoring.publish_step(cfg, run_id, [component.name])


def _run_step_locked(
    cfg: PipelineConfig,
    component: Component,
    run_id: str,
    inputs: Mapping[str, str],
    config_path: str,
    lock: locking.PipelineLock,
) -> dict:
    run = StepRun(cfg, run_id, component.name, config_path, lock)
    run.record["attempts"] = int(run.record.get("attempts", 0)) + 1
    run.record["status"] = "running"
    run.save()
    pipeline = runner.Pipeline(cfg, run)
    for name, uri in inputs.items():
        spec = component.inputs.get(name)
        if spec is None:
            raise UsageError(f"--input {name}: {component.name} has no input {name!r}")
        if uri:
            pipeline.artifacts[spec.type.name] = Artifact(spec.type, uri)
        else:
            pipeline.skipped[spec.type.name] = "its producer did not run"
    try:
        if component.config_section:
            component.preflight(component.section_of(cfg))
        order = [c.name for c in registry.pipeline_order()]
        index = order.index(component.name) + 1 if component.name in order else 1
        pipeline.step(component, (index, len(order)))
    except PipelineError as e:
        run.finish("failed")
        remember_failure(cfg.pipeline_root, run_id, component.name, e)
        raise
    except BaseException:
        run.finish("failed")  # transient: a retry runs it again
        raise
    entry = run.record["components"][component.name]
    if entry.get("status") in ("completed", "cached"):
        run.record.update(component.record_fields(entry))
    run.finish(entry.get("status", "completed"))
    return entry


def skip_steps(
    cfg: PipelineConfig, components: list[Component], run_id: str, reason: str, config_path: str
) -> None:
    for component in components:
        run = StepRun(cfg, run_id, component.name, config_path)
        run.skip(component.name, reason)
        run.finish("skipped")
    monitoring.publish_step(cfg, run_id, [c.name for c in components])  # issue 32


def build_parser() -> argparse.ArgumentParser:
    p = commandline.new_parser(
        "step",
        "Run one pipeline component as its own task (a Kubeflow Pipelines step), cached and "
        "recorded like `transfer-pipeline run`.",
        "KEY=VALUE: config overrides, YAML values, after --param; a bare key=value means the "
        "step's component's section.",
    )
    p.add_argument(
        "items", nargs="+", metavar="COMPONENT|KEY=VALUE", help="component name(s), overrides"
    )
    p.add_argument("--run-id", required=True, help="the run this step belongs to")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help=commandline.CONFIG_HELP)
    source.add_argument("--config-text", help="pipeline.yaml's content (the KFP spec carries it)")
    p.add_argument("--param", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    p.add_argument("--input", nargs=2, action="append", default=[], metavar=("NAME", "URI"))
    p.add_argument(
        "--output-param", nargs=2, action="append", default=[], metavar=("COMPONENT.KEY", "FILE")
    )
    p.add_argument("--skip", metavar="REASON", help="record the components as skipped")
    kfp_outputs.add_arguments(p)  # issue 32: the task's KFP Metrics / HTML artifacts
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_intermixed_args(argv)
    args.components = [i for i in args.items if "=" not in i]
    args.overrides = [i for i in args.items if "=" in i]
    if not args.components:
        p.error("name the component to run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    try:
        components = [registry.get(name) for name in args.components]
    except KeyError as e:
        known = ", ".join(c.name for c in registry.pipeline_order())
        raise UsageError(f"unknown component {e.args[0]!r} (known: {known})") from None
    if not args.run_id.strip():
        raise UsageError("--run-id is empty")
    if args.skip is None and len(components) != 1:
        raise UsageError("one component per step (several only with --skip)")
    files = _output_files(args.output_param, components)
    data, source = config_data(args.config, args.config_text)
    root = str(data.get("pipeline_root") or PipelineConfig().pipeline_root)
    if args.skip is None:
        refuse_repeat(root, args.run_id, components[0].name)
    own = components[0].config_section if len(components) == 1 else None
    try:
        data = apply_parameters(data, args.param)
        sections = registry.section_classes()
        overrides = [commandline.qualify(o, own, sections) for o in args.overrides]
        config_lib.apply_overrides(data, overrides)
        cfg = registry.config_from_dict(data, source=source)
    except PipelineError as e:  # a bad run-time parameter fails every retry alike
        if args.skip is None:
            remember_failure(root, args.run_id, components[0].name, e)
        raise
    config_path = args.config or "(carried in the pipeline spec)"
    if args.skip is not None:
        skip_steps(cfg, components, args.run_id, args.skip, config_path)
        values = {f"{c.name}.{k}": v for c in components for k, v in output_values(c, None).items()}
        write_outputs(files, values)
        print(f"skipped {', '.join(c.name for c in components)}: {args.skip}")
        return 0
    (component,) = components
    entry = run_step(cfg, component, args.run_id, dict(args.input), config_path)
    values = {f"{component.name}.{k}": v for k, v in output_values(component, entry).items()}
    write_outputs(files, values)
    kfp_outputs.write_task_artifacts(args, cfg, component.name, entry, args.run_id)  # issue 32
    line = component.summary(entry) if entry.get("status") != "skipped" else entry.get("reason")
    print(f"{component.name}: {entry.get('status')}" + (f": {line}" if line else ""))
    return 0
