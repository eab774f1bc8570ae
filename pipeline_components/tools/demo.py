"""`make demo`: the whole product on a laptop in a few minutes, no download.

1. generates a small, learnable dataset of procedurally drawn shapes (demo_output/data);
2. runs the pipeline with configs/demo.yaml (ExampleGen -> Trainer -> Evaluator ->
   InfraValidator -> Pusher);
3. serves the pushed model with the local TF-Serving-compatible server, sends gRPC predictions
   for a few test images, prints them, and stops the server;
4. prints where report.html is.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from pipeline_components.core import logs

DEFAULT_CONFIG = "configs/demo.yaml"
DEMO_CLASSES = ("circles", "stripes")


def predict_with_local_server(serving_dir: str, model_name: str, images: list[str]) -> str:
    from pipeline_components.infra_validator.executor import serve_in_subprocess
    from serving.client import PredictionClient, format_table

    base = os.path.join(serving_dir, model_name)
    with (
        tempfile.TemporaryDirectory(prefix="demo-serve-") as workdir,
        serve_in_subprocess(base, model_name, 120, workdir) as target,
        PredictionClient(target, model_name, timeout=30) as client,
    ):
        version = client.wait_until_available(timeout=120)
        predictions = client.predict(images)
    rows = [
        (os.path.relpath(path), p.class_name, f"{p.score:.3f}")
        for path, p in zip(images, predictions, strict=True)
    ]
    header = f"gRPC predictions from the local server ({target}, model {model_name} v{version}):"
    return header + "\n" + format_table(rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline demo",
        description="make demo: sample data, the whole pipeline, gRPC predictions from the"
        " pushed model (also `python -m pipeline_components.tools.demo`)",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="relative to the working directory")
    p.add_argument("--per-class", nargs=3, type=int, default=[150, 50, 50])
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value config overrides, e.g. pipeline_root=/pipeline_root on a read-only root",
    )
    logs.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline_components import cli
    from pipeline_components.core import registry
    from pipeline_components.orchestration import runner
    from pipeline_components.orchestration.summary import summary_table
    from pipeline_components.tools import sample_data

    args = build_parser().parse_args(argv)
    cli.print_anything()
    cli.quiet_tensorflow()
    cli.setup_logging(args.quiet, args.log_format)

    cfg = registry.load_config(args.config, args.overrides)
    if not os.path.isdir(cfg.data_root):
        counts = sample_data.generate(
            cfg.data_root, DEMO_CLASSES, args.per_class, size=(32, 32), seed=0
        )
        print(f"generated sample dataset in {cfg.data_root}: {counts}")
    record = runner.run_pipeline(cfg, config_path=args.config)
    print()
    print(summary_table(record))
    test_dir = os.path.join(cfg.data_root, "test")
    images = [
        os.path.join(test_dir, cls, sorted(os.listdir(os.path.join(test_dir, cls)))[0])
        for cls in sorted(os.listdir(test_dir))
    ]
    if os.path.isdir(os.path.join(cfg.serving_dir, cfg.model_name)):
        print()
        print(predict_with_local_server(cfg.serving_dir, cfg.model_name, images))
    else:
        print("\nno model has been pushed yet, so there is nothing to serve")
    print(f"\nreport: {record.get('report')}")
    print(f"run record: {os.path.join(cfg.pipeline_root, 'runs', record['run_id'], 'run.json')}")
    return 0


if __name__ == "__main__":
    from pipeline_components.core.errors import PipelineError

    try:
        sys.exit(main())
    except PipelineError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        sys.exit(1)
