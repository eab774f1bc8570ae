"""`transfer-pipeline compile-kfp`: the pipeline as a Kubeflow Pipelines v2 spec (also what Vertex
AI Pipelines runs), one container task per registered component, in this project's image.

    transfer-pipeline compile-kfp --config pipeline.yaml --image IMAGE --output pipeline.kfp.yaml
        [key=value ...]

Derived from the component contract alone (core/registry.py), so a new component appears without
an edit here:

- one task per component in `registry.pipeline_order()`, running `transfer-pipeline step <name>`
  (orchestration/step.py): the same execution, cache key and records as `transfer-pipeline run`;
- a component that must run after another without reading its output (`runs_before`, see
  `registry.upstream()`) gets an explicit `.after()` edge;
- each input is the upstream task's output parameter holding the artifact's URI under the
  project's pipeline_root (gs://, or a PersistentVolumeClaim mounted into every task:
  `kfp.volumes`), so the KFP graph and each task's inputs and outputs show the lineage; the
  artifacts stay where the component wrote them (no copy through KFP's object store);
- a component that requires a verdict input (a blessing, `Component.gates()`) runs under
  `dsl.If(<producer>.<output>_verdict == True)`, with a `dsl.Else` task that records it as
  skipped; components gated alike share one condition;
- `task_outputs` and verdicts become pipeline outputs (`pusher_version`, ...), through
  `dsl.OneOf` for gated components (the Else branch publishes zero values);
- every config option is a pipeline parameter (`data_root`, `trainer_epochs`,
  `evaluator_min_accuracy`, ...) whose default is the config's value; options that are not a
  plain bool/int/float/str (nullable, lists, sub-sections) are YAML text;
- resources per step from `kfp.resources`; the GPU, node selector and toleration only for
  components that declare `gpu = True`; retries with backoff from `kfp.retries`; KFP's cache off
  (the project's own cache keys decide reuse, see README).

The kfp SDK is imported only here (the `kfp` extra); the runtime image needs none of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import posixpath
import re
import tempfile
import typing
from collections.abc import Callable
from typing import Any

import yaml

from pipeline_components.core import commandline, registry
from pipeline_components.core import config as config_lib
from pipeline_components.core.component import Component
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import step as step_lib
from pipeline_components.orchestration.kfp_settings import KfpConfig
from pipeline_components.orchestration.monitoring import kfp_outputs

COMMAND = "transfer-pipeline"
RUN_ID = "run_id"  # every task's input fed {{$.pipeline_job_uuid}}
# Parameters a run may set: the data to read, where to serve. pipeline_root and pipeline_name
# stay compile-time: the volumes and the records are laid out for them.
CORE_PARAMETERS = ("data_root", "serving_dir", "model_name")
# What each path is written or read with in the image: TensorFlow (gs://; TF 2.21 has no
# s3://) for pipeline_root and serving_dir, Beam (gs://, s3:// with the aws extra) for data.
REMOTE_SCHEMES = {"pipeline_root": {"gs"}, "serving_dir": {"gs"}, "data_root": {"gs", "s3"}}
# A container image reference: [registry[:port]/]path[:tag][@sha256:digest].
IMAGE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
PIPELINE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,126}[a-z0-9])?")
SHM_VOLUME = "dshm"


# --------------------------------------------------------------------------------- checks


def check_image(image: str | None) -> str:
    if not image:
        raise PipelineError("no image: pass --image IMAGE or set kfp.image in pipeline.yaml")
    if not IMAGE.fullmatch(image):
        raise PipelineError(f"image {image!r} is not a container image reference")
    return image


def mount_of(path: str, volumes: dict[str, str]) -> str | None:
    """The claim whose mount path holds `path` (the deepest), or None."""
    path = posixpath.normpath(path)
    found = [
        (len(mount), claim)
        for claim, mount in volumes.items()
        if path == posixpath.normpath(mount)
        or path.startswith(posixpath.normpath(mount).rstrip("/") + "/")
    ]
    return max(found)[1] if found else None


def check_reachable(cfg: PipelineConfig, source: str) -> None:
    """Every path a task reads or writes must be reachable from any node: a bucket the image can
    use, or an absolute path on a volume mounted into every task."""
    kfp = cfg.section("kfp", KfpConfig)
    for key, schemes in REMOTE_SCHEMES.items():
        path = getattr(cfg, key)
        if path.startswith("file://"):
            path = path[len("file://") :]
        if "://" in path:
            scheme = path.split("://", 1)[0]
            if scheme not in schemes:
                raise PipelineError(
                    f"{source}: {key}={path}: unreachable from a KFP task (the image reads and "
                    f"writes {' and '.join(s + '://' for s in sorted(schemes))} for it)"
                )
            continue
        if not posixpath.isabs(path):
            raise PipelineError(
                f"{source}: {key}={path}: unreachable from a KFP task (a relative path); use "
                "gs:// or an absolute path on a volume in kfp.volumes"
            )
        if mount_of(path, kfp.volumes) is None:
            mounts = ", ".join(f"{c}:{m}" for c, m in kfp.volumes.items()) or "none"
            raise PipelineError(
                f"{source}: {key}={path}: unreachable from a KFP task: on no volume in "
                f"kfp.volumes (mounted: {mounts}); add the claim that holds it or use gs://"
            )


# ------------------------------------------------------------------------------ the layout


@dataclasses.dataclass(frozen=True)
class Gate:
    """A verdict output a component runs under: `producer`'s output `output`."""

    producer: str
    output: str

    @property
    def parameter(self) -> str:
        return self.output + step_lib.VERDICT_SUFFIX


