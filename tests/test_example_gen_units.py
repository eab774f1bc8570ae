"""ExampleGen pieces without a full run: the image check, CLI flag splitting, and the reusable
PTransforms in memory (TestPipeline + assert_that) on real files."""

from __future__ import annotations

import io

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipeline_components.core import beam as core_beam
from pipeline_components.core import commandline
from pipeline_components.core.artifacts import SPLITS
from pipeline_components.core.config import section_from_dict
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen import component as example_gen_spec
from pipeline_components.example_gen import convert, image_check, layout, shards
from pipeline_components.example_gen import executor as example_gen
from pipeline_components.example_gen.config import ExampleGenConfig
from pipeline_components.example_gen.convert import FileResult
from pipeline_components.example_gen.layout import SourceFile

# kind -> (stored image/format, channels as tf.io.decode_image(channels=0) reports them)
KEPT_KINDS = {
    "jpeg": ("jpeg", 3),
    "jpeg-progressive": ("jpeg", 3),
    "jpeg-gray": ("jpeg", 1),
    "png": ("png", 3),
    "png-rgba": ("png", 4),
    "png-palette": ("png", 3),
    "png-gray": ("png", 1),
    "png-16bit": ("png", 1),
    "gif": ("gif", 3),
    "gif-animated": ("gif", 3),
    "bmp": ("bmp", 3),
    "webp": ("png", 3),  # re-encoded: the serving input check excludes WebP
}


