"""EXIF orientation (issue 26, defect 7): with `example_gen.exif_transpose` (the default) a JPEG
is turned as its EXIF tag says, identically in the Trainer's input pipeline and in the exported
SavedModel's `serving_default`, so a raw upright phone photo gives the pixels training saw; with
it off both ignore the tag. Malformed EXIF never fails: the pixels stay as decoded."""

from __future__ import annotations

import io
import json
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from pipeline_components.core import contract, examples
from pipeline_components.example_gen import executor as example_gen
from pipeline_components.trainer import exif, export, inputs
from pipeline_components.trainer import plan as trainer_plan
from pipeline_components.trainer.config import TrainerConfig

SIZE = (16, 16)  # the model's input: every orientation is resized to it
SOURCE = (24, 40)  # height, width of the stored (sensor) pixels: 5-8 swap them


def _pixels() -> np.ndarray:
    """Red grows to the right, green downwards: each of the 8 orientations looks different."""
    h, w = SOURCE
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], -1).astype(
        np.uint8
    )


def pillow_jpeg(orientation: int | None) -> bytes:
    """A JPEG written by Pillow, with an EXIF orientation tag (Pillow writes big-endian TIFF)."""
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        tags = Image.Exif()
        tags[0x010F] = "Phone"  # Make: an entry before the orientation, as cameras write
        tags[0x0112] = orientation
        kwargs["exif"] = tags.tobytes()
    Image.fromarray(_pixels()).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def tiff(orientation: int, little: bool = True, *, magic=42, ifd=8, count=1, kind=3, n=1) -> bytes:
    """A TIFF header and an IFD0 holding the orientation entry, written by hand."""
    e = "<" if little else ">"
    head = (b"II" if little else b"MM") + struct.pack(e + "HI", magic, ifd)
    entry = struct.pack(e + "HHIH", 0x0112, kind, count, orientation) + b"\0\0"
    return head + struct.pack(e + "H", n) + entry + struct.pack(e + "I", 0)


def with_app1(payload: bytes, jpeg: bytes | None = None, length: int | None = None) -> bytes:
    """`jpeg` (a plain one by default) with an APP1 segment holding `payload` right after SOI."""
    jpeg = jpeg or pillow_jpeg(None)
    size = len(payload) + 2 if length is None else length
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", size) + payload + jpeg[2:]


def reference(data: bytes, transpose: bool) -> np.ndarray:
    """What a viewer shows (PIL's exif_transpose), resized as decode_and_resize resizes."""
    image = Image.open(io.BytesIO(data))
    if transpose:
        image = ImageOps.exif_transpose(image)
    pixels = np.asarray(image.convert("RGB"))
    return tf.image.resize(pixels, SIZE, method="bilinear").numpy()


def pixel_model_export(path, transpose: bool) -> None:
    """A SavedModel whose `probabilities` are the decoded pixels themselves (a Flatten), so what
    serving_default decodes can be read back."""
    inp = keras.Input((*SIZE, 3))
    model = keras.Model(inp, keras.layers.Flatten()(inp))
    labels = [f"p{i}" for i in range(SIZE[0] * SIZE[1] * 3)]
    export.export_saved_model(model, str(path), labels, SIZE, exif_transpose=transpose)


def served_pixels(path, images: list[bytes]) -> np.ndarray:
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    probs = sig(images=tf.constant(images))["probabilities"].numpy()
    return probs.reshape(len(images), *SIZE, 3)


# ------------------------------------------------------------------- the tag, read in-graph


def test_every_orientation_is_read_and_applied_as_pil_does():
    orientation = tf.function(exif.orientation)
    for value in range(1, 9):
        for data in (pillow_jpeg(value), with_app1(b"Exif\0\0" + tiff(value, little=True))):
            assert int(orientation(tf.constant(data))) == value
            decoded = tf.io.decode_jpeg(data, channels=3)
            turned = exif.apply_orientation(decoded, tf.constant(value)).numpy().astype(int)
            viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
            assert turned.shape == viewer.shape
            assert np.abs(turned - viewer.astype(int)).max() <= 8  # two JPEG decoders


