"""The Evaluator's spec: Model + Examples -> ModelEvaluation + ModelBlessing (the gate).

    transfer-pipeline evaluate --model T/saved_model --examples O --output E [--config FILE]
        [--min-accuracy A] [--max-regression R] [--batch-size N] [--model-copies N]
        [--baseline PATH | --serving-dir S --model-name M] [KEY=VALUE ...] [-- BEAM_ARGS]

The scoring runs as a Beam job (RunInference) with the options in `evaluator.beam_args` (or
after `--`; null: the pipeline's `beam.args`): DirectRunner here, Dataflow/Flink/Spark on a
cluster. In a pipeline run the baseline is the newest served version of `model_name` under
`serving_dir` (never the candidate itself); its path and fingerprint are part of the cache key.
Its command compares with a baseline only when asked: `--baseline`, or both `serving_dir` and
`model_name` given.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core import beam as core_beam
from pipeline_components.core.component import (
    CommandLine,
    Component,
    ExecutionContext,
    Flag,
    Input,
)
from pipeline_components.core.reporting import verdict
from pipeline_components.evaluator import present
from pipeline_components.evaluator.config import EvaluatorConfig

SERVED = ("serving_dir", "model_name")


class Evaluator(Component[EvaluatorConfig]):
    name = "Evaluator"
    description = "score the SavedModel on the test split, write the blessing"
    command = "evaluate"
    config_section = "evaluator"
    config_class = EvaluatorConfig
    inputs = {"model": Input(artifacts.MODEL), "examples": Input(artifacts.EXAMPLES)}
    outputs = {"evaluation": artifacts.MODEL_EVALUATION, "blessing": artifacts.MODEL_BLESSING}
    presenter = present
    reads = SERVED  # the baseline: the newest served version
    beam = True
    flags = (
        Flag(
            "baseline",
            "baseline SavedModel, or a versioned dir (its newest version is used)",
            metavar="PATH",
        ),
    )

    def external_inputs(self, ctx: ExecutionContext[EvaluatorConfig]) -> dict[str, Any]:
        from pipeline_components.evaluator import executor

        model = ctx.inputs["model"]
        path = executor.resolve_baseline(
            None,
            ctx.pipeline.serving_dir,
            ctx.pipeline.model_name,
            model.fingerprint() if model is not None else None,
        )
        fingerprint = fsutil.tree_fingerprint(path) if path else None
        return {"baseline": {"path": path, "fingerprint": fingerprint}}

    def run(self, ctx: ExecutionContext[EvaluatorConfig]) -> dict:
        from pipeline_components.evaluator import executor

        return executor.run_evaluator(
            ctx.input_uri("model"),
            ctx.input_uri("examples"),
            ctx.output_dir,
            ctx.config,
            baseline=(ctx.external.get("baseline") or {}).get("path"),
            beam_setup=core_beam.setup(ctx.config.beam_args, ctx.pipeline),
        )

    def run_command(self, cmd: CommandLine[EvaluatorConfig]) -> int:
        from pipeline_components.evaluator import executor

        baseline = None
        served = set(SERVED) <= cmd.given
        if cmd.flags["baseline"] or served:
            model = cmd.inputs["model"]
            assert model is not None  # a required input
            fingerprint = model.fingerprint() if fsutil.isdir(model.uri) else None
            baseline = executor.resolve_baseline(
                cmd.flags["baseline"],
                cmd.pipeline.serving_dir if served else None,
                cmd.pipeline.model_name if served else None,
                fingerprint,
            )
        blessing = cmd.run(cmd.context(external={"baseline": {"path": baseline}}))
        print(verdict(blessing["blessed"], blessing["reasons"], "BLESSED", "NOT BLESSED"))
        print(f"wrote {fsutil.join(cmd.output, artifacts.BLESSING_FILE)}")
        return 0


COMPONENT = Evaluator()