def image_bytes(kind: str, size=(32, 32), seed: int = 0) -> bytes:
    """A real encoded image of the given kind, made with Pillow."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    if kind == "jpeg":
        rgb.save(buf, "JPEG", quality=90)
    elif kind == "jpeg-progressive":
        rgb.save(buf, "JPEG", progressive=True)
    elif kind == "jpeg-gray":
        rgb.convert("L").save(buf, "JPEG")
    elif kind == "png":
        rgb.save(buf, "PNG")
    elif kind == "png-rgba":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)))
        rgba.save(buf, "PNG")
    elif kind == "png-palette":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
    elif kind == "png-gray":
        rgb.convert("L").save(buf, "PNG")
    elif kind == "png-16bit":
        deep = rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16)
        Image.fromarray(deep).save(buf, "PNG")
    elif kind == "gif":
        rgb.convert("P").save(buf, "GIF")
    elif kind == "gif-animated":
        frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    elif kind == "bmp":
        rgb.save(buf, "BMP")
    elif kind == "bmp-1bit":  # valid BMP that Pillow reads but tf.io.decode_image rejects
        rgb.convert("1").save(buf, "BMP")
    elif kind == "webp":
        rgb.save(buf, "WEBP", quality=80)
    elif kind == "tiff":
        rgb.save(buf, "TIFF")
    else:
        raise ValueError(kind)
    return buf.getvalue()


def test_crafted_images_are_the_variants_they_claim():
    assert b"\xff\xc2" in image_bytes("jpeg-progressive")  # SOF2: progressive
    assert b"\xff\xc2" not in image_bytes("jpeg")
    assert Image.open(io.BytesIO(image_bytes("png-16bit"))).mode == "I;16"
    assert Image.open(io.BytesIO(image_bytes("png-palette"))).mode == "P"
    assert Image.open(io.BytesIO(image_bytes("gif-animated"))).n_frames == 2


@pytest.mark.parametrize("kind", sorted(KEPT_KINDS))
def test_check_image_keeps_supported_variant(kind):
    data = image_bytes(kind)
    stored = image_check.check_image(f"cats/x.{kind}", data)
    fmt, channels = KEPT_KINDS[kind]
    assert (stored.fmt, stored.height, stored.width, stored.channels) == (fmt, 32, 32, channels)
    assert stored.source_fmt == kind.split("-")[0]
    # what the Trainer and serving do with the stored bytes must work
    pixels = tf.io.decode_image(stored.encoded, channels=3, expand_animations=False)
    assert pixels.shape == (32, 32, 3)
    if kind == "webp":  # lossless PNG of exactly the pixels TF decodes from the WebP
        original = tf.io.decode_image(data, channels=0, expand_animations=False)
        np.testing.assert_array_equal(tf.io.decode_png(stored.encoded).numpy(), original.numpy())
    else:
        assert stored.encoded == data


def test_format_is_sniffed_from_bytes_not_extension():
    assert image_check.sniff_format(image_bytes("png")) == "png"
    stored = image_check.check_image("cats/photo.jpg", image_bytes("png"))
    assert stored.fmt == "png"
    assert image_check.sniff_format(image_bytes("tiff")) == "tiff"
    assert image_check.sniff_format(b"BMW service notes") is None


@pytest.mark.parametrize(
    "name,data,reason,bad",
    [
        ("empty.jpg", b"", "empty file (0 bytes)", True),
        ("cut.jpg", image_bytes("jpeg")[:300], "undecodable jpeg", True),
        ("cut.png", image_bytes("png")[:-20], "undecodable png", True),
        ("cut.gif", image_bytes("gif")[:100], "undecodable gif", True),
        ("mono.bmp", image_bytes("bmp-1bit"), "undecodable bmp", True),
        ("notes.jpg", b"just some text\n", "not an image (unrecognized content)", True),
        ("README.txt", b"about this data\n", "not an image (.txt file)", False),
        ("scan.tiff", image_bytes("tiff"), "unsupported image format tiff", True),
    ],
)
def test_check_image_skip_reasons(name, data, reason, bad):
    with pytest.raises(image_check.SkipFile) as info:
        image_check.check_image(f"cats/{name}", data)
    assert info.value.reason.startswith(reason)
    assert info.value.bad is bad
    assert "\n" not in info.value.reason and "{{" not in info.value.reason


@pytest.mark.parametrize(
    "parts,reason",
    [
        (["cats", ".DS_Store"], "hidden or system file"),
        (["cats", "Thumbs.db"], "hidden or system file"),
        (["cats", ".x.jpg"], "hidden or system file"),
        ([".ipynb_checkpoints", "x.jpg"], "hidden or system file"),
        (["__MACOSX", "cats", "x.jpg"], "hidden or system file"),
        (["README.txt"], "not inside a class folder"),
        (["cats", "x.jpg"], None),
        (["cats", "sub dir", "Ünïcode x.JPG"], None),
    ],
)
def test_name_skip_reason(parts, reason):
    assert image_check.name_skip_reason(parts) == reason


def test_large_images_are_stored_as_they_are():
    """No downscaled re-encode: the stored bytes are what clients send (no train/serve skew)."""
    big = image_bytes("png-rgba", size=(800, 600))
    stored = image_check.check_image("c/big.png", big)
    assert (stored.encoded, stored.fmt, stored.width, stored.height) == (big, "png", 800, 600)


def test_hashes_are_stable_across_versions_and_machines():
    # Pinned values: a change here reshuffles every split and shard (and every cache key).
    assert layout.unit_hash("train/cats/0001.jpg") == pytest.approx(0.474249, abs=1e-6)
    placed = [layout.shard_index(f"train/c/{i}.jpg", 4) for i in range(8)]
    assert placed == [2, 3, 0, 1, 2, 1, 0, 3]
    order = sorted(range(6), key=lambda i: layout.record_order(_src(f"train/c/{i}.jpg", "")))
    assert order == [2, 3, 0, 4, 5, 1]  # place inside a shard: another stable hash of the path
    assert shards.shard_name("test", 2, 4) == "test/examples-00002-of-00004.tfrecord.gz"


def parse(*argv: str):
    """example-gen's command line, parsed (its flags are generated from ExampleGenConfig)."""
    return commandline.parse(example_gen_spec.COMPONENT, argv)


def test_parse_args_passes_beam_args_through(capsys):
    cmd = parse(
        "--data-root",
        "d",
        "--output",
        "o",
        "--num-shards",
        "2",
        "--runner=DirectRunner",
        "--",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert (cmd.pipeline.data_root, cmd.output, cmd.config.num_shards) == ("d", "o", 2)
    assert cmd.config.beam_args == [
        "--runner=DirectRunner",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    ]
    # a Beam option before -- is the old spelling: it works, and says so
    assert "Beam options before -- is deprecated" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="unknown option --num-shardz"):
        parse("--data-root", "d", "--output", "o", "--num-shardz", "2")
    with pytest.raises(PipelineError, match="did you mean --validation-fraction"):
        parse("--data-root", "d", "--output", "o", "--validation-fractoin", "0.1")


