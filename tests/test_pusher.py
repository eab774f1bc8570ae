"""Pusher: versions appear whole or not at all, retention, racing pushers, the blessing gate."""

import filecmp
import json
import multiprocessing
import os

import pytest

from evalfixtures import export_threshold_model
from pipeline_components import cli
from pipeline_components.core import fsutil
from pipeline_components.pusher import executor as pusher
from pipeline_components.pusher.config import PusherConfig


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Ten distinct small SavedModels (the Pusher does not push a model already served)."""
    root = tmp_path_factory.mktemp("m")
    return [export_threshold_model(root / f"t{i}", i / 10) for i in range(1, 11)]


@pytest.fixture(scope="module")
def model(models):
    return models[4]


def _blessing(tmp_path, model, blessed=True, name="blessing.json", fingerprint=True):
    path = tmp_path / name
    body = {"blessed": blessed, "reasons": ["accuracy 0.5000 < min_accuracy 0.9000"]}
    if fingerprint:
        body["model_fingerprint"] = fsutil.tree_fingerprint(str(model))
    path.write_text(json.dumps(body))
    return path


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(_same_tree(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


def push(model, blessing, serving, keep=3, output_dir=None, infra=None):
    """The Pusher's executor as the pipeline calls it, model name "m"."""
    return pusher.run_pusher(
        str(model),
        str(blessing),
        str(output_dir) if output_dir else None,
        PusherConfig(keep_versions=keep),
        serving_dir=str(serving),
        model_name="m",
        infra_blessing_path=str(infra) if infra else None,
    )


def _entries(path):
    return sorted(os.listdir(path))


def test_push_creates_version_1_then_2_with_identical_contents(models, tmp_path):
    a, b = models[:2]
    serving = tmp_path / "serving"
    first = push(a, _blessing(tmp_path, a), serving, output_dir=tmp_path)
    second = push(b, _blessing(tmp_path, b), serving)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["pushed"] and first["path"] == str(serving / "m" / "1")
    assert _entries(serving / "m") == ["1", "2"]  # no claims or temporaries left
    assert _same_tree(a, serving / "m" / "1") and _same_tree(b, serving / "m" / "2")
    assert json.loads((tmp_path / "push.json").read_text())["version"] == 1
    # pushing the model already served (a re-run on unchanged data) adds nothing
    again = push(b, _blessing(tmp_path, b), serving)
    assert not again["pushed"] and again["version"] == 2
    assert "already being served" in again["reason"]
    assert _entries(serving / "m") == ["1", "2"]


def test_unblessed_pushes_nothing_and_says_why(model, tmp_path, capsys):
    bless = _blessing(tmp_path, model, blessed=False)
    code = cli.main(
        ["push", "--model", str(model), "--blessing", str(bless)]
        + ["--serving-dir", str(tmp_path / "s"), "--model-name", "m", "--output", str(tmp_path)]
    )
    assert code == 0
    assert (
        "not pushed: model not blessed: accuracy 0.5000 < min_accuracy" in capsys.readouterr().out
    )
    record = json.loads((tmp_path / "push.json").read_text())
    assert record["pushed"] is False and record["version"] is None
    assert not (tmp_path / "s" / "m").exists()


