"""Execute a compiled KFP v2 spec without a cluster, the way the KFP v2 backend does.

The spec is read back with KFP's own protos (PipelineSpec, PlatformSpec). Each DAG's tasks run in
topological order; a task's inputs are resolved as the driver does (backend/src/v2/driver/
resolve.go: pipeline parameters, upstream task output parameters, runtime constants, of which
`{{$.pipeline_job_uuid}}` becomes the run's id); a task whose `triggerPolicy.condition` is false
does not run; a sub-DAG's outputs come from its producers, through `valueFromOneof` for
dsl.OneOf. A container's command and args get the launcher's substitutions
(backend/src/v2/component/launcher_v2.go, getPlaceholders): `{{$.inputs.parameters['x']}}`
with strings as they are, numbers by Go's strconv.FormatFloat(v, 'f', -1, 64), booleans as
true/false, lists and structs as JSON; `{{$.outputs.parameters['x'].output_file}}` with a file
whose content becomes the output (metadata.TextToPbValue); input parameter defaults are added
first (addDefaultParams). Output artifacts get a `minio://mlpipeline/v2/artifacts/...` URI as the
driver gives them and `{{$.outputs.artifacts['x'].path}}` its local path (LocalPathForURI:
`/minio/...`, under the work directory here); `{{$}}` the ExecutorInput as JSON, whose
`outputs.outputFile` (`<task root>/output_metadata.json`) a task may write: the launcher merges
the artifacts' metadata it holds into the artifacts it registers (mergeRuntimeArtifacts), kept
here in `LocalRun.artifacts`. The container runs as a subprocess; a failed one is retried up to
its retryPolicy's maxRetryCount (without the backoff's waiting).

Anything else (input artifacts, `{{$.pipeline_root}}`, IfPresent/Concat, a condition this
evaluator does not know) is not emulated: it raises NotEmulated, so a spec that needs it fails
the test instead of being run approximately.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline_components.core import children

PARAM = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
OUTPUT_FILE = re.compile(r"\{\{\$\.outputs\.parameters\['([^']+)'\]\.output_file\}\}")
ARTIFACT_PATH = re.compile(r"\{\{\$\.outputs\.artifacts\['([^']+)'\]\.path\}\}")
EXECUTOR_INPUT = "{{$}}"
RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"
Types = pipeline_spec_pb2.ParameterType.ParameterTypeEnum


class NotEmulated(AssertionError):
    """The spec uses something this executor cannot reproduce faithfully (a finding)."""


class TaskFailed(AssertionError):
    pass


def load(path: str | Path) -> tuple[Any, Any]:
    """(PipelineSpec, PlatformSpec or None) from a compiled YAML file, with KFP's protos."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
    platform = None
    if len(docs) > 1:
        platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return spec, platform


def go_format_float(value: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): shortest round-trip digits, never an exponent."""
    return np.format_float_positional(value, trim="-")


def placeholder_text(value: Any) -> str:
    """A resolved input parameter as the launcher writes it into a command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return go_format_float(float(value))
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    raise NotEmulated(f"input parameter value {value!r} of type {type(value).__name__}")


def parse_output(text: str, parameter_type: int) -> Any:
    """metadata.TextToPbValue: an output parameter file's content as a value of its type."""
    if parameter_type == Types.STRING:
        return text
    if parameter_type == Types.NUMBER_INTEGER:
        return int(text.strip())
    if parameter_type == Types.NUMBER_DOUBLE:
        return float(text.strip())
    if parameter_type == Types.BOOLEAN:
        if text.strip() not in ("true", "false"):
            raise TaskFailed(f"boolean output {text!r}")
        return text.strip() == "true"
    if parameter_type in (Types.LIST, Types.STRUCT):
        return json.loads(text)
    raise NotEmulated(f"output parameter type {parameter_type}")


_OPERAND = re.compile(r"inputs\.parameter_values\['([^']+)'\]")


def evaluate_condition(condition: str, values: dict[str, Any]) -> bool:
    """The CEL subset KFP's dsl.If/Elif/Else compile to: `!(...)`, `&&`, `||`, `==`, `!=`,
    comparisons of inputs.parameter_values['x'] with true/false, numbers or quoted strings."""
    text = condition.strip()
    if text.startswith("!(") and text.endswith(")") and _balanced(text[2:-1]):
        return not evaluate_condition(text[2:-1], values)
    if text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        return evaluate_condition(text[1:-1], values)
    for op, combine in (("||", any), ("&&", all)):
        parts = _split_top(text, op)
        if len(parts) > 1:
            return combine(evaluate_condition(p, values) for p in parts)
    m = re.fullmatch(r"(.+?)\s*(==|!=)\s*(.+)", text)
    if not m:
        raise NotEmulated(f"condition {condition!r}")
    left, right = _operand(m[1], values), _operand(m[3], values)
    return (left == right) if m[2] == "==" else (left != right)


