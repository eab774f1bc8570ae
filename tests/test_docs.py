"""The README and docs/ cannot drift from the code (CONTRIBUTING.md, "Docs that stay true"):

- every `transfer-pipeline ...` command they show parses with the real command line (argparse and
  the KEY=VALUE overrides through the config loader; nothing runs); a synopsis (`[...]`, `<...>`,
  `|`, `...`) names only flags its command has;
- every block of program output is fenced `text` and either marked as an example or produced by
  a test here that compares it with what the code prints;
- docs/configuration.md is what `transfer-pipeline config-reference` generates;
- every docs page is linked from the README, every relative link and anchor resolves, and
  `pip install` names only this repository's paths.
Each check is shown failing on a deliberately stale line.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from class_counter.component import COMPONENT as COUNTER
from pipeline_components import cli
from pipeline_components.core import commandline, registry
from pipeline_components.core import config as config_lib
from pipeline_components.core.errors import PipelineError
from pipeline_components.orchestration import gc, kfp, runner, step
from pipeline_components.pusher import versions
from pipeline_components.tools import config_reference, demo, init, sample_data, validate_data
from serving import server
from serving.client_lite import cli as lite_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("transfer-pipeline", "transfer-pipeline-predict")
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- (example|produced by (\S+)::(\w+))\b.*-->$")
# lines a program prints, which must not hide in unmarked blocks
OUTPUT_LIKE = re.compile(
    r"^(transfer-pipeline [a-z-]+: |run \d{8}-\d{6}-\w+: |wrote |\[\d+/\d+\] |next: |data: )"
)


def tool_parsers():
    """Every command's argparse parser: the generated ones, then the tools'."""
    found = {c.command: (lambda c=c: commandline.parser(c)) for c in registry.components()}
    found.update({
        "run": runner.parser, "gc": gc.parser, "compile-kfp": kfp.parser,
        "versions": lambda: versions.parser("versions"),
        "rollback": lambda: versions.parser("rollback"),
        "promote": lambda: versions.parser("promote"),
        "validate-data": validate_data.build_parser, "step": step.build_parser,
        "demo": demo.build_parser, "init": init.build_parser,
        "sample-data": sample_data.build_parser,
        "config-reference": config_reference.build_parser,
        "serve": server.build_parser,
        "predict": lambda: lite_cli.build_parser("transfer-pipeline predict"),
    })  # fmt: skip
    return found


PARSERS = tool_parsers()


# --------------------------------------------------------------------------- reading the pages


@dataclasses.dataclass
class Block:
    lang: str
    line: int  # of the opening fence, from 1
    text: str
    marker: str  # the line before the fence, stripped


def blocks(text: str) -> list[Block]:
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        before = next((x.strip() for x in reversed(lines[:start]) if x.strip()), "")
        out.append(Block(m.group(1), start + 1, "\n".join(lines[start + 1 : j]), before))
        i = j + 1
    return out


def prose(text: str) -> str:
    """The text outside fenced blocks (code blocks blanked, line numbers kept)."""
    lines, inside = text.splitlines(), False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            inside = not inside
            lines[i] = ""
        elif inside:
            lines[i] = ""
    return "\n".join(lines)


def commands(text: str) -> list[tuple[int, str, bool]]:
    """(line, command, whole) of every transfer-pipeline command: lines of shell blocks
    (continuations joined, `$ ` prompts dropped; whole: parsed as they are) and inline code
    spans of the prose (references to a command: its name and the flags named must exist)."""
    found = []
    for b in blocks(text):
        if b.lang not in ("bash", "sh", "shell", "console", ""):
            continue
        lines = b.text.splitlines()
        i = 0
        while i < len(lines):
            line, first = lines[i].strip().removeprefix("$ "), b.line + 1 + i
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            if line.split(" ", 1)[0] in PROGRAMS:
                found.append((first, line, True))
            i += 1
    body = prose(text)
    for m in re.finditer(r"`((?:transfer-pipeline|transfer-pipeline-predict) [^`]+)`", body):
        found.append((body.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()), False))
    return found


# --------------------------------------------------------------------------- checking a command


def is_synopsis(tokens: list[str]) -> bool:
    """A line that shows a command's form: `[--x N]`, `<path>`, `a|b`, `IMAGE...`, `...`; a
    KEY=VALUE token (`image_size=[32,32]`) is a value, not a bracket."""
    return any(
        t.startswith(("[", "<")) or t in ("...", "…", "|")
        or ("=" not in t and (t.endswith(("]", "...", "…")) or "|" in t))
        for t in tokens
    )  # fmt: skip


SHELL_OPERATORS = {"&", "&&", ";", "||", ">", "2>&1", ">>"}


def check_command(command: str, config_exists=os.path.exists, whole: bool = True) -> str | None:
    """None when `command` parses as the real CLI parses it, else why not. Not `whole`: a
    reference in prose, whose command and named flags must exist."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError as e:
        return f"cannot be split as a shell line: {e}"
    cut = next((i for i, t in enumerate(tokens) if t in SHELL_OPERATORS), len(tokens))
    tokens = tokens[:cut]
    if tokens[0] == "transfer-pipeline-predict":
        tokens, parser = tokens[1:], lite_cli.build_parser()
        name = "transfer-pipeline-predict"
    else:
        name = tokens[1] if len(tokens) > 1 else ""
        if name in ("--help", "-h", "--version") or name.startswith(("<", "…")):
            return None  # the program's own flags; `transfer-pipeline <command> ...`
        if name.endswith(":"):
            return None  # printed output (test_printed_output_... checks where it stands)
        if name not in cli.commands():
            return f"unknown command {name!r}"
        tokens, parser = tokens[2:], PARSERS[name]()
    if not whole or is_synopsis(tokens):
        return check_synopsis(parser, tokens)
    return parse_whole(name, parser, tokens, config_exists)


