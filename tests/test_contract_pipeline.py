"""A push never breaks the clients' contract, end to end (issue 21): a 3-class pipeline pushes
version 1; after a class folder disappears nothing is pushed, with the reason; after a class is
added nothing is pushed until `pusher.allow_contract_change` is set, and then the change is
recorded. (A retrain with the same labels and signatures being pushed is shown by
test_scheduled_runs.py, whose versions 2 and 3 pass the same check.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline_components import cli

TRAINER = {
    "weights": "none",
    "image_size": [32, 32],
    "head": "global_average",
    "epochs": 1,
    "batch_size": 8,
    "steps_per_epoch": None,
    "augmentation": None,
}


def write_config(tmp_path: Path, data: Path) -> Path:
    cfg = {
        "pipeline_name": "contract",
        "pipeline_root": str(tmp_path / "root"),
        "data_root": str(data),
        "serving_dir": str(tmp_path / "serving"),
        "model_name": "shapes",
        "example_gen": {"num_shards": 1},
        "trainer": dict(TRAINER),
        "evaluator": {"min_accuracy": 0.0, "max_regression": 1.0},
        "infra_validator": {"num_examples": 2},
        # Data validation would stop a class change before training (tests/
        # test_data_validation.py); here it only warns, so the push-time gate is what is tested.
        "example_validator": {
            "severity": {
                k: "warn"
                for k in (
                    "missing_class",
                    "new_class",
                    "class_share_out_of_bounds",
                    "split_size_out_of_range",
                    "split_shrank",
                )
            }
        },
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, capsys, *overrides: str) -> tuple[dict, str]:
    code = cli.main(["run", "--config", str(config), *overrides])
    out = capsys.readouterr().out
    assert code == 0, out
    runs = Path(yaml.safe_load(config.read_text())["pipeline_root"]) / "runs"
    newest = max(runs.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((newest / "run.json").read_text()), out


@pytest.mark.slow
def test_labels_that_change_are_not_pushed_unless_on_purpose(make_dataset, tmp_path, capsys):
    three = make_dataset(classes=("circles", "squares", "triangles"), per_split=(5, 2, 2))
    config = write_config(tmp_path, three)
    served = tmp_path / "serving" / "shapes"
    first, _ = run(config, capsys)
    assert first["push"]["pushed"] and first["push"]["version"] == 1

    # a class folder disappears: the 2-class model is blessed on accuracy, but never pushed
    for split in ("train", "validation", "test"):
        shutil.rmtree(three / split / "triangles")
    second, out = run(config, capsys)
    assert second["components"]["Trainer"]["status"] == "completed"
    blessing = second["blessing"]
    assert blessing["blessed"] and blessing["baseline_comparable"] is False
    assert blessing["reasons"][-1].startswith("baseline not comparable (labels differ)")
    assert blessing["baseline_accuracy"] is None
    push = second["push"]
    assert not push["pushed"]
    assert "labels changed: removed 'triangles'" in push["reason"]
    assert "output 'probabilities' shape [-1,3] -> [-1,2]" in push["reason"]
    assert second["contract"]["compared_with"] == 1 and not second["contract"]["allowed"]
    assert "not pushed: serving contract differs from version 1" in out
    report = Path(second["report"]).read_text()
    assert "labels changed: removed &#x27;triangles&#x27;" in report
    assert "baseline not comparable (labels differ)" in report
    assert sorted(p.name for p in served.iterdir()) == ["1"]

    # a class is added: refused too, until it is shipped on purpose
    four = make_dataset(classes=("circles", "squares", "triangles", "stripes"), per_split=(5, 2, 2))
    config = write_config(tmp_path, four)
    third, _ = run(config, capsys)
    assert not third["push"]["pushed"]
    assert "labels changed: added 'stripes'" in third["push"]["reason"]
    fourth, out = run(config, capsys, "pusher.allow_contract_change=true")
    assert fourth["components"]["Trainer"]["status"] == "cached", "only the decision changed"
    assert fourth["push"]["pushed"] and fourth["push"]["version"] == 2
    change = fourth["push"]["contract_change"]
    assert change["from_version"] == 1 and change["allowed_by"] == "pusher.allow_contract_change"
    assert "labels changed: added 'stripes'" in change["differences"]
    assert fourth["contract"]["allowed"] is True
    assert "pushed on purpose" in Path(fourth["report"]).read_text()
    capsys.readouterr()
    versions = ["versions", "--serving-dir", str(tmp_path / "serving"), "--model-name", "shapes"]
    assert cli.main([*versions, "--json"]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)["versions"]}
    assert rows[2]["contract_change"]["differences"] == change["differences"]
