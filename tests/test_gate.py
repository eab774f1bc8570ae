"""The deployment gate (issue 31): thresholds as data, per-class floors, change against the
served model with paired bootstrap intervals, slices (metadata.csv included), every metric
against scikit-learn, and Grad-CAM heat maps of the mistakes, on the real Evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

from evalfixtures import (
    PATCH_CLASSES,
    export_threshold_model,
    patch_images,
    png,
    solid_png,
    train_patch_model,
    write_split,
)
from pipeline_components.core import artifacts, contract
from pipeline_components.core.errors import PipelineError
from pipeline_components.evaluator import (
    analysis,
    bootstrap,
    measures,
    slicing,
    thresholds,
    vocabulary,
)
from pipeline_components.evaluator import executor as evaluator
from pipeline_components.evaluator.analysis import ScoredSplit
from pipeline_components.evaluator.config import EvaluatorConfig
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.trainer import explain, export

# ------------------------------------------------------------------ metrics vs scikit-learn


def sklearn_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    c = p.shape[1]
    classes = list(range(c))
    pred = p.argmax(1)
    ref = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, average="macro", labels=classes, zero_division=0),
        "recall": skm.recall_score(y, pred, average="macro", labels=classes, zero_division=0),
        "f1": skm.f1_score(y, pred, average="macro", labels=classes, zero_division=0),
        "log_loss": skm.log_loss(y, p, labels=classes),
    }
    if c == 2:
        ref["auc"] = skm.roc_auc_score(y, p[:, 1])
        ref["auc_pr"] = skm.average_precision_score(y, p[:, 1])
    else:
        ref["auc"] = skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=classes)
        ref["auc_pr"] = skm.average_precision_score(label_binarize(y, classes=classes), p)
    # ECE: scikit-learn's per-bin accuracy and confidence (15 uniform bins), weighted by counts
    confidence, correct = p.max(1).astype(np.float64), (pred == y).astype(int)
    acc_b, conf_b = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], confidence), minlength=15)
    ref["ece"] = float(np.sum(counts[counts > 0] * np.abs(acc_b - conf_b)) / len(y))
    return ref


def random_predictions(seed: int, num_classes: int, n: int = 600):
    """Probabilities with ties (repeated rows, coarse values, exact 0.5) and float32 rounding."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(num_classes, 0.6), n)
    p[:80] = p[0]
    coarse = np.round(p[80:160], 1) + 1e-3
    p[80:160] = coarse / coarse.sum(1, keepdims=True)
    if num_classes == 2:
        p[160:180] = 0.5
    return p.astype(np.float32), rng.integers(0, num_classes, n)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_every_metric_equals_scikit_learn(num_classes):
    p, y = random_predictions(num_classes, num_classes)
    got = measures.point(measures.Examples.of(p, y))
    for name, value in sklearn_metrics(p, y).items():
        assert got.overall[name][0] == pytest.approx(value, abs=1e-6), name
    prf = skm.precision_recall_fscore_support(y, p.argmax(1), labels=list(range(num_classes)))
    for k, name in enumerate(("precision", "recall", "f1")):
        np.testing.assert_allclose(got.per_class[name][0], prf[k], atol=1e-6)
    for c in range(num_classes):
        assert got.per_class["auc"][0, c] == pytest.approx(
            skm.roc_auc_score(y == c, p[:, c]), abs=1e-6
        )
        ap = skm.average_precision_score(y == c, p[:, c])
        assert got.per_class["auc_pr"][0, c] == pytest.approx(ap, abs=1e-6)


def test_replicate_weights_equal_the_resample_itself():
    """A row of bootstrap weights gives the metrics of the drawn examples, repeats included."""
    p, y = random_predictions(7, 3, 300)
    ex = measures.Examples.of(p, y)
    w = bootstrap.replicate_weights(len(y), seed=3, start=5, stop=6)
    drawn = np.repeat(np.arange(len(y)), w[0])
    weighted, resampled = measures.measure(ex, w), measures.point(ex.take(drawn))
    for name in vocabulary.METRICS:
        assert weighted.overall[name][0] == pytest.approx(resampled.overall[name][0], abs=1e-9)
    assert w.sum() == len(y)


