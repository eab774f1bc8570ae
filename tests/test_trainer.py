"""Trainer end to end on tiny real data: ExampleGen output of 32x32 JPEGs, `weights: none`,
one or two epochs; the exported SavedModel is loaded and queried like TF Serving would."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline_components import cli
from pipeline_components.core import examples
from pipeline_components.example_gen.executor import run_example_gen
from pipeline_components.tools import sample_data
from pipeline_components.trainer import executor as trainer
from pipeline_components.trainer import inputs, model, training
from pipeline_components.trainer.callbacks import weights_from_bytes
from pipeline_components.trainer.config import TrainerConfig
from pipeline_components.trainer.export import decode_and_resize
from pipeline_components.trainer.fit import OneProcess

SMALL = {"weights": "none", "image_size": [32, 32], "batch_size": 8}


def _examples(root, classes=("circles", "squares"), per_split=(12, 4, 4)):
    sample_data.generate(str(root / "data"), classes, per_split, (32, 32))
    run_example_gen(str(root / "data"), str(root / "examples"), num_shards=2)
    return str(root / "examples")


@pytest.fixture(scope="module")
def binary_examples(tmp_path_factory):
    return _examples(tmp_path_factory.mktemp("binary"))


def _raw(examples_dir, split):
    """(encoded images, labels) of a split in the order the evaluation pipeline reads them."""
    files = examples.split_files(examples_dir, split)
    ds = inputs.read_records(files, shuffle_files=False, seed=None, deterministic=True)
    parsed = [examples.parse(s) for s in ds]
    return [p[examples.ENCODED].numpy() for p in parsed], [int(p[examples.LABEL]) for p in parsed]


def _pixels(encoded, size=(32, 32)):
    return tf.stack([decode_and_resize(tf.constant(e), size) for e in encoded])


def _initial_model(config, num_classes):
    """The model train_and_evaluate starts from: same seed, same initialization order."""
    keras.utils.set_random_seed(config.seed)
    return model.create_model(config, num_classes)


@pytest.fixture(scope="module")
def trained_binary(binary_examples, tmp_path_factory):
    """The notebook's setup scaled down: flatten head, full augmentation (so the backbone runs
    every epoch), steps_per_epoch x batch_size (2 x 8) > 12 train images (the data repeats)."""
    config = TrainerConfig(**SMALL, epochs=2, steps_per_epoch=2, seed=3)
    initial = _initial_model(config, 2)
    out = tmp_path_factory.mktemp("trained_binary")
    net, summary, history = training.train_and_evaluate(
        binary_examples, config, OneProcess(str(out))
    )
    return {
        "config": config,
        "initial": initial,
        "net": net,
        "summary": summary,
        "history": history,
        "out": out,
    }


def test_backbone_stays_frozen_and_only_the_head_trains(trained_binary):
    net, initial, summary = (
        trained_binary["net"],
        trained_binary["initial"],
        trained_binary["summary"],
    )
    for before, after in zip(
        initial.get_layer(model.BACKBONE).weights,
        net.get_layer(model.BACKBONE).weights,
        strict=True,
    ):
        np.testing.assert_array_equal(before.numpy(), after.numpy())
    kernel_before = initial.get_layer(model.HEAD).weights[0].numpy()
    kernel_after = net.get_layer(model.HEAD).weights[0].numpy()
    assert not np.allclose(kernel_before, kernel_after)
    assert summary["trainable_params"] == 512 + 1  # 1x1x512 features at 32x32 -> Dense(1)
    assert summary["cached_features"] is False  # augmentation on: the backbone runs each epoch
    assert summary["epochs_run"] == 2 and trained_binary["history"]["epoch"] == [1, 2]
    assert all(r > 0 for r in trained_binary["history"]["images_per_sec"])


def test_train_serve_parity(trained_binary, binary_examples, tmp_path):
    """serving_default on the raw bytes == the trained Keras model on decode_and_resize pixels."""
    net = trained_binary["net"]
    labels = trained_binary["summary"]["labels"]
    path = trainer.export_model(
        net, trained_binary["config"], labels, binary_examples, str(tmp_path)
    )
    loaded = tf.saved_model.load(path)
    encoded, _ = _raw(binary_examples, "validation")
    served = loaded.signatures["serving_default"](images=tf.constant(encoded))
    p = net(_pixels(encoded), training=False).numpy()[:, 0]
    np.testing.assert_allclose(served["probabilities"].numpy()[:, 1], p, atol=1e-4)
    np.testing.assert_allclose(served["probabilities"].numpy()[:, 0], 1 - p, atol=1e-4)
    pixels = loaded.signatures["predict_pixels"](pixels=_pixels(encoded))
    np.testing.assert_allclose(pixels["probabilities"].numpy()[:, 1], p, atol=1e-4)


def test_binary_end_to_end_through_the_cli(make_dataset, tmp_path, capsys):
    data = make_dataset(classes=("circles", "squares"), per_split=(12, 4, 4))
    ex, out = str(tmp_path / "examples"), tmp_path / "trainer"
    stats = run_example_gen(str(data), ex, num_shards=2)
    argv = [
        "train",
        "--examples",
        ex,
        "--output",
        str(out),
        "weights=none",
        "trainer.image_size=[32,32]",
        "batch_size=8",
        "epochs=2",
        "steps_per_epoch=null",
    ]
    assert cli.main(argv) == 0
    assert "trained 2 epochs" in capsys.readouterr().out

    loaded = tf.saved_model.load(str(out / "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "predict_pixels"}
    encoded, labels = _raw(ex, "test")
    outputs = loaded.signatures["serving_default"](images=tf.constant(encoded))
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape == (8, 2)
    assert outputs["scores"].dtype == tf.float32 and outputs["scores"].shape == (8,)
    assert outputs["class_ids"].dtype == tf.int64 and outputs["class_ids"].shape == (8,)
    assert outputs["classes"].dtype == tf.string
    names = [c.decode() for c in outputs["classes"].numpy()]
    assert names == [["circles", "squares"][i] for i in outputs["class_ids"].numpy()]
    assert (out / "saved_model" / "assets" / "labels.txt").read_text() == "circles\nsquares\n"

    from tensorflow_serving.apis import prediction_log_pb2

    warmup = out / "saved_model" / "assets.extra" / "tf_serving_warmup_requests"
    requests = []
    for record in tf.data.TFRecordDataset(str(warmup)):
        entry = prediction_log_pb2.PredictionLog()
        entry.ParseFromString(record.numpy())
        requests.append(entry.predict_log.request)
    assert len(requests) == trainer.NUM_WARMUP_IMAGES + 1
    train_images = set(inputs.encoded_images(ex, "train", trainer.NUM_WARMUP_IMAGES))
    sent = [bytes(b) for r in requests[:-1] for b in tf.make_ndarray(r.inputs["images"])]
    assert set(sent) == train_images  # real training images, as stored

    record = json.loads((out / "training_config.json").read_text())
    assert record["labels"] == ["circles", "squares"]
    assert record["data"]["fingerprint"] == stats["fingerprint"]
    assert record["image_size"] == [32, 32]
    assert record["head"]["activation"] == "sigmoid" and record["head"]["pooling"] == "flatten"
    assert record["config"]["epochs"] == 2 and record["config"]["backbone"] == "vgg19"
    assert record["config"]["augmentation"]["rotation_range"] == 40
    assert {"tensorflow", "keras", "python", "numpy"} <= set(record["versions"])
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "images_per_sec"} <= set(history)
    assert len((out / "history.csv").read_text().splitlines()) == 3
    for name in ("accuracy", "loss"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for split in ("train", "validation"):
        assert list((out / "logs" / split).glob("events.out.tfevents.*"))
    # the finished run keeps its best weights, not its resume state; no temporary leftovers
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best.json",
        "best.weights.npz",
    ]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_multiclass_end_to_end_with_cached_features(make_dataset, tmp_path):
    """No augmentation -> features cached once; the exported full model gives what the head
    trained on the cached features gives."""
    data = make_dataset(classes=("circles", "squares", "stripes"), per_split=(8, 4, 4))
    ex, out = str(tmp_path / "examples"), str(tmp_path / "trainer")
    run_example_gen(str(data), ex, num_shards=2)
    config = TrainerConfig(
        **SMALL,
        head="global_average",
        dropout=0.2,
        augmentation=None,
        epochs=2,
        steps_per_epoch=None,
        seed=5,
    )
    summary = trainer.run_trainer(ex, out, config)
    assert summary["cached_features"] is True and summary["feature_cache_seconds"] > 0
    assert summary["labels"] == ["circles", "squares", "stripes"]
    assert summary["head"]["activation"] == "softmax" and summary["epochs_run"] == 2

    loaded = tf.saved_model.load(f"{out}/saved_model")
    encoded, labels = _raw(ex, "validation")
    served = loaded.signatures["serving_default"](images=tf.constant(encoded))
    probs = served["probabilities"].numpy()
    assert probs.shape == (12, 3) and served["class_ids"].dtype == tf.int64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert {c.decode() for c in served["classes"].numpy()} <= set(summary["labels"])

    # the head the trainer kept (best epoch), applied to the cached validation features
    net = _initial_model(config, 3)  # frozen random backbone: the same one the trainer built
    head = net.get_layer(model.HEAD)
    best = (tmp_path / "trainer" / "checkpoints" / "best.weights.npz").read_bytes()
    head.set_weights(weights_from_bytes(best))
    pixels = inputs.make_dataset(
        ex, "validation", image_size=(32, 32), batch_size=8, num_classes=3, num_examples=12
    ).map(lambda x, y: x)
    features = model.feature_extractor(net).predict(pixels, verbose=0)
    np.testing.assert_allclose(head(features).numpy(), probs, atol=1e-4)


class _BackboneSnapshots(keras.callbacks.Callback):
    """First-kernel of every backbone layer with weights, at the end of each epoch."""

    def __init__(self, net):
        super().__init__()
        self.backbone, self.after_epoch = net.get_layer(model.BACKBONE), {}

    def on_epoch_end(self, epoch, logs=None):
        self.after_epoch[epoch] = {
            layer.name: layer.weights[0].numpy().copy()
            for layer in self.backbone.layers
            if layer.weights
        }


def test_fine_tune_second_phase_trains_the_named_layers_onward(binary_examples, tmp_path):
    config = TrainerConfig(
        **SMALL,
        augmentation=None,
        fine_tune_from="block5_conv1",
        epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-4,
        steps_per_epoch=None,
        seed=11,
    )
    initial = _initial_model(config, 2)
    snapshots = None

    class Attach(keras.callbacks.Callback):  # the trainer builds the model; hook in at fit time
        def on_train_begin(self, logs=None):
            nonlocal snapshots
            snapshots = snapshots or _BackboneSnapshots(self.model)

        def on_epoch_end(self, epoch, logs=None):
            snapshots.on_epoch_end(epoch, logs)

    net, summary, history = training.train_and_evaluate(
        binary_examples, config, OneProcess(str(tmp_path)), callbacks=[Attach()]
    )
    assert summary["cached_features"] is False  # the backbone changes in phase 2
    assert history["phase"] == ["head", "fine_tune"] and history["epoch"] == [1, 2]
    assert summary["fine_tuned_layers"][0] == "block5_conv1"
    before = {
        layer.name: layer.weights[0].numpy()
        for layer in initial.get_layer(model.BACKBONE).layers
        if layer.weights
    }
    for name, kernel in before.items():
        np.testing.assert_array_equal(kernel, snapshots.after_epoch[0][name])  # head phase
        changed = not np.array_equal(kernel, snapshots.after_epoch[1][name])  # fine-tuning
        assert changed == name.startswith("block5_"), name


class _BatchNormProbe(keras.callbacks.Callback):
    """At the end of the fine-tuning epoch: every BatchNormalization weight of the backbone, its
    first convolution's kernel, and the backbone's output on `pixels` in both modes."""

    def __init__(self, pixels):
        super().__init__()
        self.pixels, self.seen = pixels, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch != 1:  # epoch 0 is the head phase
            return
        backbone = self.model.get_layer(model.BACKBONE)
        x = self.model.get_layer(model.PREPROCESS)(self.pixels)
        self.seen = {
            "norms": [
                [w.numpy().copy() for w in bn.weights] for bn in model.batch_norm_layers(backbone)
            ],
            "conv1": backbone.get_layer("conv1_conv").weights[0].numpy().copy(),
            "training": backbone(x, training=True).numpy(),
            "inference": backbone(x, training=False).numpy(),
        }


@pytest.mark.slow  # ResNet50: ~40 s on 2 cores
def test_fine_tuning_resnet50_keeps_batch_norm_statistics_and_inference_mode(
    binary_examples, tmp_path
):
    """fit() passes training=True into the backbone (Keras 3); BatchNormalization must still
    use and keep its moving mean and variance (and gamma, beta) when everything is unfrozen."""
    config = TrainerConfig(
        **SMALL,
        backbone="resnet50",
        augmentation=None,
        fine_tune_from="conv1_conv",
        epochs=1,
        fine_tune_epochs=1,
        fine_tune_learning_rate=1e-3,
        steps_per_epoch=None,
        seed=5,
    )
    initial = _initial_model(config, 2)
    encoded, _ = _raw(binary_examples, "validation")
    probe = _BatchNormProbe(_pixels(encoded))
    _, summary, history = training.train_and_evaluate(
        binary_examples, config, OneProcess(str(tmp_path)), callbacks=[probe]
    )
    assert history["phase"] == ["head", "fine_tune"] and probe.seen is not None
    assert "conv1_conv" in summary["fine_tuned_layers"]
    assert not any(name.endswith("_bn") for name in summary["fine_tuned_layers"])
    before = model.batch_norm_layers(initial.get_layer(model.BACKBONE))
    assert len(before) == len(probe.seen["norms"]) == 53
    for bn, after in zip(before, probe.seen["norms"], strict=True):
        for weight, value in zip(bn.weights, after, strict=True):  # gamma, beta, mean, variance
            np.testing.assert_array_equal(weight.numpy(), value, err_msg=weight.path)
    first_conv = initial.get_layer(model.BACKBONE).get_layer("conv1_conv").weights[0].numpy()
    assert not np.array_equal(first_conv, probe.seen["conv1"])  # the convolutions did train
    np.testing.assert_array_equal(probe.seen["training"], probe.seen["inference"])


class _Preempt(keras.callbacks.Callback):
    """Records the head's weights at the end of epoch `after`, then kills the run."""

    def __init__(self, after):
        super().__init__()
        self.after, self.weights = after, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            self.weights = [w.numpy().copy() for w in self.model.weights[:2]]
            raise RuntimeError("preempted")


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.weights = [], None

    def on_train_begin(self, logs=None):  # runs after BackupAndRestore restored the state
        self.weights = [w.numpy().copy() for w in self.model.weights[:2]]

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_killed_run_resumes_from_its_last_epoch(binary_examples, tmp_path):
    config = TrainerConfig(**SMALL, augmentation=None, epochs=4, steps_per_epoch=None, seed=2)
    killer = _Preempt(after=1)
    with pytest.raises(RuntimeError, match="preempted"):
        trainer.run_trainer(binary_examples, str(tmp_path), config, callbacks=[killer])
    assert not (tmp_path / "saved_model").exists()
    assert not (tmp_path / "training_config.json").exists()
    assert (tmp_path / "checkpoints" / "run_state.json").exists()

    recorder = _Recorder()
    summary = trainer.run_trainer(binary_examples, str(tmp_path), config, callbacks=[recorder])
    assert recorder.epochs == [2, 3]  # epochs 1 and 2 were not trained again
    for saved, restored in zip(killer.weights, recorder.weights, strict=True):
        np.testing.assert_array_equal(saved, restored)
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_run"] == 4
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4] and len(history["loss"]) == 4
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 5
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
    assert not (tmp_path / "checkpoints" / "run_state.json").exists()


