"""The API operations behind both front ends: predict, metadata, status, reload, classify/regress.

gRPC and REST decode their wire formats into these calls and encode the results; the rules
(which version answers, which errors with which codes) live here once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from serving import contract as sig
from serving.server import inference
from serving.server.errors import ServingError, deadline_exceeded, invalid_argument
from serving.server.manager import ModelManager
from serving.server.servable import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD

_PREDICT_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)
_STATE_CODES = {"START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


@dataclass(frozen=True)
class Spec:
    """A request's model spec: name, and at most one of version and label."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""

    @classmethod
    def from_proto(cls, spec: Any) -> Spec:
        """From a `tensorflow.serving.ModelSpec`."""
        choice = spec.WhichOneof("version_choice")
        return cls(
            name=spec.name,
            version=spec.version.value if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
            signature_name=spec.signature_name,
        )


@dataclass(frozen=True)
class PredictResult:
    """What answered (version, signature) and the output arrays."""

    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


def _check_spec(spec: Spec) -> None:
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")


def _deadline(timeout_s: float | None) -> float | None:
    """The `time.monotonic()` deadline of what is left of a request's time; none left is DEADLINE_EXCEEDED."""
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise deadline_exceeded()
    return time.monotonic() + timeout_s


def predict(
    manager: ModelManager,
    spec: Spec,
    inputs: Mapping[str, np.ndarray],
    output_filter: Sequence[str] = (),
    timeout_s: float | None = None,
) -> PredictResult:
    """Run a Predict request on the version the spec resolves to.

    `timeout_s` is what is left of the client's deadline (gRPC) or the REST timeout: a request that
    arrives past it answers DEADLINE_EXCEEDED without running the model, and one whose deadline
    passes while it waits for a batch is dropped from that batch. The signature's method name is
    checked only with `enable_signature_method_name_check`, as in TF Serving (predict, classify and
    regress signatures all serve Predict then).
    """
    _check_spec(spec)
    deadline = _deadline(timeout_s)
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        signature = servable.signature(spec.signature_name)
        if manager.options.enable_signature_method_name_check and signature.method_name not in _PREDICT_METHODS:
            raise ServingError(
                grpc.StatusCode.INTERNAL,
                f"Expected prediction signature method_name to be one of {{{', '.join(_PREDICT_METHODS)}}}. "
                f"Was: {signature.method_name}",
            )
        outputs = servable.predict(spec.signature_name, inputs, output_filter, deadline)
        return PredictResult(servable.version, spec.signature_name or sig.SIGNATURE_NAME, outputs)


def classify(manager: ModelManager, request: Any, timeout_s: float | None = None) -> Any:
    """Classify a `ClassificationRequest`'s examples: a `ClassificationResponse` (TF Serving's RunClassify)."""
    return _on_examples(manager, request, inference.classify, timeout_s)


def regress(manager: ModelManager, request: Any, timeout_s: float | None = None) -> Any:
    """Regress a `RegressionRequest`'s examples: a `RegressionResponse` (TF Serving's RunRegress)."""
    return _on_examples(manager, request, inference.regress, timeout_s)


def _on_examples(manager: ModelManager, request: Any, operation: Any, timeout_s: float | None) -> Any:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    spec = Spec.from_proto(request.model_spec)
    _check_spec(spec)
    deadline = _deadline(timeout_s)
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        return operation(servable, request, manager.options.enable_signature_method_name_check, deadline)


def multi_inference(manager: ModelManager, request: Any, timeout_s: float | None = None) -> Any:
    """Run a `MultiInferenceRequest` on the model its first task names: a `MultiInferenceResponse`."""
    spec = Spec.from_proto(request.tasks[0].model_spec) if request.tasks else Spec(name="")
    _check_spec(spec)
    deadline = _deadline(timeout_s)
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        return inference.multi_inference(
            servable, request, manager.options.enable_signature_method_name_check, deadline
        )


def metadata(manager: ModelManager, spec: Spec, fields: Sequence[str]) -> tuple[int, Any]:
    """GetModelMetadata: (version, SignatureDefMap) of the resolved version, every signature included."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != "signature_def":
            raise invalid_argument(f"Metadata field {f} is not supported")
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(value)
        return servable.version, sig_map


def status_response(manager: ModelManager, spec: Spec) -> Any:
    """GetModelStatusResponse for a spec (all versions when it names none)."""
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    for entry in manager.status(spec.name, spec.version, spec.label):
        status = response.model_version_status.add()
        status.version = entry.version
        status.state = _STATE_CODES[entry.state]
        if entry.error is not None:
            status.status.error_code = entry.error.error_code
            status.status.error_message = entry.error.message
    return response
