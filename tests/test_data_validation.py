"""Data validation: StatisticsGen (Beam), SchemaGen and the ExampleValidator on real ExampleGen
output of generated and hand-made image folders, component by component (the whole pipeline is
in the slow test at the end).

The module builds five datasets once (ExampleGen + StatisticsGen each, ~5 s apiece on 2 cores):
base (2 classes 50/50, 32x32), three (3 classes), skewed (70/30 in train), small (one class's
images 8x smaller) and hand (hand-made: mixed sizes, formats, channels, skipped files,
duplicates).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image
from test_pipeline import newest_record, run_cli, write_config

from pipeline_components import cli
from pipeline_components.core import (
    artifacts,
    config,
    data_schema,
    data_stats,
    fsutil,
    lineage,
    registry,
)
from pipeline_components.core.artifacts import Artifact
from pipeline_components.core.component import ExecutionContext
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.example_validator import executor as validator_executor
from pipeline_components.example_validator.component import (
    COMPONENT as VALIDATOR,
)
from pipeline_components.example_validator.config import (
    ExampleValidatorConfig,
    SeverityConfig,
)
from pipeline_components.schema_gen import executor as schema_executor
from pipeline_components.schema_gen.component import COMPONENT as SCHEMA_GEN
from pipeline_components.schema_gen.config import SchemaGenConfig
from pipeline_components.statistics_gen import executor as stats_executor
from pipeline_components.statistics_gen import records
from pipeline_components.tools import sample_data

EPSILON = 0.01


# ------------------------------------------------------------------------------- datasets


def _jpeg(rng: np.random.Generator, size: tuple[int, int], fmt: str = "JPEG", mode: str = "RGB"):
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def hand_made(root) -> None:
    """Mixed sizes, formats and channels; an empty file, a stray document and a hidden file;
    one image twice in train and once in test."""
    rng = np.random.default_rng(7)
    files: dict[str, bytes] = {}
    for split, n in (("train", 9), ("validation", 3), ("test", 3)):
        for cls in ("cats", "dogs"):
            for i in range(n):
                size = (int(rng.integers(10, 90)), int(rng.integers(10, 90)))
                files[f"{split}/{cls}/{i:02d}.jpg"] = _jpeg(rng, size)
    files["train/cats/grey.png"] = _jpeg(rng, (16, 16), "PNG", "L")
    files["train/cats/alpha.png"] = _jpeg(rng, (24, 20), "PNG", "RGBA")
    files["train/dogs/bitmap.bmp"] = _jpeg(rng, (30, 12), "BMP")
    files["train/cats/copy.jpg"] = files["train/cats/00.jpg"]
    files["test/cats/leak.jpg"] = files["train/cats/00.jpg"]
    files["train/cats/empty.jpg"] = b""
    files["train/dogs/notes.txt"] = b"labelled by Bob\n"
    files["train/dogs/.DS_Store"] = b"\0\0\0\1Bud1"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _generate(root, parts) -> None:
    """parts: [(classes, per_split, size, seed)] written into one root."""
    for classes, per_split, size, seed in parts:
        sample_data.generate(str(root), classes, per_split, size, "jpg", seed)


@dataclasses.dataclass
class Built:
    data: str
    examples: str
    statistics: str
    stats: dict


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    tmp = tmp_path_factory.mktemp("datasets")
    layouts = {
        "base": [(("circles", "squares"), (12, 4, 4), (32, 32), 0)],
        "three": [(("circles", "squares", "triangles"), (12, 4, 4), (32, 32), 1)],
        "skewed": [
            (("circles",), (14, 4, 4), (32, 32), 2),
            (("squares",), (6, 4, 4), (32, 32), 3),
        ],
        "small": [
            (("circles",), (12, 4, 4), (4, 4), 4),  # 8x smaller than base's 32x32
            (("squares",), (12, 4, 4), (32, 32), 5),
        ],
    }
    out = {}
    for name in [*layouts, "hand"]:
        data = tmp / name / "data"
        if name == "hand":
            hand_made(data)
        else:
            _generate(data, layouts[name])
        examples = str(tmp / name / "examples")
        # warn: keep images shared between splits, so that the statistics and the validator
        # see them (the default, drop, leaves them out of train)
        run_example_gen(
            str(data), examples, num_shards=2, max_bad_fraction=0.2, on_duplicates="warn"
        )
        statistics = str(tmp / name / "statistics")
        stats = stats_executor.run_statistics_gen(
            examples, statistics, num_quantiles=101, epsilon=EPSILON
        )
        out[name] = Built(str(data), examples, statistics, stats)
    return out


def infer(stats: dict, **overrides) -> dict:
    """The schema SchemaGen infers, through its YAML (what a team would commit)."""
    text = data_schema.render(schema_executor.infer(stats, SchemaGenConfig(**overrides)))
    return data_schema.loads(text)


def validator_config(**severity) -> ExampleValidatorConfig:
    return ExampleValidatorConfig(severity=SeverityConfig(**severity))


def kinds(anomalies: list[dict]) -> dict[str, str]:
    return {a["kind"]: a["severity"] for a in anomalies}


# --------------------------------------------------------------- statistics are right


def _rank_ok(sorted_values: list, value: float, p: float, eps: float) -> bool:
    """Is `value` within rank eps*N of the exact p-quantile of sorted_values?"""
    n = len(sorted_values)
    lo, hi = bisect.bisect_left(sorted_values, value), bisect.bisect_right(sorted_values, value)
    target = p * (n - 1)
    return hi > lo and lo - eps * n - 1 <= target <= hi - 1 + eps * n + 1


def test_statistics_equal_a_direct_computation(built):
    """Counts, histograms, min/max/mean, formats, channels, skipped files and duplicates exactly
    as a plain loop over the same files finds them; quantiles within the sketch's epsilon."""
    b = built["hand"]
    rows = []
    for dirpath, _dirs, names in os.walk(b.data):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, b.data).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            if name.startswith(".") or name.endswith(".txt") or not data:
                continue
            with Image.open(io.BytesIO(data)) as img:
                channels = {"L": 1, "RGB": 3, "RGBA": 4}[img.mode]
                rows.append(
                    (
                        rel.split("/")[0],
                        rel.split("/")[1],
                        img.format.lower(),
                        img.width,
                        img.height,
                        channels,
                        len(data),
                        hashlib.sha256(data).hexdigest(),
                    )
                )
    stats = b.stats
    assert stats["labels"] == ["cats", "dogs"] and stats["version"] == data_stats.VERSION
    assert stats["quantiles"] == {"num_quantiles": 101, "epsilon": EPSILON}
    for split in ("train", "validation", "test"):
        mine = [r for r in rows if r[0] == split]
        s = stats["splits"][split]
        assert s["num_examples"] == len(mine)
        assert s["classes"] == dict(collections.Counter(r[1] for r in mine))
        assert s["class_shares"]["cats"] == pytest.approx(s["classes"]["cats"] / len(mine))
        assert s["formats"] == dict(sorted(collections.Counter(r[2] for r in mine).items()))
        assert s["channels"] == {
            str(k): v for k, v in sorted(collections.Counter(r[5] for r in mine).items())
        }
        values = {
            "width": [r[3] for r in mine],
            "height": [r[4] for r in mine],
            "megapixels": [r[3] * r[4] / 1e6 for r in mine],
            "encoded_bytes": [r[6] for r in mine],
        }
        for feature, vs in values.items():
            f = s["features"][feature]
            assert f["count"] == len(vs)
            assert (f["min"], f["max"]) == (min(vs), max(vs))
            assert f["mean"] == pytest.approx(sum(vs) / len(vs))
            hist = collections.Counter(str(data_stats.bin_index(v)) for v in vs)
            assert f["histogram"] == dict(hist)
            qs, ordered = f["quantiles"], sorted(vs)
            assert len(qs) == 101 and qs[0] == min(vs) and qs[-1] == max(vs)
            for i, q in enumerate(qs):
                assert _rank_ok(ordered, q, i / (len(qs) - 1), EPSILON), (split, feature, i)
            for cls in ("cats", "dogs"):
                pc = s["per_class"][cls][feature]
                cvs = [v for v, r in zip(vs, mine, strict=True) if r[1] == cls]
                assert pc["count"] == len(cvs) and pc["max"] == max(cvs)
                assert sum(pc["histogram"].values()) == len(cvs)
        shas = collections.Counter(r[7] for r in mine)
        other = {r[7] for r in rows if r[0] != split}
        assert s["duplicates"] == {
            "within_split": sum(n - 1 for n in shas.values()),
            "shared_with_other_splits": sum(n for sha, n in shas.items() if sha in other),
        }
    train = stats["splits"]["train"]
    assert train["duplicates"] == {"within_split": 1, "shared_with_other_splits": 2}
    assert train["skipped"]["by_reason"] == {
        "empty file": 1,
        "hidden or system file": 1,
        "not an image": 1,
    }
    assert (train["skipped"]["bad"], train["skipped"]["ignored"]) == (1, 2)
    assert train["skipped"]["bad_fraction"] == pytest.approx(1 / (train["num_examples"] + 1))
    assert stats["splits"]["test"]["skipped"]["bad"] == 0
    assert stats["examples_fingerprint"] == artifacts.examples_fingerprint(b.examples)
    for png in (artifacts.CLASS_SHARES_PNG, artifacts.SIZES_PNG):
        path = os.path.join(b.statistics, artifacts.PLOTS_DIR, png)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quantile_sketch_stays_within_its_stated_error(tmp_path):
    """50,000 values, more than the sketch's buffers hold at epsilon 0.01, so it really
    approximates: every returned quantile is within rank epsilon*N of the exact one."""
    rng = random.Random(3)
    values = [rng.lognormvariate(3, 1) for _ in range(50_000)]
    combiner = stats_executor.quantile_combiner(num_quantiles=21, epsilon=EPSILON)
    assert combiner._spec.buffer_size < len(values)  # the sketch has to collapse buffers
    out = str(tmp_path / "quantiles.json")
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create([("k", v) for v in values], reshuffle=False)
            | beam.CombinePerKey(combiner)
            | beam.Map(lambda kv: json.dumps(kv[1]))
            | beam.io.WriteToText(out, shard_name_template="")
        )
    with open(out) as f:
        qs = json.loads(f.read())
    ordered = sorted(values)
    assert len(qs) == 21 and qs[0] == ordered[0] and qs[-1] == ordered[-1]
    for i, q in enumerate(qs):
        assert _rank_ok(ordered, q, i / 20, EPSILON), (i, q)


