"""TensorProto <-> numpy conversion for the request path, without importing TensorFlow.

Values travel in the typed fields (`float_val`, `int64_val`, `string_val`, ...), as TF Serving's
Predict fills its outputs (`Tensor::AsProtoField`), so a client reading `outputs["y"].float_val`
gets the same numbers from this server as from the real one. Reading accepts both forms: the typed
fields, with TensorFlow's rule that fewer values than the shape holds repeat the last one (none:
zeros), and `tensor_content` bytes, which `tf.make_tensor_proto` writes. Only dtypes outside the
common ones fall back to TensorFlow's own converters.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from serving.protos import api

# dtype name -> (numpy dtype, typed field, how the field's values map onto the numpy values).
_FIELDS = {
    "DT_FLOAT": (np.float32, "float_val", "plain"),
    "DT_DOUBLE": (np.float64, "double_val", "plain"),
    "DT_INT32": (np.int32, "int_val", "plain"),
    "DT_UINT8": (np.uint8, "int_val", "plain"),
    "DT_INT16": (np.int16, "int_val", "plain"),
    "DT_INT8": (np.int8, "int_val", "plain"),
    "DT_UINT16": (np.uint16, "int_val", "plain"),
    "DT_INT64": (np.int64, "int64_val", "plain"),
    "DT_UINT32": (np.uint32, "uint32_val", "plain"),
    "DT_UINT64": (np.uint64, "uint64_val", "plain"),
    "DT_BOOL": (np.bool_, "bool_val", "plain"),
    # Half floats travel as their 16 bits in an int field; complex numbers as (real, imaginary) pairs.
    "DT_HALF": (np.float16, "half_val", "bits16"),
    "DT_COMPLEX64": (np.complex64, "scomplex_val", "pairs"),
    "DT_COMPLEX128": (np.complex128, "dcomplex_val", "pairs"),
}


@functools.cache
def _dtypes() -> tuple[dict[np.dtype, int], dict[int, tuple[np.dtype, str, str]]]:
    dt = api()
    by_enum = {getattr(dt, name): (np.dtype(numpy), field, kind) for name, (numpy, field, kind) in _FIELDS.items()}
    by_numpy = {numpy: enum for enum, (numpy, _, _) in by_enum.items()}
    return by_numpy, by_enum


def fill_proto(target: Any, array: np.ndarray, as_content: bool = False) -> Any:
    """Write `array` into the TensorProto `target` (TensorFlow's class or `serving.protos`'s) and return it.

    Filling the message in place works for either class, so the server (TensorFlow's messages)
    and the TensorFlow-free client (`serving.protos`) share one converter.

    Args:
        target: the TensorProto to fill; it is cleared first.
        array: the values; strings as a numpy object (bytes or str) or bytes array.
        as_content: numeric values as `tensor_content` bytes (`AsProtoTensorContent`, what
            `tf.make_tensor_proto` writes) instead of the typed fields (`AsProtoField`, TF Serving's
            Predict answer). Strings always go in `string_val`.
    """
    target.Clear()
    for d in array.shape:
        target.tensor_shape.dim.add(size=d)
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        target.dtype = api().DT_STRING
        target.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist())
        return target
    by_numpy, by_enum = _dtypes()
    dtype = by_numpy.get(array.dtype)
    if dtype is None:
        import tensorflow as tf

        target.ParseFromString(tf.make_tensor_proto(array).SerializeToString())
        return target
    target.dtype = dtype
    if as_content:
        target.tensor_content = np.ascontiguousarray(array).tobytes()
        return target
    _, field, kind = by_enum[dtype]
    flat = array.reshape(-1)
    if kind == "bits16":
        flat = flat.view(np.uint16)
    elif kind == "pairs":
        flat = flat.view(flat.real.dtype)
    getattr(target, field).extend(flat.tolist())
    return target


def to_proto(array: np.ndarray, as_content: bool = False) -> Any:
    """A TensorProto (`serving.protos` class) holding `array`."""
    return fill_proto(api().TensorProto(), array, as_content)


def from_proto(proto: Any) -> np.ndarray:
    """The numpy array a TensorProto holds, read as TensorFlow's `Tensor::FromProto` reads it.

    Typed fields with fewer values than the shape holds repeat the last one (none: zeros or empty
    strings); values past the shape are ignored.

    Raises:
        ValueError: a negative dimension, or `tensor_content` that does not hold the shape's values.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape)) if shape else 1
    if proto.dtype == api().DT_STRING:
        values = list(proto.string_val)[:count]
        array = np.empty(count, dtype=object)
        array[: len(values)] = values
        array[len(values) :] = values[-1] if values else b""
        return array.reshape(shape)
    spec = _dtypes()[1].get(proto.dtype)
    if spec is None:
        import tensorflow as tf
        from tensorflow.core.framework import tensor_pb2

        # Other dtypes go through TensorFlow's own converter.
        return tf.make_ndarray(tensor_pb2.TensorProto.FromString(proto.SerializeToString()))
    numpy_dtype, field, kind = spec
    if proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=numpy_dtype)
        if array.size != count:
            raise ValueError(f"tensor_content holds {array.size} values, shape {list(shape)} needs {count}")
        return array.reshape(shape)
    raw = getattr(proto, field)
    if kind == "bits16":
        values = np.array(raw, dtype=np.uint16).view(np.float16)
    elif kind == "pairs":
        values = np.array(raw, dtype=np.dtype(numpy_dtype).type(0).real.dtype).view(numpy_dtype)
    else:
        values = np.array(raw, dtype=numpy_dtype)
    values = values[:count]
    if values.size < count:
        # TensorFlow's compact form: the last value repeats to fill the shape (no values: zeros).
        fill = values[-1] if values.size else np.zeros((), numpy_dtype)
        values = np.concatenate([values, np.full(count - values.size, fill, dtype=numpy_dtype)])
    return values.reshape(shape)
