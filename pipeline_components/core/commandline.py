"""One command-line grammar for every command that runs a component or reads the config,
generated from the declarations (docs/cli.md is the reference):

    transfer-pipeline <command> [--config FILE] [--<input> URI ...] [--output DIR]
        [--<option> V ...] [KEY=VALUE ...] [-- BEAM_ARGS]

- `--config FILE`: pipeline.yaml (roots, model name, every section);
- `--<input> URI`: one per input the component declares (`Component.inputs`);
- `--<option> V`: one per scalar option of the component's own section, generated from the
  option's metadata (type, choices, range, `doc`, default; a bool is `--x/--no-x`), one per
  top-level key it `reads` (`--data-root`), and its run-time `flags` that are not config;
  lists and sub-sections only through KEY=VALUE or the file;
- `KEY=VALUE` (values are YAML): `section.key=value` always works, a bare `key=value` means the
  command's own section, a top-level key (`model_name=m`) is itself;
- `-- BEAM_ARGS`: the Beam options of a Beam component (its section's `beam_args`, which
  replace the pipeline's `beam.args`: core/beam.py);
- precedence: the config classes' defaults < --config < flags < KEY=VALUE.

Old spellings keep working for one release, with one line on stderr naming the new one: they
are all in DEPRECATED, and a test walks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline_components.core import config as config_lib
from pipeline_components.core import locking, logs, registry
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import CommandLine, Component, ExecutionContext, Flag
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError

SCALARS = (bool, int, float, str)
METAVAR = {int: "INT", float: "NUMBER", str: "TEXT"}
CONFIG_HELP = "pipeline.yaml: roots, model name, every section (flags and KEY=VALUE win over it)"
PRECEDENCE = "Precedence: the defaults shown < --config FILE < flags < KEY=VALUE."
BEAM_HELP = (
    "Beam options go after -- (this command's beam_args: they replace the pipeline's "
    "beam.args), e.g. -- --direct_running_mode=multi_processing "
    "--direct_num_workers=2, or -- --runner=DataflowRunner --project=P --region=R "
    "--temp_location=gs://b/tmp"
)
SERVED_MODEL = ("serving_dir", "model_name")
SNAKE_OPTION = re.compile(r"--[a-z0-9]+(_[a-z0-9]+)*(=.*)?", re.DOTALL)


class UsageError(PipelineError):
    """A bad command line (exit 2, as argparse)."""

    exit_code = 2


# ------------------------------------------------------------------------ old spellings


@dataclasses.dataclass(frozen=True)
class Deprecated:
    """An old spelling that still works for one release: `old` is read as `new`, with one line
    on stderr. `example`: the old spelling as typed (the test parses it)."""

    command: str
    old: str
    new: str
    example: tuple[str, ...]
    flag: bool = True  # a renamed flag, parsed as `new`; False: a form its command handles

    def line(self) -> str:
        return (
            f"transfer-pipeline {self.command}: {self.old} is deprecated and goes in the next "
            f"release: use {self.new}"
        )

    def warn(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)


BEAM_BEFORE_DASHES = "Beam options before --"
NO_OUTPUT = "no --output (writes ./data_validation)"
DEPRECATED = (
    Deprecated("push", "--label", "--version-label", ("--label", "canary")),
    Deprecated("batch-predict", "--format", "--output-format", ("--format", "csv")),
    # predict is serving/client_lite/cli.py's parser, which cannot import this module: it keeps
    # these two rows in its own DEPRECATED (tests/test_cli_grammar.py checks they are equal)
    Deprecated("predict", "--format", "--output-format", ("--format", "csv")),
    Deprecated("predict", "--batch-size", "--max-batch-size", ("--batch-size", "8")),
    Deprecated("rollback", "--to", "--version", ("--to", "1")),
    Deprecated(
        "example-gen",
        BEAM_BEFORE_DASHES,
        "-- BEAM_ARGS after the other arguments",
        ("--direct_num_workers=1",),
        flag=False,
    ),
    Deprecated("validate-data", NO_OUTPUT, "--output DIR", (), flag=False),
)


def deprecated(command: str, old: str) -> Deprecated | None:
    return next((d for d in DEPRECATED if d.command == command and d.old == old), None)


class _Renamed(argparse.Action):
    """A deprecated flag: stores into the new flag's destination, says so once on stderr."""

    def __init__(self, *args: Any, spelling: Deprecated, **kwargs: Any) -> None:
        self.spelling = spelling
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        self.spelling.warn()
        setattr(namespace, self.dest, values)