def test_statistics_gen_runs_with_its_own_or_the_pipelines_beam_options(built, tmp_path, caplog):
    """StatisticsGen reads only its own section: with a `beam:` section, ExampleGen's options
    (here an unknown runner) never reach it, and its job reports progress while it runs; an
    old config without `beam:` keeps giving it ExampleGen's options for one release (issue 27)."""
    from pipeline_components.statistics_gen.component import COMPONENT as STATISTICS_GEN

    base = built["base"]
    inputs: dict[str, Artifact | None] = {"examples": Artifact(artifacts.EXAMPLES, base.examples)}
    bad = {"example_gen": {"beam_args": ["--runner=NoSuchRunner"]}}
    new = registry.config_from_dict(
        {**bad, "beam": {"args": ["--runner=DirectRunner"], "progress_seconds": 0.05}}
    )
    ctx = ExecutionContext(new, STATISTICS_GEN.section_of(new), inputs, str(tmp_path / "new"))
    with caplog.at_level(logging.INFO, "pipeline_components.core.beam"):
        result = STATISTICS_GEN.run(ctx)
    assert result["splits"] == {s: v["num_examples"] for s, v in base.stats["splits"].items()}
    total = sum(result["splits"].values())
    lines = [m for m in caplog.messages if m.startswith("StatisticsGen: ")]
    assert lines and all(
        re.fullmatch(rf"StatisticsGen: \d+/{total} records read \(after \d+ s\)", line)
        for line in lines
    ), lines
    old = registry.config_from_dict(bad)
    old_ctx = ExecutionContext(old, STATISTICS_GEN.section_of(old), inputs, str(tmp_path / "old"))
    with pytest.raises(PipelineError, match=r"^bad Beam options --runner=NoSuchRunner"):
        STATISTICS_GEN.run(old_ctx)
    assert not (tmp_path / "old").exists()


