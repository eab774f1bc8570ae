"""serving/config/*: the TF Serving config files parse as the protos TF Serving reads them with.

models.config is parsed with `tensorflow_serving.config.model_server_config_pb2` from
tensorflow-serving-api. That package does not ship the BatchingParameters
(servables/tensorflow/session_bundle_config.proto) or MonitoringConfig
(config/monitoring_config.proto) modules, so those two messages are rebuilt here from the upstream
.proto definitions (same package, names, numbers and types) for the fields this repo may use; a
field outside them fails the parse, as a typo would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

ROOT = Path(__file__).resolve().parents[1]
CANONICAL = ROOT / "serving" / "config"
KUSTOMIZATION = ROOT / "k8s" / "base" / "kustomization.yaml"
FILES = ("models.config", "batching_parameters.txt", "monitoring.config")

_F = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, label, message type)], from tensorflow/serving @ master.
_MESSAGES = {
    "BatchingParameters": [
        ("max_batch_size", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        (
            "batch_timeout_micros",
            2,
            _F.TYPE_MESSAGE,
            _F.LABEL_OPTIONAL,
            ".google.protobuf.Int64Value",
        ),
        (
            "max_enqueued_batches",
            3,
            _F.TYPE_MESSAGE,
            _F.LABEL_OPTIONAL,
            ".google.protobuf.Int64Value",
        ),
        ("num_batch_threads", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _F.TYPE_INT64, _F.LABEL_REPEATED, None),
        ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
    ],
    "PrometheusConfig": [
        ("enable", 1, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, None),
        ("path", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
    "MonitoringConfig": [
        (
            "prometheus_config",
            1,
            _F.TYPE_MESSAGE,
            _F.LABEL_OPTIONAL,
            ".tensorflow.serving.PrometheusConfig",
        ),
    ],
}


def _message_classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    fdp = descriptor_pb2.FileDescriptorProto(
        name="transfer_pipeline_tests/tf_serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for field, number, type_, label, type_name in fields:
            f = msg.field.add(name=field, number=number, type=type_, label=label)
            if type_name:
                f.type_name = type_name
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in _MESSAGES
    }


MESSAGES = _message_classes()


def parse(name: str, message):
    return text_format.Parse((CANONICAL / name).read_text(), message)


def test_models_config_is_a_model_server_config():
    cfg = parse("models.config", model_server_config_pb2.ModelServerConfig())
    models = cfg.model_config_list.config
    assert len(models) == 1, "one model: the one the pipeline pushes"
    model = models[0]
    assert model.name and model.model_platform == "tensorflow"
    assert model.base_path.startswith("/"), "base_path is a path in the TF Serving container"
    # the shape the Pusher writes (pusher/version_registry.py): every kept version loaded, so a
    # label can always move onto a loaded one
    assert model.model_version_policy.WhichOneof("policy_choice") == "all"


def test_batching_parameters_parse_and_are_sane():
    p = parse("batching_parameters.txt", MESSAGES["BatchingParameters"]())
    assert p.max_batch_size.value >= 1
    assert p.num_batch_threads.value >= 1
    assert p.batch_timeout_micros.value >= 0
    assert p.max_enqueued_batches.value >= 1
    # Padding a batch of encoded-image strings adds empty strings that cannot be decoded.
    assert not p.allowed_batch_sizes, "allowed_batch_sizes pads batches; inputs are image bytes"
    assert not p.pad_variable_length_inputs


def test_monitoring_config_enables_prometheus():
    m = parse("monitoring.config", MESSAGES["MonitoringConfig"]())
    assert m.prometheus_config.enable
    assert m.prometheus_config.path.startswith("/")


@pytest.mark.parametrize(
    "message, text",
    [
        ("BatchingParameters", "max_batch_sise { value: 32 }"),
        ("BatchingParameters", "max_batch_size: 32"),
        ("MonitoringConfig", "prometheus_config { enabled: true }"),
    ],
)
def test_parsers_reject_what_tf_serving_would_reject(message, text):
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text, MESSAGES[message]())


def test_kustomize_copies_are_identical_to_serving_config():
    """kustomize cannot read serving/config/ from k8s/base, so the ConfigMap's files are copies."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    (gen,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "tf-serving-config"]
    copies = {Path(f).name: KUSTOMIZATION.parent / f for f in gen["files"]}
    assert set(copies) == set(FILES)
    for name, copy in copies.items():
        assert copy.read_bytes() == (CANONICAL / name).read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from serving/config/{name}: "
            "cp serving/config/* k8s/base/serving-config/"
        )
