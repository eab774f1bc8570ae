"""pipeline.yaml loading: defaults are the notebook's; every mistake is one line naming the key."""

import pytest

from pipeline_components.core import config, registry
from pipeline_components.core.errors import PipelineError


def test_defaults_reproduce_the_notebook():
    cfg = registry.config_from_dict({})
    t = cfg.sections["trainer"]
    assert (t.backbone, t.weights, t.image_size, t.head) == (
        "vgg19",
        "imagenet",
        [224, 224],
        "flatten",
    )
    assert (t.batch_size, t.steps_per_epoch, t.epochs, t.optimizer) == (100, 20, 100, "rmsprop")
    assert t.augmentation.rotation_range == 40 and t.augmentation.horizontal_flip is True
    assert (
        cfg.sections["evaluator"].min_accuracy == 0.9 and cfg.sections["pusher"].keep_versions == 3
    )
    # issue 12: whole-split reshuffle (capped at 1 GiB), one monitor, leaked copies dropped
    assert (t.shuffle_buffer, t.shuffle_memory_mb, t.monitor) == (None, 1024, "val_accuracy")
    assert cfg.sections["example_gen"].on_duplicates == "drop"


def test_design_example_yaml_loads(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        """
pipeline_name: cats-dogs
pipeline_root: ./pipeline_root
data_root: ./data/cats_dogs
serving_dir: ./serving_models
model_name: cats_dogs
example_gen: {num_shards: 4, max_bad_fraction: 0.01, beam_args: ["--runner=DirectRunner"]}
trainer:
  backbone: vgg19
  weights: imagenet
  image_size: [224, 224]
  head: flatten
  fine_tune_from: null
  batch_size: 100
  epochs: 100
  steps_per_epoch: 20
  optimizer: rmsprop
  learning_rate: 0.001
  augmentation: {rotation_range: 40, width_shift_range: 0.2, height_shift_range: 0.2,
                 shear_range: 0.2, zoom_range: 0.2, horizontal_flip: true}
  cache_features: auto
  seed: 42
evaluator: {min_accuracy: 0.9, max_regression: 0.01}
pusher: {keep_versions: 3}
"""
    )
    cfg = registry.load_config(str(path))
    assert cfg.model_name == "cats_dogs" and cfg.sections["trainer"].learning_rate == 0.001
    assert isinstance(cfg.sections["trainer"].augmentation.rotation_range, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trainer": {"lerning_rate": 1}}, "unknown key 'trainer.lerning_rate'"),
        ({"trainer": {"epochs": "many"}}, "trainer.epochs: expected an integer, got 'many'"),
        ({"trainer": {"head": "mlp"}}, "trainer.head: must be one of"),
        ({"trainer": {"batch_size": 0}}, "trainer.batch_size: must be >= 1"),
        ({"trainer": {"image_size": [224]}}, "trainer.image_size"),
        ({"evaluator": {"min_accuracy": 1.5}}, "evaluator.min_accuracy: must be in [0, 1]"),
        ({"example_gen": {"beam_args": "--runner=X"}}, "example_gen.beam_args: expected a list"),
        ({"trainer": {"augmentation": {"horizontal_flip": "yes"}}}, "horizontal_flip"),
        ({"trainer": []}, "trainer: expected a mapping"),
        (
            {"trainer": {"max_image_pixels": 0}},
            "trainer.max_image_pixels: must be in [1, 1099511627776]",
        ),
        ({"example_gen": {"max_image_pixels": -5}}, "example_gen.max_image_pixels: must be in"),
        # issue 12, item 6: the keys it names, and the keys it added
        ({"trainer": {"shuffle_buffer": 0}}, "trainer.shuffle_buffer: must be in [1, "),
        ({"trainer": {"validation_steps": 0}}, "trainer.validation_steps: must be >= 1 or null"),
        (
            {"trainer": {"fine_tune_learning_rate": 0}},
            "trainer.fine_tune_learning_rate: must be > 0, got 0.0",
        ),
        (
            {"trainer": {"early_stopping_patience": -1}},
            "trainer.early_stopping_patience: must be >= 0 or null, got -1",
        ),
        (
            {"trainer": {"shuffle_memory_mb": 0}},
            "trainer.shuffle_memory_mb: must be in [1, 1048576], got 0",
        ),
        ({"trainer": {"shuffle_memory_mb": 2**21}}, "trainer.shuffle_memory_mb: must be in"),
        ({"trainer": {"monitor": "accuracy"}}, "trainer.monitor: must be one of ['val_accuracy',"),
        (
            {"example_gen": {"on_duplicates": "ignore"}},
            "example_gen.on_duplicates: must be one of ['drop', 'warn', 'fail'], got 'ignore'",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict(data, source="p.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("p.yaml: ") and "\n" not in str(e.value)


def test_overrides_and_null_augmentation():
    data = config.apply_overrides(
        {}, ["trainer.epochs=2", "trainer.augmentation=null", "trainer.learning_rate=1e-9"]
    )
    cfg = registry.config_from_dict(data)
    assert cfg.sections["trainer"].epochs == 2 and cfg.sections["trainer"].augmentation is None
    assert cfg.sections["trainer"].learning_rate == 1e-9
    with pytest.raises(PipelineError, match="expected key=value"):
        config.apply_overrides({}, ["epochs"])


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        registry.load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {epochs: 2\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        registry.load_config(str(bad))