def test_parameters_are_validated():
    with pytest.raises(PipelineError, match="--num-shards must be >= 1"):
        example_gen.run_example_gen("d", "o", num_shards=0)
    with pytest.raises(PipelineError, match="--max-image-pixels must be >= 1"):
        example_gen.run_example_gen("d", "o", max_image_pixels=0)
    assert parse("--data-root", "d", "--output", "o").config.max_image_pixels == 40_000_000
    with pytest.raises(PipelineError, match="--validation-fraction must be in"):
        example_gen.run_example_gen("d", "o", validation_fraction=1.0)


# ---------------------------------------------------------------- DirectRunner mode by input size


def test_direct_mode_threshold_is_a_ranged_config_option():
    cfg = ExampleGenConfig()
    assert cfg.multi_processing_min_files == core_beam.DEFAULT_MULTI_PROCESSING_MIN_FILES
    cmd = parse("--data-root", "d", "--output", "o", "--multi-processing-min-files", "5")
    assert cmd.config.multi_processing_min_files == 5
    with pytest.raises(PipelineError, match="multi_processing_min_files"):
        section_from_dict(ExampleGenConfig, {"multi_processing_min_files": -1}, "example_gen")
    with pytest.raises(PipelineError, match="--multi-processing-min-files must be >= 0"):
        example_gen.run_example_gen("d", "o", multi_processing_min_files=-1)


# ---------------------------------------------------------------- PTransforms in memory


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _read_tfrecord_gz(path) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


def _parse(serialized: bytes) -> tuple:
    f = tf.train.Example.FromString(serialized).features.feature
    return (
        f["image/filename"].bytes_list.value[0].decode(),
        f["image/class/text"].bytes_list.value[0].decode(),
        f["image/class/label"].int64_list.value[0],
        f["image/format"].bytes_list.value[0].decode(),
        f["image/channels"].int64_list.value[0],
        f["image/encoded"].bytes_list.value[0],
    )


def test_convert_file_reads_checks_and_builds_the_example(tmp_path):
    _write(tmp_path / "train/dogs/döggo.png", image_bytes("png-gray"))
    src = SourceFile("train/dogs/döggo.png", "train", "validation", 1)
    result, example = convert.convert_file(str(tmp_path), ["cats", "dogs"], src)
    data = (tmp_path / src.relpath).read_bytes()
    assert result == FileResult(
        src.relpath, "train", "validation", 1, image_check.sha256_hex(data), "", False, "png", "png"
    )
    assert _parse(example) == ("train/dogs/döggo.png", "dogs", 1, "png", 1, data)
    (tmp_path / src.relpath).write_bytes(data[:50])
    result, example = convert.convert_file(str(tmp_path), ["cats", "dogs"], src)
    assert example is None and result.reason.startswith("undecodable png") and result.bad