def test_records_are_read_without_tensorflow_exactly_as_tensorflow_reads_them(built):
    import tensorflow as tf

    from pipeline_components.core import examples

    files = examples.split_files(built["hand"].examples, "train")
    n = 0
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        raw = raw.numpy()
        ex = tf.train.Example.FromString(raw).features.feature
        got = records.facts(raw, "train")
        assert got == records.Facts(
            "train",
            ex[examples.TEXT].bytes_list.value[0].decode(),
            ex[examples.FORMAT].bytes_list.value[0].decode(),
            ex[examples.WIDTH].int64_list.value[0],
            ex[examples.HEIGHT].int64_list.value[0],
            ex[examples.CHANNELS].int64_list.value[0],
            len(ex[examples.ENCODED].bytes_list.value[0]),
            ex[examples.SHA256].bytes_list.value[0].decode(),
        )
        n += 1
    assert n == built["hand"].stats["splits"]["train"]["num_examples"]


# ------------------------------------------------------------------- schema and anomalies


def _pipeline(tmp_path) -> config.PipelineConfig:
    """Roots where nothing is served yet."""
    return registry.config_from_dict(
        {"pipeline_root": str(tmp_path / "root"), "serving_dir": str(tmp_path / "serving")}
    )


def run_validator(
    tmp_path, stats_dir: str, schema_path: str, baseline_dir: str | None, cfg=None, name="a"
) -> dict:
    """The ExampleValidator component's run(), as the runner calls it."""
    baseline = None
    if baseline_dir:
        baseline = {"statistics": data_stats.statistics_path(baseline_dir), "served_version": 1}
    ctx = ExecutionContext(
        _pipeline(tmp_path),
        cfg or ExampleValidatorConfig(),
        {
            "statistics": Artifact(artifacts.EXAMPLE_STATISTICS, stats_dir),
            "schema": Artifact(artifacts.SCHEMA, schema_path),
        },
        str(tmp_path / name),
        external={"baseline": baseline},
    )
    return VALIDATOR.run(ctx)


