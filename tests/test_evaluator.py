"""Evaluator: metrics from the exported SavedModel on raw bytes, the gate, one-line errors."""

import csv
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from evalfixtures import (
    export_threshold_model,
    redness_split,
    solid_png,
    write_split,
)
from pipeline_components import cli
from pipeline_components.evaluator import executor as evaluator
from pipeline_components.evaluator import metrics
from pipeline_components.evaluator.config import EvaluatorConfig


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # On redness 0.05..0.95 (label red iff > 0.5): t=0.5 -> 10/10, t=0.4 -> 9/10, t=0.3 -> 8/10
    return {t: export_threshold_model(root / f"t{t}", t) for t in (0.3, 0.4, 0.5)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return redness_split(tmp_path_factory.mktemp("examples"))


def _hand_metrics(probs, y):
    pred = probs.argmax(1)
    out = {"accuracy": float(np.mean(pred == y))}
    for c in (0, 1):
        tp = sum(1 for p, t in zip(pred, y, strict=True) if p == c and t == c)
        out[c] = (tp / max(1, sum(pred == c)), tp / max(1, sum(y == c)))
    pos, neg = probs[y == 1, 1], probs[y == 0, 1]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg]
    out["auc"] = sum(pairs) / len(pairs)
    out["loss"] = float(np.mean([-np.log(probs[i, y[i]]) for i in range(len(y))]))
    return out


