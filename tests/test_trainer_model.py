"""Trainer building blocks without training: model, weights, freezing, augmentation, tf.data, CLI
errors. 32x32 images, `weights: none` (no download)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline_components import cli
from pipeline_components.core import commandline, examples
from pipeline_components.core.errors import PipelineError
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.features import files, stream
from pipeline_components.tools import sample_data
from pipeline_components.trainer import inputs, model, training
from pipeline_components.trainer import plan as plan_lib
from pipeline_components.trainer.callbacks import BestCheckpoint
from pipeline_components.trainer.checkpoints import checkpoint_paths, prepare_checkpoints
from pipeline_components.trainer.config import AugmentationConfig, TrainerConfig
from pipeline_components.trainer.export import decode_and_resize
from pipeline_components.trainer.fit import OneProcess
from pipeline_components.trainer.runtime import Run

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
    assert not plan_lib.use_cached_features(TrainerConfig())  # the notebook augments
    assert plan_lib.use_cached_features(TrainerConfig(augmentation=None))
    assert plan_lib.use_cached_features(
        TrainerConfig(augmentation=AugmentationConfig(0, 0, 0, 0, 0, False))
    )
    assert not plan_lib.use_cached_features(
        TrainerConfig(augmentation=None, cache_features="false")
    )
    assert not plan_lib.use_cached_features(
        TrainerConfig(augmentation=None, fine_tune_from="block5_conv1")
    )
    with pytest.raises(PipelineError, match="trainer.cache_features: true needs.*augmentation"):
        plan_lib.use_cached_features(TrainerConfig(cache_features="true"))
    with pytest.raises(PipelineError, match="fine_tune_from is set"):
        plan_lib.use_cached_features(
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


@pytest.fixture(scope="module")
def same_image_examples(tmp_path_factory):
    """A train split of 16 records of ONE 32x32 JPEG (labels alternate), 2 GZIP shards: any
    difference between two images of a batch or two epochs is the augmentation's draws."""
    from pipeline_components.core import artifacts

    root = tmp_path_factory.mktemp("same-image")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    (root / "train").mkdir()
    (root / examples.LABELS_FILE).write_text("a\nb\n")
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for shard in range(2):
        with tf.io.TFRecordWriter(
            str(root / artifacts.shard_path("train", shard, 2)), options
        ) as w:
            for i in range(shard, 16, 2):
                fields = {"fmt": "jpeg", "height": 32, "width": 32, "channels": 3, "sha256": ""}
                label = i % 2
                example = examples.make_example(
                    encoded=jpeg, **fields, label=label, text="ab"[label], filename=f"{i}.jpg"
                )
                w.write(example.SerializeToString())
    return str(root)


def _two_epochs(examples_dir, seed):
    """Pixels of every batch of 2 epochs (2 iterations of one dataset, as Keras fit does)."""
    ds = _train(examples_dir, batch_size=4, augmentation=AugmentationConfig(), seed=seed)
    return [[b[0].numpy() for b in ds] for _ in range(2)]


def test_seeded_augmentation_is_identical_run_to_run_and_new_each_epoch(same_image_examples):
    """Issue 19: decoding and augmentation run in one parallel map with a stateless key per
    record, so a seeded run gives the same batches on every run (whichever thread augments which
    record), while each epoch and each record still gets its own draws. (Checked: drawing from
    the layer's stateful seed generator instead makes the run-to-run comparison fail.)"""
    first, again = _two_epochs(same_image_examples, 5), _two_epochs(same_image_examples, 5)
    for epoch in range(2):
        assert len(first[epoch]) == 4
        for a, b in zip(first[epoch], again[epoch], strict=True):
            np.testing.assert_array_equal(a, b)
    one_batch = first[0][0]
    assert all(not np.array_equal(one_batch[0], x) for x in one_batch[1:])  # a draw per record
    for a, b in zip(first[0], first[1], strict=True):  # the same image at every position:
        assert not np.allclose(a, b)  # only the epoch's draws can tell the epochs apart
    other = _two_epochs(same_image_examples, 6)
    assert not np.allclose(first[0][0], other[0][0])


