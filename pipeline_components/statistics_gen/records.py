"""tf.train.Example parsed with protobuf alone, without importing TensorFlow.

A Beam worker that only counts and measures records need not pay TensorFlow's import (seconds of
CPU per worker process): the message classes are built here from the same field numbers as
TensorFlow's `example.proto` / `feature.proto`, in a private descriptor pool (so they never clash
with TensorFlow's own classes when both are loaded). tests/test_data_validation.py checks that
they read ExampleGen's records exactly as `tf.train.Example` does.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from pipeline_components.core import examples


@functools.cache
def example_class() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="transfer_pipeline/example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        msg = proto.message_type.add(name=name)
        for field_name, number, label, type_, type_name in fields:
            f = msg.field.add(name=field_name, number=number, label=label, type=type_)
            if type_name:
                f.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, rep, F.TYPE_BYTES, ""))
    message("FloatList", ("value", 1, rep, F.TYPE_FLOAT, ""))
    message("Int64List", ("value", 1, rep, F.TYPE_INT64, ""))
    feature = message(
        "Feature",
        ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
        ("float_list", 2, opt, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
        ("int64_list", 3, opt, F.TYPE_MESSAGE, ".tensorflow.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message(
        "Features", ("feature", 1, rep, F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry")
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature"
    )
    entry.options.map_entry = True
    message("Example", ("features", 1, opt, F.TYPE_MESSAGE, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


class Facts(NamedTuple):
    """What the statistics need of one record (its image bytes are not kept)."""

    split: str
    label: str
    fmt: str
    width: int
    height: int
    channels: int
    encoded_bytes: int
    sha256: str


def facts(serialized: bytes, split: str) -> Facts:
    """One serialized Example of ExampleGen's schema (core/examples.py) -> Facts."""
    feature = example_class().FromString(serialized).features.feature

    def text(key: str) -> str:
        return feature[key].bytes_list.value[0].decode("utf-8")

    def number(key: str) -> int:
        return int(feature[key].int64_list.value[0])

    return Facts(
        split,
        text(examples.TEXT),
        text(examples.FORMAT),
        number(examples.WIDTH),
        number(examples.HEIGHT),
        number(examples.CHANNELS),
        len(feature[examples.ENCODED].bytes_list.value[0]),
        text(examples.SHA256),
    )
