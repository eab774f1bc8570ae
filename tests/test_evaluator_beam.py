"""The Evaluator on Beam: the same metrics.json, predictions.csv and errors.png as the previous
single-process scorer (`predict_split` + `metrics.classification_metrics`), the pieces of the
distributed metrics against their one-process formulas, and its one-line errors."""

import io
import json
import logging
import re

import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that
from PIL import Image

from evalfixtures import export_threshold_model, solid_png, write_split
from pipeline_components import cli
from pipeline_components.core.beam import BeamSetup
from pipeline_components.evaluator import executor as evaluator
from pipeline_components.evaluator import metrics, plots, scoring
from pipeline_components.evaluator.config import EvaluatorConfig
from pipeline_components.trainer import export

THREE = ["red", "green", "blue"]


def colour_png(rgb) -> bytes:
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[...] = rgb
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def export_colour_model(path):
    """Softmax over the mean red, green and blue: P(class) grows with that channel."""
    import keras

    inp = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(inp)))
    dense.set_weights([np.eye(3) * 6.0 / 255.0, np.array([0.3, 0.0, -0.2])])
    export.export_saved_model(model, str(path), THREE, (16, 16))
    return path


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """24 images of random redness in 3 shards; 4 are repeated with the other label, so equal
    scores fall in both classes (ties in the AUC)."""
    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(7)
    reds = np.round(rng.uniform(0.02, 0.98, 20), 2)
    items = [(solid_png(r), int(r > 0.5)) for r in reds]
    items += [(solid_png(r), 1 - int(r > 0.5)) for r in reds[:4]]
    data = write_split(root / "examples", "test", items, ["blue", "red"], shards=3)
    return {
        "data": data,
        "model": export_threshold_model(root / "t03", 0.3),
        "baseline": export_threshold_model(root / "t05", 0.5),
    }


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(3)
    items = []
    for _ in range(30):
        rgb = rng.integers(0, 256, 3)
        label = int(rgb.argmax()) if rng.random() < 0.7 else int(rng.integers(0, 3))
        items.append((colour_png(rgb), label))
    data = write_split(root / "examples", "test", items, THREE, shards=3)
    return {"data": data, "model": export_colour_model(root / "m")}


def single_process(model, data, num_errors):
    """The previous implementation: the whole split through the signature in this process."""
    _, signature, labels = evaluator.load_serving_model(str(model))
    preds = evaluator.predict_split(signature, str(data), "test", 4, num_errors)
    return preds, labels, metrics.classification_metrics(preds.probabilities, preds.y_true, labels)


def assert_same_metrics(new, old, tol=1e-6):
    assert new.keys() == old.keys()
    assert new["num_examples"] == old["num_examples"] and new["labels"] == old["labels"]
    assert new["confusion_matrix"] == old["confusion_matrix"]
    for key in ("accuracy", "loss", "auc"):
        if key in old:
            assert new[key] == pytest.approx(old[key], abs=tol), key
    for name, per_class in old["per_class"].items():
        assert new["per_class"][name]["support"] == per_class["support"]
        for key in ("precision", "recall", "f1"):
            assert new["per_class"][name][key] == pytest.approx(per_class[key], abs=tol)


@pytest.mark.parametrize("case", ["binary", "three"])
def test_beam_evaluator_equals_the_single_process_scorer(case, binary, three, tmp_path):
    setup = binary if case == "binary" else three
    out = tmp_path / "eval"
    baseline = setup.get("baseline")
    config = EvaluatorConfig(
        min_accuracy=0.0, max_regression=1.0, batch_size=4, num_error_examples=5
    )
    blessing = evaluator.run_evaluator(
        str(setup["model"]), str(setup["data"]), str(out), config,
        baseline=str(baseline) if baseline else None,
    )  # fmt: skip
    preds, labels, old = single_process(setup["model"], setup["data"], 5)
    new = json.loads((out / "metrics.json").read_text())
    assert_same_metrics(new, old)
    assert 0 < new["accuracy"] < 1 and new["num_examples"] == len(preds.filenames)
    if case == "binary":
        assert 0 < new["auc"] < 1
    # the same rows in the same order, and the same misclassified images in errors.png
    assert (out / "predictions.csv").read_bytes() == evaluator._predictions_csv(
        preds, labels
    ).encode("utf-8")
    assert len(preds.errors) == 5
    assert (out / "errors.png").read_bytes() == plots.errors_png(preds.errors, labels)
    assert blessing["accuracy"] == new["accuracy"]
    if baseline:  # scored in the same Beam job, on the same records
        _, _, old_base = single_process(baseline, setup["data"], 0)
        assert_same_metrics(json.loads((out / "baseline_metrics.json").read_text()), old_base)
        assert blessing["baseline_accuracy"] == pytest.approx(old_base["accuracy"])


def test_a_baseline_that_fails_on_the_test_images_skips_the_regression_check(binary, tmp_path):
    """A baseline exported with a pixel limit below the 16x16 test images rejects every one."""
    from evalfixtures import threshold_model

    baseline = tmp_path / "strict"
    export.export_saved_model(
        threshold_model(0.5), str(baseline), ["blue", "red"], (16, 16), max_image_pixels=100
    )
    config = EvaluatorConfig(min_accuracy=0.5, num_error_examples=0)
    b = evaluator.run_evaluator(
        str(binary["model"]), str(binary["data"]), str(tmp_path / "e"), config, str(baseline)
    )
    assert b["blessed"] and b["baseline_accuracy"] is None and b["baseline"] is None
    assert b["reasons"][-1].startswith(f"baseline {baseline} failed on test example test/")
    assert "over the limit of 100 pixels" in b["reasons"][-1]
    assert b["reasons"][-1].endswith("regression check skipped")
    assert not (tmp_path / "e" / "baseline_metrics.json").exists()