def _operand(text: str, values: dict[str, Any]) -> Any:
    text = text.strip()
    m = _OPERAND.fullmatch(text)
    if m:
        return values[m[1]]
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"'[^']*'|\"[^\"]*\"", text):
        return text[1:-1]
    try:
        return float(text)
    except ValueError:
        raise NotEmulated(f"condition operand {text!r}") from None


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _split_top(text: str, op: str) -> list[str]:
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        ch = text[i]
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith(op, i):
            parts.append(text[start:i])
            start = i + len(op)
            i += len(op)
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


@dataclasses.dataclass
class Attempt:
    task: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class LocalRun:
    """One execution of a compiled spec."""

    spec: Any
    platform: Any
    workdir: Path
    executable: str = ""
    env: dict[str, str] | None = None
    # argv -> (exit code, stdout, stderr) instead of a subprocess (components registered only
    # in this process); None: a subprocess
    call: Callable[[list[str]], tuple[int, str, str]] | None = None
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    ran: list[str] = dataclasses.field(default_factory=list)  # task names, in order
    not_triggered: list[str] = dataclasses.field(default_factory=list)
    # task -> output artifact -> {"uri", "path", "schema_title", "metadata"} (as registered)
    artifacts: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.executors = json_format.MessageToDict(self.spec.deployment_spec)["executors"]
        self.k8s = {}
        if self.platform is not None and "kubernetes" in self.platform.platforms:
            k8s = json_format.MessageToDict(self.platform.platforms["kubernetes"])
            self.k8s = k8s.get("deploymentSpec", {}).get("executors", {})

    # -- the pipeline ---------------------------------------------------------------------

    def run(self, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run the pipeline with these parameter values (the rest: defaults); returns the
        pipeline's outputs."""
        root = self.spec.root
        values = {}
        for name, definition in root.input_definitions.parameters.items():
            if parameters and name in parameters:
                values[name] = parameters[name]
            elif definition.HasField("default_value"):
                values[name] = json_format.MessageToDict(definition.default_value)
            else:
                raise TaskFailed(f"pipeline parameter {name} has no value")
        unknown = set(parameters or {}) - set(values)
        if unknown:
            raise TaskFailed(f"unknown pipeline parameters {sorted(unknown)}")
        return self._dag(root, values, "root")

    def _dag(self, component: Any, inputs: dict[str, Any], scope: str) -> dict[str, Any]:
        tasks = dict(component.dag.tasks)
        results: dict[str, dict[str, Any] | None] = {}
        for name in _topological(tasks):
            task = tasks[name]
            resolved = {}
            for key, spec in task.inputs.parameters.items():
                resolved[key] = self._resolve(spec, inputs, results, name)
            for key, _ in task.inputs.artifacts.items():
                raise NotEmulated(f"task {name}: artifact input {key}")
            condition = task.trigger_policy.condition
            if condition and not evaluate_condition(condition, resolved):
                results[name] = None
                self.not_triggered.append(name)
                continue
            child = self.spec.components[task.component_ref.name]
            if child.HasField("dag"):
                results[name] = self._dag(child, resolved, name)
            else:
                results[name] = self._container(name, task, child, resolved)
        outputs = {}
        for key, spec in component.dag.outputs.parameters.items():
            if spec.HasField("value_from_parameter"):
                producer = results.get(spec.value_from_parameter.producer_subtask)
                if producer is not None:
                    outputs[key] = producer[spec.value_from_parameter.output_parameter_key]
            elif spec.HasField("value_from_oneof"):
                ran = [
                    results[s.producer_subtask][s.output_parameter_key]
                    for s in spec.value_from_oneof.parameter_selectors
                    if results.get(s.producer_subtask) is not None
                ]
                if len(ran) != 1:
                    raise TaskFailed(f"{scope}: dsl.OneOf {key} found {len(ran)} values")
                outputs[key] = ran[0]
            else:
                raise NotEmulated(f"{scope}: DAG output {key}")
        return outputs

    def _resolve(self, spec: Any, inputs: dict, results: dict, task: str) -> Any:
        kind = spec.WhichOneof("kind")
        if kind == "component_input_parameter":
            return inputs[spec.component_input_parameter]
        if kind == "task_output_parameter":
            producer = results[spec.task_output_parameter.producer_task]
            if producer is None:
                raise TaskFailed(f"{task} reads an output of a task that did not run")
            return producer[spec.task_output_parameter.output_parameter_key]
        if kind == "runtime_value":
            value = json_format.MessageToDict(spec.runtime_value.constant)
            if value == RUN_ID_PLACEHOLDER:
                return self.run_id
            if isinstance(value, str) and "{{$" in value:
                raise NotEmulated(f"{task}: runtime constant {value}")
            return value
        raise NotEmulated(f"{task}: input of kind {kind}")

    # -- one container ------------------------------------------------------------------

    def _container(self, name: str, task: Any, component: Any, inputs: dict) -> dict[str, Any]:
        executor = self.executors[component.executor_label]
        if "container" not in executor:
            raise NotEmulated(f"{name}: executor {component.executor_label}")
        container = executor["container"]
        self._check_platform(name, component.executor_label)
        values = dict(inputs)
        for key, definition in component.input_definitions.parameters.items():
            if key not in values and definition.HasField("default_value"):
                values[key] = json_format.MessageToDict(definition.default_value)
        out_dir = self.workdir / "outputs" / name
        files = {key: out_dir / key / "data" for key in component.output_definitions.parameters}
        artifacts = self._output_artifacts(name, component)
        executor_input = {
            "inputs": {"parameterValues": values},
            "outputs": {
                "parameters": {k: {"outputFile": str(f)} for k, f in files.items()},
                "artifacts": {
                    k: {"artifacts": [{"name": k, "uri": a["uri"], "metadata": {}}]}
                    for k, a in artifacts.items()
                },
                "outputFile": str(out_dir / "output_metadata.json"),
            },
        }

        def substitute(arg: str) -> str:
            if arg == EXECUTOR_INPUT:
                return json.dumps(executor_input)
            arg = PARAM.sub(lambda m: placeholder_text(values[m[1]]), arg)
            arg = OUTPUT_FILE.sub(lambda m: str(files[m[1]]), arg)
            arg = ARTIFACT_PATH.sub(lambda m: artifacts[m[1]]["path"], arg)
            if "{{$" in arg:
                raise NotEmulated(f"{name}: placeholder in {arg[:200]!r}")
            if arg.startswith(('{"IfPresent"', '{"Concat"')):
                raise NotEmulated(f"{name}: {arg[:60]}")
            return arg

        argv = [substitute(a) for a in [*container.get("command", []), *container.get("args", [])]]
        program = argv[0]
        if self.executable and program == "transfer-pipeline":
            program = self.executable
        retries = task.retry_policy.max_retry_count if task.HasField("retry_policy") else 0
        for _ in range(retries + 1):
            shutil.rmtree(out_dir, ignore_errors=True)
            for f in files.values():  # launcher_v2.go prepareOutputFolders
                f.parent.mkdir(parents=True, exist_ok=True)
            if self.call is not None:
                code, stdout, stderr = self.call(argv)
            else:
                proc = subprocess.run(  # the task dies with this launcher (core/children.py)
                    [program, *argv[1:]],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    **children.popen_options({**os.environ, **(self.env or {})}),
                )
                code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
            self.attempts.append(Attempt(name, argv, code, stdout, stderr))
            if code == 0:
                break
        else:
            tail = "\n".join(stderr.strip().splitlines()[-5:])
            raise TaskFailed(f"{name} failed (exit {code}) after {retries + 1} attempt(s):\n{tail}")
        self.ran.append(name)
        self.artifacts[name] = self._registered(artifacts, out_dir / "output_metadata.json")
        outputs = {}
        for key, definition in component.output_definitions.parameters.items():
            outputs[key] = parse_output(files[key].read_text(), definition.parameter_type)
        return outputs

    def _output_artifacts(self, task: str, component: Any) -> dict[str, dict]:
        """The driver's output artifacts: a URI under the default bucket, and the launcher's
        local path for it (LocalPathForURI: minio://b/k -> /minio/b/k, here in workdir)."""
        found = {}
        for key, definition in component.output_definitions.artifacts.items():
            uri = f"minio://mlpipeline/v2/artifacts/{self.run_id}/{task}/{key}"
            local = self.workdir / "minio" / uri.removeprefix("minio://")
            found[key] = {
                "uri": uri,
                "path": str(local),
                "schema_title": definition.artifact_type.schema_title,
                "metadata": {},
            }
        return found

    @staticmethod
    def _registered(artifacts: dict[str, dict], output_file: Path) -> dict[str, dict]:
        """What the launcher registers: each artifact with the metadata the task's
        ExecutorOutput gave it (launcher_v2.go getExecutorOutputFile, mergeRuntimeArtifacts)."""
        if not output_file.exists():
            return artifacts
        executor_output = pipeline_spec_pb2.ExecutorOutput()
        json_format.Parse(output_file.read_text(), executor_output)
        for key, listed in executor_output.artifacts.items():
            if key in artifacts and listed.artifacts:
                given = json_format.MessageToDict(listed.artifacts[0].metadata)
                artifacts[key]["metadata"].update(given)
        return artifacts

    def _check_platform(self, name: str, executor: str) -> None:
        """Volumes are the host's own directories here: a claim's mount path must exist."""
        for mount in self.k8s.get(executor, {}).get("pvcMount", []):
            if not Path(mount["mountPath"]).is_dir():
                raise TaskFailed(f"{name}: volume {mount['mountPath']} is not there")


def _topological(tasks: dict[str, Any]) -> list[str]:
    order: list[str] = []
    pending = dict(tasks)
    while pending:
        ready = [
            n for n, t in pending.items() if all(d in order for d in _dependencies(t) if d in tasks)
        ]
        if not ready:
            raise TaskFailed(f"tasks depend on each other in a cycle: {sorted(pending)}")
        for n in sorted(ready):
            order.append(n)
            del pending[n]
    return order


def _dependencies(task: Any) -> set[str]:
    deps = set(task.dependent_tasks)
    for spec in task.inputs.parameters.values():
        if spec.WhichOneof("kind") == "task_output_parameter":
            deps.add(spec.task_output_parameter.producer_task)
    return deps


def console_script(name: str = "transfer-pipeline") -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed")
    return found
