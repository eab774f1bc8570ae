"""One config object for the whole pipeline (`pipeline.yaml`), validated strictly.

The top level holds what every component shares (names and roots); each registered component
owns one section (`example_gen:`, `trainer:`, ...), a dataclass declared next to the component
with `option(...)` fields. An unknown key, a value of the wrong type or out of range is a
one-line PipelineError naming the key, e.g.
`pipeline.yaml: trainer.learning_rate: expected a number, got 'fast'` or
`pipeline.yaml: trainer.epochs: must be >= 1, got 0`.
Defaults reproduce the reference notebook (frozen VGG19, 224x224, batch 100, 20 x 100 epochs).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from pipeline_components.core.errors import PipelineError

CORE_FIELDS = ("pipeline_name", "pipeline_root", "data_root", "serving_dir", "model_name")
# Sections that say how the pipeline is deployed rather than configure a component
# (section -> "module:Class", imported when a config is loaded); never part of a cache key.
SETTINGS_SECTIONS = {
    "kfp": "pipeline_components.orchestration.kfp_settings:KfpConfig",
    # where a run's Prometheus metrics go (issue 32: docs/monitoring.md)
    "monitoring": "pipeline_components.orchestration.monitoring.settings:MonitoringConfig",
}


def option(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    key: bool = True,
    doc: str = "",
) -> Any:
    """A config field with its checks: a range (ge/gt/le/lt) for numbers, `choices` for
    strings, and whether it belongs in the component's cache key (`key=False` for settings
    that change how it runs, not what it computes, such as Beam runner options)."""
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "key": key, "doc": doc}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class PipelineConfig:
    """The top-level keys, plus one section object per registered component."""

    pipeline_name: str = "transfer-pipeline"
    pipeline_root: str = "./pipeline_root"
    data_root: str = "./data"
    serving_dir: str = "./serving_models"
    model_name: str = "model"
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # cfg.trainer, cfg.evaluator, ...
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"PipelineConfig has no section or field {name!r}")

    def section(self, name: str) -> Any:
        return self.sections[name]


# ------------------------------------------------------------------------ type conversion


def _convert(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if value is None:
            raise PipelineError(f"{source}: {where}: must not be null")
        return _convert(value, inner[0], where, source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PipelineError(f"{source}: {where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where, source)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"{source}: {where}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PipelineError(f"{source}: {where}: expected a mapping, got {value!r}")
        return {
            _convert(k, args[0], where, source): _convert(v, args[1], f"{where}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"{source}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"{source}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PipelineError(f"{source}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # yaml's `true` for a string-valued choice
            value = "true" if value else "false"
        if value is None or isinstance(value, dict | list):
            raise PipelineError(f"{source}: {where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _from_dict(cls: Any, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            removed = getattr(cls, "removed_options", {}).get(key)
            if removed:  # a section may say why a key it no longer has went away
                raise PipelineError(f"{source}: {where}: this option was removed: {removed}")
            raise PipelineError(
                f"{source}: unknown key '{where}' (known: {', '.join(sorted(names))})"
            )
        kwargs[key] = _convert(value, hints[key], where, source)
    return cls(**kwargs)


# ------------------------------------------------------------------------------ checks


def range_text(meta: Mapping[str, Any]) -> str:
    """'>= 1', '> 0', 'in [0, 1]', 'in (0, 1)', 'in [0, 1)', ... from an option's bounds."""
    low = ("[", meta["ge"]) if meta.get("ge") is not None else ("(", meta.get("gt"))
    high = ("]", meta["le"]) if meta.get("le") is not None else (")", meta.get("lt"))
    if low[1] is not None and high[1] is not None:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low[1] is not None:
        return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"