def write_schema(tmp_path, schema: dict, name="schema.yaml") -> str:
    path = tmp_path / name
    path.write_text(data_schema.render(schema))
    return str(path)


def test_first_run_infers_a_schema_its_data_passes(built, tmp_path):
    ctx = ExecutionContext(
        _pipeline(tmp_path),
        SchemaGenConfig(),
        {"statistics": Artifact(artifacts.EXAMPLE_STATISTICS, built["base"].statistics)},
        str(tmp_path / "schema_gen"),
    )
    result = SCHEMA_GEN.run(ctx)
    assert result["source"] == "inferred from this run's statistics (no model is served yet)"
    text = (tmp_path / "schema_gen" / "schema.yaml").read_text()
    assert text.startswith("# Data schema for transfer-pipeline") and "schema_path" in text
    schema = data_schema.loads(text)
    assert schema["classes"] == ["circles", "squares"] and schema["formats"] == ["jpeg"]
    assert schema["image"]["width"] == {"min": 16, "max": 64}  # 32 px / 2 .. x 2
    assert schema["splits"]["train"] == {
        "num_examples": {"min": 12, "max": None},
        "class_shares": {c: {"min": 0.4, "max": 0.6} for c in ("circles", "squares")},
    }
    # its key is the schema it writes: what a later run inheriting the same file reuses
    key = SCHEMA_GEN.external_inputs(ctx)["schema_sha256"]
    assert key == hashlib.sha256(text.encode()).hexdigest()

    result = run_validator(tmp_path, built["base"].statistics, result["schema"], None)
    assert result["passed"] and result["anomalies"] == [] and result["baseline"] is None
    on_disk = json.loads((tmp_path / "a" / artifacts.ANOMALIES_FILE).read_text())
    assert on_disk["passed"] is True
    # unchanged data against its own statistics as the baseline: nothing drifts either
    again = run_validator(
        tmp_path, built["base"].statistics, result["schema"], built["base"].statistics, name="b"
    )
    assert again["passed"] and again["anomalies"] == []
    assert (tmp_path / "b" / "plots" / artifacts.SIZES_PNG).exists()  # side by side