def test_the_two_ways_of_summing_weights_agree():
    """Many rows: one matrix product; few (large splits, one replicate per block): bincounts."""
    p, y = random_predictions(5, 4, 500)
    ex = measures.Examples.of(p, y)
    weights = bootstrap.replicate_weights(len(y), seed=1, start=0, stop=measures.FEW_ROWS + 3)
    together = measures.linear(ex, weights)
    for i in range(len(weights)):
        alone = measures.linear(ex, weights[i : i + 1])
        for name in ("accuracy", "precision", "recall", "f1", "log_loss", "ece"):
            assert alone.overall[name][0] == pytest.approx(together.overall[name][i], abs=1e-12)
        np.testing.assert_allclose(alone.support[0], together.support[i])


# ---------------------------------------------------------------------- bootstrap intervals


def _split(p, y, baseline=None, labels=("a", "b", "c")):
    dims = slicing.SliceBuilder(list(labels))
    dims.add(
        [f"test/{labels[k]}/{i}.png" for i, k in enumerate(y)],
        y,
        np.full(len(y), 40),
        np.full(len(y), 40),
    )
    return ScoredSplit(list(labels), y, p, baseline, dims.finish())


def test_intervals_are_reproducible_with_the_seed_and_do_not_depend_on_blocks():
    p, y = random_predictions(11, 3, 400)
    base, _ = random_predictions(12, 3, 400)
    split = _split(p, y, base)
    spec = bootstrap.BootstrapSpec(resamples=300, seed=5)
    subsets = [slicing.Slice((), np.arange(len(y))), *slicing.single_slices(split.dims)]
    subsets.append(slicing.select(split.dims, (("class", "b"), ("folder", "."))))

    def replicates(**kw):
        return [r.replicates for r in analysis.measure_subsets(split, subsets, **kw)]

    one, again = replicates(spec=spec), replicates(spec=spec)
    other = replicates(spec=spec._replace(seed=6))
    # large splits: 7 replicates per block, summed one row at a time: the same numbers
    rows = replicates(spec=spec, max_elements=7 * len(y))
    blocks = list(bootstrap.blocks(len(y), spec, max_elements=7 * len(y)))
    assert len(blocks) == 43  # 300 replicates in blocks of 7
    whole = bootstrap.replicate_weights(len(y), 5, 0, 300)
    assert np.array_equal(np.concatenate([w for _, w in blocks]), whole)
    for i in range(len(subsets)):
        for name in vocabulary.METRICS:
            np.testing.assert_array_equal(one[i].overall[name], again[i].overall[name])
            np.testing.assert_allclose(rows[i].overall[name], one[i].overall[name], atol=1e-12)
        for name in vocabulary.PER_CLASS:
            np.testing.assert_allclose(rows[i].per_class[name], one[i].per_class[name], atol=1e-12)
    for name in vocabulary.METRICS:
        assert not np.array_equal(one[0].overall[name], other[0].overall[name]), name
    low, high = bootstrap.interval(one[0].overall["accuracy"], 0.95)
    point = measures.point(measures.Examples.of(p, y)).overall["accuracy"][0]
    assert low < point < high and high - low < 0.15


# ------------------------------------------------------------------------ thresholds: config