def test_metrics_equal_a_hand_computation(models, data, tmp_path):
    out = tmp_path / "eval"
    blessing = evaluator.run_evaluator(
        str(models[0.3]), str(data), str(out), EvaluatorConfig(min_accuracy=0.5, batch_size=3)
    )
    m = json.loads((out / "metrics.json").read_text())
    sig = tf.saved_model.load(str(models[0.3])).signatures["serving_default"]
    reds = np.round(np.arange(0.05, 1.0, 0.1), 2)
    probs = sig(images=tf.constant([solid_png(r) for r in reds]))["probabilities"].numpy()
    y = (reds > 0.5).astype(int)
    hand = _hand_metrics(probs, y)
    assert m["accuracy"] == pytest.approx(hand["accuracy"]) == pytest.approx(0.8)
    assert m["num_examples"] == 10
    assert m["loss"] == pytest.approx(hand["loss"], rel=1e-5)
    assert m["auc"] == pytest.approx(hand["auc"])
    for c, name in enumerate(["blue", "red"]):
        assert m["per_class"][name]["precision"] == pytest.approx(hand[c][0])
        assert m["per_class"][name]["recall"] == pytest.approx(hand[c][1])
        assert m["per_class"][name]["support"] == 5
    assert m["confusion_matrix"] == [[3, 2], [0, 5]]  # 0.35 and 0.45 called red
    assert blessing["blessed"] and blessing["baseline_accuracy"] is None
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 10 and sum(r["label"] != r["predicted"] for r in rows) == 2
    for name in ("confusion_matrix.png", "mistakes.png", "reliability.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_metrics_module_edge_cases():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    m = metrics.classification_metrics(probs, np.array([0, 1, 2, 2]), ["a", "b", "c"])
    assert m["accuracy"] == 0.75 and "auc" not in m
    assert m["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert m["per_class"]["a"]["precision"] == 0.5
    assert metrics.roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([True, True])) is None


@pytest.mark.parametrize(
    "threshold_model, min_accuracy, blessed",
    [(0.3, 0.75, True), (0.3, 0.85, False), (0.5, 1.0, True)],
)
def test_gate_on_threshold(models, data, tmp_path, threshold_model, min_accuracy, blessed):
    b = evaluator.run_evaluator(
        str(models[threshold_model]), str(data), str(tmp_path / "e"), EvaluatorConfig(min_accuracy)
    )
    assert b["blessed"] is blessed
    assert b["threshold"] == min_accuracy
    assert ("<" not in b["reasons"][0]) is blessed
    written = json.loads((tmp_path / "e" / "blessing.json").read_text())
    assert written["blessed"] is blessed and written["reasons"] == b["reasons"]


def test_gate_against_baseline_scored_in_the_same_run(models, data, tmp_path):
    cfg = EvaluatorConfig(min_accuracy=0.5, max_regression=0.05)
    # candidate 0.8 vs baseline 1.0: worse by 0.2 > 0.05 -> not blessed
    worse = evaluator.run_evaluator(
        str(models[0.3]), str(data), str(tmp_path / "a"), cfg, baseline=str(models[0.5])
    )
    assert not worse["blessed"] and worse["baseline_accuracy"] == pytest.approx(1.0)
    assert "worse than" in worse["reasons"][1]
    assert (tmp_path / "a" / "baseline_metrics.json").exists()
    # candidate 0.8 vs baseline 0.9 with max_regression 0.1 -> within -> blessed
    cfg = EvaluatorConfig(min_accuracy=0.5, max_regression=0.1)
    within = evaluator.run_evaluator(
        str(models[0.3]), str(data), str(tmp_path / "b"), cfg, baseline=str(models[0.4])
    )
    assert within["blessed"] and within["baseline_accuracy"] == pytest.approx(0.9)
    assert "within" in within["reasons"][1]


def test_default_baseline_is_newest_pushed_version(models, data, tmp_path):
    serving = tmp_path / "serving" / "m"
    for v, t in ((1, 0.3), (7, 0.5)):
        export_threshold_model(serving / str(v), t)
    shutil.copytree(models[0.4], serving / "8")  # the candidate itself: not its own baseline
    (serving / "9").mkdir()  # partial version (no saved_model.pb): ignored
    (serving / ".8.tmp-x").mkdir()
    b = evaluator.run_evaluator(
        str(models[0.4]),
        str(data),
        str(tmp_path / "e"),
        EvaluatorConfig(min_accuracy=0.5),
        serving_dir=str(tmp_path / "serving"),
        model_name="m",
    )
    assert b["baseline"] == str(serving / "7") and b["baseline_accuracy"] == pytest.approx(1.0)
    assert not b["blessed"]  # 0.9 < 1.0 - 0.01


def _run_cli(args, capsys):
    code = cli.main(["evaluate", *args])
    return code, capsys.readouterr().err.strip()


def test_error_cases_are_one_line_and_write_nothing(models, data, tmp_path, capsys):
    out = tmp_path / "e"
    cases = [
        (["--model", str(tmp_path / "nope")], "no SavedModel at"),
        (["--model", str(models[0.5]), "--examples", str(tmp_path / "noex")], "does not exist"),
    ]
    three = write_split(tmp_path / "three", "test", [(solid_png(0.1), 0)], ["a", "b", "c"])
    cases.append((["--model", str(models[0.5]), "--examples", str(three)], "differ from"))
    empty = write_split(tmp_path / "empty", "test", [], ["blue", "red"])
    cases.append((["--model", str(models[0.5]), "--examples", str(empty)], "holds no examples"))
    notest = write_split(tmp_path / "notest", "train", [(solid_png(0.1), 0)], ["blue", "red"])
    cases.append((["--model", str(models[0.5]), "--examples", str(notest)], "split 'test'"))
    for extra, message in cases:
        args = ["--model", str(models[0.5]), "--examples", str(data), "--output", str(out)]
        args = args + extra  # later flags win in argparse
        code, err = _run_cli(args, capsys)
        assert code == 1, message
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_cli_success_prints_decision(models, data, tmp_path, capsys):
    code = cli.main(
        ["evaluate", "--model", str(models[0.3]), "--examples", str(data)]
        + ["--output", str(tmp_path / "e"), "--min-accuracy", "0.9"]
    )
    assert code == 0
    assert "NOT BLESSED: accuracy 0.8000 < min_accuracy 0.9000" in capsys.readouterr().out
