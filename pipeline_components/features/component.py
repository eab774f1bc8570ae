"""FeatureGen's spec: Examples -> Features (the frozen backbone's features of the train and
validation splits, computed once).

    transfer-pipeline features --examples O --output F [--config FILE] [--dtype float32 ...]
        [trainer.backbone=... trainer.weights=... trainer.image_size=[..] ...] [-- BEAM_ARGS]

The backbone, its weights and the image size are the Trainer's (`trainer:`): the features are
of the model the Trainer exports (features/config.py says why this reads that section). Its
cache key is what the features depend on and nothing of the head (`files.key_material`: the
backbone, the weights' identity, the image size, the preprocessing, the examples' fingerprint
and labels, the writer's code, the dtype and the file size), so a run that changes only the
head's learning rate, dropout, units, epochs, optimizer or seed reuses them: no backbone pass.
It is skipped when features cannot be cached (`TrainerConfig.features_blocker`: fine-tuning or
augmentation on, or `trainer.cache_features: false`); the Trainer then trains on images.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import PipelineConfig
from pipeline_components.core.errors import PipelineError
from pipeline_components.features import present
from pipeline_components.features.config import FeaturesConfig
from pipeline_components.trainer.config import TrainerConfig

TRAINER_SECTION = "trainer"


def trainer_config(pipeline: PipelineConfig) -> TrainerConfig:
    """The Trainer's section: the backbone whose features these are."""
    return pipeline.section(TRAINER_SECTION, TrainerConfig)


class FeatureGen(Component[FeaturesConfig]):
    """Runs the Trainer's frozen backbone (trainer.backbone, trainer.weights,
    trainer.image_size) once over the train and validation splits as a Beam job (RunInference)
    and writes the features as sharded files: the Trainer and the Tuner train the head on them,
    streamed, without running the backbone."""

    name = "FeatureGen"
    description = "compute the frozen backbone's features of train and validation once"
    command = "features"
    config_section = "features"
    config_class = FeaturesConfig
    inputs = {"examples": Input(artifacts.EXAMPLES)}
    outputs = {"features": artifacts.FEATURES}
    gpu = True  # the backbone pass: the GPU work of a KFP run
    beam = True
    presenter = present

    def skip_reason(self, ctx: ExecutionContext[FeaturesConfig]) -> str | None:
        why = trainer_config(ctx.pipeline).features_blocker()
        return f"features cannot be cached: trainer {why}" if why else None

    def external_inputs(self, ctx: ExecutionContext[FeaturesConfig]) -> dict[str, Any]:
        """The key material of the features (features/files.py): the Trainer's backbone
        settings, the weights file's sha256 (it lives outside pipeline_root) and the
        preprocessing; nothing of the head."""
        from pipeline_components.features import executor

        return {
            "features": executor.key_material(ctx.input_uri("examples"), ctx.pipeline, ctx.config)
        }

    def run(self, ctx: ExecutionContext[FeaturesConfig]) -> dict:
        from pipeline_components.features import executor

        trainer = trainer_config(ctx.pipeline)
        why = trainer.features_blocker()
        if why:  # a pipeline run skips; a command asked for features nothing would use
            raise PipelineError(
                f"features: the Trainer would not use cached features: trainer {why}"
            )
        return executor.run_feature_gen(
            ctx.input_uri("examples"), ctx.output_dir, trainer, ctx.config, ctx.pipeline
        )


COMPONENT = FeatureGen()