def test_run_killed_while_fine_tuning_resumes_in_the_fine_tune_phase(binary_examples, tmp_path):
    config = TrainerConfig(
        **SMALL,
        augmentation=None,
        fine_tune_from="block5_conv1",
        epochs=1,
        fine_tune_epochs=2,
        steps_per_epoch=None,
        seed=4,
    )
    with pytest.raises(RuntimeError, match="preempted"):
        trainer.run_trainer(binary_examples, str(tmp_path), config, callbacks=[_Preempt(1)])
    assert (tmp_path / "checkpoints" / "head_phase_done.json").exists()
    recorder = _Recorder()
    summary = trainer.run_trainer(binary_examples, str(tmp_path), config, callbacks=[recorder])
    assert recorder.epochs == [2]  # neither the head phase nor fine-tuning epoch 2 ran again
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["phase"] == ["head", "fine_tune", "fine_tune"]
    assert summary["epochs_run"] == 3 and summary["resumed_from_epoch"] == 2


def test_changed_config_does_not_resume_stale_checkpoints(binary_examples, tmp_path):
    config = TrainerConfig(**SMALL, augmentation=None, epochs=2, steps_per_epoch=None, seed=2)
    with pytest.raises(RuntimeError, match="preempted"):
        trainer.run_trainer(binary_examples, str(tmp_path), config, callbacks=[_Preempt(0)])
    recorder = _Recorder()
    other = TrainerConfig(
        **{**SMALL, "batch_size": 4}, augmentation=None, epochs=2, steps_per_epoch=None, seed=2
    )
    summary = trainer.run_trainer(binary_examples, str(tmp_path), other, callbacks=[recorder])
    assert recorder.epochs == [0, 1] and summary["resumed_from_epoch"] is None


@pytest.mark.slow
def test_training_loss_goes_down_on_learnable_shapes(make_dataset, tmp_path):
    """A frozen *random* VGG19 gives tiny, badly conditioned features at 32x32 (|f| ~ 0.007), so
    its head barely moves; a random ResNet50 keeps O(1) features (batch norm, residuals) and its
    head fits them: the setup that learns reliably without ImageNet weights."""
    data = make_dataset(classes=("circles", "squares"), per_split=(40, 10, 10))
    ex = str(tmp_path / "examples")
    run_example_gen(str(data), ex, num_shards=2)
    config = TrainerConfig(
        backbone="resnet50",
        weights="none",
        image_size=[32, 32],
        head="global_average",
        optimizer="adam",
        learning_rate=1e-3,
        augmentation=None,
        batch_size=16,
        epochs=30,
        steps_per_epoch=None,
    )
    _, summary, history = training.train_and_evaluate(
        ex, config, OneProcess(str(tmp_path / "trainer"))
    )
    loss = history["loss"]
    assert summary["cached_features"] is True
    assert np.mean(loss[-3:]) < 0.7 * loss[0], loss
    assert np.mean(history["accuracy"][-3:]) > 0.8, history["accuracy"]
