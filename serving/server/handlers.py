"""The API operations behind both front ends: predict, metadata, status, reload, classify/regress.

gRPC and REST decode their wire formats into these calls and encode the results; the rules
(which version answers, which errors with which codes) live here once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import contract as sig
from serving.server.errors import deadline_exceeded, invalid_argument
from serving.server.manager import ModelManager
from serving.server.servable import CLASSIFY_METHOD, INIT_OP_SIGNATURE, PREDICT_METHOD, REGRESS_METHOD

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
    passes while it waits for a batch is dropped from that batch.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if not spec.name:
        raise invalid_argument("Missing ModelSpec")
    if timeout_s is not None and timeout_s <= 0:
        raise deadline_exceeded()
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        signature = servable.signature(spec.signature_name)
        if signature.method_name != PREDICT_METHOD:
            raise invalid_argument(
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}}}. "
                f"Was: {signature.method_name}"
            )
        outputs = servable.predict(spec.signature_name, inputs, output_filter, deadline)
        return PredictResult(servable.version, spec.signature_name or sig.SIGNATURE_NAME, outputs)


def check_method(manager: ModelManager, spec: Spec, method: str) -> None:
    """Classify and Regress: resolve the model and signature, then check the signature's method.

    This model only has a predict signature, so TF Serving answers these with the same
    INVALID_ARGUMENT (or NOT_FOUND / FAILED_PRECONDITION for an unknown model or signature).
    """
    kind = {CLASSIFY_METHOD: "classification", REGRESS_METHOD: "regression"}[method]
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        signature = servable.signature(spec.signature_name)
        if signature.method_name != method:
            raise invalid_argument(
                f"Expected {kind} signature method_name to be one of {{{method}}}. Was: {signature.method_name}"
            )
        raise invalid_argument(f"{kind} over tf.Example inputs is not supported by this server")


def metadata(manager: ModelManager, spec: Spec, fields: Sequence[str]) -> tuple[int, Any]:
    """GetModelMetadata: (version, SignatureDefMap) of the resolved version."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != "signature_def":
            raise invalid_argument(f"Metadata field {f} is not supported")
    with manager.servable(spec.name, spec.version, spec.label) as servable:
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_defs.items():
            if key != INIT_OP_SIGNATURE:
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
