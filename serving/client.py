"""A gRPC client for the serving endpoint (local server or TF Serving): photos in, labels and scores out.

It uses only tensorflow-serving-api messages, sets the signature name, a deadline on every call
and message size limits large enough for real photos, and needs no vocabulary: the labels come
back from the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving import contract as sig
from serving import protos


@dataclass(frozen=True)
class PredictOutputs:
    """A Predict answer: the version that answered and its output arrays."""

    model_name: str
    version: int
    outputs: dict[str, np.ndarray]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# The joint decoding's extra outputs, (name, is a label); versions exported before it lack them.
_DECODING_OUTPUTS = (
    (sig.JOINT_SCORE, False),
    (sig.CATEGORY_INDEPENDENT, True),
    (sig.CATEGORY_INDEPENDENT_SCORE, False),
    (sig.SUBCATEGORY_INDEPENDENT, True),
    (sig.SUBCATEGORY_INDEPENDENT_SCORE, False),
)


def format_predictions(outputs: dict[str, np.ndarray], attribute_threshold: float = 0.5) -> list[dict]:
    """Per photo: category and sub-category, attributes above the threshold, best value per group.

    Every label comes with its score; groups are the attribute columns (colour, season, ...).
    `category`/`subcategory` are the model's tree-consistent pair (joint decoding); when the
    version serves them, `joint_score` and each level's own arg-max (`category_independent`,
    `subcategory_independent` and their scores) follow under the output names.
    """
    results = []
    for i in range(len(outputs[sig.CATEGORY])):
        names = [_text(n) for n in outputs[sig.ATTRIBUTE_NAMES][i]]
        scores = [float(s) for s in outputs[sig.ATTRIBUTE_SCORES][i]]
        groups: dict[str, dict] = {}
        for name, score in zip(names, scores, strict=True):
            group, _, value = name.partition(sig.ATTRIBUTE_SEPARATOR)
            if group not in groups:
                groups[group] = {"value": value, "score": round(score, 6)}
        results.append(
            {
                "category": _text(outputs[sig.CATEGORY][i]),
                "category_score": round(float(outputs[sig.CATEGORY_SCORE][i]), 6),
                "subcategory": _text(outputs[sig.SUBCATEGORY][i]),
                "subcategory_score": round(float(outputs[sig.SUBCATEGORY_SCORE][i]), 6),
                **{
                    k: _text(outputs[k][i]) if label else round(float(outputs[k][i]), 6)
                    for k, label in _DECODING_OUTPUTS
                    if k in outputs
                },
                "attributes": [
                    {"name": n, "score": round(s, 6)}
                    for n, s in zip(names, scores, strict=True)
                    if s >= attribute_threshold
                ],
                "attribute_groups": groups,
            }
        )
    return results


class PredictionClient:
    """Predict, status and metadata calls against one model.

    Args:
        target: `host:port` of the gRPC endpoint.
        model_name: the served model's name.
        version: ask for this version number (exclusive with `label`).
        label: ask for the version behind this label, e.g. `stable`.
        signature_name: the signature to run.
        timeout_s: deadline of every call.
        max_message_bytes: send and receive limit of the channel.
    """

    def __init__(
        self,
        target: str,
        model_name: str = "fashion",
        version: int | None = None,
        label: str | None = None,
        signature_name: str = sig.SIGNATURE_NAME,
        timeout_s: float = 30.0,
        max_message_bytes: int = sig.DEFAULT_MAX_MESSAGE_BYTES,
    ):
        if version is not None and label:
            raise ValueError("give a version or a label, not both")
        self.target = target
        self.model_name = model_name
        self.version = version
        self.label = label
        self.signature_name = signature_name
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        # TensorFlow-free stubs (serving.protos): the first request leaves without TensorFlow's start-up.
        self._predict = protos.unary(self.channel, protos.PREDICTION_SERVICE, "Predict")
        self._metadata = protos.unary(self.channel, protos.PREDICTION_SERVICE, "GetModelMetadata")
        self._status = protos.unary(self.channel, protos.MODEL_SERVICE, "GetModelStatus")
        self._reload = protos.unary(self.channel, protos.MODEL_SERVICE, "HandleReloadConfigRequest")

    def model_spec(self, with_signature: bool = True) -> Any:
        """The ModelSpec every call sends."""
        spec = protos.api().ModelSpec(name=self.model_name)
        if with_signature:
            spec.signature_name = self.signature_name
        if self.version is not None:
            spec.version.value = int(self.version)
        elif self.label:
            spec.version_label = self.label
        return spec

    def predict_raw(self, photos: Sequence[bytes]) -> PredictOutputs:
        """One Predict call with a batch of encoded photos; raises grpc.RpcError on failure."""
        from serving.tensors import fill_proto, from_proto

        request = protos.api().PredictRequest(model_spec=self.model_spec())
        fill_proto(request.inputs[sig.INPUT_KEY], np.array(list(photos), dtype=object))
        response = self._predict(request, timeout=self.timeout_s)
        outputs = {k: from_proto(v) for k, v in response.outputs.items()}
        return PredictOutputs(response.model_spec.name, int(response.model_spec.version.value), outputs)

    def predict(self, photos: Sequence[bytes], attribute_threshold: float = 0.5) -> list[dict]:
        """Labels and scores per photo (see `format_predictions`), with the answering version."""
        answer = self.predict_raw(photos)
        results = format_predictions(answer.outputs, attribute_threshold)
        for r in results:
            r["model_version"] = answer.version
        return results

    def predict_files(self, paths: Iterable[str | Path], attribute_threshold: float = 0.5) -> list[dict]:
        """One result per file; a file that cannot be read or predicted gets an `error` entry."""
        results = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
                result = self.predict([data], attribute_threshold)[0]
            except OSError as err:
                result = {"error": f"cannot read: {err.strerror or err}"}
            except grpc.RpcError as err:
                result = {"error": f"{err.code().name}: {err.details()}"}
            results.append({"image": str(path), **result})
        return results

    def status(self) -> list[tuple[int, str]]:
        """(version, state name) of the model's versions, newest first."""
        api = protos.api()
        request = api.GetModelStatusRequest(model_spec=self.model_spec(with_signature=False))
        response = self._status(request, timeout=self.timeout_s)
        states = api.ModelVersionStatus.State
        return [(int(s.version), states.Name(s.state)) for s in response.model_version_status]

    def version_errors(self) -> dict[int, str]:
        """Load errors reported per version (empty when none failed)."""
        request = protos.api().GetModelStatusRequest(model_spec=self.model_spec(with_signature=False))
        response = self._status(request, timeout=self.timeout_s)
        return {int(s.version): s.status.error_message for s in response.model_version_status if s.status.error_code}

    def metadata(self) -> Any:
        """The SignatureDefMap of the version the spec resolves to."""
        api = protos.api()
        request = api.GetModelMetadataRequest(
            model_spec=self.model_spec(with_signature=False), metadata_field=["signature_def"]
        )
        response = self._metadata(request, timeout=self.timeout_s)
        sig_map = api.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return sig_map

    def reload_config(self, config: Any) -> None:
        """Send a whole ModelServerConfig (HandleReloadConfigRequest); raises grpc.RpcError on refusal.

        `config` may be TensorFlow Serving's own message class: it travels as its bytes.
        """
        request = protos.api().ReloadConfigRequest()
        request.config.ParseFromString(config.SerializeToString())
        self._reload(request, timeout=self.timeout_s)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
