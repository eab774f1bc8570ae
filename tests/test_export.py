"""export.py: the SavedModel contract every consumer (Evaluator, server, clients) relies on."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline_components.core import artifacts
from pipeline_components.trainer import export


def _encoded(fmt, size=(20, 30), seed=0):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _tiny_model(n_out, activation):
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(n_out, activation=activation)(x))


@pytest.fixture(scope="module")
def images():
    return [_encoded(fmt, seed=i) for i, fmt in enumerate(["JPEG", "PNG", "BMP", "GIF"])]


def test_binary_sigmoid_export_signatures_and_parity(tmp_path, images):
    model = _tiny_model(1, "sigmoid")
    out = tmp_path / "sm"
    export.export_saved_model(model, str(out), ["cat", "dog"], (16, 16), warmup_images=images[:2])
    loaded = tf.saved_model.load(str(out))
    assert set(loaded.signatures) == {"serving_default", "predict_pixels"}
    sig = loaded.signatures["serving_default"]
    assert sig.structured_input_signature[1]["images"].dtype == tf.string
    outputs = {k: v.numpy() for k, v in sig(images=tf.constant(images)).items()}
    assert outputs["probabilities"].shape == (4, 2)
    assert outputs["probabilities"].dtype == np.float32
    assert outputs["class_ids"].dtype == np.int64
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    pixels = tf.stack([export.decode_and_resize(tf.constant(i), (16, 16)) for i in images])
    p = model(pixels).numpy().ravel()
    np.testing.assert_allclose(outputs["probabilities"][:, 1], p, atol=1e-6)
    np.testing.assert_allclose(outputs["scores"], np.maximum(p, 1 - p), atol=1e-6)
    names = np.array(["cat", "dog"])[(p > 0.5).astype(int)]
    assert [c.decode() for c in outputs["classes"]] == list(names)
    px = loaded.signatures["predict_pixels"](pixels=pixels)
    np.testing.assert_allclose(px["probabilities"].numpy(), outputs["probabilities"], atol=1e-6)
    assert (out / "assets" / "labels.txt").read_text() == "cat\ndog\n"
    assert artifacts.read_labels_asset(str(out)) == ["cat", "dog"]
    # nothing but the final directory is left next to it
    assert [p.name for p in tmp_path.iterdir()] == ["sm"]


def test_softmax_export_and_non_image_is_invalid_argument(tmp_path, images):
    model = _tiny_model(3, "softmax")
    out = tmp_path / "sm"
    export.export_saved_model(model, str(out), ["a", "b", "c"], (16, 16))
    sig = tf.saved_model.load(str(out)).signatures["serving_default"]
    res = sig(images=tf.constant(images[:1]))
    assert res["probabilities"].shape == (1, 3)
    assert not (out / "assets.extra").exists()  # no warmup images given
    with pytest.raises(tf.errors.InvalidArgumentError, match="not an encoded JPEG, PNG"):
        sig(images=tf.constant([images[0], b"hello, not an image"]))


def test_warmup_file_is_prediction_log(tmp_path, images):
    from tensorflow_serving.apis import prediction_log_pb2

    export.export_saved_model(
        _tiny_model(1, "sigmoid"), str(tmp_path / "sm"), ["x", "y"], (16, 16), images[:3]
    )
    path = tmp_path / "sm" / "assets.extra" / "tf_serving_warmup_requests"
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(record.numpy())
        logs.append(entry)
    assert len(logs) == 4  # three single-image requests + one batch of all
    req = logs[-1].predict_log.request
    assert req.model_spec.signature_name == "serving_default"
    assert list(tf.make_ndarray(req.inputs["images"])) == images[:3]


def test_failed_export_leaves_nothing_behind(tmp_path):
    class Boom(keras.layers.Layer):
        def call(self, x, training=None):
            raise RuntimeError("boom while tracing")

    model = Boom()
    model.build((None, 16, 16, 3))
    with pytest.raises(RuntimeError, match="boom"):
        export.export_saved_model(model, str(tmp_path / "sm"), ["x", "y"], (16, 16))
    assert list(tmp_path.iterdir()) == []


def _animated_gif(frames: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(frames)
    images = [
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(frames)
    ]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:])
    return buf.getvalue()


def test_graph_header_sizes_equal_the_python_reader(images):
    """export.image_header (in the SavedModel) and image_header.read_header (ExampleGen, the
    server's batching) read the same sizes, bombs included, without decoding."""
    import serving_models as testing

    from pipeline_components.core import image_header

    header = tf.function(export.image_header)
    cases = [
        *images,
        _animated_gif(5),
        testing.png_bomb(23_000),
        testing.gif_image((65_535, 65_535)),
        testing.gif_image((1, 1), [(65_535, 65_535), (300, 200)]),
        testing.jpeg_claiming(60_000, 60_000),
    ]
    for data in cases:
        fmt, height, width, pixels = header(tf.constant(data)).numpy().tolist()
        expected = image_header.read_header(data)
        assert ["jpeg", "png", "gif", "bmp"][fmt] == expected.fmt
        assert (height, width, pixels) == (expected.height, expected.width, expected.pixels)
    assert header(tf.constant(b"plain text")).numpy().tolist() == [-1, 0, 0, 0]


def test_pixel_limit_is_configurable_and_recorded_in_the_saved_model(tmp_path, images):
    out = tmp_path / "sm"
    model = _tiny_model(1, "sigmoid")
    export.export_saved_model(model, str(out), ["x", "y"], (16, 16), max_image_pixels=600)
    assert artifacts.read_max_image_pixels(str(out)) == 600
    sig = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert sig(images=tf.constant(images))["scores"].shape == (4,)  # 20x30 = 600 pixels each
    gif = _animated_gif(6)  # 6 frames of 12x10 = 720 pixels decoded
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        sig(images=tf.constant([images[0], gif]))
    assert "element 1 is 12x10 pixels (720 to decode), over the limit of 600 pixels" in str(
        err.value
    )
    assert sig(images=tf.constant([], tf.string))["scores"].shape == (0,)

    default = tmp_path / "default"
    export.export_saved_model(model, str(default), ["x", "y"], (16, 16))
    assert artifacts.read_max_image_pixels(str(default)) == 40_000_000
    with pytest.raises(ValueError, match="max_image_pixels must be an integer >= 1"):
        export.export_saved_model(
            model, str(tmp_path / "bad"), ["x", "y"], (16, 16), None, max_image_pixels=0
        )
