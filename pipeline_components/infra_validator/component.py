"""The InfraValidator's spec: Model + Examples + ModelEvaluation -> InfraBlessing.

    transfer-pipeline infra-validate --model T/saved_model --examples O --evaluation E \
        --blessing E/blessing.json --output I [--config FILE] [--model-name M] [KEY=VALUE ...]

Runs only for a model the Evaluator blessed: the candidate is served by a real model server in
a subprocess and must answer test images as the Evaluator predicted them.
"""

from __future__ import annotations

from pipeline_components.core import artifacts
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.infra_validator import present
from pipeline_components.infra_validator.config import InfraValidatorConfig


class InfraValidator(Component[InfraValidatorConfig]):
    name = "InfraValidator"
    code_modules = ("pipeline_components.cli", "serving.server")  # `serve` in a subprocess
    description = "serve the candidate in a real model server and check its answers"
    command = "infra-validate"
    config_section = "infra_validator"
    config_class = InfraValidatorConfig
    inputs = {
        "model": Input(artifacts.MODEL),
        "examples": Input(artifacts.EXAMPLES),
        "evaluation": Input(artifacts.MODEL_EVALUATION),
        "blessing": Input(artifacts.MODEL_BLESSING),
    }
    outputs = {"infra_blessing": artifacts.INFRA_BLESSING}
    presenter = present
    reads = ("model_name",)  # the name the server serves the candidate under

    def skip_reason(self, ctx: ExecutionContext[InfraValidatorConfig]) -> str | None:
        if not artifacts.read_blessed(ctx.input_uri("blessing")):
            return "model not blessed by the Evaluator"
        return None

    def run(self, ctx: ExecutionContext[InfraValidatorConfig]) -> dict:
        from pipeline_components.infra_validator import executor

        return executor.run_infra_validator(
            ctx.input_uri("model"),
            ctx.input_uri("examples"),
            ctx.input_uri("evaluation"),
            ctx.output_dir,
            ctx.config,
            model_name=ctx.pipeline.model_name,
        )


COMPONENT = InfraValidator()
