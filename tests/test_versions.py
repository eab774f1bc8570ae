"""Rollback that sticks, canary and stable labels in models.config, and the local server that
follows them like TF Serving (issue 14)."""

from __future__ import annotations

import json
import os
import time

import grpc
import pytest
from google.protobuf import text_format
from serving_models import encode_image, export_tiny_model
from tensorflow_serving.config import model_server_config_pb2

from pipeline_components import cli
from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher.config import PusherConfig
from pipeline_components.pusher.versions import ModelVersions
from serving.client import PredictionClient, ServingError
from serving.model_config import ModelConfig
from serving.servables import ModelManager
from serving.server import start_server

pytestmark = pytest.mark.timeout(300)
IMAGE = encode_image(seed=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Four distinct tiny 3-class SavedModels; model i favours class i % 3."""
    root = tmp_path_factory.mktemp("exports")
    paths = []
    for i in range(4):
        export_tiny_model(str(root / f"m{i}"), favourite=i % 3, seed=i)
        paths.append(root / f"m{i}")
    return paths


def bless(tmp_path, model, accuracy=0.95):
    path = tmp_path / f"blessing-{model.name}.json"
    fp = fsutil.tree_fingerprint(str(model))
    path.write_text(json.dumps({"blessed": True, "accuracy": accuracy, "model_fingerprint": fp}))
    return path


def push(tmp_path, model, label="stable", keep=3, output=None):
    return pusher.run_pusher(
        str(model),
        str(bless(tmp_path, model)),
        str(output) if output else None,
        PusherConfig(keep_versions=keep, version_label=label),
        serving_dir=str(tmp_path / "serving"),
        model_name="m",
        run_id="run-x",
    )


def models_config(tmp_path) -> dict[str, model_server_config_pb2.ModelConfig]:
    text = (tmp_path / "serving" / "models.config").read_text()
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {c.name: c for c in parsed.model_config_list.config}


def labels_in_config(tmp_path, name="m") -> dict[str, int]:
    return dict(models_config(tmp_path)[name].version_labels)


def entries(tmp_path) -> list[str]:
    return sorted(os.listdir(tmp_path / "serving" / "m"))


def test_rollback_moves_versions_aside_and_the_pusher_never_pushes_them_again(models, tmp_path):
    assert push(tmp_path, models[0])["version"] == 1
    assert push(tmp_path, models[1])["version"] == 2
    assert labels_in_config(tmp_path) == {"stable": 2}
    code = cli.main(
        ["rollback", "--serving-dir", str(tmp_path / "serving"), "--model-name", "m"]
        + ["--reason", "wrong answers"]
    )
    assert code == 0
    assert entries(tmp_path) == ["1"]
    aside = tmp_path / "serving" / "_rolled_back" / "m" / "2"
    assert fsutil.tree_fingerprint(str(aside)) == fsutil.tree_fingerprint(str(models[1]))
    assert labels_in_config(tmp_path) == {"stable": 1}

    # the same model again (a cached pipeline re-run): refused, and push.json says why
    again = push(tmp_path, models[1], output=tmp_path / "out")
    assert not again["pushed"] and again["rolled_back_version"] == 2
    assert "rolled back (version 2" in again["reason"] and "wrong answers" in again["reason"]
    recorded = json.loads((tmp_path / "out" / "push.json").read_text())
    assert recorded["reason"] == again["reason"]
    assert recorded["rolled_back"][0]["version"] == 2
    assert entries(tmp_path) == ["1"]

    # a new model is pushed, numbered above the rolled-back one
    new = push(tmp_path, models[2])
    assert new["pushed"] and new["version"] == 3 and entries(tmp_path) == ["1", "3"]
    rows = {r["version"]: r for r in ModelVersions(str(tmp_path / "serving"), "m").load().rows()}
    assert {v: r["state"] for v, r in rows.items()} == {
        1: "served", 2: "rolled_back", 3: "served"
    }  # fmt: skip
    assert rows[3]["labels"] == ["stable"] and rows[3]["accuracy"] == 0.95
    assert rows[2]["reason"] == "wrong answers" and rows[3]["run_id"] == "run-x"


def test_canary_promote_retention_and_labels_only_on_versions_that_exist(models, tmp_path):
    push(tmp_path, models[0])
    canary = push(tmp_path, models[1], label="canary")
    assert canary["labels"] == {"canary": 2, "stable": 1}
    config = models_config(tmp_path)["m"]
    assert config.model_version_policy.WhichOneof("policy_choice") == "all"
    assert config.base_path == str(tmp_path / "serving" / "m")
    assert dict(config.version_labels) == {"stable": 1, "canary": 2}

    # a newer canary replaces the old one; retention (keep 1) spares the labelled versions
    third = push(tmp_path, models[2], label="canary", keep=1)
    assert third["labels"] == {"canary": 3, "stable": 1} and third["removed_versions"] == [2]
    assert entries(tmp_path) == ["1", "3"]
    assert labels_in_config(tmp_path) == {"stable": 1, "canary": 3}

    promote = ["promote", "--serving-dir", str(tmp_path / "serving"), "--model-name", "m"]
    assert cli.main(promote) == 0
    assert labels_in_config(tmp_path) == {"stable": 3}

    # a version deleted by hand loses its label at the next push (even one that pushes nothing)
    fsutil.rmtree(str(tmp_path / "serving" / "m" / "3"))
    same = push(tmp_path, models[0])
    assert not same["pushed"] and "identical to version 1" in same["reason"]
    assert labels_in_config(tmp_path) == {"stable": 1}


def test_models_config_keeps_the_entries_of_other_models(models, tmp_path):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "models.config").write_text(
        'model_config_list { config { name: "other" base_path: "/models/other" '
        'model_platform: "tensorflow" version_labels { key: "stable" value: 7 } } }\n'
    )
    push(tmp_path, models[0])
    configs = models_config(tmp_path)
    assert set(configs) == {"other", "m"}
    assert dict(configs["other"].version_labels) == {"stable": 7}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rollback"], "nothing to roll back to: version 1 is the only served version of model m"),
        (["rollback", "--version", "5"], "version 5 of model m is not served (served: 1)"),
        (["rollback", "--version", "1"], "nothing to roll back: version 1 is the newest"),
        (["promote"], "model m has no canary to promote; give --version"),
        (["promote", "--version", "4"], "version 4 of model m is not served (served: 1)"),
    ],
)
def test_rollback_and_promote_errors_are_one_line(models, tmp_path, capsys, argv, message):
    push(tmp_path, models[0])
    code = cli.main([*argv, "--serving-dir", str(tmp_path / "serving"), "--model-name", "m"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert entries(tmp_path) == ["1"] and labels_in_config(tmp_path) == {"stable": 1}


# ------------------------------------------------------------------ the server and labels


def answer(target: str, label: str) -> tuple[int, str]:
    with PredictionClient(target, "m", version_label=label, timeout=10) as client:
        (p,) = client.predict([IMAGE])
    return p.version, p.class_name


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ServingError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_stable_and_canary_by_label_promote_rollback_and_a_clean_restart(models, tmp_path):
    serving = str(tmp_path / "serving")
    push(tmp_path, models[0])  # v1: favours class_0
    config_file = str(tmp_path / "serving" / "models.config")
    handle = start_server(
        model_config_file=config_file,
        poll_wait_seconds=0.1,
        model_config_file_poll_wait_seconds=0.1,
    )
    try:
        assert answer(handle.target, "stable") == (1, "class_0")
        assert cli.main(
            ["push", "--model", str(models[1]), "--blessing", str(bless(tmp_path, models[1]))]
            + ["--serving-dir", serving, "--model-name", "m", "--version-label", "canary"]
            + ["--output", str(tmp_path / "p2")]
        ) == 0  # fmt: skip
        wait_for(lambda: answer(handle.target, "canary") == (2, "class_1"))
        assert answer(handle.target, "stable") == (1, "class_0"), "stable clients keep v1"

        assert cli.main(["promote", "--serving-dir", serving, "--model-name", "m"]) == 0
        wait_for(lambda: answer(handle.target, "stable") == (2, "class_1"))
        with pytest.raises(ServingError) as no_canary:
            answer(handle.target, "canary")
        assert no_canary.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        handle.stop(grace=1)

    # a restart reads the same models.config and loads cleanly (labels on loaded versions)
    with start_server(model_config_file=config_file) as restarted:
        assert answer(restarted.target, "stable") == (2, "class_1")
        assert restarted.manager.labels("m") == {"stable": 2}
        # a rollback while serving: stable goes back to v1, v2 leaves the base path
        assert cli.main(["rollback", "--serving-dir", serving, "--model-name", "m"]) == 0
    with start_server(model_config_file=config_file) as after:
        assert answer(after.target, "stable") == (1, "class_0")
        assert after.manager.loaded_versions("m") == [1]


def _manager(labels: dict[str, int], allow: bool) -> ModelManager:
    config = ModelConfig("m", "/nonexistent", "all", labels=labels)
    manager = ModelManager([config], allow_version_labels_for_unavailable_models=allow)
    manager._servables["m"] = {1: object(), 2: object()}  # versions 1 and 2 AVAILABLE
    return manager


def test_labels_follow_tf_servings_rules():
    # startup: a label on a version that did not load stops the server, as TF Serving does
    strict = _manager({"stable": 1, "canary": 3}, allow=False)
    strict._apply_labels(strict.models["m"])
    with pytest.raises(PipelineError, match="Request to assign label to version 3 of model m, "
                       "which is not currently available for inference"):  # fmt: skip
        strict.check_initial_load()
    # ...unless new labels may name unloaded versions
    # (--allow_version_labels_for_unavailable_models)
    lenient = _manager({"stable": 1, "canary": 3}, allow=True)
    lenient._apply_labels(lenient.models["m"])
    lenient.check_initial_load()
    assert lenient.labels("m") == {"stable": 1, "canary": 3}
    # moving an existing label onto a version not loaded yet waits, even with the flag
    lenient.reload([ModelConfig("m", "/nonexistent", "all", labels={"stable": 4})])
    lenient._apply_labels(lenient.models["m"])
    assert lenient.labels("m") == {"stable": 1}, "stable keeps its version meanwhile"
    lenient._servables["m"][4] = object()
    lenient._apply_labels(lenient.models["m"])
    assert lenient.labels("m") == {"stable": 4}