def check_synopsis(parser, tokens: list[str]) -> str | None:
    known = {o for a in parser._actions for o in a.option_strings}
    known |= {d.old for d in commandline.DEPRECATED}
    for token in tokens:
        if token == "--":
            break  # Beam's options follow
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", token):
            if flag not in known:
                return f"{flag} is not a flag of this command"
    return None


def parse_whole(name: str, parser, tokens: list[str], config_exists) -> str | None:
    """argparse as the command runs it, then the config the flags and KEY=VALUE make (the
    --config file itself is read only when it exists in the repository)."""
    component = registry.by_command(name)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if component is not None:
                parse_component(component, tokens, config_exists)
            else:
                own, _ = commandline.split_beam_args(tokens)
                args = parser.parse_intermixed_args(own)
                overrides = getattr(args, "overrides", None) or getattr(args, "items", [])
                overrides = [o for o in overrides if "=" in o]
                if overrides or getattr(args, "config", None):
                    path = args.config if args.config and config_exists(args.config) else None
                    commandline.load_config(path, overrides, None)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]
    except PipelineError as e:
        return str(e)
    return None


def parse_component(component, tokens: list[str], config_exists) -> None:
    """commandline.parse, with a --config file that is not in the repository standing in for
    one that sets the top-level keys (where the command requires them)."""
    load_yaml = config_lib.load_yaml
    stand_in = {"data_root": "d", "serving_dir": "s", "model_name": "m"}

    def read(path):
        return load_yaml(path) if config_exists(path) else dict(stand_in)

    config_lib.load_yaml = read
    try:
        commandline.parse(component, tokens)
    finally:
        config_lib.load_yaml = load_yaml


def stale_commands(text: str, config_exists=None) -> list[str]:
    cwd_exists = config_exists or (lambda p: (ROOT / p).is_file())
    return [
        f"line {line}: {command}: {why}"
        for line, command, whole in commands(text)
        if (why := check_command(command, cwd_exists, whole))
    ]


def test_every_command_in_the_docs_parses_with_the_real_cli():
    assert set(PARSERS) >= set(cli.commands()), "a command the docs test cannot parse"
    problems, count = [], 0
    # CONTRIBUTING.md's worked example is tests/class_counter: its command exists once registered
    with registry.registered(COUNTER):
        PARSERS["count-classes"] = lambda: commandline.parser(COUNTER)
        for page in PAGES:
            text = page.read_text()
            count += len(commands(text))
            problems += [f"{page.relative_to(ROOT)}: {p}" for p in stale_commands(text)]
    del PARSERS["count-classes"]
    assert count > 100, count  # the extraction finds them
    assert not problems, "\n".join(problems)


STALE_PAGE = """\
```bash
transfer-pipeline train --examples e --output o --epochz 2
transfer-pipeline run --config configs/demo.yaml trainer.epoch=2
transfer-pipeline push --model M --blessing B --serving-dir S --model-name m [--labelz L]
transfer-pipeline evaluate --model m --examples e --output o --min-accuracy 2
```
"""