def test_convert_shards_transform_writes_deterministic_shards(tmp_path):
    data_root, out = tmp_path / "data", tmp_path / "out"
    rels = [f"train/cats/{i} cat.JPG" for i in range(6)] + ["test/cats/t.jpg"]
    for i, rel in enumerate(rels):
        _write(data_root / rel, image_bytes("jpeg", seed=i))
    _write(data_root / "train/dogs/.DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(data_root / "train/dogs/zero.jpg", b"")
    sources = [SourceFile(r, r.split("/")[0], r.split("/")[0], 0) for r in rels]
    sources += [
        SourceFile(f"train/dogs/{n}", "train", "train", 1) for n in (".DS_Store", "zero.jpg")
    ]
    with test_pipeline.TestPipeline() as p:
        results = (
            p
            | beam.Create(list(reversed(sources)))
            | convert.ConvertShards(str(data_root), ["cats", "dogs"], str(out), SPLITS, 2)
        )
        assert_that(
            results | beam.Map(lambda r: (r.relpath, r.split, r.reason, r.bad, r.fmt)),
            equal_to(
                [(r, r.split("/")[0], "", False, "jpeg") for r in rels]
                + [
                    ("train/dogs/.DS_Store", "train", "hidden or system file", False, ""),
                    ("train/dogs/zero.jpg", "train", "empty file (0 bytes)", True, ""),
                ]
            ),
        )
    shard_files = sorted(str(p.relative_to(out)) for p in out.rglob("*.tfrecord.gz"))
    assert shard_files == sorted(  # every shard of every split, including empty ones
        f"{split}/examples-0000{i}-of-00002.tfrecord.gz" for split in SPLITS for i in range(2)
    )
    written = []
    for name in shard_files:
        split, index = name.split("/")[0], int(name.split("-")[1])
        records = [_parse(r) for r in _read_tfrecord_gz(out / name)]
        # hash order, not path order: classes interleave along a shard, same on every runner
        assert [r[0] for r in records] == sorted(
            (r[0] for r in records), key=lambda rel: layout.unit_hash("order:" + rel)
        )
        assert all(layout.shard_index(r[0], 2) == index for r in records)
        assert all(r[0].startswith(split + "/") for r in records)
        written += records
    assert sorted(r[0] for r in written) == sorted(rels)
    assert all(r[5] == (data_root / r[0]).read_bytes() and r[1] == "cats" for r in written)


def _src(relpath, folder_split):
    return SourceFile(relpath, folder_split, folder_split, 0)


def test_assign_splits_transform_carves_by_path_hash():
    sources = [_src(f"train/c/{i}.jpg", "train") for i in range(200)]
    sources += [_src(f"test/c/{i}.jpg", "test") for i in range(20)]
    expected_validation = sorted(
        s.relpath
        for s in sources
        if s.folder_split == "train" and layout.unit_hash(s.relpath) < 0.25
    )
    assert 30 < len(expected_validation) < 70  # the hash spreads paths evenly
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(sources) | convert.AssignSplits(0.25)
        validation = (
            out
            | beam.Filter(lambda s: s.split == "validation")
            | beam.Map(lambda s: (s.relpath, s.folder_split))
        )
        assert_that(
            validation,
            equal_to([(path, "train") for path in expected_validation]),
            label="Carved",
        )
        counts = out | beam.Map(lambda s: s.split) | beam.combiners.Count.PerElement()
        assert_that(
            counts,
            equal_to(
                [
                    ("train", 200 - len(expected_validation)),
                    ("validation", len(expected_validation)),
                    ("test", 20),
                ]
            ),
            label="Counts",
        )
    # no carving when a validation folder exists
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(sources[:10]) | convert.AssignSplits(None)
        assert_that(out | beam.Map(lambda s: s.split), equal_to(["train"] * 10))


def test_decompression_bombs_are_skipped_as_too_large_before_decoding(tmp_path):
    import serving_models as testing

    bombs = {
        "png.png": (testing.png_bomb(23_000), "too large: 23000x23000 > 40000000 pixels"),
        "jpeg.jpg": (
            testing.jpeg_claiming(60_000, 60_000),
            "too large: 60000x60000 > 40000000 pixels",
        ),
        "gif.gif": (
            testing.gif_image((65_535, 65_535)),
            "too large: 65535x65535 > 40000000 pixels",
        ),
        "frames.gif": (
            testing.gif_image((4000, 4000), [(4000, 4000)] * 3),
            "too large: 3 frames of up to 4000x4000 (48000000 pixels) > 40000000 pixels",
        ),
    }
    for name, (data, reason) in bombs.items():
        _write(tmp_path / "train/dogs" / name, data)
        src = SourceFile(f"train/dogs/{name}", "train", "train", 1)
        result, example = convert.convert_file(str(tmp_path), ["cats", "dogs"], src)
        assert example is None and result.bad and result.reason == reason, name
    # the limit is a parameter: a 32x32 image is "too large" for 1023 pixels, not for 1024
    small = image_bytes("png-gray")
    with pytest.raises(image_check.SkipFile, match="too large: 32x32 > 1023 pixels"):
        image_check.check_image("a/b.png", small, max_image_pixels=1023)
    assert image_check.check_image("a/b.png", small, max_image_pixels=1024).width == 32
