"""Trainer building blocks without training: model, weights, freezing, augmentation, tf.data, CLI
errors. 32x32 images, `weights: none` (no download)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline_components import cli
from pipeline_components.core import examples
from pipeline_components.core.component import load_for_cli
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.tools import sample_data
from pipeline_components.trainer import executor as trainer
from pipeline_components.trainer import inputs, model
from pipeline_components.trainer.component import AugmentationConfig, TrainerConfig
from pipeline_components.trainer.export import decode_and_resize

SMALL = {"weights": "none", "image_size": [32, 32]}


@pytest.fixture(scope="module")
def shapes_examples(tmp_path_factory):
    """ExampleGen output of 3 classes, 8/4/4 images per class, 32x32 JPEGs, 2 shards."""
    root = tmp_path_factory.mktemp("shapes")
    sample_data.generate(str(root / "data"), ("circles", "squares", "stripes"), (8, 4, 4), (32, 32))
    run_example_gen(str(root / "data"), str(root / "examples"), num_shards=2)
    return str(root / "examples")


def test_notebook_model_trains_only_the_head():
    """224x224 VGG19, Flatten + Dense(1, sigmoid): 7*7*512 + 1 = 25,089 trainable parameters."""
    net = model.create_model(TrainerConfig(weights="none"), num_classes=2)
    backbone = net.get_layer(model.BACKBONE)
    assert net.input_shape == (None, 224, 224, 3)
    assert net.output_shape == (None, 1)
    assert model.count_params(net.trainable_weights) == 25_089
    assert not backbone.trainable and backbone.trainable_weights == []
    assert model.count_params(backbone.weights) == 20_024_384  # VGG19 without its top
    assert [w.path for w in net.trainable_weights] == [
        w.path for w in net.get_layer(model.HEAD).weights
    ]


@pytest.mark.parametrize("backbone", ["vgg19", "resnet50"])
def test_preprocess_input_is_inside_the_model_and_head_reads_features(backbone):
    keras.utils.set_random_seed(0)
    net = model.create_model(TrainerConfig(backbone=backbone, head="global_average", **SMALL), 3)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    prep = getattr(keras.applications, backbone).preprocess_input(pixels.copy())
    features = net.get_layer(model.BACKBONE)(prep, training=False)
    expected = net.get_layer(model.HEAD)(features).numpy()
    probs = net(pixels, training=False).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # softmax over 3 classes
    # the cache path's feature extractor shares the same layers
    cached = model.feature_extractor(net)(pixels).numpy()
    np.testing.assert_allclose(cached, features.numpy(), atol=1e-5)


def test_backbones_have_their_own_default_size_and_unknown_names_are_errors():
    assert model.image_size_for("vgg19", None) == (224, 224)
    assert model.image_size_for("resnet50", None) == (224, 224)
    assert model.image_size_for("inception_v3", None) == (299, 299)
    assert model.image_size_for("resnet50", [64, 48]) == (64, 48)
    with pytest.raises(PipelineError, match="trainer.backbone: unknown backbone 'vgg20'.*vgg19"):
        model.backbone_spec("vgg20")
    with pytest.raises(PipelineError, match="trainer.image_size"):
        model.create_model(TrainerConfig(weights="none", image_size=[16, 16]), 2)


def test_fine_tune_from_unfreezes_exactly_that_layer_onward():
    net = model.create_model(TrainerConfig(**SMALL), 2)
    backbone = net.get_layer(model.BACKBONE)
    head_params = model.count_params(net.trainable_weights)
    unfrozen = model.unfreeze_from(net, "block5_conv1")
    assert unfrozen == [
        "block5_conv1",
        "block5_conv2",
        "block5_conv3",
        "block5_conv4",
        "block5_pool",
    ]
    trainable = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4"}
    block5 = sum(
        model.count_params(backbone.get_layer(f"block5_conv{i}").weights) for i in range(1, 5)
    )
    assert model.count_params(net.trainable_weights) == head_params + block5
    assert not backbone.get_layer("block4_conv4").trainable


def test_unknown_fine_tune_layer_is_one_line_error_listing_names():
    net = model.create_model(TrainerConfig(**SMALL), 2)
    with pytest.raises(PipelineError) as err:
        model.unfreeze_from(net, "block9_conv1")
    message = str(err.value)
    assert "\n" not in message
    assert "trainer.fine_tune_from" in message and "'block9_conv1'" in message
    assert "block1_conv1" in message and "block5_conv4" in message


def test_weights_from_a_file_the_test_wrote(tmp_path):
    keras.utils.set_random_seed(1)
    source = model.create_model(TrainerConfig(**SMALL), 2).get_layer(model.BACKBONE)
    path = str(tmp_path / "vgg19_backbone.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(2)  # a different random init, then overwritten by the file
    loaded = model.create_model(
        TrainerConfig(backbone="vgg19", weights=path, image_size=[32, 32]), 2
    )
    backbone = loaded.get_layer(model.BACKBONE)
    assert len(backbone.weights) == len(source.weights) == 32
    for a, b in zip(source.weights, backbone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not backbone.trainable  # loading weights does not unfreeze


def test_missing_or_mismatched_weights_file_is_one_line_error(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(PipelineError, match=f"weights file {missing} does not exist"):
        model.create_model(TrainerConfig(backbone="vgg19", weights=missing, image_size=[32, 32]), 2)
    vgg16 = str(tmp_path / "vgg16.weights.h5")
    model.create_model(TrainerConfig(backbone="vgg16", **SMALL), 2).get_layer(
        model.BACKBONE
    ).save_weights(vgg16)
    with pytest.raises(PipelineError) as err:
        model.create_model(TrainerConfig(backbone="vgg19", weights=vgg16, image_size=[32, 32]), 2)
    assert f"weights file {vgg16} does not fit backbone vgg19" in str(err.value)
    assert "\n" not in str(err.value)


def test_failed_imagenet_download_is_one_line_error(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    with pytest.raises(PipelineError) as err:
        model.create_model(TrainerConfig(weights="imagenet", image_size=[32, 32]), 2)
    message = str(err.value)
    assert "trainer.weights: cannot download the ImageNet weights of vgg19" in message
    assert "URL fetch failure" in message and "\n" not in message


def test_augmentation_is_one_layer_with_image_data_generator_params():
    (layer,) = inputs.augmentation_layers(AugmentationConfig(), seed=1)  # the notebook's values
    assert type(layer).__name__ == "RandomAffine"
    config = layer.get_config()
    assert {k: config[k] for k in ("rotation_range", "shear_range", "zoom_range")} == {
        "rotation_range": 40.0,  # degrees
        "shear_range": 0.2,  # degrees, as ImageDataGenerator reads it
        "zoom_range": 0.2,  # zx, zy in [0.8, 1.2]
    }
    assert (config["width_shift_range"], config["height_shift_range"]) == (0.2, 0.2)
    assert config["horizontal_flip"] is True and config["seed"] == 1
    assert config["resampler"] == "xla"  # one XLA kernel per batch (tests/test_augment.py)


@pytest.mark.parametrize(
    "off",
    [
        {"rotation_range": 0},
        {"width_shift_range": 0},
        {"height_shift_range": 0},
        {"shear_range": 0},
        {"zoom_range": 0},
        {"horizontal_flip": False},
    ],
)
def test_each_augmentation_is_switchable(off):
    (key,) = off
    (layer,) = inputs.augmentation_layers(AugmentationConfig(**off))
    config = layer.get_config()
    assert config[key] == off[key]  # what it does when off: tests/test_augment.py
    others = {k: v for k, v in vars(AugmentationConfig()).items() if k != key}
    assert {k: config[k] for k in others} == others


def test_no_augmentation_and_bad_values():
    assert inputs.augmentation_layers(None) == [] and inputs.make_augmenter(None) is None
    off = AugmentationConfig(0, 0, 0, 0, 0, False)
    assert inputs.augmentation_layers(off) == [] and inputs.make_augmenter(off) is None
    with pytest.raises(
        PipelineError, match=r"trainer.augmentation.width_shift_range: must be in \[0, 1\]"
    ):
        inputs.augmentation_layers(AugmentationConfig(width_shift_range=3))


def test_cache_features_only_when_backbone_frozen_and_no_augmentation():
    assert not trainer.use_cached_features(TrainerConfig())  # the notebook augments
    assert trainer.use_cached_features(TrainerConfig(augmentation=None))
    assert trainer.use_cached_features(
        TrainerConfig(augmentation=AugmentationConfig(0, 0, 0, 0, 0, False))
    )
    assert not trainer.use_cached_features(TrainerConfig(augmentation=None, cache_features="false"))
    assert not trainer.use_cached_features(
        TrainerConfig(augmentation=None, fine_tune_from="block5_conv1")
    )
    with pytest.raises(PipelineError, match="trainer.cache_features: true needs.*augmentation"):
        trainer.use_cached_features(TrainerConfig(cache_features="true"))
    with pytest.raises(PipelineError, match="fine_tune_from is set"):
        trainer.use_cached_features(
            TrainerConfig(augmentation=None, fine_tune_from="x", cache_features="true")
        )


def _raw_split(examples_dir, split):
    files = examples.split_files(examples_dir, split)
    ds = inputs.read_records(files, shuffle_files=False, seed=None, deterministic=True)
    parsed = [examples.parse(s) for s in ds]
    return [p[examples.ENCODED] for p in parsed], [int(p[examples.LABEL]) for p in parsed]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_validation_pipeline_decodes_like_serving_and_never_augments(shapes_examples, split):
    ds = inputs.make_dataset(
        shapes_examples,
        split,
        image_size=(32, 32),
        batch_size=5,
        num_classes=3,
        augmentation=AugmentationConfig(),  # ignored: not the training split
        num_examples=12,
    )
    assert ds.cardinality().numpy() == 3
    batches = list(ds)
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.dtype == np.float32 and x.shape == (12, 32, 32, 3)
    assert y.dtype == np.int32 and y.shape == (12,)
    encoded, labels = _raw_split(shapes_examples, split)
    expected = np.stack([decode_and_resize(e, (32, 32)).numpy() for e in encoded])
    np.testing.assert_array_equal(x, expected)
    assert list(y) == labels == inputs.split_labels(shapes_examples, split)
    assert sorted(set(labels)) == [0, 1, 2]


def _train(examples_dir, **kw):
    args = {"image_size": (32, 32), "batch_size": 6, "num_classes": 2, "training": True}
    return inputs.make_dataset(examples_dir, "train", **{**args, **kw})


def test_training_pipeline_is_shuffled_augmented_and_deterministic_with_a_seed(shapes_examples):
    aug = AugmentationConfig()
    first = [b[0].numpy() for b in _train(shapes_examples, augmentation=aug, seed=7).take(2)]
    again = [b[0].numpy() for b in _train(shapes_examples, augmentation=aug, seed=7).take(2)]
    other = [b[0].numpy() for b in _train(shapes_examples, augmentation=aug, seed=8).take(2)]
    plain = [b for b in _train(shapes_examples, augmentation=None, seed=7).take(2)]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], plain[0][0].numpy())  # same order, augmented pixels
    assert first[0].shape == (6, 32, 32, 3) and first[0].dtype == np.float32
    labels = plain[0][1]
    assert labels.dtype == tf.float32 and labels.shape == (6, 1)  # sigmoid head: float [N, 1]
    # shuffled: not the reading order of the shards
    in_order = [int(v) for v in inputs.split_labels(shapes_examples, "train")]
    shuffled = [int(v) for b in _train(shapes_examples, num_classes=3, seed=7) for v in b[1]]
    assert sorted(shuffled) == sorted(in_order) and shuffled != in_order


def test_training_pipeline_repeats_when_steps_need_more_than_one_pass(shapes_examples):
    # 24 train images; 10 batches of 6 = 60 images, as steps_per_epoch x batch_size may ask
    ds = _train(shapes_examples, seed=1, repeat=True)
    assert sum(int(b[0].shape[0]) for b in ds.take(10)) == 60


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["epochs=0"], "trainer.epochs: must be >= 1, got 0"),
        (["trainer.learning_rate=fast"], "trainer.learning_rate: expected a number, got 'fast'"),
        (["epoch=3"], "unknown key 'trainer.epoch'"),
        (["backbone=vgg20"], "trainer.backbone: unknown backbone 'vgg20'"),
        (["head=attention"], "trainer.head: must be one of"),
        (["weights=/no/such/weights.h5"], "weights file /no/such/weights.h5 does not exist"),
        (["cache_features=true"], "trainer.cache_features: true needs"),
        (["augmentation.zoom_range=5"], "trainer.augmentation.zoom_range: must be"),
        (["weights=none", "image_size=[32,32]", "fine_tune_from=conv9"], "no layer 'conv9'"),
        (["epochs"], "expected key=value"),
    ],
)
def test_bad_config_values_are_one_line_cli_errors(
    shapes_examples, tmp_path, capsys, overrides, expected
):
    out = tmp_path / "trainer"
    rc = cli.main(["train", "--examples", shapes_examples, "--output", str(out), *overrides])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("transfer-pipeline train: error: ") and "\n" not in err
    assert expected in err
    assert not out.exists()  # nothing written for a bad config


def test_missing_config_file_and_examples_are_one_line_errors(tmp_path, capsys):
    rc = cli.main(["train", "--examples", str(tmp_path), "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "labels.txt does not exist" in err and "\n" not in err
    missing = str(tmp_path / "pipeline.yaml")
    rc = cli.main(["train", "--examples", "x", "--output", "y", "--config", missing])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and f"config file {missing} does not exist" in err


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("trainer:\n  epochs: 3\n  head: global_average\n  augmentation: null\n")
    cfg = load_for_cli(str(path), ["batch_size=4", "trainer.image_size=[40,40]"], "trainer").trainer
    assert (cfg.epochs, cfg.head, cfg.augmentation) == (3, "global_average", None)
    assert (cfg.batch_size, cfg.image_size, cfg.backbone) == (4, [40, 40], "vgg19")
