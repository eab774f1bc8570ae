"""The Evaluator with the whole gate on against today's gate, same images, same models.

    python -m benchmarks.evaluator_gate [--quick] [--num-images N] [--repeats R]

Model: the Trainer's own model (trainer/model.py: MobileNetV2 at 224x224, weights none — the
same compute as ImageNet weights — flatten head), exported by `export_saved_model`, so it has
the grad_cam signature; the baseline ("the served model") is a second export with another head.
Data: N photo-like 500x375 JPEGs from the shared pool, two classes, as GZIP TFRecord shards
(benchmarks/batch_inference.write_examples) with a metadata.jsonl of one column (`camera`,
three values) as ExampleGen writes it from a metadata.csv. Variants, in alternating rounds,
both scoring the candidate and the baseline in one Beam job (DirectRunner in_memory):

(a) today's gate: `min_accuracy` and `max_regression` only (bootstrap_resamples 0, slices
    off, no heat maps: what the Evaluator did before issue 31); metrics.json,
    predictions.csv, the confusion matrix and 12 misclassified images;
(b) everything on: 6 thresholds (per-class recall for every class, AUC, log loss, a relative
    accuracy change with_confidence, a camera slice floor), 1,000 paired bootstrap replicates
    of every metric overall and per slice, slices by class, size, folder and camera, the 4 most
    confident mistakes per class with Grad-CAM heat maps, analysis.json and three more PNGs.

Goal (issue 31): (b)/(a) <= 1.5. What (b) adds is mostly fixed (the bootstrap over 1,000
images, loading the SavedModel once more in the driver for grad_cam, three figures), so a
model ten times dearer per image (VGG19, the default) makes the ratio smaller, a cheaper one
larger.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile

from benchmarks import common
from benchmarks.headline import Benchmark, claim
from benchmarks.headline import rounds as _rounds
from benchmarks.headline import seconds as _s
from benchmarks.headline import variant as _variant

NAME = "evaluator_gate"
SIZE = (500, 375)
BACKBONE = "mobilenet_v2"
IMAGE_SIZE = 224
BATCH = 32
CAMERAS = ("phone", "dslr", "webcam")
VARIANTS = {
    "a": "(a) today's gate: min_accuracy, max_regression",
    "b": "(b) everything on: thresholds, bootstrap, slices, Grad-CAM",
}
THRESHOLDS = [
    {"metric": "recall", "class": "*", "lower": 0.3},
    {"metric": "auc", "lower": 0.4},
    {"metric": "log_loss", "upper": 5.0},
    {"metric": "accuracy", "change": {"relative": -0.05}, "with_confidence": True},
    {"metric": "accuracy", "slice": {"camera": "phone"}, "lower": 0.3},
]


def export_models(out: str, image_size: int) -> tuple[str, str]:
    """The candidate and the baseline: the Trainer's model, two random heads."""
    import keras

    from benchmarks.batch_inference import CLASSES
    from pipeline_components.trainer import model
    from pipeline_components.trainer.component import TrainerConfig
    from pipeline_components.trainer.export import export_saved_model

    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        config = TrainerConfig(backbone=BACKBONE, weights="none", image_size=[image_size] * 2)
        net = model.create_model(config, len(CLASSES))
        path = os.path.join(out, f"model-{seed}")
        export_saved_model(net, path, list(CLASSES), (image_size, image_size))
        paths.append(path)
    return paths[0], paths[1]


def write_metadata(examples_dir: str, root: str, paths: list[str]) -> None:
    """metadata.jsonl as ExampleGen carries a metadata.csv: one camera per image."""
    from pipeline_components.core import artifacts, examples

    rows = {
        "test/" + os.path.relpath(p, root).replace(os.sep, "/"): {"camera": CAMERAS[i % 3]}
        for i, p in enumerate(paths)
    }
    text = examples.metadata_lines(["camera"], rows)
    with open(os.path.join(examples_dir, artifacts.METADATA_FILE), "w", encoding="utf-8") as f:
        f.write(text)


def evaluate(candidate: str, baseline: str, examples_dir: str, out: str, everything: bool) -> None:
    from pipeline_components.evaluator import executor
    from pipeline_components.evaluator.config import EvaluatorConfig

    gate = {"min_accuracy": 0.0, "max_regression": 1.0, "batch_size": BATCH}
    if everything:  # the defaults: intervals, slices, mistakes with Grad-CAM; and thresholds
        config = EvaluatorConfig(**gate, thresholds=THRESHOLDS)
    else:  # today's gate: 12 misclassified images drawn, nothing more
        config = EvaluatorConfig(
            **gate, bootstrap_resamples=0, slices=False, mistakes_per_class=12,
            num_error_examples=12, grad_cam=False,
        )  # fmt: skip
    executor.run_evaluator(candidate, examples_dir, out, config, baseline=baseline)


