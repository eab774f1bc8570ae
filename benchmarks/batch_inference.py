"""Batch prediction and evaluation on Beam (RunInference) against one process, same images.

    python -m benchmarks.batch_inference [--quick] [--num-images N] [--repeats R]

Model: MobileNetV2 (alpha 1.0) at 224x224 + GlobalAveragePooling + Dense(1, sigmoid), exported by
the Trainer's `export_saved_model` (random weights: no download here, the same compute): the
standard backbone at the input size of the default config's model, ~30 ms of CPU per image here
(VGG19 at 224, the default, costs ~10x more). With a model ten times lighter (MobileNetV2 0.35 at
96x96, ~2 ms per image) Beam's fixed ~2-3 CPU-seconds per job and per-element overhead weigh as
much as the model: (b)/(a) measured 1.75x there at 1,000 images. Data: N photo-like 500x375 JPEGs
from the shared pool, as a folder `<root>/<class>/NNNN.jpg` and as GZIP TFRecord shards of the same
bytes (the Evaluator's test split). Variants, in alternating rounds, all inside this process
(TensorFlow and Beam already imported; worker processes of (c) import their own):

(a) plain loop: load the SavedModel, read the files in batches of 32, call `serving_default`;
(b) `batch-predict`, DirectRunner (in_memory): the same model on the same files, writing JSON
    Lines, PredictionLogs, errors and summary.json;
(c) `batch-predict`, DirectRunner multi_processing with 2 workers;
(d) the previous Evaluator: load the model, `predict_split` (tf.data over the shards, one
    process), `classification_metrics`, predictions.csv and the plots;
(e) the Beam Evaluator (`run_evaluator`, DirectRunner in_memory): the same outputs.

Goals (issue 16): (b) within 1.3x of (a); (c) faster than (a) where the work outweighs the
start-up of its worker processes; (e) vs (d) reported.
"""

from __future__ import annotations

import hashlib
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

NAME = "batch_inference"
SIZE = (500, 375)
WORKERS = 2
BATCH = 32
MODEL = "mobilenet_v2_100_224"
CLASSES = ("circles", "squares")
VARIANTS = {
    "a": "(a) plain loop, 1 process",
    "b": "(b) batch-predict in_memory",
    "c": "(c) batch-predict multi_processing x2",
    "d": "(d) Evaluator before: 1 process",
    "e": "(e) Evaluator on Beam in_memory",
}