@pytest.mark.parametrize(
    "item, message",
    [
        (
            {"metric": "recal", "lower": 0.5},
            "evaluator.thresholds[0].metric: unknown metric 'recal'",
        ),
        ({"metric": "recall", "lowr": 0.5}, "evaluator.thresholds[0]: unknown key 'lowr'"),
        ({"metric": "accuracy", "class": "cats", "lower": 0.5}, "accuracy has no per-class value"),
        ({"metric": "auc"}, "needs a bound: lower, upper or change"),
        ({"metric": "auc", "lower": 0.5, "change": {"relative": -0.1}}, "not both"),
        ({"metric": "auc", "change": {"relatve": -0.1}}, "expected {relative: x} or {absolute: x}"),
        ({"metric": "recall", "lower": 1.5}, "evaluator.thresholds[0].lower: recall is in [0, 1]"),
        ({"metric": "recall", "lower": True}, "expected a finite number, got True"),
        ({"metric": "recall", "class": None, "lower": 0.5}, "expected a name (quote it in YAML)"),
        ({"metric": "recall", "lower": 0.5, "with_confidence": "yes"}, "expected true or false"),
        (
            {"metric": "recall", "lower": 0.5, "slice": {"size": "huge"}},
            "unknown size bucket 'huge'",
        ),
    ],
)
def test_a_bad_threshold_is_a_one_line_config_error(item, message):
    with pytest.raises(PipelineError) as err:
        thresholds.parse([item])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"thresholds": [{"metric": "recal", "lower": 0.5}]},
            "p.yaml: evaluator.thresholds[0].metric: unknown metric 'recal' (known: accuracy,",
        ),
        (
            {"thresholds": [{"metric": "auc", "lower": 0.9}, "recall"]},
            "p.yaml: evaluator.thresholds[1]: expected a mapping, got 'recall'",
        ),
        (
            {"thresholds": {"metric": "auc"}},
            "p.yaml: evaluator.thresholds: expected a list",
        ),
        (
            {
                "thresholds": [{"metric": "auc", "lower": 0.9, "with_confidence": True}],
                "bootstrap_resamples": 0,
            },
            "p.yaml: evaluator.thresholds[0].with_confidence: needs intervals: "
            "bootstrap_resamples is 0",
        ),
        (
            {"bootstrap_resamples": 10**6},
            "p.yaml: evaluator.bootstrap_resamples: must be in [0, 100000]",
        ),
        ({"min_slice_size": 0}, "p.yaml: evaluator.min_slice_size: must be in [1, "),
        ({"num_error_examples": 1000}, "p.yaml: evaluator.num_error_examples: must be in [0, 256]"),
    ],
)
def test_the_gate_config_is_checked_when_pipeline_yaml_loads(section, message):
    from pipeline_components.core import registry

    with pytest.raises(PipelineError) as err:
        registry.config_from_dict({"evaluator": section}, source="p.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_bad_threshold_stops_a_run_before_anything_runs(tmp_path, capsys):
    from pipeline_components import cli

    path = tmp_path / "p.yaml"
    path.write_text(
        f"pipeline_root: {tmp_path / 'root'}\n"
        "evaluator:\n  thresholds:\n    - {metric: recall, class: cats, lowr: 0.8}\n"
    )
    assert cli.main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"transfer-pipeline run: error: {path}: evaluator.thresholds[0]: unknown key 'lowr' "
        "(known: metric, class, lower, upper, change, slice, with_confidence)\n"
    )
    assert not (tmp_path / "root").exists()


def test_thresholds_parse_as_the_issue_writes_them_and_resolve_against_the_classes():
    raw = [
        {"metric": "recall", "class": "cats", "lower": 0.80},
        {"metric": "auc", "lower": 0.95},
        {"metric": "log_loss", "upper": 0.35},
        {"metric": "accuracy", "change": {"relative": -0.01}},
        {"metric": "recall", "class": "*", "lower": 0.5},
        {
            "metric": "f1",
            "slice": {"camera": "phone", "size": "64-127"},
            "lower": 0.7,
            "with_confidence": True,
        },
    ]
    parsed = thresholds.parse(raw)
    assert parsed[0] == thresholds.Threshold(
        "recall", "cats", 0.8, origin="evaluator.thresholds[0]"
    )
    assert parsed[3].change == thresholds.Change("relative", -0.01)
    assert (
        parsed[5].slice == (("camera", "phone"), ("size", "64-127")) and parsed[5].with_confidence
    )
    resolved = thresholds.resolve(parsed, ["cats", "dogs 🐕"], columns=["camera"])
    assert [t.class_name for t in resolved if t.origin == "evaluator.thresholds[4]"] == [
        "cats",
        "dogs 🐕",
    ]
    with pytest.raises(
        PipelineError, match=r"thresholds\[0\].class: 'cats' is not a class of the model"
    ):
        thresholds.resolve(parsed, ["cat", "dog"], columns=["camera"])
    with pytest.raises(PipelineError, match="unknown slice dimension 'camera'"):
        thresholds.resolve(parsed, ["cats", "dogs 🐕"], columns=["site"])


def test_a_bad_class_stops_the_evaluator_before_scoring_and_writes_nothing(tmp_path):
    data = write_split(
        tmp_path / "ex", "test", [(solid_png(0.2), 0), (solid_png(0.8), 1)], ["blue", "red"]
    )
    model = export_threshold_model(tmp_path / "m", 0.5)
    config = EvaluatorConfig(thresholds=[{"metric": "recall", "class": "green", "lower": 0.5}])
    out = tmp_path / "out"
    with pytest.raises(
        PipelineError, match=r"^evaluator.thresholds\[0\].class: 'green' is not a class"
    ):
        evaluator.run_evaluator(str(model), str(data), str(out), config)
    assert not out.exists() and sorted(tmp_path.iterdir()) == [tmp_path / "ex", tmp_path / "m"]