def test_input_pipelines_set_their_parallelism_and_leave_the_autotuner_off(
    same_image_examples, tmp_path
):
    """Issue 19: each input pipeline (train, evaluation, cached features) runs one thread per
    usable core per stage with tf.data's autotuner off. With it on, an epoch iterated in Python
    could end only at the autotuner's next wake-up (2.56 s, 5.12 s, ... after the iterator
    started), the cores idle meanwhile: about half of the benchmark's epochs took 5.2 s instead
    of ~3.1 s. The seeded pixels do not depend on it (the test above)."""
    aug = AugmentationConfig()
    pipelines = {
        "train": _train(same_image_examples, batch_size=4, augmentation=aug, seed=5),
        "train, unseeded": _train(same_image_examples, batch_size=4, augmentation=aug),
        "evaluation": _train(same_image_examples, batch_size=4, training=False),
        "cached features": stream.feature_dataset(
            files.write_arrays(
                str(tmp_path / "features"),
                {"train": (np.zeros((8, 3)), [0] * 8, [f"{i}.jpg" for i in range(8)])},
                ["a", "b"],
                "float16",
                {},
            ),
            "train",
            batch_size=4,
            training=True,
            seed=1,
        ),
    }
    for name, ds in pipelines.items():
        assert ds.options().autotune.enabled is False, name
    assert inputs.input_parallelism() == len(os.sched_getaffinity(0))
    assert sum(int(b[0].shape[0]) for b in pipelines["train"]) == 16  # still every record


def test_head_on_cached_features_traces_its_train_step_once(shapes_examples, tmp_path, monkeypatch):
    """Issue 19: the optimizer's variables exist before fit, so tf.function traces the train step
    once (creating them in the first step made it trace twice: the second trace cost about as
    much as 20 epochs of the head)."""
    traces = []
    compile_model = model.compile_model

    def counting_compile(net, *args, **kwargs):
        compiled = compile_model(net, *args, **kwargs)
        train_step = compiled.train_step

        def counted(data):  # Python runs only while tracing
            traces.append(net.name)
            return train_step(data)

        compiled.train_step = counted
        return compiled

    monkeypatch.setattr(model, "compile_model", counting_compile)
    config = TrainerConfig(**SMALL, augmentation=None, epochs=2, steps_per_epoch=None, seed=1)
    _, summary, _ = training.train_and_evaluate(
        shapes_examples, config, OneProcess(str(tmp_path / "out"))
    )
    assert summary["cached_features"] is True and summary["epochs_run"] == 2
    assert traces == [model.HEAD]


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
    overrides = ["batch_size=4", "trainer.image_size=[40,40]"]
    cfg = commandline.load_config(str(path), overrides, "trainer")[0].sections["trainer"]
    assert (cfg.epochs, cfg.head, cfg.augmentation) == (3, "global_average", None)
    assert (cfg.batch_size, cfg.image_size, cfg.backbone) == (4, [40, 40], "vgg19")


# ---------------------------------------------------------------- issue 12: BatchNorm, monitor


def _first_weighted_layer(net) -> str:
    return next(layer.name for layer in net.get_layer(model.BACKBONE).layers if layer.weights)


@pytest.mark.slow  # builds all 11 backbones: ~80 s on 2 cores
@pytest.mark.parametrize("backbone", sorted(model.BACKBONES))
def test_unfreezing_keeps_every_batch_norm_frozen_and_in_inference_mode(backbone):
    """Keras 3 gives fit()'s training=True to the nested backbone (keras#20285); a trainable
    BatchNormalization would then normalize with batch statistics and move its averages."""
    size = {"inception_v3": 75, "xception": 71}.get(backbone, 32)
    config = TrainerConfig(backbone=backbone, weights="none", image_size=[size, size])
    net = model.create_model(config, 2)
    unfrozen = model.unfreeze_from(net, _first_weighted_layer(net))
    backbone_net = net.get_layer(model.BACKBONE)
    norms = model.batch_norm_layers(backbone_net)
    assert all(not bn.trainable for bn in norms)
    assert not {bn.name for bn in norms} & set(unfrozen)
    assert len(norms) > 0 or backbone.startswith("vgg")
    stats = [w.numpy().copy() for bn in norms for w in bn.non_trainable_weights]
    pixels = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    x = net.get_layer(model.PREPROCESS)(pixels)
    trained = backbone_net(x, training=True).numpy()
    inferred = backbone_net(x, training=False).numpy()
    after = [w.numpy() for bn in norms for w in bn.non_trainable_weights]
    for before, now in zip(stats, after, strict=True):  # moving mean and variance
        np.testing.assert_array_equal(before, now)
    # EfficientNet's stochastic-depth Dropout layers are the one training-mode difference left
    np.testing.assert_allclose(trained, inferred, rtol=1e-5, atol=1e-5)
    assert model.count_params(backbone_net.trainable_weights) > 0


