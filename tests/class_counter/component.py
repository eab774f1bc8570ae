"""ClassCounter's spec: Examples -> ClassCounts (`counts.json`)."""

from __future__ import annotations

from class_counter import present
from class_counter.config import ClassCounterConfig
from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import ArtifactType
from pipeline_components.core.component import Component, ExecutionContext, Input

CLASS_COUNTS = ArtifactType("ClassCounts", "counts.json", description="examples per class")


class ClassCounter(Component[ClassCounterConfig]):
    """Counts the examples of each class in every split by reading the TFRecords."""

    name = "ClassCounter"
    description = "count the examples per class in each split"
    command = "count-classes"
    config_section = "class_counter"
    config_class = ClassCounterConfig
    inputs = {"examples": Input(artifacts.EXAMPLES)}
    outputs = {"counts": CLASS_COUNTS}
    presenter = present

    def run(self, ctx: ExecutionContext[ClassCounterConfig]) -> dict:
        from class_counter import executor

        counts = executor.count_classes(ctx.input_uri("examples"), ctx.config.min_per_class)
        fsutil.makedirs(ctx.output_dir)
        fsutil.write_json(ctx.output_uri(self, "counts"), counts)
        return {"counts": counts}


COMPONENT = ClassCounter()