def add_deprecated(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's renamed flags (DEPRECATED), hidden from --help, parsed as the new ones."""
    actions = {o: a for a in parser._actions for o in a.option_strings}
    for d in DEPRECATED:
        if d.command != command or not d.flag:
            continue
        new = actions[d.new]
        parser.add_argument(
            d.old,
            dest=new.dest,
            type=new.type or str,
            default=new.default,
            metavar=new.metavar,
            action=_Renamed,
            spelling=d,
            help=argparse.SUPPRESS,
        )


# ------------------------------------------------------------------------ option metadata


def kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


def scalar_type(tp: Any) -> tuple[type | None, bool]:
    """(bool | int | float | str, nullable) of an option's type; (None, _) for lists, mappings
    and sub-sections (set only through KEY=VALUE or the file)."""
    args = typing.get_args(tp)
    nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    inner = [a for a in args if a is not type(None)] if nullable else [tp]
    if len(inner) == 1 and inner[0] in SCALARS:
        return inner[0], nullable
    return None, nullable


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def show(value: Any) -> str:
    """A value as in pipeline.yaml: null, true, 0.001, [224, 224]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping) or dataclasses.is_dataclass(value):
        return "{...}"
    return str(value)


def option_help(f: dataclasses.Field, default: Any, nullable: bool) -> str:
    """An option's doc, its range and its default: what --help shows."""
    meta = f.metadata
    parts = [meta.get("doc") or f.name.replace("_", " ")]
    if config_lib.has_range(meta):
        parts.append(config_lib.range_text(meta) + (" or null" if nullable else ""))
    text = "; ".join(parts) + f" (default: {show(default)})"
    return text.replace("%", "%%")


def _value_parser(kind: type, nullable: bool) -> Any:
    """argparse `type=`: the text as an int/float/str; `null` too for a nullable option."""

    def parse(text: str) -> Any:
        if nullable and text.strip().lower() in ("null", "none", "~"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def option_fields(cls: type) -> list[tuple[dataclasses.Field, type, bool]]:
    """The options of a section that get a flag: (field, scalar type, nullable)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        kind, nullable = scalar_type(hints[f.name])
        if kind is not None:
            found.append((f, kind, nullable))
    return found


def add_option(
    group: Any, f: dataclasses.Field, kind: type, nullable: bool, dest: str, required: bool = False
) -> None:
    """One generated flag for a config option (or a top-level key); `required`: the command
    needs it given (Component.requires), here, in --config or as KEY=VALUE."""
    help_ = option_help(f, default_of(f), nullable)
    if required:
        help_ = help_.rsplit(" (default:", 1)[0] + " (required: here, in --config or KEY=VALUE)"
    if kind is bool:
        group.add_argument(
            kebab(f.name),
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,  # absent: not given (None may be a value)
            help=help_,
        )
        return
    # choices are checked with the ranges, by the config loader (one line naming the key)
    choices = f.metadata.get("choices")
    group.add_argument(
        kebab(f.name),
        dest=dest,
        type=_value_parser(kind, nullable),
        default=argparse.SUPPRESS,  # absent: not given (None may be a value)
        metavar="{" + ",".join(map(str, choices)) + "}" if choices else METAVAR[kind],
        help=help_,
    )


def add_flag(group: Any, flag: Flag) -> None:
    """A run-time flag (Component.flags)."""
    if flag.type is bool:
        group.add_argument(kebab(flag.name), dest=flag.name, action="store_true", help=flag.help)
        return
    shown = "" if flag.default is None else f" (default: {show(flag.default)})"
    group.add_argument(
        kebab(flag.name),
        dest=flag.name,
        type=flag.type,
        default=flag.default,
        metavar=flag.metavar or METAVAR.get(flag.type, "VALUE"),
        help=(flag.help + shown).replace("%", "%%"),
    )


# ------------------------------------------------------------------------ shared pieces


def overrides_help(section: str | None) -> str:
    bare = (
        f"a bare key=value means {section}.key"
        if section
        else "name the section (section.key=value)"
    )
    return (
        f"config overrides, YAML values, applied last: section.key=value or a top-level "
        f"key=value; {bare}"
    )


def add_config_arguments(
    parser: argparse.ArgumentParser, section: str | None, *, required: bool = False
) -> None:
    """`--config FILE` and the KEY=VALUE overrides, as every command that reads the config
    takes them."""
    parser.add_argument("--config", required=required, metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help(section))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text wrapped at spaces only: `--tf-config-from-k8s` stays in one piece."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(
        textwrap.fill(" ".join(t.split()), 79, break_on_hyphens=False) for t in texts if t
    )


def new_parser(prog: str, description: str, *epilog: str) -> argparse.ArgumentParser:
    """A command's parser; `epilog`: paragraphs after the flags (and the precedence rule). Every
    command takes `--quiet` and `--log-format` (core/logs.py; cli.main applies them)."""
    p = argparse.ArgumentParser(
        prog=f"transfer-pipeline {prog}",
        description=_paragraphs(*description.split("\n\n")),
        epilog=_paragraphs(*epilog, PRECEDENCE),
        formatter_class=_Formatter,
    )
    logs.add_arguments(p)
    return p


def split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the command's own arguments, the Beam options after the first `--`)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def qualify(item: str, section: str | None, sections: Iterable[str]) -> str:
    """`epochs=2` means `<section>.epochs=2`; a top-level key or `section.key` stays as it is;
    a bare key with no section to mean is a one-line error naming the sections that have it."""
    if "=" not in item:
        return item  # apply_overrides names it
    key = item.split("=", 1)[0].strip()
    head = key.split(".")[0]
    known = set(sections)
    if head in config_lib.CORE_FIELDS or head in known:
        return item
    if section is not None:
        return f"{section}.{item}"
    if "." in key:
        return item  # the loader names the unknown section
    owners = sorted(
        name
        for name, cls in registry.section_classes().items()
        if key in {f.name for f in dataclasses.fields(cls)}
    )
    hint = f", e.g. {owners[0]}.{item}" if owners else ""
    raise UsageError(f"{item}: name the section of {key!r} (section.key=value){hint}")


def put(data: dict, key: str, value: Any) -> None:
    """Set a dotted key of a pipeline.yaml-shaped dict."""
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PipelineError(f"{key}: {part} is not a section")
    node[last] = value


def given_keys(data: Mapping[str, Any]) -> frozenset[str]:
    """The keys a config dict sets: top-level keys, and `section.key` inside sections."""
    found: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict) and key not in config_lib.CORE_FIELDS:
            found.update(f"{key}.{k}" for k in value)
        else:
            found.add(str(key))
    return frozenset(found)


def load_config(
    path: str | None,
    overrides: Sequence[str],
    section: str | None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[PipelineConfig, frozenset[str]]:
    """The config of a command line: the defaults < the file < `flags` ({dotted key: value},
    None = not given) < the KEY=VALUE overrides. Returns it and the keys given."""
    data = config_lib.load_yaml(path) if path else {}
    for key, value in (flags or {}).items():
        put(data, key, value)
    sections = registry.section_classes()
    config_lib.apply_overrides(data, [qualify(o, section, sections) for o in overrides])
    given = given_keys(data)
    return registry.config_from_dict(data, source=path or "command line"), given


def require(parser: argparse.ArgumentParser, given: frozenset[str], keys: Iterable[str]) -> None:
    """Keys a command must be told (by --config, a flag or KEY=VALUE), never defaulted."""
    for key in keys:
        if key not in given:
            flag = kebab(key.rsplit(".", 1)[-1])
            parser.error(f"{flag} is required (or {key} in --config, or {key}=...)")


def add_served_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--serving-dir`, `--model-name` (or from --config / KEY=VALUE) of the version commands."""
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    for name in SERVED_MODEL:
        add_option(parser, fields[name], str, False, name, required=True)
    add_config_arguments(parser, None)


def parse_served_model(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> Any:
    """Parse a version command's line (add_served_model_arguments): its serving_dir and
    model_name resolved from the flags, --config and KEY=VALUE, both required."""
    add_deprecated(parser, parser.prog.split()[-1])
    args = parser.parse_intermixed_args(list(argv or []))
    flags = {name: getattr(args, name) for name in SERVED_MODEL if hasattr(args, name)}
    cfg, given = load_config(args.config, args.overrides, None, flags)
    require(parser, given, SERVED_MODEL)
    args.serving_dir, args.model_name = cfg.serving_dir, cfg.model_name
    return args


# ------------------------------------------------------------------------ a component's command


def parser(component: Component[Any]) -> argparse.ArgumentParser:
    """The command line of `transfer-pipeline <component.command>`, from its declarations."""
    section = component.config_section
    epilog = []
    if component.config_class is not None:
        flagged = {f.name for f, _, _ in option_fields(component.config_class)}
        rest = [
            f"{f.name}={show(default_of(f))}"
            + (f" ({f.metadata['doc']})" if f.metadata.get("doc") else "")
            for f in dataclasses.fields(component.config_class)
            if f.name not in flagged
        ]
        if rest:
            epilog.append(f"Also in {section} (KEY=VALUE or --config): {'; '.join(rest)}.")
    if component.beam:
        epilog.append(BEAM_HELP)
    about = (type(component).__doc__ or "").strip()
    description = f"{component.description}.\n\n{about}" if about else component.description
    p = new_parser(str(component.command), description, *epilog)
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    inputs = p.add_argument_group("inputs")
    for name, spec in _cli_inputs(component).items():
        inputs.add_argument(
            kebab(name),
            dest=name,
            required=not spec.optional,
            metavar="URI",
            help=f"{spec.type.name}: {spec.type.description}",
        )
    inputs.add_argument(
        "--output",
        required=component.output_required,
        metavar="DIR",
        help="output directory"
        if component.output_required
        else "output directory (default: none, nothing written)",
    )
    if component.reads:
        top = p.add_argument_group("pipeline (top-level keys)")
        fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
        for name in component.reads:
            add_option(top, fields[name], str, False, name, name in component.requires)
    if component.config_class is not None:
        group = p.add_argument_group(f"options of the {section} section")
        for f, kind, nullable in option_fields(component.config_class):
            add_option(group, f, kind, nullable, f.name)
    if component.flags:
        runtime = p.add_argument_group("run-time flags (not config)")
        for flag in component.flags:
            add_flag(runtime, flag)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help(section))
    add_deprecated(p, str(component.command))
    return p


def _cli_inputs(component: Component[Any]) -> Mapping[str, Any]:
    return component.inputs if component.cli_inputs is None else component.cli_inputs


def _beam_options(
    component: Component[Any], p: argparse.ArgumentParser, unknown: list[str]
) -> list[str]:
    """Unknown arguments before `--`: an old spelling's Beam options, or a mistake."""
    old = deprecated(str(component.command), BEAM_BEFORE_DASHES) if component.beam else None
    removed = getattr(component.config_class, "removed_options", {})
    known = [o for a in p._actions for o in a.option_strings]
    beam: list[str] = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name[2:].replace("-", "_") in removed:
            raise PipelineError(f"{name} was removed: {removed[name[2:].replace('-', '_')]}")
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if old is not None and not close and SNAKE_OPTION.fullmatch(arg):
            beam.append(arg)
            continue
        hint = f"did you mean {close[0]}? " if close else ""
        after = "Beam options go after --" if component.beam else f"see {p.prog} --help"
        raise UsageError(f"unknown option {name} ({hint}{after})")
    if beam and old is not None:
        old.warn()
    return beam


def _flag_values(component: Component[Any], args: argparse.Namespace) -> dict[str, Any]:
    """{dotted config key: value} of the generated flags given on the command line."""
    given = vars(args)
    values = {name: given[name] for name in component.reads if name in given}
    if component.config_class is not None:
        for f, _, _ in option_fields(component.config_class):
            if f.name in given:
                values[f"{component.config_section}.{f.name}"] = given[f.name]
    return values


def _without_flags(p: argparse.ArgumentParser, argv: list[str], names: set[str]) -> list[str]:
    """argv without the flags whose destinations are `names` (and their values)."""
    actions = {o: a for a in p._actions for o in a.option_strings if a.dest in names}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in actions:
            skip = "=" not in arg and actions[name].nargs != 0
            continue
        out.append(arg)
    return out


def parse(component: Component[Any], argv: Sequence[str]) -> CommandLine[Any]:
    """The command line of a component's command, parsed and its config loaded."""
    p = parser(component)
    own, beam_args = split_beam_args(argv) if component.beam else (list(argv), [])
    args, unknown = p.parse_known_intermixed_args(own)
    beam_args = _beam_options(component, p, unknown) + beam_args
    for flag in component.flags:
        value = getattr(args, flag.name)
        if flag.ge is not None and value is not None and value < flag.ge:
            p.error(f"{kebab(flag.name)} must be >= {flag.ge}, got {value}")
    values = _flag_values(component, args)
    if beam_args:
        values[f"{component.config_section}.beam_args"] = beam_args
    pipeline, given = load_config(args.config, args.overrides, component.config_section, values)
    require(p, given, component.requires)
    inputs: dict[str, Artifact | None] = {
        name: Artifact(spec.type, value)
        for name, spec in _cli_inputs(component).items()
        if (value := getattr(args, name)) is not None
    }
    runtime = {f.name for f in component.flags}
    return CommandLine(
        component=component,
        pipeline=pipeline,
        config=component.section_of(pipeline),
        inputs=inputs,
        output=args.output or "",
        flags={name: getattr(args, name) for name in runtime},
        given=given,
        config_argv=_without_flags(p, own, runtime) + (["--", *beam_args] if beam_args else []),
        run=lambda ctx: run_standalone(component, ctx),
        error=p.error,
    )


def run_standalone(component: Component[Any], ctx: ExecutionContext[Any]) -> dict:
    """`run` for a command: when the output lies inside a pipeline_root, the root's lock is
    held meanwhile (core/locking.py), so it never writes beside a pipeline run."""
    names = {c.name for c in registry.components()}
    command = f"transfer-pipeline {component.command}"
    with locking.hold_for_output(ctx.output_dir, command, names):
        return component.run(ctx)


def main(component: Component[Any], argv: Sequence[str]) -> int:
    """`transfer-pipeline <component.command> ...`."""
    return int(component.run_command(parse(component, argv)) or 0)