def _monitor_callbacks(tmp_path, **config):
    """The callbacks the Trainer's head phase runs with, attached to a tiny model."""
    cfg = TrainerConfig(**SMALL, early_stopping_patience=2, **config)
    plan = plan_lib.TrainingPlan(
        labels=["a", "b"],
        image_size=(32, 32),
        num_examples={"train": 10, "validation": 4},
        cached=True,
        mixed=False,
        fine_tune=False,
        fingerprint=None,
    )
    target = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    target.stop_training = False  # what fit() sets before the callbacks run
    paths = checkpoint_paths(str(tmp_path))
    prepare_checkpoints(str(tmp_path), plan.run_key(cfg))
    best = BestCheckpoint(paths["best_weights"], paths["best_state"], target, cfg.monitor)
    run = Run(target, cfg, plan, str(tmp_path), None, None, best)
    callbacks = run.callbacks("head")
    stopping = [c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)]
    assert len(stopping) == 1
    for c in (stopping[0], best):
        c.set_model(target)
        c.on_train_begin()
    return stopping[0], best, target


# accuracy keeps improving while the loss (a calibration measure) gets worse
EPOCHS = [(0.60, 0.50), (0.70, 0.55), (0.75, 0.60), (0.80, 0.65), (0.85, 0.70)]


@pytest.mark.parametrize(
    "config, stops_after, best_epoch",
    [({}, None, 5), ({"monitor": "val_accuracy"}, None, 5), ({"monitor": "val_loss"}, 3, 1)],
)
def test_one_monitor_drives_early_stopping_and_the_best_checkpoint(
    tmp_path, config, stops_after, best_epoch
):
    stopping, best, target = _monitor_callbacks(tmp_path, **config)
    stopped = None
    for epoch, (acc, loss) in enumerate(EPOCHS):
        logs = {"val_accuracy": acc, "val_loss": loss}
        best.on_epoch_end(epoch, logs)
        stopping.on_epoch_end(epoch, logs)
        if target.stop_training:  # set by EarlyStopping
            stopped = epoch + 1
            break
    assert stopped == stops_after
    assert best.best["epoch"] == best_epoch
    assert stopping.monitor == (config.get("monitor") or "val_accuracy")


def test_best_checkpoint_breaks_ties_with_the_other_value(tmp_path):
    _, by_accuracy, _ = _monitor_callbacks(tmp_path / "a")
    _, by_loss, _ = _monitor_callbacks(tmp_path / "l", monitor="val_loss")
    for epoch, logs in enumerate([(0.8, 0.5), (0.8, 0.4), (0.9, 0.4)]):
        for best in (by_accuracy, by_loss):
            best.on_epoch_end(epoch, {"val_accuracy": logs[0], "val_loss": logs[1]})
    assert by_accuracy.best["epoch"] == 3 and by_loss.best["epoch"] == 3
    _, by_loss, _ = _monitor_callbacks(tmp_path / "l2", monitor="val_loss")
    for epoch, logs in enumerate([(0.8, 0.4), (0.7, 0.4)]):
        by_loss.on_epoch_end(epoch, {"val_accuracy": logs[0], "val_loss": logs[1]})
    assert by_loss.best["epoch"] == 1


# ---------------------------------------------------------------- issue 12: shuffle buffer


def test_train_shuffle_buffer_is_the_whole_split_up_to_the_memory_cap(shapes_examples, caplog):
    files = examples.split_files(shapes_examples, "train")
    n = len(inputs.split_labels(shapes_examples, "train"))
    per_record = inputs.split_bytes(files) / n + inputs.RECORD_OVERHEAD_BYTES
    assert 1000 < inputs.split_bytes(files) / n < 5000  # 32x32 JPEG records
    whole = inputs.shuffle_buffer_size(files, n, records=None, memory_bytes=2**30)
    assert whole == n
    assert inputs.shuffle_buffer_size(files, n, records=5, memory_bytes=2**30) == 5
    with caplog.at_level("WARNING", logger="pipeline_components"):
        capped = inputs.shuffle_buffer_size(
            files, n, records=None, memory_bytes=int(10.5 * per_record)
        )
    assert capped == 10
    assert any("10 of 24 records" in r.getMessage() for r in caplog.records)
    assert inputs.shuffle_buffer_size(files, n, records=None, memory_bytes=1) == 1
