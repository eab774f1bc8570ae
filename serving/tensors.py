"""TensorProto <-> numpy, laid out as TF Serving answers.

TF Serving fills the typed repeated fields (`float_val`, `int64_val`, `string_val`, ...) of its
responses (`Tensor::AsProtoField`), not `tensor_content`; clients that read `float_val` directly
rely on it, so the server does the same. Requests may use either layout (tf.make_ndarray).

A request TensorProto is checked before anything is materialised (`check_request_tensor`):
tf.make_ndarray fills a tensor out to whatever `tensor_shape` claims, so a 29-byte proto can
declare 1.2 GB. Its declared size (shape x element size) must be within the request's byte
budget, its string count within the string budget, and it must hold as many values as its shape
has elements (or 0 or 1: TensorFlow's "repeat the last value" encoding, bounded by the budget).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.errors import clip, invalid

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_STRING_ELEMENTS = 10_000

_T = types_pb2
# DataType -> (bytes per element, repeated field, field values per element)
_LAYOUT = {
    _T.DT_FLOAT: (4, "float_val", 1),
    _T.DT_DOUBLE: (8, "double_val", 1),
    _T.DT_INT32: (4, "int_val", 1),
    _T.DT_INT16: (2, "int_val", 1),
    _T.DT_INT8: (1, "int_val", 1),
    _T.DT_UINT8: (1, "int_val", 1),
    _T.DT_UINT16: (2, "int_val", 1),
    _T.DT_INT64: (8, "int64_val", 1),
    _T.DT_UINT32: (4, "uint32_val", 1),
    _T.DT_UINT64: (8, "uint64_val", 1),
    _T.DT_BOOL: (1, "bool_val", 1),
    _T.DT_HALF: (2, "half_val", 1),
    _T.DT_BFLOAT16: (2, "half_val", 1),
    _T.DT_COMPLEX64: (8, "scomplex_val", 2),
    _T.DT_COMPLEX128: (16, "dcomplex_val", 2),
}

# numpy scalar type -> (TensorProto field, DataType)
_TYPED_FIELDS = {
    np.float32: ("float_val", types_pb2.DT_FLOAT),
    np.float64: ("double_val", types_pb2.DT_DOUBLE),
    np.int32: ("int_val", types_pb2.DT_INT32),
    np.int64: ("int64_val", types_pb2.DT_INT64),
    np.bool_: ("bool_val", types_pb2.DT_BOOL),
}


def dtype_name(dtype_enum: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype_enum)
    except ValueError:  # a number no DataType has (a client can send any)
        return f"DataType {int(dtype_enum)}"


def shape_proto(shape: Iterable[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]
    )


def to_tensor_proto(value: npt.ArrayLike | tf.Tensor) -> tensor_pb2.TensorProto:
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


@dataclasses.dataclass
class RequestBudget:
    """What one request's inputs may still declare: bytes (all inputs, as materialised) and
    string elements (each an encoded image that the model decodes one by one)."""

    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_strings: int = DEFAULT_MAX_STRING_ELEMENTS
    bytes_used: int = 0
    strings_used: int = 0


def declared_shape(proto: tensor_pb2.TensorProto, name: str) -> tuple[int, ...]:
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{clip(name)}' has an unknown rank; a request needs a full shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise invalid(f"input '{clip(name)}' has a negative dimension: {list(shape)[:8]}")
    return shape


def check_request_tensor(
    proto: tensor_pb2.TensorProto, name: str, budget: RequestBudget
) -> tuple[int, ...]:
    """Declared size and supplied values of a request tensor, before tf.make_ndarray; charges
    `budget`. Returns the declared shape; INVALID_ARGUMENT naming the input and limit."""
    shape = declared_shape(proto, name)
    count = math.prod(shape)
    where = f"input '{clip(name)}' (shape {_shape_text(shape)}, {count} elements)"
    if proto.dtype == _T.DT_STRING:
        budget.strings_used += count
        if budget.strings_used > budget.max_strings:
            raise invalid(
                f"{where}: more than {budget.max_strings} strings in one request "
                "(--max-string-elements)"
            )
        values = proto.string_val
        size = sum(len(v) for v in values) + (count - len(values)) * (
            len(values[-1]) if values else 0
        )
        supplied = len(values)
    else:
        if proto.dtype not in _LAYOUT:
            raise invalid(
                f"input '{clip(name)}' has dtype {dtype_name(proto.dtype)}, not supported"
            )
        itemsize, field, per_element = _LAYOUT[proto.dtype]
        size = count * itemsize
        if proto.tensor_content:
            supplied = len(proto.tensor_content) // itemsize
            if len(proto.tensor_content) != size:
                raise invalid(
                    f"{where}: tensor_content holds {len(proto.tensor_content)} bytes, "
                    f"not the {size} its shape and dtype need"
                )
        else:
            supplied = len(getattr(proto, field)) // per_element
    budget.bytes_used += size
    if budget.bytes_used > budget.max_bytes:
        raise invalid(
            f"{where}: the request's inputs declare more than {budget.max_bytes} bytes "
            "(--max-request-bytes)"
        )
    if supplied != count and supplied > 1:
        raise invalid(f"{where}: holds {supplied} values; expected {count} (or 1, repeated)")
    return shape


def _shape_text(shape: Sequence[int]) -> str:
    dims = [str(d) for d in shape[:8]] + (["..."] if len(shape) > 8 else [])
    return "[" + ", ".join(dims) + "]"


# DataType -> (repeated field, numpy dtype): the layouts `typed_ndarray` reads without TensorFlow
_TYPED_ARRAYS = {dtype: (field, np_type) for np_type, (field, dtype) in _TYPED_FIELDS.items()}


def typed_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    """tf.make_ndarray's result for the common layout (strings, or a typed repeated field with
    one value per element) in a few microseconds instead of tens; None for any other layout
    (tensor_content, the repeat-the-last-value encoding, other dtypes): use tf.make_ndarray."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = math.prod(shape)
    if proto.dtype == _T.DT_STRING:
        values = proto.string_val
        if len(values) != count:
            return None
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    layout = _TYPED_ARRAYS.get(proto.dtype)
    if layout is None or proto.tensor_content:
        return None
    values = getattr(proto, layout[0])
    if len(values) != count:
        return None
    return np.array(values, dtype=layout[1]).reshape(shape)


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """TensorProto -> numpy; a malformed proto is INVALID_ARGUMENT naming the input."""
    try:
        array = typed_ndarray(proto)
        return tf.make_ndarray(proto) if array is None else array
    except Exception as e:  # TypeError/ValueError from a malformed or unsupported proto
        kind = dtype_name(proto.dtype)
        raise invalid(
            f"input '{clip(name)}' is not a valid {kind} tensor: {clip(e, 200)}"
        ) from None
