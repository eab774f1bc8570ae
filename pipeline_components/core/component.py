"""The component contract: what a pipeline step declares, and what the runner, the CLI, the run
table and the report use to drive it without naming it (docs/ARCHITECTURE.md, CONTRIBUTING.md).

A component is a subclass of `Component[ConfigT]` (ConfigT: its config section's dataclass, so
`ctx.config` is typed), instantiated once in its package's `component.py` (the spec: light, no
TensorFlow or Beam imports) and listed in `core/registry.py`. It declares

- `name` (the run table's row and `<pipeline_root>/<name>/`), `description`;
- `config_section` and `config_class`: its section of pipeline.yaml (a dataclass whose fields
  use `core.config.option` for defaults, ranges and cache-key membership);
- `inputs` ({name: Input(artifact type)}) and `outputs` ({name: artifact type}): the runner
  orders components by these and hands each the upstream artifacts; `runs_before` (artifact
  types) orders it before their producers without a data dependency (a gate: a validator that
  fails stops the run before the Trainer);
- `preflight(config)`: cheap config checks the runner makes before any component runs;
- what goes into its cache key: its config section (`key_config`), the fingerprints of its input
  artifacts, `external_inputs` (anything read from outside pipeline_root, e.g. the data
  folder's listing or the served baseline) and `code_fingerprint()` (its package's source and
  what it imports, core/codeprint.py);
- `run(ctx)`: the one executor function; the same function runs from `transfer-pipeline run`
  and from its CLI subcommand;
- `recover(pipeline)`: repairs what a dead execution left outside pipeline_root (the Pusher's
  interrupted push), called by `transfer-pipeline gc` and at the start of every run;
- `presenter`: its package's `present.py`, whose functions `summary(entry)` (the one line for
  the run table and the report), `report_html(entry, record)` (its section of report.html),
  `report_alerts(entry)` (lines shown at the top of report.html) and `record_fields(entry)`
  (fields it adds to run.json's top level) the methods of the same names call;
- `command`: its CLI subcommand, generated from these declarations by core/commandline.py
  (`--<input> URI`, `--output DIR`, `--config FILE`, a flag per option of its section, `reads`
  for the top-level keys it reads, `flags` for run-time flags that are not config, KEY=VALUE
  overrides, `-- BEAM_ARGS` when `beam`); `run_command(cmd)` is what the command does with it;
- for orchestrators that run each component as its own task (Kubeflow Pipelines): `gpu` (it
  gets the GPU), `task_outputs` (result values published as task outputs) and, through its
  inputs' artifact types, `gates()` (the verdicts it runs under).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, Generic, NoReturn, TypeVar

from pipeline_components.core import fsutil
from pipeline_components.core.artifacts import Artifact, ArtifactType
from pipeline_components.core.config import PipelineConfig, key_fields
from pipeline_components.core.errors import PipelineError

ConfigT = TypeVar("ConfigT")


@dataclasses.dataclass(frozen=True)
class Input:
    """A declared input: the artifact type it consumes; optional inputs may be absent (their
    producer was skipped), required ones make the component skip when absent."""

    type: ArtifactType
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Flag:
    """A run-time flag of a component's command that is not config (the Trainer's `--workers`,
    the Evaluator's `--baseline`): `--<name with dashes>`, its value in `CommandLine.flags`."""

    name: str
    help: str
    type: type = str  # str, int, float; bool: a switch (`--local`), False unless given
    default: Any = None
    metavar: str | None = None
    ge: int | None = None  # the smallest int value accepted


@dataclasses.dataclass
class ExecutionContext(Generic[ConfigT]):
    """Everything one execution of a component gets."""

    pipeline: PipelineConfig  # roots, model name, every section
    config: ConfigT  # this component's config section (None when it has none)
    inputs: dict[str, Artifact | None]
    output_dir: str
    external: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_id: str | None = None

    def input_uri(self, name: str) -> str:
        artifact = self.inputs.get(name)
        if artifact is None:
            raise PipelineError(f"input '{name}' was not provided")
        return artifact.uri

    def optional_uri(self, name: str) -> str | None:
        artifact = self.inputs.get(name)
        return artifact.uri if artifact is not None else None

    def output_uri(self, component: Component[Any], name: str) -> str:
        return output_uri(component.outputs[name], self.output_dir)