def test_a_stale_command_fails_the_docs_test():
    problems = stale_commands(STALE_PAGE)
    assert len(problems) == 4, problems
    assert (
        "line 2:" in problems[0]
        and "unknown option --epochz (did you mean --epochs?" in problems[0]
    )
    assert "unknown key 'trainer.epoch'" in problems[1]
    assert "--labelz is not a flag of this command" in problems[2]
    assert "evaluator.min_accuracy: must be in [0, 1]" in problems[3]
    assert len(stale_commands("see `transfer-pipeline compile-kfp --imagee X`")) == 1  # prose
    # and the current spellings of the same lines parse
    fixed = STALE_PAGE.replace("epochz", "epochs").replace("epoch=", "epochs=")
    fixed = fixed.replace("labelz", "version-label")
    assert stale_commands(fixed.replace("accuracy 2", "accuracy 0.9")) == []


# --------------------------------------------------------------------------- printed output


def _test_names() -> set[str]:
    tree = ast.parse(Path(__file__).read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def unmarked_outputs(text: str) -> list[str]:
    problems = []
    for b in blocks(text):
        if b.lang == "text":
            m = MARKER.match(b.marker)
            if not m:
                problems.append(f"line {b.line}: a text block without <!-- example --> or "
                                "<!-- produced by tests/...::test -->")  # fmt: skip
            elif m.group(2) and m.group(3) not in _test_names():
                problems.append(f"line {b.line}: {m.group(3)} is not a test of {m.group(2)}")
        elif b.lang in ("", "bash"):
            for k, line in enumerate(b.text.splitlines()):
                shown = line.lstrip("# ").rstrip() if b.lang == "bash" else line
                if OUTPUT_LIKE.match(shown):
                    problems.append(
                        f"line {b.line + 1 + k}: looks like program output; fence it `text` "
                        f"with a marker: {shown[:60]}"
                    )
    return problems


def test_printed_output_is_produced_by_a_test_or_marked_as_an_example():
    problems = []
    for page in PAGES:
        problems += [f"{page.relative_to(ROOT)}: {p}" for p in unmarked_outputs(page.read_text())]
    assert not problems, "\n".join(problems)
    stale = "```bash\ntransfer-pipeline compile-kfp ...\n# wrote p.yaml: 5 steps\n```\n"
    stale += "\n```text\nrun 20261128-152145-4142: COMPLETED\n```\n"
    stale += "\n<!-- produced by tests/test_docs.py::test_gone -->\n```text\nx\n```\n"
    problems = unmarked_outputs(stale)
    assert [p.split(":")[0] for p in problems] == ["line 3", "line 6", "line 11"], problems


def produced_block(page: Path, test_name: str) -> str:
    """The text block a test of this file produces (the block after its marker)."""
    for b in blocks(page.read_text()):
        m = MARKER.match(b.marker)
        if m and m.group(3) == test_name:
            return b.text
    raise AssertionError(f"{page} has no block produced by {test_name}")


def test_readme_init_output(tmp_path, monkeypatch, capsys):
    """README, "Your own images": `transfer-pipeline init photos` on a flat folder."""
    monkeypatch.chdir(tmp_path)
    classes = ("circles", "squares", "stripes")
    sample_data.generate("photos", classes, (40,), size=(64, 64), seed=3, splits=(".",))
    assert cli.main(["init", "photos"]) == 0
    assert capsys.readouterr().out.rstrip() == produced_block(
        ROOT / "README.md", "test_readme_init_output"
    )


def test_kubeflow_compile_output(tmp_path, capsys, monkeypatch):
    """docs/kubeflow.md: what `compile-kfp` prints for the shipped Kubeflow overlay."""
    monkeypatch.chdir(ROOT)
    out = tmp_path / "pipeline.kfp.yaml"
    argv = ["compile-kfp", "--config", "k8s/overlays/kubeflow/pipeline.yaml", "--image",
            "registry.example.com/ml/transfer-pipeline:0.1.0", "--output", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out.replace(str(out), "pipeline.kfp.yaml").rstrip()
    assert printed == produced_block(ROOT / "docs/kubeflow.md", "test_kubeflow_compile_output")


# --------------------------------------------------------------------------- the config reference


def test_configuration_reference_is_generated_and_current():
    text = (ROOT / config_reference.DEFAULT_OUTPUT).read_text()
    assert config_reference.stale(text) == [], "run `make docs`"
    for section, _, cls in config_reference.sections():  # every key is there, documented
        for row in config_reference.rows(cls, section + "."):
            assert f"| `{row.key}` |" in text
    # a deliberately stale line: one default changed by hand
    line = "| `example_gen.num_shards` | integer | `4` | >= 1 | TFRecord files per split |"
    assert line.replace("&gt;", ">") in text.replace("&gt;", ">")
    stale = text.replace(
        "| `example_gen.num_shards` | integer | `4` |",
        "| `example_gen.num_shards` | integer | `8` |",
    )
    assert config_reference.stale(stale) == [
        "-| `example_gen.num_shards` | integer | `8` | >= 1 | TFRecord files per split |",
        "+| `example_gen.num_shards` | integer | `4` | >= 1 | TFRecord files per split |",
    ]


def test_config_reference_check_names_the_stale_line(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text(config_reference.render().replace("TFRecord files per split", "shards"))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline_components.tools.config_reference", "--check",
         "--output", str(page)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "is stale (2 line(s) differ; regenerate it with `make docs`)" in done.stderr
    assert "first: -| `example_gen.num_shards` | integer | `4` | >= 1 | shards |" in done.stderr


def test_an_undocumented_option_cannot_reach_the_reference():
    @dataclasses.dataclass
    class Section:
        size: int = config_lib.option(3, ge=1)

    with pytest.raises(ValueError, match="x.size has no doc"):
        list(config_reference.rows(Section, "x."))


# --------------------------------------------------------------------------- links and installs


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(page.read_text()), re.M)}


def broken_links(page: Path) -> list[str]:
    problems = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", prose(page.read_text())):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{page.name}: {target}: no such heading")
    return problems