def test_bucketed_auc_equals_roc_auc_with_ties_and_bucket_edges():
    rng = np.random.default_rng(0)
    edges = [np.float32(v) for v in (0.0, -0.0, 1.0, 0.5, np.nextafter(np.float32(0.5), 1))]
    scores = np.concatenate(
        [rng.random(3000).astype(np.float32), np.repeat(edges, 40), np.full(50, 0.25, np.float32)]
    )
    positive = rng.random(len(scores)) < 0.4
    buckets: dict[int, dict[float, list[int]]] = {}
    for s, pos in zip(scores, positive, strict=True):
        score = float(s) + 0.0
        counts = buckets.setdefault(metrics.auc_bucket(score), {}).setdefault(score, [0, 0])
        counts[int(pos)] += 1
    assert len(buckets) > 100  # the scores really are spread over many buckets
    summaries = [(b, *metrics.bucket_auc(c)) for b, c in buckets.items()]
    expected = metrics.roc_auc(scores.astype(np.float64), positive)
    assert metrics.auc_from_buckets(summaries) == pytest.approx(expected, abs=1e-12)
    # order: every score of a lower bucket is lower
    keys = sorted(buckets)
    assert all(max(buckets[a]) < min(buckets[b]) for a, b in zip(keys, keys[1:], strict=False))
    assert metrics.auc_from_buckets([(0, 5, 0, 0)]) is None


@pytest.mark.parametrize("num_classes", [2, 3])
def test_compute_metrics_combiners_equal_the_one_process_formula(num_classes):
    rng = np.random.default_rng(num_classes)
    n = 1500
    probs = rng.dirichlet(np.ones(num_classes), n).astype(np.float32)
    probs[:200] = probs[0]  # ties
    labels = rng.integers(0, num_classes, n)
    names = [f"c{i}" for i in range(num_classes)]
    scored = [
        scoring.Scored(scoring.Example((i % 4, i), f"f{i}", int(y)), p, b"")
        for i, (p, y) in enumerate(zip(probs, labels, strict=True))
    ]
    expected = metrics.classification_metrics(probs, labels, names)

    def check(results):
        assert len(results) == 1
        assert_same_metrics(results[0], expected, tol=1e-9)

    with test_pipeline.TestPipeline() as p:
        result = p | scoring.beam.Create(scored) | scoring.ComputeMetrics(names)
        assert_that(result, check)


def _run_cli(args, capsys):
    code = cli.main(["evaluate", *args])
    return code, capsys.readouterr().err.strip()


def test_an_image_the_model_rejects_is_a_one_line_error(binary, tmp_path, capsys):
    items = [(solid_png(0.1), 0), (b"not an image at all", 1), (solid_png(0.9), 1)]
    data = write_split(tmp_path / "bad", "test", items, ["blue", "red"], shards=1)
    out = tmp_path / "e"
    args = ["--model", str(binary["model"]), "--examples", str(data), "--output", str(out)]
    code, err = _run_cli(args, capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "the model failed on test example test/red/001.png" in err
    assert "not an encoded JPEG, PNG, GIF or BMP image" in err
    assert not out.exists()


def test_a_model_the_workers_cannot_load_is_a_one_line_error(binary, tmp_path, capsys):
    """The driver reads only saved_model.pb; broken variables fail where the model is loaded."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(binary["model"], broken)
    for part in (broken / "variables").glob("variables.data-*"):
        part.write_bytes(b"")
    out = tmp_path / "e"
    args = ["--model", str(broken), "--examples", str(binary["data"]), "--output", str(out)]
    code, err = _run_cli(args, capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"cannot load SavedModel {broken}" in err and not out.exists()


def test_beam_args_after_the_double_dash_reach_the_pipeline(binary, tmp_path, capsys):
    out = tmp_path / "e"
    args = ["--model", str(binary["model"]), "--examples", str(binary["data"])]
    code, err = _run_cli([*args, "--output", str(out), "--", "--runner=NoSuchRunner"], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "bad Beam options --runner=NoSuchRunner" in err and not out.exists()


def test_the_scoring_job_reports_its_progress_while_it_runs(binary, tmp_path, caplog):
    """Its counters every beam.progress_seconds (here 0.05 s) while the job runs (issue 28)."""
    caplog.set_level(logging.INFO, "pipeline_components.core.beam")
    config = EvaluatorConfig(min_accuracy=0.0, num_error_examples=0)
    setup = BeamSetup(("--runner=DirectRunner",), 0.05)
    evaluator.run_evaluator(
        str(binary["model"]), str(binary["data"]), str(tmp_path / "e"), config, beam_setup=setup
    )
    lines = [m for m in caplog.messages if m.startswith("Evaluator: ")]
    assert lines, "no progress line"
    for line in lines:
        found = re.fullmatch(r"Evaluator: (\d+)(/24)? test examples read, (\d+) scored .*", line)
        assert found, line
        assert int(found[1]) <= 24 and int(found[3]) <= 24
    read = [int(re.search(r": (\d+)", line)[1]) for line in lines]  # type: ignore[index]
    assert read == sorted(read) and read[-1] > 0, lines
