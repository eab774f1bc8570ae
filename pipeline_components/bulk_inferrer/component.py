"""The BulkInferrer's spec: label images with a model, as TFX's BulkInferrer does, on Beam.

    transfer-pipeline batch-predict --model M --input I --output O
        [--version N | --version-label L --model-config-file models.config] [--model-name N]
        [--format jsonl|csv] [--batch-size 32] [--num-shards 0] [--max-image-pixels N]
        [--model-copies N] [-- BEAM_ARGS]

`M` is a SavedModel, or a model base path `<serving_dir>/<model_name>` (its newest version, a
`--version`, or the version a label names in TF Serving's models.config); `I` is an image
folder (any depth, gs:// works), a glob, or ExampleGen's output. In a pipeline run it comes
after the Pusher, labels `batch_predict.input` with the version just pushed, and is skipped when
`batch_predict.input` is not set (the default) or nothing new was pushed.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option, section_from_dict
from pipeline_components.core.reporting import e


@dataclasses.dataclass
class BatchPredictConfig:
    input: str | None = option(
        None,
        doc="images to label with each newly pushed model: a folder (any depth), a glob or an "
        "ExampleGen output; null (default): the BulkInferrer is skipped",
    )
    output_format: str = option("jsonl", choices=("jsonl", "csv"), doc="predictions file format")
    batch_size: int = option(32, ge=1, le=65536, doc="images per call of the signature")
    num_shards: int = option(0, ge=0, le=100_000, doc="files per output; 0: the runner decides")
    max_image_pixels: int | None = option(
        None, ge=1, le=2**40, doc="larger images are errors; null: the model's own limit"
    )
    model_copies: int | None = option(
        None,
        ge=1,
        le=1024,
        key=False,
        doc="model copies per machine shared by its worker processes; null: one per process",
    )
    beam_args: list[str] = option(factory=lambda: ["--runner=DirectRunner"], key=False)


class BulkInferrer(Component):
    name = "BulkInferrer"
    description = "label images with a model (Beam RunInference): predictions, PredictionLogs"
    command = "batch-predict"
    config_section = "batch_predict"
    config_class = BatchPredictConfig
    inputs = {"push": Input(artifacts.PUSHED_MODEL)}
    outputs = {"inference_result": artifacts.INFERENCE_RESULT}

    def skip_reason(self, ctx: ExecutionContext) -> str | None:
        if not ctx.config.input:
            return "batch_predict.input is not set"
        push = fsutil.read_json(ctx.input_uri("push"), "push.json")
        if not push.get("pushed"):
            return f"no model was pushed in this run ({push.get('reason', '')})"
        return None

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
        from pipeline_components.bulk_inferrer import executor

        path = ctx.config.input
        listing = executor.input_fingerprint(path, list(ctx.config.beam_args))
        return {"input": path, "listing": listing}

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.bulk_inferrer import executor

        cfg: BatchPredictConfig = ctx.config
        push = fsutil.read_json(ctx.input_uri("push"), "push.json")
        model = executor.resolve_model(push["path"], model_name=ctx.pipeline.model_name)
        summary = executor.run_batch_predict(model, str(cfg.input), ctx.output_dir, options(cfg))
        return _result(summary)

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        classes = " ".join(f"{c}={n}" for c, n in (r.get("per_class") or {}).items())
        return (
            f"labelled {r.get('num_predictions', 0)} images with version "
            f"{r.get('model_version')} ({classes}), {r.get('num_errors', 0)} error(s)"
        )

    def report_html(self, entry: dict, record: dict) -> str:
        r = entry.get("result") or {}
        if not r:
            return ""
        rows = "".join(
            f"<tr><td>{e(c)}</td><td class=num>{e(n)}</td></tr>"
            for c, n in (r.get("per_class") or {}).items()
        )
        return (
            f"<h2>Batch predictions</h2><p>{e(r.get('input'))} labelled with version "
            f"{e(r.get('model_version'))}; errors: {e(r.get('num_errors', 0))} (errors-*.jsonl)</p>"
            f"<table><tr><th>class</th><th>images</th></tr>{rows}</table>"
        )

    def main(self, argv: list[str]) -> int:
        args, beam_args = parse_args(argv)
        config = section_from_dict(
            BatchPredictConfig,
            {
                "input": args.input,
                "output_format": args.format,
                "batch_size": args.batch_size,
                "num_shards": args.num_shards,
                "max_image_pixels": args.max_image_pixels,
                "model_copies": args.model_copies,
                "beam_args": beam_args or BatchPredictConfig().beam_args,
            },
            self.config_section or "",
            source="command line",
        )
        from pipeline_components.bulk_inferrer import executor

        model = executor.resolve_model(
            args.model, args.version, args.version_label, args.model_config_file, args.model_name
        )
        summary = executor.run_batch_predict(model, args.input, args.output, options(config))
        print(executor.format_summary(summary))
        print(f"wrote {args.output}")
        return 0


def options(cfg: BatchPredictConfig) -> Any:
    from pipeline_components.bulk_inferrer import executor

    return executor.BatchPredictOptions(
        output_format=cfg.output_format,
        batch_size=cfg.batch_size,
        num_shards=cfg.num_shards,
        max_image_pixels=cfg.max_image_pixels,
        model_copies=cfg.model_copies,
        beam_args=list(cfg.beam_args) or None,
    )


def _result(summary: dict) -> dict:
    return {
        "input": summary["input"],
        "model_version": summary["model"]["version"],
        "num_predictions": summary["num_predictions"],
        "per_class": summary["per_class"],
        "num_errors": summary["num_errors"],
        "seconds": summary["seconds"],
    }


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags before `--`, Beam options after it."""
    argv = list(argv)
    beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    defaults = BatchPredictConfig()
    p = argparse.ArgumentParser(
        prog="transfer-pipeline batch-predict",
        description="Label images with a SavedModel on Beam (RunInference): sharded JSON Lines "
        "or CSV, TF Serving PredictionLogs, and an errors output.",
        epilog="Beam options go after --, e.g. -- --direct_running_mode=multi_processing "
        "--direct_num_workers=2, or -- --runner=DataflowRunner --project=P --region=R "
        "--temp_location=gs://b/tmp",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a SavedModel, or a model base path <serving_dir>/<model_name> (newest version)",
    )
    p.add_argument(
        "--input", required=True, help="image folder (any depth), glob, or ExampleGen output"
    )
    p.add_argument("--output", required=True, help="output directory (replaced atomically)")
    p.add_argument("--version", type=int, help="version of a model base path")
    p.add_argument("--version-label", help="a version label defined in --model-config-file")
    p.add_argument("--model-config-file", help="TF Serving models.config (for --version-label)")
    p.add_argument("--model-name", help="model name in rows (default: the base path's name)")
    p.add_argument("--format", default=defaults.output_format, help="jsonl (default) or csv")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument(
        "--num-shards", type=int, default=defaults.num_shards, help="0: the runner decides"
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="report larger images as errors (default: the limit recorded in the model)",
    )
    p.add_argument(
        "--model-copies",
        type=int,
        default=None,
        help="model copies per machine shared by its worker processes (default: one per "
        "worker process)",
    )
    return p.parse_args(own), beam_args


COMPONENT = BulkInferrer()