def test_one_class_8x_smaller_fails_with_a_size_drift_anomaly(built, tmp_path):
    schema = write_schema(tmp_path, infer(built["base"].stats))
    with pytest.raises(PipelineError) as failure:
        run_validator(tmp_path, built["small"].statistics, schema, built["base"].statistics)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("6 data anomalies fail the run: ")
    assert "train: image sizes drifted from the baseline: 'circles' width JS 1.00" in message
    assert "[image_size_drift]" in message and "[image_size_out_of_range]" in message
    assert message.endswith(f"see {tmp_path / 'a' / artifacts.ANOMALIES_FILE}")
    anomalies = failure.value.result["anomalies"]
    drift = [a for a in anomalies if a["kind"] == "image_size_drift"]
    assert [a["split"] for a in drift] == ["train", "validation", "test"]
    assert all(a["severity"] == "fail" and a["classes"] == ["circles"] for a in drift[:1])
    assert drift[0]["value"] == 1.0 and drift[0]["threshold"] == 0.1
    out_of_range = [a for a in anomalies if a["kind"] == "image_size_out_of_range"]
    assert [a["split"] for a in out_of_range] == ["train", "validation", "test"]
    assert out_of_range[0]["message"].startswith(
        "train: images outside the schema's ranges (> 1.0%): 50.0% have width outside "
        "[16, 64] px (seen 4 to 32), 50.0% have height outside"
    )
    assert json.loads((tmp_path / "a" / artifacts.ANOMALIES_FILE).read_text())["passed"] is False
    # the same data with both kinds at warn: recorded, and the run goes on
    cfg = validator_config(image_size_drift="warn", image_size_out_of_range="warn")
    result = run_validator(
        tmp_path, built["small"].statistics, schema, built["base"].statistics, cfg, name="w"
    )
    assert result["passed"] and result["warn"] == 9 and result["fail"] == 0  # + 3 bytes drifts


def test_a_dropped_class_fails(built, tmp_path):
    schema = write_schema(tmp_path, infer(built["three"].stats))
    with pytest.raises(PipelineError) as failure:
        run_validator(tmp_path, built["base"].statistics, schema, built["three"].statistics)
    found = kinds(failure.value.result["anomalies"])
    assert found["missing_class"] == "fail" and found["split_shrank"] == "fail"
    assert "class 'triangles' of the schema is missing from the data [missing_class]" in str(
        failure.value
    )
    assert "train: 24 examples, 33% fewer than the baseline's 36 (> 20%)" in str(failure.value)


@pytest.mark.parametrize("severity", ["fail", "warn", "off"])
def test_70_30_class_shares_against_a_50_50_schema(built, tmp_path, severity):
    schema = write_schema(tmp_path, infer(built["base"].stats))  # 50/50 +- 10 points
    cfg = validator_config(class_share_out_of_bounds=severity)
    expected = (
        "train: class 'circles' is 70.0% of the examples, outside the schema's [40.0%, 60.0%]"
    )
    if severity == "fail":
        with pytest.raises(PipelineError, match=r"\[class_share_out_of_bounds\]") as failure:
            run_validator(tmp_path, built["skewed"].statistics, schema, None, cfg)
        assert expected in str(failure.value)
        return
    result = run_validator(tmp_path, built["skewed"].statistics, schema, None, cfg)
    assert result["passed"]
    shares = [a for a in result["anomalies"] if a["kind"] == "class_share_out_of_bounds"]
    if severity == "off":
        assert shares == []
    else:
        assert [a["message"] for a in shares][:1] == [expected]
        assert {a["severity"] for a in shares} == {"warn"} and shares[0]["value"] == 0.7
    # against a 50/50 baseline the drift is reported too (warn by default): L-inf 0.2
    drifted = run_validator(
        tmp_path, built["skewed"].statistics, schema, built["base"].statistics, cfg, name="d"
    )
    drift = [a for a in drifted["anomalies"] if a["kind"] == "class_share_drift"]
    assert drift[0]["value"] == pytest.approx(0.2) and drift[0]["severity"] == "warn"