def output_uri(artifact_type: ArtifactType, output_dir: str) -> str:
    return fsutil.join(output_dir, artifact_type.path) if artifact_type.path else output_dir


@dataclasses.dataclass
class CommandLine(Generic[ConfigT]):
    """A component's command line, parsed (core/commandline.py): what `run_command` gets."""

    component: Component[ConfigT]
    pipeline: PipelineConfig  # defaults < --config < flags < KEY=VALUE
    config: ConfigT  # the component's section of `pipeline`
    inputs: dict[str, Artifact | None]
    output: str  # "" when not given (only where `output_required` is False)
    flags: dict[str, Any]  # the run-time flags (`Component.flags`) by name
    given: frozenset[
        str
    ]  # keys set by --config, a flag or KEY=VALUE: "model_name", "trainer.epochs"
    config_argv: list[str]  # the command line without its run-time flags (for worker processes)
    run: Callable[[ExecutionContext[ConfigT]], dict]  # `run`, holding the pipeline_root's lock
    error: Callable[[str], NoReturn]  # a usage error: the usage and the message, exit 2

    def context(self, external: dict[str, Any] | None = None) -> ExecutionContext[ConfigT]:
        """The ExecutionContext of a standalone run; `external` defaults to external_inputs."""
        ctx = ExecutionContext(self.pipeline, self.config, self.inputs, self.output)
        ctx.external = self.component.external_inputs(ctx) if external is None else external
        return ctx