# ------------------------------------------------------------- change against the served model


def test_a_change_smaller_than_its_interval_passes_on_the_point_and_fails_with_confidence(
    tmp_path, capsys
):
    """200 images; the served model (t=0.5) is right on all, the candidate (t=0.45) wrong on
    the 10 reds in (0.45, 0.5]: accuracy change -0.05, its paired 95% interval about
    [-0.08, -0.02]. Bound -0.065: the point clears it, the interval does not. Through
    `transfer-pipeline evaluate --baseline`, the thresholds as KEY=VALUE."""
    from pipeline_components import cli

    reds = np.round(np.arange(0.0025, 1.0, 0.005), 4)
    items = [(solid_png(r), int(r > 0.5)) for r in reds]
    data = write_split(tmp_path / "ex", "test", items, ["blue", "red"], shards=3)
    served = export_threshold_model(tmp_path / "served", 0.5)
    candidate = export_threshold_model(tmp_path / "cand", 0.45)
    raw = [
        {"metric": "accuracy", "change": {"absolute": -0.065}},
        {"metric": "accuracy", "change": {"absolute": -0.065}, "with_confidence": True},
        {"metric": "log_loss", "change": {"absolute": 1.0}},  # lower is better: <= bound
    ]
    out = tmp_path / "out"
    args = ["--model", str(candidate), "--examples", str(data), "--output", str(out)]
    args += ["--baseline", str(served), "--min-accuracy", "0.5", "--max-regression", "0.1"]
    assert cli.main(["evaluate", *args, f"thresholds={json.dumps(raw)}"]) == 0
    printed = capsys.readouterr().out.splitlines()
    b = json.loads((out / "blessing.json").read_text())
    lines = {(t["origin"]): t for t in b["thresholds"]}
    plain, confident = lines["evaluator.thresholds[0]"], lines["evaluator.thresholds[1]"]
    for line in (plain, confident):
        assert line["value"] == pytest.approx(-0.05) and line["candidate"] == pytest.approx(0.95)
        assert line["baseline"] == pytest.approx(1.0) and line["kind"] == "change"
    low, high = confident["interval"]
    assert low < -0.065 < -0.05 < high < 0  # worse by less than the interval's reach
    assert plain["interval"] == confident["interval"]
    assert plain["passed"] is True and "meets absolute change >= -0.0650" in plain["reason"]
    assert confident["passed"] is False
    assert "does not clear absolute change >= -0.0650 (with_confidence)" in confident["reason"]
    assert lines["evaluator.thresholds[2]"]["passed"] is True
    assert lines["evaluator.max_regression"]["passed"] is True  # the shorthand: -0.05 >= -0.1
    assert not b["blessed"] and confident["reason"] in b["reasons"]
    assert b["reasons"][-1] == "2 of 3 thresholds passed (blessing.json lists each)"
    assert printed[0].startswith("NOT BLESSED: ") and confident["reason"] in printed[0]


def test_without_a_baseline_a_change_threshold_is_recorded_and_not_gated(tmp_path):
    data = write_split(
        tmp_path / "ex",
        "test",
        [(solid_png(r), int(r > 0.5)) for r in (0.1, 0.3, 0.7, 0.9)],
        ["blue", "red"],
    )
    model = export_threshold_model(tmp_path / "m", 0.5)
    config = EvaluatorConfig(thresholds=[{"metric": "auc", "change": {"relative": -0.01}}])
    b = evaluator.run_evaluator(str(model), str(data), str(tmp_path / "o"), config)
    line = b["thresholds"][-1]
    assert b["blessed"] and line["passed"] is None
    assert line["reason"] == "auc change: not applicable: no baseline model (first push)"