@dataclasses.dataclass
class Step:
    component: Component
    gates: tuple[Gate, ...]  # nested conditions, outermost first
    sources: dict[str, tuple[str, str]]  # input name -> (producer, output name)


def plan(components: list[Component]) -> list[Step]:
    """Each component's upstream outputs and the verdicts it runs under. A required input's
    producer's conditions are inherited (its artifact exists only when that producer ran)."""
    index = {c.name: i for i, c in enumerate(components)}
    producers: dict[str, tuple[str, str]] = {}
    steps: dict[str, Step] = {}
    for component in components:
        sources: dict[str, tuple[str, str]] = {}
        gates: set[Gate] = set()
        for name, spec in component.inputs.items():
            source = producers.get(spec.type.name)
            if source is None:
                continue  # nothing produces it: the step records why it did not run
            sources[name] = source
            if not spec.optional:
                gates |= set(steps[source[0]].gates)
                if spec.type.verdict is not None:
                    gates.add(Gate(*source))
        ordered = tuple(sorted(gates, key=lambda g: (index[g.producer], g.output)))
        for name, (producer, _) in sources.items():
            upstream = steps[producer].gates
            if ordered[: len(upstream)] != upstream:
                raise PipelineError(
                    f"{component.name}.{name} reads {producer}'s output, which runs under other "
                    "conditions: KFP cannot express this dependency"
                )
        steps[component.name] = Step(component, ordered, sources)
        for name, artifact_type in component.outputs.items():
            producers[artifact_type.name] = (component.name, name)
    return list(steps.values())


def kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def snake(name: str) -> str:
    return kebab(name).replace("-", "_")


# ----------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str  # the KFP pipeline parameter: data_root, trainer_epochs, ...
    key: str  # the config key: data_root, trainer.epochs, ...
    type: type  # bool, int, float or str
    default: Any


def yaml_text(value: Any) -> str:
    """A value as one line of YAML (flow style), as a run-time parameter's text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()


def parameters(cfg: PipelineConfig, components: list[Component]) -> list[Parameter]:
    """Every option a run may change, with the config's value as its default."""
    found = [Parameter(key, key, str, getattr(cfg, key)) for key in CORE_PARAMETERS]
    for component in components:
        section = component.config_section
        if not section:
            continue
        obj = component.section_of(cfg)
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            tp = hints[f.name]
            if tp in (bool, int, float, str):
                found.append(Parameter(f"{section}_{f.name}", f"{section}.{f.name}", tp, value))
            else:  # nullable, a list or a sub-section: YAML text
                text = yaml_text(value)
                found.append(Parameter(f"{section}_{f.name}", f"{section}.{f.name}", str, text))
    names = [p.name for p in found]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PipelineError(f"two config keys become the same KFP parameter: {clash}")
    return found


def config_text(cfg: PipelineConfig) -> str:
    """The resolved config every task starts from, settings sections included: a task
    publishes its metrics where `monitoring:` says, and knows from `kfp.retries` whether its
    failure is final (issue 32)."""
    data = config_lib.to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 30)


# -------------------------------------------------------------------------------- compile


def _kfp() -> Any:
    try:
        import kfp
        from kfp import kubernetes  # noqa: F401  (kfp-kubernetes)
    except ImportError:
        raise PipelineError(
            "compile-kfp needs the kfp extra: pip install '.[kfp]' in a clone of this repository"
        ) from None
    return kfp


