"""trainer.require_gpu: a GPU pod whose TensorFlow sees no GPU fails at once, in one line.

This machine has no GPU, so TensorFlow here is exactly the pod the check exists for: every test
below sees the real `tf.config.list_physical_devices("GPU") == []`.
"""

from __future__ import annotations

import pytest
import tensorflow as tf
import yaml

from pipeline_components import cli
from pipeline_components.core import registry
from pipeline_components.core.errors import PipelineError
from pipeline_components.trainer.plan import check_config

pytestmark = pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="these tests need a TF without a GPU"
)


def test_require_gpu_is_a_strict_boolean_that_defaults_to_off():
    assert registry.config_from_dict({}).sections["trainer"].require_gpu is False
    assert (
        registry.config_from_dict({"trainer": {"require_gpu": True}})
        .sections["trainer"]
        .require_gpu
        is True
    )
    with pytest.raises(PipelineError, match=r"trainer\.require_gpu: expected true or false"):
        registry.config_from_dict({"trainer": {"require_gpu": "yes"}}, source="p.yaml")


def test_check_config_fails_in_one_line_when_tensorflow_sees_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    cfg = registry.config_from_dict({"trainer": {"weights": "none", "require_gpu": True}}).sections[
        "trainer"
    ]
    with pytest.raises(PipelineError) as e:
        check_config(cfg)
    message = str(e.value)
    assert message.startswith("trainer.require_gpu: TensorFlow sees no GPU") and "\n" not in message
    assert f"built with CUDA: {tf.test.is_built_with_cuda()}" in message
    assert "CUDA_VISIBLE_DEVICES=0" in message  # what the device plugin handed the container
    # Off (the default), the same machine trains on the CPU as before.
    check_config(registry.config_from_dict({"trainer": {"weights": "none"}}).sections["trainer"])


def test_train_command_stops_before_reading_data(tmp_path, capsys):
    out = tmp_path / "trainer"
    argv = ["train", "--examples", str(tmp_path / "no-examples"), "--output", str(out)]
    rc = cli.main([*argv, "weights=none", "require_gpu=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err
    assert err.startswith("transfer-pipeline train: error: trainer.require_gpu: TensorFlow sees")
    assert not out.exists()


def test_pipeline_run_fails_before_any_component_runs(make_dataset, tmp_path, capsys):
    data = make_dataset(per_split=(6, 2, 2))
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "pipeline_root": str(tmp_path / "root"),
                "data_root": str(data),
                "serving_dir": str(tmp_path / "serving"),
                "example_gen": {"num_shards": 1},
                "trainer": {"weights": "none", "image_size": [32, 32], "require_gpu": True},
            }
        )
    )
    rc = cli.main(["run", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "transfer-pipeline run: error: trainer.require_gpu: TensorFlow sees no GPU" in err
    assert not (tmp_path / "serving").exists()
    # the preflight check runs before ExampleGen: no component ran, the run record says why
    assert not (tmp_path / "root" / "ExampleGen").exists()
    (run_json,) = (tmp_path / "root" / "runs").glob("*/run.json")
    record = yaml.safe_load(run_json.read_text())
    assert record["status"] == "failed" and record["components"] == {}
    assert record["error"].startswith("trainer.require_gpu: TensorFlow sees no GPU")
