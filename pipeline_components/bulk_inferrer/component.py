"""The BulkInferrer's spec: label images with a model, as TFX's BulkInferrer does, on Beam.

    transfer-pipeline batch-predict --model M --input I --output O [--config FILE]
        [--version N | --version-label L --model-config-file models.config] [--model-name N]
        [--output-format jsonl|csv] [--batch-size 32] [--num-shards 0] [--max-image-pixels N]
        [--model-copies N] [KEY=VALUE ...] [-- BEAM_ARGS]

`M` is a SavedModel, or a model base path `<serving_dir>/<model_name>` (its newest version, a
`--version`, or the version a label names in TF Serving's models.config); `I` is an image
folder (any depth, gs:// works), a glob, or ExampleGen's output. In a pipeline run it comes
after the Pusher, labels `batch_predict.input` with the version just pushed, and is skipped when
`batch_predict.input` is not set (the default) or nothing new was pushed.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.bulk_inferrer import present
from pipeline_components.bulk_inferrer.config import BatchPredictConfig
from pipeline_components.core import artifacts, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.component import (
    CommandLine,
    Component,
    ExecutionContext,
    Flag,
    Input,
)


class BulkInferrer(Component[BatchPredictConfig]):
    name = "BulkInferrer"
    description = "label images with a model (Beam RunInference): predictions, PredictionLogs"
    command = "batch-predict"
    config_section = "batch_predict"
    config_class = BatchPredictConfig
    inputs = {"push": Input(artifacts.PUSHED_MODEL)}
    outputs = {"inference_result": artifacts.INFERENCE_RESULT}
    presenter = present
    reads = ("model_name",)  # in its rows (its command: the base path's name unless given)
    requires = ("batch_predict.input",)
    beam = True
    # its command names the model (--model), or a Pusher's push.json (--push)
    cli_inputs = {"push": Input(artifacts.PUSHED_MODEL, optional=True)}
    flags = (
        Flag(
            "model",
            "a SavedModel, or a model base path <serving_dir>/<model_name> (newest version)",
            metavar="PATH",
        ),
        Flag("version", "version of a model base path", int),
        Flag("version_label", "a version label defined in --model-config-file", metavar="LABEL"),
        Flag("model_config_file", "TF Serving models.config (for --version-label)", metavar="FILE"),
    )

    def skip_reason(self, ctx: ExecutionContext[BatchPredictConfig]) -> str | None:
        if not ctx.config.input:
            return "batch_predict.input is not set"
        push = fsutil.read_json(ctx.input_uri("push"), "push.json")
        if not push.get("pushed"):
            return f"no model was pushed in this run ({push.get('reason', '')})"
        return None

    def external_inputs(self, ctx: ExecutionContext[BatchPredictConfig]) -> dict[str, Any]:
        from pipeline_components.bulk_inferrer import executor

        path = ctx.config.input
        beam_args = core_beam.setup(ctx.config.beam_args, ctx.pipeline).args
        listing = executor.input_fingerprint(str(path), beam_args)
        return {"input": path, "listing": listing}

    def run(self, ctx: ExecutionContext[BatchPredictConfig]) -> dict:
        from pipeline_components.bulk_inferrer import executor

        push = fsutil.read_json(ctx.input_uri("push"), "push.json")
        model = executor.resolve_model(push["path"], model_name=ctx.pipeline.model_name)
        options = executor.options_from(ctx.config, ctx.pipeline)
        summary = executor.run_batch_predict(model, str(ctx.config.input), ctx.output_dir, options)
        return executor.run_result(summary)

    def run_command(self, cmd: CommandLine[BatchPredictConfig]) -> int:
        from pipeline_components.bulk_inferrer import executor

        path = cmd.flags["model"]
        if path is None and cmd.inputs.get("push") is None:
            cmd.error("give --model (a SavedModel or a model base path) or --push push.json")
        if path is None:
            path = fsutil.read_json(cmd.inputs["push"].uri, "push.json").get("path")  # type: ignore[union-attr]
            if not path:
                cmd.error(f"--push {cmd.inputs['push']}: no model was pushed")
        model = executor.resolve_model(
            path,
            cmd.flags["version"],
            cmd.flags["version_label"],
            cmd.flags["model_config_file"],
            cmd.pipeline.model_name if "model_name" in cmd.given else None,
        )
        options = executor.options_from(cmd.config, cmd.pipeline)
        summary = executor.run_batch_predict(model, str(cmd.config.input), cmd.output, options)
        print(executor.format_summary(summary))
        print(f"wrote {cmd.output}")
        return 0


COMPONENT = BulkInferrer()
