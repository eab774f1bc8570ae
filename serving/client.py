"""The TensorFlow-side client for TF Serving, and `transfer-pipeline predict`.

`serving.client_lite` (installable alone, without TensorFlow: `pip install ./serving/client_lite`)
holds the PredictionClient, the REST transport, the request splitting, the file listing, the
output formats and the CLI; this module plugs in what needs the project's dependencies: gRPC
through tensorflow-serving-api's protos and stubs (numpy outputs, TensorProto inputs), image and
label files on gs:// and s3:// (fsutil), and PipelineError for errors. So it talks to the official
tensorflow/serving image and to `transfer-pipeline serve` alike, over gRPC (`HOST:PORT`) or REST
(`http://HOST:PORT`):

    with PredictionClient("localhost:8500", "cats_dogs", labels="labels.txt") as client:
        for p in client.predict(["cat.jpg", open("dog.png", "rb").read()]):
            print(p.class_name, p.score, p.probabilities)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from pipeline_components.core import fsutil
from pipeline_components.core.errors import PipelineError
from serving.client_lite import cli as lite_cli
from serving.client_lite import client as lite
from serving.client_lite.common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_SIGNATURE,
    IMAGES_INPUT,
    ClientError,
    ModelMetadata,
    ModelRef,
    Prediction,
    PredictionFailure,
    RawPrediction,
    VersionStatus,
)
from serving.client_lite.common import ServingError as LiteServingError
from serving.client_lite.files import expand_inputs, is_image_name
from serving.client_lite.output import format_table
from serving.errors import code_from_number
from serving.tensors import typed_ndarray

if TYPE_CHECKING:
    from tensorflow.core.protobuf import meta_graph_pb2

__all__ = [
    "DEFAULT_SIGNATURE",
    "ModelMetadata",
    "Prediction",
    "PredictionClient",
    "PredictionFailure",
    "RawPrediction",
    "ServingError",
    "VersionStatus",
    "format_table",
    "main",
]

_UNREACHABLE = ("connect", "dns", "socket closed", "connection reset", "unreachable")


class ServingError(PipelineError):
    """An RPC failed; `.code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _tensor_infos(infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, info in infos.items():
        shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
        out[name] = {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape}
    return out


def check_image_path(path: str | os.PathLike[str]) -> str:
    path = str(path)
    if not fsutil.exists(path) or fsutil.isdir(path):
        raise PipelineError(f"image file {path} does not exist")
    return path


def read_image(image: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    """A path (local, gs://, s3://) or bytes -> encoded image bytes."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    path = check_image_path(image)
    try:
        return fsutil.read_bytes(path)
    except Exception as e:
        raise PipelineError(f"cannot read image file {path}: {e}") from None


def string_tensor(items: list[bytes]) -> tensor_pb2.TensorProto:
    """A DT_STRING [N] TensorProto (what tf.make_tensor_proto builds, without its overhead)."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(items))]
        ),
        string_val=items,
    )


def _ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """tf.make_ndarray, without its ~15 us per output for the layout servers answer with."""
    array = typed_ndarray(proto)
    return tf.make_ndarray(proto) if array is None else array


def make_channel(
    target: str,
    tls: bool = False,
    root_certificates: bytes | str | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if not tls and root_certificates is None:
        return grpc.insecure_channel(target, options=options)
    if isinstance(root_certificates, str | os.PathLike):
        root_certificates = fsutil.read_bytes(str(root_certificates))
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.secure_channel(target, credentials, options=options)


class GrpcTransport:
    """TF Serving's gRPC API with tensorflow-serving-api's stubs: numpy outputs; inputs as
    TensorProtos or anything tf.make_tensor_proto takes."""

    def __init__(
        self,
        target: str,
        timeout: float,
        tls: bool,
        root_certificates: bytes | str | None,
        max_message_bytes: int,
    ) -> None:
        self.target, self.timeout = target, timeout
        self.channel = make_channel(target, tls, root_certificates, max_message_bytes)
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(
        self, model: ModelRef, inputs: dict[str, Any], output_filter: Sequence[str] = ()
    ) -> RawPrediction:
        request = predict_pb2.PredictRequest()
        _fill_spec(request.model_spec, model, with_signature=True)
        for name, value in inputs.items():
            proto = value if hasattr(value, "tensor_shape") else tf.make_tensor_proto(value)
            request.inputs[name].CopyFrom(proto)
        request.output_filter.extend(output_filter)
        response = self._call(self._predictions.Predict, request)
        spec = response.model_spec
        return RawPrediction(
            outputs={name: _ndarray(t) for name, t in response.outputs.items()},
            model_name=spec.name,
            version=spec.version.value if spec.HasField("version") else None,
            signature_name=spec.signature_name,
        )

    def predict_images(self, model: ModelRef, images: list[bytes]) -> RawPrediction:
        return self.predict(model, {IMAGES_INPUT: string_tensor(images)})

    def metadata(self, model: ModelRef) -> ModelMetadata:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, model)
        response = self._call(self._predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        spec = response.model_spec
        defs = dict(signature_map.signature_def)
        return ModelMetadata(
            model_name=spec.name,
            version=spec.version.value if spec.HasField("version") else None,
            signature_defs=defs,
            summary={
                name: {"inputs": _tensor_infos(sig.inputs), "outputs": _tensor_infos(sig.outputs)}
                for name, sig in defs.items()
            },
        )

    def status(self, model: ModelRef) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model.name
        if model.version is not None:
            request.model_spec.version.value = model.version
        response = self._call(self._models.GetModelStatus, request)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            VersionStatus(
                version=s.version,
                state=state_name(s.state),
                error_code=code_from_number(s.status.error_code).name,
                error_message=s.status.error_message,
            )
            for s in response.model_version_status
        ]

    def close(self) -> None:
        self.channel.close()

    def _call(self, rpc: Any, request: Any) -> Any:
        try:
            return rpc(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code()
            details = " ".join((e.details() or "").split())
            if code == grpc.StatusCode.UNAVAILABLE and any(
                w in details.lower() for w in _UNREACHABLE
            ):
                message = f"cannot reach TF Serving at {self.target} (UNAVAILABLE)"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                message = f"TF Serving at {self.target} did not answer within {self.timeout:g} s"
            else:
                message = f"TF Serving at {self.target}: {code.name}: {details}"
            raise LiteServingError(code.name, message) from None


def _fill_spec(spec: model_pb2.ModelSpec, model: ModelRef, with_signature: bool = False) -> None:
    spec.name = model.name
    if with_signature:
        spec.signature_name = model.signature_name
    if model.version is not None:
        spec.version.value = model.version
    elif model.version_label:
        spec.version_label = model.version_label


class PredictionClient(lite.PredictionClient):
    """serving.client_lite's PredictionClient (its docstring says it all) with gRPC through
    tensorflow-serving-api, files on gs:// and s3://, numpy outputs and PipelineError errors
    (ServingError, whose `.code` is a grpc.StatusCode)."""

    def _grpc_transport(
        self, tls: bool, root_certificates: bytes | str | None, max_message_bytes: int
    ) -> GrpcTransport:
        return GrpcTransport(self.target, self.timeout, tls, root_certificates, max_message_bytes)

    @staticmethod
    def _usage_error(message: str) -> Exception:
        return PipelineError(message)

    @staticmethod
    def _read_labels(labels: Sequence[str] | str | None) -> list[str] | None:
        if labels is None or not isinstance(labels, str | os.PathLike):
            return lite.read_labels(labels)
        try:
            text = fsutil.read_text(str(labels))
        except Exception:
            raise PipelineError(f"labels file {labels} does not exist or cannot be read") from None
        return [line.strip() for line in text.splitlines() if line.strip()]

    @staticmethod
    def read_image(image: Any) -> bytes:
        return read_image(image)

    def _error(self, error: LiteServingError) -> Exception:
        return ServingError(getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN),
                            str(error))  # fmt: skip

    def predict_each(self, images: Any, progress: lite.Progress | None = None) -> list[Any]:
        try:
            return super().predict_each(images, progress)
        except ClientError as e:  # e.g. labels that do not fit the model's outputs
            raise PipelineError(str(e)) from None

    def predict_raw(
        self, inputs: Mapping[str, Any], output_filter: Sequence[str] = ()
    ) -> RawPrediction:
        raw = super().predict_raw(inputs, output_filter)
        if self.rest:  # REST answers JSON lists: numpy arrays, as over gRPC
            raw = RawPrediction({k: np.asarray(v) for k, v in raw.outputs.items()},
                                raw.model_name, raw.version, raw.signature_name)  # fmt: skip
        return raw


# -- CLI -----------------------------------------------------------------------------------


def _folder(path: str) -> list[str]:
    found = []
    for root, dirs, files in fsutil.gfile().walk(path):
        dirs.sort()
        found += [fsutil.join(root, f) for f in sorted(files) if is_image_name(f)]
    return found


def expand(arguments: list[str]) -> list[str]:
    """expand_inputs over local paths, gs:// and s3:// (tf.io.gfile)."""
    return expand_inputs(
        arguments,
        isdir=fsutil.isdir,
        isfile=lambda p: fsutil.exists(p) and not fsutil.isdir(p),
        folder=_folder,
        matches=lambda p: sorted(fsutil.gfile().glob(p)),
    )


def build_parser() -> Any:
    return lite_cli.build_parser("transfer-pipeline predict")


def main(argv: list[str] | None = None) -> int:
    try:
        return lite_cli.run(
            argv, prog="transfer-pipeline predict", client_class=PredictionClient, expand=expand
        )
    except ClientError as e:
        raise PipelineError(str(e)) from None
