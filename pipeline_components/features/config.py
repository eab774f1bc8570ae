"""FeatureGen's config section (`features:` in pipeline.yaml: how the features are stored and
computed) and what identifies a set of features (`FeatureSpec`).

What the features are computed by (the backbone, its weights, the image size) is the Trainer's
(`trainer.backbone`, `trainer.weights`, `trainer.image_size`), read from its section: the
backbone is one model, the Trainer's, which it exports with the head; features of any other
backbone would be of no use to it. (The issue-27 rule that a component reads no other
component's section is about Beam and run options; this is the shared model.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline_components.core.config import option

if TYPE_CHECKING:
    from pipeline_components.trainer.config import TrainerConfig

DTYPES = ("float16", "float32")


@dataclasses.dataclass
class FeaturesConfig:
    """How backbone features are stored and computed (the backbone itself: `trainer:`)."""

    dtype: str = option(
        "float16",
        choices=DTYPES,
        doc="stored precision: float16 halves the files and the reads (the head trains in"
        " float32 on either)",
    )
    file_mb: int = option(
        128, ge=1, le=4096, doc="size of one feature file, MiB (also what one writer holds)"
    )
    batch_size: int = option(
        32, ge=1, le=4096, key=False, doc="images per backbone call in the Beam job"
    )
    model_copies: int | None = option(
        None, ge=1, le=64, key=False, doc="backbones per machine shared by its Beam workers"
    )
    beam_args: list[str] | None = option(
        None, key=False, doc="Beam pipeline options for its job (null: the pipeline's beam.args)"
    )


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What the features are computed by: the backbone, its weights, the input size and the
    stored precision. With the examples and the code, this is the features' cache key
    (`files.key_material`)."""

    backbone: str
    weights: str  # imagenet | none | path to a weights file
    image_size: tuple[int, int]
    dtype: str = "float16"
    # apply a JPEG's EXIF orientation before resizing: what the examples say (stats.json), as
    # the Trainer's image pipeline and the exported model do (`for_examples`)
    exif_transpose: bool = True

    @classmethod
    def of(
        cls, backbone: str, weights: str, image_size: Sequence[int], dtype: str = "float16"
    ) -> FeatureSpec:
        return cls(
            backbone.lower(), weights.strip(), (int(image_size[0]), int(image_size[1])), dtype
        )

    def for_examples(self, examples_dir: str) -> FeatureSpec:
        """This spec with the examples' EXIF rule (core/examples.exif_transpose)."""
        from pipeline_components.core import examples

        return dataclasses.replace(self, exif_transpose=examples.exif_transpose(examples_dir))

    @classmethod
    def from_trainer(cls, config: TrainerConfig, dtype: str = "float16") -> FeatureSpec:
        from pipeline_components.trainer import model as model_lib

        size = model_lib.image_size_for(config.backbone, config.image_size)
        return cls.of(config.backbone, config.weights, size, dtype)
