"""The InfraValidator's config section (`infra_validator:` in pipeline.yaml)."""

from __future__ import annotations

import dataclasses

from pipeline_components.core.config import option


@dataclasses.dataclass
class InfraValidatorConfig:
    num_examples: int = option(8, ge=1, doc="test images sent through the real gRPC server")
    timeout_seconds: float = option(120.0, gt=0, doc="to start, load and answer")
    tolerance: float = option(1e-4, ge=0, doc="max |probability difference| vs the Evaluator")
