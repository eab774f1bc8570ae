"""`transfer-pipeline <command> ...`: one console script, a dispatcher over every registered
component's subcommand (core/registry.py) and the tools below.

A component's command line is generated from its declarations (core/commandline.py: one
grammar for every command, docs/cli.md), so a component runs alone exactly as the pipeline runs
it (the same `run(ctx)`). Heavy modules are imported lazily: TensorFlow and Beam take seconds to
import and `--help` should not.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys

from pipeline_components.core import children, logs
from pipeline_components.core.errors import PipelineError

# Commands that are not pipeline components: command -> ("module" with main(argv), or
# "module:function" taking argv, help)
TOOLS = {
    "init": (
        "pipeline_components.tools.init",
        "look at a folder of images and write a commented pipeline.yaml for it",
    ),
    "run": ("pipeline_components.orchestration.runner", "run the whole pipeline (cached)"),
    "versions": (
        "pipeline_components.pusher.versions:versions_main",
        "list a model's pushed versions: labels, accuracy, fingerprints, rollbacks",
    ),
    "rollback": (
        "pipeline_components.pusher.versions:rollback_main",
        "serve an older version as stable; move the newer ones aside for good",
    ),
    "promote": (
        "pipeline_components.pusher.versions:promote_main",
        "move the stable label to a version (default: the canary)",
    ),
    "gc": (
        "pipeline_components.orchestration.gc",
        "remove what dead runs left (temporary outputs, records left running, an interrupted "
        "push); refused while a run holds the pipeline_root",
    ),
    "serve": ("serving.server", "TF-Serving-compatible gRPC and REST server over model versions"),
    "predict": ("serving.client", "send images to TF Serving over gRPC or REST"),
    "validate-data": (
        "pipeline_components.tools.validate_data",
        "statistics, schema and anomalies of an ExampleGen output (data validation alone)",
    ),
    "demo": (
        "pipeline_components.tools.demo",
        "make demo: sample data, the whole pipeline, gRPC predictions (configs/demo.yaml)",
    ),
    "config-reference": (
        "pipeline_components.tools.config_reference",
        "write docs/configuration.md from the config classes (--check: is it current?)",
    ),
    "sample-data": (
        "pipeline_components.tools.sample_data",
        "generate a small learnable image dataset",
    ),
    "compile-kfp": (
        "pipeline_components.orchestration.kfp",
        "compile the pipeline to a Kubeflow Pipelines v2 spec (one task per component)",
    ),
    "step": (
        "pipeline_components.orchestration.step",
        "run one component as its own task of a run (what each KFP task runs)",
    ),
}


def commands() -> dict[str, str]:
    """Every command with its one-line help: the components' (in pipeline order), then TOOLS."""
    from pipeline_components.core import registry

    found = {c.command: c.description for c in registry.pipeline_order() if c.command}
    found.update({name: help_ for name, (_, help_) in TOOLS.items()})
    return found


def usage() -> str:
    listed = commands()
    width = max(map(len, listed))
    lines = [
        "usage: transfer-pipeline <command> [options]   (transfer-pipeline <command> --help)",
        "",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, help_ in listed.items()]
    return "\n".join(lines)


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")


def setup_logging(quiet: bool = False, log_format: str = "text") -> None:
    """The root logger: `--quiet` and `--log-format` of every command (core/logs.py)."""
    logs.configure(quiet, log_format)


def print_anything() -> None:
    """Never die printing a name: stdout and stderr keep the encoding the environment chose
    (UTF-8 nearly always), and a character it cannot encode (an emoji under
    PYTHONIOENCODING=ascii or a Latin-1 locale, a lone surrogate from a non-UTF-8 file name) is
    written as a backslash escape instead of raising UnicodeEncodeError. Files are UTF-8 always."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, io.UnsupportedOperation):  # closed or detached
                reconfigure(errors="backslashreplace")


def dispatch(command: str, argv: list[str]) -> int:
    """Run one command's main(argv)."""
    from pipeline_components.core import commandline, registry

    component = registry.by_command(command)
    if component is not None:
        return commandline.main(component, argv)
    module_name, _, function = TOOLS[command][0].partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, function or "main")(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    children.die_with_parent()  # started by the pipeline (core/children.py): die with it
    argv = list(sys.argv[1:] if argv is None else argv)
    print_anything()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from pipeline_components import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands():
        print(
            f"transfer-pipeline: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr
        )
        return 2
    quiet_tensorflow()
    quiet, log_format = logs.options(rest)
    setup_logging(quiet, log_format)
    try:
        return dispatch(command, rest)
    except PipelineError as e:
        logs.last_line(f"transfer-pipeline {command}: error: {e}", log_format)
        return e.exit_code
    except KeyboardInterrupt:
        logs.last_line(f"transfer-pipeline {command}: interrupted", log_format)
        return 130


if __name__ == "__main__":
    sys.exit(main())
