"""TensorProto <-> numpy, laid out as TF Serving answers.

TF Serving fills the typed repeated fields (`float_val`, `int64_val`, `string_val`, ...) of its
responses (`Tensor::AsProtoField`), not `tensor_content`; clients that read `float_val` directly
rely on it, so the server does the same. Requests may use either layout (tf.make_ndarray).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import invalid

# numpy scalar type -> (TensorProto field, DataType)
_TYPED_FIELDS = {
    np.float32: ("float_val", types_pb2.DT_FLOAT),
    np.float64: ("double_val", types_pb2.DT_DOUBLE),
    np.int32: ("int_val", types_pb2.DT_INT32),
    np.int64: ("int64_val", types_pb2.DT_INT64),
    np.bool_: ("bool_val", types_pb2.DT_BOOL),
}


def dtype_name(dtype_enum: int) -> str:
    return types_pb2.DataType.Name(dtype_enum)


def shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]
    )


def to_tensor_proto(value) -> tensor_pb2.TensorProto:
    """numpy array (or tf.Tensor) -> TensorProto with typed repeated fields."""
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    if array.dtype == object or array.dtype.kind in "SU":
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.ravel()]
        return tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, tensor_shape=shape_proto(array.shape), string_val=items
        )
    field = _TYPED_FIELDS.get(array.dtype.type)
    if field is None:  # rarer dtypes (half, uint8, ...): TensorFlow's own conversion
        return tf.make_tensor_proto(array)
    name, dtype = field
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(array.shape))
    getattr(proto, name).extend(array.ravel().tolist())
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """TensorProto -> numpy; a malformed proto is INVALID_ARGUMENT naming the input."""
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # TypeError/ValueError from a malformed or unsupported proto
        raise invalid(
            f"input '{name}' is not a valid {dtype_name(proto.dtype)} tensor: {e}"
        ) from None
