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
import os
import re
import types
import typing
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import yaml

from pipeline_components.core.errors import PipelineError

CORE_FIELDS = ("pipeline_name", "pipeline_root", "data_root", "serving_dir", "model_name")
ROOTS = ("pipeline_root", "data_root", "serving_dir")
# A name that becomes a path component and a label: `<serving_dir>/<model_name>/`, TF Serving's
# model name (REST `/v1/models/<name>`: no '/' or ':'), `_versions/<model_name>.json`, the
# KFP pipeline name (compile-kfp narrows it further to lowercase), run records. Letters, digits,
# '_', '.', '-', starting with a letter or digit (so never '..'), at most 128 characters.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
DISPLAY_NAME_RULE = (
    "1 to 128 characters of any alphabet, no control characters or surrounding spaces"
)


def display_name(value: str) -> bool:
    """A name shown and used as a label, never as a path: any alphabet (emoji included)."""
    return (
        0 < len(value) <= 128
        and value == value.strip()
        and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)
    )


# Sections that say how the pipeline is deployed rather than configure a component
# (section -> "module:Class", imported when a config is loaded); never part of a cache key.
SETTINGS_SECTIONS = {
    # every Beam job's options and its progress lines (core/beam.py)
    "beam": "pipeline_components.core.beam:BeamConfig",
    "kfp": "pipeline_components.orchestration.kfp_settings:KfpConfig",
    # where a run's Prometheus metrics go (issue 32: docs/monitoring.md)
    "monitoring": "pipeline_components.orchestration.monitoring.settings:MonitoringConfig",
}
T = TypeVar("T")


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

    pipeline_name: str = option("transfer-pipeline", doc="names the runs and the KFP pipeline")
    pipeline_root: str = option(
        "./pipeline_root", doc="executions, run records and reports (local, gs://, s3://)"
    )
    data_root: str = option("./data", doc="the image folders: <split>/<class>/<image>")
    serving_dir: str = option(
        "./serving_models", doc="TF Serving's model root: <serving_dir>/<model_name>/<version>/"
    )
    model_name: str = option("model", doc="the served model's name")
    sections: dict[str, Any] = dataclasses.field(default_factory=dict)

    def section(self, name: str, cls: type[T]) -> T:
        """The section `name`, typed: `cfg.section("trainer", TrainerConfig)`."""
        value = self.sections.get(name)
        if not isinstance(value, cls):
            what = "no" if value is None else f"a {type(value).__name__}, not a"
            raise PipelineError(f"config: section {name!r} is {what} {cls.__name__}")
        return value


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


def from_dict(
    data: dict | None, source: str = "config", *, sections: Mapping[str, type]
) -> PipelineConfig:
    """A validated PipelineConfig from a pipeline.yaml-shaped dict (defaults for what is absent).
    `sections`: section name -> its dataclass (`registry.section_classes()`: the registered
    components' and the settings sections). A section class may carry `upgrade_config(data,
    source) -> data`, a rewrite of an old config's keys kept for one release (core/beam.py)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PipelineError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    classes = dict(sections)
    for cls in classes.values():  # a section's one-release rewrite of an old config's keys
        upgrade = getattr(cls, "upgrade_config", None)
        if callable(upgrade):
            data = upgrade(data, source)
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
    check_core(core, source)
    for name, cls in classes.items():
        sections.setdefault(name, cls())
        check_section(sections[name], name, source)
    return PipelineConfig(**core, sections=sections)


def check_core(core: Mapping[str, Any], source: str) -> None:
    """The top-level names and roots, when the config loads: model_name, which becomes a path
    component and TF Serving's model name, follows NAME; pipeline_name, a label only (run
    records, the report, metric labels; compile-kfp narrows it to KFP's form itself), may be
    written in any alphabet; a root is a folder or not there yet (never an existing file, nor
    below one) and holds no control character."""
    value = core.get("model_name")
    if value is not None and not NAME.fullmatch(value):
        raise PipelineError(f"{source}: model_name: must be {NAME_RULE}, got {value!r}")
    value = core.get("pipeline_name")
    if value is not None and not display_name(value):
        raise PipelineError(f"{source}: pipeline_name: must be {DISPLAY_NAME_RULE}, got {value!r}")
    for key in ROOTS:
        if key in core:
            check_root(key, core[key], source)


def check_root(key: str, path: str, source: str) -> None:
    def fail(what: str, why: str = "") -> None:
        raise PipelineError(f"{source}: {key}: must be {what}, got {path!r}{why}")

    if not path.strip():
        fail("a folder's path")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in path):
        fail("a path without control characters")
    if "://" in path:  # gs://, s3://: checked where it is used, with the right credentials
        return
    local = os.path.abspath(path)
    existing = local
    while not os.path.lexists(existing):  # the nearest part of it that exists
        parent = os.path.dirname(existing)
        if parent == existing:
            return
        existing = parent
    if not os.path.isdir(existing):
        fail("a folder", " (a file)" if existing == local else f" (below {existing}, a file)")


def section_from_dict(cls: type, data: dict | None, prefix: str, source: str = "config") -> Any:
    """Build one section (e.g. EvaluatorConfig) alone, e.g. from a component's own flags."""
    obj = _convert(data or {}, cls, prefix, source)
    check_section(obj, prefix, source)
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a key given twice in one mapping, at any depth (PyYAML
    keeps the last one silently): `duplicate key 'trainer.epochs' (first on line 5)`, marked at
    the second."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}  # id(node) -> its dotted key, set by its parent

    def _note(self, node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            self._paths[id(node)] = path
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._note(item, f"{path}[{i}]")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        where = self._paths.get(id(node), "")
        seen: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges, not repeats
                continue
            key = self.construct_object(key_node, deep=True)
            path = f"{where}.{key}" if where else str(key)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{path}' (first on line {first.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            self._note(value_node, path)
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys: for every YAML a person writes (pipeline.yaml,
    overrides, --config-text, schema.yaml)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def load_yaml(path: str) -> dict:
    from pipeline_components.core import fsutil

    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(f"config file {path} does not exist or cannot be read") from None
    try:
        return safe_load(text) or {}
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
            value = safe_load(raw)
        except yaml.constructor.ConstructorError as e:  # a duplicate key
            raise PipelineError(f"{source} {item!r}: {e.problem}") from None
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


def load(
    path: str | None, overrides: list[str] | None = None, *, sections: Mapping[str, type]
) -> PipelineConfig:
    data = load_yaml(path) if path else {}
    apply_overrides(data, overrides or [])
    return from_dict(data, source=path or "config", sections=sections)


def to_dict(cfg: Any) -> dict:
    """A PipelineConfig (sections inlined at the top level, as in pipeline.yaml) or a section."""
    if isinstance(cfg, PipelineConfig):
        out = {name: getattr(cfg, name) for name in CORE_FIELDS}
        out.update({name: dataclasses.asdict(s) for name, s in cfg.sections.items()})
        return out
    return dataclasses.asdict(cfg)
