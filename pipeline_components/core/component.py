"""The component contract: what a pipeline step declares, and what the runner, the CLI, the run
table and the report use to drive it without naming it (docs/ARCHITECTURE.md, CONTRIBUTING.md).

A component is a subclass of `Component`, instantiated once in its package's `component.py`
(the spec: light, no TensorFlow or Beam imports) and listed in `core/registry.py`. It declares

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
- `summary(entry)`: the one line for the run table and the report; `report_html(entry, record)`:
  its section of report.html; `report_alerts(entry)`: lines shown at the top of report.html;
  `record_fields(entry)`: fields it adds to run.json's top level;
- `command` and `main(argv)`: its CLI subcommand (a generic one is derived from the inputs,
  outputs and config section when a component does not write its own);
- for orchestrators that run each component as its own task (Kubeflow Pipelines): `gpu` (it
  gets the GPU), `task_outputs` (result values published as task outputs) and, through its
  inputs' artifact types, `gates()` (the verdicts it runs under).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from pipeline_components.core import fsutil
from pipeline_components.core.artifacts import Artifact, ArtifactType
from pipeline_components.core.errors import PipelineError


@dataclasses.dataclass(frozen=True)
class Input:
    """A declared input: the artifact type it consumes; optional inputs may be absent (their
    producer was skipped), required ones make the component skip when absent."""

    type: ArtifactType
    optional: bool = False


@dataclasses.dataclass
class ExecutionContext:
    """Everything one execution of a component gets."""

    pipeline: Any  # core.config.PipelineConfig: roots, model name, every section
    config: Any  # this component's config section (None when it has none)
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

    def output_uri(self, component: Component, name: str) -> str:
        return output_uri(component.outputs[name], self.output_dir)


def output_uri(artifact_type: ArtifactType, output_dir: str) -> str:
    return fsutil.join(output_dir, artifact_type.path) if artifact_type.path else output_dir


class Component:
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

    def gates(self) -> list[str]:
        """Its required inputs of a verdict type (a blessing): it runs only when they passed."""
        return [
            name
            for name, spec in self.inputs.items()
            if spec.type.verdict is not None and not spec.optional
        ]

    # -- cache key -------------------------------------------------------------------------

    def key_config(self, config: Any) -> dict:
        """The config that decides the output: every field not marked `key=False`."""
        if config is None:
            return {}
        from pipeline_components.core.config import key_fields

        return key_fields(config)

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        """Key material from outside pipeline_root (data listings, served models). It is also
        handed to `run` as `ctx.external`."""
        return {}

    def code_fingerprint(self) -> dict:
        """{"sha256", "files"} of the code that computes this component's outputs: the source
        files of the package that defines it and of every first-party module they import, and
        the installed dependency versions (core/codeprint.py). An edit re-runs it."""
        from pipeline_components.core import codeprint

        return codeprint.code_fingerprint(type(self).__module__, self.code_modules)

    def preflight(self, config: Any) -> None:
        """Cheap checks of this component's config section (a weights file that is missing, a
        GPU that is required but absent), run for every component before the first one runs:
        a run that cannot finish should fail in seconds, not after hours of earlier steps."""

    def skip_reason(self, ctx: ExecutionContext) -> str | None:
        """A reason not to run in this pipeline run (e.g. the model is not blessed), or None."""
        return None

    # -- execution -------------------------------------------------------------------------

    def run(self, ctx: ExecutionContext) -> dict:
        """Produce the outputs under ctx.output_dir; returns a JSON-able result summary."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def recover(self, pipeline: Any) -> list[dict]:
        """Repair what a dead execution of this component left *outside* pipeline_root (the
        Pusher: an interrupted push in the serving directory), for `transfer-pipeline gc` and
        the start of every run (orchestration/gc.py; what it left inside the root is handled
        there for every component). Returns what it did: dicts with a `text` line each."""
        return []

    # -- presentation ----------------------------------------------------------------------

    def summary(self, entry: dict) -> str:
        """One line for the run table and the report, from the run.json entry."""
        return ""

    def record_fields(self, entry: dict) -> dict:
        """Fields to add at the top level of run.json once the run ends."""
        return {}

    def report_html(self, entry: dict, record: dict) -> str:
        """This component's section of report.html (HTML), or ''. Called for completed and
        cached entries, and for failed ones that carry a `result` (PipelineError.result)."""
        return ""

    def report_alerts(self, entry: dict) -> list[tuple[str, str]]:
        """[(level, text)] shown at the top of report.html, before every section (level
        `fail` or `warn`), e.g. data anomalies; called like report_html."""
        return []

    # -- command line ----------------------------------------------------------------------

    def main(self, argv: list[str]) -> int:
        """`transfer-pipeline <command>`: the generic form, derived from the declarations:
        `--<input> URI` for each input, `--output DIR`, `--config pipeline.yaml` and
        `key=value` overrides of this component's section."""
        parser = argparse.ArgumentParser(
            prog=f"transfer-pipeline {self.command}", description=self.description
        )
        for name, spec in self.inputs.items():
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                required=not spec.optional,
                help=f"{spec.type.name}: {spec.type.description}",
            )
        parser.add_argument("--output", required=True, help="output directory")
        parser.add_argument("--config", help="pipeline.yaml (roots, model name, this section)")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
        args = parser.parse_args(argv)
        pipeline = load_for_cli(args.config, args.overrides, self.config_section)
        inputs: dict[str, Artifact | None] = {
            name: Artifact(spec.type, value)
            for name, spec in self.inputs.items()
            if (value := getattr(args, name)) is not None
        }
        ctx = self.context(pipeline, inputs, args.output)
        result = self.run_standalone(ctx)
        print(self.summary({"status": "completed", "result": result}) or "done")
        return 0

    def run_standalone(self, ctx: ExecutionContext) -> dict:
        """`run` for a CLI subcommand: when the output lies inside a pipeline_root, the root's
        lock is held meanwhile (core/locking.py), so it never writes beside a pipeline run."""
        from pipeline_components.core import locking

        with locking.hold_for_output(ctx.output_dir, f"transfer-pipeline {self.command}"):
            return self.run(ctx)

    def context(
        self, pipeline: Any, inputs: dict[str, Artifact | None], output_dir: str
    ) -> ExecutionContext:
        """The ExecutionContext for a standalone run (the CLI), external inputs resolved."""
        config = pipeline.section(self.config_section) if self.config_section else None
        ctx = ExecutionContext(pipeline, config, inputs, output_dir)
        ctx.external = self.external_inputs(ctx)
        return ctx


def load_for_cli(path: str | None, overrides: list[str], section: str | None) -> Any:
    """pipeline.yaml (optional) plus overrides; a bare `key=value` means `<section>.key`."""
    from pipeline_components.core import config as config_lib

    return config_lib.load(path, [config_lib.qualify(o, section) for o in overrides])
