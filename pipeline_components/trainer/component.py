"""The Trainer's spec: Examples [+ Features] [+ HyperParameters] -> Model (a SavedModel that
carries its own preprocessing).

    transfer-pipeline train --examples O --output T [--features F] [--hyperparameters H]
        [--config FILE] [--epochs N ...] [KEY=VALUE ...]
        [--workers N (--local | --tf-config-from-k8s) ...]

With FeatureGen's Features the head trains on them, streamed, and the backbone never runs
(without, a run whose features can be cached writes its own into checkpoints/features/ first,
the same Beam job). With the Tuner's HyperParameters (H: its best_hyperparameters.json) the
best values override `trainer:` (hyperparameters.py; recorded in training_config.json).

The package: config.py (its section), executor.py (picks the runtime, writes the artifacts),
training.py (the training run, step by step, for both runtimes: fit.py one process,
distributed.py a multi-worker group), plan.py (checks and derived settings), model.py (backbone
+ head), datasets.py, inputs.py and augment.py (tf.data input pipelines), export.py (the serving
signatures), callbacks.py, checkpoints.py (resume), plots.py (training curves), cluster.py
(multi-worker groups), hyperparameters.py (the Tuner's values), present.py (its run-table line
and report section).
"""

from __future__ import annotations

import json
import os
import sys

from pipeline_components.core import artifacts
from pipeline_components.core.component import (
    CommandLine,
    Component,
    ExecutionContext,
    Flag,
    Input,
)
from pipeline_components.trainer import cluster, present
from pipeline_components.trainer.config import TrainerConfig

GROUP = "--local and --tf-config-from-k8s"


class Trainer(Component[TrainerConfig]):
    """With TF_CONFIG naming several workers (or --local / --tf-config-from-k8s), this process
    is one worker of a MultiWorkerMirroredStrategy group and only the chief (worker 0) writes
    --output."""

    name = "Trainer"
    description = "train the transfer-learning model, export a SavedModel"
    command = "train"
    config_section = "trainer"
    config_class = TrainerConfig
    inputs = {
        "examples": Input(artifacts.EXAMPLES),
        # FeatureGen's: the head trains on them, no backbone pass (absent: it computes its own,
        # or trains on images when features cannot be cached)
        "features": Input(artifacts.FEATURES, optional=True),
        # the Tuner's best values override the config's (training_config.json records it)
        "hyperparameters": Input(artifacts.HYPERPARAMETERS, optional=True),
    }
    outputs = {"model": artifacts.MODEL}
    resumable = True  # a killed execution continues from checkpoints/
    gpu = True  # the one step that gets a GPU when each step is scheduled on its own (KFP)
    presenter = present
    flags = (
        Flag("workers", f"workers of a multi-worker run (with {GROUP})", int, ge=1),
        Flag(
            "local",
            "start --workers worker processes on 127.0.0.1 with generated TF_CONFIGs (free "
            "ports); worker 0 is the chief and prints the result",
            bool,
        ),
        Flag("max_restarts", "with --local: times a failed worker is started again", int, 3, ge=0),
        Flag(
            "tf_config_from_k8s",
            f"build TF_CONFIG in a pod of an Indexed Job: ${cluster.K8S_INDEX}, the job name "
            "and headless Service (flags below or their variables)",
            bool,
        ),
        Flag("k8s_job_name", f"default: ${cluster.K8S_JOB_NAME}", metavar="NAME"),
        Flag("k8s_service", f"default: ${cluster.K8S_SERVICE}", metavar="NAME"),
        Flag("k8s_namespace", f"default: ${cluster.K8S_NAMESPACE} if set", metavar="NAME"),
        Flag("worker_port", "with --tf-config-from-k8s", int, cluster.DEFAULT_PORT),
    )

    def preflight(self, config: TrainerConfig) -> None:
        from pipeline_components.trainer.plan import check_config

        check_config(config)

    def run(self, ctx: ExecutionContext[TrainerConfig]) -> dict:
        from pipeline_components.trainer import executor

        return executor.run_trainer(
            ctx.input_uri("examples"),
            ctx.output_dir,
            ctx.config,
            features=ctx.optional_uri("features"),
            hyperparameters=ctx.optional_uri("hyperparameters"),
        )

    def run_command(self, cmd: CommandLine[TrainerConfig]) -> int:
        """One process, a worker of a group (TF_CONFIG, --tf-config-from-k8s), or a local group
        of worker processes (--local)."""
        from pipeline_components.trainer.plan import check_config

        group = check_group_flags(cmd)
        if cmd.flags["tf_config_from_k8s"]:
            set_tf_config_from_k8s(cmd.flags)  # before TensorFlow makes the strategy
        if cmd.flags["local"]:
            check_config(cmd.config)  # one error here, not one per worker
            if group > 1:
                worker = [sys.executable, "-m", "pipeline_components.cli", "train"]
                return cluster.LocalCluster(
                    [*worker, *cmd.config_argv], group, max_restarts=cmd.flags["max_restarts"]
                ).run()
            os.environ.pop(cluster.ENV, None)  # --workers 1: this process alone
        me = cluster.read_tf_config()  # a bad TF_CONFIG fails before anything is written
        if me is None or me.num_workers == 1:  # a worker of a group checks once it has formed
            check_config(cmd.config)  # before anything is written
        ctx = cmd.context()
        try:
            # the chief writes the output (and holds the pipeline_root's lock when the output is
            # inside one); the other workers of a group write only to temporary directories
            summary = cmd.run(ctx) if me is None or me.rank == 0 else self.run(ctx)
        except cluster.WorkerLost as e:
            # TensorFlow's orderly shutdown waits tens of seconds for the lost peer; the group
            # restarts sooner when this worker leaves now (its temporary directory is gone).
            print(f"transfer-pipeline train: error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(e.exit_code)
        print(done_line(summary, me, cmd.output))
        return 0


def check_group_flags(cmd: CommandLine[TrainerConfig]) -> int:
    """The multi-worker flags, consistent (a usage error otherwise); returns --workers (0: not
    a group started here)."""
    local, k8s, workers = cmd.flags["local"], cmd.flags["tf_config_from_k8s"], cmd.flags["workers"]
    if local and k8s:
        cmd.error(f"{GROUP} exclude each other")
    if (local or k8s) and workers is None:
        cmd.error(f"--workers N is required with {GROUP}")
    if workers is not None and not (local or k8s):
        cmd.error("--workers needs --local or --tf-config-from-k8s")
    return int(workers or 0)


def set_tf_config_from_k8s(flags: dict) -> None:
    os.environ[cluster.ENV] = json.dumps(
        cluster.tf_config_from_k8s(
            flags["workers"],
            job_name=flags["k8s_job_name"],
            service=flags["k8s_service"],
            namespace=flags["k8s_namespace"],
            port=flags["worker_port"],
        )
    )
    print(f"{cluster.ENV}={os.environ[cluster.ENV]}", file=sys.stderr, flush=True)


def done_line(summary: dict, me: cluster.Cluster | None, output: str) -> str:
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    if not summary.get("paths"):  # a worker of a group other than the chief
        rank = me.rank if me else "?"
        return (
            f"worker {rank}: done ({final}); the chief (worker 0) wrote the artifacts to " + output
        )
    return (
        f"trained {summary['epochs_run']} epochs ({final}; best epoch "
        f"{summary['best_epoch']}); SavedModel at {summary['paths']['saved_model']}"
    )


COMPONENT = Trainer()
