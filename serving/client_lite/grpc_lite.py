"""TF Serving's gRPC API without TensorFlow: grpcio and protobuf only (`pip install
'./serving/client_lite[grpc]'`).

tensorflow-serving-api's generated modules import TensorFlow, so the messages the client sends
and reads are declared here, at runtime, in a private descriptor pool: the same full names,
field numbers and types as in tensorflow_serving/apis/*.proto and tensorflow/core/framework/
*.proto, restricted to the fields the client uses (a proto parser skips the others, so the
wire format is the same). Outputs are decoded to nested lists, without numpy.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from .common import (
    IMAGES_INPUT,
    STATE_NAMES,
    ModelMetadata,
    ModelRef,
    RawPrediction,
    ServingError,
    VersionStatus,
    code_name,
)

try:
    import grpc
except ImportError:  # pragma: no cover - the [grpc] extra is not installed
    grpc = None

_UNREACHABLE = ("connect", "dns", "socket closed", "connection reset", "unreachable")

# DataType numbers (tensorflow/core/framework/types.proto) -> name, TensorProto field, struct
# format of one element in tensor_content
DTYPES = {
    1: ("DT_FLOAT", "float_val", "f"), 2: ("DT_DOUBLE", "double_val", "d"),
    3: ("DT_INT32", "int_val", "i"), 4: ("DT_UINT8", "int_val", "B"),
    5: ("DT_INT16", "int_val", "h"), 6: ("DT_INT8", "int_val", "b"),
    7: ("DT_STRING", "string_val", ""), 9: ("DT_INT64", "int64_val", "q"),
    10: ("DT_BOOL", "bool_val", "?"), 22: ("DT_UINT32", "uint32_val", "I"),
    23: ("DT_UINT64", "uint64_val", "Q"),
}  # fmt: skip
DT_STRING = 7

# message -> [(field, number, type, label, message type)]: type is a FieldDescriptorProto
# type name without TYPE_, label "" (optional) or "repeated", "map:<value type>" for maps
_MESSAGES: dict[str, list[tuple]] = {
    "tensorflow.TensorShapeProto.Dim": [("size", 1, "INT64"), ("name", 2, "STRING")],
    "tensorflow.TensorShapeProto": [
        ("dim", 2, "MESSAGE", "repeated", ".tensorflow.TensorShapeProto.Dim"),
        ("unknown_rank", 3, "BOOL"),
    ],
    "tensorflow.TensorProto": [
        ("dtype", 1, "INT32"), ("tensor_shape", 2, "MESSAGE", "", ".tensorflow.TensorShapeProto"),
        ("version_number", 3, "INT32"), ("tensor_content", 4, "BYTES"),
        ("float_val", 5, "FLOAT", "repeated"), ("double_val", 6, "DOUBLE", "repeated"),
        ("int_val", 7, "INT32", "repeated"), ("string_val", 8, "BYTES", "repeated"),
        ("int64_val", 10, "INT64", "repeated"), ("bool_val", 11, "BOOL", "repeated"),
        ("half_val", 13, "INT32", "repeated"), ("uint32_val", 16, "UINT32", "repeated"),
        ("uint64_val", 17, "UINT64", "repeated"),
    ],
    "tensorflow.TensorInfo": [
        ("name", 1, "STRING"), ("dtype", 2, "INT32"),
        ("tensor_shape", 3, "MESSAGE", "", ".tensorflow.TensorShapeProto"),
    ],
    "tensorflow.SignatureDef": [
        ("inputs", 1, "MESSAGE", "map", ".tensorflow.TensorInfo"),
        ("outputs", 2, "MESSAGE", "map", ".tensorflow.TensorInfo"),
        ("method_name", 3, "STRING"),
    ],
    "tensorflow.serving.ModelSpec": [
        ("name", 1, "STRING"), ("version", 2, "MESSAGE", "", ".google.protobuf.Int64Value"),
        ("signature_name", 3, "STRING"), ("version_label", 4, "STRING"),
    ],
    "tensorflow.serving.PredictRequest": [
        ("model_spec", 1, "MESSAGE", "", ".tensorflow.serving.ModelSpec"),
        ("inputs", 2, "MESSAGE", "map", ".tensorflow.TensorProto"),
        ("output_filter", 3, "STRING", "repeated"),
    ],
    "tensorflow.serving.PredictResponse": [
        ("model_spec", 2, "MESSAGE", "", ".tensorflow.serving.ModelSpec"),
        ("outputs", 1, "MESSAGE", "map", ".tensorflow.TensorProto"),
    ],
    "tensorflow.serving.StatusProto": [("error_code", 1, "INT32"), ("error_message", 2, "STRING")],
    "tensorflow.serving.ModelVersionStatus": [
        ("version", 1, "INT64"), ("state", 2, "INT32"),
        ("status", 3, "MESSAGE", "", ".tensorflow.serving.StatusProto"),
    ],
    "tensorflow.serving.GetModelStatusRequest": [
        ("model_spec", 1, "MESSAGE", "", ".tensorflow.serving.ModelSpec"),
    ],
    "tensorflow.serving.GetModelStatusResponse": [
        ("model_version_status", 1, "MESSAGE", "repeated",
         ".tensorflow.serving.ModelVersionStatus"),
    ],
    "tensorflow.serving.SignatureDefMap": [
        ("signature_def", 1, "MESSAGE", "map", ".tensorflow.SignatureDef"),
    ],
    "tensorflow.serving.GetModelMetadataRequest": [
        ("model_spec", 1, "MESSAGE", "", ".tensorflow.serving.ModelSpec"),
        ("metadata_field", 2, "STRING", "repeated"),
    ],
    "tensorflow.serving.GetModelMetadataResponse": [
        ("model_spec", 1, "MESSAGE", "", ".tensorflow.serving.ModelSpec"),
        ("metadata", 2, "MESSAGE", "map", ".google.protobuf.Any"),
    ],
}  # fmt: skip


def _add_message(file_proto: Any, full_name: str, fields: list[tuple]) -> None:
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    package, _, name = full_name.rpartition(".")
    parent = file_proto if package == file_proto.package else None
    if parent is None:  # a nested message (TensorShapeProto.Dim): added by its parent
        return
    message = file_proto.message_type.add(name=name)
    nested = [n for n in _MESSAGES if n.startswith(full_name + ".")]
    for inner in nested:
        inner_message = message.nested_type.add(name=inner.rsplit(".", 1)[1])
        _fill_fields(inner_message, inner, _MESSAGES[inner], F)
    _fill_fields(message, full_name, fields, F)


def _fill_fields(message: Any, full_name: str, fields: list[tuple], F: Any) -> None:
    for name, number, kind, *rest in fields:
        label = rest[0] if rest else ""
        type_name = rest[1] if len(rest) > 1 else ""
        field = message.field.add(name=name, number=number, type=getattr(F, f"TYPE_{kind}"))
        field.label = F.LABEL_REPEATED if label in ("repeated", "map") else F.LABEL_OPTIONAL
        if label == "map":
            entry = message.nested_type.add(name=f"{name.title().replace('_', '')}Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
            value = entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE)
            value.label, value.type_name = F.LABEL_OPTIONAL, type_name
            field.type_name = f".{full_name}.{entry.name}"
        elif type_name:
            field.type_name = type_name


@functools.cache
def messages() -> dict[str, Any]:
    """Short name -> message class, built once in a private pool."""
    from google.protobuf import (
        any_pb2,
        descriptor_pb2,
        descriptor_pool,
        message_factory,
        wrappers_pb2,
    )

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    for package in ("tensorflow", "tensorflow.serving"):
        file_proto = descriptor_pb2.FileDescriptorProto(
            name=f"transfer_pipeline_client/{package}.proto",
            package=package,
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto", "google/protobuf/any.proto"]
            + (["transfer_pipeline_client/tensorflow.proto"] if package != "tensorflow" else []),
        )
        for full_name, fields in _MESSAGES.items():
            _add_message(file_proto, full_name, fields)
        pool.Add(file_proto)
    return {  # the short names are unique
        full_name.rsplit(".", 1)[1]: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(full_name)
        )
        for full_name in _MESSAGES
    }


# -- tensors ----------------------------------------------------------------------------------


def _nest(flat: list, shape: list[int]) -> Any:
    if not shape:
        return flat[0] if flat else None
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensor_values(proto: Any) -> Any:
    """A TensorProto -> nested lists (bytes for strings), for the dtypes TF Serving answers."""
    shape = [d.size for d in proto.tensor_shape.dim]
    count = 1
    for d in shape:
        count *= d
    if proto.dtype not in DTYPES:
        raise ServingError("UNIMPLEMENTED", f"cannot read an output of DataType {proto.dtype}")
    _, field, fmt = DTYPES[proto.dtype]
    if proto.tensor_content and fmt:
        flat = list(struct.unpack(f"<{count}{fmt}", proto.tensor_content))
    else:
        flat = list(getattr(proto, field))
        if len(flat) < count and flat:  # TensorFlow's "repeat the last value" encoding
            flat += [flat[-1]] * (count - len(flat))
    return _nest(flat, shape)


def _flatten(value: Any, shape: list[int]) -> list:
    if isinstance(value, list | tuple):
        shape.append(len(value))
        out: list = []
        for i, item in enumerate(value):
            inner: list[int] = []
            out.extend(_flatten(item, inner))
            if i == 0:
                shape.extend(inner)
        return out
    return [value]


def tensor_proto(value: Any) -> Any:
    """Bytes/strings, floats, ints or bools (nested lists) -> a TensorProto."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    shape: list[int] = []
    flat = _flatten(value, shape)
    proto = messages()["TensorProto"]()
    proto.tensor_shape.dim.extend([messages()["Dim"](size=d) for d in shape])
    kinds = {type(v) for v in flat}
    if kinds <= {bytes, str}:
        proto.dtype = DT_STRING
        proto.string_val.extend(v.encode() if isinstance(v, str) else v for v in flat)
    elif kinds <= {bool}:
        proto.dtype = 10
        proto.bool_val.extend(flat)
    elif kinds <= {int}:
        proto.dtype = 9
        proto.int64_val.extend(flat)
    elif kinds <= {int, float}:
        proto.dtype = 1
        proto.float_val.extend(float(v) for v in flat)
    else:
        raise ServingError(
            "INVALID_ARGUMENT", f"cannot send values of types {sorted(map(str, kinds))}"
        )
    return proto


