"""REST `:classify` and `:regress`: TF Serving's JSON bodies to `tf.Example` requests, and results back to JSON.

    {"signature_name": "...", "context": {<feature>: <value(s)>}, "examples": [{<feature>: <value(s)>}, ...]}

Each example is a JSON object of features; a value (or each value of a list) is a float, an
integer (booleans count as 0/1), a string, or `{"b64": "..."}` bytes, and one feature holds one
kind. The answers are `{"results": [[[label, score], ...], ...]}` and `{"results": [value, ...]}`.
The rules and error messages are those of TF Serving's json_tensor.cc.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from serving.server import handlers
from serving.server.errors import invalid_argument
from serving.server.manager import ModelManager

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}
_DEBUG_LIMIT = 256


def _debug_string(doc: Any) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    return text if len(text) <= _DEBUG_LIMIT else text[:_DEBUG_LIMIT] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _add_value(value: Any, name: str, feature: Any) -> None:
    """AddValueToFeature: one JSON value into a Feature, whose kind the first value fixes."""
    kind = feature.WhichOneof("kind")

    def expect(wanted: str) -> None:
        if kind not in (None, wanted):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[kind]}")

    if isinstance(value, bool):
        expect("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        if not (set(value) == {"b64"} and isinstance(value["b64"], str)):
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
        expect("bytes_list")
        try:
            feature.bytes_list.value.append(base64.b64decode(value["b64"], validate=True))
        except (binascii.Error, ValueError) as err:
            raise invalid_argument("Unable to base64 decode") from err
    elif isinstance(value, str):
        expect("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, int) and _INT64_MIN <= value <= _UINT64_MAX:
        expect("int64_list")
        if value > _INT64_MAX:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    elif isinstance(value, int | float):
        # A JSON number with a fraction or an exponent, or an integer past 64 bits, is a float.
        expect("float_list")
        feature.float_list.value.append(float(value))
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")


def example_from_json(value: Any, example: Any) -> None:
    """MakeExampleFromJsonObject: a JSON object of features into a `tf.Example`."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        feature.Clear()
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)


def fill_request(doc: dict, request: Any) -> None:
    """FillClassifyRegressRequestFromJson: the body's context and examples into the request's `input`."""
    with_context = "context" in doc
    target = request.input.example_list_with_context if with_context else request.input.example_list
    if with_context:
        example_from_json(doc["context"], target.context)
    if "examples" not in doc:
        # TF Serving says "classify" for both methods.
        raise invalid_argument(
            f"JSON Value: {_debug_string(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {_debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {_debug_string(doc)} 'examples' value is an empty array")
    for value in examples:
        example_from_json(value, target.examples.add())


def _decimal(value: float) -> float:
    """A float32 result as TF Serving writes it: its shortest decimal form, not the double's digits."""
    as_float32 = np.float32(value)
    return float(str(as_float32)) if np.isfinite(as_float32) else float(as_float32)


def classification_json(result: Any) -> dict:
    """MakeJsonFromClassificationResult."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    return {
        "results": [
            [[c.label, _decimal(c.score)] for c in classifications.classes]
            for classifications in result.classifications
        ]
    }


def regression_json(result: Any) -> dict:
    """MakeJsonFromRegressionResult."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return {"results": [_decimal(r.value) for r in result.regressions]}


def classify_or_regress(
    manager: ModelManager, spec: handlers.Spec, doc: dict, method: str, timeout_s: float | None = None
) -> dict:
    """Answer a REST `:classify` or `:regress` body (already parsed) for the model `spec` names."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    classify = method == "classify"
    request = classification_pb2.ClassificationRequest() if classify else regression_pb2.RegressionRequest()
    request.model_spec.name = spec.name
    if spec.version is not None:
        request.model_spec.version.value = spec.version
    elif spec.label:
        request.model_spec.version_label = spec.label
    request.model_spec.signature_name = spec.signature_name
    fill_request(doc, request)
    if classify:
        return classification_json(handlers.classify(manager, request, timeout_s).result)
    return regression_json(handlers.regress(manager, request, timeout_s).result)
