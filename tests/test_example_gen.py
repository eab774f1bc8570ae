"""ExampleGen end to end: real Beam pipelines over real image folders in tmp_path."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
from test_example_gen_units import KEPT_KINDS, image_bytes

from pipeline_components import cli
from pipeline_components.core import artifacts, examples
from pipeline_components.core.beam import BeamSetup
from pipeline_components.core.machine import usable_cpus
from pipeline_components.example_gen import convert, layout
from pipeline_components.example_gen import executor as example_gen


def _plain(key, value):
    return value.decode() if isinstance(value, bytes) and key != examples.ENCODED else value


def read_records(out) -> list[dict]:
    """Every record of every shard, parsed with the shared feature spec."""
    records = []
    for split in artifacts.SPLITS:
        for path in examples.split_files(str(out), split) if (out / split).exists() else []:
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                rec = {k: _plain(k, v.numpy()) for k, v in examples.parse(raw).items()}
                records.append(rec | {"split": split, "shard": path.rsplit("/", 1)[-1]})
    return records


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["example-gen", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_error(capsys, out_parent, args, *fragments):
    """Exit 1, one error line naming the problem, nothing left next to the output."""
    code, _, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0]
    assert not out_parent.exists() or list(out_parent.iterdir()) == []


# ---------------------------------------------------------------- kept formats, round trip


@pytest.fixture
def mixed_dataset(make_dataset):
    """A 2-class dataset plus one file of every kept variant under awkward names, and the
    harmless extras real folders carry (they must not count as bad files)."""
    root = make_dataset(per_split=(6, 2, 2))
    names = {}
    for i, kind in enumerate(sorted(KEPT_KINDS)):
        cls = ("circles", "squares")[i % 2]
        ext = {"jpeg": "JPG", "png": "PNG", "gif": "Gif", "bmp": "bmp", "webp": "webp"}
        name = f"{kind} Ünïcode №{i}.{ext[kind.split('-')[0]]}"
        (root / "train" / cls / name).write_bytes(image_bytes(kind, seed=i))
        names[f"train/{cls}/{name}"] = kind
    (root / "train/circles/actually a png.jpg").write_bytes(image_bytes("png", seed=99))
    names["train/circles/actually a png.jpg"] = "png"
    for cls in ("circles", "squares"):
        (root / "train" / cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "test/squares/README.txt").write_text("where these came from\n")
    return root, names


def test_every_kept_format_round_trips(mixed_dataset, tmp_path, capsys):
    root, special = mixed_dataset
    out = tmp_path / "out" / "examples"
    code, stdout, err = run_cli(capsys, "--data-root", root, "--output", out, "--num-shards", 3)
    assert code == 0, err

    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == ["circles", "squares"]
    stats = json.loads((out / "stats.json").read_text())
    records = read_records(out)
    by_name = {r[examples.FILENAME]: r for r in records}
    assert len(by_name) == len(records) == 10 * 2 + len(special)
    assert {p.name for p in out.iterdir()} == {
        "train",
        "validation",
        "test",
        "labels.txt",
        "stats.json",
    }
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"examples-0000{i}-of-00003.tfrecord.gz" for i in range(3)
    ]
    assert list((tmp_path / "out").iterdir()) == [out]  # no temporary directories left

    for name, rec in by_name.items():
        source = (root / name).read_bytes()
        kind = special.get(name, "jpeg")
        fmt, channels = KEPT_KINDS[kind]
        assert rec[examples.FORMAT] == fmt, name
        assert rec[examples.CHANNELS] == channels, name
        assert rec["split"] == name.split("/")[0]
        assert labels[rec[examples.LABEL]] == rec[examples.TEXT] == name.split("/")[1]
        assert rec[examples.SHA256] == example_gen.image_check.sha256_hex(rec[examples.ENCODED])
        decoded = tf.io.decode_image(rec[examples.ENCODED], channels=3, expand_animations=False)
        assert decoded.shape == (rec[examples.HEIGHT], rec[examples.WIDTH], 3)
        if kind == "webp":  # stored as lossless PNG of the same pixels
            want = tf.io.decode_image(source, channels=3, expand_animations=False)
            np.testing.assert_array_equal(decoded.numpy(), want.numpy())
        else:
            assert rec[examples.ENCODED] == source, name

    for split, entry in stats["splits"].items():
        in_split = [r for r in records if r["split"] == split]
        assert entry["num_examples"] == len(in_split)
        assert entry["per_class"] == {
            c: sum(r[examples.TEXT] == c for r in in_split) for c in labels
        }
    assert sorted(s["path"] for s in stats["skipped"]) == [
        "test/squares/README.txt",
        "train/circles/.DS_Store",
        "train/squares/.DS_Store",
    ]
    assert not any(s["counts_as_bad"] for s in stats["skipped"])
    assert stats["labels"] == labels and stats["duplicates"] == []
    assert stats["source_formats"]["webp"] == 1
    assert len(stats["fingerprint"]) == 64
    assert "class    train  validation  test" in stdout
    n = stats["splits"]["train"]["per_class"]["squares"]
    assert f"squares  {n:>5}           2     2" in stdout.splitlines()


# ---------------------------------------------------------------- skip reasons


def test_each_skip_reason_is_recorded(make_dataset, tmp_path):
    root = make_dataset(per_split=(10, 2, 2))
    bad = {
        "train/circles/zero.jpg": (b"", "empty file (0 bytes)", True),
        "train/circles/cut.jpg": (image_bytes("jpeg")[:300], "undecodable jpeg", True),
        "train/squares/cut.png": (image_bytes("png")[:-30], "undecodable png", True),
        "train/squares/mono.bmp": (image_bytes("bmp-1bit"), "undecodable bmp", True),
        "train/squares/notes.jpg": (b"not a picture\n", "not an image (unrecognized", True),
        "train/squares/scan.TIFF": (image_bytes("tiff"), "unsupported image format tiff", True),
        "train/circles/.DS_Store": (b"\x00\x00\x00\x01Bud1", "hidden or system file", False),
        "train/circles/Thumbs.db": (b"\xd0\xcf\x11\xe0", "hidden or system file", False),
        "train/circles/.hidden.jpg": (image_bytes("jpeg"), "hidden or system file", False),
        "train/.ipynb_checkpoints/x.jpg": (image_bytes("jpeg"), "hidden or system file", False),
        "train/README.txt": (b"about\n", "not inside a class folder", False),
        "test/circles/README.txt": (b"about\n", "not an image (.txt file)", False),
    }
    for rel, (data, _, _) in bad.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    out = tmp_path / "out"
    stats = example_gen.run_example_gen(root, out, max_bad_fraction=0.5, num_shards=2)

    skipped = {s["path"]: s for s in stats["skipped"]}
    assert set(skipped) == set(bad)
    for rel, (_, reason, is_bad) in bad.items():
        assert skipped[rel]["reason"].startswith(reason), skipped[rel]
        assert skipped[rel]["counts_as_bad"] is is_bad
    assert stats["splits"]["train"]["num_examples"] == 20
    assert stats["splits"]["train"]["skipped"] == 11
    assert not {r[examples.FILENAME] for r in read_records(out)} & set(bad)


def test_counters_and_summary_table(make_dataset, tmp_path, capsys, caplog):
    root = make_dataset(per_split=(5, 2, 3))
    (root / "test/circles/zero.jpg").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="pipeline_components"):
        example_gen.run_example_gen(root, tmp_path / "out", max_bad_fraction=0.2)
    counters = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("counters"))
    for item in (
        "train_read=10",
        "train_kept=10",
        "test_read=7",
        "test_kept=6",
        "test_skipped=1",
        "validation_read=4",
    ):
        assert item in counters
    table = capsys.readouterr().out.splitlines()
    assert table[:5] == [
        "class    train  validation  test",
        "circles      5           2     3",
        "squares      5           2     3",
        "total       10           4     6",
        "skipped      0           0     1",
    ]


# ---------------------------------------------------------------- errors: one line, nothing left


LAYOUT_CASES = [
    "no train", "no test", "unknown class", "missing class", "empty class folder", "one class",
    "no data root", "validation without classes",
]  # fmt: skip


def _layout_error_cases(root):
    """{case: (how to break the dataset, fragments the message must contain)}."""
    return {
        "no train": (lambda: shutil.rmtree(root / "train"), [f"{root / 'train'}", "missing"]),
        "no test": (lambda: shutil.rmtree(root / "test"), [f"{root / 'test'}", "missing"]),
        "unknown class": (
            lambda: shutil.copytree(root / "test/squares", root / "test/dogs"),
            [f"{root / 'test' / 'dogs'}", "no counterpart"],
        ),
        "missing class": (
            lambda: shutil.rmtree(root / "validation/squares"),
            [f"{root / 'validation' / 'squares'}", "missing or empty"],
        ),
        "empty class folder": (
            lambda: (root / "train/triangles").mkdir(),
            [f"{root / 'train' / 'triangles'}", "is empty"],
        ),
        "one class": (
            lambda: shutil.rmtree(root / "train/squares"),
            [f"{root / 'train'}", "1 class folder(s)"],
        ),
        "no data root": (lambda: shutil.rmtree(root), [str(root), "does not exist"]),
        "validation without classes": (
            lambda: [
                shutil.rmtree(root / "validation"),
                (root / "validation").mkdir(),
                (root / "validation/notes.txt").write_text("todo"),
            ],
            [f"{root / 'validation'}", "no class folders"],
        ),
    }


@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_layout_errors(case, make_dataset, tmp_path, capsys):
    root = make_dataset(per_split=(2, 1, 1))
    breaker, fragments = _layout_error_cases(root)[case]
    breaker()
    parent = tmp_path / "parent"
    assert_error(capsys, parent, ["--data-root", root, "--output", parent / "ex"], *fragments)


def test_too_many_bad_files_fails_and_leaves_nothing(make_dataset, tmp_path, capsys):
    root = make_dataset(per_split=(10, 2, 2))
    (root / "train/circles/cut.jpg").write_bytes(image_bytes("jpeg")[:200])
    parent = tmp_path / "parent"
    args = ["--data-root", root, "--output", parent / "ex", "--max-bad-fraction", "0.01"]
    assert_error(
        capsys, parent, args, f"1 of 21 files in {root / 'train'}", "train/circles/cut.jpg"
    )


def test_failed_run_keeps_the_previous_output(make_dataset, tmp_path, capsys):
    root = make_dataset(per_split=(4, 2, 2))
    out = tmp_path / "ex"
    example_gen.run_example_gen(root, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for p in (root / "test/squares").iterdir():
        p.write_bytes(b"garbage")  # the class has files, none usable
    code, _, err = run_cli(capsys, "--data-root", root, "--output", out, "--max-bad-fraction", 1)
    assert code == 1
    assert f"{root / 'test' / 'squares'} has no usable images" in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data1", "ex"]


def test_unknown_flag_is_a_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--data-root", tmp_path, "--output", tmp_path / "o", "--shards")
    assert code == 2  # a bad command line, as for every command
    assert "unknown option --shards (did you mean --num-shards? Beam options go after --)" in err


# ---------------------------------------------------------------- duplicates, carve-out, no resize


def _leaky_dataset(make_dataset):
    """train/circles/0001.jpg also in test, train/squares/0003.jpg also in validation, and a
    twin inside train (not leakage)."""
    root = make_dataset(per_split=(6, 2, 2))
    shutil.copy(root / "train/circles/0001.jpg", root / "test/circles/same as train.jpg")
    shutil.copy(root / "train/squares/0003.jpg", root / "validation/squares/leak.jpg")
    shutil.copy(root / "train/squares/0002.jpg", root / "train/squares/twin in train.jpg")
    return root


def _sha(path) -> str:
    return example_gen.image_check.sha256_hex(path.read_bytes())


def test_leaked_duplicates_are_dropped_from_train_and_listed(make_dataset, tmp_path, caplog):
    """Default on_duplicates: drop. The held-out copy stays (test over validation over train);
    the records are gone from the shards, the counts and the fingerprint."""
    root = _leaky_dataset(make_dataset)
    with caplog.at_level(logging.WARNING, logger="pipeline_components"):
        stats = example_gen.run_example_gen(root, tmp_path / "out")
    assert stats["duplicates"] == [
        {
            "sha256": sha,
            "paths": paths,
            "splits": splits,
        }
        for sha, paths, splits in sorted(
            [
                (
                    _sha(root / "train/circles/0001.jpg"),
                    ["test/circles/same as train.jpg", "train/circles/0001.jpg"],
                    ["train", "test"],
                ),
                (
                    _sha(root / "train/squares/0003.jpg"),
                    ["train/squares/0003.jpg", "validation/squares/leak.jpg"],
                    ["train", "validation"],
                ),
            ]
        )
    ]  # the within-train twin is not leakage
    assert stats["on_duplicates"] == "drop"
    assert stats["dropped_duplicates"] == [
        {
            "path": "train/circles/0001.jpg",
            "split": "train",
            "kept": ["test/circles/same as train.jpg"],
        },
        {
            "path": "train/squares/0003.jpg",
            "split": "train",
            "kept": ["validation/squares/leak.jpg"],
        },
    ]
    names = {r[examples.FILENAME] for r in read_records(tmp_path / "out")}
    assert "train/circles/0001.jpg" not in names and "train/squares/0003.jpg" not in names
    assert {"test/circles/same as train.jpg", "validation/squares/leak.jpg"} <= names
    assert {"train/squares/0002.jpg", "train/squares/twin in train.jpg"} <= names
    train = stats["splits"]["train"]
    assert train["per_class"] == {"circles": 5, "squares": 6} and train["num_examples"] == 11
    assert train["dropped_duplicates"] == 2 and train["skipped"] == 0 and stats["skipped"] == []
    assert len(names) == sum(s["num_examples"] for s in stats["splits"].values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dropped 2 train/validation copies" in w for w in warnings)
    # the fingerprint is that of what is stored: without the dropped copies
    warned = example_gen.run_example_gen(root, tmp_path / "warned", on_duplicates="warn")
    assert warned["fingerprint"] != stats["fingerprint"]


def test_on_duplicates_warn_keeps_every_copy_and_fail_stops(make_dataset, tmp_path, caplog, capsys):
    root = _leaky_dataset(make_dataset)
    with caplog.at_level(logging.WARNING, logger="pipeline_components"):
        stats = example_gen.run_example_gen(root, tmp_path / "out", on_duplicates="warn")
    assert len(stats["duplicates"]) == 2 and stats["dropped_duplicates"] == []
    names = {r[examples.FILENAME] for r in read_records(tmp_path / "out")}
    assert {"train/circles/0001.jpg", "train/squares/0003.jpg"} <= names
    assert stats["splits"]["train"]["num_examples"] == 13
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("more than one split" in w for w in warnings)
    assert any("train/circles/0001.jpg" in w for w in warnings)
    parent = tmp_path / "failed"
    args = ["--data-root", root, "--output", parent / "ex", "--on-duplicates", "fail"]
    assert_error(
        capsys, parent, args, "2 image(s) under", "appear in more than one split",
        "test/circles/same as train.jpg = train/circles/0001.jpg", "on_duplicates",
    )  # fmt: skip
    # a value out of its choices: checked with the config, one line naming the key
    assert_error(
        capsys, parent, [*args[:4], "--on-duplicates", "never"],
        "example_gen.on_duplicates: must be one of ['drop', 'warn', 'fail'], got 'never'",
    )  # fmt: skip


def test_resize_max_side_is_removed_with_a_one_line_reason(make_dataset, tmp_path, capsys):
    """Stored bytes are the originals (large ones too); the old option says why it is gone."""
    from pipeline_components.core import registry
    from pipeline_components.core.errors import PipelineError

    root = make_dataset(per_split=(3, 1, 1))
    big = image_bytes("png-rgba", size=(800, 600))
    (root / "train/circles/big.png").write_bytes(big)
    example_gen.run_example_gen(root, tmp_path / "out")
    by_name = {r[examples.FILENAME]: r for r in read_records(tmp_path / "out")}
    stored = by_name["train/circles/big.png"]
    assert stored[examples.ENCODED] == big and stored[examples.WIDTH] == 800
    parent = tmp_path / "cli"
    args = ["--data-root", root, "--output", parent / "ex", "--resize-max-side", "40"]
    assert_error(capsys, parent, args, "--resize-max-side was removed", "train/serve skew")
    with pytest.raises(PipelineError, match=r"^p.yaml: example_gen.resize_max_side: this optio"):
        registry.config_from_dict({"example_gen": {"resize_max_side": 256}}, source="p.yaml")


def test_validation_is_carved_from_train_when_absent(make_dataset, tmp_path, caplog):
    root = make_dataset(per_split=(30, 0, 3))
    assert not (root / "validation").exists()
    (root / "val/circles").mkdir(parents=True)  # not a split name: warned about, not used
    with caplog.at_level(logging.WARNING, logger="pipeline_components"):
        stats = example_gen.run_example_gen(root, tmp_path / "out", validation_fraction=0.25)
    assert f"ignoring {root / 'val'}: split folders are train, validation, test" in caplog.text
    records = read_records(tmp_path / "out")
    train = {r[examples.FILENAME] for r in records if r["split"] == "train"}
    validation = {r[examples.FILENAME] for r in records if r["split"] == "validation"}
    all_train = {f"train/{p.parent.name}/{p.name}" for p in (root / "train").rglob("*.jpg")}
    assert train | validation == all_train and not train & validation
    assert validation == {p for p in all_train if layout.unit_hash(p) < 0.25}
    assert 5 <= len(validation) <= 25
    assert stats["splits"]["validation"]["num_examples"] == len(validation)
    assert stats["validation"] == "carved from train (0.25)"
    # stable: the same files land in validation on a second run
    example_gen.run_example_gen(root, tmp_path / "again", validation_fraction=0.25)
    again = read_records(tmp_path / "again")
    assert {r[examples.FILENAME] for r in again if r["split"] == "validation"} == validation


def test_empty_carved_validation_is_an_error(make_dataset, tmp_path, capsys):
    root = make_dataset(per_split=(2, 0, 1))
    parent = tmp_path / "parent"
    args = ["--data-root", root, "--output", parent / "ex", "--validation-fraction", "0.001"]
    assert_error(capsys, parent, args, "validation carved from", "is empty")


# ---------------------------------------------------------------- determinism across runners


def test_multi_processing_writes_the_same_records_as_the_default_runner(
    mixed_dataset, tmp_path, capsys, caplog
):
    """The default picks the DirectRunner mode by input size and cores (multi_threading on
    every core here); options after -- win. Whichever mode ran: the same files byte for byte."""
    root, _ = mixed_dataset
    (root / "train/squares/cut.jpg").write_bytes(image_bytes("jpeg")[:200])
    # a leaked copy: its train shard is rewritten without it, identically on every runner
    shutil.copy(root / "train/circles/0001.jpg", root / "test/circles/leak.jpg")
    common = ["--data-root", root, "--num-shards", 2, "--max-bad-fraction", 0.2]
    chosen = "multi_threading" if usable_cpus() > 1 else "in_memory"
    mp = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    with caplog.at_level(logging.INFO, "pipeline_components.example_gen"):
        code, _, err = run_cli(capsys, *common, "--output", tmp_path / "default")
        assert code == 0, err
        assert f"--direct_running_mode={chosen}" in caplog.text
        caplog.clear()
        code, _, err = run_cli(capsys, *common, "--output", tmp_path / "mp", "--", *mp)
        assert code == 0, err
        assert "--direct_running_mode=multi_processing --direct_num_workers=2" in caplog.text
        assert "from beam_args" in caplog.text

    def as_set(out):
        return {tuple(sorted((k, str(v)) for k, v in r.items())) for r in read_records(out)}

    default = as_set(tmp_path / "default")
    assert len(default) == 10 * 2 + len(KEPT_KINDS) + 1  # + the test copy - the train copy
    stats = json.loads((tmp_path / "default" / artifacts.STATS_FILE).read_text())
    assert [d["path"] for d in stats["dropped_duplicates"]] == ["train/circles/0001.jpg"]
    assert as_set(tmp_path / "mp") == default
    # stronger: the same shard files byte for byte, and the same stats.json
    default_files = sorted(p for p in (tmp_path / "default").rglob("*") if p.is_file())
    for path in default_files:
        twin = tmp_path / "mp" / path.relative_to(tmp_path / "default")
        assert path.read_bytes() == twin.read_bytes(), path


def test_the_conversion_reports_its_progress_while_it_runs(
    mixed_dataset, tmp_path, caplog, monkeypatch
):
    """`ExampleGen: 12,400/20,000 files read, 3 skipped` every beam.progress_seconds (here
    0.05 s) while the job runs (issue 28), counted per file by the workers. Reading a file
    takes 20 ms here (a slow store), so that the job outlasts a few intervals."""
    root, _ = mixed_dataset
    total = len(layout.list_sources(str(root)).sources)
    read_file = convert.read_file

    def slow_read(path: str) -> bytes:
        time.sleep(0.02)
        return read_file(path)

    monkeypatch.setattr(convert, "read_file", slow_read)  # the DoFns run in this process
    setup = BeamSetup(("--direct_running_mode=in_memory",), 0.05)
    with caplog.at_level(logging.INFO, "pipeline_components.core.beam"):
        stats = example_gen.run_example_gen(
            str(root), str(tmp_path / "out"), num_shards=2, beam_setup=setup
        )
    lines = [m for m in caplog.messages if m.startswith("ExampleGen: ")]
    read = []
    for line in lines:
        found = re.fullmatch(rf"ExampleGen: (\d+)/{total} files read, (\d+) skipped \(.*\)", line)
        assert found, line
        read.append(int(found[1]))
    assert read and read == sorted(read) and 0 < read[-1] <= total, lines
    assert sum(s["num_examples"] for s in stats["splits"].values()) > 0
