"""The serving contract: one test per element (labels and their order, signature input dtype,
output shape, input image size), the Pusher's refusal and its audited override, and the
Evaluator's "baseline not comparable" (issue 21)."""

from __future__ import annotations

import copy
import json

import pytest
from serving_models import tiny_classifier

from evalfixtures import export_threshold_model, redness_split
from pipeline_components import cli
from pipeline_components.core import contract, fsutil
from pipeline_components.evaluator import executor as evaluator
from pipeline_components.evaluator.config import EvaluatorConfig
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.pusher.versions import ModelVersions
from pipeline_components.trainer.export import export_saved_model


def export(path, labels, size=(16, 16), seed=0, preprocessing=None):
    model = tiny_classifier(len(labels), size, favourite=0, seed=seed)
    export_saved_model(model, str(path), list(labels), size, preprocessing=preprocessing)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    return {
        "abc": export(root / "abc", ["a", "b", "c"]),
        "abc_retrained": export(root / "abc2", ["a", "b", "c"], seed=5),
        "bac": export(root / "bac", ["b", "a", "c"]),
        "ab": export(root / "ab", ["a", "b"]),
        "abcd": export(root / "abcd", ["a", "b", "c", "d"]),
        "abc_24": export(root / "abc24", ["a", "b", "c"], size=(24, 24)),
    }


def diff(exported, old, new):
    return contract.compare(str(exported[old]), str(exported[new]))["differences"]


def test_contract_records_labels_signatures_and_input_at_export(exported):
    c = contract.read_contract(str(exported["abc"]))
    assert c["labels"] == ["a", "b", "c"]
    assert set(c["signatures"]) == {"serving_default", "predict_pixels"}
    assert c["signatures"]["serving_default"]["inputs"] == {
        "images": {"dtype": "DT_STRING", "shape": [-1]}
    }
    assert c["signatures"]["predict_pixels"]["inputs"]["pixels"]["shape"] == [-1, 16, 16, 3]
    assert c["signatures"]["serving_default"]["outputs"]["probabilities"] == {
        "dtype": "DT_FLOAT",
        "shape": [-1, 3],
    }
    assert c["preprocessing"]["image_size"] == [16, 16]
    assert c["preprocessing"]["color"] == "RGB" and c["preprocessing"]["pixel_range"] == [0, 255]


def test_a_retrain_with_the_same_labels_and_signatures_has_no_difference(exported):
    assert diff(exported, "abc", "abc_retrained") == []


def test_labels_in_another_order_are_a_difference(exported):
    assert diff(exported, "abc", "bac") == [
        "labels changed: order ['a', 'b', 'c'] -> ['b', 'a', 'c']"
    ]


def test_a_removed_class_changes_labels_and_the_output_shape(exported):
    assert diff(exported, "abc", "ab") == [
        "labels changed: removed 'c'",
        "output 'probabilities' shape [-1,3] -> [-1,2] in predict_pixels, serving_default",
    ]
    assert diff(exported, "abc", "abcd")[0] == "labels changed: added 'd'"


def test_signature_input_dtype_is_a_difference(exported):
    served = contract.read_contract(str(exported["abc"]))
    candidate = copy.deepcopy(served)
    candidate["signatures"]["predict_pixels"]["inputs"]["pixels"]["dtype"] = "DT_HALF"
    assert contract.differences(served, candidate) == [
        "input 'pixels' dtype DT_FLOAT -> DT_HALF in predict_pixels"
    ]
    del candidate["signatures"]["predict_pixels"]
    assert contract.differences(served, candidate) == ["signature 'predict_pixels' removed"]


def test_input_image_size_is_a_difference(exported):
    assert diff(exported, "abc", "abc_24") == [
        "input 'pixels' shape [-1,16,16,3] -> [-1,24,24,3] in predict_pixels",
        "input image size [16,16] -> [24,24]",
    ]


def test_preprocessing_metadata_and_models_exported_without_it(exported, tmp_path):
    served = contract.read_contract(str(exported["abc"]))
    candidate = copy.deepcopy(served)
    candidate["preprocessing"]["color"] = "BGR"
    candidate["preprocessing"]["backbone"] = "resnet50"  # inside the model: not the client's
    assert contract.differences(served, candidate) == ["preprocessing 'color' RGB -> BGR"]
    # a version pushed before preprocessing.json existed: the size comes from its signature
    old = tmp_path / "old"
    fsutil.copy_tree(str(exported["abc_24"]), str(old))
    (old / "assets" / "preprocessing.json").unlink()
    found = contract.compare(str(old), str(exported["abc"]))
    assert "input image size [24,24] -> [16,16]" in found["differences"]
    assert "exported without assets/preprocessing.json" in found["notes"][0]