def test_hand_made_folder_formats_channels_skipped_files_and_leakage(built, tmp_path):
    stats = built["hand"].stats
    schema = infer(stats)
    schema["formats"], schema["channels"] = ["jpeg"], [3]  # a team's edited schema
    previous = json.loads(json.dumps(stats))  # a previous run without skips or leaks
    for s in previous["splits"].values():
        s["skipped"]["bad_fraction"] = 0.0
        s["duplicates"]["shared_with_other_splits"] = 0
    found = validator_executor.validate(stats, schema, previous, ExampleValidatorConfig())
    messages = collections.defaultdict(list)
    for a in found:
        messages[a["kind"]].append(a["message"])
    assert set(messages) == {
        "new_format",
        "unexpected_channels",
        "skipped_files_jump",
        "cross_split_duplicates",
    }
    assert all(a["severity"] == "warn" for a in found)
    assert messages["new_format"] == [
        "train: 1 image(s) in format bmp, not in the schema's jpeg",
        "train: 2 image(s) in format png, not in the schema's jpeg",
    ]
    assert messages["unexpected_channels"] == [
        "train: 1 image(s) with 1 channel(s), not in the schema's 3",
        "train: 1 image(s) with 4 channel(s), not in the schema's 3",
    ]
    (jump,) = messages["skipped_files_jump"]
    assert jump.startswith("train: 4.3% of the files were unusable, up from 0.0% (> +2.0%;")
    assert messages["cross_split_duplicates"] == [
        "train: 2 image(s) also appear in another split (train/test leakage)",
        "test: 1 image(s) also appear in another split (train/test leakage)",
    ]


def test_schema_files_are_checked_with_one_line_errors(built, tmp_path):
    good = data_schema.render(infer(built["base"].stats))
    cases = {
        good.replace("version: 1", "version: 2"): "version: expected 1, got 2",
        good.replace('"squares": {min: 0.4, max: 0.6}', '"zebras": {min: 0.4, max: 0.6}', 1): (
            "splits.train.class_shares: names a class not in 'classes', got 'zebras'"
        ),
        good.replace("width: {min: 16, max: 64}", "width: {min: 64, max: 16}"): (
            "image.width: min must not exceed max"
        ),
        good.replace("max_fraction_outside: 0.01", "max_fraction_outside: 2"): (
            "max_fraction_outside: expected a number [0, 1], got 2"
        ),
        good + "colour: red\n": "top level: unknown key 'colour'",
        "classes: [a\n": "is not valid YAML (line 2)",
    }
    for text, error in cases.items():
        with pytest.raises(PipelineError) as e:
            data_schema.loads(text, "schema s.yaml")
        assert error in str(e.value) and "\n" not in str(e.value)
        assert str(e.value).startswith("schema s.yaml")

    # a schema passed in is used as it is, comments and all; a missing one fails in preflight
    committed = tmp_path / "committed.yaml"
    committed.write_text("# reviewed by the data team\n" + good)
    cfg = SchemaGenConfig(schema_path=str(committed))
    ctx = ExecutionContext(
        _pipeline(tmp_path),
        cfg,
        {"statistics": Artifact(artifacts.EXAMPLE_STATISTICS, built["skewed"].statistics)},
        str(tmp_path / "g"),
    )
    assert SCHEMA_GEN.run(ctx)["source"] == f"schema_path {committed}"
    assert (tmp_path / "g" / "schema.yaml").read_text() == committed.read_text()
    with pytest.raises(PipelineError, match="does not exist or cannot be read"):
        SCHEMA_GEN.preflight(SchemaGenConfig(schema_path=str(tmp_path / "nope.yaml")))


def test_severities_and_thresholds_are_checked_config():
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict(
            {"example_validator": {"severity": {"new_class": "loud"}}}, "p.yaml"
        )
    assert str(e.value) == (
        "p.yaml: example_validator.severity.new_class: must be one of "
        "['fail', 'warn', 'off'], got 'loud'"
    )
    with pytest.raises(PipelineError, match=r"max_size_drift: must be in \(0, 1\], got 0"):
        registry.config_from_dict({"example_validator": {"max_size_drift": 0}}, "p.yaml")
    cfg = registry.config_from_dict({"example_validator": {"severity": {"new_format": "fail"}}})
    assert cfg.sections["example_validator"].severity.new_format == "fail"
    assert (
        cfg.sections["example_validator"].severity.new_class == "fail"
    )  # the others keep defaults


