"""One loaded model version: a SavedModel in a TensorFlow session, as TF Serving loads it; checks, warmup, batching.

TF Serving loads every SavedModel, TF1-style or written by `tf.saved_model.save`, the same way:
the meta graph tagged `serve` is imported into a session, its variables restored, its init op
(`main_op`, `legacy_init_op` or `__saved_model_init_op`) run with the asset paths fed in; a
signature is then a list of tensor names to feed and fetch. So does this class, with TensorFlow's
TF1 loader (`tf.compat.v1.saved_model.loader.load`). Requests reach the graph as TF Serving passes
them: the signature's aliases and dtypes are checked, its shapes are not (a `[1]` input feeds a
`[?,1]` placeholder, as in `Session::Run`), and the graph's own errors come back with their codes.

One consequence, on purpose: a SavedModel whose variables the TF1 restore does not fill (a Keras 3
model held by a `tf.Module` without its variables tracked, tensorflow/tensorflow#72963) fails here
as it fails on the official image, instead of being served locally and breaking in production.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
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
SERVE_TAG = "serve"

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output: dtype enum (types_pb2), shape (-1 = any) and graph tensor name."""

    dtype: int
    shape: tuple[int, ...] | None
    name: str = ""


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


def read_saved_model(path: Path) -> Any:
    """The `SavedModel` proto of a version folder (`saved_model.pb`, or `saved_model.pbtxt` as TF reads it too)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    if binary.is_file():
        saved.ParseFromString(binary.read_bytes())
    elif text.is_file():
        text_format.Parse(text.read_text(), saved)
    else:
        raise ServingError(
            grpc.StatusCode.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
    return saved


def _session_config() -> Any:
    """The session's threads follow the process's (`--tensorflow_*_parallelism` set them); placement is soft."""
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        allow_soft_placement=True,
    )


class Servable:
    """A SavedModel version loaded for serving.

    Args:
        name: the model name.
        version: the version number.
        uri: the version folder (local or `gs://`; remote folders are downloaded first).
        batching: batching parameters, or None to run each request on its own.
        tags: the meta graph's tag set (TF Serving's `--saved_model_tags`).
    """

    def __init__(
        self,
        name: str,
        version: int,
        uri: str,
        batching: BatchingParameters | None = None,
        tags: Sequence[str] = (SERVE_TAG,),
    ):
        import tensorflow as tf

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
        saved = read_saved_model(self.path)
        wanted = set(tags)
        # TF's loader takes the meta graph whose tag set is exactly the one asked for.
        if not any(set(m.meta_info_def.tags) == wanted for m in saved.meta_graphs):
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }}. "
                "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            )
        # The class behind `tf.compat.v1.saved_model.loader.load`, whose deprecation notice would land in
        # every server's log: the TF1 loader is exactly what TF Serving runs, not something to move off.
        from tensorflow.python.saved_model import loader_impl

        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=_session_config())
        try:
            with self._graph.as_default():
                meta_graph = loader_impl.SavedModelLoader(str(self.path)).load(self._session, sorted(wanted))
        except Exception:
            self._session.close()
            raise
        self.signature_defs = meta_graph.signature_def
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...]], Callable] = {}
        self._callables_lock = threading.Lock()
        self._batching = batching
        self._schedulers: dict[Hashable, BatchScheduler] = {}
        self._specs: dict[tuple[str, str], dict[str, TensorSpec]] = {}

    # -- signatures ---------------------------------------------------------------------------

    def signature(self, signature_name: str) -> Any:
        """The SignatureDef named `signature_name` (empty = serving_default), as Predict looks it up."""
        key = signature_name or sig.SIGNATURE_NAME
        if key not in self.signature_defs:
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

    def check_inputs(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """What TF Serving's Predict checks before it runs, in its order and words; returns the inputs to feed.

        Input count against the signature (signature defaults may stand in for missing inputs), each
        alias, each input's dtype (as `Session::Run` reports a wrong one), and the output filter. Shapes
        are not checked: the graph gets the tensor as sent.
        """
        signature = self.signature(signature_name)
        specs = self.input_specs(signature_name)
        sent, expected = set(inputs), set(specs)
        if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
            raise invalid_argument(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
            )
        feeds: dict[str, np.ndarray] = {}
        for alias in sorted(specs):
            if alias in inputs:
                feeds[alias] = inputs[alias]
            elif alias in signature.defaults:
                from serving import tensors

                feeds[alias] = tensors.from_proto(signature.defaults[alias])
            else:
                raise invalid_argument(
                    f"Signature input alias: {alias}(feed name: {specs[alias].name}) not found in request and no "
                    f"default value provided. Inputs expected to be in the request {{{','.join(sorted(sent))}}}, "
                    f"or default input alias set: {','.join(sorted(signature.defaults))}"
                )
        if sent - expected:
            raise invalid_argument(
                f"Inputs contains invalid name. Used request inputs: {','.join(sorted(sent & expected))}, "
                f"request input: {','.join(sorted(sent))}"
            )
        for i, (alias, array) in enumerate(feeds.items()):
            want = dtype_name(specs[alias].dtype)
            got = _array_dtype_name(array)
            if got != want:
                raise invalid_argument(f"Expects arg[{i}] to be {want} but {got} is provided")
        outputs = self.output_specs(signature_name)
        seen: set[str] = set()
        for alias in output_filter:
            if alias not in outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(sorted(outputs))}}}."
                )
            if alias in seen:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return feeds

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run one signature on checked inputs (alias -> array); the outputs named in the filter (empty: all)."""
        specs = self.input_specs(signature_name)
        outputs = self.output_specs(signature_name)
        aliases = list(output_filter) or sorted(outputs)
        feeds = {specs[alias].name: array for alias, array in inputs.items()}
        fetched = self.run_tensors(feeds, [outputs[alias].name for alias in aliases])
        return dict(zip(aliases, fetched, strict=True))

    def run_tensors(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """One `Session::Run`: feed tensors by graph name, fetch tensors by graph name.

        Raises:
            ServingError: the graph's error with its canonical code (a wrong dtype is INVALID_ARGUMENT).
        """
        import tensorflow as tf

        names = tuple(feeds)
        try:
            run = self._callable(names, tuple(fetches))
            return [np.asarray(value) for value in run(*(feeds[n] for n in names))]
        except tf.errors.OpError as err:
            raise tensor_error(err) from err
        except (ValueError, TypeError, KeyError) as err:
            raise invalid_argument(str(err)) from err

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...]) -> Callable:
        """A session callable for one feed/fetch list, made once: it runs without Python-side checks."""
        from tensorflow.core.protobuf import config_pb2

        key = (feeds, fetches)
        run = self._callables.get(key)
        if run is None:
            with self._callables_lock:
                run = self._callables.get(key)
                if run is None:
                    options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                    run = self._session._make_callable_from_options(options)  # noqa: SLF001 - no public form
                    self._callables[key] = run
        return run

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
        feeds = self.check_inputs(signature_name, inputs, output_filter)
        key = signature_name or sig.SIGNATURE_NAME
        wanted = tuple(output_filter)
        if wanted:
            return self.compute(("predict", key, wanted), lambda x: self.run(key, x, wanted), feeds, deadline)
        return self.compute(("predict", key), lambda x: self.run(key, x), feeds, deadline)

    def compute(
        self, key: Hashable, run: RunFn, inputs: Mapping[str, np.ndarray], deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run `run(inputs)` now, or in a batch with other requests of the same `key` when batching is on.

        Raises:
            ServingError: DEADLINE_EXCEEDED once the deadline has passed, or the run's own error.
        """
        if deadline is not None and deadline <= time.monotonic():
            raise deadline_exceeded()
        if self._batching is None:
            return dict(run(inputs))
        task_size(inputs)
        future = self._scheduler(key, run).schedule(inputs, deadline)
        try:
            return future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError as err:
            # A task whose batch has not started yet is dropped from it.
            future.cancel()
            raise deadline_exceeded() from err

    def _scheduler(self, key: Hashable, run: RunFn) -> BatchScheduler:
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            scheduler = self._schedulers.setdefault(
                key, BatchScheduler(run, self._batching, name=f"{self.name}-{self.version}-{_key_name(key)}")
            )
        return scheduler

    # -- lifecycle ----------------------------------------------------------------------------

    def warmup(self) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests`; returns the number of records replayed.

        Predict, Classify, Regress and MultiInference logs are replayed, each on its own (never
        batched), as TF Serving does.

        Raises:
            ServingError: more than 1000 records, a record of another kind, or a replay that fails
                (the version then fails to load, as in TF Serving).
        """
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        from serving.server import inference

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
            kind = record.WhichOneof("log_type")
            if kind == "predict_log":
                request = record.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                feeds = self.check_inputs(request.model_spec.signature_name, inputs, request.output_filter)
                self.run(request.model_spec.signature_name, feeds, list(request.output_filter))
            elif kind == "classify_log":
                inference.classify(self, record.classify_log.request, batched=False)
            elif kind == "regress_log":
                inference.regress(self, record.regress_log.request, batched=False)
            elif kind == "multi_inference_log":
                inference.multi_inference(self, record.multi_inference_log.request, batched=False)
            else:
                number = record.DESCRIPTOR.fields_by_name[kind].number if kind else 0
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")
        return count

    def close(self) -> None:
        """Stop the batch threads and close the session."""
        for scheduler in self._schedulers.values():
            scheduler.stop()
        self._schedulers.clear()
        self._callables.clear()
        self._session.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _key_name(key: Hashable) -> str:
    return "-".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _specs(tensor_infos: Any) -> dict[str, TensorSpec]:
    out = {}
    for alias, info in tensor_infos.items():
        shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        out[alias] = TensorSpec(dtype=int(info.dtype), shape=shape, name=info.name)
    return out


def _array_dtype_name(array: np.ndarray) -> str:
    import tensorflow as tf

    if array.dtype.kind in ("O", "S", "U"):
        return "string"
    return dtype_name(tf.dtypes.as_dtype(array.dtype).as_datatype_enum)