def _signature(names: dict[str, Any]) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind, annotation=t) for n, t in names.items()])


def container_component(
    name: str,
    description: str,
    inputs: dict[str, type],
    outputs: dict[str, type],
    image: str,
    args: Callable[[dict[str, Any]], list[Any]],
    artifacts: dict[str, Any] | None = None,
) -> Any:
    """A kfp container component with these inputs, output parameters and output artifacts
    ({name: dsl artifact class}) (built at run time: the set of components and options is the
    registry's, not written down here)."""
    from kfp import dsl

    artifacts = artifacts or {}
    clash = (set(inputs) & set(outputs)) | (set(artifacts) & (set(inputs) | set(outputs)))
    if clash:
        raise PipelineError(f"{name}: {sorted(clash)} is both an input and an output")
    names = [*inputs, *outputs, *artifacts]

    def body(*values: Any) -> Any:
        return dsl.ContainerSpec(
            image=image, command=[COMMAND], args=args(dict(zip(names, values, strict=True)))
        )

    body.__signature__ = _signature(  # type: ignore[attr-defined]
        {
            **inputs,
            **{k: dsl.OutputPath(t) for k, t in outputs.items()},
            **{k: dsl.Output[t] for k, t in artifacts.items()},
        }
    )
    body.__name__ = body.__qualname__ = name
    body.__doc__ = description
    return dsl.container_component(body)


