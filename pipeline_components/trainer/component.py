"""The Trainer's spec: Examples -> Model (a SavedModel that carries its own preprocessing).

    transfer-pipeline train --examples O --output T [--config pipeline.yaml] [key=value ...]

The package: executor.py (picks the runtime, writes the artifacts), training.py (the training
run, step by step, for both runtimes: fit.py one process, distributed.py a multi-worker group),
model.py (backbone + head), datasets.py, inputs.py and augment.py (tf.data input pipelines),
export.py (the serving signatures), callbacks.py, checkpoints.py (resume), plots.py.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.component import Component, ExecutionContext, Input, load_for_cli
from pipeline_components.core.config import option
from pipeline_components.core.reporting import e, fmt, img


@dataclasses.dataclass
class AugmentationConfig:
    """ImageDataGenerator semantics: rotation and shear in degrees, shifts and zoom as fractions.
    The upper bounds are the largest values that keep each parameter's meaning."""

    rotation_range: float = option(40.0, ge=0, le=180)
    width_shift_range: float = option(0.2, ge=0, le=1)
    height_shift_range: float = option(0.2, ge=0, le=1)
    shear_range: float = option(0.2, ge=0, le=89)
    zoom_range: float = option(0.2, ge=0, le=0.99)
    horizontal_flip: bool = True

    def enabled(self) -> bool:
        return any(
            [
                self.rotation_range,
                self.width_shift_range,
                self.height_shift_range,
                self.shear_range,
                self.zoom_range,
                self.horizontal_flip,
            ]
        )


@dataclasses.dataclass
class TrainerConfig:
    backbone: str = "vgg19"  # keras.applications name: vgg19, vgg16, resnet50, ...
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    image_size: list[int] | None = option(factory=lambda: [224, 224])  # None: the backbone's
    head: str = option("flatten", choices=("flatten", "global_average"))
    dropout: float = option(0.0, ge=0, lt=1)
    # a hidden Dense(units, relu) layer in the head before the output; 0: none
    units: int = option(0, ge=0, le=65536)
    fine_tune_from: str | None = None  # layer name to unfreeze from, e.g. block5_conv1
    fine_tune_epochs: int = option(10, ge=0)
    fine_tune_learning_rate: float = option(1e-5, gt=0)
    batch_size: int = option(100, ge=1)
    epochs: int = option(100, ge=1)
    steps_per_epoch: int | None = option(20, ge=1)  # None = whole split
    validation_steps: int | None = option(None, ge=1)  # None = whole split
    optimizer: str = option("rmsprop", choices=("rmsprop", "adam", "sgd"))
    learning_rate: float = option(0.001, gt=0)
    augmentation: AugmentationConfig | None = option(factory=AugmentationConfig)
    cache_features: str = option("auto", choices=("auto", "true", "false"))
    early_stopping_patience: int | None = option(None, ge=0)  # None or 0: off
    # what EarlyStopping watches and the exported (best) epoch is chosen by
    monitor: str = option("val_accuracy", choices=("val_accuracy", "val_loss"))
    # train shuffle buffer in records; None: the whole split (capped by shuffle_memory_mb)
    shuffle_buffer: int | None = option(None, ge=1, le=2**31 - 1)
    # memory cap of the train shuffle buffer (serialized records), MiB
    shuffle_memory_mb: int = option(1024, ge=1, le=1_048_576)
    mixed_precision: str = option("auto", choices=("auto", "true", "false"))  # auto: on GPU
    # fail at the start when TensorFlow sees no GPU (how it runs, not what it computes: not in
    # the cache key)
    require_gpu: bool = option(False, key=False)
    seed: int | None = option(42, ge=0, le=2**32 - 1)
    # serving_default rejects images whose header claims more pixels (INVALID_ARGUMENT)
    max_image_pixels: int = option(40_000_000, ge=1, le=2**40)

    def validate(self, fail: Any) -> None:
        if self.image_size is not None and not (
            len(self.image_size) == 2 and all(s >= 8 for s in self.image_size)
        ):
            fail("image_size", "[height, width] of at least 8", self.image_size)