def make_images(num_images: int) -> str:
    """<root>/<class>/NNNN.jpg: num_images photo-like JPEGs, cached between runs."""
    root = os.path.join(common.cache_dir(NAME), f"photos-{num_images}")
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {num_images} {SIZE[0]}x{SIZE[1]} JPEGs in {root} ...")
        common.photo_dataset(
            root, per_split=(num_images // 2,), size=SIZE, classes=CLASSES, splits=("images",)
        )
        open(done, "w").close()
    return os.path.join(root, "images")


def list_images(root: str) -> list[str]:
    return sorted(
        os.path.join(dirpath, name)
        for dirpath, _, names in os.walk(root)
        for name in names
        if not name.startswith(".")
    )


def write_examples(paths: list[str], root: str, out: str, shards: int = 4) -> str:
    """The images as ExampleGen's test split (same bytes, labels from the class folder)."""
    import tensorflow as tf

    from pipeline_components.core import examples

    os.makedirs(os.path.join(out, "test"), exist_ok=True)
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [
        tf.io.TFRecordWriter(
            os.path.join(out, "test", f"examples-{i:05d}-of-{shards:05d}.tfrecord.gz"), options
        )
        for i in range(shards)
    ]
    for n, path in enumerate(paths):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        label = CLASSES.index(rel.split("/")[0])
        with open(path, "rb") as f:
            data = f.read()
        example = examples.make_example(
            encoded=data, fmt="jpeg", height=SIZE[1], width=SIZE[0], channels=3, label=label,
            text=CLASSES[label], filename=f"test/{rel}", sha256=hashlib.sha256(data).hexdigest(),
        )  # fmt: skip
        writers[n % shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return out


def export_model(out: str) -> str:
    from benchmarks.serving import MODELS, build_model
    from pipeline_components.trainer.export import export_saved_model

    size = MODELS[MODEL]
    path = os.path.join(out, "model")
    export_saved_model(build_model(MODEL), path, list(CLASSES), (size, size))
    return path


def plain_loop(model_dir: str, paths: list[str]) -> int:
    """What one would write without Beam: one process, batches of BATCH, the signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(model_dir).signatures["serving_default"]
    done = 0
    for start in range(0, len(paths), BATCH):
        batch = []
        for path in paths[start : start + BATCH]:
            with open(path, "rb") as f:
                batch.append(f.read())
        out = signature(images=tf.constant(batch))
        done += int(out["probabilities"].shape[0])
    return done


def batch_predict(model_dir: str, root: str, out: str, beam_args: list[str]) -> None:
    from pipeline_components.bulk_inferrer import executor
    from pipeline_components.core.beam import BeamSetup

    model = executor.resolve_model(model_dir, model_name=MODEL)
    options = executor.BatchPredictOptions(batch_size=BATCH, beam_setup=BeamSetup(tuple(beam_args)))
    summary = executor.run_batch_predict(model, root, out, options)
    assert summary["num_errors"] == 0, summary["first_errors"]


def evaluator_before(model_dir: str, examples_dir: str, out: str) -> None:
    """The previous Evaluator's work: score in one process, metrics, predictions.csv, plots."""
    from pipeline_components.core import fsutil
    from pipeline_components.evaluator import executor, metrics, plots

    _, signature, labels = executor.load_serving_model(model_dir)
    preds = executor.predict_split(signature, examples_dir, "test", BATCH, 12)
    result = metrics.classification_metrics(preds.probabilities, preds.y_true, labels)
    with fsutil.atomic_dir(out) as tmp:
        fsutil.write_json(os.path.join(tmp, "metrics.json"), result)
        fsutil.write_atomic(
            os.path.join(tmp, "predictions.csv"), executor._predictions_csv(preds, labels)
        )
        executor._write_confusion_matrix(tmp, result, labels)
        fsutil.write_atomic(
            os.path.join(tmp, "mistakes.png"), plots.mistakes_png(preds.errors, labels)
        )


def evaluator_beam(model_dir: str, examples_dir: str, out: str) -> None:
    from pipeline_components.evaluator import executor
    from pipeline_components.evaluator.config import EvaluatorConfig

    # the same work as (d): no intervals, slices or heat maps (benchmarks/evaluator_gate.py
    # measures those), 12 misclassified images drawn
    config = EvaluatorConfig(
        min_accuracy=0.0, batch_size=BATCH, bootstrap_resamples=0, slices=False,
        mistakes_per_class=12, num_error_examples=12, grad_cam=False,
    )  # fmt: skip
    executor.run_evaluator(model_dir, examples_dir, out, config)


def run(quick: bool = False, num_images: int | None = None, repeats: int | None = None) -> dict:
    """Measure all variants; returns the results dict (also written as JSON and Markdown)."""
    import logging

    logging.getLogger("pipeline_components").setLevel(logging.WARNING)
    num_images = num_images or (500 if quick else 1000)
    repeats = repeats or (1 if quick else 3)
    root = make_images(num_images)
    paths = list_images(root)
    work = tempfile.mkdtemp(prefix="bench-batch-inference-")
    try:
        model_dir = export_model(work)
        examples_dir = write_examples(paths, root, os.path.join(work, "examples"))
        mp = ["--direct_running_mode=multi_processing", f"--direct_num_workers={WORKERS}"]
        out = os.path.join(work, "out")
        variants = {
            VARIANTS["a"]: lambda: plain_loop(model_dir, paths),
            VARIANTS["b"]: lambda: batch_predict(model_dir, root, out, ["--runner=DirectRunner"]),
            VARIANTS["c"]: lambda: batch_predict(model_dir, root, out, mp),
            VARIANTS["d"]: lambda: evaluator_before(model_dir, examples_dir, out),
            VARIANTS["e"]: lambda: evaluator_beam(model_dir, examples_dir, out),
        }
        print(f"{len(paths)} JPEGs of {SIZE[0]}x{SIZE[1]}, {MODEL}, {repeats} alternating rounds")
        cpu: dict[str, list[float]] = {}
        seconds = common.alternate(variants, repeats, cpu=cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = common.summarize(seconds, len(paths), "images")
    for name, runs in cpu.items():
        summary[name]["median_cpu_s"] = round(statistics.median(runs), 3)
    a, b, c, d, e = (VARIANTS[k] for k in "abcde")
    ratios = {
        "b_over_a": common.paired_ratio(seconds, b, a),
        "a_over_c": common.paired_ratio(seconds, a, c),
        "e_over_d": common.paired_ratio(seconds, e, d),
        "b_over_a_median_wall": common.ratio(summary, b, a),
        "a_over_c_median_wall": common.ratio(summary, a, c),
        "e_over_d_median_wall": common.ratio(summary, e, d),
        "b_over_a_cpu": round(summary[b]["median_cpu_s"] / summary[a]["median_cpu_s"], 3),
    }
    return {
        "benchmark": NAME,
        "model": MODEL,
        "num_images": len(paths),
        "image_size": list(SIZE),
        "batch_size": BATCH,
        "repeats": repeats,
        "quick": quick,
        "variants": summary,
        "ratios": ratios,
        "goals": {
            "b_within_1.3x_of_a": ratios["b_over_a"] <= 1.3,
            "c_faster_than_a": ratios["a_over_c"] > 1.0,
        },
        "environment": common.environment(),
    }


def report(results: dict) -> tuple[str, str]:
    """(text table for the terminal, Markdown for the results file)."""
    header, rows = common.VARIANT_HEADER, common.variant_rows(results)
    r, g = results["ratios"], results["goals"]
    met = {True: "met", False: "MISSED"}
    notes = [
        "ratios are medians of per-round ratios (wall time); cpu = this process + its reaped "
        "children",
        f"(b)/(a) = {r['b_over_a']}x  (goal <= 1.3: {met[g['b_within_1.3x_of_a']]}); "
        f"of median wall times {r['b_over_a_median_wall']}x, of cpu {r['b_over_a_cpu']}x",
        f"(a)/(c) = {r['a_over_c']}x  (goal > 1: {met[g['c_faster_than_a']]}); "
        f"of median wall times {r['a_over_c_median_wall']}x",
        f"Evaluator (e)/(d) = {r['e_over_d']}x (Beam / one process; no goal set); "
        f"of median wall times {r['e_over_d_median_wall']}x",
    ]
    env = results["environment"]
    title = (
        f"Batch inference, {results['num_images']} JPEGs {results['image_size'][0]}x"
        f"{results['image_size'][1]}, {results['model']}, {env['cpus']} CPUs "
        f"(load {env['load_avg_1m']})"
    )
    return common.render(title, header, rows, notes)


def headline_claims(r: dict) -> tuple[str, list[dict]]:
    ratios, goals = r["ratios"], r["goals"]
    a, d = _variant(r, "(a)")["median_s"], _variant(r, "(d)")["median_s"]
    w, h = r["image_size"]
    workload = f"{r['num_images']} JPEGs {w}x{h}, {r['model']}, {_rounds(r['repeats'])}"
    loop = f"(a) the plain loop: {_s(a)}"
    return workload, [
        claim(ratios["b_over_a"], "(b)/(a) time", goals["b_within_1.3x_of_a"], loop),
        claim(ratios["a_over_c"], "(a)/(c) time", goals["c_faster_than_a"], loop),
        claim(ratios["e_over_d"], "(e)/(d) time", None, f"(d) one process: {_s(d)}"),
    ]


BENCHMARK = Benchmark(
    NAME,
    60,
    (
        "(a) plain loop calling the signature, 1 process -> (b) batch-predict in_memory",
        "(a) plain loop -> (c) batch-predict multi_processing x2",
        "(d) Evaluator in one process (before) -> (e) Evaluator on Beam in_memory",
    ),
    (
        "(b)/(a) <= 1.3 (issue 16)",
        "(a)/(c) > 1 where the work outweighs start-up (issue 16)",
        "none set; reported (issue 16)",
    ),
    headline_claims,
    smoke={"num_images": 40, "repeats": 1},
)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(NAME, __doc__, "500 images, 1 round")
    p.add_argument("--num-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    return common.finish(
        NAME, run(args.quick, args.num_images, args.repeats), report, args.output_dir
    )


if __name__ == "__main__":
    sys.exit(main())
