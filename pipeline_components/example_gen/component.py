"""ExampleGen's spec: image folders under `data_root` -> Examples (executor.py runs the Beam job).

transfer-pipeline example-gen --data-root D --output O [--num-shards 4] [--config FILE]
    [--max-bad-fraction 0.01] [--on-duplicates drop] [--no-exif-transpose] [KEY=VALUE ...]
    [-- BEAM_ARGS]
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts
from pipeline_components.core import beam as core_beam
from pipeline_components.core.component import Component, ExecutionContext
from pipeline_components.example_gen import present
from pipeline_components.example_gen.config import ExampleGenConfig


class ExampleGen(Component[ExampleGenConfig]):
    name = "ExampleGen"
    description = "image folders -> TFRecords (Apache Beam)"
    command = "example-gen"
    config_section = "example_gen"
    config_class = ExampleGenConfig
    outputs = {"examples": artifacts.EXAMPLES}
    presenter = present
    reads = ("data_root",)
    requires = ("data_root",)
    beam = True

    def external_inputs(self, ctx: ExecutionContext[ExampleGenConfig]) -> dict[str, Any]:
        from pipeline_components.example_gen import layout

        data_root = ctx.pipeline.data_root
        beam_args = core_beam.setup(ctx.config.beam_args, ctx.pipeline).args
        flat = ctx.config.test_fraction is not None
        fingerprint = layout.data_fingerprint(data_root, list(beam_args), flat)
        return {"data_root": data_root, "data": fingerprint}

    def run(self, ctx: ExecutionContext[ExampleGenConfig]) -> dict:
        from pipeline_components.example_gen import executor, metadata

        cfg = ctx.config
        stats = executor.run_example_gen(
            ctx.pipeline.data_root,
            ctx.output_dir,
            num_shards=cfg.num_shards,
            max_bad_fraction=cfg.max_bad_fraction,
            validation_fraction=cfg.validation_fraction,
            beam_setup=core_beam.setup(cfg.beam_args, ctx.pipeline),
            max_image_pixels=cfg.max_image_pixels,
            on_duplicates=cfg.on_duplicates,
            multi_processing_min_files=cfg.multi_processing_min_files,
            exif_transpose=cfg.exif_transpose,
            metadata_limits=metadata.Limits(
                cfg.metadata_max_bytes, cfg.metadata_max_columns, cfg.metadata_max_cell_chars
            ),
            test_fraction=cfg.test_fraction,
        )
        return {
            "fingerprint": stats["fingerprint"],
            "labels": stats["labels"],
            "splits": {s: v["num_examples"] for s, v in stats["splits"].items()},
            "skipped": len(stats.get("skipped", [])),
            "duplicates": len(stats.get("duplicates", [])),
            "dropped_duplicates": len(stats.get("dropped_duplicates", [])),
            "exif_transpose": stats["exif_transpose"],
        }


COMPONENT = ExampleGen()
