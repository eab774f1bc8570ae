"""The Tuner's spec: Examples [+ Features] -> HyperParameters (best_hyperparameters.json, with
trials.json, trials.csv, plots/trials.png and tuning.json beside it).

    transfer-pipeline tune --examples O [--features F] --output T [--config FILE]
        [--algorithm hyperband --max-trials 20 ...] [KEY=VALUE ...]
        [--workers N (--local | --k8s) ...]

A KerasTuner search over the Trainer's head (`tuner.space`: learning rate, dropout, units,
optimizer, batch size; random, Bayesian or Hyperband; `max_trials` and `max_minutes`), every
trial on FeatureGen's features, streamed; on images when there are none. The base of every
trial is `trainer:` (the head's pooling, the values the space leaves out), read from its section:
the Tuner tunes the Trainer's head. The Trainer takes the best values (its `hyperparameters`
input). Skipped without a search space (`tuner.space` null, the default) or with
`tuner.enabled: false`: a pipeline without a tuner section runs as before.

A group (`--workers N`): KerasTuner's chief (the oracle, which writes the output) and N workers
running the trials, every process `transfer-pipeline tune` with the same arguments; `--local`
starts them here, `--k8s` is one pod of an Indexed Job (k8s/jobs/tune-multiworker; launch.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.component import (
    CommandLine,
    Component,
    ExecutionContext,
    Flag,
    Input,
)
from pipeline_components.core.config import PipelineConfig
from pipeline_components.trainer import cluster
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.tuner import launch, present
from pipeline_components.tuner.config import TunerConfig

GROUP = "--local and --k8s"


def trainer_config(pipeline: PipelineConfig) -> TrainerConfig:
    """The Trainer's section: the head every trial trains."""
    return pipeline.section("trainer", TrainerConfig)


class Tuner(Component[TunerConfig]):
    """Every process of a group runs this command with the same arguments; its place comes from
    KerasTuner's variables (KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT),
    which --local and --k8s set. Only the chief writes --output."""

    name = "Tuner"
    description = "search the head's hyperparameters (KerasTuner) on the backbone features"
    command = "tune"
    config_section = "tuner"
    config_class = TunerConfig
    inputs = {
        "examples": Input(artifacts.EXAMPLES),
        "features": Input(artifacts.FEATURES, optional=True),  # absent: trials on images
    }
    outputs = {"hyperparameters": artifacts.HYPERPARAMETERS}
    presenter = present
    flags = (
        Flag("workers", f"tuner workers besides the chief (with {GROUP})", int, ge=1),
        Flag(
            "local",
            "start the chief and --workers worker processes on 127.0.0.1 (a free port for the"
            " oracle); the chief writes the output and prints the result",
            bool,
        ),
        Flag("max_restarts", "with --local: times a failed process is started again", int, 3, ge=0),
        Flag(
            "k8s",
            "this process is a pod of an Indexed Job of --workers + 1 pods: pod 0 the chief"
            " (from $JOB_COMPLETION_INDEX, the job name and headless Service)",
            bool,
        ),
        Flag("k8s_job_name", "with --k8s; default: $JOB_NAME", metavar="NAME"),
        Flag("k8s_service", "with --k8s; default: $TUNER_SERVICE", metavar="NAME"),
        Flag("k8s_namespace", "with --k8s; default: $POD_NAMESPACE if set", metavar="NAME"),
        Flag("oracle_port", "with --k8s: the chief's gRPC port", int, launch.DEFAULT_PORT),
    )

    def skip_reason(self, ctx: ExecutionContext[TunerConfig]) -> str | None:
        return ctx.config.skip_reason()

    def preflight(self, config: TunerConfig) -> None:
        if config.skip_reason() is None:
            from pipeline_components.tuner import search

            search.check_bayesian(config)

    def external_inputs(self, ctx: ExecutionContext[TunerConfig]) -> dict[str, Any]:
        """What of `trainer:` the trials take (tuner/executor.py `trainer_key`)."""
        from pipeline_components.tuner import executor

        on_features = ctx.inputs.get("features") is not None
        trainer = trainer_config(ctx.pipeline)
        return {"trainer": executor.trainer_key(trainer, ctx.config, on_features)}

    def run(self, ctx: ExecutionContext[TunerConfig]) -> dict:
        from pipeline_components.tuner import executor

        return executor.run_tuner(
            ctx.input_uri("examples"),
            ctx.optional_uri("features"),
            ctx.output_dir,
            trainer_config(ctx.pipeline),
            ctx.config,
            workers=int((ctx.external.get("group") or {}).get("workers") or 1),
        )

    def run_command(self, cmd: CommandLine[TunerConfig]) -> int:
        """One process, a local group (--local), or one process of a group (--k8s, or started
        by --local: KERASTUNER_TUNER_ID is set)."""
        workers = check_group_flags(cmd)
        if cmd.flags["local"]:
            if workers > 1:
                return launch.local_group(cmd.config_argv, workers, cmd.flags["max_restarts"])
            os.environ.pop(launch.TUNER_ID, None)  # --workers 1: this process alone
        if cmd.flags["k8s"]:
            os.environ.update(
                launch.k8s_env(
                    workers,
                    job_name=cmd.flags["k8s_job_name"],
                    service=cmd.flags["k8s_service"],
                    namespace=cmd.flags["k8s_namespace"],
                    port=cmd.flags["oracle_port"],
                )
            )
        if launch.role() == "worker":
            return self._worker(cmd)
        ctx = cmd.context()
        ctx.external["group"] = {"workers": workers or 1}
        summary = cmd.run(ctx)  # the chief, or the search alone: holds the pipeline_root's lock
        print(done_line(summary))
        return 0

    def _worker(self, cmd: CommandLine[TunerConfig]) -> int:
        """A worker runs trials for the chief and writes nothing; a worker that lost the chief
        exits 75, so its launcher (or the Job) starts it again."""
        import grpc

        try:
            result = self.run(cmd.context(external={}))
        except grpc.RpcError as e:
            print(f"transfer-pipeline tune: lost the chief: {e.code()}", file=sys.stderr)
            return cluster.WORKER_LOST_EXIT
        print(f"tuner worker {result['worker']}: no trials left")
        return 0


def check_group_flags(cmd: CommandLine[TunerConfig]) -> int:
    """The group flags, consistent (a usage error otherwise); returns --workers (0: none)."""
    local, k8s, workers = cmd.flags["local"], cmd.flags["k8s"], cmd.flags["workers"]
    if local and k8s:
        cmd.error(f"{GROUP} exclude each other")
    if (local or k8s) and workers is None:
        cmd.error(f"--workers N is required with {GROUP}")
    if workers is not None and not (local or k8s or os.environ.get(launch.TUNER_ID)):
        cmd.error(f"--workers needs {GROUP}")
    return int(workers or 0)


def done_line(summary: dict) -> str:
    best = summary["best"]
    return (
        f"tuned: {summary['trials']} trials ({summary['completed']} completed, stopped by"
        f" {summary['stopped_by']}) on {summary['workers']} worker(s); best"
        f" {best['objective']} {best['score']:.4f}: {json.dumps(best['trainer'])}"
    )


COMPONENT = Tuner()
