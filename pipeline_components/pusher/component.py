"""The Pusher's spec: Model + ModelBlessing (+ InfraBlessing) -> PushedModel, a new version under
`<serving_dir>/<model_name>/` that TF Serving picks up.

    transfer-pipeline push --model T/saved_model --blessing E/blessing.json \
        --serving-dir S --model-name M [--infra-blessing I/infra_blessing.json] \
        [--keep-versions 3] [--output P]

It runs in every pipeline run (never cached): it pushes nothing when the model is not blessed or
is already the newest served version, so a re-run on unchanged data pushes nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import PipelineConfig, option, section_from_dict
from pipeline_components.core.errors import PipelineError


@dataclasses.dataclass
class PusherConfig:
    keep_versions: int = option(3, ge=1, doc="served versions kept; older ones are deleted")


class Pusher(Component):
    name = "Pusher"
    description = "copy a blessed model to the serving directory"
    command = "push"
    config_section = "pusher"
    config_class = PusherConfig
    inputs = {
        "model": Input(artifacts.MODEL),
        "blessing": Input(artifacts.MODEL_BLESSING),
        "infra_blessing": Input(artifacts.INFRA_BLESSING, optional=True),
    }
    outputs = {"push": artifacts.PUSHED_MODEL}
    cacheable = False  # what is served can change between runs; pushing is idempotent instead
    task_outputs = {"pushed": bool, "version": int}  # version 0: nothing pushed

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        return {"serving_dir": ctx.pipeline.serving_dir, "model_name": ctx.pipeline.model_name}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.pusher import executor

        try:
            return executor.run_pusher(
                ctx.input_uri("model"),
                ctx.input_uri("blessing"),
                ctx.output_dir,
                ctx.config,
                serving_dir=ctx.pipeline.serving_dir,
                model_name=ctx.pipeline.model_name,
                infra_blessing_path=ctx.optional_uri("infra_blessing"),
            )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
                raise PipelineError(
                    f"cannot write to {ctx.pipeline.serving_dir}: {e.strerror}"
                ) from None
            raise

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        if r.get("pushed"):
            return f"pushed version {r['version']} -> {r['path']}"
        return f"not pushed: {r.get('reason', '')}"

    def record_fields(self, entry: dict) -> dict:
        return {"push": entry["result"]} if entry.get("result") else {}

    def main(self, argv: list[str]) -> int:
        p = argparse.ArgumentParser(
            prog="transfer-pipeline push",
            description="Copy a blessed model to the serving directory.",
        )
        p.add_argument("--model", required=True, help="the exported saved_model/ directory")
        p.add_argument("--blessing", required=True, help="the Evaluator's blessing.json")
        p.add_argument("--serving-dir", required=True, help="TF Serving's model root")
        p.add_argument("--model-name", required=True)
        p.add_argument("--infra-blessing", help="the InfraValidator's infra_blessing.json")
        p.add_argument("--keep-versions", type=int, default=PusherConfig().keep_versions)
        p.add_argument("--output", default=".", help="where push.json is written (default: .)")
        args = p.parse_args(argv)
        config = section_from_dict(
            PusherConfig, {"keep_versions": args.keep_versions}, "pusher", "command line"
        )
        pipeline = PipelineConfig(
            serving_dir=args.serving_dir, model_name=args.model_name, sections={"pusher": config}
        )
        inputs: dict[str, Artifact | None] = {
            "model": Artifact(artifacts.MODEL, args.model),
            "blessing": Artifact(artifacts.MODEL_BLESSING, args.blessing),
            "infra_blessing": (
                Artifact(artifacts.INFRA_BLESSING, args.infra_blessing)
                if args.infra_blessing
                else None
            ),
        }
        result = self.run(ExecutionContext(pipeline, config, inputs, args.output))
        if result["pushed"]:
            print(f"pushed version {result['version']} to {result['path']}")
        else:
            print(f"not pushed: {result['reason']}")
        return 0


COMPONENT = Pusher()