def run(
    quick: bool = False,
    num_images: int | None = None,
    repeats: int | None = None,
    image_size: int = IMAGE_SIZE,
) -> dict:
    """Measure both variants; returns the results dict."""
    import logging

    from benchmarks.batch_inference import list_images, make_images, write_examples

    logging.getLogger("pipeline_components").setLevel(logging.WARNING)
    num_images = num_images or 1000
    repeats = repeats or (2 if quick else 3)
    root = make_images(num_images)
    paths = list_images(root)
    work = tempfile.mkdtemp(prefix="bench-evaluator-gate-")
    try:
        candidate, baseline = export_models(work, image_size)
        examples_dir = write_examples(paths, root, os.path.join(work, "examples"))
        write_metadata(examples_dir, root, paths)
        out = os.path.join(work, "out")
        variants = {
            VARIANTS["a"]: lambda: evaluate(candidate, baseline, examples_dir, out, False),
            VARIANTS["b"]: lambda: evaluate(candidate, baseline, examples_dir, out, True),
        }
        print(
            f"{len(paths)} JPEGs of {SIZE[0]}x{SIZE[1]}, {BACKBONE} at {image_size}, candidate "
            f"and baseline, {repeats} alternating rounds"
        )
        cpu: dict[str, list[float]] = {}
        seconds = common.alternate(variants, repeats, cpu=cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = common.summarize(seconds, len(paths), "images")
    for name, runs in cpu.items():
        summary[name]["median_cpu_s"] = round(statistics.median(runs), 3)
    a, b = VARIANTS["a"], VARIANTS["b"]
    ratios = {
        "b_over_a": common.paired_ratio(seconds, b, a),
        "b_over_a_median_wall": common.ratio(summary, b, a),
        "b_over_a_cpu": round(summary[b]["median_cpu_s"] / summary[a]["median_cpu_s"], 3),
    }
    return {
        "benchmark": NAME,
        "model": f"{BACKBONE}_{image_size}",
        "num_images": len(paths),
        "image_size": list(SIZE),
        "repeats": repeats,
        "quick": quick,
        "variants": summary,
        "ratios": ratios,
        "goals": {"b_within_1.5x_of_a": ratios["b_over_a"] <= 1.5},
        "environment": common.environment(),
    }


def report(results: dict) -> tuple[str, str]:
    header, rows = common.VARIANT_HEADER, common.variant_rows(results)
    r, g = results["ratios"], results["goals"]
    spread = common.spread(
        common.round_ratios(
            results["variants"][VARIANTS["b"]]["runs_s"],
            results["variants"][VARIANTS["a"]]["runs_s"],
        )
    )
    notes = [
        "ratios are medians of per-round ratios (wall time); cpu = this process + its reaped "
        "children",
        f"(b)/(a) = {common.format_ratio(r['b_over_a'], spread, results['repeats'])}  (goal <= "
        f"1.5: {'met' if g['b_within_1.5x_of_a'] else 'MISSED'}); of median wall times "
        f"{r['b_over_a_median_wall']}x, of cpu {r['b_over_a_cpu']}x",
    ]
    env = results["environment"]
    title = (
        f"Evaluator gate, {results['num_images']} JPEGs {results['image_size'][0]}x"
        f"{results['image_size'][1]}, {results['model']} + baseline, {env['cpus']} CPUs "
        f"(load {env['load_avg_1m']})"
    )
    return common.render(title, header, rows, notes)


def headline_claims(r: dict) -> tuple[str, list[dict]]:
    a = _variant(r, "(a)")["median_s"]
    w, h = r["image_size"]
    workload = f"{r['num_images']} JPEGs {w}x{h}, {r['model']} + baseline, {_rounds(r['repeats'])}"
    return workload, [
        claim(
            r["ratios"]["b_over_a"],
            "(b)/(a) time",
            r["goals"]["b_within_1.5x_of_a"],
            f"(a) today's gate: {_s(a)}",
        )
    ]


BENCHMARK = Benchmark(
    NAME,
    65,
    ("(a) the Evaluator with today's gate -> (b) with thresholds, intervals, slices, Grad-CAM",),
    ("(b)/(a) <= 1.5 (issue 31)",),
    headline_claims,
    smoke={"num_images": 40, "repeats": 1, "image_size": 64},
)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__, "1,000 images, 2 rounds")
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="the model's input side")
    args = p.parse_args(argv)
    results = run(args.quick, args.num_images, args.repeats, args.image_size)
    return common.finish(NAME, results, report, args.output_dir)


if __name__ == "__main__":
    sys.exit(main())