class Trainer(Component):
    name = "Trainer"
    description = "train the transfer-learning model, export a SavedModel"
    command = "train"
    config_section = "trainer"
    config_class = TrainerConfig
    inputs = {"examples": Input(artifacts.EXAMPLES)}
    outputs = {"model": artifacts.MODEL}
    resumable = True  # a killed execution continues from checkpoints/
    gpu = True  # the one step that gets a GPU when each step is scheduled on its own (KFP)

    def preflight(self, config: Any) -> None:
        from pipeline_components.trainer.plan import check_config

        check_config(config)

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.trainer import executor

        return executor.run_trainer(ctx.input_uri("examples"), ctx.output_dir, ctx.config)

    def summary(self, entry: dict) -> str:
        """The exported (best) epoch's validation accuracy, not the last epoch's."""
        r = entry.get("result") or {}
        parts = []
        best = r.get("best") or {}
        if "val_accuracy" in best:
            parts.append(
                f"val_accuracy {best['val_accuracy']:.4f} (best epoch {r.get('best_epoch')})"
            )
        if "epochs_run" in r:
            parts.append(f"{r['epochs_run']} epochs")
        if r.get("cached_features"):
            parts.append("cached features")
        return ", ".join(parts)

    def report_html(self, entry: dict, record: dict) -> str:
        out_dir = entry.get("output_dir")
        if not out_dir:
            return ""
        plots = fsutil.join(out_dir, artifacts.PLOTS_DIR)
        figures = img(fsutil.join(plots, "accuracy.png"), "Training and validation accuracy")
        figures += img(fsutil.join(plots, "loss.png"), "Training and validation loss")
        t = record.get("config", {}).get(self.config_section, {})
        keys = ("backbone", "weights", "image_size", "head", "fine_tune_from", "epochs")
        cfg_rows = "".join(
            f"<tr><th>{e(k)}</th><td>{e(t.get(k))}</td></tr>" for k in (*keys, "batch_size")
        )
        r = entry.get("result") or {}
        facts = {
            "epochs run": r.get("epochs_run"),
            "best epoch": r.get("best_epoch"),
            "cached features": r.get("cached_features"),
            "training images/s": r.get("images_per_sec"),
        }
        fact_rows = "".join(
            f"<tr><th>{e(k)}</th><td>{fmt(v, 1)}</td></tr>"
            for k, v in facts.items()
            if v is not None
        )
        return (
            f"<h2>Training</h2><table>{cfg_rows}{fact_rows}</table><div class=imgs>{figures}</div>"
        )

    def parser(self) -> argparse.ArgumentParser:
        """`transfer-pipeline train`'s command line."""
        from pipeline_components.trainer import cluster

        parser = argparse.ArgumentParser(
            prog="transfer-pipeline train",
            description="Train the transfer-learning model on ExampleGen output; export a "
            "SavedModel. With TF_CONFIG naming several workers (or --local / "
            "--tf-config-from-k8s), this process is one worker of a MultiWorkerMirroredStrategy "
            "group and only the chief (worker 0) writes --output.",
            epilog="overrides: key=value, YAML values; bare keys mean trainer.*, e.g. "
            "epochs=2 image_size=[32,32] weights=none augmentation=null",
        )
        parser.add_argument("--examples", required=True, help="ExampleGen output directory")
        parser.add_argument("--output", required=True, help="Trainer output directory")
        parser.add_argument("--config", help="pipeline.yaml (its trainer: section is used)")
        parser.add_argument(
            "--workers",
            type=int,
            help="workers of a multi-worker run (with --local or --tf-config-from-k8s)",
        )
        parser.add_argument(
            "--local",
            action="store_true",
            help="start --workers worker processes on 127.0.0.1 with generated TF_CONFIGs (free "
            "ports); worker 0 is the chief and prints the result",
        )
        parser.add_argument(
            "--max-restarts",
            type=int,
            default=3,
            help="with --local: times a failed worker is started again (default 3)",
        )
        parser.add_argument(
            "--tf-config-from-k8s",
            action="store_true",
            help=f"build TF_CONFIG in a pod of an Indexed Job: ${cluster.K8S_INDEX}, the job "
            "name and headless Service (flags below or their variables)",
        )
        parser.add_argument("--k8s-job-name", help=f"default: ${cluster.K8S_JOB_NAME}")
        parser.add_argument("--k8s-service", help=f"default: ${cluster.K8S_SERVICE}")
        parser.add_argument("--k8s-namespace", help=f"default: ${cluster.K8S_NAMESPACE} if set")
        parser.add_argument(
            "--worker-port",
            type=int,
            default=cluster.DEFAULT_PORT,
            help="with --tf-config-from-k8s",
        )
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
        return parser

    def main(self, argv: list[str]) -> int:
        import json
        import os
        import sys

        from pipeline_components.trainer import cluster

        parser = self.parser()
        args = parser.parse_args(argv)
        if args.local and args.tf_config_from_k8s:
            parser.error("--local and --tf-config-from-k8s exclude each other")
        if (args.local or args.tf_config_from_k8s) and args.workers is None:
            parser.error("--workers N is required with --local and --tf-config-from-k8s")
        if args.workers is not None and not (args.local or args.tf_config_from_k8s):
            parser.error("--workers needs --local or --tf-config-from-k8s")
        if args.workers is not None and args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        if args.max_restarts < 0:
            parser.error(f"--max-restarts must be >= 0, got {args.max_restarts}")
        if args.tf_config_from_k8s:
            # before TensorFlow starts: the strategy reads TF_CONFIG when it is made
            os.environ[cluster.ENV] = json.dumps(
                cluster.tf_config_from_k8s(
                    args.workers,
                    job_name=args.k8s_job_name,
                    service=args.k8s_service,
                    namespace=args.k8s_namespace,
                    port=args.worker_port,
                )
            )
            print(f"{cluster.ENV}={os.environ[cluster.ENV]}", file=sys.stderr, flush=True)
        pipeline = load_for_cli(args.config, args.overrides, self.config_section)
        config = pipeline.trainer
        from pipeline_components.trainer.plan import check_config

        if args.local:
            check_config(config)  # one error here, not one per worker
            if args.workers > 1:
                worker = [sys.executable, "-m", "pipeline_components.cli", "train"]
                worker += ["--examples", args.examples, "--output", args.output]
                worker += ["--config", args.config] if args.config else []
                return cluster.LocalCluster(
                    [*worker, *args.overrides], args.workers, max_restarts=args.max_restarts
                ).run()
            os.environ.pop(cluster.ENV, None)  # --workers 1: this process alone
        me = cluster.read_tf_config()  # a bad TF_CONFIG fails before anything is written
        if me is None or me.num_workers == 1:  # a worker of a group checks once it has formed
            check_config(config)  # before anything is written
        examples = artifacts.Artifact(artifacts.EXAMPLES, args.examples)
        ctx = ExecutionContext(pipeline, config, {"examples": examples}, args.output)
        try:
            # the chief writes the output (and holds the pipeline_root's lock when the output is
            # inside one); the other workers of a group write only to temporary directories
            chief = me is None or me.rank == 0
            summary = self.run_standalone(ctx) if chief else self.run(ctx)
        except cluster.WorkerLost as e:
            # TensorFlow's orderly shutdown waits tens of seconds for the lost peer; the group
            # restarts sooner when this worker leaves now (its temporary directory is gone).
            print(f"transfer-pipeline train: error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(e.exit_code)
        final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
        if not summary.get("paths"):  # a worker of a group other than the chief
            print(
                f"worker {me.rank if me else '?'}: done ({final}); the chief (worker 0) wrote"
                f" the artifacts to {args.output}"
            )
            return 0
        print(
            f"trained {summary['epochs_run']} epochs ({final}; best epoch "
            f"{summary['best_epoch']}); SavedModel at {summary['paths']['saved_model']}"
        )
        return 0


COMPONENT = Trainer()