def _number(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    return not (
        (meta.get("ge") is not None and value < meta["ge"])
        or (meta.get("gt") is not None and value <= meta["gt"])
        or (meta.get("le") is not None and value > meta["le"])
        or (meta.get("lt") is not None and value >= meta["lt"])
    )


def has_range(meta: Any) -> bool:
    return any(meta.get(k) is not None for k in ("ge", "gt", "le", "lt"))


def check_section(obj: Any, prefix: str, source: str) -> None:
    """Every option's range and choices, recursively; then the section's own `validate(fail)`
    hook for checks a range cannot express."""

    def fail(key: str, what: str, value: Any) -> None:
        raise PipelineError(f"{source}: {prefix}.{key}: must be {what}, got {value!r}")

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value):
            check_section(value, f"{prefix}.{f.name}", source)
            continue
        if isinstance(value, dict):  # a mapping of sub-sections, e.g. kfp.resources.<step>
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    check_section(v, f"{prefix}.{f.name}.{k}", source)
        meta = f.metadata
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            fail(f.name, f"one of {list(choices)}", value)
        if has_range(meta) and isinstance(value, int | float) and not _in_range(value, meta):
            nullable = type(None) in typing.get_args(typing.get_type_hints(type(obj))[f.name])
            fail(f.name, range_text(meta) + (" or null" if nullable else ""), value)
    hook = getattr(obj, "validate", None)
    if callable(hook):
        hook(fail)


def key_fields(section: Any) -> dict:
    """A section as a dict without the fields marked `key=False` (not part of cache keys)."""
    return {
        f.name: _plain(getattr(section, f.name))
        for f in dataclasses.fields(section)
        if f.metadata.get("key", True)
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


# ------------------------------------------------------------------------------- loading


def _section_classes() -> dict[str, type]:
    import importlib

    from pipeline_components.core import registry

    classes = {
        c.config_section: c.config_class
        for c in registry.components()
        if c.config_section and c.config_class
    }
    for section, target in SETTINGS_SECTIONS.items():
        module, _, name = target.partition(":")
        classes.setdefault(section, getattr(importlib.import_module(module), name))
    return classes


def from_dict(data: dict | None, source: str = "config") -> PipelineConfig:
    """A validated PipelineConfig from a pipeline.yaml-shaped dict (defaults for what is absent)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PipelineError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    classes = _section_classes()
    hints = typing.get_type_hints(PipelineConfig)
    core, sections = {}, {}
    for key, value in data.items():
        if key in CORE_FIELDS:
            core[key] = _convert(value, hints[key], str(key), source)
        elif key in classes:
            sections[key] = _convert(value, classes[key], str(key), source)
        else:
            known = ", ".join(sorted([*CORE_FIELDS, *classes]))
            raise PipelineError(f"{source}: unknown key '{key}' (known: {known})")
    for name, cls in classes.items():
        sections.setdefault(name, cls())
        check_section(sections[name], name, source)
    return PipelineConfig(**core, sections=sections)


def section_from_dict(cls: type, data: dict | None, prefix: str, source: str = "config") -> Any:
    """Build one section (e.g. EvaluatorConfig) alone, e.g. from a component's own flags."""
    obj = _convert(data or {}, cls, prefix, source)
    check_section(obj, prefix, source)
    return obj


def load_yaml(path: str) -> dict:
    from pipeline_components.core import fsutil

    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(f"config file {path} does not exist or cannot be read") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PipelineError(f"config file {path} is not valid YAML{where}: {problem}") from None


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(data: dict, overrides: list[str], source: str = "override") -> dict:
    """Apply `dotted.key=value` overrides (values parsed as YAML) to a config dict in place."""
    for item in overrides:
        if "=" not in item:
            raise PipelineError(f"{source} {item!r}: expected key=value, e.g. trainer.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _NUMBER.fullmatch(value):  # YAML 1.1 reads 1e-9 as text
            value = float(value)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PipelineError(f"{source} {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def qualify(override: str, section: str | None) -> str:
    """`epochs=2` means `<section>.epochs=2`; keys naming a top-level key stay as they are."""
    if section is None or "=" not in override:
        return override
    head = override.split("=", 1)[0].strip().split(".")[0]
    if head in CORE_FIELDS or head in _section_classes():
        return override
    return f"{section}.{override}"


def load(path: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    data = load_yaml(path) if path else {}
    apply_overrides(data, overrides or [])
    return from_dict(data, source=path or "config")


def to_dict(cfg: Any) -> dict:
    """A PipelineConfig (sections inlined at the top level, as in pipeline.yaml) or a section."""
    if isinstance(cfg, PipelineConfig):
        out = {name: getattr(cfg, name) for name in CORE_FIELDS}
        out.update({name: dataclasses.asdict(s) for name, s in cfg.sections.items()})
        return out
    return dataclasses.asdict(cfg)