def test_push_writes_push_json_only_into_an_output_it_is_given(
    models, tmp_path, monkeypatch, capsys
):
    """Its command once wrote ./push.json by default: no command writes into the current
    directory unless asked."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    where = ["--serving-dir", str(tmp_path / "s"), "--model-name", "m"]

    def push_cli(model, *extra):
        bless = _blessing(tmp_path, model, name=f"blessing-{model.name}.json")
        return cli.main(["push", "--model", str(model), "--blessing", str(bless), *where, *extra])

    assert push_cli(models[0]) == 0
    assert "pushed version 1 as stable" in capsys.readouterr().out
    assert _entries(tmp_path / "s" / "m") == ["1"] and _entries(cwd) == []
    # with --output: there, and only there; --version-label from the command line
    assert push_cli(models[1], "--output", str(tmp_path / "p"), "--version-label", "canary") == 0
    record = json.loads((tmp_path / "p" / "push.json").read_text())
    assert (record["pushed"], record["version"], record["label"]) == (True, 2, "canary")
    assert _entries(cwd) == []


def test_infra_validation_failure_blocks_the_push(model, tmp_path):
    infra = tmp_path / "infra_blessing.json"
    infra.write_text(json.dumps({"blessed": False, "reasons": ["model failed to serve: boom"]}))
    result = push(model, _blessing(tmp_path, model), tmp_path / "s", infra=infra)
    assert not result["pushed"]
    assert result["reason"] == "infra validation failed: model failed to serve: boom"
    assert not (tmp_path / "s" / "m").exists()


def test_retention_keeps_newest_and_never_the_new_one(models, tmp_path):
    serving = tmp_path / "serving"
    for m in models[:4]:
        bless = _blessing(tmp_path, m)
        result = push(str(m), str(bless), str(serving), keep=2)
    assert result["version"] == 4 and result["removed_versions"] == [2]
    assert _entries(serving / "m") == ["3", "4"]
    # a stray high version someone copied by hand still counts: the new push goes above it
    (serving / "m" / "10").mkdir()
    bless = _blessing(tmp_path, models[5])
    result = push(str(models[5]), str(bless), str(serving), keep=1)
    assert result["version"] == 11 and _entries(serving / "m") == ["11"]


def test_failure_mid_copy_leaves_no_numeric_dir_and_previous_untouched(
    models, model, tmp_path, monkeypatch
):
    serving = tmp_path / "serving"
    push(models[0], _blessing(tmp_path, models[0]), serving)
    bless = _blessing(tmp_path, model)
    before = fsutil.tree_fingerprint(str(serving / "m" / "1"))
    gf = fsutil.gfile()
    real_copy, calls = gf.copy, {"n": 0}

    def flaky_copy(src, dst, overwrite=False):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real_copy(src, dst, overwrite=overwrite)

    monkeypatch.setattr(gf, "copy", flaky_copy)
    with pytest.raises(OSError, match="injected"):
        push(str(model), str(bless), str(serving))
    monkeypatch.undo()
    assert _entries(serving / "m") == ["1"]
    assert fsutil.tree_fingerprint(str(serving / "m" / "1")) == before
    # the next push still works and takes the next number
    assert push(str(model), str(bless), str(serving))["version"] == 2


def _push_all(jobs):
    return [
        (model, push(model, bless, serving, keep=100)["version"]) for model, bless, serving in jobs
    ]


def test_racing_pushers_get_distinct_versions(models, tmp_path):
    serving = str(tmp_path / "serving")
    jobs = [
        (str(m), str(_blessing(tmp_path, m, name=f"b{i}.json")), serving)
        for i, m in enumerate(models[:9])
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        chunks = pool.map(_push_all, [jobs[0:3], jobs[3:6], jobs[6:9]])
    results = [r for chunk in chunks for r in chunk]
    versions = sorted(v for _, v in results)
    assert versions == list(range(1, 10))
    assert _entries(tmp_path / "serving" / "m") == [str(v) for v in versions]
    for model, v in results:
        assert _same_tree(model, tmp_path / "serving" / "m" / str(v))


def test_blessing_for_another_model_is_refused(model, tmp_path, capsys):
    other = export_threshold_model(tmp_path / "other", 0.3)
    bless = _blessing(tmp_path, other)
    code = cli.main(
        ["push", "--model", str(model), "--blessing", str(bless)]
        + ["--serving-dir", str(tmp_path / "s"), "--model-name", "m", "--output", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and "was written for another model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s" / "m").exists() or _entries(tmp_path / "s" / "m") == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"blessing": "missing.json"}, "blessing"),
        ({"blessing": "bad.json"}, "not valid JSON"),
        ({"blessing": "noflag.json"}, "no boolean 'blessed' field"),
        ({"model": "nomodel"}, "no SavedModel at"),
        # checked when the command's config loads (core/config.py), before the Pusher runs
        ({"model_name": "../escape"}, "model_name: must be 1 to 128 letters"),
    ],
)
def test_error_cases(model, tmp_path, capsys, change, message):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "noflag.json").write_text('{"reasons": []}')
    bless = _blessing(tmp_path, model)
    args = {"model": str(model), "blessing": str(bless), "model_name": "m"}
    args.update({k: str(tmp_path / v) if k != "model_name" else v for k, v in change.items()})
    code = cli.main(
        ["push", "--model", args["model"], "--blessing", args["blessing"]]
        + ["--serving-dir", str(tmp_path / "s"), "--model-name", args["model_name"]]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()