def _malformed() -> dict[str, bytes]:
    exif6 = b"Exif\0\0" + tiff(6)
    plain = pillow_jpeg(None)
    app2s = b"".join(b"\xff\xe2\x9c\x42" + bytes(40000) for _ in range(2))  # 80 KB of ICC
    late = with_app1(exif6)[:2] + app2s + with_app1(exif6)[2:]
    assert late.index(b"Exif") > exif.SEARCH_BYTES
    return {
        "no EXIF": plain,
        "PNG": tf.io.encode_png(_pixels()).numpy(),
        "empty": b"",
        "SOI only": b"\xff\xd8",
        "cut inside APP1": with_app1(exif6)[:14],
        "APP1 length 2": with_app1(b"", length=2),
        "APP1 length 0": with_app1(exif6, length=0),
        "APP1 shorter than its IFD": with_app1(exif6, length=20),
        "IFD offset past the end": with_app1(b"Exif\0\0" + tiff(6, ifd=0xFFFFFFF0)),
        "orientation 0": with_app1(b"Exif\0\0" + tiff(0)),
        "orientation 9": with_app1(b"Exif\0\0" + tiff(9)),
        "orientation as LONG": with_app1(b"Exif\0\0" + tiff(6, kind=4)),
        "count 2": with_app1(b"Exif\0\0" + tiff(6, count=2)),
        "byte order XX": with_app1(b"Exif\0\0XX" + tiff(6)[2:]),
        "magic 43": with_app1(b"Exif\0\0" + tiff(6, magic=43)),
        "XMP, not EXIF": with_app1(b"http://ns.adobe.com/xap/1.0/\0" + tiff(6)),
        "EXIF past the first 64 KiB": late,
    }


def test_malformed_exif_never_fails_and_reads_as_upright():
    orientation = tf.function(exif.orientation)
    for name, data in _malformed().items():
        assert int(orientation(tf.constant(data))) == 1, name
    # an IFD claiming 65535 entries: the one inside the segment is read, none past its end
    claims = with_app1(b"Exif\0\0" + tiff(6, n=0xFFFF))
    assert int(orientation(tf.constant(claims))) == 6
    app2s = b"".join(b"\xff\xe2\x00\x04ab" for _ in range(16))
    exif6 = with_app1(b"Exif\0\0" + tiff(6))
    assert int(orientation(tf.constant(exif6[:2] + app2s + exif6[2:]))) == 6  # after 16 APP2
    claims = with_app1(b"Exif\0\0" + tiff(3, n=0xFFFF)[:-6], length=8 + 8 + 2 + 6)
    assert int(orientation(tf.constant(claims))) == 1  # the entry crosses the segment's end


def test_the_serving_signature_decodes_malformed_exif_without_turning(tmp_path):
    pixel_model_export(tmp_path / "m", transpose=True)
    valid_jpegs = ("IFD offset", "orientation", "count 2", "byte", "magic", "XMP", "EXIF")
    cases = [v for k, v in _malformed().items() if k.startswith(valid_jpegs)]
    assert len(cases) == 9
    got = served_pixels(tmp_path / "m", cases)
    for pixels in got:
        np.testing.assert_allclose(pixels, reference(pillow_jpeg(None), False), atol=8)


# ------------------------------------------------- training and serving decode the same pixels