class Component(Generic[ConfigT]):
    """Base class of every pipeline component (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    config_section: ClassVar[str | None] = None
    config_class: ClassVar[type | None] = None
    inputs: ClassVar[Mapping[str, Input]] = {}
    outputs: ClassVar[Mapping[str, ArtifactType]] = {}
    command: ClassVar[str | None] = None
    # Producers of these artifact types run after this component (and not at all when it
    # fails), though they consume nothing of it: ExampleValidator -> (MODEL,) gates the Trainer.
    runs_before: ClassVar[tuple[ArtifactType, ...]] = ()
    # first-party modules it runs other than by importing them (a subprocess), for its code
    # fingerprint; what it imports is found by itself
    code_modules: ClassVar[tuple[str, ...]] = ()
    cacheable: ClassVar[bool] = True  # False: runs every time (e.g. the Pusher)
    resumable: ClassVar[bool] = False  # True: an interrupted execution continues in place
    # True: it runs faster on a GPU (the Trainer); an orchestrator that schedules each step on
    # its own (Kubeflow Pipelines) gives it the GPU and leaves the other steps on CPU nodes.
    gpu: ClassVar[bool] = False
    # Values of `run`'s result that orchestrators publish as task outputs (KFP output parameters
    # and pipeline outputs): {result key: bool | int | float | str}. A None (or absent) value is
    # published as the type's zero value (False, 0, 0.0, "").
    task_outputs: ClassVar[Mapping[str, type]] = {}
    # its package's present.py: summary, record_fields, report_html, report_alerts (functions
    # of the run.json entry; each optional)
    presenter: ModuleType | None = None

    # -- its command (core/commandline.py generates the parser from these) ------------------
    # top-level keys it reads: a flag each (`--data-root`)
    reads: ClassVar[tuple[str, ...]] = ()
    # config keys its command needs given (by --config, a flag or KEY=VALUE), not defaulted:
    # a push must name where it writes
    requires: ClassVar[tuple[str, ...]] = ()
    # run-time flags that are not config
    flags: ClassVar[tuple[Flag, ...]] = ()
    # it runs Beam jobs: `-- BEAM_ARGS` sets its section's beam_args
    beam: ClassVar[bool] = False
    # the inputs its command takes (None: `inputs`), e.g. the BulkInferrer's push is optional
    # on its command line, which can name a model instead
    cli_inputs: ClassVar[Mapping[str, Input] | None] = None
    output_required: ClassVar[bool] = True  # False: --output is optional (push.json)

    def gates(self) -> list[str]:
        """Its required inputs of a verdict type (a blessing): it runs only when they passed."""
        return [
            name
            for name, spec in self.inputs.items()
            if spec.type.verdict is not None and not spec.optional
        ]

    def section_of(self, pipeline: PipelineConfig) -> ConfigT:
        """Its config section of `pipeline` (None when it has none)."""
        if not self.config_section or self.config_class is None:
            return None  # type: ignore[return-value]  # ConfigT is None then
        section: ConfigT = pipeline.section(self.config_section, self.config_class)
        return section

    # -- cache key -------------------------------------------------------------------------

    def key_config(self, config: ConfigT) -> dict:
        """The config that decides the output: every field not marked `key=False`."""
        return {} if config is None else key_fields(config)

    def external_inputs(self, ctx: ExecutionContext[ConfigT]) -> dict[str, Any]:
        """Key material from outside pipeline_root (data listings, served models). It is also
        handed to `run` as `ctx.external`."""
        return {}

    def code_fingerprint(self) -> dict:
        """{"sha256", "files"} of the code that computes this component's outputs: the source
        files of the package that defines it and of every first-party module they import, and
        the installed dependency versions (core/codeprint.py). An edit re-runs it."""
        from pipeline_components.core import codeprint

        return codeprint.code_fingerprint(type(self).__module__, self.code_modules)

    def preflight(self, config: ConfigT) -> None:
        """Cheap checks of this component's config section (a weights file that is missing, a
        GPU that is required but absent), run for every component before the first one runs:
        a run that cannot finish should fail in seconds, not after hours of earlier steps."""

    def skip_reason(self, ctx: ExecutionContext[ConfigT]) -> str | None:
        """A reason not to run in this pipeline run (e.g. the model is not blessed), or None."""
        return None

    # -- execution -------------------------------------------------------------------------

    def run(self, ctx: ExecutionContext[ConfigT]) -> dict:
        """Produce the outputs under ctx.output_dir; returns a JSON-able result summary."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def run_command(self, cmd: CommandLine[ConfigT]) -> int:
        """What `transfer-pipeline <command>` does once its command line is parsed: by default
        run (holding the pipeline_root's lock when the output lies in one) and print the
        summary line. Returns the exit code."""
        result = cmd.run(cmd.context())
        print(self.summary({"status": "completed", "result": result}) or "done")
        return 0

    def recover(self, pipeline: PipelineConfig) -> list[dict]:
        """Repair what a dead execution of this component left *outside* pipeline_root (the
        Pusher: an interrupted push in the serving directory), for `transfer-pipeline gc` and
        the start of every run (orchestration/gc.py; what it left inside the root is handled
        there for every component). Returns what it did: dicts with a `text` line each."""
        return []

    # -- presentation: the presenter's functions -----------------------------------------

    def summary(self, entry: dict) -> str:
        """One line for the run table and the report, from the run.json entry."""
        show = getattr(self.presenter, "summary", None)
        return str(show(entry)) if show else ""

    def record_fields(self, entry: dict) -> dict:
        """Fields to add at the top level of run.json once the run ends."""
        fields = getattr(self.presenter, "record_fields", None)
        return dict(fields(entry)) if fields else {}

    def report_html(self, entry: dict, record: dict) -> str:
        """This component's section of report.html (HTML), or ''. Called for completed and
        cached entries, and for failed ones that carry a `result` (PipelineError.result)."""
        section = getattr(self.presenter, "report_html", None)
        return str(section(entry, record)) if section else ""

    def report_alerts(self, entry: dict) -> list[tuple[str, str]]:
        """[(level, text)] shown at the top of report.html, before every section (level
        `fail` or `warn`), e.g. data anomalies; called like report_html."""
        alerts = getattr(self.presenter, "report_alerts", None)
        return list(alerts(entry)) if alerts else []