class Builder:
    """Builds the pipeline's tasks inside a `dsl.pipeline` function."""

    def __init__(self, cfg: PipelineConfig, image: str, components: list[Component]):
        self.cfg, self.image = cfg, image
        self.kfp_cfg = cfg.section("kfp", KfpConfig)
        self.steps = plan(components)
        self.params = parameters(cfg, components)
        self.config_text = config_text(cfg)
        self.tasks: dict[str, Any] = {}
        self.outputs: dict[str, tuple[type, Any]] = {}  # pipeline output -> (type, channel)
        self.after = registry.upstream()  # component -> the components it runs after
        for s in self.steps:
            step_lib.output_parameters(s.component)  # a bad task_outputs fails here, at once
            clash = set(s.component.inputs) & ({RUN_ID} | {p.name for p in self.params})
            if clash:
                raise PipelineError(f"{s.component.name}: input {sorted(clash)} is a parameter")

    # -- commands ------------------------------------------------------------------------

    def _common_args(self, values: dict[str, Any]) -> list[Any]:
        args: list[Any] = ["--run-id", values[RUN_ID], "--config-text", self.config_text]
        for p in self.params:
            args += ["--param", p.key, values[p.name]]
        return args

    def _task_inputs(self, params: dict[str, Any]) -> dict[str, Any]:
        from kfp import dsl

        return {RUN_ID: dsl.PIPELINE_JOB_ID_PLACEHOLDER, **params}

    def _settings(self, task: Any, name: str, gpu: bool) -> Any:
        from kfp import kubernetes

        k = self.kfp_cfg
        res = k.resources_for(name, gpu)
        task.set_caching_options(False)  # see README: this project's cache keys decide reuse
        task.set_retry(
            num_retries=k.retries,
            backoff_duration=f"{k.retry_backoff_seconds}s",
            backoff_factor=k.retry_backoff_factor,
            backoff_max_duration=f"{k.retry_backoff_max_seconds}s",
        )
        task.set_cpu_request(f"{round(res.cpu * 1000)}m")
        if res.cpu_limit is not None:
            task.set_cpu_limit(f"{round(res.cpu_limit * 1000)}m")
        memory = f"{round(res.memory_gib * 1024)}Mi"
        task.set_memory_request(memory).set_memory_limit(memory)
        if res.shm_gib > 0:
            kubernetes.empty_dir_mount(
                task,
                SHM_VOLUME,
                "/dev/shm",
                medium="Memory",
                size_limit=f"{round(res.shm_gib * 1024)}Mi",
            )
        kubernetes.set_timeout(task, round(res.timeout_hours * 3600))
        for claim, mount in k.volumes.items():
            kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount)
        if gpu:
            task.set_accelerator_type(k.gpu.accelerator_type)
            task.set_accelerator_limit(k.gpu.count)
            task.set_env_variable("TF_FORCE_GPU_ALLOW_GROWTH", "true")
            for label, value in k.gpu.node_selector.items():
                kubernetes.add_node_selector(task, label, value)
            if k.gpu.toleration_key:
                kubernetes.add_toleration(
                    task, key=k.gpu.toleration_key, operator="Exists", effect="NoSchedule"
                )
        return task

    # -- tasks ---------------------------------------------------------------------------

    def add_step(self, s: Step, params: dict[str, Any]) -> None:
        c = s.component
        published = step_lib.output_parameters(c)
        inputs: dict[str, type] = {RUN_ID: str, **{p.name: p.type for p in self.params}}
        inputs.update({name: str for name in s.sources})

        shown = kfp_outputs.task_artifacts(c)  # issue 32: its Metrics (and HTML) artifacts

        def args(values: dict[str, Any]) -> list[Any]:
            out: list[Any] = ["step", c.name, *self._common_args(values)]
            for name in s.sources:
                out += ["--input", name, values[name]]
            for key in published:
                out += ["--output-param", f"{c.name}.{key}", values[key]]
            return out + kfp_outputs.step_args(values, shown)

        op = container_component(
            kebab(c.name), c.description, inputs, published, self.image, args, shown
        )
        upstream = {
            name: self.tasks[producer].outputs[output]
            for name, (producer, output) in s.sources.items()
        }
        task = op(**self._task_inputs(params), **upstream)
        # ordering without data flow (registry.upstream: a validator's `runs_before`): the
        # task waits for those components too, so a failing validation stops the DAG there
        fed = {producer for producer, _ in s.sources.values()}
        for name in sorted(self.after.get(c.name, set()) - fed):
            if name in self.tasks:
                task.after(self.tasks[name])
        task.set_display_name(c.name)
        self._settings(task, c.name, c.gpu)
        self.tasks[c.name] = task

    def add_skip(self, gate: Gate, skipped: list[Step], params: dict[str, Any]) -> Any:
        """The Else branch: records `skipped` as not run and publishes their zero values."""
        names = [s.component.name for s in skipped]
        reason = f"{gate.producer}'s {gate.output} did not pass"
        published = {
            self.output_name(s, key): (s, key, tp)
            for s in skipped
            for key, tp in step_lib.output_parameters(s.component).items()
            if self.is_pipeline_output(s, key)
        }
        inputs: dict[str, type] = {RUN_ID: str, **{p.name: p.type for p in self.params}}

        def args(values: dict[str, Any]) -> list[Any]:
            out: list[Any] = ["step", *names, "--skip", reason, *self._common_args(values)]
            for name, (s, key, _) in published.items():
                out += ["--output-param", f"{s.component.name}.{key}", values[name]]
            return out

        op = container_component(
            f"skip-unless-{kebab(gate.producer)}-{gate.output.replace('_', '-')}",
            f"record {', '.join(names)} as skipped: {reason}",
            inputs,
            {name: tp for name, (_, _, tp) in published.items()},
            self.image,
            args,
        )
        task = op(**self._task_inputs(params))
        task.set_display_name(f"skipped: {', '.join(names)}")
        return self._settings(task, "default", False)

    # -- pipeline outputs ---------------------------------------------------------------

    @staticmethod
    def output_name(s: Step, key: str) -> str:
        return f"{snake(s.component.name)}_{key}"

    @staticmethod
    def is_pipeline_output(s: Step, key: str) -> bool:
        """Task outputs and verdicts, of components under at most one condition (KFP cannot
        nest dsl.OneOf)."""
        published = key in s.component.task_outputs or key.endswith(step_lib.VERDICT_SUFFIX)
        return published and len(s.gates) <= 1

    # -- the graph -----------------------------------------------------------------------

    def build(self, params: dict[str, Any]) -> None:
        self._block((), params)
        for s in self.steps:
            if not s.gates:
                for key, tp in step_lib.output_parameters(s.component).items():
                    if self.is_pipeline_output(s, key):
                        channel = self.tasks[s.component.name].outputs[key]
                        self.outputs[self.output_name(s, key)] = (tp, channel)

    def _block(self, gates: tuple[Gate, ...], params: dict[str, Any]) -> None:
        from kfp import dsl

        for s in self.steps:
            if s.gates == gates:
                self.add_step(s, params)
        children: list[Gate] = []
        for s in self.steps:
            if len(s.gates) > len(gates) and s.gates[: len(gates)] == gates:
                gate = s.gates[len(gates)]
                if gate not in children:
                    children.append(gate)
        for gate in children:
            inner = (*gates, gate)
            skipped = [s for s in self.steps if s.gates[: len(inner)] == inner]
            verdict = self.tasks[gate.producer].outputs[gate.parameter]
            label = f"{kebab(gate.producer)}-{gate.output.replace('_', '-')}"
            with dsl.If(verdict == True, name=f"{label}-passed"):  # noqa: E712 (a KFP condition)
                self._block(inner, params)
            with dsl.Else(name=f"{label}-failed"):
                skip = self.add_skip(gate, skipped, params)
            for s in skipped:
                if len(s.gates) != 1:
                    continue
                for key, tp in step_lib.output_parameters(s.component).items():
                    if self.is_pipeline_output(s, key):
                        name = self.output_name(s, key)
                        ran = self.tasks[s.component.name].outputs[key]
                        self.outputs[name] = (tp, dsl.OneOf(ran, skip.outputs[name]))


