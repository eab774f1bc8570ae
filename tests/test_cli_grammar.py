"""One command-line grammar for every command, generated from the components' declarations and
their config classes' option metadata (core/commandline.py, docs/cli.md): --config, KEY=VALUE
and the defaults in every --help; defaults < file < flags < KEY=VALUE; the old spellings of
DEPRECATED still parse, each with its one line on stderr; the shipped manifests use none."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import yaml

from pipeline_components import cli
from pipeline_components.core import commandline, registry
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import gc, kfp, runner, step
from pipeline_components.pusher import versions
from pipeline_components.tools import validate_data
from serving import client
from serving.client_lite import cli as lite_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = [c for c in registry.pipeline_order() if c.command]
# a minimal command line of each command: the required flags (the paths need not exist)
BASE = {
    "example-gen": ["--data-root", "d", "--output", "o"],
    "statistics-gen": ["--examples", "e", "--output", "o"],
    "schema-gen": ["--statistics", "s", "--output", "o"],
    "validate-examples": ["--statistics", "s", "--schema", "g", "--output", "o"],
    "train": ["--examples", "e", "--output", "o"],
    "evaluate": ["--model", "m", "--examples", "e", "--output", "o"],
    "infra-validate": ["--model", "m", "--examples", "e", "--evaluation", "v", "--blessing", "b"]
    + ["--output", "o"],
    "push": ["--model", "m", "--blessing", "b", "--serving-dir", "s", "--model-name", "n"],
    "batch-predict": ["--model", "m", "--input", "i", "--output", "o"],
    "rollback": ["--serving-dir", "s", "--model-name", "n"],
    "validate-data": ["--examples", "e"],
    "predict": ["--server", "localhost:8500", "--model-name", "m", "x.jpg"],
}
# tools that read the config: their parsers
TOOL_PARSERS = {
    "run": runner.parser,
    "gc": gc.parser,
    "compile-kfp": kfp.parser,
    "versions": lambda: versions.parser("versions"),
    "rollback": lambda: versions.parser("rollback"),
    "promote": lambda: versions.parser("promote"),
}


def flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps lines


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    return flat(capsys.readouterr().out)


@pytest.mark.parametrize("component", COMMANDS, ids=lambda c: c.command)
def test_every_component_command_shows_config_overrides_and_defaults(component, capsys):
    out = help_of(component.command, capsys)
    assert "--config FILE" in out and "KEY=VALUE" in out
    assert "--quiet" in out and "--log-format {text,json}" in out  # core/logs.py, for schedulers
    assert "Precedence: the defaults shown < --config FILE < flags < KEY=VALUE." in out
    inputs = component.inputs if component.cli_inputs is None else component.cli_inputs
    for name in inputs:
        assert f"{commandline.kebab(name)} URI" in out
    assert "--output DIR" in out
    for name in component.reads:
        assert commandline.kebab(name) in out
    for flag in component.flags:
        assert commandline.kebab(flag.name) in out
    if component.beam:
        assert "Beam options go after --" in out
    if component.config_class is None:
        return
    assert f"a bare key=value means {component.config_section}.key" in out
    fields = commandline.option_fields(component.config_class)
    assert fields, "a section with no option a flag can set"
    for f, _kind, nullable in fields:
        default = commandline.default_of(f)
        assert commandline.kebab(f.name) in out
        assert f.metadata.get("doc"), f"{component.config_section}.{f.name} has no doc"
        assert flat(commandline.option_help(f, default, nullable)).replace("%%", "%") in out
        assert f"(default: {commandline.show(default)})" in out
    flagged = {f.name for f, _, _ in fields}
    for f in dataclasses.fields(component.config_class):  # no flag: KEY=VALUE, with its doc
        if f.name not in flagged:
            shown = f"{f.name}={commandline.show(commandline.default_of(f))}"
            assert f"{shown} ({flat(f.metadata['doc'])})" in out, f.name


@pytest.mark.parametrize("command", sorted(TOOL_PARSERS) + ["validate-data", "step"])
def test_every_tool_that_reads_the_config_takes_config_and_overrides(command, capsys):
    out = help_of(command, capsys)
    assert "--config FILE" in out and "KEY=VALUE" in out
    assert "--quiet" in out and "--log-format {text,json}" in out


def test_precedence_is_defaults_file_flags_overrides(tmp_path):
    trainer = registry.by_command("train")
    path = tmp_path / "p.yaml"
    path.write_text("model_name: m\ntrainer: {epochs: 3, batch_size: 8, steps_per_epoch: 5}\n")

    def parse(*argv: str):
        return commandline.parse(trainer, [*BASE["train"], *argv])

    assert parse().config.epochs == 100  # the class default
    assert (parse("--config", str(path)).config.epochs, parse("--epochs", "2").config.epochs) == (
        3,
        2,
    )
    cmd = parse("--config", str(path), "--epochs", "4", "--steps-per-epoch", "null")
    assert (cmd.config.epochs, cmd.config.batch_size, cmd.config.steps_per_epoch) == (4, 8, None)
    cmd = parse("--config", str(path), "--epochs", "4", "epochs=5", "trainer.batch_size=9")
    assert (cmd.config.epochs, cmd.config.batch_size) == (5, 9)
    assert {"trainer.epochs", "trainer.batch_size", "model_name"} <= cmd.given
    assert "serving_dir" not in cmd.given
    # a top-level key as itself, a list through KEY=VALUE, a bool both ways
    cmd = parse("model_name=x", "image_size=[32,32]", "--require-gpu")
    assert (cmd.pipeline.model_name, cmd.config.image_size, cmd.config.require_gpu) == (
        "x",
        [32, 32],
        True,
    )
    assert parse("--require-gpu", "--no-require-gpu").config.require_gpu is False


def test_flag_values_are_checked_like_the_file_one_line_naming_the_key(capsys):
    cases = [
        (["--head", "round"], "trainer.head: must be one of ['flatten', 'global_average']"),
        (["--epochs", "0"], "trainer.epochs: must be >= 1, got 0"),
        (["dropout=1.5"], "trainer.dropout: must be in [0, 1), got 1.5"),
    ]
    for extra, message in cases:
        code = cli.main(["train", *BASE["train"], *extra])
        err = capsys.readouterr().err.strip()
        assert code == 1 and message in err and len(err.splitlines()) == 1, err


def test_a_bare_key_needs_the_section_where_the_command_has_none(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("{}\n")
    with pytest.raises(PipelineError, match=r"name the section of 'epochs'.*trainer\.epochs=2"):
        commandline.load_config(None, ["epochs=2"], None)
    code = cli.main(["run", "--config", str(path), "epochs=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "e.g. trainer.epochs=2" in err and len(err.splitlines()) == 1
    # a command's own section: the bare key is its own
    cmd = commandline.parse(registry.by_command("evaluate"), [*BASE["evaluate"], "batch_size=7"])
    assert cmd.config.batch_size == 7


def test_a_command_is_told_where_it_writes_never_defaulted(tmp_path, capsys):
    argv = ["push", "--model", "m", "--blessing", "b", "--model-name", "n"]
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "--serving-dir is required" in capsys.readouterr().err
    # --config may tell it instead of the flag
    path = tmp_path / "p.yaml"
    path.write_text(f"serving_dir: {tmp_path / 'serving'}\nmodel_name: shapes\n")
    cmd = commandline.parse(
        registry.by_command("push"), ["--model", "m", "--blessing", "b"] + ["--config", str(path)]
    )
    assert (cmd.pipeline.serving_dir, cmd.pipeline.model_name) == (
        str(tmp_path / "serving"),
        "shapes",
    )
    assert cmd.output == ""  # no --output: push.json is not written


def new_spelling(d: commandline.Deprecated) -> list[str]:
    """The command line of a DEPRECATED entry, written the new way."""
    if d.flag:
        return [d.new if a == d.old else a for a in d.example]
    rewrite = {
        ("example-gen", commandline.BEAM_BEFORE_DASHES): ["--", *d.example],
        ("validate-data", commandline.NO_OUTPUT): ["--output", validate_data.DEFAULT_OUTPUT],
    }
    return rewrite[(d.command, d.old)]


def parsed(command: str, argv: list[str]) -> dict:
    """What a command line means: the config, flags and inputs it parses to."""
    component = registry.by_command(command)
    if component is not None:
        cmd = commandline.parse(component, argv)
        inputs = {k: v.uri for k, v in cmd.inputs.items() if v is not None}
        return {"config": cmd.pipeline, "flags": cmd.flags, "inputs": inputs, "out": cmd.output}
    if command == "validate-data":
        args, beam_args = validate_data.parse_args(argv)
        return {**vars(args), "beam_args": beam_args}
    if command == "predict":
        return vars(client.build_parser().parse_args(argv))
    return vars(commandline.parse_served_model(versions.parser(command), argv))


@pytest.mark.parametrize("d", commandline.DEPRECATED, ids=lambda d: f"{d.command} {d.old}")
def test_every_old_spelling_still_parses_with_its_deprecation_line(d, capsys):
    old = parsed(d.command, [*BASE[d.command], *d.example])
    err = capsys.readouterr().err
    assert err.splitlines() == [d.line()]
    assert d.new in d.line() and d.old in d.line()
    new = parsed(d.command, [*BASE[d.command], *new_spelling(d)])
    assert capsys.readouterr().err == ""
    assert old == new


def test_the_tf_free_client_keeps_the_same_old_spellings(capsys):
    """`transfer-pipeline-predict` (serving/client_lite, which imports nothing of the project)
    keeps its own copy of predict's rows; both console scripts say the same line."""
    rows = [(d.old, d.new, d.example) for d in commandline.DEPRECATED if d.command == "predict"]
    assert list(lite_cli.DEPRECATED) == rows and rows
    base = BASE["predict"]
    for old, new, example in lite_cli.DEPRECATED:
        args = lite_cli.build_parser().parse_args([*base, *example])
        line = lite_cli.deprecation_line(lite_cli.PROG, old, new)
        assert capsys.readouterr().err.splitlines() == [line]
        assert line.startswith("transfer-pipeline-predict: ")
        assert (
            line.split(": ", 1)[1]
            == commandline.deprecated("predict", old).line().split(": ", 1)[1]
        )
        renamed = [new if a == old else a for a in example]
        assert vars(lite_cli.build_parser().parse_args([*base, *renamed])) == vars(args)
    with pytest.raises(SystemExit):
        lite_cli.build_parser().parse_args([*base, "--format", "yaml"])  # still checked
    assert "invalid choice: 'yaml'" in capsys.readouterr().err


