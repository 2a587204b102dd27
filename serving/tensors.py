"""Fast TensorProto <-> numpy conversion for the request path, without importing TensorFlow.

`tf.make_tensor_proto` and `tf.make_ndarray` are general but slow for the handful of dtypes a
Predict call carries; here numeric arrays go through `tensor_content` bytes directly and strings
through `string_val`, with TensorFlow's own converters as the fallback for everything else.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from serving.protos import api


@functools.cache
def _dtypes() -> tuple[dict[np.dtype, int], dict[int, np.dtype]]:
    dt = api()
    numpy_to_dt = {
        np.dtype(np.float32): dt.DT_FLOAT,
        np.dtype(np.float64): dt.DT_DOUBLE,
        np.dtype(np.int32): dt.DT_INT32,
        np.dtype(np.int64): dt.DT_INT64,
        np.dtype(np.uint8): dt.DT_UINT8,
    }
    return numpy_to_dt, {v: k for k, v in numpy_to_dt.items()}


def fill_proto(target: Any, array: np.ndarray) -> Any:
    """Write `array` into the TensorProto `target` (TensorFlow's class or `serving.protos`'s) and return it.

    Filling the message in place works for either class, so the server (TensorFlow's messages)
    and the TensorFlow-free client (`serving.protos`) share one converter.
    """
    target.Clear()
    for d in array.shape:
        target.tensor_shape.dim.add(size=d)
    if array.dtype == object or array.dtype.kind == "S":
        target.dtype = api().DT_STRING
        target.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist())
        return target
    dtype = _dtypes()[0].get(array.dtype)
    if dtype is None:
        import tensorflow as tf

        target.ParseFromString(tf.make_tensor_proto(array).SerializeToString())
        return target
    target.dtype = dtype
    target.tensor_content = np.ascontiguousarray(array).tobytes()
    return target


def to_proto(array: np.ndarray) -> Any:
    """A TensorProto (`serving.protos` class) holding `array`."""
    return fill_proto(api().TensorProto(), array)


def from_proto(proto: Any) -> np.ndarray:
    """The numpy array a TensorProto holds.

    Raises:
        ValueError: the proto's values do not fill its shape.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    if proto.dtype == api().DT_STRING:
        values = list(proto.string_val)
        if len(values) != count:
            raise ValueError(f"{len(values)} string values do not fill shape {list(shape)}")
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    numpy_dtype = _dtypes()[1].get(proto.dtype)
    if numpy_dtype is not None and proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=numpy_dtype)
        if array.size != count:
            raise ValueError(f"tensor_content holds {array.size} values, shape {list(shape)} needs {count}")
        return array.reshape(shape)
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    # Other dtypes and the typed value fields go through TensorFlow's own converter.
    return tf.make_ndarray(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