def _shape_list(shape: Any) -> list[int] | None:
    return None if shape.unknown_rank else [d.size for d in shape.dim]


def summary(signature_defs: dict) -> dict[str, dict]:
    return {
        name: {
            side: {
                key: {
                    "dtype": DTYPES.get(info.dtype, (f"DataType {info.dtype}",))[0],
                    "shape": _shape_list(info.tensor_shape),
                }
                for key, info in getattr(sig, side).items()
            }
            for side in ("inputs", "outputs")
        }
        for name, sig in signature_defs.items()
    }


# -- the transport ----------------------------------------------------------------------------


class GrpcLiteTransport:
    """PredictionService / ModelService calls with the runtime-declared messages."""

    def __init__(
        self,
        target: str,
        timeout: float,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        max_message_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if grpc is None:
            raise ServingError(
                "FAILED_PRECONDITION",
                f"{target} is a gRPC address and grpcio is not installed: install the client "
                "with its grpc extra, or give --server http://HOST:PORT (REST)",
            )
        self.target, self.timeout = target, timeout
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if not tls and root_certificates is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            if isinstance(root_certificates, str | os.PathLike):
                with open(root_certificates, "rb") as f:
                    root_certificates = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        m = messages()
        self._predict = self._method("PredictionService/Predict", m["PredictResponse"])
        self._metadata = self._method(
            "PredictionService/GetModelMetadata", m["GetModelMetadataResponse"]
        )
        self._status = self._method("ModelService/GetModelStatus", m["GetModelStatusResponse"])

    def _method(self, name: str, response: Any) -> Callable[..., Any]:
        return self.channel.unary_unary(
            f"/tensorflow.serving.{name}",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def _spec(self, target: Any, model: ModelRef, with_signature: bool = True) -> None:
        target.name = model.name
        if with_signature:
            target.signature_name = model.signature_name
        if model.version is not None:
            target.version.value = model.version
        elif model.version_label:
            target.version_label = model.version_label

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code().name
            details = " ".join((e.details() or "").split())
            if code == "UNAVAILABLE" and any(w in details.lower() for w in _UNREACHABLE):
                message = f"cannot reach TF Serving at {self.target} (UNAVAILABLE)"
            elif code == "DEADLINE_EXCEEDED":
                message = f"TF Serving at {self.target} did not answer within {self.timeout:g} s"
            else:
                message = f"TF Serving at {self.target}: {code}: {details}"
            raise ServingError(code, message) from None

    def predict(
        self, model: ModelRef, inputs: dict[str, Any], output_filter: Sequence[str] = ()
    ) -> RawPrediction:
        request = messages()["PredictRequest"]()
        self._spec(request.model_spec, model)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tensor_proto(value))
        request.output_filter.extend(output_filter)
        response = self._call(self._predict, request)
        spec = response.model_spec
        return RawPrediction(
            outputs={name: tensor_values(t) for name, t in response.outputs.items()},
            model_name=spec.name,
            version=spec.version.value if spec.HasField("version") else None,
            signature_name=spec.signature_name,
        )

    def predict_images(self, model: ModelRef, images: list[bytes]) -> RawPrediction:
        return self.predict(model, {IMAGES_INPUT: list(images)})

    def status(self, model: ModelRef) -> list[VersionStatus]:
        request = messages()["GetModelStatusRequest"]()
        request.model_spec.name = model.name
        if model.version is not None:
            request.model_spec.version.value = model.version
        response = self._call(self._status, request)
        return [
            VersionStatus(
                version=s.version,
                state=STATE_NAMES.get(s.state, "UNKNOWN"),
                error_code=code_name(s.status.error_code),
                error_message=s.status.error_message,
            )
            for s in response.model_version_status
        ]

    def metadata(self, model: ModelRef) -> ModelMetadata:
        request = messages()["GetModelMetadataRequest"](metadata_field=["signature_def"])
        self._spec(request.model_spec, model, with_signature=False)
        response = self._call(self._metadata, request)
        signature_map = messages()["SignatureDefMap"].FromString(
            response.metadata["signature_def"].value
        )
        defs = dict(signature_map.signature_def)
        spec = response.model_spec
        return ModelMetadata(
            model_name=spec.name,
            version=spec.version.value if spec.HasField("version") else None,
            signature_defs=defs,
            summary=summary(defs),
        )

    def close(self) -> None:
        self.channel.close()