def test_renamed_flags_are_hidden_from_help(capsys):
    for d in commandline.DEPRECATED:
        if d.flag:
            out = help_of(d.command, capsys)
            assert d.new in out and f"{d.old} " not in out


def shipped_command_lines() -> list[tuple[str, list[str]]]:
    """Every `transfer-pipeline` command line of a container in k8s/."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPO, "k8s", "**", "*.yaml"), recursive=True)):
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
        for doc in docs:
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    if node.get("command") == [cli_script()]:
                        found.append((os.path.relpath(path, REPO), list(node.get("args", []))))
                    stack.extend(node.values())
                elif isinstance(node, list):
                    stack.extend(node)
    return found


def cli_script() -> str:
    return "transfer-pipeline"


def test_the_shipped_manifests_use_the_current_spellings(capsys):
    lines = shipped_command_lines()
    assert {args[0] for _, args in lines} >= {"run", "train"}
    for where, (command, *argv) in lines:
        component = registry.by_command(command)
        p = commandline.parser(component) if component else TOOL_PARSERS[command]()
        _, unknown = p.parse_known_intermixed_args(argv)
        assert unknown == [], f"{where}: {command} {unknown}"
        assert capsys.readouterr().err == "", f"{where}: an old spelling"


def test_step_takes_overrides_for_its_component(tmp_path):
    args = step.parse_args(["Trainer", "--run-id", "r", "--config", "p.yaml", "epochs=2"])
    assert (args.components, args.overrides) == (["Trainer"], ["epochs=2"])
