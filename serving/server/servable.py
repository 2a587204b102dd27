"""One loaded model version: its signatures, input checks as TF Serving makes them, warmup, batching."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from core import storage
from serving import contract as sig
from serving.server.batching import BatchScheduler, task_size
from serving.server.config import BatchingParameters
from serving.server.errors import ServingError, deadline_exceeded, failed_precondition, invalid_argument

log = logging.getLogger(__name__)

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: dtype enum (types_pb2) and shape (-1 = any)."""

    dtype: int
    shape: tuple[int, ...] | None


def _tf_code_to_grpc(code: int) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def tensor_error(err: Exception) -> ServingError:
    """A TensorFlow runtime error as the status TF Serving would return for it."""
    import tensorflow as tf

    if isinstance(err, tf.errors.OpError):
        return ServingError(_tf_code_to_grpc(err.error_code), _op_message(err.message))
    return ServingError(grpc.StatusCode.INTERNAL, str(err))


def _op_message(message: str) -> str:
    """The cause of a TF runtime error without the graph execution boilerplate and node traces."""
    kept = []
    for line in message.splitlines():
        text = line.strip()
        if (
            not text
            or text.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[", "File "))
            or line.startswith("  ")
        ):
            continue
        kept.append(re.sub(r"\s*\[Op:[^\]]*\]$", "", text))
    return " ".join(kept) or message.strip()


def dtype_name(dtype: int) -> str:
    """`DT_STRING` -> `string`, `DT_FLOAT` -> `float`, as TF's error messages spell dtypes."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


class Servable:
    """A SavedModel version loaded for serving.

    Args:
        name: the model name.
        version: the version number.
        uri: the version folder (local or `gs://`; remote folders are downloaded first).
        batching: batching parameters, or None to run each request on its own.
    """

    def __init__(self, name: str, version: int, uri: str, batching: BatchingParameters | None = None):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name = name
        self.version = version
        self.uri = uri
        self._tmp: tempfile.TemporaryDirectory | None = None
        local = uri
        if storage.is_gcs(uri):
            self._tmp = tempfile.TemporaryDirectory(prefix=f"servable-{name}-{version}-")
            storage.copy_tree(uri, self._tmp.name)
            local = self._tmp.name
        self.path = Path(local)
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.path / "saved_model.pb").read_bytes())
        graphs = [m for m in saved.meta_graphs if "serve" in m.meta_info_def.tags]
        if not graphs:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find meta graph def matching supplied tags: {{ serve }} in {uri}"
            )
        self.signature_defs = graphs[0].signature_def
        self._loaded = tf.saved_model.load(str(self.path), tags=["serve"])
        self._functions = dict(self._loaded.signatures)
        self._batching = batching
        self._schedulers: dict[str, BatchScheduler] = {}
        self._specs: dict[tuple[str, str], dict[str, TensorSpec]] = {}

    # -- signatures ---------------------------------------------------------------------------

    def signature(self, signature_name: str) -> Any:
        """The SignatureDef named `signature_name` (empty = serving_default)."""
        key = signature_name or sig.SIGNATURE_NAME
        if key not in self.signature_defs or key == INIT_OP_SIGNATURE:
            raise failed_precondition(f'Serving signature key "{key}" not found.')
        return self.signature_defs[key]

    def input_specs(self, signature_name: str) -> dict[str, TensorSpec]:
        """Input alias -> spec of one signature."""
        key = ("in", signature_name)
        if key not in self._specs:
            self._specs[key] = _specs(self.signature(signature_name).inputs)
        return self._specs[key]

    def output_specs(self, signature_name: str) -> dict[str, TensorSpec]:
        """Output alias -> spec of one signature."""
        key = ("out", signature_name)
        if key not in self._specs:
            self._specs[key] = _specs(self.signature(signature_name).outputs)
        return self._specs[key]

    # -- prediction ---------------------------------------------------------------------------

    def check_inputs(self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]) -> None:
        """Reject what TF Serving rejects before running: unknown or missing aliases, dtype, rank, filter."""
        specs = self.input_specs(signature_name)
        for alias in inputs:
            if alias not in specs:
                expected = ",".join(sorted(specs))
                raise invalid_argument(
                    f"input tensor alias not found in signature: {alias}. "
                    f"Inputs expected to be in the set {{{expected}}}."
                )
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise invalid_argument(
                f"Request inputs do not match required inputs for model `{self.name}`. "
                f"Send extra: {{}}. Missing but required: {{{','.join(missing)}}}."
            )
        for i, (alias, spec) in enumerate(sorted(specs.items())):
            array = inputs[alias]
            want = dtype_name(spec.dtype)
            got = _array_dtype_name(array)
            if got != want:
                raise invalid_argument(f"Expects arg[{i}] to be {want} but {got} is provided")
            if spec.shape is not None:
                ok = len(array.shape) == len(spec.shape) and all(
                    d == -1 or d == a for d, a in zip(spec.shape, array.shape, strict=True)
                )
                if not ok:
                    want_shape = "[" + ",".join("?" if d == -1 else str(d) for d in spec.shape) + "]"
                    raise invalid_argument(
                        f"input tensor {alias} has shape [{','.join(map(str, array.shape))}], "
                        f"which is not compatible with the signature's shape {want_shape}"
                    )
        outputs = self.output_specs(signature_name)
        for alias in output_filter:
            if alias not in outputs:
                expected = ",".join(sorted(outputs))
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{expected}}}."
                )

    def run(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature directly on checked inputs."""
        import tensorflow as tf

        key = signature_name or sig.SIGNATURE_NAME
        fn = self._functions.get(key)
        if fn is None:
            raise failed_precondition(f'Serving signature key "{key}" not found.')
        try:
            out = fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        except (tf.errors.OpError, ValueError, TypeError) as err:
            if isinstance(err, tf.errors.OpError):
                raise tensor_error(err) from err
            raise invalid_argument(str(err)) from err
        return {k: v.numpy() for k, v in out.items()}

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Check, run (through the batch scheduler when batching is on) and filter the outputs.

        Args:
            signature_name: the signature (empty: serving_default).
            inputs: input alias -> array.
            output_filter: the outputs to return (empty: all).
            deadline: `time.monotonic()` after which the caller no longer waits: a request past it is
                not computed, and one still queued for a batch then is dropped from it.

        Raises:
            ServingError: DEADLINE_EXCEEDED once the deadline has passed, or the request's own error.
        """
        self.check_inputs(signature_name, inputs, output_filter)
        key = signature_name or sig.SIGNATURE_NAME
        if deadline is not None and deadline <= time.monotonic():
            raise deadline_exceeded()
        if self._batching is None:
            outputs = self.run(key, inputs)
        else:
            task_size(inputs)
            future = self._scheduler(key).schedule(inputs, deadline)
            try:
                outputs = future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError as err:
                # A task whose batch has not started yet is dropped from it.
                future.cancel()
                raise deadline_exceeded() from err
        if output_filter:
            outputs = {k: v for k, v in outputs.items() if k in set(output_filter)}
        return outputs

    def _scheduler(self, key: str) -> BatchScheduler:
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = self._schedulers.setdefault(
                key,
                BatchScheduler(lambda x: self.run(key, x), self._batching, name=f"{self.name}-{self.version}-{key}"),
            )
        return scheduler

    # -- lifecycle ----------------------------------------------------------------------------

    def warmup(self) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests`; returns the number of records replayed.

        Raises:
            ServingError: more than 1000 records, a record that is not a Predict log, or a replay
                that fails (the version then fails to load, as in TF Serving).
        """
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / sig.WARMUP_FILE
        if not path.is_file():
            return 0
        count = 0
        for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            count += 1
            if count > sig.MAX_WARMUP_RECORDS:
                raise invalid_argument(
                    f"Number of warmup records exceeds the maximum ({sig.MAX_WARMUP_RECORDS}) at {path}"
                )
            record = prediction_log_pb2.PredictionLog()
            record.ParseFromString(raw)
            if record.WhichOneof("log_type") != "predict_log":
                raise invalid_argument(f"Unsupported log_type for warmup: {record.WhichOneof('log_type')}")
            request = record.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.check_inputs(request.model_spec.signature_name, inputs, request.output_filter)
            self.run(request.model_spec.signature_name, inputs)
        return count

    def close(self) -> None:
        """Stop the batch threads and drop the model."""
        for scheduler in self._schedulers.values():
            scheduler.stop()
        self._schedulers.clear()
        self._functions.clear()
        self._loaded = None
        if self._tmp is not None:
            self._tmp.cleanup()


def _specs(tensor_infos: Any) -> dict[str, TensorSpec]:
    out = {}
    for alias, info in tensor_infos.items():
        shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        out[alias] = TensorSpec(dtype=int(info.dtype), shape=shape)
    return out


def _array_dtype_name(array: np.ndarray) -> str:
    import tensorflow as tf

    if array.dtype.kind in ("O", "S", "U"):
        return "string"
    return dtype_name(tf.dtypes.as_dtype(array.dtype).as_datatype_enum)
