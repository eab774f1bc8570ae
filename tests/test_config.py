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


# ---------------------------------------------------- names, roots, duplicate keys (issue 26, 4)


@pytest.mark.parametrize(
    "key, value",
    [
        ("model_name", "../evil"),
        ("model_name", "a/b"),
        ("model_name", "name:predict"),  # TF Serving's REST path /v1/models/<name>:predict
        ("model_name", ".hidden"),
        ("model_name", ""),
        ("model_name", "x" * 129),
        ("model_name", "two words"),
    ],
)
def test_names_that_become_paths_or_labels_are_checked_at_load(key, value):
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict({key: value}, source="pipeline.yaml")
    assert str(e.value) == (
        f"pipeline.yaml: {key}: must be 1 to 128 letters, digits, '_', '.' or '-', starting with "
        f"a letter or digit, got {value!r}"
    )


def test_good_names_load():
    cfg = registry.config_from_dict({"model_name": "cats_dogs.v2-1", "pipeline_name": "Cats_Dogs"})
    assert (cfg.model_name, cfg.pipeline_name) == ("cats_dogs.v2-1", "Cats_Dogs")


@pytest.mark.parametrize("value", ["nightly-🐱", "кошки и собаки", "名前 with space", "../x"])
def test_a_pipeline_name_is_a_label_in_any_alphabet(value):
    """pipeline_name never becomes a path (runs are named by run id): any alphabet loads and
    round-trips; only what no label can hold is refused."""
    assert registry.config_from_dict({"pipeline_name": value}).pipeline_name == value


@pytest.mark.parametrize("value", ["", "line\nbreak", " padded", "x" * 129])
def test_a_pipeline_name_without_a_shape_is_one_line_at_load(value):
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict({"pipeline_name": value}, source="pipeline.yaml")
    assert str(e.value) == (
        "pipeline.yaml: pipeline_name: must be 1 to 128 characters of any alphabet, no control "
        f"characters or surrounding spaces, got {value!r}"
    )


@pytest.mark.parametrize("key", ["pipeline_root", "serving_dir", "data_root"])
def test_a_root_that_is_a_file_is_one_line_at_load(tmp_path, key):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict({key: str(afile)}, source="p.yaml")
    assert str(e.value) == f"p.yaml: {key}: must be a folder, got {str(afile)!r} (a file)"
    with pytest.raises(PipelineError) as e:
        registry.config_from_dict({key: str(afile / "below")}, source="p.yaml")
    assert str(e.value).endswith(f"(below {afile}, a file)")
    with pytest.raises(PipelineError, match=f"{key}: must be a path without control"):
        registry.config_from_dict({key: str(tmp_path / "nul\0")}, source="p.yaml")
    # a folder, one that does not exist yet, and a bucket are fine
    for ok in (tmp_path, tmp_path / "new" / "deeper", "gs://bucket/x"):
        registry.config_from_dict({key: str(ok)})


def test_run_with_a_file_as_pipeline_root_is_one_line(tmp_path, capsys):
    from pipeline_components import cli

    afile = tmp_path / "afile"
    afile.write_text("x")
    path = tmp_path / "p.yaml"
    path.write_text(f"pipeline_root: {afile}\n")
    assert cli.main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"transfer-pipeline run: error: {path}: pipeline_root: must be a folder, got "
        f"{str(afile)!r} (a file)\n"
    )
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    "text, line, key, first",
    [
        ("model_name: a\nmodel_name: b\n", 2, "model_name", 1),
        ("trainer:\n  epochs: 2\n  batch_size: 4\n  epochs: 3\n", 4, "trainer.epochs", 2),
        ("kfp:\n  resources:\n    default: {cpu: 1, cpu: 2}\n", 3, "kfp.resources.default.cpu", 3),
        ("example_gen:\n  beam_args: [a]\nl: [{k: 1}, {k: 2, k: 3}]\n", 3, "l[1].k", 3),
    ],
)
def test_duplicate_keys_at_any_depth_are_refused_with_the_line(tmp_path, text, line, key, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as e:
        registry.load_config(str(path))
    assert str(e.value) == (
        f"config file {path} is not valid YAML (line {line}): duplicate key '{key}' "
        f"(first on line {first})"
    )


def test_merge_keys_are_not_duplicates_and_overrides_refuse_them(tmp_path):
    assert config.safe_load("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n") == {
        "a": {"b": 1},
        "c": {"b": 2},
    }
    with pytest.raises(PipelineError) as e:
        config.apply_overrides({}, ["trainer.augmentation={zoom_range: 0.1, zoom_range: 0.2}"])
    assert "duplicate key 'zoom_range'" in str(e.value) and "\n" not in str(e.value)


def test_schema_files_refuse_duplicate_keys(tmp_path):
    from pipeline_components.core import data_schema

    text = (
        "version: 1\nclasses: [a, b]\nformats: [jpeg]\nsplits:\n  train:\n    class_shares:\n"
        "      a: {min: 0.1, max: 0.9}\n      a: {min: 0.5, max: 0.9}\n"
    )
    with pytest.raises(PipelineError) as e:
        data_schema.loads(text, "schema s.yaml")
    assert str(e.value) == (
        "schema s.yaml is not valid YAML (line 8): duplicate key "
        "'splits.train.class_shares.a' (first on line 7)"
    )


@pytest.mark.parametrize(
    "gpu, message",
    [
        ({"node_selector": {"bad key!": "x"}}, "kfp.gpu.node_selector: must be keyed by Kub"),
        ({"node_selector": {"pool": "a b"}}, "kfp.gpu.node_selector.pool: must be a Kubernetes"),
        ({"toleration_key": "../x"}, "kfp.gpu.toleration_key: must be a Kubernetes taint key"),
        ({"accelerator_type": "nvidia gpu"}, "kfp.gpu.accelerator_type: must be a resource name"),
    ],
)
def test_kfp_labels_are_checked_at_load(gpu, message):
    with pytest.raises(PipelineError, match=message):
        registry.config_from_dict({"kfp": {"gpu": gpu}}, source="p.yaml")
    ok = {"accelerator_type": "NVIDIA_L4", "node_selector": {"cloud.google.com/gke-nodepool": "g"}}
    registry.config_from_dict({"kfp": {"gpu": ok}})


def test_a_component_cannot_be_named_as_a_path():
    from pipeline_components.core.component import Component

    class Escaping(Component):
        name = "../Escaping"
        description = "would write outside pipeline_root"

    with pytest.raises(PipelineError, match=r"component name '../Escaping' must be a letter"):
        registry.register(Escaping())
    assert all(c.name != "../Escaping" for c in registry.components())
