"""Which components exist, and in which order the pipeline runs them.

Built-in components are listed here by the module that defines their spec (`COMPONENT`);
adding one is a new sub-package plus one line in BUILTIN. Components from other installed
packages register through the `transfer_pipeline.components` entry-point group (each entry
point names a Component instance), and tests register toy components with `registered(...)`.

The pipeline order is derived, not written down: a component runs after the producers of every
artifact type it consumes, and before the producers of the types its `runs_before` names (a
stable topological sort; ties keep registration order).

The config loader gets the section classes from here (`section_classes`, `load_config`,
`config_from_dict`): core/config.py knows the format, not which components exist.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import re
from collections.abc import Iterator

from pipeline_components.core import config as config_lib
from pipeline_components.core.component import Component
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError

log = logging.getLogger(__name__)

BUILTIN = (
    "pipeline_components.example_gen.component",
    "pipeline_components.statistics_gen.component",
    "pipeline_components.schema_gen.component",
    "pipeline_components.example_validator.component",
    "pipeline_components.features.component",
    "pipeline_components.tuner.component",
    "pipeline_components.trainer.component",
    "pipeline_components.evaluator.component",
    "pipeline_components.infra_validator.component",
    "pipeline_components.pusher.component",
    "pipeline_components.bulk_inferrer.component",
)
ENTRY_POINT_GROUP = "transfer_pipeline.components"

_components: list[Component] | None = None


def _load() -> list[Component]:
    global _components
    if _components is None:
        loaded = [importlib.import_module(name).COMPONENT for name in BUILTIN]
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded.append(entry.load())
            except Exception as e:  # a broken plugin must not take the CLI down
                log.warning("component plugin %s could not be loaded: %s", entry.name, e)
        _components = []
        for component in loaded:
            _add(_components, component)
    return _components


# A component's name is a folder of every pipeline_root (`<pipeline_root>/<name>/<n>/`), a KFP
# task's display name and a key of run.json; its config section a pipeline.yaml key and the
# prefix of KFP parameter names. A plugin cannot pick one that escapes pipeline_root.
COMPONENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
SECTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _add(into: list[Component], component: Component) -> None:
    if not isinstance(component.name, str) or not COMPONENT_NAME.fullmatch(component.name):
        raise PipelineError(
            f"component name {component.name!r} must be a letter then letters, digits or '_'"
        )
    section = component.config_section
    if section and not SECTION_NAME.fullmatch(section):
        raise PipelineError(
            f"component {component.name}: config section {section!r} must be a lowercase letter "
            "then lowercase letters, digits or '_'"
        )
    for other in into:
        if other.name == component.name:
            raise PipelineError(f"two components are named {component.name}")
        if component.command and other.command == component.command:
            raise PipelineError(f"components {other.name} and {component.name} share a command")
        if component.config_section and other.config_section == component.config_section:
            raise PipelineError(
                f"components {other.name} and {component.name} share config section "
                f"{component.config_section}"
            )
    into.append(component)


def components() -> list[Component]:
    """Every registered component, in registration order."""
    return list(_load())


def register(component: Component) -> None:
    _add(_load(), component)


def unregister(name: str) -> None:
    _load()[:] = [c for c in _load() if c.name != name]


@contextlib.contextmanager
def registered(component: Component) -> Iterator[Component]:
    """Register a component for the duration of a `with` block (tests, notebooks)."""
    register(component)
    try:
        yield component
    finally:
        unregister(component.name)


def get(name: str) -> Component:
    for component in _load():
        if component.name == name:
            return component
    raise KeyError(name)


def by_command(command: str) -> Component | None:
    return next((c for c in _load() if c.command == command), None)


def by_section(section: str) -> Component | None:
    return next((c for c in _load() if c.config_section == section), None)


def upstream() -> dict[str, set[str]]:
    """{component: the components it runs after}: the producers of every artifact type it
    consumes, and every component whose `runs_before` names a type it produces. The runner's
    order comes from this; an orchestrator that builds a DAG (Kubeflow) uses it as its edges."""
    comps = components()
    producers: dict[str, str] = {}
    for component in comps:
        for artifact_type in component.outputs.values():
            if artifact_type.name in producers:
                raise PipelineError(
                    f"artifact type {artifact_type.name} is produced by both "
                    f"{producers[artifact_type.name]} and {component.name}"
                )
            producers[artifact_type.name] = component.name
    after: dict[str, set[str]] = {
        c.name: {producers[s.type.name] for s in c.inputs.values() if s.type.name in producers}
        for c in comps
    }
    for gate in comps:
        for artifact_type in gate.runs_before:
            producer = producers.get(artifact_type.name)
            if producer is not None and producer != gate.name:
                after[producer].add(gate.name)
    return after


def pipeline_order() -> list[Component]:
    """Components in run order: after what they depend on (`upstream`), otherwise in
    registration order."""
    pending = components()
    after = upstream()
    order: list[Component] = []
    done: set[str] = set()
    while pending:
        for component in pending:
            if after[component.name] <= done:
                break
        else:
            names = ", ".join(c.name for c in pending)
            raise PipelineError(f"components depend on each other in a cycle: {names}")
        order.append(component)
        done.add(component.name)
        pending.remove(component)
    return order


# --------------------------------------------------------------------------------- config


def section_classes() -> dict[str, type]:
    """pipeline.yaml's sections: each registered component's, then the settings sections
    (config.SETTINGS_SECTIONS, e.g. `kfp:`), name -> dataclass."""
    classes: dict[str, type] = {
        c.config_section: c.config_class
        for c in components()
        if c.config_section and c.config_class
    }
    for section, target in config_lib.SETTINGS_SECTIONS.items():
        module, _, name = target.partition(":")
        classes.setdefault(section, getattr(importlib.import_module(module), name))
    return classes


def config_from_dict(data: dict | None, source: str = "config") -> PipelineConfig:
    """A validated PipelineConfig with every registered section (config.from_dict)."""
    return config_lib.from_dict(data, source, sections=section_classes())


def load_config(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    """pipeline.yaml (or the defaults) plus `section.key=value` overrides, validated."""
    return config_lib.load(path, overrides, sections=section_classes())
