"""The InfraValidator's spec: Model + Examples + ModelEvaluation -> InfraBlessing.

    transfer-pipeline infra-validate --model T/saved_model --examples O --evaluation E \
        --blessing E/blessing.json --output I [--config pipeline.yaml] [model_name=M] [key=value]

Runs only for a model the Evaluator blessed: the candidate is served by a real model server in
a subprocess and must answer test images as the Evaluator predicted them.
"""

from __future__ import annotations

import dataclasses

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import option


@dataclasses.dataclass
class InfraValidatorConfig:
    num_examples: int = option(8, ge=1, doc="test images sent through the real gRPC server")
    timeout_seconds: float = option(120.0, gt=0, doc="to start, load and answer")
    tolerance: float = option(1e-4, ge=0, doc="max |probability difference| vs the Evaluator")


def read_verdict(path: str) -> bool:
    """The `blessed` field of a blessing file."""
    return bool(fsutil.read_json(path, "blessing").get("blessed"))


class InfraValidator(Component):
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

    def skip_reason(self, ctx: ExecutionContext) -> str | None:
        if not read_verdict(ctx.input_uri("blessing")):
            return "model not blessed by the Evaluator"
        return None

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.infra_validator import executor

        return executor.run_infra_validator(
            ctx.input_uri("model"),
            ctx.input_uri("examples"),
            ctx.input_uri("evaluation"),
            ctx.output_dir,
            ctx.config,
            model_name=ctx.pipeline.model_name,
        )

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        return ("blessed: " if r.get("blessed") else "NOT blessed: ") + "; ".join(
            r.get("reasons", [])
        )

    def record_fields(self, entry: dict) -> dict:
        return {"infra_blessing": entry["result"]} if entry.get("result") else {}


COMPONENT = InfraValidator()