# ------------------------------------------------------------------------------ the Pusher


def bless(tmp_path, model):
    path = tmp_path / f"blessing-{model.name}.json"
    fp = fsutil.tree_fingerprint(str(model))
    path.write_text(json.dumps({"blessed": True, "accuracy": 1.0, "model_fingerprint": fp}))
    return path


def push(tmp_path, model, allow=False, output=None):
    return pusher.run_pusher(
        str(model),
        str(bless(tmp_path, model)),
        str(output) if output else None,
        PusherConfig(allow_contract_change=allow),
        serving_dir=str(tmp_path / "serving"),
        model_name="m",
    )


def test_pusher_refuses_a_contract_change_unless_allowed_and_records_it(exported, tmp_path):
    first = push(tmp_path, exported["abc"])
    assert first["pushed"] and first["contract"]["compared_with"] is None
    blocked = push(tmp_path, exported["ab"], output=tmp_path / "out")
    assert not blocked["pushed"]
    assert blocked["reason"].startswith(
        "serving contract differs from version 1, which clients use: labels changed: removed 'c'; "
        "output 'probabilities' shape [-1,3] -> [-1,2]"
    )
    assert json.loads((tmp_path / "out" / "push.json").read_text())["contract"] == {
        "compared_with": 1,
        "differences": blocked["contract"]["differences"],
        "notes": [],
        "allowed": False,
    }
    assert sorted(fsutil.listdir(str(tmp_path / "serving" / "m"))) == ["1"]

    # on purpose: pushed as a new version, the change recorded with it
    allowed = push(tmp_path, exported["abcd"], allow=True)
    assert allowed["pushed"] and allowed["version"] == 2
    assert allowed["contract_change"]["from_version"] == 1
    assert "labels changed: added 'd'" in allowed["contract_change"]["differences"]
    rows = {r["version"]: r for r in ModelVersions(str(tmp_path / "serving"), "m").load().rows()}
    assert rows[2]["contract_change"]["differences"] == allowed["contract_change"]["differences"]
    assert "contract_change" not in rows[1]

    # the same labels and signatures as the newest served: pushed as before
    same = push(tmp_path, export(tmp_path / "abcd2", ["a", "b", "c", "d"], seed=9))
    assert same["pushed"] and same["contract"]["differences"] == []


def test_push_cli_flag_allows_a_contract_change(exported, tmp_path, capsys):
    push(tmp_path, exported["abc"])
    args = ["push", "--model", str(exported["bac"]), "--blessing"]
    args += [str(bless(tmp_path, exported["bac"])), "--serving-dir", str(tmp_path / "serving")]
    args += ["--model-name", "m", "--output", str(tmp_path / "o")]
    assert cli.main(args) == 0
    assert "not pushed: serving contract differs from version 1" in capsys.readouterr().out
    assert cli.main([*args, "--allow-contract-change"]) == 0
    assert "pushed version 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- the Evaluator


def test_evaluator_never_scores_a_baseline_with_other_labels(tmp_path):
    data = redness_split(tmp_path / "examples")
    model = export_threshold_model(tmp_path / "candidate", 0.5)
    reordered = export_threshold_model(tmp_path / "reordered", 0.5, labels=("red", "blue"))
    blessing = evaluator.run_evaluator(
        str(model),
        str(data),
        str(tmp_path / "eval"),
        EvaluatorConfig(min_accuracy=0.5, max_regression=0.0),
        baseline=str(reordered),
    )
    assert blessing["baseline_accuracy"] is None and blessing["baseline_comparable"] is False
    assert blessing["reasons"][-1].startswith("baseline not comparable (labels differ)")
    assert blessing["blessed"]  # judged on min_accuracy alone
    assert not (tmp_path / "eval" / "baseline_metrics.json").exists()
    same = evaluator.run_evaluator(
        str(model), str(data), str(tmp_path / "eval2"), EvaluatorConfig(), baseline=str(model)
    )
    assert same["baseline_comparable"] is True and same["baseline_accuracy"] == 1.0
