"""`transfer-pipeline init DATA_ROOT`: what it finds and warns about, the pipeline.yaml it writes
(with which `transfer-pipeline run` completes), and the flat `<class>/<image>` layout it shares
with ExampleGen (splits by a stable hash of each path)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from pipeline_components import cli
from pipeline_components.core import registry
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen import executor, layout, shards
from pipeline_components.tools import init


def image(path, color=(200, 10, 10), fmt="PNG", size=(8, 8)):
    """A small real image; `color` makes its bytes unique."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def tree(root, spec, fmt="PNG"):
    """spec: {"train/cats": 12, ...} -> that many distinct images in each folder."""
    n = 0
    for folder, count in spec.items():
        for i in range(count):
            n += 1
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            image(os.path.join(root, folder, f"{i:03d}.{ext}"), (n % 256, n // 256, 7), fmt)
    return str(root)


BALANCED = {f"{s}/{c}": n for s, n in (("train", 12), ("validation", 3), ("test", 3))
            for c in ("cats", "dogs")}  # fmt: skip


def scan(root):
    return init.scan(str(root), init.DEFAULT_TEST_FRACTION, init.DEFAULT_VALIDATION_FRACTION)


def test_a_clean_folder_has_nothing_to_say(tmp_path):
    found = scan(tree(tmp_path / "d", BALANCED))
    assert found.labels == ["cats", "dogs"] and not found.flat
    assert found.problems == [] and found.warnings == []
    assert dict(found.counts["cats"]) == {"train": 12, "validation": 3, "test": 3}
    assert "sigmoid" in init.head_line(found.labels)
    assert "softmax head (3 outputs" in init.head_line(["a", "b", "c"])


def test_one_class(tmp_path):
    found = scan(tree(tmp_path / "d", {"train/cats": 12, "test/cats": 3}))
    assert any("1 class (cats): a classifier needs at least 2" in p for p in found.problems)


def test_a_split_missing(tmp_path):
    found = scan(tree(tmp_path / "d", {k: v for k, v in BALANCED.items() if "test" not in k}))
    assert found.problems == ["the test/ split folder is missing (or holds no images)"]
    spec = {"train/cats": 40, "train/dogs": 40, "test/cats": 3, "test/dogs": 3}
    found = scan(tree(tmp_path / "e", spec))
    assert found.problems == []  # validation is carved from train, by the path hash:
    (warning,) = found.warnings
    assert warning.startswith("no validation/ folder: 0.1 of train is carved into validation")
    found = scan(tree(tmp_path / "f", {**BALANCED, "test/dogs": 0}))
    assert "test/ has no images of dogs" in " ".join(found.problems)


def test_folders_beside_the_split_folders_are_named(tmp_path):
    root = tree(tmp_path / "d", {**BALANCED, "extra/cats": 3})
    (warning,) = scan(root).warnings
    assert warning == (
        "folders beside the split folders are ignored: extra (split folders are train, "
        "validation, test)"
    )


def test_tiny_classes(tmp_path):
    found = scan(tree(tmp_path / "d", {**BALANCED, "train/dogs": 4}))
    (warning,) = found.warnings
    assert warning.startswith("tiny classes, under 10 train / 2 validation / 2 test images")
    assert "dogs (4 train / 3 validation / 3 test)" in warning and "cats" not in warning


def test_mixed_formats_and_formats_that_tell_classes_apart(tmp_path):
    root = tree(tmp_path / "d", {k: v for k, v in BALANCED.items() if "dogs" in k}, "JPEG")
    tree(root, {k: v for k, v in BALANCED.items() if "cats" in k}, "PNG")
    (warning,) = scan(root).warnings
    assert warning.startswith("mixed formats: jpeg 18, png 18")
    assert "the format tells the classes apart (cats: png 100%; dogs: jpeg 100%)" in warning
    # the same mix in every class: mixed, but no shortcut
    root = tree(tmp_path / "e", BALANCED, "PNG")
    tree(root, {"train/cats/j": 2, "train/dogs/j": 2}, "JPEG")
    (warning,) = scan(root).warnings
    assert warning.startswith("mixed formats: png 36, jpeg 4") and "tells" not in warning


def test_duplicates_across_splits_by_content(tmp_path):
    root = tree(tmp_path / "d", BALANCED)
    with open(os.path.join(root, "train/cats/000.png"), "rb") as f:
        data = f.read()
    with open(os.path.join(root, "test/cats/copy.png"), "wb") as f:
        f.write(data)
    with open(os.path.join(root, "train/cats/same-split-copy.png"), "wb") as f:
        f.write(data)  # a copy inside one split is not leakage
    (warning,) = scan(root).warnings
    assert warning.startswith("1 image(s) are in more than one split, byte for byte")
    assert "'test/cats/copy.png = train/cats/000.png = train/cats/same-split-copy.png'" in warning


def test_names_that_will_be_refused_or_skipped(tmp_path):
    root = tree(tmp_path / "d", {**BALANCED, "train/bad\nname": 10})
    image(os.fsdecode(os.path.join(os.fsencode(root), b"train/cats/caf\xe9.png")))
    found = scan(root)
    assert found.problems[0] == (
        "class folder 'bad\\nname': the name holds the control character U+000A; rename it"
    )
    assert any(
        w.startswith("1 file(s) whose file name is not valid UTF-8 will be skipped")
        for w in found.warnings
    )


def test_files_exampleGen_skips_are_named(tmp_path):
    root = tree(tmp_path / "d", BALANCED)
    with open(os.path.join(root, "train/cats/scan.tif"), "wb") as f:
        f.write(b"II*\x00" + bytes(40))
    for name in ("broken.jpg", "broken2.jpg"):
        with open(os.path.join(root, "test/dogs", name), "wb") as f:
            f.write(b"this is not a JPEG")
    with open(os.path.join(root, "train/cats/notes.txt"), "w") as f:
        f.write("a stray document: ignored, as ExampleGen ignores it")
    (warning,) = scan(root).warnings
    assert warning.startswith(
        "3 file(s) ExampleGen will skip: not an image (2, e.g. 'test/dogs/broken.jpg'), "
        "unsupported format tiff (1, e.g. 'train/cats/scan.tif'); more than "
        "example_gen.max_bad_fraction (0.01)"
    )


def test_refuses_to_overwrite_unless_forced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree(tmp_path / "d", BALANCED)
    (tmp_path / "pipeline.yaml").write_text("mine\n")
    assert cli.main(["init", "d"]) == 1
    assert "pipeline.yaml exists; pass --force to replace it" in capsys.readouterr().err
    assert (tmp_path / "pipeline.yaml").read_text() == "mine\n"
    assert cli.main(["init", "d", "--force"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("next: transfer-pipeline run --config pipeline.yaml")
    cfg = registry.load_config("pipeline.yaml")
    assert cfg.data_root == "d" and cfg.model_name == "d"
    assert cfg.sections["example_gen"].test_fraction is None


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "nope"), "--output", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    missing = tmp_path / "nope"
    assert (
        err
        == f"transfer-pipeline init: error: data root {missing} does not exist or is not a folder"
    )
    assert not (tmp_path / "p.yaml").exists()


# ------------------------------------------------------------------ the flat layout


FLAT = {"cats": 30, "dogs": 30, "birds": 30}


def test_flat_folder_init_and_example_gen_agree(tmp_path, capsys):
    root = tree(tmp_path / "flat", FLAT)
    found = scan(root)
    assert found.flat and found.labels == ["birds", "cats", "dogs"]
    config = tmp_path / "p.yaml"
    assert cli.main(["init", root, "--output", str(config)]) == 0
    cfg = registry.load_config(str(config))
    eg = cfg.sections["example_gen"]
    assert (eg.test_fraction, eg.validation_fraction) == (0.2, 0.1)
    stats = executor.run_example_gen(
        root, str(tmp_path / "out"), num_shards=1, test_fraction=eg.test_fraction
    )
    for name in found.labels:  # ExampleGen's counts are the ones init announced
        assert {
            s: stats["splits"][s]["per_class"][name] for s in ("train", "validation", "test")
        } == ({s: found.counts[name][s] for s in ("train", "validation", "test")})
    assert stats["layout"].startswith("flat")
    # without test_fraction the flat folder is refused with the way out
    with pytest.raises(
        PipelineError, match="has no split folders .* set example_gen.test_fraction"
    ):
        layout.list_sources(root)


def test_a_flat_folder_carries_its_metadata_csv_and_does_not_read_it_as_an_image(tmp_path):
    """metadata.csv beside the class folders (paths relative to the root, no split level) is
    the Evaluator's slices, not a stray file: no skip line, every row attached."""
    from pipeline_components.core import examples

    root = tree(tmp_path / "flat", {"cats": 10, "dogs": 10})
    rows = [f"{c}/{i:03d}.png,{'dslr' if i % 2 else 'phone 📱'}" for c in ("cats", "dogs")
            for i in range(10)]  # fmt: skip
    (tmp_path / "flat" / "metadata.csv").write_text("path,camera\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    stats = executor.run_example_gen(root, str(out), num_shards=1, test_fraction=0.2)
    assert stats["skipped"] == []
    meta = examples.read_metadata(str(out))
    assert meta is not None and meta.columns == ["camera"]
    assert len(meta.values) == 20 and meta.values["dogs/001.png"] == {"camera": "dslr"}
    assert meta.values["cats/000.png"] == {"camera": "phone 📱"}


def test_flat_splits_are_stable_and_listed_whole(tmp_path):
    root = tree(tmp_path / "flat", FLAT)

    def assigned():
        found = layout.list_sources(root, flat=True)
        plan = shards.plan_shards(found, 0.1, 2, 0.2)
        return {s.relpath: s.split for shard in plan.values() for s in shard}

    before = assigned()
    assert set(before.values()) == {"train", "validation", "test"}
    fingerprint = layout.data_fingerprint(root, flat=True)
    image(os.path.join(root, "cats", "new.png"), (1, 2, 3))
    after = assigned()
    assert {k: after[k] for k in before} == before  # adding a file moves no other file
    assert layout.data_fingerprint(root, flat=True) != fingerprint  # the cache key sees it
    # a split folder in a flat root would be read as a class: refused
    image(os.path.join(root, "test", "x.png"))
    with pytest.raises(PipelineError, match=r"has split folders \(test\) but example_gen.test"):
        layout.list_sources(root, flat=True)


def test_test_fraction_leaves_train_a_share():
    with pytest.raises(PipelineError, match=r"example_gen.test_fraction: must be < 1 - valid"):
        registry.config_from_dict({"example_gen": {"test_fraction": 0.9}})


# ------------------------------------------------------------------ init, then run


@pytest.mark.slow
def test_init_writes_a_config_that_runs(make_dataset, tmp_path, monkeypatch, capsys):
    """init on a nested folder of 3 classes; `run` with its config (random weights, 32x32, one
    epoch) completes, and its --log-format json progress says so component by component."""
    data = make_dataset(classes=("circles", "squares", "stripes"), per_split=(8, 3, 3))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", str(data), "--output", "pipeline.yaml"]) == 0
    out = capsys.readouterr().out
    assert "3 classes: a softmax head (3 outputs" in out and "wrote pipeline.yaml" in out
    text = (tmp_path / "pipeline.yaml").read_text()
    assert "#   circles      8           3     3" in text and yaml.safe_load(text)["trainer"]
    overrides = ["trainer.weights=none", "trainer.image_size=[32,32]", "trainer.epochs=1"]
    overrides.append("beam.progress_seconds=0.5")  # the backbone pass's progress line
    argv = ["run", "--config", "pipeline.yaml", *overrides, "--log-format", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline_components.cli", *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "COMPLETED" in done.stdout
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in events)
    steps = [
        (e["index"], e["component"], e["status"]) for e in events if e.get("event") == "component"
    ]
    names = [c.name for c in registry.pipeline_order()]
    skipped = ("Tuner", "InfraValidator", "BulkInferrer")  # no tuner.space; the gate fails
    ran = [(i, n) for i, n in enumerate(names, 1) if n not in skipped]  # a random model
    for i, name in ran:  # in order
        assert steps.count((i, name, "running")) == 1 and (i, name, "completed") in steps
    assert {(i, n, "skipped") for i, n in enumerate(names, 1) if n in skipped} <= set(steps)
    messages = [e["message"] for e in events]
    assert "[7/11] Trainer started" in messages
    assert any(m.startswith("[7/11] Trainer finished in ") for m in messages)
    (epoch,) = [e for e in events if e.get("event") == "epoch"]
    assert (
        epoch["epoch"] == epoch["epochs"] == 1 and {"loss", "accuracy", "seconds"} <= epoch.keys()
    )
    passes = [m for m in messages if re.match(r"FeatureGen: backbone pass: \d+/33 images", m)]
    assert passes, messages  # FeatureGen's Beam job over 24 train + 9 validation images
