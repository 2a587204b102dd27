"""Fast TensorProto <-> numpy conversion for the request path.

`tf.make_tensor_proto` and `tf.make_ndarray` are general but slow for the handful of dtypes a
Predict call carries; here numeric arrays go through `tensor_content` bytes directly and strings
through `string_val`, with TensorFlow's own converters as the fallback for everything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_NUMPY_TO_DT = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
}
_DT_TO_NUMPY = {v: k for k, v in _NUMPY_TO_DT.items()}


def _shape(dims: tuple[int, ...]) -> Any:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def to_proto(array: np.ndarray) -> Any:
    """A TensorProto holding `array`."""
    if array.dtype == object or array.dtype.kind == "S":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(array.shape), string_val=values)
    dtype = _NUMPY_TO_DT.get(array.dtype)
    if dtype is None:
        import tensorflow as tf

        return tf.make_tensor_proto(array)
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_shape=_shape(array.shape), tensor_content=np.ascontiguousarray(array).tobytes()
    )


def from_proto(proto: Any) -> np.ndarray:
    """The numpy array a TensorProto holds.

    Raises:
        ValueError: the proto's values do not fill its shape.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
        if len(values) != count:
            raise ValueError(f"{len(values)} string values do not fill shape {list(shape)}")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    numpy_dtype = _DT_TO_NUMPY.get(proto.dtype)
    if numpy_dtype is not None and proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=numpy_dtype)
        if array.size != count:
            raise ValueError(f"tensor_content holds {array.size} values, shape {list(shape)} needs {count}")
        return array.reshape(shape)
    import tensorflow as tf

    return tf.make_ndarray(proto)