@pytest.fixture(scope="module")
def oriented_data(tmp_path_factory):
    """train/upright holds one JPEG per orientation (o1.jpg ... o8.jpg), the other folders
    plain JPEGs; ExampleGen run with exif_transpose on and off (one shard: reading order)."""
    root = tmp_path_factory.mktemp("exif")
    data = root / "data"
    for i, split in enumerate(("train", "validation", "test")):
        for j, cls in enumerate(("plain", "upright")):
            (data / split / cls).mkdir(parents=True)
            distinct = _pixels() // 2 + 10 * (2 * i + j)  # no image in two splits
            (data / split / cls / "p.png").write_bytes(tf.io.encode_png(distinct).numpy())
    for value in range(1, 9):
        (data / "train" / "upright" / f"o{value}.jpg").write_bytes(pillow_jpeg(value))
    outputs = {}
    for transpose in (True, False):
        out = root / f"examples-{transpose}"
        example_gen.run_example_gen(str(data), str(out), num_shards=1, exif_transpose=transpose)
        outputs[transpose] = str(out)
    return data, outputs


def trainer_pixels(examples_dir: str) -> dict[str, np.ndarray]:
    """{file name: pixels} of the train split as the Trainer's input pipeline yields them."""
    config = TrainerConfig(weights="none", image_size=list(SIZE), augmentation=None, epochs=1)
    plan = trainer_plan.plan_training(examples_dir, config)
    ds = inputs.make_dataset(examples_dir, "train", **dict(plan.data_args(config), batch_size=1))
    files = examples.split_files(examples_dir, "train")
    names = [
        examples.parse(r)[examples.FILENAME].numpy().decode().split("/")[-1]
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
    return {name: x[0].numpy() for name, (x, _) in zip(names, ds, strict=True)}


@pytest.mark.parametrize("transpose", [True, False])
def test_trainer_and_saved_model_see_what_a_viewer_shows(oriented_data, tmp_path, transpose):
    data, outputs = oriented_data
    stats = examples.read_stats(outputs[transpose])
    assert stats["exif_transpose"] is examples.exif_transpose(outputs[transpose]) is transpose
    assert stats["fingerprint"] != examples.read_stats(outputs[not transpose])["fingerprint"]

    seen = trainer_pixels(outputs[transpose])
    pixel_model_export(tmp_path / "m", transpose)
    jpegs = [(data / "train" / "upright" / f"o{v}.jpg").read_bytes() for v in range(1, 9)]
    served = served_pixels(tmp_path / "m", jpegs)
    for value, raw, from_serving in zip(range(1, 9), jpegs, served, strict=True):
        from_training = seen[f"o{value}.jpg"]
        # the one decoder: training and serving agree to float rounding
        np.testing.assert_allclose(from_training, from_serving, atol=1e-3)
        # ... and agree with what a viewer shows (or, off, with the stored pixels)
        np.testing.assert_allclose(from_training, reference(raw, transpose), atol=8)
        if value != 1:  # and the tag made a difference: upright is not the stored way round
            assert np.abs(reference(raw, True) - reference(raw, False)).mean() > 20

    recorded = json.loads((tmp_path / "m" / "assets" / "preprocessing.json").read_text())
    assert recorded["exif_transpose"] is transpose


def test_a_change_of_the_setting_is_noted_in_the_contract_never_refused(tmp_path):
    """Clients send the same bytes either way, so turning EXIF orientation on is no contract
    change (an upgraded pipeline's first push is not refused), but the push records it."""
    pixel_model_export(tmp_path / "on", True)
    pixel_model_export(tmp_path / "off", False)
    compared = contract.compare(str(tmp_path / "off"), str(tmp_path / "on"))
    assert compared["differences"] == []
    noted = ["preprocessing 'exif_transpose' False -> True (same request; not refused)"]
    assert compared["notes"] == noted
    # a model exported before the key ignored EXIF: the same as false
    path = tmp_path / "off" / "assets" / "preprocessing.json"
    old = json.loads(path.read_text())
    del old["exif_transpose"]
    path.write_text(json.dumps(old))
    assert contract.compare(str(tmp_path / "off"), str(tmp_path / "on"))["notes"] == noted
    assert contract.compare(str(tmp_path / "on"), str(tmp_path / "on"))["notes"] == []