def test_validate_data_runs_alone(built, tmp_path, capsys):
    first = tmp_path / "first"
    code = cli.main(["validate-data", "--examples", built["base"].examples, "--output", str(first)])
    out = capsys.readouterr().out
    assert code == 0 and "passed: no anomalies" in out
    schema = first / "schema" / "schema.yaml"
    assert data_schema.load(str(schema))["classes"] == ["circles", "squares"]
    assert (first / "statistics" / "statistics.json").exists()

    args = [
        "validate-data",
        "--examples",
        built["small"].examples,
        "--schema",
        str(schema),
        "--baseline-stats",
        built["base"].statistics,
        "--output",
        str(tmp_path / "second"),
        "example_validator.severity.image_size_out_of_range=warn",
    ]
    code = cli.main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("transfer-pipeline validate-data: error: 3 data anomalies fail the run:")
    assert "train: image sizes drifted from the baseline: 'circles' width JS 1.00" in err
    assert "(> 0.1) [image_size_drift]" in err and "(and 6 warning(s))" in err
    assert "WARN  image_size_out_of_range" in captured.out
    assert "FAIL  image_size_drift" in captured.out


# ------------------------------------------------------------------------------- lineage


def _saved_model(path, weights: bytes) -> None:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph" * 100)
    (path / "variables" / "variables.index").write_bytes(weights)


def _record(root, component: str, n: int, inputs: dict, status="completed") -> None:
    folder = root / component
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(n)).mkdir(exist_ok=True)
    rec = {
        "component": component,
        "execution_id": n,
        "status": status,
        "run_id": f"run{n}",
        "output_dir": str(folder / str(n)),
        "inputs": {"config": {}, "inputs": inputs},
    }
    (folder / f"{n}.json").write_text(json.dumps(rec))


def test_lineage_finds_the_data_behind_the_served_model_by_content(tmp_path):
    root, serving = tmp_path / "root", tmp_path / "serving"
    for n, fp, weights in ((1, "examples-A", b"A" * 10), (2, "examples-B", b"B" * 10)):
        _record(root, "Trainer", n, {"examples": fp})
        _saved_model(root / "Trainer" / str(n) / "saved_model", weights)
    _record(root, "Trainer", 3, {"examples": "examples-C"}, status="failed")
    assert lineage.served_examples(str(root), str(serving), "m") is None  # nothing served
    shutil.copytree(root / "Trainer" / "1" / "saved_model", serving / "m" / "4")
    served = lineage.served_examples(str(root), str(serving), "m")
    assert (served.version, served.examples_fingerprint, served.trainer_execution) == (
        4,
        "examples-A",
        1,
    )
    shutil.copytree(root / "Trainer" / "2" / "saved_model", serving / "m" / "5")
    assert lineage.served_examples(str(root), str(serving), "m").examples_fingerprint == (
        "examples-B"
    )
    # a version no execution here produced (same files, other bytes) is not guessed
    (serving / "m" / "5" / "variables" / "variables.index").write_bytes(b"C" * 10)
    unknown = lineage.served_examples(str(root), str(serving), "m")
    assert unknown.examples_fingerprint is None
    assert unknown.reason == f"no Trainer execution in {root} produced this model"
    # then the artifacts made from those examples
    _record(root, "StatisticsGen", 1, {"examples": "examples-A"})
    (root / "StatisticsGen" / "1" / "statistics.json").write_text("{}")
    found = lineage.find_artifact(
        str(root), artifacts.EXAMPLE_STATISTICS, artifacts.EXAMPLES, "examples-A"
    )
    assert found.uri == str(root / "StatisticsGen" / "1") and found.execution_id == 1
    assert (
        lineage.find_artifact(
            str(root), artifacts.EXAMPLE_STATISTICS, artifacts.EXAMPLES, "examples-B"
        )
        is None
    )


