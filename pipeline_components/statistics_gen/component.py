"""StatisticsGen's spec: Examples -> ExampleStatistics (executor.py runs the Beam job).

    transfer-pipeline statistics-gen --examples O --output S [--config FILE] [KEY=VALUE ...]
        [-- BEAM_ARGS]

Per split: examples per class and class shares; width, height, megapixels and encoded bytes
(exact min/max/mean and histograms, sketched quantiles); formats; channels; skipped files by
reason; duplicates. Written as `statistics.json` (core/data_stats.py) with plots.
"""

from __future__ import annotations

from pipeline_components.core import artifacts
from pipeline_components.core import beam as core_beam
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.statistics_gen import present
from pipeline_components.statistics_gen.config import StatisticsGenConfig


class StatisticsGen(Component[StatisticsGenConfig]):
    name = "StatisticsGen"
    description = "statistics of every split of the examples (Apache Beam)"
    command = "statistics-gen"
    config_section = "statistics_gen"
    config_class = StatisticsGenConfig
    inputs = {"examples": Input(artifacts.EXAMPLES)}
    outputs = {"statistics": artifacts.EXAMPLE_STATISTICS}
    presenter = present
    beam = True

    def run(self, ctx: ExecutionContext[StatisticsGenConfig]) -> dict:
        from pipeline_components.statistics_gen import executor

        cfg = ctx.config
        stats = executor.run_statistics_gen(
            ctx.input_uri("examples"),
            ctx.output_dir,
            num_quantiles=cfg.num_quantiles,
            epsilon=cfg.quantile_epsilon,
            beam_setup=core_beam.setup(cfg.beam_args, ctx.pipeline),
        )
        return {
            "splits": {s: v["num_examples"] for s, v in stats["splits"].items()},
            "classes": len(stats["labels"]),
            "formats": sorted({f for v in stats["splits"].values() for f in v["formats"]}),
            "skipped": sum(v["skipped"]["bad"] for v in stats["splits"].values()),
        }


COMPONENT = StatisticsGen()
