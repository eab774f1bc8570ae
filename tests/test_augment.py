"""RandomAffine: tf_keras ImageDataGenerator's augmentation as one matrix per image and one
resampling op per batch. The reference is tf_keras itself (its scipy path, order=1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_keras.preprocessing.image import ImageDataGenerator
from tf_keras.src.preprocessing import image as tf_keras_image

from pipeline_components.trainer import augment, inputs
from pipeline_components.trainer.config import AugmentationConfig

NOTEBOOK = AugmentationConfig()  # rotation 40, shifts 0.2, shear 0.2 deg, zoom 0.2, flip
PARAMS = {"theta": 30.0, "tx": 3.3, "ty": -1.65, "shear": 15.0, "zx": 0.9, "zy": 1.1}
OFF = {
    "rotation_range": 0,
    "width_shift_range": 0,
    "height_shift_range": 0,
    "shear_range": 0,
    "zoom_range": 0,
    "horizontal_flip": False,
}
IDENTITY = {"theta": 0, "tx": 0, "ty": 0, "shear": 0, "zx": 1, "zy": 1, "flip": 0}


def _image(h=33, w=33, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)


def _ours(x, params, flip=False, resampler="xla"):
    batch = {k: tf.constant([v], tf.float32) for k, v in params.items()}
    matrices = augment.affine_transforms(
        **batch, flip=tf.constant([float(flip)]), height=x.shape[0], width=x.shape[1]
    )
    return matrices, augment.RESAMPLERS[resampler](x[None], matrices)[0].numpy()


def _layer(seed=1, **ranges):
    return augment.RandomAffine(**{**OFF, **ranges}, seed=seed)


def test_matrix_is_image_data_generator_matrix(monkeypatch):
    """The matrix tf_keras hands to scipy (in (row, col) order) is ours with x and y swapped."""
    seen = []
    scipy_affine = tf_keras_image.ndimage.interpolation.affine_transform

    def spy(x, matrix, offset, **kw):
        seen.append((np.array(matrix), np.array(offset), kw))
        return scipy_affine(x, matrix, offset, **kw)

    monkeypatch.setattr(tf_keras_image.ndimage.interpolation, "affine_transform", spy)
    x = _image()
    ImageDataGenerator().apply_transform(x, PARAMS)
    matrix, offset, kw = seen[0]  # the same for all three channels
    assert (kw["order"], kw["mode"]) == (1, "nearest")  # bilinear, fill 'nearest'
    ours = np.reshape(np.append(_ours(x, PARAMS)[0].numpy()[0], 1.0), (3, 3))
    swap = [1, 0]
    np.testing.assert_allclose(ours[:2, :2][swap][:, swap], matrix, atol=1e-6)
    np.testing.assert_allclose(ours[:2, 2][swap], offset, atol=1e-5)


@pytest.mark.parametrize("resampler", sorted(augment.RESAMPLERS))
@pytest.mark.parametrize("flip", [False, True])
def test_pixels_equal_image_data_generator_apply_transform(flip, resampler):
    """One op, all transforms, flip after the affine: equal to ImageDataGenerator's output
    everywhere, borders included (both bilinear with edge-clamping)."""
    x = _image()
    expected = ImageDataGenerator().apply_transform(x, {**PARAMS, "flip_horizontal": flip})
    _, out = _ours(x, PARAMS, flip, resampler)
    np.testing.assert_allclose(out, expected, atol=5e-3)  # float32 rounding on 0..255


def test_xla_resampler_equals_the_tf_op():
    """Wide ranges, so that many source pixels fall outside the image (fill 'nearest')."""
    x = np.stack([_image(24, 40, seed=i) for i in range(32)])
    wide = {"rotation_range": 180, "width_shift_range": 0.9, "height_shift_range": 0.9}
    layer = _layer(**wide, shear_range=60, zoom_range=0.9, horizontal_flip=True)
    n, h, w = 32, 24, 40
    matrices = augment.affine_transforms(
        **layer.sample(n, h, w, tf.constant([1, 2])), height=h, width=w
    )
    np.testing.assert_allclose(
        augment.xla_affine_transform(x, matrices),
        augment.projective_transform(x, matrices),
        atol=5e-3,
    )


def test_flip_only_mirrors_or_keeps_each_image():
    x = np.stack([_image(seed=i) for i in range(16)])
    out = _layer(horizontal_flip=True)(x).numpy()
    mirrored = [np.allclose(o, i[:, ::-1], atol=1e-4) for o, i in zip(out, x, strict=True)]
    kept = [np.allclose(o, i, atol=1e-4) for o, i in zip(out, x, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 16


def test_rotation_only_turns_about_the_centre():
    x = np.stack([_image(seed=i) for i in range(8)])
    out = _layer(rotation_range=40)(x).numpy()
    np.testing.assert_allclose(out[:, 16, 16], x[:, 16, 16], atol=1e-3)  # centre stays
    assert not np.allclose(out[:, 0, 0], x[:, 0, 0], atol=1)  # corners move


def test_shifts_move_only_their_own_axis():
    ramp = np.arange(33, dtype=np.float32)
    x_ramp = np.broadcast_to(ramp[None, :, None], (33, 33, 3))  # value = column
    y_ramp = np.broadcast_to(ramp[:, None, None], (33, 33, 3))  # value = row
    x = np.stack([x_ramp, y_ramp] * 4)
    width = _layer(width_shift_range=0.2)(x).numpy()
    np.testing.assert_allclose(width[1::2], x[1::2], atol=1e-4)  # rows untouched
    assert not np.allclose(width[0::2], x[0::2], atol=0.1)
    height = _layer(height_shift_range=0.2)(x).numpy()
    np.testing.assert_allclose(height[0::2], x[0::2], atol=1e-4)  # columns untouched
    assert not np.allclose(height[1::2], x[1::2], atol=0.1)


@pytest.mark.parametrize(
    "ranges, drawn",
    [
        ({"rotation_range": 40}, {"theta"}),
        ({"width_shift_range": 0.2}, {"tx"}),
        ({"height_shift_range": 0.2}, {"ty"}),
        ({"shear_range": 0.2}, {"shear"}),
        ({"zoom_range": 0.2}, {"zx", "zy"}),
        ({"horizontal_flip": True}, {"flip"}),
        (OFF, set()),
    ],
)
def test_each_switch_draws_only_its_own_parameters(ranges, drawn):
    params = _layer(**ranges).sample(256, 224, 224, tf.constant([3, 4], tf.int64))
    for name, values in params.items():
        identity = np.allclose(values.numpy(), IDENTITY[name])
        assert identity == (name not in drawn), name


def test_draws_respect_the_ranges():
    n = 20_000
    layer = augment.RandomAffine(**vars(NOTEBOOK), seed=0)
    p = {k: v.numpy() for k, v in layer.sample(n, 224, 160, tf.constant([5, 6])).items()}

    def uniform(values, lo, hi):
        assert lo <= values.min() < lo + (hi - lo) * 0.01
        assert hi - (hi - lo) * 0.01 < values.max() <= hi
        assert values.mean() == pytest.approx((lo + hi) / 2, abs=(hi - lo) * 0.01)
        assert values.std() == pytest.approx((hi - lo) / 12**0.5, rel=0.02)

    uniform(p["theta"], -40, 40)  # degrees
    uniform(p["tx"], -0.2 * 160, 0.2 * 160)  # pixels of the width (160)
    uniform(p["ty"], -0.2 * 224, 0.2 * 224)  # pixels of the height (224)
    uniform(p["shear"], -0.2, 0.2)  # degrees
    uniform(p["zx"], 0.8, 1.2)
    uniform(p["zy"], 0.8, 1.2)
    assert abs(np.corrcoef(p["zx"], p["zy"])[0, 1]) < 0.03  # independent
    assert set(np.unique(p["flip"])) == {0.0, 1.0}
    assert p["flip"].mean() == pytest.approx(0.5, abs=0.01)


def test_deterministic_per_key_and_different_across_keys():
    x = np.stack([_image(seed=i) for i in range(4)])
    layer = augment.RandomAffine(**vars(NOTEBOOK))
    key = tf.constant([7, 8], tf.int64)
    a, b = layer(x, seed=key).numpy(), layer(x, seed=key).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, layer(x, seed=tf.constant([7, 9], tf.int64)).numpy())
    # without a key: the layer's seed generator, the same sequence for the same seed
    first = augment.RandomAffine(**vars(NOTEBOOK), seed=3)
    again = augment.RandomAffine(**vars(NOTEBOOK), seed=3)
    one, two = first(x).numpy(), first(x).numpy()
    np.testing.assert_array_equal(one, again(x).numpy())
    assert not np.allclose(one, two)  # the next call draws anew
    np.testing.assert_array_equal(layer(x, training=False), x)  # inference: untouched


def test_pipeline_draws_differ_across_batches_and_epochs():
    """Per-batch keys from a seeded stream: every batch and every epoch gets new draws; a new
    dataset with the same seed repeats them."""
    x = np.repeat(_image(16, 16)[None], 4, axis=0)  # the same image everywhere

    def dataset(seed):
        augmenter = inputs.make_augmenter(NOTEBOOK, seed)
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        images = tf.data.Dataset.from_tensors(x).repeat(3)
        return tf.data.Dataset.zip(images, keys).map(augmenter)

    ds = dataset(5)
    epoch1, epoch2 = [b.numpy() for b in ds], [b.numpy() for b in ds]
    assert not np.allclose(epoch1[0], epoch1[1])  # batches differ
    assert not np.allclose(epoch1[0], epoch2[0])  # epochs differ
    np.testing.assert_array_equal(epoch1, [b.numpy() for b in dataset(5)])


@pytest.mark.parametrize("resampler", sorted(augment.RESAMPLERS))
def test_one_resampling_op_per_batch(resampler):
    layer = augment.RandomAffine(**vars(NOTEBOOK), resampler=resampler)
    graph = (
        tf.function(lambda x, key: layer(x, seed=key))
        .get_concrete_function(
            tf.TensorSpec([None, 32, 32, 3], tf.float32), tf.TensorSpec([2], tf.int64)
        )
        .graph
    )
    ops = graph.get_operations()
    nested = [n for f in graph._functions.values() for n in f.definition.node_def]
    types = [op.type for op in ops] + [n.op for n in nested]
    assert not {"While", "StatelessWhile", "MapDataset"} & set(types)  # no per-image loop
    calls = [op for op in ops if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    if resampler == "projective":
        assert types.count("ImageProjectiveTransformV3") == 1 and calls == []
    else:  # one XLA-compiled call, whose only data movement is GatherV2
        assert [c.node_def.attr["_XlaMustCompile"].b for c in calls] == [True]
        assert "ImageProjectiveTransformV3" not in types and "GatherV2" in types


def test_layer_serializes():
    layer = augment.RandomAffine(**vars(NOTEBOOK), seed=4, name="aug")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is augment.RandomAffine
    assert restored.get_config() == layer.get_config()
    x = np.stack([_image()] * 2)
    key = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(layer(x, seed=key), restored(x, seed=key))
