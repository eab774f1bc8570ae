"""The Pusher's spec: Model + ModelBlessing (+ InfraBlessing) -> PushedModel, a new version under
`<serving_dir>/<model_name>/` that TF Serving picks up.

    transfer-pipeline push --model T/saved_model --blessing E/blessing.json \
        --serving-dir S --model-name M [--infra-blessing I/infra_blessing.json] \
        [--keep-versions 3] [--version-label stable|canary] [--allow-contract-change] \
        [--output P] [--config FILE] [KEY=VALUE ...]

It runs in every pipeline run (never cached): it pushes nothing when the model is not blessed,
is already the newest served version or was rolled back, so a re-run on unchanged data pushes
nothing; nor when its serving contract (labels, signatures, input: core/contract.py) differs
from the newest served version's, unless `allow_contract_change` (then recorded). The check is
here, not in the Evaluator, because the Pusher is the one step that runs every time and holds
the model's registry lock: it compares with what is served at the moment of the push. It
labels what it pushes `stable` or `canary` in `<serving_dir>/models.config`
(pusher/version_registry.py). Its command writes push.json only into an `--output` it is given.
"""

from __future__ import annotations

import errno
from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.component import CommandLine, Component, ExecutionContext, Input
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.pusher import present
from pipeline_components.pusher.config import PusherConfig


class Pusher(Component[PusherConfig]):
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
    presenter = present
    reads = ("serving_dir", "model_name")
    requires = ("serving_dir", "model_name")  # where it writes: never a default
    output_required = False

    def external_inputs(self, ctx: ExecutionContext[PusherConfig]) -> dict[str, Any]:
        return {"serving_dir": ctx.pipeline.serving_dir, "model_name": ctx.pipeline.model_name}

    def run(self, ctx: ExecutionContext[PusherConfig]) -> dict:
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
                run_id=ctx.run_id,
            )
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
                raise PipelineError(
                    f"cannot write to {ctx.pipeline.serving_dir}: {e.strerror}"
                ) from None
            raise

    def recover(self, pipeline: PipelineConfig) -> list[dict]:
        """Finish or roll back a push a dead run left, and remove its leftovers, under the
        model's registry lock (pusher/journal.py). A registry held by a live push elsewhere, or
        a serving_dir this process cannot write, is left for the Pusher itself."""
        from pipeline_components.core import fsutil, locking
        from pipeline_components.pusher.journal import describe
        from pipeline_components.pusher.versions import ModelVersions

        versions = ModelVersions(pipeline.serving_dir, pipeline.model_name)
        if not (versions.exists() or fsutil.isdir(versions.base_path)):
            return []
        try:
            with versions.locked("transfer-pipeline gc", wait_s=5.0):
                return [{**item, "text": describe(item)} for item in versions.repaired]
        except (locking.PipelineLocked, OSError) as e:
            return [{"action": "not_repaired", "text": f"serving_dir not checked: {e}"}]

    def run_command(self, cmd: CommandLine[PusherConfig]) -> int:
        result = cmd.run(cmd.context())
        for text in result.get("repaired_text", []):
            print(f"repaired: {text}")
        if result["pushed"]:
            label = cmd.config.version_label
            print(f"pushed version {result['version']} as {label} to {result['path']}")
        else:
            print(f"not pushed: {result['reason']}")
        return 0


COMPONENT = Pusher()
