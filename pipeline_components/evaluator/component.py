"""The Evaluator's spec: Model + Examples -> ModelEvaluation + ModelBlessing (the gate).

    transfer-pipeline evaluate --model T/saved_model --examples O --output E \
        [--min-accuracy A] [--max-regression R] [--baseline PATH | --serving-dir S --model-name M]
        [--batch-size N] [--model-copies N] [-- BEAM_ARGS]

The scoring runs as a Beam job (RunInference) with the options in `evaluator.beam_args` (or
after `--`): DirectRunner here, Dataflow/Flink/Spark on a cluster. In a pipeline run the
baseline is the newest served version of `model_name` under `serving_dir` (never the candidate
itself); its path and fingerprint are part of the cache key.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import Component, ExecutionContext, Input
from pipeline_components.core.config import PipelineConfig, option, section_from_dict
from pipeline_components.core.reporting import e, fmt, img


@dataclasses.dataclass
class EvaluatorConfig:
    min_accuracy: float = option(0.9, ge=0, le=1, doc="the gate on test accuracy")
    max_regression: float = option(0.01, ge=0, le=1, doc="allowed drop below the baseline")
    batch_size: int = option(32, ge=1)
    num_error_examples: int = option(12, ge=0, doc="misclassified images in errors.png")
    beam_args: list[str] = option(factory=lambda: ["--runner=DirectRunner"], key=False)
    model_copies: int | None = option(
        None,
        ge=1,
        le=1024,
        key=False,
        doc="load the model this many times per machine, shared by its worker processes "
        "(Beam's model_copies); null: one copy per worker process",
    )


class Evaluator(Component):
    name = "Evaluator"
    description = "score the SavedModel on the test split, write the blessing"
    command = "evaluate"
    config_section = "evaluator"
    config_class = EvaluatorConfig
    inputs = {"model": Input(artifacts.MODEL), "examples": Input(artifacts.EXAMPLES)}
    outputs = {"evaluation": artifacts.MODEL_EVALUATION, "blessing": artifacts.MODEL_BLESSING}

    def external_inputs(self, ctx: ExecutionContext) -> dict[str, Any]:
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

    def run(self, ctx: ExecutionContext) -> dict:
        from pipeline_components.evaluator import executor

        return executor.run_evaluator(
            ctx.input_uri("model"),
            ctx.input_uri("examples"),
            ctx.output_dir,
            ctx.config,
            baseline=(ctx.external.get("baseline") or {}).get("path"),
        )

    def summary(self, entry: dict) -> str:
        r = entry.get("result") or {}
        verdict = "BLESSED" if r.get("blessed") else "not blessed"
        base = r.get("baseline_accuracy")
        extra = f", baseline {base:.4f}" if base is not None else ""
        if r.get("baseline_comparable") is False:
            extra = ", baseline not comparable (labels differ)"
        return f"accuracy {r.get('accuracy', 0):.4f} (min {r.get('threshold')}{extra}) {verdict}"

    def record_fields(self, entry: dict) -> dict:
        if not entry.get("result"):
            return {}
        fields: dict[str, Any] = {"blessing": entry["result"]}
        metrics_path = fsutil.join(entry["output_dir"], artifacts.METRICS_FILE)
        if fsutil.exists(metrics_path):
            m = fsutil.read_json(metrics_path)
            fields["metrics"] = {k: m.get(k) for k in ("accuracy", "loss", "auc", "num_examples")}
        return fields

    def report_html(self, entry: dict, record: dict) -> str:
        out_dir = entry.get("output_dir")
        if not out_dir or not fsutil.exists(fsutil.join(out_dir, artifacts.METRICS_FILE)):
            return ""
        m = fsutil.read_json(fsutil.join(out_dir, artifacts.METRICS_FILE))
        b = entry.get("result") or {}
        rows = [
            ("accuracy", m.get("accuracy")),
            ("min_accuracy (gate)", b.get("threshold")),
            ("baseline accuracy", b.get("baseline_accuracy")),
            ("loss", m.get("loss")),
            ("ROC AUC", m.get("auc")),
            ("test examples", m.get("num_examples")),
        ]
        summary = "".join(f"<tr><th>{e(k)}</th><td class=num>{fmt(v)}</td></tr>" for k, v in rows)
        per_class = "".join(
            f"<tr><td>{e(name)}</td><td class=num>{fmt(c['precision'], 3)}</td>"
            f"<td class=num>{fmt(c['recall'], 3)}</td><td class=num>{fmt(c['f1'], 3)}</td>"
            f"<td class=num>{e(c['support'])}</td></tr>"
            for name, c in m.get("per_class", {}).items()
        )
        figures = img(
            fsutil.join(out_dir, artifacts.CONFUSION_MATRIX_PNG), "Confusion matrix (test split)"
        )
        figures += img(fsutil.join(out_dir, artifacts.ERRORS_PNG), "Misclassified test images")
        reasons = "".join(f"<li>{e(r)}</li>" for r in b.get("reasons", []))
        return (
            "<h2>Evaluation (exported SavedModel, raw test bytes)</h2>"
            f"<table>{summary}</table><ul>{reasons}</ul>"
            "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{per_class}</table><div class=imgs>{figures}</div>"
        )

    def main(self, argv: list[str]) -> int:
        defaults = EvaluatorConfig()
        beam_args = argv[argv.index("--") + 1 :] if "--" in argv else []
        argv = argv[: argv.index("--")] if "--" in argv else argv
        p = argparse.ArgumentParser(
            prog="transfer-pipeline evaluate",
            description="Score a SavedModel, write the blessing.",
            epilog="Beam options go after --, e.g. -- --direct_running_mode=multi_processing "
            "--direct_num_workers=2",
        )
        p.add_argument("--model", required=True, help="the exported saved_model/ directory")
        p.add_argument("--examples", required=True, help="ExampleGen output directory")
        p.add_argument("--output", required=True, help="directory for metrics.json, blessing.json")
        p.add_argument("--min-accuracy", type=float, default=defaults.min_accuracy)
        p.add_argument("--max-regression", type=float, default=defaults.max_regression)
        p.add_argument("--batch-size", type=int, default=defaults.batch_size)
        p.add_argument(
            "--model-copies",
            type=int,
            default=None,
            help="model copies per machine shared by its worker processes (default: one per "
            "worker process)",
        )
        p.add_argument(
            "--baseline", help="baseline SavedModel, or a versioned dir (newest is used)"
        )
        p.add_argument("--serving-dir", help="with --model-name: baseline = newest pushed version")
        p.add_argument("--model-name")
        args = p.parse_args(argv)
        config = section_from_dict(
            EvaluatorConfig,
            {
                "min_accuracy": args.min_accuracy,
                "max_regression": args.max_regression,
                "batch_size": args.batch_size,
                "model_copies": args.model_copies,
                "beam_args": beam_args or defaults.beam_args,
            },
            "evaluator",
            source="command line",
        )
        from pipeline_components.evaluator import executor

        model = Artifact(artifacts.MODEL, args.model)
        inputs: dict[str, Artifact | None] = {
            "model": model,
            "examples": Artifact(artifacts.EXAMPLES, args.examples),
        }
        baseline = None
        if args.baseline or (args.serving_dir and args.model_name):
            fingerprint = model.fingerprint() if fsutil.isdir(args.model) else None
            baseline = executor.resolve_baseline(
                args.baseline, args.serving_dir, args.model_name, fingerprint
            )
        pipeline = PipelineConfig(sections={"evaluator": config})
        ctx = ExecutionContext(
            pipeline, config, inputs, args.output, external={"baseline": {"path": baseline}}
        )
        blessing = self.run_standalone(ctx)
        verdict = "BLESSED: " if blessing["blessed"] else "NOT BLESSED: "
        print(verdict + "; ".join(blessing["reasons"]))
        print(f"wrote {fsutil.join(args.output, artifacts.BLESSING_FILE)}")
        return 0


COMPONENT = Evaluator()