def test_every_docs_page_is_linked_from_the_readme_and_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "\n".join(problems)
    stale = ROOT / "docs" / ".stale-link-test.md"
    try:
        stale.write_text("# A\n\n[x](components.md#no-such) [y](gone.md) [z](#a)\n")
        assert broken_links(stale) == [
            ".stale-link-test.md: components.md#no-such: no such heading",
            ".stale-link-test.md: gone.md: no such file",
        ]
    finally:
        stale.unlink()


def test_the_readme_is_short_with_its_contents_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    headings = [slug(x[3:]) for x in lines if x.startswith("## ")]
    contents = "\n".join(lines[: lines.index("## The picture")])
    for anchor in headings[1:]:
        assert f"(#{anchor})" in contents, f"the contents do not list {anchor}"


def test_install_instructions_name_only_this_repository():
    installs = []
    for page in PAGES:
        for m in re.finditer(r"pip install ([^\n`#]+)", page.read_text()):
            args = [a for a in shlex.split(m.group(1)) if not a.startswith("-")]
            args = [a for a in args if a not in ("constraints.txt",)]
            installs.append((page.name, args))
    assert len(installs) >= 5
    for page, args in installs:
        for arg in args:
            assert arg.startswith((".", "./")), (
                f"{page}: pip install {arg}: not a path of this repo"
            )


def test_error_messages_name_no_package_of_the_public_index():
    """A message telling the user to install an extra names this repository, not a
    `transfer-pipeline[...]` on PyPI that this project does not own."""
    for path in sorted((ROOT / "pipeline_components").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "pip install 'transfer-pipeline[" not in text, path


def test_the_sample_config_leaves_the_running_mode_to_example_gen():
    """configs/pipeline.yaml pins no DirectRunner mode or worker count, so the choice by input
    size and cores that docs/components.md describes ("Running mode") is what it gets."""
    from pipeline_components.core import beam as core_beam

    cfg = registry.load_config(str(ROOT / "configs" / "pipeline.yaml"))
    beam_args = core_beam.setup(cfg.sections["example_gen"].beam_args, cfg).args
    _, why = core_beam.direct_mode_args(beam_args, 2000, cpus=4)
    assert why.startswith("DirectRunner multi_threading x4: 2000 files < 10000"), why


WITHOUT_LOGGING_FLAGS = {"serve", "predict", "sample-data", "config-reference"}  # docs/cli.md


def test_every_command_but_the_documented_few_takes_quiet_and_log_format():
    for command in cli.commands():
        options = {o for a in PARSERS[command]()._actions for o in a.option_strings}
        has = {"--quiet", "--log-format"} <= options
        assert has == (command not in WITHOUT_LOGGING_FLAGS), command