# -------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_a_nightly_run_with_thumbnails_stops_before_the_trainer(make_dataset, tmp_path, capsys):
    """Run 1 infers the schema and passes (and pushes); run 2 on the same data passes against
    the served model's statistics with everything expensive cached; run 3, after one class's
    images became 8x smaller, fails with a size-drift anomaly before the Trainer."""
    data = make_dataset(per_split=(12, 4, 4))
    path = write_config(tmp_path, data)
    code, out, _ = run_cli(path, capsys)
    first = newest_record(tmp_path)
    assert code == 0 and first["status"] == "completed", out
    assert first["components"]["SchemaGen"]["result"]["source"].startswith("inferred")
    assert first["anomalies"] == [] and first["push"]["version"] == 1
    html = fsutil.read_text(first["report"])
    assert "<h2>Data statistics</h2>" in html and "Alerts" not in html

    code, out, _ = run_cli(path, capsys)
    second = newest_record(tmp_path)
    statuses = {n: c["status"] for n, c in second["components"].items()}
    assert statuses.pop("BulkInferrer") == "skipped"  # no batch_predict.input in this config
    assert code == 0 and statuses == {
        "ExampleGen": "cached",
        "StatisticsGen": "cached",
        "SchemaGen": "cached",  # the schema behind version 1 is the one inferred in run 1
        "ExampleValidator": "completed",  # its baseline appeared: version 1's statistics
        "FeatureGen": "cached",
        "Tuner": "skipped",  # no search space
        "Trainer": "cached",
        "Evaluator": "cached",
        "InfraValidator": "cached",
        "Pusher": "completed",
    }
    validation = second["components"]["ExampleValidator"]["result"]
    assert validation["passed"] and validation["anomalies"] == []
    assert validation["baseline"]["served_version"] == 1
    stats_dir = first["components"]["StatisticsGen"]["output_dir"]
    assert validation["baseline"]["statistics"] == os.path.join(stats_dir, "statistics.json")

    # tonight the upstream job wrote 4x4 thumbnails of every circle
    thumbs = tmp_path / "thumbs"
    sample_data.generate(str(thumbs), ("circles",), (12, 4, 4), (4, 4), "jpg", 9)
    for split in ("train", "validation", "test"):
        for src in (thumbs / split / "circles").iterdir():
            shutil.copyfile(src, data / split / "circles" / src.name)
    code, out, err = run_cli(path, capsys)
    third = newest_record(tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("transfer-pipeline run: error: ExampleValidator failed: ")
    assert "train: image sizes drifted from the baseline: 'circles' width JS 1.00" in err
    assert "[image_size_drift]" in err
    assert third["status"] == "failed" and "Trainer" not in third["components"]
    entry = third["components"]["ExampleValidator"]
    assert entry["status"] == "failed" and entry["result"]["passed"] is False
    assert third["anomalies"] == entry["result"]["anomalies"]
    drift = [a for a in third["anomalies"] if a["kind"] == "image_size_drift"]
    assert drift[0]["severity"] == "fail" and drift[0]["classes"] == ["circles"]
    assert len(os.listdir(tmp_path / "root" / "Trainer")) == 2  # 1/ and 1.json: never again
    assert sorted(os.listdir(tmp_path / "serving" / "shapes")) == ["1"]
    assert next(ln for ln in out.splitlines() if ln.startswith("Trainer")).split()[1:3] == [
        "not",
        "run",
    ]
    html = fsutil.read_text(third["report"])
    alerts = html.index("<b>Alerts</b>")
    assert alerts < html.index("<h2>Data validation</h2>") < html.index("<h2>Data statistics</h2>")
    assert "image_size_drift" in html[alerts : html.index("<h2>")]


def test_report_puts_alerts_first_and_shows_a_failed_validation(tmp_path):
    """report.html through the generic hooks: report_alerts of every component with a result
    (a failed one included), failures first, before every section."""
    from pipeline_components.orchestration import report

    anomalies = [
        {"kind": "class_share_drift", "severity": "warn", "split": "train", "classes": ["a"],
         "message": "train: class shares moved by 0.200", "value": 0.2, "threshold": 0.1},
        {"kind": "missing_class", "severity": "fail", "split": None, "classes": ["b"],
         "message": "class 'b' of the schema is missing from the data", "value": None,
         "threshold": None},
    ]  # fmt: skip
    result = {"passed": False, "fail": 1, "warn": 1, "anomalies": anomalies, "baseline": None,
              "statistics": "s", "schema": "schema.yaml"}  # fmt: skip
    record = {
        "run_id": "r1",
        "status": "failed",
        "error": "ExampleValidator failed: 1 data anomaly fail the run",
        "components": {
            "ExampleValidator": {
                "status": "failed",
                "error": "1 data anomaly",
                "result": result,
                "output_dir": str(tmp_path),
            },  # fmt: skip
        },
    }
    html = report.render(record)
    alerts = html.index("<b>Alerts</b>")
    fail = html.index("FAIL</b> ExampleValidator: class &#x27;b&#x27; of the schema is missing")
    warn = html.index("WARN</b> ExampleValidator: train: class shares moved by 0.200")
    assert alerts < fail < warn < html.index("<h2>Data validation</h2>")
    assert "no baseline: nothing served yet" in html