def pipeline_function(cfg: PipelineConfig, image: str, components: list[Component]) -> Any:
    """The `dsl.pipeline` for this config: parameters with the config's values as defaults,
    outputs the published values."""
    from kfp import dsl

    builder = Builder(cfg, image, components)
    # The pipeline's outputs, named before the graph is built (KFP reads the signature first).
    names: dict[str, type] = {}
    for s in builder.steps:
        for key, tp in step_lib.output_parameters(s.component).items():
            if builder.is_pipeline_output(s, key):
                names[builder.output_name(s, key)] = tp
    outputs_type: Any = (
        typing.NamedTuple("Outputs", list(names.items())) if names else inspect.Signature.empty
    )
    order = [p.name for p in builder.params]

    def body(*values: Any) -> Any:
        builder.build(dict(zip(order, values, strict=True)))
        if not names:
            return None
        return outputs_type(**{n: builder.outputs[n][1] for n in names})

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(p.name, kind, default=p.default, annotation=p.type)
            for p in builder.params
        ],
        return_annotation=outputs_type,
    )
    body.__name__ = body.__qualname__ = cfg.pipeline_name
    root = cfg.pipeline_root if cfg.pipeline_root.startswith("gs://") else None
    return dsl.pipeline(
        name=cfg.pipeline_name,
        description=" -> ".join(c.name for c in components) + " (transfer-pipeline)",
        pipeline_root=root.rstrip("/") + "/kfp" if root else None,
    )(body)


def compile_pipeline(cfg: PipelineConfig, image: str | None, output: str, source: str) -> dict:
    """Write the KFP v2 spec of `cfg` to `output`; returns a summary."""
    image = check_image(image or cfg.section("kfp", KfpConfig).image)
    if not PIPELINE_NAME.fullmatch(cfg.pipeline_name):
        raise PipelineError(
            f"{source}: pipeline_name={cfg.pipeline_name!r}: KFP needs lowercase letters, digits "
            "and '-'"
        )
    check_reachable(cfg, source)
    kfp = _kfp()
    components = registry.pipeline_order()
    func = pipeline_function(cfg, image, components)
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise PipelineError(f"--output {output}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix=".compile-kfp-", dir=directory)
    os.close(fd)
    try:
        kfp.compiler.Compiler().compile(func, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    steps = plan(components)
    return {
        "output": output,
        "image": image,
        "steps": [
            {
                "component": s.component.name,
                "gpu": s.component.gpu,
                "runs_if": [f"{g.producer}.{g.parameter}" for g in s.gates],
            }
            for s in steps
        ],
        "parameters": len(parameters(cfg, components)),
    }


def parser() -> argparse.ArgumentParser:
    p = commandline.new_parser(
        "compile-kfp",
        "Compile the pipeline to a Kubeflow Pipelines v2 spec (also runs on Vertex AI "
        "Pipelines): one container task per component.",
    )
    commandline.add_config_arguments(p, "kfp", required=True)
    p.add_argument("--image", help="the project's image (default: kfp.image)")
    p.add_argument("--output", required=True, metavar="FILE", help="where to write the spec")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    cfg, _ = commandline.load_config(args.config, args.overrides, "kfp")
    summary = compile_pipeline(cfg, args.image, args.output, args.config)
    for s in summary["steps"]:
        where = " on the GPU pool" if s["gpu"] else ""
        cond = f", if {' and '.join(s['runs_if'])}" if s["runs_if"] else ""
        print(f"  {s['component']}{where}{cond}")
    print(
        f"wrote {summary['output']}: {len(summary['steps'])} steps in {summary['image']}, "
        f"{summary['parameters']} parameters"
    )
    return 0