# ------------------------------------------------------------------------- the rare class


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """The Trainer's model on 60 green, 60 red and 3 rare training images, exported with its
    grad_cam signature; the real Evaluator on 40 + 40 + 6 test images."""
    root = tmp_path_factory.mktemp("patch")
    rng = np.random.default_rng(0)
    train_x, train_y = patch_images(rng, (60, 60, 3))
    test_x, test_y = patch_images(rng, (40, 40, 6))
    net = train_patch_model(train_x, train_y)
    model = root / "model"
    export.export_saved_model(net, str(model), PATCH_CLASSES, (32, 32))
    items = [(png(x), int(y)) for x, y in zip(test_x, test_y, strict=True)]
    data = write_split(root / "examples", "test", items, PATCH_CLASSES, shards=2)
    raw = [{"metric": "recall", "class": "*", "lower": 0.5}, {"metric": "auc", "lower": 0.5}]
    out = root / "evaluation"
    config = EvaluatorConfig(min_accuracy=0.85, batch_size=16, thresholds=raw)
    blessing = evaluator.run_evaluator(str(model), str(data), str(out), config)
    return {
        "net": net, "model": model, "data": data, "out": out, "blessing": blessing,
        "test": (test_x, test_y),
    }  # fmt: skip


def test_a_rare_class_recall_floor_blocks_what_accuracy_lets_through(patch_run, tmp_path):
    b, out = patch_run["blessing"], patch_run["out"]
    assert b["accuracy"] >= 0.85 and b["reasons"][0].startswith(
        f"accuracy {b['accuracy']:.4f} >= min_accuracy"
    )
    assert not b["blessed"]
    recall = {t["class"]: t for t in b["thresholds"] if t["metric"] == "recall"}
    assert recall["green"]["passed"] and recall["red"]["passed"]
    rare = recall["rare"]
    assert rare["passed"] is False and rare["value"] == 0.0 and rare["bound"] == ">= 0.5000"
    assert rare["reason"].startswith("recall of class 'rare' 0.0000 fails >= 0.5000 (95% interval")
    assert rare["reason"] in b["reasons"]
    # the same numbers in analysis.json, which a reviewer reads next to the pictures
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["overall"]["per_class"]["rare"]["recall"]["value"] == 0.0
    assert doc["overall"]["per_class"]["rare"]["support"] == 6
    assert {s["slice"]["class"]: s["count"] for s in doc["slices"] if "class" in s["slice"]} == {
        "green": 40,
        "red": 40,
        "rare": 6,
    }
    for name in ("reliability.png", "slices.png", "mistakes.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    rare_mistakes = [m for m in doc["mistakes"] if m["true"] == 2]
    assert len(rare_mistakes) == 4 and all(m["grad_cam"] and m["pred"] == 1 for m in rare_mistakes)
    # every metric of the run equals scikit-learn's on the model's own probabilities
    signature = tf.saved_model.load(str(patch_run["model"])).signatures["serving_default"]
    test_x, test_y = patch_run["test"]
    p = signature(images=tf.constant([png(x) for x in test_x]))["probabilities"].numpy()
    for name, value in sklearn_metrics(p, test_y).items():
        assert doc["overall"]["metrics"][name]["value"] == pytest.approx(value, abs=1e-6), name
    # not blessed: nothing pushed
    serving = tmp_path / "serving"
    pushed = pusher.run_pusher(
        str(patch_run["model"]), str(out / "blessing.json"), None, PusherConfig(),
        serving_dir=str(serving), model_name="m",
    )  # fmt: skip
    assert not pushed["pushed"] and "recall of class 'rare' 0.0000 fails" in pushed["reason"]
    assert not (serving / "m").exists()


def test_the_rare_class_through_the_commands_every_option_a_flag(patch_run, tmp_path, capsys):
    """`transfer-pipeline evaluate` with the analysis options as generated flags and the
    thresholds as KEY=VALUE, then `transfer-pipeline push` with its blessing: not pushed."""
    from pipeline_components import cli

    model, out = str(patch_run["model"]), tmp_path / "e"
    data = str(patch_run["data"])
    args = ["evaluate", "--model", model, "--examples", data, "--output", str(out)]
    args += ["--min-accuracy", "0.85", "--bootstrap-resamples", "200", "--bootstrap-seed", "3"]
    args += ["--no-slices", "--mistakes-per-class", "4", "--num-error-examples", "2"]
    args += ["--no-grad-cam", 'thresholds=[{metric: recall, class: "*", lower: 0.5}]']
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    b = json.loads((out / "blessing.json").read_text())
    rare = next(t for t in b["thresholds"] if t["class"] == "rare")
    assert not b["blessed"] and rare["passed"] is False and rare["value"] == 0.0
    assert f"NOT BLESSED: accuracy {b['accuracy']:.4f} >= min_accuracy 0.8500" in printed
    assert rare["reason"] in printed and "2 of 3 thresholds passed" in printed
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["bootstrap"]["resamples"] == 200 and doc["bootstrap"]["seed"] == 3
    assert doc["slices"] == [] and not (out / "slices.png").exists()
    # the 6 rare images are the mistakes (called red): 2 drawn in all, no heat maps
    assert [(m["true"], m["pred"], m["grad_cam"]) for m in doc["mistakes"]] == [(2, 1, False)] * 2

    serving = tmp_path / "serving"
    push = ["push", "--model", model, "--blessing", str(out / "blessing.json")]
    assert cli.main([*push, "--serving-dir", str(serving), "--model-name", "m"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("not pushed: model not blessed: ") and rare["reason"] in printed
    assert not (serving / "m").exists()


def test_grad_cam_heat_maps_sit_on_the_corner_that_decides_the_class(patch_run):
    """The exported grad_cam signature on the test images, for the predicted class: the share
    of heat in the top-left quadrant; then the same images with the patch moved to the
    bottom-right corner (the model still sees it): the heat follows."""
    fn = tf.saved_model.load(str(patch_run["model"])).signatures[artifacts.GRAD_CAM_SIGNATURE]
    test_x, test_y = patch_run["test"]
    moved_x, _ = patch_images(np.random.default_rng(0), (40, 40, 6), corner="bottom-right")

    def shares(images, rows):
        out = fn(
            images=tf.constant([png(x) for x in images]),
            class_ids=tf.constant([-1] * len(images), tf.int64),
        )
        maps = out["heatmaps"].numpy()
        assert maps.shape == (len(images), 32, 32) and maps.min() >= 0 and maps.max() <= 1
        total = maps.sum(axis=(1, 2))
        return maps[:, rows, rows].sum(axis=(1, 2)) / np.maximum(total, 1e-12), out[
            "class_ids"
        ].numpy()

    top_left, predicted = shares(test_x, slice(0, 16))
    assert np.mean(predicted == np.minimum(test_y, 1)) == 1.0  # green, red; rare called red
    assert np.mean(top_left > 0.5) > 0.6, np.round(top_left, 2)
    bottom_right, _ = shares(moved_x, slice(16, 32))
    assert np.mean(bottom_right > 0.5) > 0.6, np.round(bottom_right, 2)


def test_the_grad_cam_signature_is_not_a_contract_change(patch_run, tmp_path, monkeypatch):
    """The same model exported without grad_cam (as before this signature existed) and with it:
    no difference, a note; the signature's empty batch and its one-line refusal of a bad id."""
    model = str(patch_run["model"])
    with_cam = contract.read_contract(model)
    assert set(with_cam["signatures"]) == {"serving_default", "predict_pixels"}
    assert with_cam["explanations"]["grad_cam"]["outputs"]["heatmaps"]["shape"] == [-1, 32, 32]
    monkeypatch.setattr(explain, "supports_grad_cam", lambda net: False)
    plain = str(tmp_path / "plain")
    export.export_saved_model(patch_run["net"], plain, PATCH_CLASSES, (32, 32))
    assert contract.read_contract(plain)["explanations"] == {}
    added, dropped = contract.compare(plain, model), contract.compare(model, plain)
    assert added["differences"] == [] == dropped["differences"]
    assert added["notes"] == [
        "explanation signature 'grad_cam' added (not part of the serving contract)"
    ]
    assert dropped["notes"] == [
        "explanation signature 'grad_cam' removed (not part of the serving contract)"
    ]
    fn = tf.saved_model.load(model).signatures["grad_cam"]
    empty = fn(images=tf.constant([], tf.string), class_ids=tf.constant([], tf.int64))
    assert empty["heatmaps"].shape == (0, 32, 32) and empty["probabilities"].shape == (0, 3)
    image = tf.constant([png(patch_run["test"][0][0])])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"or a class id in \[0, 3\)"):
        fn(images=image, class_ids=tf.constant([3], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one value per image"):
        fn(images=image, class_ids=tf.constant([0, 1], tf.int64))


# ------------------------------------------------------------------ slices from metadata.csv


def _image_folder(root, reds_by_class):
    paths = {}
    for split, classes in reds_by_class.items():
        for label, reds in classes.items():
            for i, r in enumerate(reds):
                path = root / split / label / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(solid_png(r))
                paths.setdefault(split, []).append(path.relative_to(root).as_posix())
    return paths


def test_a_metadata_csv_slice_is_gated_through_example_gen(tmp_path):
    """ExampleGen carries metadata.csv into the Examples; the Evaluator slices by its column:
    the phone images are the ones the model gets wrong, so the phone floor fails while the
    overall accuracy and the dslr floor pass; a slice under min_slice_size is not gated."""
    from pipeline_components.example_gen import executor as example_gen

    blue = [0.05, 0.1, 0.15, 0.2, 0.35, 0.4, 0.45, 0.36, 0.41, 0.44]  # > 0.3: called red
    red = [0.6, 0.7, 0.8, 0.9, 0.95, 0.65, 0.75, 0.85, 0.55, 0.99]
    data_root = tmp_path / "data"
    paths = _image_folder(
        data_root,
        {
            "train": {"blue": [0.12, 0.22], "red": [0.82, 0.92]},
            "validation": {"blue": [0.13, 0.23], "red": [0.83, 0.93]},
            "test": {"blue": blue, "red": red},
        },
    )
    rows = ["path,camera,📷 site"]
    for path in paths["test"]:
        i = int(path[-6:-4])
        wrong = "blue" in path and blue[i] > 0.3
        rows.append(f"{path},{'phone' if wrong else 'dslr'},{'north' if i < 2 else ''}")
    rows.append("test/blue/99.png,phone,north")  # names no image: counted, not an error
    (data_root / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    examples_dir = tmp_path / "examples"
    stats = example_gen.run_example_gen(str(data_root), str(examples_dir), num_shards=2)
    assert (
        stats["metadata"]["columns"] == ["camera", "📷 site"] and stats["metadata"]["matched"] == 20
    )
    assert stats["metadata"]["unmatched"] == [f"line {len(rows)}: test/blue/99.png"]
    model = export_threshold_model(tmp_path / "m", 0.3)
    raw = [
        {"metric": "accuracy", "slice": {"camera": "phone"}, "lower": 0.9},
        {"metric": "accuracy", "slice": {"camera": "dslr"}, "lower": 0.9},
        {"metric": "recall", "class": "red", "slice": {"📷 site": "north"}, "lower": 0.9},
    ]
    config = EvaluatorConfig(min_accuracy=0.6, thresholds=raw, min_slice_size=5)
    out = tmp_path / "out"
    b = evaluator.run_evaluator(str(model), str(examples_dir), str(out), config)
    phone, dslr, north = b["thresholds"][2:]
    assert b["accuracy"] == pytest.approx(0.7) and not b["blessed"]
    assert phone["count"] == 6 and phone["value"] == 0.0 and phone["passed"] is False
    assert phone["reason"].startswith(
        "accuracy on slice camera=phone (6 test images) 0.0000 fails >= 0.9000"
    )
    assert dslr["count"] == 14 and dslr["value"] == 1.0 and dslr["passed"] is True
    assert north["count"] == 4 and north["passed"] is None and "not gated" in north["reason"]
    doc = json.loads((out / "analysis.json").read_text())
    counts = {tuple(s["slice"].items()): (s["count"], s["gated"]) for s in doc["slices"]}
    assert counts[(("camera", "phone"),)] == (6, True)
    assert counts[(("📷 site", "north"),)] == (4, False)
    assert counts[(("folder", "."),)] == (20, True) and counts[(("size", "0-31"),)] == (20, True)
    # the same metadata, changed: a new Examples fingerprint
    before = stats["fingerprint"]
    (data_root / "metadata.csv").write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    again = example_gen.run_example_gen(str(data_root), str(tmp_path / "ex2"), num_shards=2)
    assert again["fingerprint"] != before


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,camera\n", "line 1: the first column must be 'path'"),
        ("path,camera,camera\n", "line 1: column 'camera' appears twice"),
        ("path,size\n", "line 1: bad column name 'size'"),
        ("path,camera\na.png,phone\na.png,dslr\n", "line 3: path 'a.png' also on line 2"),
        ("path,camera\na.png,phone,extra\n", "line 2: 3 cells, the header has 2"),
        ("path,camera\n../a.png,phone\n", "line 2: path '../a.png' is not relative to data_root"),
    ],
)
def test_a_malformed_metadata_csv_is_a_one_line_error(text, message):
    from pipeline_components.example_gen import metadata

    with pytest.raises(PipelineError) as err:
        metadata.parse(text, "data/metadata.csv")
    assert str(err.value).startswith("data/metadata.csv ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_deep_image_path_is_not_a_metadata_cell_over_the_limit():
    """The cell limit bounds the values and column names; a path is as long as the tree."""
    from pipeline_components.example_gen import metadata

    deep = "test/cats/" + "/".join(["folder" * 8] * 6) + "/001.jpg"
    assert len(deep) > metadata.MAX_VALUE_CHARS
    columns, rows = metadata.parse(f"path,camera\n{deep},phone\n", "m.csv")
    assert columns == ["camera"] and rows[deep] == (2, {"camera": "phone"})


@pytest.mark.parametrize(
    "flag, message",
    [
        (
            "--metadata-max-bytes=20",
            "bytes, over the limit of 20 bytes (example_gen.metadata_max_bytes)",
        ),
        (
            "--metadata-max-columns=1",
            "line 1: 2 columns, at most 1 (example_gen.metadata_max_columns)",
        ),
        (
            "--metadata-max-cell-chars=5",
            "line 2: a cell of 12 characters, at most 5 (example_gen.metadata_max_cell_chars)",
        ),
    ],
)
def test_metadata_csv_limits_are_flags_and_refused_before_any_work(tmp_path, capsys, flag, message):
    from pipeline_components import cli

    data_root = tmp_path / "data"
    reds = {"train": {"a": [0.1], "b": [0.9]}, "test": {"a": [0.2], "b": [0.8]}}
    paths = _image_folder(data_root, reds)
    (data_root / "metadata.csv").write_text(f"path,cam,site\n{paths['test'][0]},x,north-east-f\n")
    out = tmp_path / "examples"
    args = ["example-gen", "--data-root", str(data_root), "--output", str(out), flag]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"transfer-pipeline example-gen: error: {data_root / 'metadata.csv'}")
    assert message in err and err.count("\n") == 1
    assert not out.exists()


# ------------------------------------------------------------------------ every backbone


BACKBONE_LAST_BLOCK = {
    "vgg16": "block5_conv3",
    "vgg19": "block5_conv4",
    "resnet50": "conv5_block3_out",
    "resnet101": "conv5_block3_out",
    "resnet152": "conv5_block3_out",
    "resnet50_v2": "post_relu",
    "mobilenet_v2": "out_relu",
    "efficientnet_b0": "top_activation",
    "densenet121": "relu",
    "inception_v3": "mixed10",
    "xception": "block14_sepconv2_act",
}


@pytest.mark.parametrize("backbone", sorted(BACKBONE_LAST_BLOCK))
def test_grad_cam_on_the_last_conv_block_of_every_backbone(backbone):
    """weights none, the smallest input each takes (32x48; Inception 75x96, Xception 71x96):
    the map has the input's height and width (not swapped), values in [0, 1]."""
    from pipeline_components.trainer import model
    from pipeline_components.trainer.config import TrainerConfig

    size = {"inception_v3": (75, 96), "xception": (71, 96)}.get(backbone, (32, 48))
    config = TrainerConfig(backbone=backbone, weights="none", image_size=list(size), head="flatten")
    net = model.create_model(config, 3)
    layer = explain.last_conv_layer(net.get_layer(model.BACKBONE))
    assert layer.name == BACKBONE_LAST_BLOCK[backbone]
    pixels = tf.random.stateless_uniform((2, *size, 3), seed=(1, 2), maxval=255.0)
    out = explain.build_grad_cam(net, size)(pixels, tf.constant([-1, 2], tf.int64))
    maps = out["heatmaps"].numpy()
    assert maps.shape == (2, *size) and np.all(np.isfinite(maps))
    assert maps.min() >= 0 and all(m.max() in (0.0, 1.0) or np.isclose(m.max(), 1.0) for m in maps)
    assert out["class_ids"].numpy()[1] == 2
    np.testing.assert_allclose(out["probabilities"].numpy(), net(pixels).numpy(), atol=1e-5)
